"""Stage A losses: answer cross-entropy, retention KL, and the diagonal-Fisher (EWC) penalty.

Conventions (causal LM, as Hugging Face computes its own loss):

* ``logits`` is ``(B, T, V)`` and ``logits[:, t]`` predicts token ``t + 1``;
* ``labels`` is ``(B, T)``, aligned with the input ids, with ``-100`` (:data:`IGNORE_INDEX`) at every
  position that is not part of the answer (prompt, image tokens, padding);
* so the position ``t`` of the shifted problem (``0 <= t < T - 1``) is scored exactly when
  ``labels[:, t + 1] != -100`` (:func:`answer_positions`).

Every loss here is computed in float32, whatever the logits' dtype (bf16 logits have 8 bits of
mantissa: a log-softmax over a large vocabulary in bf16 loses the small probabilities the KL and the
cross-entropy are made of). Only the answer positions are cast, so a bf16 run never materialises a
float32 copy of the whole ``(B, T, V)`` tensor.

The total Stage A objective (docs/design.md: the proposal's Stage A, and "Decisions the
proposal leaves open") is::

    L = CE(audio rows) + lambda_retention * KL(base || adapted, VL rows, gate OPEN)
        + lambda_fisher * sum_i F_i (theta_i - theta0_i)^2
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "IGNORE_INDEX",
    "answer_positions",
    "answer_cross_entropy",
    "retention_kl",
    "sample_answer_labels",
    "DiagonalFisher",
    "named_trainable_parameters",
]

#: Label value of positions that are not scored (the value Hugging Face and PyTorch use).
IGNORE_INDEX = -100

_REDUCTIONS = ("mean", "none")


# --------------------------------------------------------------------------------------------
# shapes and masks
# --------------------------------------------------------------------------------------------
def _check_labels(labels: Tensor) -> None:
    if not isinstance(labels, Tensor) or labels.dim() != 2:
        raise ValueError(f"labels must be a (batch, time) tensor, got "
                         f"{tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype}")


def _check_logits(logits: Tensor, labels: Tensor, name: str = "logits") -> None:
    if not isinstance(logits, Tensor) or logits.dim() != 3:
        raise ValueError(f"{name} must be a (batch, time, vocab) tensor, got "
                         f"{tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__}")
    if tuple(logits.shape[:2]) != tuple(labels.shape):
        raise ValueError(f"{name} of shape {tuple(logits.shape)} does not match labels of shape "
                         f"{tuple(labels.shape)} in (batch, time)")
    if not logits.dtype.is_floating_point:
        raise ValueError(f"{name} must be floating point, got dtype {logits.dtype}")


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def answer_positions(labels: Tensor) -> Tensor:
    """Bool mask ``(B, T - 1)``: True at position ``t`` when token ``t + 1`` is an answer token.

    This is the mask of the *shifted* problem: ``logits[:, :-1][mask]`` are exactly the logits that
    predict the labelled tokens ``labels[:, 1:][mask]``. ``labels[:, 0]`` can never be predicted
    (nothing precedes it) and is ignored whatever its value.
    """
    _check_labels(labels)
    return labels[:, 1:] != IGNORE_INDEX


def _row_means(values: Tensor, mask: Tensor) -> Tensor:
    """Per-row mean of ``values`` (one entry per True of ``mask``, row-major order); 0 for empty rows."""
    rows = mask.nonzero(as_tuple=True)[0]
    sums = torch.zeros(mask.shape[0], dtype=values.dtype, device=values.device).index_add(0, rows, values)
    counts = mask.sum(dim=1).to(values.dtype)
    # A row with no answer token contributes nothing: 0 rather than 0/0 = NaN, which would poison a
    # weighted sum of rows in the trainer.
    return sums / counts.clamp(min=1)


def _reduce(values: Tensor, mask: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return _row_means(values, mask)
    # Mean over every answer token of the batch (the Hugging Face convention): long answers weigh
    # more than short ones. With no answer token at all the loss is 0 (still attached to the graph,
    # so backward() works and gives zero gradients) instead of NaN.
    return values.sum() / max(int(values.numel()), 1)


# --------------------------------------------------------------------------------------------
# losses
# --------------------------------------------------------------------------------------------
def answer_cross_entropy(logits: Tensor, labels: Tensor, reduction: str = "mean") -> Tensor:
    """Cross-entropy of the answer tokens: ``logits[:, :-1]`` against ``labels[:, 1:]``.

    Args:
        logits: ``(B, T, V)``, any floating dtype (the loss is computed in float32).
        labels: ``(B, T)`` integer, ``-100`` where not scored.
        reduction: ``"mean"``: a 0-d float32 tensor, the mean over all answer tokens of the batch
            (0 when there is none); ``"none"``: ``(B,)`` float32, the mean over each row's answer
            tokens (0 for a row without any).
    """
    _check_labels(labels)
    _check_logits(logits, labels)
    _check_reduction(reduction)
    mask = answer_positions(labels)
    # Select first, then cast: only the scored positions ever exist in float32.
    scored = logits[:, :-1][mask].float()                      # (N, V)
    targets = labels[:, 1:][mask].long()                       # (N,)
    nll = F.cross_entropy(scored, targets, reduction="none")   # (N,), float32
    return _reduce(nll, mask, reduction)


def retention_kl(adapted_logits: Tensor, base_logits: Tensor, labels: Tensor,
                 reduction: str = "mean") -> Tensor:
    """KL(p_base || p_adapted) at the answer positions, averaged over those positions.

    ``sum_v p_base(v) * (log p_base(v) - log p_adapted(v))`` per position, from ``log_softmax`` of
    each side in float32 (stable for any logit scale). It is exactly 0 when the two logit tensors
    are equal, and its gradient with respect to ``adapted_logits`` is ``p_adapted - p_base`` per
    position (divided by the number of positions), so it pulls the adapted distribution onto the
    base one. ``base_logits`` is detached: the base model is a fixed target.

    Why the gate is OPEN here (docs/design.md, "Retention loss with the gate open"): with the gate
    closed SAFE *is* the base model, bit for bit, so a KL measured there is zero by construction and
    teaches nothing. The retention KL is measured on VL-only questions with the adapters running
    (no audio, or unrelated audio attached): if the policy opens the gate by mistake on a question
    the image already answers, the answer must not move. ``adapted_logits`` must come from such a
    gate-open forward pass; ``base_logits`` from the frozen base on the same batch.

    Args:
        adapted_logits, base_logits: ``(B, T, V)``, any floating dtype, same shape.
        labels: ``(B, T)``; the positions scored are those of :func:`answer_positions` (the base
            model's own answer tokens, or the gold answer: only the mask is used).
        reduction: ``"mean"`` (0-d, over all answer positions; 0 when there is none) or ``"none"``
            (``(B,)``, per-row mean; 0 for a row without answer positions).
    """
    _check_labels(labels)
    _check_logits(adapted_logits, labels, "adapted_logits")
    _check_logits(base_logits, labels, "base_logits")
    if adapted_logits.shape != base_logits.shape:
        raise ValueError(f"adapted_logits of shape {tuple(adapted_logits.shape)} and base_logits of "
                         f"shape {tuple(base_logits.shape)} differ")
    _check_reduction(reduction)
    mask = answer_positions(labels)
    log_q = F.log_softmax(adapted_logits[:, :-1][mask].float(), dim=-1)           # (N, V)
    log_p = F.log_softmax(base_logits.detach()[:, :-1][mask].float(), dim=-1)     # (N, V)
    p = log_p.exp()
    # Terms with p = 0 contribute 0 (the limit of p log p), also where a logit is -inf on both sides
    # (a vocabulary mask), where the naive product would be 0 * (-inf - -inf) = NaN.
    terms = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))
    kl = terms.sum(dim=-1)                                                         # (N,)
    return _reduce(kl, mask, reduction)


def sample_answer_labels(base_logits: Tensor, labels: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """``labels`` with every answer token replaced by a draw from the base model's own predictive
    distribution at that position (``softmax(base_logits[:, t])`` predicts token ``t + 1``; the context
    stays the teacher-forced one). The labels of the *true* Fisher of the base's output distribution: with
    gold labels the squared gradients measure the empirical Fisher, which vanishes where the model fits
    the data and says nothing about what the base itself would answer. Positions that are not scored
    keep ``-100``. ``generator``: a seeded draw (the trainer's resume stays exact)."""
    _check_labels(labels)
    _check_logits(base_logits, labels, "base_logits")
    mask = answer_positions(labels)
    probs = F.softmax(base_logits.detach()[:, :-1][mask].float(), dim=-1)           # (N, V)
    out = labels.clone()
    if probs.numel():
        draws = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1)    # (N,)
        shifted = out[:, 1:]
        shifted[mask] = draws.to(device=labels.device, dtype=labels.dtype)
    return out


# --------------------------------------------------------------------------------------------
# Fisher penalty
# --------------------------------------------------------------------------------------------
def named_trainable_parameters(model: Any) -> dict[str, torch.nn.Parameter]:
    """``{"<part>.<param name>": parameter}`` for every trainable parameter of SAFE's own parts.

    ``model`` is anything with ``safe_modules()`` (``SAFEModel``); the names are stable across runs,
    so a :class:`DiagonalFisher` state dict saved by one run loads into the next. The parameters are
    the same set as ``SAFEModel.trainable_parameters()``.
    """
    return {f"{part}.{name}": p
            for part, module in model.safe_modules().items()
            for name, p in module.named_parameters() if p.requires_grad}


def _as_dict(named_params: Mapping[str, Tensor] | Iterable[tuple[str, Tensor]], arg: str) -> dict[str, Tensor]:
    d = dict(named_params.items() if isinstance(named_params, Mapping) else named_params)
    for name, t in d.items():
        if not isinstance(t, Tensor):
            raise ValueError(f"{arg}[{name!r}] must be a tensor, got {type(t).__name__}")
    return d


class DiagonalFisher:
    """EWC on SAFE's trainable parameters, anchored at their initial (zero-gate) values.

    ``penalty(theta) = sum_i F_i * (theta_i - anchor_i)^2``, with ``F`` a diagonal Fisher estimate.

    What the Fisher is of (docs/design.md, "Fisher penalty on the adapters"): the frozen base cannot drift, so EWC is applied to the adapters and
    projector themselves. ``F`` is the diagonal Fisher of SAFE's output distribution on the VL-only
    rows of the retention buffer, with the gate OPEN (unrelated audio attached), *under the base
    model's own output distribution*: each row's answer tokens are drawn from the base's predictive
    distribution (:func:`sample_answer_labels`, not the gold answers) and ``F_i`` is the mean over rows
    of the squared per-row gradient of their log-likelihood. Directions of parameter space that move
    the VL answers away from what the base would say are then expensive, the others free; the anchor is
    the zero-gate start, where SAFE's VL outputs are the base's exactly.

    Why estimated after a warm-up and refreshed (by the trainer, with ``accumulate`` then
    ``finalize``): at the zero-gate initialisation the adapter output is multiplied by ``tanh(0) = 0``,
    so every adapter and projector gradient except the gate's is exactly zero, and a Fisher estimated
    at the start would be zero everywhere but on the gate. The trainer takes its first estimate once
    the gates have opened (``fisher_warmup`` steps) and refreshes it every ``fisher_every`` steps;
    ``finalize(decay=...)`` keeps an exponential moving average across estimates.

    Usage::

        fisher = DiagonalFisher(named_trainable_parameters(model))   # anchors = initial values
        ...                                                          # after the warm-up, every K steps:
        for row in retention_rows:                                   # one backward per row
            model.zero_grad(); sampled_nll(row).backward(); fisher.accumulate(named)
        fisher.finalize(decay=0.5)
        loss = ... + lambda_fisher * fisher.penalty(named)

    ``accumulate`` squares whatever gradient it finds: fed one row's gradient at a time it estimates
    the per-example Fisher (fed mini-batch gradients it would estimate the smaller Fisher of batch means).

    State: anchors in the parameters' own dtype (exact), Fisher and accumulator in float32 on the
    parameters' device. ``state_dict()`` is a flat ``dict[str, Tensor]`` (``torch.save`` and
    ``safetensors.torch.save_file`` both accept it) and ``load_state_dict`` restores it exactly.
    """

    def __init__(self, named_params: Mapping[str, Tensor] | Iterable[tuple[str, Tensor]]) -> None:
        params = _as_dict(named_params, "named_params")
        if not params:
            raise ValueError("named_params is empty: DiagonalFisher needs at least one parameter")
        for name in params:
            if "/" in name:
                # "/" separates the kind from the name in the flat state dict.
                raise ValueError(f"named_params has a name containing '/': {name!r}")
        # Detached clones: later optimizer steps (in-place updates) must not move the anchor.
        self.anchors: dict[str, Tensor] = {n: p.detach().clone() for n, p in params.items()}
        self.fisher: dict[str, Tensor] = {n: torch.zeros(p.shape, dtype=torch.float32, device=p.device)
                                          for n, p in params.items()}
        self._sum: dict[str, Tensor] = {n: torch.zeros_like(f) for n, f in self.fisher.items()}
        self.count = 0           # accumulate() calls since the last finalize()
        self.num_estimates = 0   # finalize() calls so far

    # ------------------------------------------------------------------ estimation
    def accumulate(self, named_params: Mapping[str, Tensor] | Iterable[tuple[str, Tensor]]) -> None:
        """Add the squares of the current ``.grad`` of each parameter to the running sum.

        A parameter whose ``.grad`` is None (or that is absent from ``named_params``) did not
        influence the loss: its squared gradient is 0 for this call, and the call still counts, so
        the mean in :meth:`finalize` is over every call. Names not known at construction raise.
        """
        params = _as_dict(named_params, "named_params")
        unknown = sorted(set(params) - set(self.anchors))
        if unknown:
            raise ValueError(f"named_params has parameters unknown to this DiagonalFisher: {unknown}")
        for name, p in params.items():
            if p.grad is None:
                continue
            g = p.grad.detach()
            if g.shape != self._sum[name].shape:
                raise ValueError(f"gradient of {name!r} has shape {tuple(g.shape)}, expected "
                                 f"{tuple(self._sum[name].shape)}")
            self._sum[name].add_(g.to(device=self._sum[name].device, dtype=torch.float32).square())
        self.count += 1

    @torch.no_grad()
    def finalize(self, decay: float | None = None) -> dict[str, Tensor]:
        """Turn the accumulated sum into the new Fisher estimate and reset the accumulator.

        ``F_new = sum / count``. With ``decay`` (in ``[0, 1)``) and a previous estimate:
        ``F = decay * F_old + (1 - decay) * F_new``; the first estimate is ``F_new`` itself (an
        average against the all-zero initial state would only shrink it). Returns ``self.fisher``.
        """
        if decay is not None and not (isinstance(decay, (int, float)) and 0.0 <= float(decay) < 1.0):
            raise ValueError(f"decay must be None or in [0, 1), got {decay!r}")
        if self.count == 0:
            raise RuntimeError("DiagonalFisher.finalize() called with count=0: call accumulate() "
                               "after a backward pass first")
        for name, s in self._sum.items():
            new = s / self.count
            if decay is None or self.num_estimates == 0:
                self.fisher[name].copy_(new)
            else:
                self.fisher[name].mul_(float(decay)).add_(new, alpha=1.0 - float(decay))
            s.zero_()
        self.count = 0
        self.num_estimates += 1
        return self.fisher

    # ------------------------------------------------------------------ penalty
    def penalty(self, named_params: Mapping[str, Tensor] | Iterable[tuple[str, Tensor]]) -> Tensor:
        """``sum_i F_i * (theta_i - anchor_i)^2`` as a 0-d float32 tensor, differentiable in theta.

        ``named_params`` must hold exactly the parameters given at construction (a missing one
        would silently drop its term). Zero at the anchor and while the Fisher is zero; its
        gradient is ``2 * F * (theta - anchor)``.
        """
        params = _as_dict(named_params, "named_params")
        if set(params) != set(self.anchors):
            missing = sorted(set(self.anchors) - set(params))
            unknown = sorted(set(params) - set(self.anchors))
            raise ValueError(f"named_params must hold exactly the anchored parameters; "
                             f"missing: {missing}, unknown: {unknown}")
        total: Tensor | None = None
        for name, theta in params.items():
            anchor, fisher = self.anchors[name], self.fisher[name]
            if theta.shape != anchor.shape:
                raise ValueError(f"parameter {name!r} has shape {tuple(theta.shape)}, anchored with "
                                 f"{tuple(anchor.shape)}")
            diff = theta.float() - anchor.to(device=theta.device, dtype=torch.float32)
            term = (fisher.to(theta.device) * diff.square()).sum()
            total = term if total is None else total + term
        assert total is not None  # __init__ guarantees at least one parameter
        return total

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Tensor]:
        """Flat ``{"anchor/<name>", "fisher/<name>", "sum/<name>": tensor, "count", "num_estimates"}``.

        Tensors are contiguous clones (safe to save with safetensors, unaffected by later updates).
        """
        sd: dict[str, Tensor] = {}
        for kind, store in (("anchor", self.anchors), ("fisher", self.fisher), ("sum", self._sum)):
            for name, t in store.items():
                sd[f"{kind}/{name}"] = t.detach().clone().contiguous()
        sd["count"] = torch.tensor(self.count, dtype=torch.int64)
        sd["num_estimates"] = torch.tensor(self.num_estimates, dtype=torch.int64)
        return sd

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Restore a :meth:`state_dict` exactly (into this object's devices and dtypes).

        The parameter names and shapes must match the ones given at construction.
        """
        expected = set(self.state_dict())
        got = set(state)
        if got != expected:
            raise ValueError(f"state has keys that do not match this DiagonalFisher; missing: "
                             f"{sorted(expected - got)}, unexpected: {sorted(got - expected)}")
        for kind, store in (("anchor", self.anchors), ("fisher", self.fisher), ("sum", self._sum)):
            for name, t in store.items():
                src = state[f"{kind}/{name}"]
                if tuple(src.shape) != tuple(t.shape):
                    raise ValueError(f"state[{kind + '/' + name!r}] has shape {tuple(src.shape)}, "
                                     f"expected {tuple(t.shape)}")
                t.copy_(src.to(device=t.device, dtype=t.dtype))
        self.count = int(state["count"])
        self.num_estimates = int(state["num_estimates"])
