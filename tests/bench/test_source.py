"""The built-in benchmark as a DataSource, through the library's reader registry."""
from __future__ import annotations

import json

import pytest

from safe.bench.files import BenchmarkMissingError, BuiltinSource, benchmark_fingerprint, load_split
from safe.data.source import DataSource, open_source


def test_builtin_reader_opens_the_benchmark(tiny_builtin):
    bench, _ = tiny_builtin
    src = open_source("builtin", bench)
    assert isinstance(src, BuiltinSource) and isinstance(src, DataSource) and src.name == "builtin"
    assert src.split("test") == load_split(bench, "test")
    assert src.fingerprint() == benchmark_fingerprint(bench)
    assert src.cache_dir == bench / ".embedding_cache"
    splits = json.loads((bench / "benchmark.json").read_text())["splits"]
    assert all(src.has_split(s) for s in splits) and not src.has_split("nope")
    assert src.has_split("ood_test")  # the tiny config holds sounds out
    with pytest.raises(ValueError, match="split 'nope' is not in the benchmark"):
        src.split("nope")


def test_builtin_caption_rows_follow_the_library_rule(tiny_builtin):
    bench, _ = tiny_builtin
    rows = BuiltinSource(bench).split("test")
    assert {e.family for e in rows if e.is_caption} == {"caption"}
    assert all(e.needs_audio for e in rows if e.is_caption)


def test_missing_benchmark_is_reported_on_first_use_not_on_construction(tmp_path):
    src = BuiltinSource(tmp_path / "nowhere")  # building reads nothing
    with pytest.raises(BenchmarkMissingError, match="benchmark.json is missing"):
        src.split("train")
    with pytest.raises(BenchmarkMissingError):
        src.has_split("train")
