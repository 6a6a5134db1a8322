"""How every figure of the report and the generated docs is written: one number, one text, so the HTML
report, the per-benchmark tables and the markdown pages cannot format the same value two ways.
Plain data only (no torch, no matplotlib)."""
from __future__ import annotations

import json
import math
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

__all__ = ["DASH", "fmt", "fmt_ci", "fmt_key", "is_num"]

DASH = "—"
"""What a missing, None or non-finite figure shows as."""


def is_num(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def fmt(value: Any, digits: int = 3) -> str:
    """Format one value for a table: None / NaN / inf -> "—", bools -> yes/no, integers as they
    are, floats with ``digits`` decimals (very large ones in scientific notation), anything else
    as text. The result is plain text, not yet escaped."""
    if value is None:
        return DASH
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if is_num(value):
        value = float(value)
        if not math.isfinite(value):
            return DASH
        if abs(value) >= 1e5 or 0 < abs(value) < 0.5 * 10**-digits:
            return f"{value:.3g}"   # very large or very small: keep significant digits
        return f"{value:.{digits}f}"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str)
    return str(value)


def fmt_key(key: str, value: Any) -> str:
    """Format ``value`` using its key for the unit: milliseconds and seconds with 2 decimals,
    bytes in MiB, everything else as :func:`fmt` (fractions with 3 decimals)."""
    k = key.lower()
    if is_num(value) and "bytes" in k and math.isfinite(float(value)):
        return f"{float(value) / 2**20:.2f} MiB"
    if k.endswith("_ms") or k == "ms" or "latency" in k or "second" in k or k.endswith("_s"):
        return fmt(value, 2)
    return fmt(value)


def fmt_ci(d: Any, digits: int = 3) -> str:
    """``{"mean", "ci_low", "ci_high"}`` as "0.938 [0.910, 0.960]" (a bare number as itself)."""
    if not isinstance(d, Mapping):
        return fmt(d, digits)
    text = fmt(d.get("mean"), digits)
    if "ci_low" in d or "ci_high" in d:
        text += f" [{fmt(d.get('ci_low'), digits)}, {fmt(d.get('ci_high'), digits)}]"
    return text


def at(metrics: Any, *keys: str) -> Any:
    """``metrics[k1][k2]...``; raises KeyError when a level is missing or not a mapping (the row is left out)."""
    for key in keys:
        if not isinstance(metrics, Mapping) or key not in metrics:
            raise KeyError(key)
        metrics = metrics[key]
    return metrics


def md_cell(text: Any) -> str:
    """Text for a markdown cell: pipes escaped, newlines flattened."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A markdown table ("" when there are no rows)."""
    rows = [list(r) for r in rows]
    if not rows:
        return ""
    lines = ["| " + " | ".join(md_cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(md_cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def label_value_table(metrics: Any, rows: Iterable[tuple[str, Callable[[Any], str]]]) -> str:
    """A two-column markdown table ("|  | value |") of ``(label, value(metrics))`` rows, leaving out each row
    whose value the metrics lack (a missing key, a None, a zero count); "" when no row is left."""
    lines = []
    for label, value in rows:
        try:
            lines.append(f"| {label} | {value(metrics)} |")
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            continue
    return "|  | value |\n|---|---|\n" + "\n".join(lines) + "\n" if lines else ""
