"""Answer and caption metrics (the evaluation protocol).

Short-answer QA:
    :func:`normalize_answer` (VQA-style answer normalisation), :func:`exact_match`,
    :func:`vqa_accuracy` (the VQAv2 annotator-consensus accuracy), :func:`token_f1`.
Captions (AudioCaps / Clotho style, short generated captions against several references):
    :func:`bleu` (corpus BLEU-n with brevity penalty; :func:`bleu_scores` for every order at once)
    and :func:`cider_d` (CIDEr-D), with
    :func:`cider_d_scores` giving the per-caption scores that a bootstrap CI needs. Both are
    computed by the COCO caption toolkit (``pycocoevalcap``), so the numbers compare with
    published ones; only its Java PTB tokenizer is replaced, by :func:`caption_tokens`.

Inputs are plain ``str`` / lists of ``str`` and every metric returns a ``float``. Where an answer
set is expected, a bare ``str`` is taken as a single answer / reference.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

from pycocoevalcap.bleu import bleu_scorer as _coco_bleu
from pycocoevalcap.cider import cider_scorer as _coco_cider

__all__ = [
    "normalize_answer",
    "caption_tokens",
    "exact_match",
    "vqa_accuracy",
    "token_f1",
    "per_example",
    "bleu",
    "bleu_scores",
    "cider_d",
    "cider_d_scores",
]

# ----------------------------------------------------------------------------------------------
# normalisation
# ----------------------------------------------------------------------------------------------
# Number words the official VQA evaluation maps to digits (its "manualMap"); "none" -> "0" is the
# official choice too, because "none" is the usual answer to "how many ...?" when the count is 0.
_NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_ARTICLES = frozenset({"a", "an", "the"})

_APOSTROPHES = re.compile(r"[\u2018\u2019\u02bc`']")
# "2,000" -> "2000": a comma between digits is a thousands separator, not punctuation.
_THOUSANDS_COMMA = re.compile(r"(?<=\d),(?=\d)")
# A period is kept only as a decimal point (followed by a digit: "3.5", ".5"), as in the official
# periodStrip; "yes." and "u.s.a" lose their periods.
_NON_DECIMAL_PERIOD = re.compile(r"\.(?!\d)")
# Anything left that is not a word character, whitespace or a decimal point is punctuation.
_PUNCT = re.compile(r"[^\w\s.]|_")


def normalize_answer(s: str) -> str:
    """VQA-style normalisation of a short answer, applied to predictions and references alike.

    A re-implementation of the steps of the official VQA evaluation (``vqaEval.py``:
    ``processPunctuation`` and ``processDigitArticle``), in this order:

    1. lowercase; newlines/tabs become spaces;
    2. apostrophes (straight, curly, backtick) are deleted, so ``"don't"``, ``"don’t"`` and
       ``"dont"`` all become ``"dont"`` -- this replaces the official contraction table (which maps
       ``"dont"`` to ``"don’t"``): both make a contraction match its apostrophe-less spelling;
    3. thousands separators are removed (``"2,000"`` -> ``"2000"``); a period survives only as a
       decimal point (``"3.5"``), all other periods are removed (``"yes."`` -> ``"yes"``);
    4. other punctuation becomes a space: removed at the edges of words (``"yes!"`` -> ``"yes"``)
       and a separator inside them (``"t-shirt"`` -> ``"t shirt"``);
    5. number words ``zero``..``ten`` (and ``none``) become digits;
    6. the articles ``a``, ``an``, ``the`` are dropped;
    7. whitespace is collapsed.

    Differences from the official script, on purpose: it normalises the references only when the
    annotators disagree (VQAv2 references are pre-normalised); here both sides always go through
    the same function, which is what a dataset without pre-normalised references needs.

    Returns:
        The normalised string (possibly empty, e.g. for ``"the"``).
    """
    if not isinstance(s, str):
        raise TypeError(f"normalize_answer expects a str, got {type(s).__name__}")
    s = s.lower().replace("\n", " ").replace("\t", " ")
    s = _APOSTROPHES.sub("", s)
    s = _THOUSANDS_COMMA.sub("", s)
    s = _NON_DECIMAL_PERIOD.sub("", s)
    # Replacing with a space (then collapsing) deletes punctuation at word edges ("yes!") and
    # splits words joined by it ("black-and-white" -> "black and white"). The official script
    # decides delete-vs-space once per string, depending on unrelated punctuation elsewhere in it.
    s = _PUNCT.sub(" ", s)
    words = []
    for w in s.split():
        w = _NUMBER_WORDS.get(w, w)
        if w not in _ARTICLES:
            words.append(w)
    return " ".join(words)


def caption_tokens(s: str) -> list[str]:
    """Tokenise a caption for BLEU / CIDEr-D: lowercase, apostrophes deleted, every other
    non-alphanumeric character treated as a separator.

    Articles and number words are kept (they are part of caption fluency, and the standard caption
    toolkits keep them). This stands in for the PTB tokenizer of the COCO caption toolkit, which
    also lowercases and drops punctuation; it differs in splitting ``"dog's"`` into ``"dogs"``
    rather than ``"dog 's"``.
    """
    if not isinstance(s, str):
        raise TypeError(f"captions must be str, got {type(s).__name__}")
    s = _APOSTROPHES.sub("", s.lower())
    return re.findall(r"[^\W_]+", s)


# ----------------------------------------------------------------------------------------------
# input checking
# ----------------------------------------------------------------------------------------------
def _answer_list(answers: str | Iterable[str], name: str = "answers") -> list[str]:
    if isinstance(answers, str):
        return [answers]
    try:
        out = list(answers)
    except TypeError:
        raise TypeError(f"{name} must be a str or a sequence of str, got {type(answers).__name__}") from None
    if not out:
        raise ValueError(f"{name} is empty: at least one reference answer is needed")
    for a in out:
        if not isinstance(a, str):
            raise TypeError(f"{name} must contain str, found {type(a).__name__}")
    return out


def _check_pred(pred: str) -> str:
    if not isinstance(pred, str):
        raise TypeError(f"pred must be a str, got {type(pred).__name__}")
    return pred


def _check_corpus(preds: Sequence[str], refs_list: Sequence[str | Sequence[str]]):
    if isinstance(preds, str):
        raise TypeError("preds must be a list of captions, not a single str")
    preds = list(preds)
    refs_list = list(refs_list)
    if len(preds) != len(refs_list):
        raise ValueError(
            f"preds and refs_list must have the same length, got {len(preds)} and {len(refs_list)}"
        )
    if not preds:
        raise ValueError("preds and refs_list are empty")
    for p in preds:
        _check_pred(p)
    refs = [_answer_list(r, f"refs_list[{i}]") for i, r in enumerate(refs_list)]
    return preds, refs


# ----------------------------------------------------------------------------------------------
# short-answer metrics
# ----------------------------------------------------------------------------------------------
def exact_match(pred: str, answers: str | Sequence[str]) -> float:
    """1.0 if ``normalize_answer(pred)`` equals the normalised form of any answer, else 0.0.

    The metric for datasets whose answer list holds acceptable alternatives (GQA, AVQA, the
    built-in benchmark) rather than annotator votes.
    """
    p = normalize_answer(_check_pred(pred))
    return 1.0 if any(p == normalize_answer(a) for a in _answer_list(answers)) else 0.0


def vqa_accuracy(pred: str, answers: str | Sequence[str]) -> float:
    """VQAv2 accuracy of one prediction against the human answers (Antol et al. 2015; Goyal et
    al. 2017; official ``vqaEval.py``), with this module's lenient normalisation on both sides.
    The scores of the evaluation use the official script's normalisation instead:
    :func:`safe.evaluation.vqa_metric.vqa_accuracy_official`.

    ``Acc = min(#annotators who gave pred / 3, 1)``, averaged over the 10 subsets of 9 of the 10
    annotators (leave one out). If ``m`` of the ``n`` normalised answers equal the normalised
    prediction, leaving out a matching annotator leaves ``m - 1`` matches and leaving out another
    leaves ``m``, so::

        Acc = (m * min(1, (m - 1) / 3) + (n - m) * min(1, m / 3)) / n

    which gives 0.3, 0.6, 0.9, 1.0 for m = 1, 2, 3, >= 4 out of 10.

    With n != 10 answers the same leave-one-out average is taken over the n subsets of n - 1
    answers (a correct answer then needs 4 agreeing annotators to score 1.0, as in VQAv2). With a
    single answer there is nothing to leave out, and the score is :func:`exact_match`. Use
    :func:`exact_match` for datasets whose answers are alternatives rather than votes.
    """
    refs = _answer_list(answers)
    p = normalize_answer(_check_pred(pred))
    n = len(refs)
    if n == 1:
        return 1.0 if p == normalize_answer(refs[0]) else 0.0
    m = sum(1 for a in refs if normalize_answer(a) == p)
    return (m * min(1.0, (m - 1) / 3.0) + (n - m) * min(1.0, m / 3.0)) / n


def token_f1(pred: str, answers: str | Sequence[str]) -> float:
    """Bag-of-tokens F1 between the normalised prediction and each answer; the best one.

    SQuAD-style (Rajpurkar et al. 2016): with ``common`` the multiset intersection of the
    normalised tokens, ``P = |common| / |pred|``, ``R = |common| / |answer|``,
    ``F1 = 2PR / (P + R)`` (0 when nothing is shared). If either side normalises to no tokens
    (e.g. ``"the"``), F1 is 1.0 when both are empty, else 0.0.
    """
    ptoks = normalize_answer(_check_pred(pred)).split()
    best = 0.0
    for a in _answer_list(answers):
        atoks = normalize_answer(a).split()
        if not ptoks or not atoks:
            f1 = 1.0 if ptoks == atoks else 0.0
        else:
            common = sum((Counter(ptoks) & Counter(atoks)).values())
            if common == 0:
                f1 = 0.0
            else:
                prec = common / len(ptoks)
                rec = common / len(atoks)
                f1 = 2 * prec * rec / (prec + rec)
        best = max(best, f1)
    return best


def per_example(
    metric: Callable[[str, Sequence[str]], float],
    preds: Sequence[str],
    answers_list: Sequence[str | Sequence[str]],
) -> list[float]:
    """Apply a per-answer metric (``exact_match``, ``vqa_accuracy``, ``token_f1``) to aligned
    lists; returns one float per example (the input of McNemar / bootstrap / mean).
    """
    if isinstance(preds, str):
        raise TypeError("preds must be a list of answers, not a single str")
    preds, answers_list = list(preds), list(answers_list)
    if len(preds) != len(answers_list):
        raise ValueError(
            f"preds and answers_list must have the same length, got {len(preds)} and "
            f"{len(answers_list)}"
        )
    return [float(metric(p, a)) for p, a in zip(preds, answers_list)]


# ----------------------------------------------------------------------------------------------
# caption metrics
# ----------------------------------------------------------------------------------------------
def _toolkit_text(caption: str) -> str:
    """A caption as the toolkit expects it after its tokenizer: tokens joined by single spaces."""
    return " ".join(caption_tokens(caption))


def bleu(preds: Sequence[str], refs_list: Sequence[str | Sequence[str]], n: int = 4) -> float:
    """Corpus BLEU-n (Papineni et al. 2002) of the COCO caption toolkit (``pycocoevalcap``'s
    ``BleuScorer``, the scorer behind its ``Bleu``), uniform weights and the brevity penalty.

    Over the whole corpus, for each order k = 1..n: ``p_k = sum clipped-count / sum count`` where
    a predicted k-gram's count is clipped to its largest count in any one reference of that
    example. With ``c`` the total predicted length and ``r`` the sum over examples of the
    reference length closest to the prediction's length (ties -> the shorter reference)::

        BP = 1 if c >= r else exp(1 - r / c)
        BLEU = BP * exp(mean_k log p_k)

    As the toolkit computes it: each ``p_k`` is ``(matched + 1e-15) / (total + 1e-9)``, so an order
    with no match (or no k-gram at all, e.g. 3-word captions for BLEU-4) gives a small positive
    score rather than 0 (``the cat sat`` against ``the cat sat on the mat`` scores BLEU-4 =
    ``exp(-1) * 1e-6 ** (1/4)`` = 0.0116); an all-empty prediction corpus scores 0.0. Tokens come
    from :func:`caption_tokens` (in place of the toolkit's Java PTB tokenizer). The toolkit's
    ``Bleu`` class stops at n = 4; the scorer is fed n-grams up to ``n`` here, so any order works.

    Args:
        preds: one generated caption per example.
        refs_list: the references of each example (a list of str, or a single str).
        n: maximum n-gram order (BLEU-4 by default).

    Returns:
        BLEU in [0, 1].
    """
    return bleu_scores(preds, refs_list, n)[-1]


def bleu_scores(preds: Sequence[str], refs_list: Sequence[str | Sequence[str]], n: int = 4) -> list[float]:
    """Corpus BLEU-1 .. BLEU-n in one pass (``[BLEU-1, ..., BLEU-n]``), each as :func:`bleu` defines it:
    the toolkit computes every order up to ``n`` together, with one brevity penalty."""
    if int(n) < 1:
        raise ValueError(f"n must be >= 1, got {n!r}")
    n = int(n)
    preds, refs = _check_corpus(preds, refs_list)
    scorer = _coco_bleu.BleuScorer(n=n)
    for pred, rs in zip(preds, refs):
        # what BleuScorer.cook_append does, with the order passed on (it cooks 4-grams only)
        cooked_refs = _coco_bleu.cook_refs([_toolkit_text(r) for r in rs], n=n)
        scorer.crefs.append(cooked_refs)
        scorer.ctest.append(_coco_bleu.cook_test(_toolkit_text(pred), cooked_refs, n=n))
    scores, _ = scorer.compute_score(option="closest", verbose=0)
    return [float(x) for x in scores]


def cider_d_scores(
    preds: Sequence[str],
    refs_list: Sequence[str | Sequence[str]],
    *,
    n: int = 4,
    sigma: float = 6.0,
) -> list[float]:
    """Per-caption CIDEr-D (Vedantam et al. 2015) of the COCO caption toolkit (``pycocoevalcap``'s
    ``CiderScorer``, the scorer behind its ``Cider``, which is the CIDEr-D variant).

    For each order k = 1..n, a caption becomes a vector ``g_k`` over its k-grams with weight
    ``tf(g) * log(N / max(1, df(g)))``: ``tf`` the raw count in the caption, ``N`` the number of
    examples (images / clips), ``df(g)`` the number of examples whose *references* contain g (the
    idf is computed over the reference corpus of this call; a k-gram in no reference gets the
    largest weight ``log N``). For a prediction ``c`` and a reference ``s``::

        sim_k(c, s) = sum_g min(g_k(c)[g], g_k(s)[g]) * g_k(s)[g] / (|g_k(c)| |g_k(s)|)
                      * exp(-(l_c - l_s)**2 / (2 sigma**2))
        CIDEr-D(c, S) = 10 / n * sum_k mean_{s in S} sim_k(c, s)

    The ``min`` clips repeated k-grams (the "-D" that stops gaming by repetition), the gaussian
    penalises length differences (``sigma = 6``), and the factor 10 is the toolkit's scale (a
    perfect match of a caption of at least n words whose k-grams are rare scores 10). An order
    with no k-grams on either side contributes 0 (so a 2-word exact match with n = 4 scores 5).
    The toolkit measures the lengths ``l`` in bigrams (words - 1), which gives the same
    differences as word counts for non-empty captions; with ``n = 1`` it counts no bigrams, so
    there is no length penalty.

    Tokens come from :func:`caption_tokens` (in place of the toolkit's Java PTB tokenizer).
    Because the idf depends on the whole corpus, a corpus of a single example gives
    ``log(1 / 1) = 0`` weights and scores 0 -- score a test set in one call.

    Returns:
        One score per prediction (>= 0; not bounded above by 10 when a reference is repeated).
    """
    if int(n) < 1:
        raise ValueError(f"n must be >= 1, got {n!r}")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}")
    n = int(n)
    preds, refs = _check_corpus(preds, refs_list)
    scorer = _coco_cider.CiderScorer(n=n, sigma=float(sigma))
    for pred, rs in zip(preds, refs):
        # what CiderScorer.cook_append does, with the order passed on (it cooks 4-grams only)
        scorer.crefs.append(_coco_cider.cook_refs([_toolkit_text(r) for r in rs], n=n))
        scorer.ctest.append(_coco_cider.cook_test(_toolkit_text(pred), n=n))
    if not any(ref for cooked in scorer.crefs for ref in cooked):
        return [0.0] * len(preds)  # no reference has a word: nothing to match (the toolkit fails)
    _, scores = scorer.compute_score()
    return [float(x) for x in scores]


def cider_d(
    preds: Sequence[str],
    refs_list: Sequence[str | Sequence[str]],
    *,
    n: int = 4,
    sigma: float = 6.0,
) -> float:
    """Corpus CIDEr-D: the mean of :func:`cider_d_scores` (see there for the definition), as the
    toolkit's ``Cider.compute_score`` reports it."""
    s = cider_d_scores(preds, refs_list, n=n, sigma=sigma)
    return sum(s) / len(s)
