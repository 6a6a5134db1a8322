"""Where a stage's examples come from: the :class:`DataSource` interface and the reader registry.

Stages (Stage A, the policy stage, evaluation, ablations) read examples only through a
:class:`DataSource`, so the library never needs to know which benchmark or dataset it runs on.
:func:`open_source` builds one from a reader name (the ``reader:`` key of a data spec) and a root
folder. Reader entries are ``"module:attribute"`` strings resolved on first use, so naming a reader
here imports nothing: the built-in benchmark (``safe.bench``) stays out of the library's imports.
"""
from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from safe.data.records import Example


def cache_dir() -> Path:
    """``$SAFE_CACHE`` (default ``.cache/safe``): where the built-in benchmark and base models are made and found."""
    return Path(os.environ.get("SAFE_CACHE", ".cache/safe"))


@runtime_checkable
class DataSource(Protocol):
    """A named collection of splits of :class:`~safe.data.records.Example` records.

    Guarantees an implementation must keep: ``split(name)`` returns the same records in the same
    order every time for unchanged data, as a list or a read-only sequence that slices into one
    (stages slice it, e.g. ``split("train")[:n]``; a data spec gives a lazy
    :class:`~safe.data.record_table.RecordView`), with
    absolute media paths; it raises ``ValueError`` for a split the source does not have, and
    ``has_split(name)`` says beforehand whether it does. ``fingerprint()`` changes whenever any
    record or media file of any split may have changed (checkpoints record it to know what they
    were trained on). ``cache_dir`` is the folder where derived data of this source (the audio
    embedding cache) may be written.
    """

    name: str

    @property
    def cache_dir(self) -> Path: ...

    def split(self, name: str) -> Sequence[Example]: ...

    def has_split(self, name: str) -> bool: ...

    def fingerprint(self) -> str: ...


class UnknownReaderError(ValueError):
    """The reader name given to :func:`open_source` is not registered."""


#: Reader name -> ``"module:attribute"`` of a factory ``(root, **options) -> DataSource``.
READERS: dict[str, str | Callable[..., DataSource]] = {
    "builtin": "safe.bench.files:BuiltinSource",
}


def register_reader(name: str, factory: str | Callable[..., DataSource]) -> None:
    """Add (or replace) reader ``name``: a factory ``(root, **options) -> DataSource`` or its
    ``"module:attribute"`` path (imported on first use)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"reader name must be a non-empty string, got {name!r}")
    if not (callable(factory) or (isinstance(factory, str) and ":" in factory)):
        raise ValueError(f"reader {name!r}: factory must be callable or 'module:attribute', got {factory!r}")
    READERS[name] = factory


def _resolve(reader: str, target: str | Callable[..., DataSource]) -> Callable[..., DataSource]:
    if callable(target):
        return target
    module, _, attr = target.partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as err:
        raise UnknownReaderError(f"reader {reader!r} points at {target!r}, which cannot be imported: {err}") from err
    return obj


def open_source(reader: str, root: str | Path, **options: Any) -> DataSource:
    """The :class:`DataSource` of reader ``reader`` (e.g. ``"builtin"``) over folder ``root``.

    Raises :class:`UnknownReaderError` (a ``ValueError``) naming the registered readers for an
    unknown name; ``options`` go to the reader's factory unchanged."""
    if reader not in READERS:
        raise UnknownReaderError(f"unknown data reader {reader!r}; registered readers: {sorted(READERS)}")
    return _resolve(reader, READERS[reader])(root, **options)


__all__ = ["DataSource", "READERS", "UnknownReaderError", "open_source", "register_reader"]
