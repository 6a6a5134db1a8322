"""Row stores and streaming preparation: same rows as the stacked tensors, bounded memory, a cache fill
that resumes after a kill and encodes each clip once."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch
from PIL import Image

from safe.data.embedding_cache import AudioEmbeddingCache
from safe.data.prepared import fill_cache
from safe.data.rows import CachedRows, ImageRows, TensorRows
from safe.processing.audio import read_wav, write_wav
from safe.processing.prompts import load_pixels

SIZE = 16


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(6):
        p = root / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return paths


@pytest.mark.parametrize("index", [[4, 0, 4, 2], 3, -1, slice(1, 5, 2), range(2, 5), torch.tensor([5, 1]),
                                   np.array([True, False, True, False, False, True]), []])
def test_image_rows_index_like_the_stacked_tensor(images, index):
    stacked = load_pixels(images)
    rows = ImageRows(images, load_pixels, cache_bytes=2 * stacked[0].numel() * 4)
    want = stacked[torch.as_tensor(index) if isinstance(index, np.ndarray) else index]
    if isinstance(index, range):
        want = stacked[list(index)]
    got = rows[index]
    assert got.shape == want.shape and torch.equal(got, want)
    assert torch.equal(TensorRows(stacked)[index], want)


def test_take_and_map_are_lazy_views(images):
    stacked = load_pixels(images)
    rows = ImageRows(images, load_pixels)
    view = rows.take([5, 3, 3])
    assert len(view) == 3 and rows.loads == 0  # nothing decoded yet
    assert torch.equal(view[[2, 0]], stacked[[3, 5]]) and torch.equal(view[1], stacked[3])
    assert torch.equal(rows.map(torch.zeros_like)[[0, 1]], torch.zeros(2, 3, SIZE, SIZE))
    assert rows.shape == tuple(stacked.shape)
    with pytest.raises(IndexError, match="out of range"):
        rows[[6]]


def test_memory_stays_within_the_budget_over_many_more_rows(images):
    """Streaming: 3,000 rows of 3 KB through a store that may keep 10 of them; the decoded rows it
    holds stay under the budget and Python-side allocations do not grow with the rows read."""
    n, budget_rows = 3000, 10
    row_bytes = 3 * SIZE * SIZE * 4
    rows = ImageRows([images[i % len(images)] for i in range(n)], load_pixels, cache_bytes=budget_rows * row_bytes)
    peaks = []
    tracemalloc.start()
    try:
        for s in range(0, n, 16):
            batch = rows[list(range(s, min(s + 16, n)))]
            assert rows.held_bytes <= budget_rows * row_bytes
            if s in (160, n - n % 16 - 16):
                peaks.append(tracemalloc.get_traced_memory()[0])
    finally:
        tracemalloc.stop()
    assert batch.shape[0] == n % 16 or batch.shape[0] == 16
    assert rows.loads == n  # every row decoded once: none kept beyond the budget, none decoded twice
    assert peaks[1] - peaks[0] < 64 * 1024, peaks  # memory after 2,900 more rows: flat (not 2,900 x 3 KB)


class StubEncoder:
    """Embedding of a clip = its first 4 samples, as (2, 2); counts the clips encoded; fails on call ``fail_at``."""

    def __init__(self, fail_at: int | None = None):
        self.encoded, self.calls, self.fail_at = 0, 0, fail_at

    def encode(self, feats: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.fail_at:
            raise KeyboardInterrupt("killed")
        self.encoded += len(feats)
        return feats[:, :4].reshape(-1, 2, 2)


class Model:
    def __init__(self, encoder):
        self.audio_encoder = encoder


class FrontEnd:
    sampling_rate = 8000

    def __call__(self, wavs):
        return torch.stack([torch.as_tensor(w[:4], dtype=torch.float32) for w in wavs])


@pytest.fixture
def clips(tmp_path):
    paths = []
    for i in range(10):
        p = tmp_path / f"clip{i}.wav"
        write_wav(p, np.full(80, (i + 1) / 20.0, dtype=np.float32), 8000)
        paths.append(str(p))
    return paths


def test_fill_cache_resumes_after_a_kill_and_encodes_each_clip_once(tmp_path, clips):
    cache = AudioEmbeddingCache(tmp_path / "cache", "stub")
    paths = clips + [clips[3]]  # a clip listed twice is encoded once
    with pytest.raises(KeyboardInterrupt):
        fill_cache(Model(StubEncoder(fail_at=2)), paths, FrontEnd(), cache, batch_size=4, workers=2)
    assert len(cache) == 4  # the first batch was written before the kill
    enc = StubEncoder()
    cache = AudioEmbeddingCache(tmp_path / "cache", "stub")
    keys = fill_cache(Model(enc), paths, FrontEnd(), cache, batch_size=4, workers=2)
    assert enc.encoded == 6 and (cache.hits, cache.misses) == (4, 6)
    assert list(keys) == [cache.key_for_file(p) for p in paths] and keys.array.nbytes == 32 * len(paths)  # packed
    rows = CachedRows(cache, keys, cache_bytes=0)
    want = torch.stack([torch.as_tensor(read_wav(p, 8000)[0][:4]).reshape(2, 2) for p in paths])
    assert torch.equal(rows[list(range(11))], want) and len(set(want[:, 0, 0].tolist())) == 10
    assert torch.equal(rows[10], rows[3]) and rows.loads == 13 and rows.held_bytes == 0  # budget 0: no reuse
    assert not cache._memory  # streaming writes and reads keep nothing in the cache's memory


def test_protocol_views_equal_the_tensor_expressions_they_replace(images):
    """evaluation.protocol's blank images, misaligned and irrelevant clips, on row stores (see there)."""
    stacked, rows = load_pixels(images), ImageRows(images, load_pixels)
    every = list(range(len(images)))
    assert torch.equal(rows.map(torch.zeros_like)[every], torch.zeros_like(stacked))
    qa = [0, 2, 5]
    shifted = rows.take(qa).take([(j - 1) % len(qa) for j in range(len(qa))])
    assert torch.equal(shifted[[0, 1, 2]], torch.roll(stacked[qa], 1, dims=0))
    audio_rows, vl_rows = [1, 4], [0, 2, 3, 5]
    relevant = rows.take([audio_rows[j % len(audio_rows)] for j in range(len(vl_rows))])
    old = stacked[torch.tensor(audio_rows)][torch.arange(len(vl_rows)) % len(audio_rows)]
    assert torch.equal(relevant[list(range(len(vl_rows)))], old)


def test_token_rows_are_the_lists_they_pack():
    from safe.data.rows import TokenRows

    rows = [[1, 5, 5, 5, 2], [], [7], [32000] * 576 + [3, 4], [0, 0, 1, 0]]
    packed = TokenRows(rows[:2])
    packed.extend(rows[2:])
    assert len(packed) == 5 and [packed[i] for i in range(5)] == rows and list(packed) == rows
    assert packed[-1] == rows[-1] and packed[1:3] == rows[1:3] and packed.take([3, 0])[1] == rows[0]
    assert packed[3] + packed[0] == rows[3] + rows[0]  # lists: `+` concatenates, as train_batch needs
    with pytest.raises(IndexError):
        packed[5]
    # A LLaVA-style prompt (576 image tokens, ~20 text tokens) costs ~200 bytes, not ~4.8 KB of pointers.
    llava = TokenRows([[1, *range(100, 110), *[32000] * 576, *range(200, 210), 2] for _ in range(1000)])
    assert llava.nbytes / len(llava) < 250


def test_prepare_keeps_a_small_set_whole_and_streams_a_large_one(images):
    """A set whose rows fit in keep_all_bytes decodes each image once over many batches; with
    keep_all_bytes=0 the same set streams within cache_bytes (rows decoded again after eviction)."""
    from safe.data.prepared import _keep_small

    row_bytes = load_pixels(images[:1])[0].numel() * 4
    kept = _keep_small(ImageRows(images, load_pixels, cache_bytes=row_bytes), row_bytes, keep_all_bytes=6 * row_bytes)
    streamed = _keep_small(ImageRows(images, load_pixels, cache_bytes=row_bytes), row_bytes, keep_all_bytes=0)
    for _ in range(3):
        assert torch.equal(kept[list(range(6))], streamed[list(range(6))])
    assert kept.loads == 6 and kept.held_bytes == 6 * row_bytes
    assert streamed.loads > 6 and streamed.held_bytes <= row_bytes


def test_packed_image_rows_concatenate_each_rows_block_in_batch_order():
    from safe.data.rows import PackedImageRows

    blocks = {f"p{i}": torch.full((i + 1, 3), float(i)) for i in range(4)}  # rows of 1..4 patches
    store = PackedImageRows(list(blocks), lambda paths: [blocks[p] for p in paths])
    assert store.packed and torch.equal(store[[2, 0]], torch.cat([blocks["p2"], blocks["p0"]]))
    assert torch.equal(store[1], blocks["p1"]) and store[[]].shape == (0, 3)
    loads = store.loads
    store[[0, 2]]
    assert store.loads == loads  # served from the cache
    view = store.take([3, 1])
    assert view.packed and torch.equal(view[[1, 0]], torch.cat([blocks["p1"], blocks["p3"]]))
    doubled = store.map(lambda x: x * 2)
    assert doubled.packed and torch.equal(doubled[2], blocks["p2"] * 2)
    assert torch.equal(doubled[[3, 1]], torch.cat([blocks["p3"], blocks["p1"]]) * 2)
