"""The zero-initialised tanh gate that scales an adapter's contribution."""
from __future__ import annotations

import torch
from torch import nn


class TanhGate(nn.Module):
    """Scalar gate ``tanh(g) * x`` with ``g`` initialised to ``init`` (0 by default).

    Guarantees: :attr:`is_zero` tells whether ``g`` is exactly zero, so callers can skip the adapter
    entirely (``h + tanh(0) * x`` is *not* a no-op: it turns -0.0 into +0.0 and propagates NaN/Inf from
    ``x``). On the CPU it reads the value every time (no device to synchronise with), so any write counts,
    ``.data`` writes included. On an accelerator it re-reads (one synchronisation) only when the value may
    have changed: after an in-place update of the parameter (optimiser step, ``load_state_dict``, ``fill_``
    under ``no_grad``: each bumps its version counter), after ``.data`` is re-assigned (a new storage), or
    after :meth:`invalidate`. A write *through* ``.data`` bumps no counter: call :meth:`invalidate` after one
    (``SAFEModel.set_gates`` does).
    """

    def __init__(self, init: float = 0.0) -> None:
        super().__init__()
        self.value = nn.Parameter(torch.tensor(float(init)))
        self._zero_cache: tuple[int, int, bool] | None = None

    def invalidate(self) -> None:
        """Forget the cached :attr:`is_zero` (after writing the value through ``.data`` on an accelerator)."""
        self._zero_cache = None

    @property
    def is_zero(self) -> bool:
        p = self.value
        if p.device.type == "cpu":  # reading a CPU scalar costs no synchronisation: never trust a cache
            return bool(p.detach() == 0)
        key = (p._version, p.data_ptr())
        if self._zero_cache is None or self._zero_cache[:2] != key:
            self._zero_cache = (*key, bool((p.detach() == 0).item()))
        return self._zero_cache[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: any shape -> same shape, scaled by ``tanh(g)``."""
        return torch.tanh(self.value).to(x.dtype) * x
