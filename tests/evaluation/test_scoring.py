"""answer_score dispatches on the record's task: each benchmark's published metric, the built-in
benchmark (and any unknown task) on the rule it always had."""
from __future__ import annotations

import pytest

from safe.data.records import Example
from safe.evaluation.metrics import exact_match, token_f1
from safe.evaluation.scoring import answer_score, gqa_normalize, task_metric, vqa_human_answers


def _ex(task: str, answers, family: str = "q", needs_audio: bool = False) -> Example:
    return Example(id="1", task=task, family=family, question="?", answers=tuple(answers), needs_audio=needs_audio)


# as read_vqav2 builds it: multiple_choice_answer first, then the ten annotator answers verbatim
VQA = _ex("vqav2", ["2", "2", "2", "2", "two", "3", "3", "3", "3", "4", "5"], family="number")


def test_vqav2_uses_the_official_accuracy_over_the_ten_annotators():
    assert vqa_human_answers(VQA) == ("2", "2", "2", "two", "3", "3", "3", "3", "4", "5")
    assert task_metric(VQA) == "vqa_accuracy"
    # "Two" -> "2"; the annotators said "2" three times ("two" is not "2" for the script: the human
    # answers are only punctuation-processed) -> 0.9, not 1.0 (which the mca-first layout would give).
    assert answer_score("Two", VQA) == pytest.approx(0.9)
    assert answer_score("3", VQA) == pytest.approx(1.0)
    assert answer_score("4", VQA) == pytest.approx(0.3)
    assert answer_score("7", VQA) == 0.0
    single = _ex("vqav2", ["Two"])  # no annotators: 1/0 on the official normalisation of both sides
    assert answer_score("2", single) == 1.0 and answer_score("3", single) == 0.0


def test_gqa_is_exact_match_after_gqa_cleaning():
    ex = _ex("gqa", ["traffic light"])
    assert task_metric(ex) == "gqa_exact_match"
    assert gqa_normalize("The Traffic-Light.") == "traffic light"
    assert answer_score("The traffic light.", ex) == 1.0
    assert answer_score("traffic lights", ex) == 0.0
    assert answer_score("two", _ex("gqa", ["2"])) == 0.0  # GQA maps no number words (VQA does)


@pytest.mark.parametrize("task", ["avqa", "music_avqa", "vggsound"])
def test_audio_question_benchmarks_are_accuracy_after_normalisation(task):
    ex = _ex(task, ["two"], needs_audio=True)
    assert task_metric(ex) == "exact_match"
    assert answer_score("2", ex) == 1.0 and answer_score("Two.", ex) == 1.0 and answer_score("3", ex) == 0.0


@pytest.mark.parametrize("task", ["audiocaps", "clotho", "synth"])
def test_captions_keep_the_per_row_token_f1(task):
    ex = _ex(task, ["a dog barks loudly", "dog barking"], family="caption", needs_audio=True)
    assert task_metric(ex) == "token_f1"
    assert answer_score("a dog barks", ex) == pytest.approx(max(token_f1("a dog barks", a) for a in ex.answers))
    assert answer_score("a dog barks", ex) == pytest.approx(0.8)  # P 1, R 2/3 against the first


@pytest.mark.parametrize("task", ["synth", "some_new_dataset"])
def test_builtin_and_unknown_tasks_keep_todays_rule(task):
    preds = ["red", "Red.", "the red", "blue", "2", "two", "a cat", "cats"]
    ex = _ex(task, ["red", "2", "cat"])
    assert task_metric(ex) == "exact_match"
    assert [answer_score(p, ex) for p in preds] == [exact_match(p, ex.answers) for p in preds]
    assert [answer_score(p, ex) for p in preds] == [1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0]
