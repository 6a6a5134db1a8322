"""Row stores: a tensor-valued column of a prepared set, fetched by row index without holding the
whole column in memory.

``store[idx]`` answers like indexing a stacked ``(n, *row_shape)`` tensor would: a list, tuple,
range, slice, 1-D integer or bool tensor / array gives ``(len(idx), *row_shape)``, an int gives one row.
What is kept per row is metadata only (a path, a 32-byte key); the rows themselves are decoded or
read on demand, and at most ``cache_bytes`` of them are kept in a least-recently-used memory cache,
so memory does not grow with the number of rows. Every store returns the same values for a row
whatever the batch it is fetched in (decoding and reading are per row), so a lazy set and the
in-memory tensor it replaces give identical batches.

* :class:`TensorRows`: an in-memory tensor (small sets, tests, derived values).
* :class:`ImageRows`: image files decoded by the prompt format's own ``pixels`` on demand.
* :class:`PackedImageRows`: the same for the families whose processor packs the image patches of a batch
  into one sequence (Qwen-VL, InternVL): each row is its image's own patch / crop block, and a batch is
  the blocks concatenated in batch order (``torch.cat``), as that processor packs the same images.
* :class:`CachedRows`: frozen-encoder outputs read from an
  :class:`~safe.data.embedding_cache.AudioEmbeddingCache` on disk.
* ``store.take(index)`` / ``store.map(fn)``: lazy re-indexed and transformed views.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

#: Default budget of decoded rows kept in memory per store (least recently used dropped first).
DEFAULT_CACHE_BYTES = 64 << 20


def _positions(index: Any, n: int) -> tuple[list[int], bool]:
    """``index`` -> (row positions, whether a single row was asked for); negative ints count from the end."""
    if isinstance(index, (int, np.integer)) and not isinstance(index, bool):
        i = int(index)
        if not -n <= i < n:
            raise IndexError(f"row {i} is out of range for {n} rows")
        return [i % n], True
    if isinstance(index, slice):
        return list(range(n))[index], False
    if isinstance(index, torch.Tensor):
        index = index.detach().cpu().numpy()
    arr = np.asarray(list(index) if isinstance(index, range) else index)
    if arr.dtype == bool:
        if arr.shape != (n,):
            raise IndexError(f"a boolean row mask must have shape ({n},), got {arr.shape}")
        return np.flatnonzero(arr).tolist(), False
    if arr.size == 0:
        return [], False
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise IndexError(f"rows must be an int, a slice or a 1-D sequence of ints, got {arr.dtype} shape {arr.shape}")
    if arr.min() < -n or arr.max() >= n:
        raise IndexError(f"row index out of range for {n} rows (min {arr.min()}, max {arr.max()})")
    return (arr % n).tolist(), False


class RowStore:
    """A column of ``len(store)`` equally shaped tensor rows, fetched by index (module docstring).

    Guarantees: ``store[idx]`` equals ``torch.stack([store[i] for i in idx])`` (``torch.cat`` for a
    :attr:`packed` store, whose rows are blocks of varying length); a store never keeps more than
    ``cache_bytes`` of decoded rows (plus the batch being returned)."""

    packed = False
    """True where rows are variable-length blocks joined by ``torch.cat`` (:class:`PackedImageRows`)."""

    def __init__(self, n: int, cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        if isinstance(cache_bytes, bool) or not isinstance(cache_bytes, int) or cache_bytes < 0:
            raise ValueError(f"cache_bytes must be an integer >= 0, got {cache_bytes!r}")
        self._n, self.cache_bytes = int(n), cache_bytes
        self._lru: OrderedDict[int, torch.Tensor] = OrderedDict()
        self._held = 0
        self.loads = 0  # rows decoded / read so far (cache misses), for tests and benchmarks

    def __len__(self) -> int:
        return self._n

    def _load(self, positions: list[int]) -> list[torch.Tensor]:
        """The rows at ``positions`` (decoded / read now), one tensor each."""
        raise NotImplementedError

    def __getitem__(self, index: Any) -> torch.Tensor:
        pos, single = _positions(index, self._n)
        found = {p: self._lru[p] for p in pos if p in self._lru}
        for p in found:
            self._lru.move_to_end(p)
        todo = list(dict.fromkeys(p for p in pos if p not in found))
        if todo:
            self.loads += len(todo)
            for p, row in zip(todo, self._load(todo)):
                found[p] = row
                self._remember(p, row)
        if single:
            return found[pos[0]]
        if not pos:
            return torch.empty((0, *(self.row_shape[1:] if self.packed else self.row_shape)), dtype=self.dtype)
        return (torch.cat if self.packed else torch.stack)([found[p] for p in pos])

    def _remember(self, p: int, row: torch.Tensor) -> None:
        size = row.numel() * row.element_size()
        if size > self.cache_bytes:
            return
        self._lru[p] = row
        self._held += size
        while self._held > self.cache_bytes:
            _, old = self._lru.popitem(last=False)
            self._held -= old.numel() * old.element_size()

    @property
    def held_bytes(self) -> int:
        """Bytes of decoded rows kept in memory now (at most ``cache_bytes``)."""
        return self._held

    @property
    def row_shape(self) -> tuple[int, ...]:
        return tuple(self[0].shape) if self._n else ()

    @property
    def dtype(self) -> torch.dtype:
        return self[0].dtype if self._n else torch.float32

    @property
    def shape(self) -> tuple[int, ...]:
        """``(len(store), *row_shape)``, like the stacked tensor's (reads row 0)."""
        return (self._n, *self.row_shape)

    def take(self, index: Any) -> RowStore:
        """A lazy store whose row ``j`` is this store's row ``index[j]``."""
        return _View(self, _positions(index, self._n)[0])

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> RowStore:
        """A lazy store returning ``fn(batch)`` for each fetched batch (``fn`` must act row by row)."""
        return _Mapped(self, fn)

    def tensor(self) -> torch.Tensor:
        """Every row stacked into one tensor (small sets only: this is what the store avoids)."""
        return self[list(range(self._n))]


class TensorRows(RowStore):
    """Rows of an in-memory tensor (indexing it directly; no copy is cached)."""

    def __init__(self, data: torch.Tensor) -> None:
        if not isinstance(data, torch.Tensor) or data.dim() < 1:
            raise ValueError(f"data must be a tensor with a row dimension, got {type(data).__name__}")
        super().__init__(len(data), 0)
        self.data = data

    def __getitem__(self, index: Any) -> torch.Tensor:
        pos, single = _positions(index, self._n)
        return self.data[pos[0]] if single else self.data[pos]

    def tensor(self) -> torch.Tensor:
        return self.data


class _View(RowStore):
    def __init__(self, base: RowStore, positions: list[int]) -> None:
        super().__init__(len(positions), 0)
        self.base, self.positions, self.packed = base, positions, base.packed

    def __getitem__(self, index: Any) -> torch.Tensor:
        pos, single = _positions(index, self._n)
        return self.base[self.positions[pos[0]]] if single else self.base[[self.positions[p] for p in pos]]


class _Mapped(RowStore):
    def __init__(self, base: RowStore, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__(len(base), 0)
        self.base, self.fn, self.packed = base, fn, base.packed

    def __getitem__(self, index: Any) -> torch.Tensor:
        pos, single = _positions(index, self._n)
        out = self.fn(self.base[pos])
        return out[0] if single and not self.packed else out  # a packed single row is its whole block


class TupleRows(RowStore):
    """Several stores of one length read together: ``store[idx]`` is the tuple ``(s[idx] for s in stores)`` (the
    features of an encoder ensemble, one member's outputs per store, as :class:`~safe.models.encoders.EncoderEnsemble`
    takes them). Guarantees: every member store has the same length; ``take`` keeps the members aligned."""

    def __init__(self, stores: Sequence[RowStore]) -> None:
        stores = list(stores)
        if len(stores) < 2 or len({len(s) for s in stores}) != 1:
            raise ValueError(f"TupleRows needs two or more stores of one length, got lengths {[len(s) for s in stores]}")
        super().__init__(len(stores[0]), 0)
        self.stores = stores

    def __getitem__(self, index: Any) -> tuple:  # type: ignore[override]
        return tuple(s[index] for s in self.stores)

    def take(self, index: Any) -> RowStore:
        return TupleRows([s.take(index) for s in self.stores])

    @property
    def row_shape(self) -> tuple[int, ...]:
        raise TypeError("TupleRows has one row shape per member store: read .stores[i].row_shape")


class ImageRows(RowStore):
    """Pixel values of image files, decoded on demand by ``pixels(paths) -> (k, ...) tensor`` (the
    prompt format's own image processing, row by row). Keeps one path per row, or reads them from a lazy
    sequence (a data spec's record column) without copying it."""

    def __init__(self, paths: Sequence[Any], pixels: Callable[[list], torch.Tensor],
                 cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        super().__init__(len(paths), cache_bytes)
        lazy = isinstance(paths, Sequence) and not isinstance(paths, (list, tuple))
        self.paths, self._pixels = paths if lazy else list(paths), pixels

    def _load(self, positions: list[int]) -> list[torch.Tensor]:
        return list(self._pixels([self.paths[p] for p in positions]).unbind(0))


class PackedImageRows(ImageRows):
    """Pixel values of image files for the families whose processor packs a batch's image patches into one
    sequence (Qwen2/2.5/3-VL: ``(patches, patch_dim)`` per image; InternVL: ``(crops, 3, H, W)``).
    ``pixels(paths) -> list`` gives each image's own block (its row count varies with the image); a
    batch ``store[idx]`` is those blocks concatenated in ``idx`` order, which is what the processor
    returns for the same images together. Each row's ``image_grid_thw`` row / crop count lives with its
    prompt (the format's per-example extras), so the two stay aligned under any re-indexing."""

    packed = True

    def _load(self, positions: list[int]) -> list[torch.Tensor]:
        return list(self._pixels([self.paths[p] for p in positions]))


class PackedKeys(Sequence):
    """Embedding-cache keys (64 hex digits) packed as 32 raw bytes each: ``keys[i]`` is key ``i`` as hex,
    like the list of strings it replaces (113 bytes a key as a Python ``str``, 32 here)."""

    def __init__(self, keys: Sequence[str] | np.ndarray = ()) -> None:
        self.array = keys if isinstance(keys, np.ndarray) else np.array([bytes.fromhex(k) for k in keys], dtype="S32")

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        # numpy strips trailing NUL bytes from "S" items: pad back to 32 before hex.
        return self.array[i].ljust(32, b"\0").hex()


class CachedRows(RowStore):
    """Frozen-encoder outputs read from an on-disk embedding cache, one entry per row.

    ``keys``: the cache key of each row's clip (a list of hex strings or :class:`PackedKeys`); kept as 32
    raw bytes per row. A key missing from the cache raises ``KeyError`` naming it (fill the cache first:
    :func:`safe.data.prepared.fill_cache`)."""

    def __init__(self, cache, keys: Sequence[str], cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        super().__init__(len(keys), cache_bytes)
        self.cache = cache
        self.keys = (keys if isinstance(keys, PackedKeys) else PackedKeys(keys)).array

    def key(self, p: int) -> str:
        # numpy strips trailing NUL bytes from "S" items: pad back to 32 before hex.
        return self.keys[p].ljust(32, b"\0").hex()

    def _load(self, positions: list[int]) -> list[torch.Tensor]:
        rows = []
        for p in positions:
            t = self.cache.load(self.key(p))
            if t is None:
                raise KeyError(f"row {p}: embedding {self.key(p)} is not in the cache at {self.cache.directory}")
            rows.append(t)
        return rows


class TokenRows(Sequence):
    """Token-id rows (prompts or answers) packed into flat int32 arrays: ``rows[i]`` is row ``i`` as a
    list of ints, like the list of lists it replaces. Runs of one id (a prompt's hundreds of image
    placeholder tokens) are stored once with their length, so a row costs about 8 bytes per text
    token plus 8 per row, not a Python list of 8-byte pointers per token."""

    def __init__(self, rows: Sequence[Sequence[int]] = ()) -> None:
        self._vals: list[np.ndarray] = []
        self._counts: list[np.ndarray] = []
        self._lengths: list[np.ndarray] = []
        self._offsets: list[np.ndarray] | None = None
        self._starts = np.zeros(1, np.int64)
        self.extend(rows)

    def extend(self, rows: Sequence[Sequence[int]]) -> None:
        """Append ``rows`` (a chunk at a time keeps the transient lists small)."""
        vals, counts, lengths = [], [], []
        for row in rows:
            a = np.asarray(row, dtype=np.int64)
            if a.size:
                starts = np.flatnonzero(np.r_[True, a[1:] != a[:-1]])
                vals.append(a[starts])
                counts.append(np.diff(np.r_[starts, a.size]))
            lengths.append(len(starts) if a.size else 0)
        if not lengths:
            return
        if vals and (np.concatenate(vals).min() < np.iinfo(np.int32).min or np.concatenate(vals).max() > np.iinfo(np.int32).max):
            raise ValueError("token ids must fit in int32")
        self._vals.append(np.concatenate(vals).astype(np.int32) if vals else np.zeros(0, np.int32))
        self._counts.append(np.concatenate(counts).astype(np.int32) if counts else np.zeros(0, np.int32))
        self._lengths.append(np.asarray(lengths, dtype=np.int64))
        self._offsets = None  # indexed on the next read

    def _pack(self) -> None:
        # Chunks stay separate arrays (concatenating them would hold every id twice for a moment); a row is
        # found by the chunk's first row (``_starts``) and its run offsets within the chunk.
        if self._offsets is None:
            self._offsets = [np.r_[0, np.cumsum(n)] for n in self._lengths]
            self._starts = np.cumsum([0] + [len(n) for n in self._lengths])

    def __len__(self) -> int:
        return sum(int(x.size) for x in self._lengths)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"row {i} is out of range for {n} rows")
        i %= n
        self._pack()
        c = int(np.searchsorted(self._starts, i, side="right")) - 1
        offsets, j = self._offsets[c], i - int(self._starts[c])
        a, b = offsets[j], offsets[j + 1]
        return np.repeat(self._vals[c][a:b], self._counts[c][a:b]).tolist()

    def take(self, index: Sequence[int]) -> TokenRows:
        """The rows ``index`` as a new packed store."""
        index, out = list(index), TokenRows()
        for s in range(0, len(index), 4096):
            out.extend([self[i] for i in index[s:s + 4096]])
        return out

    @property
    def nbytes(self) -> int:
        """Bytes held by the packed arrays."""
        self._pack()
        return sum(int(x.nbytes) for x in (*self._vals, *self._counts, *self._lengths, *self._offsets, self._starts))


__all__ = ["CachedRows", "DEFAULT_CACHE_BYTES", "ImageRows", "PackedImageRows", "PackedKeys", "RowStore", "TensorRows",
           "TokenRows"]
