"""The per-benchmark tables of the evaluation (retention per VL benchmark, gains per audio benchmark,
caption metrics per caption benchmark: :mod:`safe.evaluation.per_task`), as formatted cells that the
HTML report (:mod:`safe.reporting.report`) and the markdown results page (:mod:`safe.reporting.docs`)
both render, so the two cannot disagree. Only plain data is read; a table whose key is missing or
empty is ``None`` (an older run), never a table of made-up numbers.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from safe.reporting.format import fmt, fmt_ci

__all__ = ["BENCH_SECTIONS", "RETENTION_NOTE", "Table", "captions_table", "gains_table", "render", "retention_table"]

_MODES = ("base", "gate_closed", "gate_open", "policy")
_SYSTEMS = ("base", "safe", "policy")
_CAPTION_COLS = (("bleu_1", "BLEU-1"), ("bleu_2", "BLEU-2"), ("bleu_3", "BLEU-3"), ("bleu_4", "BLEU-4"),
                 ("rouge_l", "ROUGE-L"), ("meteor", "METEOR"))
RETENTION_NOTE = ("Paired tests against the base on the same questions: McNemar where the benchmark's metric "
                  "scores 0 or 1 (exact match), the Wilcoxon signed-rank test on the per-question differences "
                  "where it is graded (VQAv2 accuracy).")


class Table(NamedTuple):
    """A table as text cells: ``headers``, ``rows`` (one list of str per row) and ``notes`` (sentences
    printed under it)."""

    headers: list[str]
    rows: list[list[str]]
    notes: list[str]


def _maps(value: Any) -> dict[str, Mapping]:
    return {str(k): v for k, v in value.items() if isinstance(v, Mapping)} if isinstance(value, Mapping) else {}


def _m(value: Any) -> Mapping:
    return value if isinstance(value, Mapping) else {}


def retention_table(retention: Any) -> Table | None:
    """One row per VL benchmark of ``eval.retention.per_task``: metric, n, the score of each mode, the
    answers changed with the gate open, the test and its p-values (gate open, policy vs base)."""
    tasks = _maps(_m(retention).get("per_task"))
    if not tasks:
        return None
    rows = []
    for task, t in tasks.items():
        acc, changed, tests = _m(t.get("accuracy")), _m(t.get("answers_changed")), _maps(t.get("paired_tests"))
        rows.append([task, fmt(t.get("metric")), fmt(t.get("n")), *(fmt(acc.get(k)) for k in _MODES),
                     f"{fmt(changed.get('gate_open'))} of {fmt(t.get('n'))}", fmt(t.get("test")),
                     *(fmt(_m(tests.get(k)).get("pvalue")) for k in ("gate_open", "policy"))])
    return Table(["benchmark", "metric", "n", *(k.replace("_", " ") for k in _MODES), "answers changed (open)",
                  "test", "p (open)", "p (policy)"], rows, [RETENTION_NOTE])


def gains_table(gains: Any) -> Table | None:
    """One row per audio benchmark of ``eval.audio_gains.per_task`` (question rows): metric, n, mean
    [95% CI] of base / SAFE (gate open) / policy, and SAFE - base with its paired CI."""
    tasks = _maps(_m(gains).get("per_task"))
    if not tasks:
        return None
    rows = [[task, fmt(t.get("metric")), fmt(t.get("n")), *(fmt_ci(_m(t.get("accuracy")).get(k)) for k in _SYSTEMS),
             fmt_ci(t.get("safe_minus_base"))] for task, t in tasks.items()]
    return Table(["benchmark", "metric", "n", "base", "SAFE (gate open)", "policy", "SAFE - base"], rows,
                 ["Mean [95% bootstrap CI]; SAFE - base is paired (the same questions resampled together)."])


def captions_table(gains: Any) -> Table | None:
    """One row per caption benchmark and model of ``eval.audio_gains.captions_per_task``: clips,
    CIDEr-D [95% CI], BLEU-1..4, ROUGE-L, METEOR; the notes name each metric not computed and why."""
    tasks = _maps(_m(gains).get("captions_per_task"))
    if not tasks:
        return None
    rows, notes = [], ["COCO caption toolkit (pycocoevalcap), one score per clip against all its references."]
    for task, c in tasks.items():
        for system, v in _maps(c.get("systems")).items():
            rows.append([task, system, fmt(c.get("clips")), fmt_ci(v.get("cider_d")),
                         *(fmt(v.get(k)) for k, _ in _CAPTION_COLS)])
        notes += [f"{task}: {name.upper()} {why}" for name, why in _m(c.get("unavailable")).items()]
    return Table(["benchmark", "model", "clips", "CIDEr-D [95% CI]", *(h for _, h in _CAPTION_COLS)], rows, notes)


#: (title, table function, key of the evaluation section it reads) for each per-benchmark table.
BENCH_SECTIONS = (("retention per benchmark", retention_table, "retention"),
                  ("audio gains per benchmark", gains_table, "audio_gains"),
                  ("captions per benchmark", captions_table, "audio_gains"))


def render(table: Table | None, table_fn: Callable[[list[str], list[list[str]]], str],
           note_fn: Callable[[str], str]) -> str:
    """``table`` through a renderer (``table_fn(headers, rows)`` then ``note_fn(note)`` per note); "" for None."""
    return "" if table is None else table_fn(table.headers, table.rows) + "".join(note_fn(n) for n in table.notes)
