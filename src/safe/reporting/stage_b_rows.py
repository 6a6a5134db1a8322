"""Rows of docs/results.md about Stage B's costs per row and its retention floor under stress, from the
``policy`` part of ``metrics.json`` (kept beside :mod:`safe.reporting.docs`, which lists them)."""
from __future__ import annotations

from collections.abc import Mapping

from safe.reporting.format import fmt


def _at(m: Mapping, *keys: str):
    for key in keys:
        m = m[key]
    return m


def _f(value, digits: int = 3) -> str:
    return fmt(value, digits)


def _pts(value) -> str:
    return fmt(100 * value, 1)


def row_costs(m: Mapping) -> str:
    """Audio's extra runtime and tokens per row on the test table (``policy.row_costs.test``)."""
    c = _at(m, "policy", "row_costs", "test")
    return (f"{_f(c['runtime_ms_extra'], 2)} [{_f(c['runtime_ms_extra_p5'], 2)}, {_f(c['runtime_ms_extra_p95'], 2)}] / "
            f"{_f(c['tokens_extra'], 1)} (audio {_f(c['tokens_with'], 1)} vs {_f(c['tokens_without'], 1)} without); "
            f"{fmt(c['runtime_rows_distinct'])} distinct row prices")


def floor_stress(m: Mapping) -> str:
    """VL accuracy with and without Stage B's dual under the floor stress, and lambda's max / final."""
    f = _at(m, "policy", "floor_stress")
    w, wo = f["with_dual"], f["without_dual"]
    return (f"{_f(w['vl_accuracy'])} / {_f(wo['vl_accuracy'])} / {_f(f['vl_floor'])} "
            f"(audio breaks {_pts(f['harm'])}% of VL rows; use rate {_f(w['use_rate'])} / {_f(wo['use_rate'])}); "
            f"lambda {_f(w['lambda_max'], 2)} / {_f(w['lambda_final'], 2)}: floor {'held' if f['held'] else 'NOT held'} "
            f"with the dual, {'broken' if f['broken_without'] else 'not broken'} without")
