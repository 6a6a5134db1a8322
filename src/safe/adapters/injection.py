"""Injection of adapters into a frozen decoder by forward hooks, and the audio context they read.

Hooks change neither the base model's code nor its state-dict keys. A hook returns ``None`` (the
layer's output is used untouched) unless an audio context is active; rows of the batch that do not
use audio are copied, never recomputed, so they stay bit-exact.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from safe.adapters.cross_attention import GatedCrossAttention


@dataclass
class AudioContext:
    """Audio tokens for the rows of the current batch that use audio.

    ``tokens``: (n_open, k, hidden) for the rows in ``open_rows`` (sorted indices into a batch of
    ``batch_size``). Generation may enlarge the batch by an integer factor (beam search,
    ``num_return_sequences``: each row repeated consecutively); :meth:`for_batch` expands to match.
    """

    tokens: torch.Tensor
    open_rows: torch.Tensor
    batch_size: int

    def __post_init__(self) -> None:
        self._expanded: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def for_batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        if n == self.batch_size:
            return self.tokens, self.open_rows
        if n % self.batch_size:
            raise RuntimeError(
                f"decoder batch of {n} rows is not a multiple of the audio batch of {self.batch_size}; "
                "pass audio for every row of the input batch")
        if n not in self._expanded:
            f = n // self.batch_size
            rows = (self.open_rows.unsqueeze(1) * f + torch.arange(f, device=self.open_rows.device)).reshape(-1)
            self._expanded[n] = (self.tokens.repeat_interleave(f, dim=0), rows)
        return self._expanded[n]


class AdapterInjector:
    """Holds the audio context and the hooks that apply one adapter after each chosen decoder layer."""

    def __init__(self, layers: nn.ModuleList, adapters: dict[int, GatedCrossAttention]) -> None:
        self.layers = layers
        self.adapters = adapters
        self.context: AudioContext | None = None
        self._handles: list = []

    # --- hooks -------------------------------------------------------------------------------
    def attach(self) -> None:
        if self._handles:
            return
        for idx, adapter in self.adapters.items():
            # prepend: run before any hook a user or accelerate adds, so they see the fused state.
            self._handles.append(self.layers[idx].register_forward_hook(self._make_hook(adapter), prepend=True))

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def _make_hook(self, adapter: GatedCrossAttention):
        def hook(module, args, output):
            ctx = self.context
            if ctx is None:
                return None
            # A zero gate with no gradient wanted: the layer is exactly the base (skip, don't add 0).
            needs_grad = torch.is_grad_enabled() and adapter.gate.value.requires_grad
            if not needs_grad and adapter.gate.is_zero:
                return None
            hidden = output[0] if isinstance(output, tuple) else output
            tokens, rows = ctx.for_batch(hidden.shape[0])
            if tokens.device != hidden.device:  # a layer on another device (device_map="auto")
                tokens, rows = tokens.to(hidden.device), rows.to(hidden.device)
            opened = hidden.index_select(0, rows)
            fused = opened + adapter(opened, tokens)
            new_hidden = hidden.index_copy(0, rows, fused)
            return (new_hidden, *output[1:]) if isinstance(output, tuple) else new_hidden

        return hook

    # --- context -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def audio(self, context: AudioContext | None) -> Iterator[None]:
        """Make ``context`` visible to the hooks inside the block; always cleared on exit."""
        previous = self.context
        self.context = context
        try:
            yield
        finally:
            self.context = previous
