"""Corpus caption metrics per caption benchmark (AudioCaps, Clotho, the built-in captions), as the
audio-captioning literature reports them, all from the COCO caption toolkit (``pycocoevalcap``).

Computed: CIDEr-D (with a bootstrap CI over clips), BLEU-1..4, ROUGE-L, and METEOR when asked for
(``meteor=True``, ``safe eval --meteor``; the toolkit runs it in Java, ~15 s to start, so it is off by
default, and reported unavailable without a ``java`` on the PATH). Not computed, with the reason in the result: SPICE (the
toolkit's SPICE needs Java *and* the Stanford CoreNLP models it downloads on first use, which an
offline machine cannot fetch) and therefore SPIDEr (the mean of CIDEr-D and SPICE).

Rows are grouped by clip first: AudioCaps has one row per caption (five per test clip), and a clip
is scored once against all its captions, as published results are. Tokens come from
:func:`~safe.evaluation.metrics.caption_tokens` (in place of the toolkit's Java PTB tokenizer).
"""
from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from typing import Any

from pycocoevalcap.rouge.rouge import Rouge

from safe.data.records import Example
from safe.evaluation.metrics import bleu_scores, caption_tokens, cider_d_scores

__all__ = ["SPICE_UNAVAILABLE", "caption_corpus_metrics", "group_caption_rows", "meteor_score", "rouge_l_scores"]

SPICE_UNAVAILABLE = ("not computed: the toolkit's SPICE needs Java and the Stanford CoreNLP models, which it "
                     "downloads on first use (not possible offline)")
SPIDER_UNAVAILABLE = "not computed: SPIDEr is the mean of CIDEr-D and SPICE, and SPICE is not computed"


def group_caption_rows(examples: Sequence[Example], rows: Sequence[int]) -> list[tuple[list[int], list[str]]]:
    """The caption ``rows`` of ``examples`` grouped by clip: ``[(row indices, references)]`` in first-seen
    order. Rows with the same audio file and question are one clip, whose references are the union of
    their answers (in order, duplicates dropped); a row without audio is its own clip."""
    groups: dict[Any, tuple[list[int], list[str]]] = {}
    for i in rows:
        e = examples[i]
        key = (e.audio, e.question) if e.audio is not None else ("row", e.id, i)
        idx, refs = groups.setdefault(key, ([], []))
        idx.append(i)
        refs.extend(a for a in e.answers if a not in refs)
    return list(groups.values())


def _text(caption: str) -> str:
    return " ".join(caption_tokens(caption))


def rouge_l_scores(preds: Sequence[str], refs_list: Sequence[Sequence[str]]) -> list[float]:
    """Per-caption ROUGE-L (LCS-based F-measure, beta = 1.2) of the toolkit's ``Rouge``."""
    scorer = Rouge()
    return [float(scorer.calc_score([_text(p)], [_text(r) for r in refs])) for p, refs in zip(preds, refs_list)]


def meteor_score(preds: Sequence[str], refs_list: Sequence[Sequence[str]],
                 systems: dict[str, Sequence[str]] | None = None) -> float | dict[str, float]:
    """Corpus METEOR 1.5 of the toolkit (its ``Meteor``: one Java process, started once per call).

    With ``systems`` (name -> predictions, each aligned with ``refs_list``) every system is scored by
    the same process and a ``{name: score}`` dict is returned; ``preds`` is then ignored (pass ``()``).
    Raises ``RuntimeError`` naming the reason when Java is not on the PATH or the process fails."""
    if shutil.which("java") is None:
        raise RuntimeError("no java on the PATH (the toolkit's METEOR is a Java program)")
    from pycocoevalcap.meteor.meteor import Meteor

    gts = {str(i): [_text(r) for r in refs] for i, refs in enumerate(refs_list)}
    runs = systems if systems is not None else {"": preds}
    out = {}
    try:
        scorer = Meteor()
        try:
            for name, ps in runs.items():
                out[name] = float(scorer.compute_score(gts, {str(i): [_text(p)] for i, p in enumerate(ps)})[0])
        finally:
            del scorer  # its __del__ ends the Java process
    except (OSError, ValueError) as err:
        raise RuntimeError(f"the toolkit's METEOR failed: {err}") from err
    return out if systems is not None else out[""]


def caption_corpus_metrics(examples: Sequence[Example], rows: Sequence[int], predictions: dict[str, Sequence[str]],
                           ci: Callable[[Sequence[float]], dict], *, meteor: bool = False) -> dict[str, Any]:
    """The corpus caption metrics of the caption ``rows`` for each system.

    Args:
        examples: the evaluated records; ``rows`` index the caption rows of one benchmark.
        predictions: system name -> one prediction per record of ``examples`` (a clip takes the
            prediction of its first row; its rows share clip and prompt).
        ci: turns per-clip scores into ``{"mean", "ci_low", "ci_high", "n"}`` (the evaluation's bootstrap).
        meteor: compute METEOR too (Java; see the module docstring).

    Returns:
        ``{"clips", "rows", "systems": {name: {"cider_d": ci dict, "bleu_1".."bleu_4", "rouge_l",
        "meteor" (float or None)}}, "unavailable": {metric: reason}}``.
    """
    groups = group_caption_rows(examples, rows)
    refs = [r for _, r in groups]
    out: dict[str, Any] = {"clips": len(groups), "rows": len(rows), "systems": {},
                           "unavailable": {"spice": SPICE_UNAVAILABLE, "spider": SPIDER_UNAVAILABLE}}
    if not groups:
        return out
    systems = {name: [answers[idx[0]] for idx, _ in groups] for name, answers in predictions.items()}
    for name, preds in systems.items():
        b = bleu_scores(preds, refs, 4)
        rouge = rouge_l_scores(preds, refs)
        out["systems"][name] = {"cider_d": ci(cider_d_scores(preds, refs)), **{f"bleu_{k + 1}": b[k] for k in range(4)},
                                "rouge_l": sum(rouge) / len(rouge), "meteor": None}
    if not meteor:
        out["unavailable"]["meteor"] = "not requested (the toolkit's METEOR runs in Java: safe eval --meteor)"
        return out
    try:
        for name, score in meteor_score((), refs, systems).items():
            out["systems"][name]["meteor"] = score
    except RuntimeError as err:
        out["unavailable"]["meteor"] = f"not computed: {err}"
    return out
