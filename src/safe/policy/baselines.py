"""Heuristic gates that Stage B's policy is compared against, and a Pareto front.

Every baseline maps an :class:`~safe.policy.table.OutcomeTable` to a bool (n,) tensor, True =
consult audio, scored by :func:`~safe.policy.table.evaluate_actions` like the learned policy:

* :func:`never` / :func:`always` — the two degenerate policies (base VL model; SAFE with audio
  everywhere);
* :func:`random_at_rate` — audio on a random subset of exactly ``round(rate * n)`` rows, to
  compare with the policy at the same use rate (does the policy choose *where*, or only *how
  often*?);
* :func:`confidence_threshold` / :func:`entropy_threshold` — the obvious uncertainty gates on
  the base's VL-only answer;
* :func:`oracle` — audio exactly where it turns a wrong answer into a right one; no gate can be
  more accurate at a lower use rate, so it is the upper bound.

:func:`threshold_sweep` scores a family over thresholds and :func:`pareto_front` keeps the
non-dominated (latency, accuracy) points, for the accuracy-vs-latency plot.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from numbers import Real
from typing import Any

import torch

from safe.policy.table import OutcomeTable, evaluate_actions

__all__ = [
    "never",
    "always",
    "random_at_rate",
    "confidence_threshold",
    "entropy_threshold",
    "oracle",
    "threshold_for_rate",
    "threshold_sweep",
    "pareto_front",
    "SWEEP_KINDS",
]

SWEEP_KINDS = ("confidence", "entropy", "random")


def _check_table(table: Any) -> OutcomeTable:
    if not isinstance(table, OutcomeTable):
        raise TypeError(f"table must be an OutcomeTable, got {type(table).__name__}")
    return table


def _real(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or math.isnan(float(value)):
        raise ValueError(f"{name} must be a number (not NaN), got {value!r}")
    return float(value)


def never(table: OutcomeTable) -> torch.Tensor:
    """No row consults audio: the base VL model's behaviour."""
    return torch.zeros(len(_check_table(table)), dtype=torch.bool)


def always(table: OutcomeTable) -> torch.Tensor:
    """Every row consults audio."""
    return torch.ones(len(_check_table(table)), dtype=torch.bool)


def random_at_rate(table: OutcomeTable, rate: float, seed: int = 0) -> torch.Tensor:
    """Audio on exactly ``round(rate * n)`` rows chosen uniformly at random (seeded, reproducible).

    An exact count rather than a coin per row, so the comparison with a policy at use rate ``rate``
    is at a matched rate, not a matched rate in expectation.
    """
    n = len(_check_table(table))
    rate = _real("rate", rate)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    k = int(round(rate * n))
    g = torch.Generator().manual_seed(seed)
    use = torch.zeros(n, dtype=torch.bool)
    use[torch.randperm(n, generator=g)[:k]] = True
    return use


def confidence_threshold(table: OutcomeTable, t: float) -> torch.Tensor:
    """Audio where the base's VL-only confidence is below ``t`` (strict: ``confidence < t``)."""
    return _check_table(table).confidence < _real("t", t)


def entropy_threshold(table: OutcomeTable, t: float) -> torch.Tensor:
    """Audio where the entropy of the base's VL-only answer is above ``t`` (strict: ``entropy > t``)."""
    return _check_table(table).entropy > _real("t", t)


def oracle(table: OutcomeTable) -> torch.Tensor:
    """Audio iff it raises the score: ``correct_with > correct_without`` (for 0/1 scores: it turns a
    wrong answer into a right one).

    Rows where both answers are right (or both wrong) skip audio — it would only cost latency — and
    rows where audio makes a right answer wrong skip it too. So the oracle's accuracy is the best
    any gate can reach on this table (``mean(max(correct_with, correct_without))``), at the lowest use
    rate that reaches it.
    """
    return _check_table(table).oracle_use()


def threshold_for_rate(table: OutcomeTable, kind: str, rate: float) -> float:
    """A threshold at which the ``kind`` gate (``"confidence"`` or ``"entropy"``) uses audio on about
    ``rate`` of the rows, for a comparison with the policy at a matched use rate.

    The rate is exact unless the score has ties at the cut (then it is the nearest reachable rate
    not above ``rate``); ``rate = 0`` gives a threshold that never uses audio, ``rate = 1`` one that
    always does.
    """
    t = _check_table(table)
    rate = _real("rate", rate)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate!r}")
    k = int(round(rate * len(t)))
    if kind == "confidence":  # uses audio where confidence < threshold: cut above the k lowest
        s = torch.sort(t.confidence.double()).values
        if k == 0:
            return float(s[0])
        if k == len(t):
            return math.inf
        return float(s[k])
    if kind == "entropy":  # uses audio where entropy > threshold: cut below the k highest
        s = torch.sort(t.entropy.double(), descending=True).values
        if k == 0:
            return float(s[0])
        if k == len(t):
            return -math.inf
        return float(s[k])
    raise ValueError(f"kind must be 'confidence' or 'entropy', got {kind!r}")


def threshold_sweep(table: OutcomeTable, kind: str, thresholds: Iterable[float], seed: int = 0
                    ) -> list[dict[str, Any]]:
    """Score the ``kind`` family at each threshold: one :func:`evaluate_actions` dict per threshold,
    with ``kind`` and ``threshold`` added, in the given order.

    ``kind``: ``"confidence"`` (:func:`confidence_threshold`), ``"entropy"``
    (:func:`entropy_threshold`) or ``"random"`` (:func:`random_at_rate`; the thresholds are rates
    in [0, 1], ``seed`` its seed).
    """
    t = _check_table(table)
    if kind not in SWEEP_KINDS:
        raise ValueError(f"kind must be one of {SWEEP_KINDS}, got {kind!r}")
    values = list(thresholds)
    if not values:
        raise ValueError("thresholds must not be empty")
    rows = []
    for i, th in enumerate(values):
        th = _real(f"thresholds[{i}]", th)
        if kind == "confidence":
            use = confidence_threshold(t, th)
        elif kind == "entropy":
            use = entropy_threshold(t, th)
        else:
            use = random_at_rate(t, th, seed)
        row: dict[str, Any] = {"kind": kind, "threshold": th}
        row.update(evaluate_actions(t, use))
        rows.append(row)
    return rows


def pareto_front(points: Sequence[Mapping[str, Any]], x: str = "mean_latency_ms", y: str = "accuracy"
                 ) -> list[Mapping[str, Any]]:
    """The points not dominated on (lower ``x``, higher ``y``), sorted by ``x`` ascending.

    A point is dominated if another has ``x`` <= and ``y`` >= with at least one strict; of exact
    duplicates the first is kept. Points with a NaN ``x`` or ``y`` are left out (they cannot be
    compared). The returned items are the input mappings themselves (not copies).
    """
    pts = list(points)
    for i, p in enumerate(pts):
        if x not in p or y not in p:
            raise KeyError(f"points[{i}] lacks key {x!r} or {y!r}")
    valid = [p for p in pts if not (math.isnan(float(p[x])) or math.isnan(float(p[y])))]
    # Sort by x ascending, then y descending: walking in that order, a point is on the front iff its
    # y beats every y seen so far (anything earlier has x <= its x).
    order = sorted(range(len(valid)), key=lambda i: (float(valid[i][x]), -float(valid[i][y]), i))
    front: list[Mapping[str, Any]] = []
    best_y = -math.inf
    for i in order:
        yi = float(valid[i][y])
        if yi > best_y:
            front.append(valid[i])
            best_y = yi
    return front
