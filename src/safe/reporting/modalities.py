"""Per-modality rows of the report and ``docs/results.md``, generated from ``metrics.json``.

A run records audio under ``stage_a`` / ``policy`` (``make demo``) and depth under ``depth`` (``safe demo
--track depth``); :func:`modality_rows` reads whichever the metrics hold into one row per modality, and
:func:`modality_table` lays them out as markdown: the modality's questions without and with it, the VL answers
kept with the gate closed and moved with it open, and its policy's use rate and accuracy beside its oracle
and always-on; :func:`modality_html` lays the same rows out for ``report.html``, each with the two per-modality
targets (use rate within :data:`USE_RATE_TOLERANCE` of the oracle's, accuracy within
:data:`ACCURACY_TOLERANCE` of always-on's) passed or failed. A modality whose numbers the metrics lack gets no
row; a missing figure shows "—". Only plain data is read (no torch).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from safe.evaluation.gates import ACCURACY_TOLERANCE, USE_RATE_TOLERANCE
from safe.reporting.format import DASH, fmt
from safe.reporting.html import badge, p, table

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


def _trained(m: Mapping) -> dict[str, Any] | None:
    """A run of another modality (``safe train --modality``): Stage A's figures under its name, its policy under
    ``modality_policy``."""
    s = m.get("stage_a")
    name = s.get("modality") if isinstance(s, Mapping) else None
    if not name or name == "audio" or f"{name}_accuracy" not in s:
        return None
    p = _get(m, "modality_policy", name) or {}
    return {"modality": name, "base": s.get(f"{name}_accuracy_base"), "safe": s.get(f"{name}_accuracy"),
            "identical_closed": s.get("answers_identical_gate_closed"),
            "moved_open": s.get("vl_answers_changed_gate_open"), "vl": s.get("vl_examples"),
            "use_rate": _get(p, "policy", "use_rate"), "oracle_use_rate": _get(p, "oracle", "use_rate"),
            "accuracy": _get(p, "policy", "accuracy"), "always_accuracy": _get(p, "always", "accuracy")}


def modality_rows(metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One dict per modality the metrics hold (audio, then depth, or the modality a ``safe train --modality`` run
    trained): the fields :func:`modality_table` shows."""
    return [r for r in (_audio(metrics), _depth(metrics), _trained(metrics)) if r is not None]


def _f(v: Any) -> str:
    return DASH if v is None else fmt(v, 3)


def _moved(r: Mapping[str, Any]) -> str:
    return DASH if r["moved_open"] is None else f"{r['moved_open']} of {r['vl'] if r['vl'] is not None else DASH}"


def modality_table(metrics: Mapping[str, Any]) -> str:
    """The per-modality rows as a markdown table ("" when the metrics hold no modality's figures)."""
    rows = modality_rows(metrics)
    if not rows:
        return ""
    lines = [INTRO, "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join([
            r["modality"], f"{_f(r['base'])} -> {_f(r['safe'])}", _f(r["identical_closed"]), _moved(r),
            f"{_f(r['use_rate'])} ({_f(r['oracle_use_rate'])})", f"{_f(r['accuracy'])} ({_f(r['always_accuracy'])})"]) + " |")
    return "\n".join(lines) + "\n"


def targets(row: Mapping[str, Any]) -> dict[str, bool | None]:
    """Whether a :func:`modality_rows` row meets the two per-modality targets (None where a figure is missing):
    ``use_rate`` (within :data:`USE_RATE_TOLERANCE` of the oracle's) and ``accuracy`` (at most
    :data:`ACCURACY_TOLERANCE` below always-on's)."""
    def near(a: Any, b: Any, ok) -> bool | None:
        return None if a is None or b is None else bool(ok(float(a), float(b)))

    # 1e-9: a figure exactly on the tolerance passes whatever the float rounding of the difference
    return {"use_rate": near(row["use_rate"], row["oracle_use_rate"],
                             lambda a, b: abs(a - b) <= USE_RATE_TOLERANCE + 1e-9),
            "accuracy": near(row["accuracy"], row["always_accuracy"],
                             lambda a, b: a >= b - ACCURACY_TOLERANCE - 1e-9)}


def modality_html(metrics: Mapping[str, Any]) -> str:
    """The per-modality rows as an HTML table for ``report.html`` (the markdown table's columns, then each
    target's verdict); "" when the metrics hold no modality's figures."""
    rows = modality_rows(metrics)
    if not rows:
        return ""
    out = []
    for r in rows:
        t = targets(r)
        out.append([r["modality"], f"{_f(r['base'])} -> {_f(r['safe'])}", _f(r["identical_closed"]), _moved(r),
                    f"{_f(r['use_rate'])} ({_f(r['oracle_use_rate'])})", badge(t["use_rate"]),
                    f"{_f(r['accuracy'])} ({_f(r['always_accuracy'])})", badge(t["accuracy"])])
    headers = [*COLUMNS[:5], f"use rate within {USE_RATE_TOLERANCE:g} of oracle", COLUMNS[5],
               f"accuracy within {ACCURACY_TOLERANCE:g} of always-on"]
    return p(INTRO) + table(headers, out)


def modality_eval_html(metrics: Mapping[str, Any]) -> str:
    """``safe eval`` of a run of another modality (``metrics.json`` key ``modality_eval``) for ``report.html``:
    per modality, the stage gates, VL retention per pass, the modality's accuracy with 95% CIs, and the policy
    beside its oracle, always-on and never."""
    from safe.reporting.format import fmt_ci
    from safe.reporting.html import h3

    out = []
    for name, ev in (metrics.get("modality_eval") or {}).items():
        if not isinstance(ev, Mapping):
            continue
        r, g, pol = ev.get("retention") or {}, ev.get("gains") or {}, ev.get("policy") or {}
        out.append(h3(f"{name}: {ev.get('examples', DASH)} rows of {ev.get('split', DASH)}"))
        gates = [x for x in ev.get("stage_gates") or () if isinstance(x, Mapping)]
        out.append(table(["target", "required", "this run", "result"],
                         [[x.get("gate", DASH), x.get("target", DASH), x.get("measured", DASH), badge(x.get("passed"))]
                          for x in gates], text_cols=(0, 1, 2)))
        changed = r.get("answers_changed") or {}
        out.append(table(["pass", f"VL accuracy ({r.get('n', DASH)} rows)", "VL answers changed"],
                         [[k, _f(v), changed.get(k, 0 if k == "base" else DASH)]
                          for k, v in (r.get("vl_accuracy") or {}).items()]))
        out.append(table(["system", f"{name} accuracy, {g.get('n', DASH)} rows (mean [95% CI])"],
                         [[k, fmt_ci(v)] for k, v in (g.get("accuracy") or {}).items()]))
        out.append(table(["system", "use rate", "accuracy"],
                         [[k, _f(_get(v, "use_rate")), _f(_get(v, "accuracy"))] for k, v in pol.items()]))
    return "".join(out)
