"""The DataSource interface and the reader registry (no benchmark needed: a fake source)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from safe.data import source as S
from safe.data.records import Example


class ListSource:
    """A DataSource over in-memory splits."""

    name = "list"

    def __init__(self, root, splits=None):
        self.root = Path(root)
        self.splits = splits or {}

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    def split(self, name):
        if name not in self.splits:
            raise ValueError(f"no split {name!r}")
        return list(self.splits[name])

    def has_split(self, name):
        return name in self.splits

    def fingerprint(self):
        return str(sorted(self.splits))


def _ex(i, family="colour"):
    return Example(id=str(i), task="t", family=family, question="q", answers=("a",))


def test_a_class_with_the_members_is_a_data_source(tmp_path):
    src = ListSource(tmp_path, {"train": [_ex(0)]})
    assert isinstance(src, S.DataSource)
    assert not isinstance(object(), S.DataSource)


def test_open_source_resolves_registered_factories_and_passes_options(tmp_path, monkeypatch):
    monkeypatch.setitem(S.READERS, "list", ListSource)
    src = S.open_source("list", tmp_path, splits={"val": [_ex(1)]})
    assert src.has_split("val") and not src.has_split("test") and src.split("val")[0].id == "1"
    assert src.cache_dir == tmp_path / "cache"


def test_string_entries_are_imported_only_when_opened(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "fake_reader_mod", type(sys)("fake_reader_mod"))
    sys.modules["fake_reader_mod"].Factory = ListSource
    S.register_reader("lazy", "fake_reader_mod:Factory")
    try:
        assert isinstance(S.open_source("lazy", tmp_path), ListSource)
    finally:
        S.READERS.pop("lazy")
    assert S.READERS["builtin"] == "safe.bench.files:BuiltinSource"  # named, not imported


def test_unknown_or_broken_readers_name_the_choices(tmp_path, monkeypatch):
    with pytest.raises(S.UnknownReaderError, match=r"unknown data reader 'nope'; registered readers: \[.*'builtin'"):
        S.open_source("nope", tmp_path)
    assert issubclass(S.UnknownReaderError, ValueError)
    monkeypatch.setitem(S.READERS, "broken", "no_such_module_xyz:Thing")
    with pytest.raises(S.UnknownReaderError, match="no_such_module_xyz:Thing"):
        S.open_source("broken", tmp_path)
    with pytest.raises(ValueError, match="module:attribute"):
        S.register_reader("bad", "no colon")
    with pytest.raises(ValueError, match="non-empty string"):
        S.register_reader("", ListSource)


def test_caption_rule_is_the_family_name():
    assert _ex(0, "caption").is_caption and not _ex(0, "colour").is_caption
    assert not _ex(0, "Caption").is_caption  # exact name, as every caption reader writes it
