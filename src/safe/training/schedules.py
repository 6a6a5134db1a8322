"""Stage A schedules: the learning-rate multiplier, the audio curriculum and the retention multiplier.

* :func:`cosine_with_warmup` / :func:`make_lr_lambda`: linear warm-up then cosine decay to 0, as a
  multiplier for ``LambdaLR``; the same learning rates as transformers' ``get_cosine_schedule_with_warmup``
  from the end of warm-up on (one warm-up step ahead of it, see :func:`cosine_with_warmup`).
* :func:`audio_exposure`: the curriculum, the fraction of the audio-dependent pool (ordered easy ->
  hard) that the sampler may draw from at a step (fed to
  :meth:`safe.data.mixture.BalancedMixtureSampler.set_exposure`).
* :class:`DualAscent`: the Lagrange multiplier of the retention floor ("VL accuracy with the gate
  open must stay above ``floor``"), updated by projected dual ascent from measured accuracy.

All functions are pure (step in, number out), so a resumed run recomputes them from the step alone;
only :class:`DualAscent` has state, with ``state_dict`` / ``load_state_dict``.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from safe.validation import int_arg, real_arg

__all__ = ["cosine_with_warmup", "make_lr_lambda", "audio_exposure", "DualAscent"]


# --------------------------------------------------------------------------------------------
# learning rate
# --------------------------------------------------------------------------------------------
def _check_lr_args(total: Any, warmup: Any) -> tuple[int, int]:
    total = int_arg("total", total, 1)
    warmup = int_arg("warmup", warmup, 0)
    if warmup >= total:
        raise ValueError(f"warmup must be smaller than total={total}, got {warmup}")
    return total, warmup


def cosine_with_warmup(step: int, total: int, warmup: int) -> float:
    """Learning-rate multiplier in ``[0, 1]`` for optimizer step ``step`` (0-based).

    * ``step < warmup``: ``(step + 1) / warmup`` — linear from ``1 / warmup`` to 1, so the first
      step already moves (a multiplier of 0 would waste it);
    * ``warmup <= step <= total``: ``0.5 * (1 + cos(pi * (step - warmup) / (total - warmup)))`` —
      1 at the end of warm-up, 0 at ``step == total``;
    * ``step > total``: 0.

    Two differences from transformers' ``get_cosine_schedule_with_warmup`` (whose multiplier is not public
    API, so it is written out here): its warm-up gives ``step / warmup``, 0 at the first step, and its cosine
    rises again past ``total``. From the end of warm-up to ``total`` the two give the same learning rates (tested).

    ``warmup = 0`` means no warm-up. Requires ``total >= 1`` and ``0 <= warmup < total``.
    """
    total, warmup = _check_lr_args(total, warmup)
    step = int_arg("step", step, 0)
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / (total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def make_lr_lambda(total: int, warmup: int) -> Callable[[int], float]:
    """``lr_lambda`` for ``torch.optim.lr_scheduler.LambdaLR``: ``step -> cosine_with_warmup(step, total, warmup)``.

    Arguments are validated now, not at the first step. ``LambdaLR`` calls it with its step counter
    (0 at construction, +1 per ``scheduler.step()``), so calling ``scheduler.step()`` once after each
    ``optimizer.step()`` gives optimizer step ``k`` the multiplier ``cosine_with_warmup(k, ...)``.
    """
    total, warmup = _check_lr_args(total, warmup)

    # A plain function, not a functools.partial: LambdaLR.state_dict stores callable objects'
    # __dict__ but skips functions, so checkpoints keep the layout they had.
    def lr_lambda(step: int) -> float:
        return cosine_with_warmup(step, total, warmup)

    return lr_lambda


# --------------------------------------------------------------------------------------------
# curriculum
# --------------------------------------------------------------------------------------------
def audio_exposure(step: int, total: int, start: float = 0.25, end: float = 1.0,
                   ramp_fraction: float = 0.5) -> float:
    """Fraction of the audio-dependent pool (ordered easy -> hard) available at ``step``.

    Rises linearly from ``start`` (at step 0) to ``end`` (at step ``ramp_fraction * total``), then
    stays at ``end``. ``ramp_fraction = 0`` gives ``end`` from the first step (no curriculum).

    Requires ``0 <= start <= end <= 1``, ``0 <= ramp_fraction <= 1``, ``total >= 1``, ``step >= 0``
    (steps past ``total`` are allowed and give ``end``).
    """
    step = int_arg("step", step, 0)
    total = int_arg("total", total, 1)
    start = real_arg("start", start, 0.0, 1.0)
    end = real_arg("end", end, 0.0, 1.0)
    if end < start:
        raise ValueError(f"end must be >= start={start}, got {end!r}")
    ramp_fraction = real_arg("ramp_fraction", ramp_fraction, 0.0, 1.0)
    ramp_steps = ramp_fraction * total
    if ramp_steps <= 0 or step >= ramp_steps:
        return end
    return start + (end - start) * (step / ramp_steps)


# --------------------------------------------------------------------------------------------
# retention floor
# --------------------------------------------------------------------------------------------
class DualAscent:
    """Lagrange multiplier ``lambda`` for the constraint "measured VL accuracy >= floor".

    ``update(measured)``: ``lambda <- clip(lambda + lr * (floor - measured), min_value, max_value)``,
    the projected gradient-ascent step on the dual of ``min L_audio s.t. acc_VL >= floor``. The
    multiplier rises while the measured accuracy is below the floor and relaxes back while it is
    above, never below ``min_value`` (default ``initial``: the retention weight the run was
    configured with is a floor, the dual term only adds to it) nor above ``max_value`` (a bound
    on how far one bad measurement can tilt training).

    The trainer uses :attr:`value` as the weight of the retention KL. ``state_dict`` holds the
    configuration and the current value; ``load_state_dict`` restores all of it (exact resume).
    """

    def __init__(self, initial: float, lr: float, floor: float, min_value: float | None = None,
                 max_value: float = 100.0) -> None:
        self.initial = real_arg("initial", initial, 0.0)
        self.lr = real_arg("lr", lr, 0.0)
        self.floor = real_arg("floor", floor)
        self.min_value = self.initial if min_value is None else real_arg("min_value", min_value, 0.0)
        self.max_value = real_arg("max_value", max_value)
        if not self.min_value <= self.initial <= self.max_value:
            raise ValueError(f"need min_value <= initial <= max_value, got min_value={self.min_value}, "
                             f"initial={self.initial}, max_value={self.max_value}")
        self._value = self.initial
        self.num_updates = 0

    @property
    def value(self) -> float:
        """The current multiplier."""
        return self._value

    def update(self, measured: float) -> float:
        """One dual step from a measured accuracy (same units as ``floor``); returns the new value."""
        m = real_arg("measured", measured)
        self._value = min(self.max_value, max(self.min_value, self._value + self.lr * (self.floor - m)))
        self.num_updates += 1
        return self._value

    def state_dict(self) -> dict[str, float | int]:
        """Plain JSON-serialisable dict."""
        return {"value": self._value, "initial": self.initial, "lr": self.lr, "floor": self.floor,
                "min_value": self.min_value, "max_value": self.max_value, "num_updates": self.num_updates}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        missing = sorted({"value", "initial", "lr", "floor", "min_value", "max_value", "num_updates"} - set(state))
        if missing:
            raise ValueError(f"state is missing keys {missing}")
        restored = DualAscent(state["initial"], state["lr"], state["floor"], state["min_value"], state["max_value"])
        value = real_arg("state['value']", state["value"], restored.min_value, restored.max_value)
        self.initial, self.lr, self.floor = restored.initial, restored.lr, restored.floor
        self.min_value, self.max_value = restored.min_value, restored.max_value
        self._value = value
        self.num_updates = int_arg("state['num_updates']", state["num_updates"], 0)
