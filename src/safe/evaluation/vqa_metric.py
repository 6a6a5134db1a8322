"""The official VQAv2 accuracy (Antol et al. 2015; Goyal et al. 2017), step for step as the official
evaluation script computes it (``PythonEvaluationTools/vqaEvaluation/vqaEval.py`` of the VQA
project, the Python 3 version: ``processPunctuation``, ``processDigitArticle`` and the
leave-one-out loop of ``evaluate``), re-implemented here with the same tables and rules.

* :func:`vqa_normalize` is what the script does to a *prediction*: newlines and tabs become spaces,
  surrounding whitespace is stripped, then :func:`process_punctuation`, then
  :func:`process_digit_article` (lowercase, number words ``none``/``zero``..``ten`` to digits,
  articles ``a``/``an``/``the`` dropped, the contractions table: ``"dont"`` -> ``"don't"``).
* The ten human answers are passed through :func:`process_punctuation` only, and only when they are
  not all the same string (the script's ``len(set(gtAnswers)) > 1``). The published annotation files
  hold already-normalised answers (lowercase, digits), which is why the script does no more to them;
  answers given in another form (``"Two"``) will not match here either, exactly as in the script.
* :func:`vqa_accuracy_official`: for each of the n human answers, the ``min(1, #matches / 3)`` over
  the *other* n - 1 answers, averaged over the n leave-one-out subsets. With k of 10 answers equal to
  the prediction this is ``(k * min(1, (k - 1) / 3) + (10 - k) * min(1, k / 3)) / 10``: 0.3, 0.6,
  0.9 and 1.0 for k = 1, 2, 3 and >= 4.

:func:`safe.evaluation.metrics.vqa_accuracy` is a different, lenient variant (both sides fully
normalised, apostrophes deleted); the per-task scoring (:mod:`safe.evaluation.scoring`) uses this
module for VQAv2.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["CONTRACTIONS", "NUMBER_WORDS", "ARTICLES", "PUNCTUATION", "process_punctuation",
           "process_digit_article", "vqa_normalize", "vqa_accuracy_official"]

#: The official script's ``manualMap``: number words to digits ("none" is the usual answer when the count is 0).
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = frozenset({"a", "an", "the"})
#: The official ``punct`` list. The apostrophe and the period are not in it (the period has its own rule).
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
               ",", "?", "!")

# The official contractions table, entry for entry (word as written without / with a misplaced
# apostrophe -> the standard spelling). A few keys start with a capital ("Im", "Ive", "Id've",
# "I'dve"): they never fire, because the text is lowercased before the lookup, as in the script; the
# odd entry "somebody'd" -> "somebodyd" is the script's too. Kept as they are so scores match it.
_CONTRACTION_PAIRS = """
aint ain't|arent aren't|cant can't|couldve could've|couldnt couldn't|couldn'tve couldn't've
couldnt've couldn't've|didnt didn't|doesnt doesn't|dont don't|hadnt hadn't|hadnt've hadn't've
hadn'tve hadn't've|hasnt hasn't|havent haven't|hed he'd|hed've he'd've|he'dve he'd've|hes he's
howd how'd|howll how'll|hows how's|Id've I'd've|I'dve I'd've|Im I'm|Ive I've|isnt isn't|itd it'd
itd've it'd've|it'dve it'd've|itll it'll|let's let's|maam ma'am|mightnt mightn't|mightnt've mightn't've
mightn'tve mightn't've|mightve might've|mustnt mustn't|mustve must've|neednt needn't|notve not've
oclock o'clock|oughtnt oughtn't|ow's'at 'ow's'at|'ows'at 'ow's'at|'ow'sat 'ow's'at|shant shan't
shed've she'd've|she'dve she'd've|she's she's|shouldve should've|shouldnt shouldn't
shouldnt've shouldn't've|shouldn'tve shouldn't've|somebody'd somebodyd|somebodyd've somebody'd've
somebody'dve somebody'd've|somebodyll somebody'll|somebodys somebody's|someoned someone'd
someoned've someone'd've|someone'dve someone'd've|someonell someone'll|someones someone's
somethingd something'd|somethingd've something'd've|something'dve something'd've|somethingll something'll
thats that's|thered there'd|thered've there'd've|there'dve there'd've|therere there're|theres there's
theyd they'd|theyd've they'd've|they'dve they'd've|theyll they'll|theyre they're|theyve they've
twas 'twas|wasnt wasn't|wed've we'd've|we'dve we'd've|weve we've|werent weren't|whatll what'll
whatre what're|whats what's|whatve what've|whens when's|whered where'd|wheres where's|whereve where've
whod who'd|whod've who'd've|who'dve who'd've|wholl who'll|whos who's|whove who've|whyll why'll
whyre why're|whys why's|wont won't|wouldve would've|wouldnt wouldn't|wouldnt've wouldn't've
wouldn'tve wouldn't've|yall y'all|yall'll y'all'll|y'allll y'all'll|yall'd've y'all'd've
y'alld've y'all'd've|y'all'dve y'all'd've|youd you'd|youd've you'd've|you'dve you'd've|youll you'll
youre you're|youve you've
"""
CONTRACTIONS: dict[str, str] = dict(
    pair.split(" ") for pair in _CONTRACTION_PAIRS.strip().replace("\n", "|").split("|"))

# The script's periodStrip, "(?!<=\d)(\.)(?!\d)": its first group is a lookahead (not a lookbehind)
# that always holds in front of a ".", so the rule is "a period not followed by a digit" ("3.5" and
# ".5" keep theirs, "yes." and "3." lose it).
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
# The script's commaStrip: a digit, a comma, a digit ("2,000"). Its presence anywhere in the text
# makes every punctuation mark be deleted rather than replaced by a space.
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
# The script passes re.UNICODE (= 32) as the third positional argument of Pattern.sub, which is
# `count`: at most 32 periods are removed. Kept, so long texts score as the script scores them.
_PERIOD_COUNT = int(re.UNICODE)


def _check_str(text: object, name: str) -> str:
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a str, got {type(text).__name__}")
    return text


def process_punctuation(text: str) -> str:
    """The official ``processPunctuation``: each mark of :data:`PUNCTUATION` is deleted where the text
    has it next to a space (``"yes !"``, ``"a, b"``) or holds a digit-comma-digit anywhere
    (``"2,000"``), else replaced by a space (``"t-shirt"`` -> ``"t shirt"``); the decision is made per
    mark on the original text. Then periods not followed by a digit are removed. Case is kept."""
    text = _check_str(text, "text")
    out = text
    has_number_comma = _COMMA_STRIP.search(text) is not None
    for p in PUNCTUATION:
        if p + " " in text or " " + p in text or has_number_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, _PERIOD_COUNT)


def process_digit_article(text: str) -> str:
    """The official ``processDigitArticle``: lowercase, split on whitespace, number words to digits
    (:data:`NUMBER_WORDS`), articles dropped, then each word looked up in :data:`CONTRACTIONS`;
    words joined by single spaces."""
    words = [NUMBER_WORDS.get(w, w) for w in _check_str(text, "text").lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def vqa_normalize(prediction: str) -> str:
    """A prediction as the official script compares it: ``\\n`` / ``\\t`` -> space, stripped,
    :func:`process_punctuation`, then :func:`process_digit_article`.

    Examples: ``"Two"`` -> ``"2"``, ``"the dog."`` -> ``"dog"``, ``"dont"`` -> ``"don't"``,
    ``"3.5"`` -> ``"3.5"``, ``"2,000"`` -> ``"2000"``, ``"black-and-white"`` -> ``"black and white"``.
    """
    text = _check_str(prediction, "prediction").replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))


def vqa_accuracy_official(prediction: str, human_answers: Sequence[str]) -> float:
    """The official VQA accuracy of one prediction against the human answers of one question.

    The prediction goes through :func:`vqa_normalize`; the human answers through
    :func:`process_punctuation` when they are not all identical (as the script does). Then, for each
    human answer i, ``acc_i = min(1, #{j != i : answer_j == prediction} / 3)``, and the result is the
    mean of the ``acc_i`` (the ten leave-one-out subsets of nine annotators, for VQAv2's ten answers).

    Args:
        prediction: the model's answer.
        human_answers: the annotators' answers, verbatim (VQAv2: ten; duplicates are votes).

    Raises:
        ValueError: fewer than two human answers (with one answer there is no subset to average
            over and the official rule scores every prediction 0).
        TypeError: a non-str prediction or answer.
    """
    pred = vqa_normalize(prediction)
    if isinstance(human_answers, str):
        raise TypeError("human_answers must be a sequence of the annotators' answers, not a single str")
    answers = [_check_str(a, "human_answers item") for a in human_answers]
    if len(answers) < 2:
        raise ValueError(f"the VQA accuracy needs at least 2 human answers, got {len(answers)}: {answers!r}")
    if len(set(answers)) > 1:
        answers = [process_punctuation(a) for a in answers]
    matches = sum(a == pred for a in answers)
    # Leaving out a matching answer leaves matches - 1 among the others; leaving out another leaves all.
    total = sum(min(1.0, (matches - (a == pred)) / 3.0) for a in answers)
    return total / len(answers)
