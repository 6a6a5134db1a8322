"""Tests for safe.evaluation.metrics: hand-computed examples, the official VQA formulation written
out independently, and reference values from the COCO caption toolkit."""
from __future__ import annotations

import itertools
import math

import pytest

from safe.evaluation.metrics import (
    bleu,
    caption_tokens,
    cider_d,
    cider_d_scores,
    exact_match,
    normalize_answer,
    per_example,
    token_f1,
    vqa_accuracy,
)


# ---------------------------------------------------------------------------- normalisation
@pytest.mark.parametrize(
    "raw, norm",
    [
        ("Yes.", "yes"),
        ("The Dog!", "dog"),
        ("an apple", "apple"),
        ("Two", "2"),
        ("ten", "10"),
        ("none", "0"),
        ("2,000", "2000"),
        ("3.5", "3.5"),
        ("don't", "dont"),
        ("don\u2019t", "dont"),
        ("dont", "dont"),
        ("black-and-white", "black and white"),
        ("  a   red\tball\n", "red ball"),
        ("(red)", "red"),
        ("u.s.a.", "usa"),
        ("red/blue", "red blue"),
        ("the", ""),
        ("theater", "theater"),  # articles are whole words only
        ("eleven", "eleven"),  # the official map stops at ten
    ],
)
def test_normalize_answer(raw, norm):
    assert normalize_answer(raw) == norm


def test_normalize_answer_is_idempotent():
    for s in ["The 2 dogs' bowls, red/blue!", "It's a T-shirt.", "1,000.5 people"]:
        once = normalize_answer(s)
        assert normalize_answer(once) == once


def test_normalize_answer_rejects_non_str():
    with pytest.raises(TypeError):
        normalize_answer(3)


def test_caption_tokens_keep_articles_and_numbers():
    assert caption_tokens("A dog barks, two times!") == ["a", "dog", "barks", "two", "times"]


# ---------------------------------------------------------------------------- exact match
def test_exact_match():
    assert exact_match("Two", ["2"]) == 1.0
    assert exact_match("the dog", ["dog"]) == 1.0
    assert exact_match("cat", ["dog", "Cat."]) == 1.0
    assert exact_match("dogs", ["dog"]) == 0.0
    assert exact_match("red", "red") == 1.0  # a bare str is one answer
    assert exact_match("red ball", ("ball",)) == 0.0
    with pytest.raises(ValueError, match="empty"):
        exact_match("x", [])
    with pytest.raises(TypeError):
        exact_match(None, ["x"])


# ---------------------------------------------------------------------------- VQA accuracy
def official_vqa(pred: str, answers: list[str]) -> float:
    """The official formulation written out: for each annotator left out, min(1, #matches among
    the other answers / 3); the mean over the leave-one-out subsets."""
    p = normalize_answer(pred)
    accs = []
    for subset in itertools.combinations(range(len(answers)), len(answers) - 1):
        matches = sum(normalize_answer(answers[i]) == p for i in subset)
        accs.append(min(1.0, matches / 3))
    return sum(accs) / len(accs)


@pytest.mark.parametrize("m, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_vqa_accuracy_known_values(m, expected):
    answers = ["yes"] * m + ["no"] * (10 - m)
    assert vqa_accuracy("yes", answers) == pytest.approx(expected)


def test_vqa_accuracy_matches_official_formulation():
    pool = ["2", "two", "3", "three", "Two.", "4", "many"]
    for i in range(60):
        answers = [pool[(i * 7 + 3 * j * j + j) % len(pool)] for j in range(10)]
        for pred in ("2", "three", "4", "many", "5"):
            assert vqa_accuracy(pred, answers) == pytest.approx(official_vqa(pred, answers))


def test_vqa_accuracy_normalises_both_sides():
    # "two", "2", "Two." all normalise to "2": 3 of 10 annotators
    answers = ["two", "2", "Two."] + ["3"] * 7
    assert vqa_accuracy("2", answers) == pytest.approx(0.9)
    assert vqa_accuracy("Three", answers) == pytest.approx(1.0)


def test_vqa_accuracy_fewer_answers():
    answers = ["red", "red", "blue", "red", "green"]
    for pred in ("red", "blue", "black"):
        assert vqa_accuracy(pred, answers) == pytest.approx(official_vqa(pred, answers))
    assert vqa_accuracy("red", answers) == pytest.approx((3 * (2 / 3) + 2 * 1.0) / 5)
    # one answer: no subset to leave out -> exact match
    assert vqa_accuracy("The red", ["red"]) == 1.0
    assert vqa_accuracy("blue", ["red"]) == 0.0


# ---------------------------------------------------------------------------- token F1
def test_token_f1():
    # "red ball" vs "big red ball": common 2, P = 1, R = 2/3 -> F1 = 0.8
    assert token_f1("the red ball", ["a big red ball"]) == pytest.approx(0.8)
    assert token_f1("red ball", ["blue cube", "red ball"]) == 1.0  # best answer
    assert token_f1("red red", ["red"]) == pytest.approx(2 * 0.5 * 1 / 1.5)  # multiset
    assert token_f1("cat", ["dog"]) == 0.0
    assert token_f1("the", ["a"]) == 1.0  # both empty after normalisation
    assert token_f1("the", ["dog"]) == 0.0


def test_per_example():
    assert per_example(exact_match, ["a", "b"], [["a"], ["c"]]) == [1.0, 0.0]
    with pytest.raises(ValueError, match="2 and 3"):
        per_example(exact_match, ["a", "b"], [["a"], ["b"], ["c"]])


# ---------------------------------------------------------------------------- BLEU
def test_bleu_identical_is_one():
    preds = ["a dog barks loudly in the street", "rain falls on a tin roof"]
    assert bleu(preds, [[p] for p in preds]) == pytest.approx(1.0)
    assert bleu(preds, [[p, "something else entirely here"] for p in preds]) == pytest.approx(1.0)


def test_bleu_papineni_clipping_example():
    # Papineni et al. (2002), section 2.1: modified unigram precision 2/7; c = 7 equals the
    # closest reference length 7, so no brevity penalty.
    refs = [["the cat is on the mat", "there is a cat on the mat"]]
    assert bleu(["the the the the the the the"], refs, n=1) == pytest.approx(2 / 7)


def test_bleu_brevity_penalty():
    # all n-grams match, c = 3, r = 6: BP = exp(1 - 6/3)
    assert bleu(["the cat sat"], [["the cat sat on the mat"]], n=2) == pytest.approx(math.exp(-1))
    # no 4-gram in a 3-word prediction: the toolkit's p_4 = 1e-15 / 1e-9 (its smoothing terms),
    # so BLEU-4 is small but not 0 (it was 0 before the toolkit computed it)
    assert bleu(["the cat sat"], [["the cat sat on the mat"]], n=4) == pytest.approx(
        math.exp(-1) * 1e-6 ** 0.25, rel=1e-6)
    # a prediction of the exact reference length has no brevity penalty (c == r)
    assert bleu(["the cat sat"], [["the cat sat"]], n=2) == pytest.approx(1.0)


def test_bleu_closest_reference_length_ties_to_shorter():
    # c = 5; references of length 4 and 6 are equally close -> r = 4, c > r, BP = 1.
    # (Taking the longer one would give exp(1 - 6/5) = 0.819.)
    assert bleu(["a b c d e"], [["a b c d", "a b c d e f"]], n=1) == pytest.approx(1.0)


def test_bleu_is_corpus_level():
    # p1 = (4 + 3) / 8, p2 = (3 + 1) / 6, BP = 1 -> sqrt(7/8 * 2/3); the mean of sentence
    # BLEU-2 would be (1 + sqrt(3/4 * 1/3)) / 2 = 0.75.
    score = bleu(["a b c d", "e f g h"], [["a b c d"], ["e f x h"]], n=2)
    assert score == pytest.approx(math.sqrt(7 / 8 * 2 / 3))


def test_bleu_validation():
    with pytest.raises(ValueError, match="2 and 1"):
        bleu(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="empty"):
        bleu(["a"], [[]])
    with pytest.raises(ValueError, match="n must be"):
        bleu(["a"], [["a"]], n=0)
    with pytest.raises(TypeError):
        bleu("a dog", [["a dog"]])


# A small fixed corpus. Reference values: pycocoevalcap 1.2 (the COCO caption toolkit), Bleu(4)
# and Cider on the same tokens (" ".join(caption_tokens(...)) fed to it in place of its PTB
# tokenizer). Its BLEU adds 1e-9/1e-15 smoothing terms, hence the 1e-8 relative tolerance.
PREDS = [
    "a dog barks loudly in the street",
    "rain falls on a metal roof",
    "a car engine runs while birds sing",
    "a man speaks and a dog barks",
    "water runs in a stream",
    "a bell rings twice",
]
REFS = [
    ["a dog is barking loudly on the street", "a dog barks in a busy street"],
    ["heavy rain falls on a roof", "rain is falling on a tin roof", "rain on the roof"],
    ["an engine idles as birds sing nearby", "a car engine is running and birds chirp"],
    ["a man talks while a dog barks", "a person speaks then a dog barks twice"],
    ["a stream of water flows over rocks"],
    ["a church bell rings", "a bell is ringing twice", "bells ring loudly"],
]
COCO_BLEU = [0.7882995573785103, 0.6106142115082336, 0.418846639862852, 0.24928220797892564]
COCO_CIDER = 2.0550861140471586
COCO_CIDER_PER = [
    2.3216055750454543,
    2.9707535584659146,
    2.0062443129260314,
    1.9735339581427713,
    1.4481987601098405,
    1.6101805195929417,
]


def test_bleu_matches_coco_toolkit():
    for k in range(1, 5):
        assert bleu(PREDS, REFS, n=k) == pytest.approx(COCO_BLEU[k - 1], rel=1e-8)


# ---------------------------------------------------------------------------- CIDEr-D
# Two-example corpora where no n-gram is shared between the examples: every n-gram of the
# references has df = 1 and every n-gram absent from them df = 0, so every weight is log(2) and
# the tf-idf cosines reduce to counting.
OTHER = ("one two three four", ["one two three four"])  # a perfect match, 10.0


def test_cider_d_perfect_and_disjoint():
    scores = cider_d_scores(["red green blue white", "five six seven eight"],
                            [["red green blue white"], ["one two three four"]])
    assert scores == pytest.approx([10.0, 0.0])


def test_cider_d_hand_computed_partial_match():
    # unigrams 3 shared of 4|4 -> 3/4; bigrams 2/3; trigrams 1/2; 4-grams 0; same length.
    scores = cider_d_scores(["red green blue black", OTHER[0]], [["red green blue white"], OTHER[1]])
    assert scores[0] == pytest.approx(10 * (3 / 4 + 2 / 3 + 1 / 2 + 0) / 4)
    assert scores[1] == pytest.approx(10.0)
    assert cider_d(["red green blue black", OTHER[0]], [["red green blue white"], OTHER[1]]) == (
        pytest.approx((scores[0] + 10.0) / 2)
    )


def test_cider_d_clipping_and_length_penalty():
    # pred repeats "black": unigram dot clipped to 4 (not 5), |pred| = sqrt(7), |ref| = 2;
    # bigrams 3 / (2 sqrt 3); trigrams 2 / (sqrt 3 sqrt 2); 4-grams 1 / sqrt 2;
    # lengths 5 vs 4 -> exp(-1 / (2 * 6^2)).
    scores = cider_d_scores(["red green blue black black", OTHER[0]],
                            [["red green blue black"], OTHER[1]])
    per_order = [
        4 / (math.sqrt(7) * 2),
        3 / (2 * math.sqrt(3)),
        2 / (math.sqrt(3) * math.sqrt(2)),
        1 / math.sqrt(2),
    ]
    assert scores[0] == pytest.approx(10 * sum(per_order) / 4 * math.exp(-1 / 72))


def test_cider_d_short_caption_and_multiple_references():
    # a 2-word exact match has no 3- or 4-grams: (1 + 1 + 0 + 0) / 4 * 10
    assert cider_d_scores(["dog barks", OTHER[0]], [["dog barks"], OTHER[1]])[0] == pytest.approx(5.0)
    # the score is the mean over references: 10 against the matching one, 0 against the other
    s = cider_d_scores(["red green blue white", OTHER[0]],
                       [["red green blue white", "cat meows very softly"], OTHER[1]])
    assert s[0] == pytest.approx(5.0)


def test_cider_d_idf_from_reference_corpus():
    # "a" occurs in the references of every example: idf log(2/2) = 0, so it earns nothing.
    refs = [["a dog barks loudly"], ["a cat meows softly"]]
    s = cider_d_scores(["a", "cat"], refs)
    assert s[0] == 0.0 and s[1] > 0.0
    # a one-example corpus has idf log(1/1) = 0 everywhere (documented)
    assert cider_d(["a dog barks"], [["a dog barks"]]) == 0.0


def test_cider_d_ranks_better_caption_higher():
    refs = REFS
    good = cider_d(PREDS, refs)
    shuffled = cider_d(PREDS[1:] + PREDS[:1], refs)
    assert good > shuffled


def test_cider_d_matches_coco_toolkit():
    assert cider_d(PREDS, REFS) == pytest.approx(COCO_CIDER, rel=1e-12)
    assert cider_d_scores(PREDS, REFS) == pytest.approx(COCO_CIDER_PER, rel=1e-12)


def test_cider_d_other_orders_by_hand():
    # n = 2 on the partial-match example above: (3/4 + 2/3) / 2 * 10
    scores = cider_d_scores(["red green blue black", OTHER[0]], [["red green blue white"], OTHER[1]], n=2)
    assert scores[0] == pytest.approx(10 * (3 / 4 + 2 / 3) / 2)
    assert bleu(PREDS, REFS, n=5) < bleu(PREDS, REFS, n=4)  # orders past the toolkit's 4 work


def test_empty_captions():
    # empty predictions score 0; references with no words at all (the toolkit fails there) too
    assert cider_d_scores(["", "a dog barks"], [["a dog barks"], ["rain"]])[0] == 0.0
    assert cider_d_scores(["a dog", "rain"], [["!"], ["..."]]) == [0.0, 0.0]
    assert bleu(["", ""], [["a dog barks"], ["rain"]]) == 0.0


def test_cider_d_validation():
    with pytest.raises(ValueError, match="1 and 2"):
        cider_d(["a"], [["a"], ["b"]])
    with pytest.raises(ValueError, match="sigma"):
        cider_d(["a"], [["a"]], sigma=0)
    with pytest.raises(TypeError):
        cider_d(["a"], [[3]])


# ------------------------------------------------------------- the toolkit's own entry points
def _toolkit(preds, refs):
    """The COCO caption toolkit's Cider and Bleu classes, as its COCOEvalCap calls them (image id ->
    list of tokenised captions), with caption_tokens in place of its PTB tokenizer."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    res = {i: [" ".join(caption_tokens(p))] for i, p in enumerate(preds)}
    gts = {i: [" ".join(caption_tokens(r)) for r in rs] for i, rs in enumerate(refs)}
    cider, per = Cider().compute_score(gts, res)
    bleus, _ = Bleu(4).compute_score(gts, res, verbose=0)
    return cider, list(per), bleus


def _random_corpus(seed, size):
    import random

    rnd = random.Random(seed)
    words = "a the dog cat barks meows loudly softly in on street roof rain falls bell rings twice".split()

    def caption():
        return " ".join(rnd.choice(words) for _ in range(rnd.choice([1, 2, 3, 5, 8, 12])))

    preds = [caption() for _ in range(size)]
    refs = [[caption() for _ in range(rnd.randint(1, 4))] for _ in range(size)]
    for i in range(0, size, 5):  # some near-copies, so that high orders match too
        preds[i] = refs[i][0] + " loudly"
    return preds, refs


@pytest.mark.parametrize("corpus", ["fixed", 0, 1, 2])
def test_caption_metrics_equal_the_toolkit_classes(corpus):
    preds, refs = (PREDS, REFS) if corpus == "fixed" else _random_corpus(corpus, 40)
    cider, per, bleus = _toolkit(preds, refs)
    assert cider_d(preds, refs) == pytest.approx(cider, rel=1e-12)
    assert cider_d_scores(preds, refs) == pytest.approx(per, rel=1e-12, abs=1e-15)
    assert [bleu(preds, refs, n=k) for k in range(1, 5)] == pytest.approx(bleus, rel=1e-12)


def test_cider_d_scale_is_the_toolkits():
    # The toolkit's x10 convention (a perfect match of a 4+-word caption with rare n-grams is 10),
    # the scale of published CIDEr-D numbers (and of the demo's 8.70).
    preds = ["red green blue white", "five six seven eight"]
    refs = [["red green blue white"], ["one two three four"]]
    assert _toolkit(preds, refs)[1] == pytest.approx([10.0, 0.0])
    assert cider_d_scores(preds, refs) == pytest.approx([10.0, 0.0])
