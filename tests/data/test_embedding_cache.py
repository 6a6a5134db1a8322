"""Tests for safe.data.embedding_cache: compute only for misses, persistence, isolation, content keys."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from safe.data.embedding_cache import AudioEmbeddingCache


class Encoder:
    """Fake encoder: row i of the output is [value, 2 * value] for the clip at position i; counts calls."""

    def __init__(self, values):
        self.values = values
        self.calls: list[list[int]] = []

    def __call__(self, positions):
        self.calls.append(list(positions))
        return torch.tensor([[self.values[p], 2 * self.values[p]] for p in positions], dtype=torch.float32)


def write(path, data: bytes):
    path.write_bytes(data)
    return path


def test_compute_is_called_only_for_misses(tmp_path):
    cache = AudioEmbeddingCache(tmp_path, "enc-a")
    keys = [cache.key_for_array(np.full(4, v, np.float32)) for v in (1.0, 2.0, 3.0)]
    enc = Encoder([1.0, 2.0, 3.0])
    out = cache.get_or_compute(keys[:2], enc)
    assert enc.calls == [[0, 1]]
    assert out.tolist() == [[1.0, 2.0], [2.0, 4.0]]
    assert (cache.hits, cache.misses) == (0, 2)

    # key 3 is new, keys 1 and 2 cached: compute sees position 1 only (the new key's position)
    enc2 = Encoder([None, 3.0, None])
    out = cache.get_or_compute([keys[0], keys[2], keys[1]], enc2)
    assert enc2.calls == [[1]]
    assert out.tolist() == [[1.0, 2.0], [3.0, 6.0], [2.0, 4.0]]
    assert (cache.hits, cache.misses) == (2, 3)

    enc3 = Encoder([])
    cache.get_or_compute(keys, enc3)
    assert enc3.calls == []                   # everything cached: not called at all
    assert len(cache) == 3


def test_repeated_missing_key_is_computed_once(tmp_path):
    cache = AudioEmbeddingCache(tmp_path, "enc-a")
    k1, k2 = cache.key_for_array([0.5]), cache.key_for_array([0.25])
    enc = Encoder([7.0, 8.0, 7.0])
    out = cache.get_or_compute([k1, k2, k1], enc)
    assert enc.calls == [[0, 1]]
    assert out.tolist() == [[7.0, 14.0], [8.0, 16.0], [7.0, 14.0]]


def test_persistence_across_instances(tmp_path):
    a = AudioEmbeddingCache(tmp_path, "enc-a")
    key = a.key_for_array(np.arange(3, dtype=np.float32))
    value = torch.arange(6, dtype=torch.bfloat16).reshape(2, 3)
    a.put(key, value)
    b = AudioEmbeddingCache(tmp_path, "enc-a")
    assert b.key_for_array(np.arange(3, dtype=np.float32)) == key
    got = b.get(key)
    assert got is not None and got.dtype == torch.bfloat16 and torch.equal(got, value)
    assert (b.hits, b.misses) == (1, 0)
    assert len(b) == 1
    enc = Encoder([])
    assert torch.equal(b.get_or_compute([key], enc)[0], value) and enc.calls == []
    # layout: root/<encoder_id[:16]>/<key[:2]>/<key>.safetensors, no temporary files left behind
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert files == [f"enc-a/{key[:2]}/{key}.safetensors"]


def test_stored_copy_is_detached_from_the_callers_tensor(tmp_path):
    cache = AudioEmbeddingCache(tmp_path, "enc-a")
    key = cache.key_for_array([1.0])
    t = torch.ones(2, requires_grad=True)
    cache.put(key, t * 1)
    with torch.no_grad():
        t.mul_(5)
    assert cache.get(key).tolist() == [1.0, 1.0] and not cache.get(key).requires_grad


def test_different_encoder_ids_are_isolated(tmp_path):
    long_a = "0123456789abcdef-whisper-cfg1"
    long_b = "0123456789abcdef-whisper-cfg2"   # same 16-character directory, different id
    a, b, c = (AudioEmbeddingCache(tmp_path, e) for e in (long_a, long_b, "enc-c"))
    clip = np.linspace(-1, 1, 16, dtype=np.float32)
    ka, kb, kc = a.key_for_array(clip), b.key_for_array(clip), c.key_for_array(clip)
    assert len({ka, kb, kc}) == 3
    a.put(ka, torch.tensor([1.0]))
    assert b.get(kb) is None and c.get(kc) is None
    enc = Encoder([5.0])
    assert b.get_or_compute([kb], enc).tolist() == [[5.0, 10.0]] and enc.calls == [[0]]
    assert AudioEmbeddingCache(tmp_path, long_a).get(ka).tolist() == [1.0]


def test_identical_content_at_different_paths_shares_the_key(tmp_path):
    cache = AudioEmbeddingCache(tmp_path / "cache", "enc-a")
    (tmp_path / "x").mkdir()
    p1 = write(tmp_path / "one.wav", b"RIFF....WAVEdata" + bytes(range(256)) * 10)
    p2 = write(tmp_path / "x" / "two.wav", p1.read_bytes())
    p3 = write(tmp_path / "three.wav", p1.read_bytes()[:-1] + b"\x00")   # one byte differs
    assert cache.key_for_file(p1) == cache.key_for_file(p2)
    assert cache.key_for_file(p1) != cache.key_for_file(p3)
    # the key is not the plain content hash: it depends on the encoder id
    assert AudioEmbeddingCache(tmp_path, "enc-b").key_for_file(p1) != cache.key_for_file(p1)
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        cache.key_for_file(tmp_path / "missing.wav")


def test_array_key_is_content_and_shape_as_float32():
    cache = AudioEmbeddingCache("/nonexistent-never-written", "enc-a")
    x = np.array([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]], dtype=np.float32)
    k = cache.key_for_array(x)
    assert cache.key_for_array(torch.from_numpy(x)) == k
    assert cache.key_for_array(x.astype(np.float64)) == k          # float32 rounding of the same clip
    assert cache.key_for_array(np.asfortranarray(x)) == k           # memory layout is not content
    assert cache.key_for_array(x.reshape(3, 2)) != k                # shape is content
    y = x.copy()
    y[1, 2] = np.nextafter(y[1, 2], np.float32(1))
    assert cache.key_for_array(y) != k
    assert len(k) == 64 and int(k, 16) >= 0


def test_memory_limit_keeps_entries_on_disk(tmp_path):
    cache = AudioEmbeddingCache(tmp_path, "enc-a", max_memory_items=1)
    k1, k2 = cache.key_for_array([1.0]), cache.key_for_array([2.0])
    cache.put(k1, torch.tensor([1.0]))
    cache.put(k2, torch.tensor([2.0]))
    assert list(cache._memory) == [k2]
    assert cache.get(k1).tolist() == [1.0] and cache.hits == 1   # reloaded from disk


def test_errors_name_the_argument(tmp_path):
    cache = AudioEmbeddingCache(tmp_path, "enc-a")
    with pytest.raises(ValueError, match="key"):
        cache.get("../../etc/passwd")
    with pytest.raises(ValueError, match="encoder_id"):
        AudioEmbeddingCache(tmp_path, "")
    with pytest.raises(ValueError, match="max_memory_items"):
        AudioEmbeddingCache(tmp_path, "e", max_memory_items=0)
    key = cache.key_for_array([1.0])
    with pytest.raises(ValueError, match="compute returned"):
        cache.get_or_compute([key], lambda pos: torch.zeros(3, 2))
    assert cache.get(key) is None                                # nothing stored from a bad compute
    with pytest.raises(ValueError, match="tensor"):
        cache.put(key, [1.0])


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    cache = AudioEmbeddingCache(tmp_path, "enc-a")
    key = cache.key_for_array([3.0])

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        cache.put(key, torch.tensor([1.0]))
    monkeypatch.undo()
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
    assert AudioEmbeddingCache(tmp_path, "enc-a").get(key) is None
