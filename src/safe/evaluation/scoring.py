"""One score per answer, the metric its benchmark publishes, the same rule everywhere (policy rewards,
evaluation tables).

:func:`answer_score` dispatches on the record's ``task`` (the reader's name, see
:mod:`safe.data.readers`):

=====================================  ===============================================================
task                                   score of one answer (:func:`task_metric` names it)
=====================================  ===============================================================
caption rows (``example.is_caption``,  ``token_f1``: token F1 against the best reference, per row (a
AudioCaps, Clotho, built-in captions)  reward needs a per-row score; the evaluation adds the corpus
                                       metrics CIDEr-D / BLEU / ROUGE-L, :mod:`safe.evaluation.captions`)
``vqav2``                              ``vqa_accuracy``: the official VQA accuracy over the annotators'
                                       answers (:func:`~safe.evaluation.vqa_metric.vqa_accuracy_official`)
``gqa``                                ``gqa_exact_match``: exact match after :func:`gqa_normalize`
``avqa``, ``music_avqa``, ``vggsound``  ``exact_match``: accuracy, exact match after
                                       :func:`~safe.evaluation.metrics.normalize_answer`
anything else (the built-in ``synth``)  ``exact_match`` (the rule every task had before; the built-in
                                       benchmark's figures are unchanged)
=====================================  ===============================================================
"""
from __future__ import annotations

import re

from safe.data.records import Example
from safe.evaluation.metrics import exact_match, token_f1
from safe.evaluation.vqa_metric import vqa_accuracy_official, vqa_normalize

__all__ = ["BINARY_METRICS", "TASK_METRICS", "answer_score", "gqa_exact_match", "gqa_normalize", "task_metric",
           "vqa_human_answers"]

#: The metric of each known question-answering task (captions are scored by ``token_f1`` whatever the task).
TASK_METRICS = {"vqav2": "vqa_accuracy", "gqa": "gqa_exact_match", "avqa": "exact_match",
                "music_avqa": "exact_match", "vggsound": "exact_match"}
#: Metrics whose scores are 0 or 1 (McNemar applies to them; the others need a test for graded scores).
BINARY_METRICS = frozenset({"exact_match", "gqa_exact_match"})

_GQA_PUNCT = re.compile(r"[^\w\s]|_")
_ARTICLES = frozenset({"a", "an", "the"})


def task_metric(example: Example) -> str:
    """The name of the per-answer metric :func:`answer_score` applies to ``example``."""
    if example.is_caption:
        return "token_f1"
    return TASK_METRICS.get(example.task, "exact_match")


def gqa_normalize(text: str) -> str:
    """GQA answer cleaning: lowercase, punctuation to spaces, articles dropped, whitespace collapsed.

    GQA's official ``eval.py`` compares the prediction with the answer as strings
    (``predicted == gold``) and expects predictions already in the answers' clean form (lowercase
    words such as ``"no"``, ``"traffic light"``); generated text is cleaned before it (LLaVA's GQA
    converter lowercases and drops the final period). Applied to both sides this changes nothing for
    a clean prediction, and ``"The table."`` matches ``"table"``.
    """
    if not isinstance(text, str):
        raise TypeError(f"a GQA answer must be a str, got {type(text).__name__}")
    words = _GQA_PUNCT.sub(" ", text.lower()).split()
    return " ".join(w for w in words if w not in _ARTICLES)


def gqa_exact_match(prediction: str, answers: tuple[str, ...] | list[str]) -> float:
    """1.0 when the cleaned prediction equals a cleaned answer (GQA has one), else 0.0."""
    p = gqa_normalize(prediction)
    return 1.0 if any(p == gqa_normalize(a) for a in answers) else 0.0


def vqa_human_answers(example: Example) -> tuple[str, ...]:
    """The annotators' answers of a VQAv2 record: ``answers[1:]`` (the reader puts the
    ``multiple_choice_answer`` first, then the ten annotator answers verbatim), or ``answers`` when
    the record holds a single answer."""
    return example.answers[1:] if len(example.answers) > 1 else example.answers


def answer_score(prediction: str, example: Example) -> float:
    """The score of ``prediction`` for ``example`` with its task's metric (module docstring), in [0, 1].

    VQAv2 records with a single answer (no annotator answers) score 1/0 on the official
    normalisation of both sides, since the leave-one-out average needs at least two answers.
    """
    metric = task_metric(example)
    if metric == "token_f1":
        return max(token_f1(prediction, a) for a in example.answers)
    if metric == "vqa_accuracy":
        humans = vqa_human_answers(example)
        if len(humans) == 1:
            return 1.0 if vqa_normalize(prediction) == vqa_normalize(humans[0]) else 0.0
        return vqa_accuracy_official(prediction, humans)
    if metric == "gqa_exact_match":
        return gqa_exact_match(prediction, example.answers)
    return float(exact_match(prediction, example.answers))
