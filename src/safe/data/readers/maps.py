"""Maps of other modalities (depth, thermal, ...) named row by row in a dataset's own annotation file.

A reader given ``modalities={"depth": MapColumn("depth_file", folder)}`` reads, for every row, the value of
``depth_file`` (a CSV column of a file with a header row, or a key of the row's JSON object) as the name of a
file inside ``folder``, and records it as ``meta["modalities"]["depth"]`` (an absolute path) of each record the
row gives. The file is what ``safe predict`` / ``SAFEProcessor`` take for a modality (``--depth-file``, the
``depth`` field of a JSON line, ``processor(depth=[...])``): a ``.npy`` array or an image file of an allowed
format (:data:`MAP_SUFFIXES`), read by :func:`safe.processing.modalities.read_map`.

A row whose value is missing, null or empty has no map of that modality (as a request without ``depth``); a
CSV whose header lacks the column is a file-level error. A value that is not a string, names a file outside
``folder`` (absolute, ``..``, a symlink leading out) or of another type, or a file that does not exist, makes
the row bad (skipped and counted, or an error naming the file and row, as any bad row).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safe.data.readers._common import _RowError, inside

MAP_SUFFIXES: tuple[str, ...] = (".npy", ".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff")
"""File types a map may have: a NumPy array, or an image of the formats image inputs allow
(:data:`safe.processing.images.FILE_FORMATS`; 16-bit and float images keep their values)."""


@dataclass(frozen=True)
class MapColumn:
    """Where each row names its map of one modality: ``column`` (CSV column or JSON key), a file name inside
    ``folder``."""

    column: str
    folder: Path


class RowMaps:
    """The map columns of one reader call. Guarantees: :meth:`read` returns only existing files inside their
    folder with an allowed suffix, by modality name, or raises ``_RowError`` saying which modality, column and
    file is wrong (the reader adds the annotation file and row)."""

    def __init__(self, columns: Mapping[str, MapColumn] | None) -> None:
        self.columns = dict(columns or {})

    def __bool__(self) -> bool:
        return bool(self.columns)

    def csv_columns(self) -> tuple[str, ...]:
        """The columns a CSV's header must have."""
        return tuple(c.column for c in self.columns.values())

    def read(self, row: Any) -> dict[str, str]:
        """``{modality: absolute path}`` of the maps ``row`` (a dict) names."""
        out: dict[str, str] = {}
        if not isinstance(row, dict):
            return out
        for name, col in self.columns.items():
            value = row.get(col.column)
            if value is None:
                continue
            if not isinstance(value, str):
                raise _RowError(f"{name} map: key {col.column!r} has type {type(value).__name__}, expected a "
                                f"file name inside {col.folder}")
            value = value.strip()
            if not value:
                continue
            try:
                path = inside(col.folder, value)
            except _RowError as err:
                raise _RowError(f"{name} map (column {col.column!r}): {err}") from None
            if path.suffix.lower() not in MAP_SUFFIXES:
                raise _RowError(f"{name} map {path} (column {col.column!r}): expected a .npy array or an image "
                                f"file ({', '.join(MAP_SUFFIXES[1:])})")
            if not path.is_file():
                raise _RowError(f"{name} map file not found: {path} (column {col.column!r})")
            out[name] = str(path)
        return out


def check_map(path: str | Path, name: str) -> None:
    """Decode one map as inference would (:func:`safe.processing.modalities.read_map`); ``_RowError`` naming
    the modality and file when it cannot be used."""
    from safe.processing.modalities import read_map

    try:
        read_map(Path(path), name)
    except ValueError as err:
        reason = str(err).removeprefix(f"{name}: ")
        raise _RowError(f"unreadable {name} map: {reason}" if str(path) in reason
                        else f"unreadable {name} map {path}: {reason}") from None


__all__ = ["MAP_SUFFIXES", "MapColumn", "RowMaps", "check_map"]
