"""Argument checks shared by the schedules, PPO and distillation (one copy instead of three).

Both helpers raise :class:`ValueError` whose message starts with the argument's name and ends with
the offending value (``"lr must be > 0.0, got -1"``), so a user sees which setting to fix. Booleans
are refused where a number is expected: ``True`` is an ``int`` to Python but never a step count or
a rate in this project, so accepting it would hide a caller's mistake.
"""
from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any

__all__ = ["int_arg", "real_arg"]


def int_arg(name: str, value: Any, minimum: int | None = None) -> int:
    """``value`` as an ``int``, checked to be an integer (not a bool) and ``>= minimum``.

    Raises:
        ValueError: naming ``name`` and ``value`` when the check fails.
    """
    if isinstance(value, bool) or not isinstance(value, Integral):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise ValueError(f"{name} must be an integer{bound}, got {value!r}")
    if minimum is not None and int(value) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _describe(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo}"
    return f"{'<' if hi_open else '<='} {hi}"


def real_arg(name: str, value: Any, lo: float | None = None, hi: float | None = None, *,
             lo_open: bool = False, hi_open: bool = False) -> float:
    """``value`` as a finite ``float`` within the bounds.

    ``lo`` / ``hi`` are the bounds (``None``: unbounded on that side); ``lo_open`` / ``hi_open``
    exclude the bound itself (``lo=0, lo_open=True`` means strictly positive). Infinite and NaN
    values are always refused, so ``hi=math.inf`` with ``hi_open=True`` reads as "any finite
    number above ``lo``".

    Raises:
        ValueError: naming ``name`` and ``value`` when ``value`` is not a real number (or is a
            bool), not finite, or outside the bounds.
    """
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    v = float(value)
    below = lo is not None and (v <= lo if lo_open else v < lo)
    above = hi is not None and (v >= hi if hi_open else v > hi)
    if below or above:
        raise ValueError(f"{name} must be {_describe(lo, hi, lo_open, hi_open)}, got {value!r}")
    return v
