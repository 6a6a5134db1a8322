"""The zero-initialised tanh gate that scales an adapter's contribution."""
from __future__ import annotations

import torch
from torch import nn


class TanhGate(nn.Module):
    """Scalar gate ``tanh(g) * x`` with ``g`` initialised to ``init`` (0 by default).

    Guarantees: :attr:`is_zero` tells, without a device synchronisation in the common case, whether
    ``g`` is exactly zero, so callers can skip the adapter entirely (``h + tanh(0) * x`` is *not* a
    no-op: it turns -0.0 into +0.0 and propagates NaN/Inf from ``x``).
    """

    def __init__(self, init: float = 0.0) -> None:
        super().__init__()
        self.value = nn.Parameter(torch.tensor(float(init)))
        self._zero_cache: tuple[int, int, bool] | None = None

    @property
    def is_zero(self) -> bool:
        # In-place updates (optimiser steps, load_state_dict, fill_ under no_grad) bump the tensor's
        # version counter and re-assigning `.data` changes the pointer; re-read the value only then.
        p = self.value
        key = (p._version, p.data_ptr())
        if self._zero_cache is None or self._zero_cache[:2] != key:
            self._zero_cache = (*key, bool((p.detach() == 0).item()))
        return self._zero_cache[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: any shape -> same shape, scaled by ``tanh(g)``."""
        return torch.tanh(self.value).to(x.dtype) * x
