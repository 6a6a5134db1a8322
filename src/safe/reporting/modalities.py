"""Per-modality rows of the report and ``docs/results.md``, generated from ``metrics.json``.

A run records audio under ``stage_a`` / ``policy`` (``make demo``) and depth under ``depth`` (``safe demo
--track depth``); :func:`modality_rows` reads whichever the metrics hold into one row per modality, and
:func:`modality_table` lays them out as markdown: the modality's questions without and with it, the VL answers
kept with the gate closed and moved with it open, and its policy's use rate and accuracy beside its oracle
and always-on. A modality whose numbers the metrics lack gets no row; a missing figure shows "—".
Only plain data is read (no torch).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from safe.reporting.format import DASH, fmt

COLUMNS = ("modality", "questions: without -> with", "VL identical, gate closed", "VL moved, gate open",
           "policy use rate (oracle)", "policy accuracy (always-on)")
INTRO = ("Each modality's questions without and with it, the VL answers it keeps, and its own policy (use rate "
         "beside its oracle's, accuracy beside always-on's).")


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, Mapping) or k not in d:
            return None
        d = d[k]
    return d


def _audio(m: Mapping) -> dict[str, Any] | None:
    s = m.get("stage_a")
    if not isinstance(s, Mapping) or "audio_accuracy" not in s:
        return None
    test, base = _get(m, "policy", "test") or {}, _get(m, "policy", "baselines") or {}
    return {"modality": "audio", "base": s.get("audio_accuracy_base"), "safe": s.get("audio_accuracy"),
            "identical_closed": s.get("answers_identical_gate_closed"),
            "moved_open": s.get("vl_answers_changed_gate_open"), "vl": s.get("vl_examples"),
            "use_rate": test.get("use_rate"), "oracle_use_rate": _get(base, "oracle", "use_rate"),
            "accuracy": test.get("accuracy"), "always_accuracy": _get(base, "always", "accuracy")}


def _depth(m: Mapping) -> dict[str, Any] | None:
    d = m.get("depth")
    if not isinstance(d, Mapping) or "depth_accuracy" not in d:
        return None
    p = d.get("policy") or {}
    return {"modality": "depth", "base": d.get("depth_accuracy_base"), "safe": d.get("depth_accuracy"),
            "identical_closed": d.get("answers_identical_gate_closed"),
            "moved_open": d.get("vl_answers_changed_gate_open"), "vl": d.get("vl_examples"),
            "use_rate": _get(p, "policy", "use_rate"), "oracle_use_rate": _get(p, "oracle", "use_rate"),
            "accuracy": _get(p, "policy", "accuracy"), "always_accuracy": _get(p, "always", "accuracy")}


def modality_rows(metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One dict per modality the metrics hold (audio, then depth): the fields :func:`modality_table` shows."""
    return [r for r in (_audio(metrics), _depth(metrics)) if r is not None]


def _f(v: Any) -> str:
    return DASH if v is None else fmt(v, 3)


def modality_table(metrics: Mapping[str, Any]) -> str:
    """The per-modality rows as a markdown table ("" when the metrics hold no modality's figures)."""
    rows = modality_rows(metrics)
    if not rows:
        return ""
    lines = [INTRO, "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        moved = DASH if r["moved_open"] is None else f"{r['moved_open']} of {r['vl'] if r['vl'] is not None else DASH}"
        lines.append("| " + " | ".join([
            r["modality"], f"{_f(r['base'])} -> {_f(r['safe'])}", _f(r["identical_closed"]), moved,
            f"{_f(r['use_rate'])} ({_f(r['oracle_use_rate'])})", f"{_f(r['accuracy'])} ({_f(r['always_accuracy'])})"]) + " |")
    return "\n".join(lines) + "\n"
