"""Stage B's reward, read off an :class:`~safe.policy.table.OutcomeTable` row by row:

    r = correct - alpha * cost - gamma * irrelevance_penalty - lambda * is_vl * (1 - correct)

* ``correct``: ``correct_with`` if audio was used, else ``correct_without`` (a score in [0, 1]: 0/1 for QA);
* ``cost``: what the action costs beyond skipping audio, from two measured quantities of each row,
  each normalised by a table-wide scale so it is unitless:

  - runtime: ``max(0, cost_ms - base_cost_ms) / latency_scale`` (:func:`latency_scale`: by default
    the mean extra runtime of audio over the table, so an average audio call costs 1);
  - tokens: ``max(0, tokens - base_tokens) / token_scale`` (:func:`token_scale`: the mean extra
    language-model tokens of audio: the ``k`` audio tokens the adapters attend to plus any change in
    the tokens generated, so again an average audio call costs 1);

  and ``cost = (runtime + token_weight * tokens) / (1 + token_weight)``: the two normalised costs
  weighted and divided by the total weight, so an average audio call still costs 1 and ``alpha``
  keeps its reading ("accuracy points one audio call must buy": with ``alpha = 0.6`` audio pays off
  on a row only when it raises the chance of a right answer by more than 0.6, before the
  irrelevance penalty). A table without token counts (zeros, as in tables written before they were
  measured) has ``token_scale = 0`` and its cost is the runtime alone;
* ``irrelevance_penalty``: 1 where audio is used on a row that does not need it (``~needs_audio``);
* the last term is the Lagrangian of the retention constraint (:func:`retention_penalty`).
"""
from __future__ import annotations

from typing import Any

import torch

from safe.policy.table import OutcomeTable
from safe.validation import real_arg

__all__ = ["LATENCY_NORMS", "latency_scale", "token_scale", "reward", "retention_penalty"]

LATENCY_NORMS = ("mean_extra", "base")


def _vector(name: str, value: Any, n: int | None = None) -> torch.Tensor:
    t = torch.as_tensor(value)
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    if n is not None and t.shape[0] != n:
        raise ValueError(f"{name} must have length {n}, got {t.shape[0]}")
    return t


def latency_scale(table: OutcomeTable, mode: str = "mean_extra") -> float:
    """The divisor that turns extra milliseconds into the unitless runtime cost.

    * ``"mean_extra"`` (default): ``mean(max(0, cost_with_ms - cost_without_ms))`` over the table —
      consulting audio costs 1 on an average row, so ``alpha`` reads as "accuracy points one audio
      call must buy";
    * ``"base"``: ``mean(cost_without_ms)`` — the cost is the extra runtime relative to the base
      model's (0.3 = 30 % slower), so ``alpha`` trades accuracy against relative slow-down.

    Raises ``ValueError`` if the scale is not positive (audio measured as free: there is no latency
    trade-off to learn, and the caller should set ``alpha_final = 0`` rather than divide by 0).
    """
    if mode == "mean_extra":
        s = float((table.cost_with_ms - table.cost_without_ms).clamp_min(0).double().mean())
    elif mode == "base":
        s = float(table.cost_without_ms.double().mean())
    else:
        raise ValueError(f"mode must be one of {LATENCY_NORMS}, got {mode!r}")
    if not s > 0:
        raise ValueError(f"latency scale for mode={mode!r} is {s}; the table measures no extra cost for audio")
    return s


def token_scale(table: OutcomeTable) -> float:
    """``mean(max(0, tokens_with - tokens_without))`` over the table: the divisor of the token cost, so an
    average audio call costs 1 token unit. 0 when the table holds no token counts (or audio adds none):
    the reward then has no token term."""
    return float((table.tokens_with - table.tokens_without).clamp_min(0).double().mean())


def reward(correct: Any, use_audio: Any, cost_ms: Any, base_cost_ms: Any, alpha: float, gamma: float,
           needs_audio: Any, *, latency_scale: float, tokens: Any = None, base_tokens: Any = None,
           token_scale: float = 0.0, token_weight: float = 1.0) -> torch.Tensor:
    """Per-row reward ``correct - alpha * cost - gamma * irrelevance_penalty``, float32 (n,) (module docstring).

    ``correct``: (n,) score in [0, 1] (bool accepted); ``use_audio``, ``needs_audio``: (n,) bool or 0/1;
    ``cost_ms`` / ``tokens``: measured runtime / language-model tokens of the action taken;
    ``base_cost_ms`` / ``base_tokens``: the same for the no-audio action on the same row (so skipping
    costs exactly 0). Differences are clamped at 0 (timing noise never makes audio look cheaper than
    skipping). The token term is used when ``tokens`` and ``base_tokens`` are given and ``token_scale``
    > 0; ``token_weight`` >= 0 is its weight beside the runtime's 1. ``alpha``, ``gamma`` >= 0;
    ``latency_scale`` > 0 (keyword-only so a raw-millisecond cost is never used by accident).
    """
    c = _vector("correct", correct)
    n = c.shape[0]
    u = _vector("use_audio", use_audio, n).bool()
    cost = _vector("cost_ms", cost_ms, n).double()
    base = _vector("base_cost_ms", base_cost_ms, n).double()
    needs = _vector("needs_audio", needs_audio, n).bool()
    alpha = real_arg("alpha", alpha, 0.0)
    gamma = real_arg("gamma", gamma, 0.0)
    scale = real_arg("latency_scale", latency_scale, 0.0, lo_open=True)
    t_scale = real_arg("token_scale", token_scale, 0.0)
    weight = real_arg("token_weight", token_weight, 0.0)
    total = (cost - base).clamp_min(0.0) / scale
    if tokens is not None and base_tokens is not None and t_scale > 0:
        tok = _vector("tokens", tokens, n).double()
        tok_base = _vector("base_tokens", base_tokens, n).double()
        total = (total + weight * (tok - tok_base).clamp_min(0.0) / t_scale) / (1.0 + weight)
    irrelevant = (u & ~needs).double()
    return (c.double() - alpha * total - gamma * irrelevant).float()


def retention_penalty(correct: Any, is_vl: Any, lam: float) -> torch.Tensor:
    """The Lagrangian term of the VL-retention constraint, per row: ``lam * is_vl * (1 - correct)``, (n,).

    The constraint is ``acc_VL >= floor``; its Lagrangian adds ``lam * (acc_VL - floor)`` to the
    objective. Written per row, ``acc_VL`` is the mean of ``correct`` over VL rows, so up to a
    constant (which the value baseline absorbs) and the factor ``1 / P(VL)`` (folded into ``lam``)
    the term is ``-lam`` for every wrong VL answer. A per-row term is needed: the proposal's
    batch-level ``lam * max(0, floor - acc_VL)`` is the same for every action in the batch and so
    gives the policy no gradient at all. Subtract this from :func:`reward`.
    """
    c = _vector("correct", correct)
    vl = _vector("is_vl", is_vl, c.shape[0]).bool()
    lam = real_arg("lam", lam, 0.0)
    return (lam * vl.double() * (1.0 - c.double())).float()
