"""The official VQAv2 accuracy (safe.evaluation.vqa_metric) against hand-checked examples and against
the official script's loop written out here as the script has it (answer dicts, in-place processing)."""
from __future__ import annotations

import pytest

from safe.evaluation.vqa_metric import (
    CONTRACTIONS,
    process_digit_article,
    process_punctuation,
    vqa_accuracy_official,
    vqa_normalize,
)


@pytest.mark.parametrize("raw, norm", [
    ("Two", "2"),
    ("the dog.", "dog"),
    ("dont", "don't"),            # the contractions table
    ("don't", "don't"),           # the apostrophe is not punctuation for the script
    ("3.5", "3.5"),               # a period before a digit stays
    (".5", ".5"),
    ("3.", "3"),
    ("yes.", "yes"),
    ("Yes!", "yes"),              # "!" not next to a space: replaced by a space, then split away
    ("2,000", "2000"),            # digit-comma-digit: every mark deleted, not spaced
    ("1,000-2,000", "10002000"),  # ... the hyphen too, because of the number comma
    ("black-and-white", "black and white"),
    ("t-shirt", "t shirt"),
    ("hello, world", "hello world"),  # ", " next to a space: deleted
    ("a dog", "dog"),
    ("an apple", "apple"),
    ("none", "0"),
    ("ten", "10"),
    ("eleven", "eleven"),         # the map stops at ten
    ("Im", "im"),                 # the capitalised table keys never fire (the text is lowercased first)
    ("whats up", "what's up"),
    ("  Two\tdogs\n", "2 dogs"),
    ("u.s.a.", "usa"),
    ("the", ""),
])
def test_normalisation_examples(raw, norm):
    assert vqa_normalize(raw) == norm


def test_the_tables_are_the_scripts():
    assert len(CONTRACTIONS) == 120  # entries of the official table
    assert CONTRACTIONS["dont"] == "don't" and CONTRACTIONS["somebody'd"] == "somebodyd"  # its odd entry kept
    assert CONTRACTIONS["yall'd've"] == "y'all'd've" and CONTRACTIONS["twas"] == "'twas"
    assert process_digit_article("The Two Dogs") == "2 dogs"
    assert process_punctuation("Yes.") == "Yes"  # case is kept: only predictions are lowercased


@pytest.mark.parametrize("k, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (7, 1.0), (10, 1.0)])
def test_leave_one_out_values(k, expected):
    """k of the 10 annotators said "2". Leaving out one of the k leaves k - 1 matches among nine, leaving
    out one of the 10 - k others leaves k, so acc = (k min(1, (k-1)/3) + (10-k) min(1, k/3)) / 10:
    k=1: (1*0 + 9*(1/3)) / 10 = 0.3;  k=2: (2*(1/3) + 8*(2/3)) / 10 = 6/10 = 0.6;
    k=3: (3*(2/3) + 7*1) / 10 = 9/10 = 0.9;  k=4: (4*1 + 6*1) / 10 = 1.0;  k=0: 0."""
    answers = ["2"] * k + ["3"] * (10 - k)
    assert vqa_accuracy_official("two", answers) == pytest.approx(expected, abs=1e-12)


def test_identical_human_answers_are_not_processed():
    """The script processes the human answers only when they disagree (``len(set(...)) > 1``)."""
    assert vqa_accuracy_official("yes", ["Yes."] * 10) == 0.0
    assert vqa_accuracy_official("yes", ["Yes."] * 9 + ["yes"]) == pytest.approx(0.3)  # processed: "Yes" != "yes"
    assert vqa_accuracy_official("red", ["red."] * 5 + ["blue"] * 5) == 1.0  # processed: "red." -> "red"
    # ... and only punctuation-processed: "red," becomes "red " (a space, not stripped), as in the script
    assert vqa_accuracy_official("red", ["red,"] * 5 + ["blue"] * 5) == 0.0


def _script_accuracy(res_ans: str, gt_answers: list[str]) -> float:
    """The official evaluate() loop for one question, as the script writes it."""
    import re
    punct = [';', r"/", '[', ']', '"', '{', '}', '(', ')', '=', '+', '\\', '_', '-', '>', '<', '@', '`', ',', '?', '!']
    comma = re.compile(r"(\d)(\,)(\d)")
    period = re.compile(r"(?!<=\d)(\.)(?!\d)")

    def punctuation(in_text):
        out = in_text
        for p in punct:
            if (p + ' ' in in_text or ' ' + p in in_text) or (re.search(comma, in_text) is not None):
                out = out.replace(p, '')
            else:
                out = out.replace(p, ' ')
        return period.sub("", out, re.UNICODE)

    def digit_article(in_text):
        manual = {'none': '0', 'zero': '0', 'one': '1', 'two': '2', 'three': '3', 'four': '4', 'five': '5',
                  'six': '6', 'seven': '7', 'eight': '8', 'nine': '9', 'ten': '10'}
        out = [manual.setdefault(w, w) for w in in_text.lower().split()]
        out = [w for w in out if w not in ['a', 'an', 'the']]
        return ' '.join(CONTRACTIONS.get(w, w) for w in out)

    res_ans = digit_article(punctuation(res_ans.replace('\n', ' ').replace('\t', ' ').strip()))
    gts = [{"answer": a, "answer_id": i + 1} for i, a in enumerate(gt_answers)]
    if len(set(gt_answers)) > 1:
        for d in gts:
            d["answer"] = punctuation(d["answer"])
    accs = []
    for d in gts:
        others = [item for item in gts if item != d]
        accs.append(min(1, float(len([item for item in others if item["answer"] == res_ans])) / 3))
    return float(sum(accs)) / len(accs)


@pytest.mark.parametrize("pred, answers", [
    ("Two", ["2", "2", "two", "3", "2", "4", "2", "2", "tow", "2"]),
    ("the black-and-white cat.", ["black and white", "black and white cat", "black", "black and white",
                                  "white", "black and white", "cat", "black and white", "b&w", "gray"]),
    ("2,000 ft", ["2000 ft", "2,000 ft", "2000", "2000 feet", "2000 ft", "2,000", "2000 ft", "x", "y", "z"]),
    ("dont know", ["don't know", "dont know", "unknown", "don't know", "no", "don't know", "?", "no", "yes", "no"]),
    ("yes", ["yes"] * 10),
    ("no", ["yes"] * 10),
    ("3.5", ["3.5", "3.5", "3", "3.5 ", "4", "3.5", "3.50", "3.5", "3.5", "3.5"]),
])
def test_matches_the_scripts_loop(pred, answers):
    assert vqa_accuracy_official(pred, answers) == pytest.approx(_script_accuracy(pred, answers), abs=1e-12)


def test_bad_input_is_refused_by_name():
    with pytest.raises(ValueError, match="at least 2 human answers"):
        vqa_accuracy_official("yes", ["yes"])
    with pytest.raises(TypeError, match="not a single str"):
        vqa_accuracy_official("yes", "yes")
    with pytest.raises(TypeError, match="prediction must be a str"):
        vqa_normalize(3)
    with pytest.raises(TypeError, match="human_answers item"):
        vqa_accuracy_official("yes", ["yes", None])
