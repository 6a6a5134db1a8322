"""Injection of adapters into a frozen decoder by forward hooks, and the modality contexts they read.

Hooks change neither the base model's code nor its state-dict keys. A hook returns ``None`` (the
layer's output is used untouched) unless a modality context is active; rows of the batch that do not
use that modality are copied, never recomputed, so they stay bit-exact.
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
    """Holds the modality contexts and the hooks that apply the adapters after each chosen decoder layer.

    ``adapters`` maps a layer index to one adapter (the single-modality layout, named ``"audio"``) or
    to a list of ``(modality, adapter)`` pairs. At a layer, the adapters run one after another in that
    list's order, each only on the rows of its own modality's context: a row that uses one modality is
    touched by that modality's adapter alone (so it is exactly what a model carrying only that modality
    gives), and a row that uses none is never touched (the base, bit-exact)."""

    def __init__(self, layers: nn.ModuleList,
                 adapters: dict[int, GatedCrossAttention | list[tuple[str, GatedCrossAttention]]]) -> None:
        self.layers = layers
        self._contexts: dict[str, AudioContext] = {}
        self.disabled = False
        self._handles: list = []
        self.set_adapters(adapters)

    def set_adapters(self, adapters: dict[int, GatedCrossAttention | list[tuple[str, GatedCrossAttention]]]) -> None:
        """Replace the adapters (a modality added or removed), re-hooking the layers if attached. The active
        contexts and :attr:`disabled` are kept: a block entered before the change stays in force after it."""
        attached = self.attached
        self.detach()
        self.adapters = {i: (list(a) if isinstance(a, (list, tuple)) else [("audio", a)]) for i, a in adapters.items()}
        if attached:
            self.attach()

    @property
    def context(self) -> dict[str, AudioContext] | None:
        """The active contexts by modality, or None when no modality is active."""
        return dict(self._contexts) if self._contexts else None

    # --- hooks -------------------------------------------------------------------------------
    def attach(self) -> None:
        if self._handles:
            return
        for idx, pairs in self.adapters.items():
            # prepend: run before any hook a user or accelerate adds, so they see the fused state.
            self._handles.append(self.layers[idx].register_forward_hook(self._make_hook(pairs), prepend=True))

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def _make_hook(self, pairs: list[tuple[str, GatedCrossAttention]]):
        def hook(module, args, output):
            if not self._contexts or self.disabled:
                return None
            hidden = output[0] if isinstance(output, tuple) else output
            new_hidden = None
            for name, adapter in pairs:
                ctx = self._contexts.get(name)
                if ctx is None:
                    continue
                # A zero gate with no gradient wanted: the layer is exactly the base (skip, don't add 0).
                needs_grad = torch.is_grad_enabled() and adapter.gate.value.requires_grad
                if not needs_grad and adapter.gate.is_zero:
                    continue
                current = hidden if new_hidden is None else new_hidden
                tokens, rows = ctx.for_batch(current.shape[0])
                if tokens.device != current.device:  # a layer on another device (device_map="auto")
                    tokens, rows = tokens.to(current.device), rows.to(current.device)
                opened = current.index_select(0, rows)
                fused = opened + adapter(opened, tokens)
                if not needs_grad:  # a zero gate is the base even if is_zero could not see the write (no sync)
                    fused = torch.where(adapter.gate.value == 0, opened, fused)
                new_hidden = current.index_copy(0, rows, fused)
            if new_hidden is None:
                return None
            return (new_hidden, *output[1:]) if isinstance(output, tuple) else new_hidden

        return hook

    # --- context -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def audio(self, context: AudioContext | None, modality: str = "audio") -> Iterator[None]:
        """Make ``context`` visible to ``modality``'s adapters inside the block (None: that modality is
        off); the previous context of that modality is restored on exit, whatever happens."""
        had, previous = modality in self._contexts, self._contexts.get(modality)
        if context is None:
            self._contexts.pop(modality, None)
        else:
            self._contexts[modality] = context
        try:
            yield
        finally:
            if had:
                self._contexts[modality] = previous
            else:
                self._contexts.pop(modality, None)

    @contextlib.contextmanager
    def off(self) -> Iterator[None]:
        """Inside the block no adapter runs, whatever contexts are active (the whole model is the base)."""
        previous = self.disabled
        self.disabled = True
        try:
            yield
        finally:
            self.disabled = previous
