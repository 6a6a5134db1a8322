"""A size-bounded LRU cache of frozen audio-encoder outputs, keyed by clip content.

The encoder is frozen, so its output for a clip is a function of the decoded samples only
(:func:`safe.serve.media.clip_key`: SHA-256 of the float32 clip at the encoder's rate). A repeated
clip then skips the encoder: the adapters read the cached embedding through
``SAFEModel``'s ``audio_embeddings`` path. The cache lives in memory only (a server restart starts
empty; nothing is written to disk) and is shared by the batches of one server.
"""
from __future__ import annotations

import threading
from collections import OrderedDict

import torch


class ClipCache:
    """At most ``max_items`` encoder outputs (CPU tensors) and at most ``max_bytes`` of them in all,
    least recently used dropped first.

    Guarantees: :meth:`get` returns exactly the tensor :meth:`put` stored for that key (a detached CPU
    copy); ``hits`` / ``misses`` count every :meth:`get`; the tensors held never exceed ``max_items``
    entries nor ``max_bytes`` bytes (``None``: no byte bound; an output larger than ``max_bytes`` is not
    stored); ``max_items=0`` disables the cache (every lookup is a miss, nothing is stored); safe to use
    from several threads."""

    def __init__(self, max_items: int, max_bytes: int | None = None) -> None:
        if isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 0:
            raise ValueError(f"max_items must be an integer >= 0, got {max_items!r}")
        if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0):
            raise ValueError(f"max_bytes must be an integer >= 0 or None, got {max_bytes!r}")
        self.max_items, self.max_bytes = max_items, max_bytes
        self.bytes = 0
        self._items: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> torch.Tensor | None:
        with self._lock:
            t = self._items.get(key)
            if t is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return t

    def put(self, key: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self.max_items == 0 or (self.max_bytes is not None and size > self.max_bytes):
            return
        t = tensor.detach().to("cpu").contiguous().clone()
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.bytes -= old.numel() * old.element_size()
            self._items[key] = t
            self.bytes += size
            while len(self._items) > self.max_items or (self.max_bytes is not None and self.bytes > self.max_bytes):
                _, dropped = self._items.popitem(last=False)
                self.bytes -= dropped.numel() * dropped.element_size()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._items


__all__ = ["ClipCache"]
