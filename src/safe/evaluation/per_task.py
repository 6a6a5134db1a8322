"""Retention per VL benchmark and gains per audio benchmark: the evaluation's retention and audio-gains
sections split by the records' ``task`` (the reader's name: ``vqav2``, ``gqa``, ``avqa``, ...; the
built-in benchmark is the one task ``synth``), each scored with its benchmark's metric
(:func:`~safe.evaluation.scoring.task_metric`).

Paired tests against the base on the same questions: McNemar (:func:`~safe.evaluation.stats.mcnemar`)
where the metric scores 0 or 1 (exact match: GQA, AVQA, MUSIC-AVQA, VGGSound, the built-in benchmark);
for a graded score (VQAv2's accuracy in {0, 0.3, 0.6, 0.9, 1}) McNemar does not apply, and the test is
the Wilcoxon signed-rank test on the paired per-question differences (:func:`paired_graded_test`,
scipy), with a paired bootstrap CI of the mean difference.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import stats as _st

from safe.data.records import Example
from safe.evaluation.captions import caption_corpus_metrics
from safe.evaluation.scoring import BINARY_METRICS, task_metric
from safe.evaluation.stats import mcnemar, paired_bootstrap_ci

__all__ = ["RETENTION_MODES", "GAIN_SYSTEMS", "gains_per_task", "paired_graded_test", "retention_per_task"]

RETENTION_MODES = ("base", "gate_closed", "gate_open", "policy")
#: (name in the gains tables, the evaluation's answer set it reads)
GAIN_SYSTEMS = (("base", "base"), ("safe", "gate_open"), ("policy", "policy"))


def paired_graded_test(a: Sequence[float], b: Sequence[float], *, n_resamples: int = 2000) -> dict[str, Any]:
    """Wilcoxon signed-rank test of graded paired scores ``a`` vs ``b`` (two-sided, zero differences
    dropped: scipy's ``zero_method="wilcox"``; differences rounded to 12 decimals), and the paired
    percentile bootstrap CI of ``mean(a) - mean(b)``. No differing pair gives statistic 0 and p 1.

    Returns ``{"test": "wilcoxon", "statistic", "pvalue", "n", "n_differing", "mean_a", "mean_b",
    "diff", "ci_low", "ci_high"}``."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape or x.ndim != 1 or x.size == 0:
        raise ValueError(f"paired scores must be two non-empty 1-d sequences of equal length, got shapes "
                         f"{x.shape} and {y.shape}")
    # Rounded so that equal gaps computed in floating point tie (0.8 - 0.5 != -(0.2 - 0.5) in binary).
    d = np.round(x - y, 12)
    differing = int(np.count_nonzero(d))
    if differing == 0:
        statistic, pvalue = 0.0, 1.0
    else:
        res = _st.wilcoxon(d, zero_method="wilcox", alternative="two-sided")
        statistic, pvalue = float(res.statistic), float(res.pvalue)
    ci = paired_bootstrap_ci(x, y, n_resamples=n_resamples)
    return {"test": "wilcoxon", "statistic": statistic, "pvalue": pvalue, "n": int(x.size), "n_differing": differing,
            "mean_a": float(x.mean()), "mean_b": float(y.mean()), "diff": float(d.mean()), "ci_low": ci.low,
            "ci_high": ci.high}


def _by_task(examples: Sequence[Example], rows: Sequence[int]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for i in rows:
        out.setdefault(examples[i].task, []).append(i)
    return dict(sorted(out.items()))


def _metric(examples: Sequence[Example], rows: Sequence[int]) -> str:
    names = sorted({task_metric(examples[i]) for i in rows})
    return names[0] if len(names) == 1 else "+".join(names)


def retention_per_task(examples: Sequence[Example], scores: dict[str, Sequence[float]],
                       answers: dict[str, Sequence[str]]) -> dict[str, dict[str, Any]]:
    """Per task of the VL-only rows (``needs_audio`` False): the score of each mode of
    :data:`RETENTION_MODES` present in ``scores``, the answers changed against the base, and each mode's
    paired test against the base (``"test"`` names it: ``"mcnemar"`` for 0/1 scores, ``"wilcoxon"``
    otherwise).

    Returns ``{task: {"metric", "n", "accuracy": {mode: mean score}, "answers_changed": {mode: count},
    "test", "paired_tests": {mode: McNemar dict or paired_graded_test dict}}}``."""
    vl = [i for i, e in enumerate(examples) if not e.needs_audio]
    modes = [m for m in RETENTION_MODES if m in scores]
    out = {}
    for task, rows in _by_task(examples, vl).items():
        metric = _metric(examples, rows)
        per = {m: [float(scores[m][i]) for i in rows] for m in modes}
        binary = metric in BINARY_METRICS and all(v in (0.0, 1.0) for m in modes for v in per[m])
        tests = {}
        for m in modes:
            if m == "base":
                continue
            if binary:
                tests[m] = {"test": "mcnemar", **mcnemar([v == 1.0 for v in per[m]],
                                                          [v == 1.0 for v in per["base"]]).to_dict()}
            else:
                tests[m] = paired_graded_test(per[m], per["base"])
        out[task] = {"metric": metric, "n": len(rows), "accuracy": {m: float(np.mean(per[m])) for m in modes},
                     "answers_changed": {m: sum(answers[m][i] != answers["base"][i] for i in rows)
                                         for m in modes if m != "base" and m in answers},
                     "test": "mcnemar" if binary else "wilcoxon", "paired_tests": tests}
    return out


def gains_per_task(examples: Sequence[Example], scores: dict[str, Sequence[float]], answers: dict[str, Sequence[str]],
                   ci: Callable[[Sequence[float]], dict], *, meteor: bool = False) -> tuple[dict, dict]:
    """Per task of the audio rows (``needs_audio``): the question rows' scores of base / SAFE (gate
    open) / policy with ``ci`` (the evaluation's bootstrap) and the paired difference SAFE - base (paired
    bootstrap CI); and, per task with caption rows, the corpus caption metrics
    (:func:`~safe.evaluation.captions.caption_corpus_metrics`).

    Returns ``(per_task, captions_per_task)``: ``{task: {"metric", "n", "accuracy": {system: ci dict},
    "safe_minus_base": {"mean", "ci_low", "ci_high", "n"}}}`` and ``{task: caption metrics}``."""
    audio = [i for i, e in enumerate(examples) if e.needs_audio]
    per_task, captions = {}, {}
    for task, rows in _by_task(examples, audio).items():
        qa = [i for i in rows if not examples[i].is_caption]
        cap = [i for i in rows if examples[i].is_caption]
        if qa:
            base = [float(scores["base"][i]) for i in qa]
            safe = [float(scores["gate_open"][i]) for i in qa]
            diff = paired_bootstrap_ci(safe, base, n_resamples=2000)
            per_task[task] = {"metric": _metric(examples, qa), "n": len(qa),
                              "accuracy": {k: ci([float(scores[src][i]) for i in qa]) for k, src in GAIN_SYSTEMS
                                           if src in scores},
                              "safe_minus_base": {"mean": diff.estimate, "ci_low": diff.low, "ci_high": diff.high,
                                                  "n": len(qa)}}
        if cap:
            captions[task] = caption_corpus_metrics(examples, cap, {k: answers[src] for k, src in GAIN_SYSTEMS
                                                                    if src in answers}, ci, meteor=meteor)
    return per_task, captions
