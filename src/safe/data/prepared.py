"""Model inputs prepared once: tokenised prompts/answers, and row stores for pixels and frozen-encoder
outputs, so a training step or an evaluation pass runs the audio encoder never (each clip is encoded
once, keyed by content hash and encoder fingerprint, into the on-disk embedding cache). Images are
decoded and embeddings read from disk when a batch asks for them (:mod:`safe.data.rows`), so memory
holds per-row metadata only (paths, cache keys, token ids) and does not grow with the media. Used by
Stage A, the policy stage and evaluation."""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from safe.data.record_table import RecordView
from safe.data.records import Example
from safe.data.rows import (
    DEFAULT_CACHE_BYTES,
    CachedRows,
    ImageRows,
    PackedImageRows,
    PackedKeys,
    RowStore,
    TensorRows,
    TokenRows,
)
from safe.processing.prompts import Encoded

#: Rows tokenised / hashed per call (bounds the transient memory of those steps).
CHUNK = 4096


@dataclass
class PreparedSet:
    """Examples with everything a step needs, index-aligned.

    ``pixels``: a :class:`~safe.data.rows.RowStore` (or tensor) of ``(n, 3, H, W)`` pixel values (for
    Qwen-VL / InternVL a packed store: ``pixels[idx]`` concatenates the rows' patch blocks, and the
    rows' ``image_grid_thw`` comes with the prompt batch);
    ``audio``: a row store (or tensor) of ``(n, T, D)`` frozen-encoder outputs of each example's
    clip; both answer ``store[idx]`` with the stacked rows, like the tensors they replace.
    ``needs_audio``: (n,) bool tensor. ``examples``: a list, or the lazy
    :class:`~safe.data.record_table.RecordView` of a data spec's split (records stay on disk)."""

    examples: Sequence[Example]
    enc: Encoded
    pixels: RowStore | torch.Tensor
    audio: RowStore | torch.Tensor
    needs_audio: torch.Tensor

    def __len__(self) -> int:
        return len(self.examples)

    def prompt_inputs(self, fmt, index: Sequence[int], device=None) -> dict[str, torch.Tensor]:
        """The VL inputs of rows ``index`` for ``generate``: ``fmt``'s prompt batch plus ``pixel_values``,
        on ``device`` (left where they are when None)."""
        index = list(index)
        batch = {**fmt.prompt_batch(self.enc, index), "pixel_values": self.pixels[index]}
        return batch if device is None else {k: v.to(device) for k, v in batch.items()}

    def subset(self, index: Sequence[int]) -> PreparedSet:
        """Rows ``index`` (lazy: the row stores are re-indexed, nothing is decoded)."""
        index = list(index)
        return PreparedSet(_take(self.examples, index), _take_encoded(self.enc, index),
                           _take(self.pixels, index), _take(self.audio, index), self.needs_audio[index])


def _take(rows, index: list[int]):
    if isinstance(rows, (RowStore, TokenRows, RecordView)):
        return rows.take(index)
    return rows[index] if isinstance(rows, torch.Tensor) else [rows[i] for i in index]


def _take_encoded(enc: Encoded, index: list[int]) -> Encoded:
    """Rows ``index`` of ``enc``, keeping a format's per-example extras (``VisionEncoded.extras``) too."""
    extras = getattr(enc, "extras", None)
    if extras:
        return type(enc)(_take(enc.prompts, index), _take(enc.answers, index), [extras[i] for i in index])
    return Encoded(_take(enc.prompts, index), _take(enc.answers, index))


def encoder_fingerprint(audio_encoder, frontend) -> str:
    """Identifies the frozen encoder and its feature settings (the embedding cache's namespace)."""
    from safe.models.integrity import state_hash

    feats = hashlib.sha256(json.dumps(frontend.config(), sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{state_hash(audio_encoder)[:24]}-{feats}"


def default_workers() -> int:
    """Threads decoding WAVs and hashing files (I/O and C code that release the GIL)."""
    return max(1, min(8, os.cpu_count() or 1))


def _encode_batches(model, paths: Sequence[str], positions: list[int], frontend, batch_size: int,
                    workers: int, progress: bool, read=None, what: str = "audio"):
    """Yield ``(positions_of_batch, (k, T, D) float32 CPU)`` in order; the next batch's inputs are decoded
    by the worker pool while the encoder runs on the current one. ``read``: one path -> the front end's input
    (default: the WAV at the front end's rate); ``what``: the progress bar's word."""
    from tqdm.auto import tqdm

    from safe.processing.audio import read_wav

    def read_clip(path: str):
        return read_wav(path, target_rate=frontend.sampling_rate)[0]

    read = read or read_clip
    starts = list(range(0, len(positions), batch_size))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending = [pool.submit(read, paths[i]) for i in positions[:batch_size]] if starts else []
        for s in tqdm(starts, desc=f"encoding {what}", disable=not progress, leave=False):
            part = positions[s:s + batch_size]
            wavs = [f.result() for f in pending]
            pending = [pool.submit(read, paths[i]) for i in positions[s + batch_size:s + 2 * batch_size]]
            with torch.no_grad():
                yield part, model.audio_encoder.encode(frontend(wavs)).float().cpu()


def encode_clips(model, paths: Sequence[str], frontend, cache=None, batch_size: int = 256,
                 progress: bool = False, workers: int | None = None, read=None, what: str = "audio") -> torch.Tensor:
    """Frozen-encoder outputs (n, T, D) of WAV files (or of other inputs ``read`` decodes), in memory (through
    the cache when given)."""
    if cache is not None:
        keys = fill_cache(model, paths, frontend, cache, batch_size, progress=progress, workers=workers,
                          read=read, what=what)
        return CachedRows(cache, keys, 0).tensor()
    chunks = [emb for _, emb in _encode_batches(model, list(paths), list(range(len(paths))), frontend,
                                                batch_size, workers or default_workers(), progress, read, what)]
    return torch.cat(chunks)


def fill_cache(model, paths: Sequence[str], frontend, cache, batch_size: int = 256, *,
               progress: bool = False, workers: int | None = None, read=None, what: str = "audio") -> PackedKeys:
    """Encode every clip of ``paths`` not yet in ``cache`` and store it there; returns each path's key
    (a :class:`~safe.data.rows.PackedKeys`: hex strings, like a list, held as 32 bytes each).

    Clips are hashed and decoded by a pool of ``workers`` threads and encoded ``batch_size`` at a time
    (the missing ones, in order of first appearance); each batch is written to disk before the next
    starts, so a run killed midway loses at most one batch and a rerun encodes only what is missing.
    Counts one cache hit or miss per distinct clip. Memory holds one batch, not the set. ``read`` / ``what``:
    see :func:`_encode_batches` (another modality's maps instead of clips)."""
    from tqdm.auto import tqdm

    workers = workers or default_workers()
    paths = paths if isinstance(paths, Sequence) else list(paths)  # a record column stays on disk
    packed: list[np.ndarray] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:  # a chunk at a time: one future per path, not per set
        for s in tqdm(range(0, len(paths), CHUNK), desc="hashing clips", disable=not progress, leave=False):
            packed.append(np.array([bytes.fromhex(k) for k in pool.map(cache.key_for_file, paths[s:s + CHUNK])],
                                   dtype="S32"))
    keys = PackedKeys(np.concatenate(packed) if packed else np.zeros(0, dtype="S32"))
    del packed
    # Distinct clips in order of first appearance, and which of them the cache lacks, as arrays: no Python
    # object per row outlives this call (a set of keys and a list of positions would, ~150 bytes a row).
    first = np.sort(np.unique(keys.array, return_index=True)[1])
    present = np.fromiter((keys[p] in cache for p in first), dtype=bool, count=len(first))
    cache.hits += int(present.sum())
    cache.misses += int((~present).sum())
    missing = first[~present]
    for part_pos, emb in _encode_batches(model, paths, missing, frontend, batch_size, workers, progress, read, what):
        for j, pos in enumerate(part_pos):
            cache.put(keys[pos], emb[j], remember=False)
    return keys


#: A store whose every row fits in this many bytes keeps each row once decoded (see :func:`prepare`).
KEEP_ALL_BYTES = 512 << 20


def _keep_small(store: RowStore, cache_bytes: int, keep_all_bytes: int) -> RowStore:
    """Raise ``store``'s budget to its whole size when that is at most ``keep_all_bytes``."""
    if len(store):
        row = store[0]
        total = len(store) * row.numel() * row.element_size()
        if total <= keep_all_bytes:
            store.cache_bytes = max(cache_bytes, total)
    return store


def prepare(examples: Sequence[Example], fmt, model, frontend, cache=None, progress: bool = False, *,
            cache_bytes: int = DEFAULT_CACHE_BYTES, keep_all_bytes: int = KEEP_ALL_BYTES,
            workers: int | None = None) -> PreparedSet:
    """Tokenise ``examples`` with the model's own formats, encode their clips into ``cache`` (once) and
    return row stores over the images and the cached embeddings. Without a ``cache`` the embeddings
    are held in memory (small sets). ``cache_bytes``: decoded rows each store keeps in memory.
    ``keep_all_bytes``: a store whose rows all fit in this many bytes (the built-in benchmark's, ~330 MB
    of images for 12,000 training rows) keeps every row once it is decoded, so a long training run
    decodes each image once instead of once per batch (measured: 26 ms a 64-row batch, a quarter of a
    demo Stage A step); above it the store streams within ``cache_bytes``. 0 always streams."""
    if not isinstance(examples, RecordView):  # a record view stays on disk; columns are read from it
        examples = list(examples)
    missing = [e.id for e in examples if e.image is None or e.audio is None]
    if missing:
        raise ValueError(f"{len(missing)} examples lack an image or audio clip (first: {missing[0]}); "
                         "Stage A needs both")
    audio = encoder_rows(examples, model, frontend, cache, progress, cache_bytes=cache_bytes,
                         keep_all_bytes=keep_all_bytes, workers=workers)
    return PreparedSet(examples, _encode(fmt, examples), image_rows(examples, fmt, cache_bytes, keep_all_bytes),
                       audio, torch.tensor(list(_column(examples, "needs_audio")), dtype=torch.bool))


def image_rows(examples: Sequence[Example], fmt, cache_bytes: int = DEFAULT_CACHE_BYTES,
               keep_all_bytes: int = KEEP_ALL_BYTES) -> RowStore:
    """The row store of ``examples``' images in ``fmt``'s pixels (see :func:`prepare`)."""
    if getattr(fmt, "packs_pixels", False):  # Qwen-VL / InternVL: one patch block per row, a batch concatenates them
        store: RowStore = PackedImageRows(_column(examples, "image"), fmt.pixel_blocks, cache_bytes)
    else:
        store = ImageRows(_column(examples, "image"), fmt.pixels, cache_bytes)
    return _keep_small(store, cache_bytes, keep_all_bytes)


def encoder_rows(examples: Sequence[Example] | None, model, frontend, cache=None, progress: bool = False, *,
                 cache_bytes: int = DEFAULT_CACHE_BYTES, keep_all_bytes: int = KEEP_ALL_BYTES,
                 workers: int | None = None, paths: Sequence[str] | None = None, read=None,
                 what: str = "audio") -> RowStore:
    """The frozen encoder outputs of ``examples``' clips as a row store (``model.audio_encoder`` through
    ``frontend``; through ``cache`` when given, else in memory): :func:`prepare`'s ``audio``, or another
    encoder's for the same rows (the encoder comparison of ``safe ablate``). ``paths`` instead of the clips,
    with ``read`` decoding each (another modality's maps, :mod:`safe.data.modality_rows`)."""
    paths = _column(examples, "audio") if paths is None else paths
    if cache is None:
        return TensorRows(encode_clips(model, paths, frontend, progress=progress, workers=workers, read=read,
                                       what=what))
    keys = fill_cache(model, paths, frontend, cache, progress=progress, workers=workers, read=read, what=what)
    return _keep_small(CachedRows(cache, keys, cache_bytes), cache_bytes, keep_all_bytes)


def _column(examples: Sequence[Example], name: str) -> Sequence:
    """Field ``name`` of every example: a lazy column of a record view, else a list."""
    if isinstance(examples, RecordView):
        return examples.column(name)
    return [getattr(e, name) for e in examples]


def _encode(fmt, examples: Sequence[Example]) -> Encoded:
    """``fmt.encode`` a chunk at a time into packed :class:`~safe.data.rows.TokenRows` (the same ids):
    a fast tokenizer's batch output keeps per-row offsets and tokens besides the ids, several KB a
    row, and Python lists of ids cost 8 bytes a token (a LLaVA prompt holds 576 image tokens)."""
    prompts, answers, extras, kind = TokenRows(), TokenRows(), [], Encoded
    for s in range(0, len(examples), CHUNK):
        enc = fmt.encode(list(examples[s:s + CHUNK]))  # a chunk of a record view: decoded here
        prompts.extend(enc.prompts)
        answers.extend(enc.answers)
        if getattr(enc, "extras", None):  # a processor format's per-example inputs (image_sizes, masks ...)
            extras.extend(enc.extras)
            kind = type(enc)
    return kind(prompts, answers, extras) if extras else Encoded(prompts, answers)


def read_waveforms(examples: Sequence[Example], sampling_rate: int) -> list:
    """The mono waveform of each example's clip, resampled to ``sampling_rate``."""
    from safe.processing.audio import read_wav

    return [read_wav(e.audio, target_rate=sampling_rate)[0] for e in examples]
