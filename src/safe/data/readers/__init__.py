"""Readers for public datasets in their published file formats, from local paths only.

Every reader returns a :class:`ReadResult` of :class:`~safe.data.records.Example` records and never
downloads anything. Bad input is never turned into a silently wrong record: a missing annotation
file, a malformed row (missing key, bad JSON, wrong type) or a missing/unreadable image or WAV
raises :class:`DatasetFormatError`, whose message names the file and the row (index and id). With
``skip_bad=True`` bad rows are skipped instead and reported in ``ReadResult.skipped`` /
``ReadResult.problems``; file-level problems (the annotation file itself missing or unparsable, a
media directory that does not exist) still raise.

Media checks: images must exist and pass ``PIL.Image.open(...).verify()``; audio must exist and be
readable by :func:`safe.processing.audio.read_wav` with at least one sample. ``verify_media=False``
keeps only the existence checks (much faster on full-size datasets). The results for the latest
4096 paths are remembered, so a clip or image shared by adjacent questions is opened once.

Annotation files are parsed incrementally (JSON with ``ijson``, CSV row by row), so reading holds one
row at a time, not the parsed file; VQAv2's annotations are joined to its questions through a
temporary on-disk SQLite table. Within :func:`stream_rows` the records go to the sink as they are
built, so reading a large split runs at about constant memory. A file that turns out malformed after
some good rows (e.g. truncated) still raises :class:`DatasetFormatError`, after those rows went to the
sink.

All paths in the records are absolute (not symlink-resolved).

Every reader whose rows have named fields (all but VGGSound's header-less CSV) takes ``modalities``: per
extra modality (depth, ...), the column or JSON key naming each row's map file
(:class:`~safe.data.readers.maps.MapColumn`), kept as ``meta["modalities"]`` (:mod:`safe.data.readers.maps`).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from safe.data.readers._common import MAX_PROBLEMS, DatasetFormatError, ReadResult, stream_rows
from safe.data.readers.audio import read_audiocaps, read_clotho, read_vggsound
from safe.data.readers.audio_visual import read_avqa, read_music_avqa
from safe.data.readers.maps import MapColumn
from safe.data.readers.vl import read_gqa, read_vqav2

__all__ = [
    "DatasetFormatError",
    "MAX_PROBLEMS",
    "MapColumn",
    "ReadResult",
    "READERS",
    "read_dataset",
    "stream_rows",
    "read_vqav2",
    "read_gqa",
    "read_music_avqa",
    "read_avqa",
    "read_audiocaps",
    "read_clotho",
    "read_vggsound",
]

# --------------------------------------------------------------------------- registry

READERS: dict[str, Callable[..., ReadResult]] = {
    "vqav2": read_vqav2,
    "gqa": read_gqa,
    "music_avqa": read_music_avqa,
    "avqa": read_avqa,
    "audiocaps": read_audiocaps,
    "clotho": read_clotho,
    "vggsound": read_vggsound,
}


def read_dataset(name: str, **kwargs: Any) -> ReadResult:
    """Read a public dataset by registry name (see :data:`READERS`) with that reader's arguments.

    Names are case-insensitive and ``-`` equals ``_`` (``"MUSIC-AVQA"`` -> ``"music_avqa"``).
    An unknown name raises ``ValueError`` listing the supported names.
    """
    key = name.strip().lower().replace("-", "_")
    if key not in READERS:
        raise ValueError(f"unknown dataset {name!r}; supported: {', '.join(sorted(READERS))}")
    return READERS[key](**kwargs)
