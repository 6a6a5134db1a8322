"""Cache of frozen audio-encoder outputs, keyed by clip content and encoder: each clip is encoded once.

The audio encoder is frozen in every stage, so its output for a clip is a pure function of (clip
content, encoder weights, feature configuration). :class:`AudioEmbeddingCache` stores it under a
key derived from both:

* the content: SHA-256 of the audio file's raw bytes (:meth:`~AudioEmbeddingCache.key_for_file`),
  or of a waveform as a C-ordered float32 array plus its shape (:meth:`~AudioEmbeddingCache.key_for_array`);
  the same clip at two paths shares an entry, a clip edited in place gets a new one;
* ``encoder_id``: any string that changes when the output would, e.g.
  ``state_hash(encoder) + digest(feature config)`` (:func:`safe.models.integrity.state_hash`).
  Two caches with different encoder ids never share an entry, even in the same ``root``.

Layout: ``root/<encoder_id[:16]>/<key[:2]>/<key>.safetensors``, one file per entry holding one
tensor ``"embedding"``. Every file is written to a temporary name in its final directory and moved
into place with ``os.replace`` (atomic on POSIX and Windows), so a crash or several processes
writing the same entry at once (data-parallel ranks) never leave a truncated file; concurrent
writers of one key write identical bytes, and the last ``os.replace`` wins.

Entries are read from disk lazily, on the first ``get`` of their key, and kept in memory (all of
them, or the ``max_memory_items`` most recently used). :meth:`~AudioEmbeddingCache.load` and
``put(..., remember=False)`` bypass the memory side: what streams over a large set (row stores,
:func:`safe.data.prepared.fill_cache`) never accumulates in memory.
"""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

__all__ = ["AudioEmbeddingCache"]

#: Mixed into every key: bump it if the meaning of a stored entry ever changes.
_KEY_VERSION = b"safe-audio-embedding-cache/v1"
_KEY_RE = re.compile(r"^[0-9a-f]{64}$")
_UNSAFE_DIR_CHARS = re.compile(r"[^A-Za-z0-9._-]")
_TENSOR_NAME = "embedding"
_READ_CHUNK = 1 << 20


class AudioEmbeddingCache:
    """In-memory plus on-disk cache of encoder outputs, one tensor per clip.

    Args:
        root: cache directory (created on the first write).
        encoder_id: non-empty string identifying the encoder and its feature configuration.
        max_memory_items: keep at most this many entries in memory (least recently used dropped;
            they stay on disk). ``None``: no limit.

    Counters: ``hits`` (lookups answered from memory or disk), ``misses`` (lookups that found
    nothing), both counted by :meth:`get` and :meth:`get_or_compute` (once per distinct key of a
    call). ``len(cache)`` is the number of entries in this cache's directory (an encoder id that is a
    hash never shares its 16-character directory with another one).
    Stored tensors are detached, contiguous CPU copies; what comes back is on the CPU.
    """

    def __init__(self, root: str | os.PathLike[str], encoder_id: str,
                 max_memory_items: int | None = None) -> None:
        if not isinstance(encoder_id, str) or not encoder_id:
            raise ValueError(f"encoder_id must be a non-empty string, got {encoder_id!r}")
        if max_memory_items is not None and (isinstance(max_memory_items, bool)
                                             or not isinstance(max_memory_items, int) or max_memory_items < 1):
            raise ValueError(f"max_memory_items must be None or an integer >= 1, got {max_memory_items!r}")
        self.root = Path(root)
        self.encoder_id = encoder_id
        # The directory only groups files; isolation comes from the key, which hashes the whole
        # encoder_id (two ids sharing 16 characters still never share an entry).
        self.directory = self.root / _UNSAFE_DIR_CHARS.sub("_", encoder_id[:16])
        self.max_memory_items = max_memory_items
        self._memory: OrderedDict[str, Tensor] = OrderedDict()
        self._encoder_tag = hashlib.sha256(encoder_id.encode()).digest()
        self.hits = 0
        self.misses = 0

    # ------------------------------------------------------------------ keys
    def _key(self, kind: bytes, content_digest: bytes) -> str:
        h = hashlib.sha256()
        for part in (_KEY_VERSION, self._encoder_tag, kind, content_digest):
            h.update(len(part).to_bytes(8, "little"))  # length-prefixed: no ambiguity between parts
            h.update(part)
        return h.hexdigest()

    def key_for_file(self, path: str | os.PathLike[str]) -> str:
        """Key of an audio file: SHA-256 of its raw bytes, combined with the encoder id."""
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"path {str(p)!r} is not a file")
        h = hashlib.sha256()
        with open(p, "rb") as f:
            while chunk := f.read(_READ_CHUNK):
                h.update(chunk)
        return self._key(b"file", h.digest())

    def key_for_array(self, arr: Any) -> str:
        """Key of a waveform (numpy array, torch tensor or nested list), combined with the encoder id.

        The content is the array as C-ordered float32 plus its shape: a float64 waveform gets the
        key of its float32 rounding (the precision an encoder consumes), and a reshaped array is
        different content.
        """
        if isinstance(arr, Tensor):
            arr = arr.detach().to("cpu", torch.float32).numpy()
        try:
            a = np.ascontiguousarray(np.asarray(arr, dtype=np.float32))
        except (TypeError, ValueError) as e:
            raise ValueError(f"arr must be convertible to a float32 array, got {type(arr).__name__}: {e}") from None
        h = hashlib.sha256()
        h.update(repr(tuple(a.shape)).encode())
        h.update(a.tobytes())
        return self._key(b"float32-array", h.digest())

    @staticmethod
    def _check_key(key: Any) -> str:
        # Keys become file names: only our own 64-hex-digit keys are accepted (no path tricks).
        if not isinstance(key, str) or not _KEY_RE.match(key):
            raise ValueError(f"key must be a 64-character lowercase hex string from key_for_file / "
                             f"key_for_array, got {key!r}")
        return key

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.safetensors"

    # ------------------------------------------------------------------ memory
    def _remember(self, key: str, t: Tensor) -> None:
        self._memory[key] = t
        self._memory.move_to_end(key)
        if self.max_memory_items is not None:
            while len(self._memory) > self.max_memory_items:
                self._memory.popitem(last=False)

    def _lookup(self, key: str) -> Tensor | None:
        t = self._memory.get(key)
        if t is not None:
            self._memory.move_to_end(key)
            return t
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            t = load_file(str(path))[_TENSOR_NAME]
        except Exception as e:  # noqa: BLE001 - re-raised with the path, which safetensors omits
            raise RuntimeError(f"cache file {str(path)!r} is unreadable ({e}); delete it to recompute") from e
        self._remember(key, t)
        return t

    # ------------------------------------------------------------------ API
    def get(self, key: str) -> Tensor | None:
        """The stored tensor for ``key`` (memory first, then disk), or None; counts a hit or a miss."""
        t = self._lookup(self._check_key(key))
        if t is None:
            self.misses += 1
        else:
            self.hits += 1
        return t

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` is stored (does not count as a hit or miss)."""
        return isinstance(key, str) and bool(_KEY_RE.match(key)) and (
            key in self._memory or self._path(key).is_file())

    def load(self, key: str) -> Tensor | None:
        """The stored tensor for ``key`` (memory if there, else read from disk without keeping it), or
        None; counts nothing. For streaming reads whose memory must not grow with the number of keys."""
        key = self._check_key(key)
        t = self._memory.get(key)
        if t is not None:
            return t
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            return load_file(str(path))[_TENSOR_NAME]
        except Exception as e:  # noqa: BLE001 - re-raised with the path, which safetensors omits
            raise RuntimeError(f"cache file {str(path)!r} is unreadable ({e}); delete it to recompute") from e

    def put(self, key: str, tensor: Tensor, remember: bool = True) -> None:
        """Store ``tensor`` (a detached contiguous CPU copy) under ``key`` on disk (atomically) and, when
        ``remember``, in memory."""
        self._check_key(key)
        if not isinstance(tensor, Tensor):
            raise ValueError(f"tensor must be a torch.Tensor, got {type(tensor).__name__}")
        t = tensor.detach().to("cpu").contiguous().clone()
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Temporary file in the destination directory: os.replace is only atomic within a filesystem.
        fd, tmp = tempfile.mkstemp(prefix=f".{key[:8]}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            save_file({_TENSOR_NAME: t}, tmp)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        if remember:
            self._remember(key, t)

    def get_or_compute(self, keys: Sequence[str], compute: Callable[[list[int]], Tensor]) -> Tensor:
        """Stacked tensors for ``keys``, in order, computing only the missing ones.

        ``compute`` is called at most once, with the positions (into ``keys``) of the missing keys,
        ascending; a key listed several times is computed once, at its first position. It must
        return a tensor whose first dimension is the number of positions it was given (row ``j``
        for position ``positions[j]``). Those rows are stored, and the result is
        ``torch.stack([entry(k) for k in keys])`` on the CPU: shape ``(len(keys), *entry_shape)``.
        Not called at all when everything is cached.
        """
        if isinstance(keys, str):
            raise ValueError(f"keys must be a sequence of keys, got the string {keys!r}")
        keys = [self._check_key(k) for k in keys]
        if not keys:
            raise ValueError("keys is empty: nothing to stack")
        found: dict[str, Tensor] = {}
        missing: list[int] = []
        missing_keys: set[str] = set()
        for pos, key in enumerate(keys):
            if key in found or key in missing_keys:
                continue  # a repeat: answered by its first occurrence (counted once)
            t = self.get(key)
            if t is None:
                missing.append(pos)
                missing_keys.add(key)
            else:
                found[key] = t
        if missing:
            out = compute(list(missing))
            if not isinstance(out, Tensor) or out.dim() < 1 or out.shape[0] != len(missing):
                shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                raise ValueError(f"compute returned {shape} for {len(missing)} missing positions; "
                                 f"expected a tensor with first dimension {len(missing)}")
            for j, pos in enumerate(missing):
                row = out[j].detach().to("cpu")
                self.put(keys[pos], row)
                found[keys[pos]] = row
        rows = [found[k] for k in keys]
        shapes = {tuple(r.shape) for r in rows}
        if len(shapes) > 1:
            raise ValueError(f"cached entries for these keys have different shapes {sorted(shapes)}; "
                             f"they cannot be stacked")
        return torch.stack(rows)

    def __len__(self) -> int:
        on_disk = {p.stem for p in self.directory.glob("??/*.safetensors")} if self.directory.is_dir() else set()
        return len(on_disk | set(self._memory))
