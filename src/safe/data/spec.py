"""The data spec: one YAML file naming where each split of a run comes from.

Example (paths relative to the spec file's folder, or absolute)::

    train:
      - {reader: audiocaps, root: /data/audiocaps, split: train, limit: 50000}
      - {reader: vqav2, root: /data/vqav2, split: train2014}
    val:
      - {reader: avqa, root: /data/avqa, split: val}
    test:
      - {reader: music_avqa, root: /data/music-avqa, split: test}
      - {reader: gqa, root: /data/gqa, split: testdev}
    audio_share: 0.4     # share of audio-dependent rows per Stage A batch (the recipe's audio_share)
    seed: 0              # pairing and interleaving
    skip_bad: true       # bad rows / unreadable media: counted skips (false: the first one is an error)
    verify_media: true   # open every image and decode every clip once while reading
    cache_dir: .safe_cache              # embedding cache and stand-in image (default: beside the spec;
                                        # the top-level form: its source's own, e.g. the benchmark's)
    pairing: {stand_in_image: black}    # or an image file: the picture of rows that have none
    retention_size: 10000  # without a retention: list, this many of train's VL rows are held out

Splits: ``train``, ``val``, ``test`` (each a list of sources), and optionally ``retention`` and
``ood_test``. The stages read: ``safe train`` / ``safe ablate`` -> train, retention, test; ``safe
policy train`` -> train, val, test; ``safe eval`` -> test (and ood_test when present). When the spec
has no ``retention`` list, the retention buffer (where Stage A measures VL accuracy for its floor and
estimates its Fisher) is held out of train: ``retention_size`` (default 10,000) of train's VL-only rows
(``needs_audio`` false), at most half of them, picked by a hash of ``(seed, id)``, with their paired
clips; train then excludes those rows.

A source is ``{reader, root, split, limit, skip_bad, verify_media, ...reader options}``. Readers
(:data:`LAYOUTS`): ``vqav2``, ``gqa``, ``avqa``, ``music_avqa``, ``audiocaps``, ``clotho``,
``vggsound`` (the published layouts of :mod:`safe.data.readers`; each file or folder the reader
reads has a default path under ``root`` that a reader option of the same name replaces), plus every
reader of :data:`safe.data.source.READERS` (``builtin``: the built-in benchmark, whose ``split``
defaults to the spec split's own name and whose ``root`` defaults to ``$SAFE_CACHE/benchmark``).
``modalities`` (every dataset reader but ``vggsound``): per extra modality, the column of the annotation file
naming each row's map, ``{depth: {column: depth_file, dir: depth/}}`` or ``{depth: depth_file}`` (files under
``root``); see :mod:`safe.data.readers.maps`. ``limit`` keeps the first N good rows in file order. The built-in demo as a spec is
``{reader: builtin}`` at the top level: every split of that source under its own name.

Every error is a :class:`SpecError` (a ``ValueError``) naming the field, e.g. ``train[1].reader``,
and the value. Reading, pairing and the check live in :mod:`safe.data.spec_source`.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from safe.data.readers import (
    read_audiocaps,
    read_avqa,
    read_clotho,
    read_gqa,
    read_music_avqa,
    read_vggsound,
    read_vqav2,
)
from safe.data.readers.frames import MAX_KEY_FRAMES
from safe.data.yaml_bounded import load_yaml
from safe.data.yaml_bounded import show as _show

#: The split names a spec may list, in the order they are reported.
SPLITS: tuple[str, ...] = ("train", "val", "test", "retention", "ood_test")
#: Fields of a source entry every reader takes.
ENTRY_FIELDS: tuple[str, ...] = ("reader", "root", "split", "limit", "skip_bad", "verify_media")
#: Top-level settings of a spec (besides the splits).
SETTINGS: tuple[str, ...] = ("audio_share", "seed", "skip_bad", "verify_media", "cache_dir", "pairing",
                             "retention_size")
#: Rows of a retention buffer carved out of train when the spec lists no retention split (at most half of
#: train's VL-only rows, so training keeps VL rows of its own).
RETENTION_SIZE = 10_000
PAIRING_FIELDS: tuple[str, ...] = ("stand_in_image",)


class SpecError(ValueError):
    """The data spec is malformed or names something that is not there; the message names the field
    (``train[0].root``) and the value."""


@dataclass(frozen=True)
class Layout:
    """How a dataset reader of :mod:`safe.data.readers` finds its files under a spec source's ``root``.

    ``paths``: reader parameter -> default path under ``root`` (``{split}`` is the source's split;
    None: optional, passed only when the spec gives it); ``options``: the reader's other options and
    their types; ``split``: ``"required"`` (it names the files) or ``"filter"`` (passed to the reader's
    own ``split`` argument; optional); ``cache_folders``: reader parameter -> folder under the spec's
    ``cache_dir`` the reader writes derived media to (AVQA's tiled key frames); ``maps``: the reader takes
    ``modalities`` (a map column per extra modality, :mod:`safe.data.readers.maps`; needs named columns, so not a
    header-less CSV)."""

    read: Callable[..., Any]
    paths: dict[str, str | None]
    options: dict[str, type] = field(default_factory=dict)
    split: str = "required"
    cache_folders: dict[str, str] = field(default_factory=dict)
    maps: bool = True

    def read_in(self, cache_dir: Path, **kwargs: Any) -> Any:
        """``read(**kwargs)`` with each :attr:`cache_folders` parameter set to its folder under ``cache_dir``."""
        return self.read(**kwargs, **{k: Path(cache_dir) / v for k, v in self.cache_folders.items()})


LAYOUTS: dict[str, Layout] = {
    "vqav2": Layout(read_vqav2, {"questions_json": "v2_OpenEnded_mscoco_{split}_questions.json",
                                 "annotations_json": "v2_mscoco_{split}_annotations.json", "image_dir": "{split}"},
                    {"image_subtype": str}),
    "gqa": Layout(read_gqa, {"questions_json": "{split}_balanced_questions.json", "image_dir": "images"}),
    "avqa": Layout(read_avqa, {"questions_json": "{split}_qa.json", "frames_dir": "frames", "audio_dir": "audio"},
                   {"include_choices": bool, "key_frames": int}, cache_folders={"tiles_dir": "key_frames"}),
    "music_avqa": Layout(read_music_avqa, {"questions_json": "avqa-{split}.json", "frames_dir": "frames",
                                           "audio_dir": "audio"}),
    "audiocaps": Layout(read_audiocaps, {"captions_csv": "{split}.csv", "audio_dir": "audio", "frames_dir": None},
                        {"audio_name": str}),
    "clotho": Layout(read_clotho, {"captions_csv": "clotho_captions_{split}.csv",
                                   "audio_dir": "clotho_audio_{split}"}),
    "vggsound": Layout(read_vggsound, {"csv_path": "vggsound.csv", "audio_dir": "audio", "frames_dir": None},
                       {"audio_name": str, "questions": str}, split="filter", maps=False),
}


def known_readers() -> list[str]:
    """Every reader name a spec may use: the dataset layouts and the DataSource registry (``builtin``)."""
    from safe.data.source import READERS

    return sorted({*LAYOUTS, *READERS})


@dataclass(frozen=True)
class SourceEntry:
    """One validated source of a split. ``where`` names it in messages (``train[1]``); ``paths`` are the
    reader's files and folders (absolute); ``implicit``: made by the top-level shorthand, so a split the
    source lacks is simply absent."""

    where: str
    reader: str
    root: Path
    split: str | None
    limit: int | None
    skip_bad: bool
    verify_media: bool
    paths: dict[str, Path] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    implicit: bool = False

    @property
    def is_dataset(self) -> bool:
        """A reader of :mod:`safe.data.readers` (else a DataSource of the registry)."""
        return self.reader in LAYOUTS

    def label(self) -> str:
        return f"{self.reader}:{self.split}" if self.split is not None else self.reader

    def to_dict(self) -> dict[str, Any]:
        return {"reader": self.reader, "root": str(self.root), "split": self.split, "limit": self.limit,
                "skip_bad": self.skip_bad, "verify_media": self.verify_media,
                "paths": {k: str(v) for k, v in self.paths.items()}, "options": dict(self.options)}


@dataclass(frozen=True)
class DataSpec:
    """A validated data spec (see the module docstring): every field checked, every root and reader file
    existing when it was loaded. ``splits`` holds only the splits the file lists (retention may be
    derived later); ``path`` is the spec file (None when built from a mapping)."""

    splits: dict[str, tuple[SourceEntry, ...]]
    cache_dir: Path
    seed: int = 0
    audio_share: float | None = None
    stand_in_image: str | Path = "black"
    path: Path | None = None
    retention_size: int = RETENTION_SIZE

    def to_dict(self) -> dict[str, Any]:
        """JSON form (the fingerprint's input): every resolved path and option."""
        return {"splits": {k: [e.to_dict() for e in v] for k, v in self.splits.items()}, "seed": self.seed,
                "audio_share": self.audio_share, "stand_in_image": str(self.stand_in_image),
                "retention_size": self.retention_size}

    def canonical(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


# --------------------------------------------------------------------------- validation helpers


def _type_name(value: Any) -> str:
    return type(value).__name__


def _bool(where: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise SpecError(f"{where}: expected true or false, got {_show(value)} ({_type_name(value)})")
    return value


def _int(where: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SpecError(f"{where}: expected an integer >= {minimum}, got {_show(value)}")
    return value


def _text(where: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise SpecError(f"{where}: expected a non-empty string, got {_show(value)}")
    return value


def _unknown(where: str, keys, known) -> None:
    extra = [k for k in keys if k not in known]
    if extra:
        raise SpecError(f"{where}: unknown field {_show(extra[0])}; known fields: {', '.join(known)}")


def _path(base: Path, text: str) -> Path:
    p = Path(os.path.expanduser(text))
    return p if p.is_absolute() else (base / p).absolute()


def _default_builtin_root() -> Path:
    from safe.data.source import cache_dir

    return cache_dir().absolute() / "benchmark"


def _check_factory_options(where: str, reader: str, options: dict[str, Any]) -> None:
    """A registry reader's extra fields must be keyword arguments of its factory (a typo is caught here,
    not when the split is first read)."""
    import inspect

    from safe.data.source import READERS, _resolve

    if not options:
        return
    params = inspect.signature(_resolve(reader, READERS[reader])).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    takes = [n for n in params if n != "root"]
    extra = [k for k in options if k not in takes]
    if extra:
        raise SpecError(f"{where}: unknown field {_show(extra[0])}; known fields: "
                        f"{', '.join([*ENTRY_FIELDS, *takes])}")


MAP_FIELDS: tuple[str, ...] = ("column", "dir")
#: Names a source's ``modalities`` may not use: the row's own inputs (and the processor's arguments).
TAKEN_NAMES = ("audio", "image", "images", "text")


def _modalities(where: str, raw: Any, root: Path) -> dict[str, dict[str, str]]:
    """A source's ``modalities``: modality name -> ``column`` (a column name, or ``{column, dir}``; ``dir``
    relative to ``root``, default ``root``), as ``{name: {"column": ..., "dir": absolute folder}}``."""
    from safe.models.modality import check_modality_name

    if not isinstance(raw, Mapping) or not raw:
        raise SpecError(f"{where}: expected a mapping of modality name -> column, e.g. {{depth: depth_file}} or "
                        f"{{depth: {{column: depth_file, dir: depth/}}}}, got {_show(raw)}")
    out: dict[str, dict[str, str]] = {}
    for name, value in raw.items():
        at = f"{where}.{name}"
        if name in TAKEN_NAMES:
            raise SpecError(f"{at}: {name!r} is one of each row's own inputs; name the extra modality as its "
                            "model does (e.g. depth)")
        try:
            check_modality_name(name)
        except ValueError as err:
            raise SpecError(f"{at}: {err}") from None
        spec = {"column": value} if isinstance(value, str) else value
        if not isinstance(spec, Mapping):
            raise SpecError(f"{at}: expected a column name or {{column: ..., dir: ...}}, got {_show(value)}")
        _unknown(at, spec, MAP_FIELDS)
        if "column" not in spec:
            raise SpecError(f"{at}: missing field 'column' (the CSV column or JSON key naming each row's map)")
        column = _text(f"{at}.column", spec["column"]).strip()
        folder = _path(root, _text(f"{at}.dir", spec["dir"])) if "dir" in spec else root
        if not folder.is_dir():
            raise SpecError(f"{at}.dir: {folder} is not a folder")
        out[name] = {"column": column, "dir": str(folder)}
    return out


def reader_options(entry: SourceEntry) -> dict[str, Any]:
    """``entry``'s options as its reader takes them (``modalities`` as :class:`~safe.data.readers.maps.MapColumn`)."""
    from safe.data.readers.maps import MapColumn

    options = dict(entry.options)
    if "modalities" in options:
        options["modalities"] = {k: MapColumn(v["column"], Path(v["dir"])) for k, v in options["modalities"].items()}
    return options


def _entry(where: str, raw: Any, split_name: str, base: Path, defaults: dict[str, bool],
           implicit: bool = False) -> SourceEntry:
    if not isinstance(raw, Mapping):
        raise SpecError(f"{where}: expected a mapping like {{reader: vqav2, root: /data/vqav2, split: val2014}}, "
                        f"got {_show(raw)}")
    if "reader" not in raw:
        raise SpecError(f"{where}: missing field 'reader'; known readers: {', '.join(known_readers())}")
    name = _text(f"{where}.reader", raw["reader"])
    reader = name.strip().lower().replace("-", "_")
    if reader not in known_readers():
        raise SpecError(f"{where}.reader: unknown reader {_show(name)}; known readers: {', '.join(known_readers())}")
    layout = LAYOUTS.get(reader)
    known = [*ENTRY_FIELDS, *(list(layout.paths) + list(layout.options) + (["modalities"] if layout.maps else [])
                              if layout else [])]
    if layout is not None and not layout.maps and "modalities" in raw:
        raise SpecError(f"{where}.modalities: the {reader} file has no header row to name a map column in; put the "
                        "rows in a layout with named columns (e.g. audiocaps' CSV) to give them maps")
    if layout is not None:
        _unknown(where, raw, known)
    else:
        _check_factory_options(where, reader, {k: v for k, v in raw.items() if k not in ENTRY_FIELDS})
    if "root" in raw:
        root = _path(base, _text(f"{where}.root", raw["root"]))
    elif layout is None and reader == "builtin":
        root = _default_builtin_root()
    else:
        raise SpecError(f"{where}: missing field 'root' (the folder of the {reader} files)")
    if not root.is_dir():
        raise SpecError(f"{where}.root: {root} is not a folder")
    split = raw.get("split")
    if split is not None:
        split = _text(f"{where}.split", split)
    elif layout is None:
        split = split_name
    elif layout.split == "required":
        raise SpecError(f"{where}: missing field 'split' (which {reader} split, e.g. the {{split}} in "
                        f"{next(iter(layout.paths.values()))})")
    limit = raw.get("limit")
    if limit is not None:
        limit = _int(f"{where}.limit", limit, 1)
    skip_bad = _bool(f"{where}.skip_bad", raw.get("skip_bad", defaults["skip_bad"]))
    verify = _bool(f"{where}.verify_media", raw.get("verify_media", defaults["verify_media"]))
    paths: dict[str, Path] = {}
    options: dict[str, Any] = {}
    if layout is None:  # a DataSource factory: every other field is its option
        options = {k: v for k, v in raw.items() if k not in ENTRY_FIELDS}
    else:
        for param, default in layout.paths.items():
            if param in raw:
                paths[param] = _path(root, _text(f"{where}.{param}", raw[param]))
            elif default is not None:
                paths[param] = root / default.format(split=split)
            else:
                continue
            if not paths[param].exists():
                what = "given" if param in raw else "default"
                raise SpecError(f"{where}.{param}: {paths[param]} does not exist ({what} path of the {reader} "
                                f"layout; set {param}: to where it is)")
        for opt, tp in layout.options.items():
            if opt in raw:
                value = raw[opt]
                if tp is int:  # (key_frames, the only int option: its range is the reader's, checked here)
                    value = _int(f"{where}.{opt}", value, 1)
                    if opt == "key_frames" and value > MAX_KEY_FRAMES:
                        raise SpecError(f"{where}.{opt}: at most {MAX_KEY_FRAMES} key frames, got {value}")
                elif not isinstance(value, tp) or (tp is str and not value.strip()):
                    raise SpecError(f"{where}.{opt}: expected {'true or false' if tp is bool else 'a string'}, "
                                    f"got {_show(value)}")
                options[opt] = value
        if "modalities" in raw:
            options["modalities"] = _modalities(f"{where}.modalities", raw["modalities"], root)
        if layout.split == "filter" and split is not None:
            options["split"] = split
    return SourceEntry(where, reader, root, split, limit, skip_bad, verify, paths, options, implicit)


def load_spec(spec: str | os.PathLike | Mapping[str, Any], *, base_dir: str | os.PathLike | None = None) -> DataSpec:
    """Parse and validate a data spec: a YAML file, or an already-parsed mapping whose relative paths are
    resolved against ``base_dir`` (default: the current folder). Raises :class:`SpecError` naming the
    field and value for anything wrong (unknown field or reader, missing root or annotation file, wrong
    type, an empty split list)."""
    path: Path | None = None
    if isinstance(spec, Mapping):
        raw: Any = spec
        base = Path(base_dir).absolute() if base_dir is not None else Path.cwd()
    else:
        import yaml

        path = Path(spec).absolute()
        if not path.is_file():
            raise SpecError(f"data spec {path}: no such file")
        try:
            raw = load_yaml(path.read_text(encoding="utf-8"))
        except RecursionError:
            raise SpecError(f"data spec {path}: nested too deeply to read") from None
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise SpecError(f"data spec {path}: not valid YAML: {' '.join(str(err).split())}") from None
        base = path.parent if base_dir is None else Path(base_dir).absolute()
    name = str(path) if path else "data spec"
    if not isinstance(raw, Mapping) or not raw:
        raise SpecError(f"{name}: expected a mapping with train / val / test lists, got {_show(raw)}")
    shorthand = "reader" in raw
    if not shorthand:  # the shorthand's other fields are its source's options (checked when it opens)
        _unknown(name, raw, [*SPLITS, *SETTINGS])
    defaults = {"skip_bad": _bool("skip_bad", raw.get("skip_bad", True)),
                "verify_media": _bool("verify_media", raw.get("verify_media", True))}
    splits: dict[str, tuple[SourceEntry, ...]] = {}
    if shorthand:
        body = {k: v for k, v in raw.items() if k not in SETTINGS or k in ("skip_bad", "verify_media")}
        if str(body["reader"]).strip().lower() in LAYOUTS:
            raise SpecError(f"reader: {_show(body['reader'])} at the top level reads one split; list it under "
                            "train / val / test (the top-level form is for sources with their own splits, e.g. builtin)")
        if "split" in body:
            raise SpecError("split: the top-level form takes every split of the source under its own name; "
                            f"list the source under train / val / test to pick one (got split: {_show(body['split'])})")
        entry = _entry("spec", body, SPLITS[0], base, defaults, implicit=True)
        splits = {s: (replace(entry, where=s, split=s),) for s in SPLITS}
    else:
        for s in SPLITS:
            if s not in raw:
                continue
            items = raw[s]
            if isinstance(items, Mapping):
                items = [items]
            if not isinstance(items, list) or not items:
                raise SpecError(f"{s}: expected a non-empty list of sources, got {_show(items)}")
            splits[s] = tuple(_entry(f"{s}[{i}]", item, s, base, defaults) for i, item in enumerate(items))
        if not splits:
            raise SpecError(f"{name}: lists no split; give at least one of {', '.join(SPLITS)}")
    audio_share = raw.get("audio_share")
    if audio_share is not None and (isinstance(audio_share, bool) or not isinstance(audio_share, (int, float))
                                    or not 0 < audio_share < 1):
        raise SpecError(f"audio_share: expected a number strictly between 0 and 1, got {_show(audio_share)}")
    seed = _int("seed", raw.get("seed", 0), 0)
    retention_size = _int("retention_size", raw.get("retention_size", RETENTION_SIZE), 1)
    pairing = raw.get("pairing", {}) or {}
    if not isinstance(pairing, Mapping):
        raise SpecError(f"pairing: expected a mapping like {{stand_in_image: black}}, got {_show(pairing)}")
    _unknown("pairing", pairing, PAIRING_FIELDS)
    stand_in: str | Path = _text("pairing.stand_in_image", pairing.get("stand_in_image", "black"))
    if stand_in != "black":
        stand_in = _path(base, str(stand_in))
        if not Path(stand_in).is_file():
            raise SpecError(f"pairing.stand_in_image: {stand_in} is not a file (give an image file or 'black')")
    if "cache_dir" in raw:
        cache = _path(base, _text("cache_dir", raw["cache_dir"]))
    elif shorthand:  # the source's own cache: the same embeddings as --data <folder>
        from safe.data.source import open_source

        entry = splits[SPLITS[0]][0]
        cache = Path(open_source(entry.reader, entry.root, **entry.options).cache_dir)
    else:
        cache = base / ".safe_cache"
    return DataSpec(splits, cache, seed, None if audio_share is None else float(audio_share), stand_in, path,
                    retention_size)


def is_spec_file(path: str | os.PathLike) -> bool:
    """Whether ``--data`` names a spec file (a file ending in .yaml / .yml) rather than a benchmark folder."""
    p = Path(path)
    return p.suffix.lower() in (".yaml", ".yml") and not p.is_dir()


__all__ = ["DataSpec", "LAYOUTS", "Layout", "SPLITS", "SourceEntry", "SpecError", "is_spec_file", "known_readers",
           "load_spec", "reader_options"]
