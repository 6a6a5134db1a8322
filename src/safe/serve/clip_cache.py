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
    """At most ``max_items`` encoder outputs (CPU tensors), least recently used dropped first.

    Guarantees: :meth:`get` returns exactly the tensor :meth:`put` stored for that key (a detached CPU
    copy); ``hits`` / ``misses`` count every :meth:`get`; ``max_items=0`` disables the cache (every
    lookup is a miss, nothing is stored); safe to use from several threads."""

    def __init__(self, max_items: int) -> None:
        if isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 0:
            raise ValueError(f"max_items must be an integer >= 0, got {max_items!r}")
        self.max_items = max_items
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
        if self.max_items == 0:
            return
        t = tensor.detach().to("cpu").contiguous().clone()
        with self._lock:
            self._items[key] = t
            self._items.move_to_end(key)
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._items


__all__ = ["ClipCache"]
