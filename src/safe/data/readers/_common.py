"""Shared machinery of the dataset readers: the error type, the result type, row collection, file and
media checks (see :mod:`safe.data.readers`)."""

import ast
import csv
import json
import os
import sqlite3
import string
import wave
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import ijson
from PIL import Image

from safe.data.records import Example
from safe.processing.audio import read_wav

#: How many problem messages a ReadResult keeps (the count in ``skipped`` is always complete).
MAX_PROBLEMS = 50

CAPTION_PROMPT = "Describe the sound."
VGGSOUND_PROMPT = "What sound is this?"


class DatasetFormatError(ValueError):
    """A dataset file, row or media file is missing or malformed; the message names file and row."""


@dataclass
class ReadResult:
    """What a reader produced.

    Attributes:
        examples: the records, in file order.
        skipped: how many rows were dropped as bad (only non-zero with ``skip_bad=True``).
        problems: the first ``MAX_PROBLEMS`` messages describing the skipped rows.
    """

    examples: list[Example] = field(default_factory=list)
    skipped: int = 0
    problems: list[str] = field(default_factory=list)


#: Set by :func:`stream_rows`: where readers hand each record instead of keeping it in ``ReadResult.examples``.
_SINK: ContextVar[Callable[[Example], None] | None] = ContextVar("safe_reader_sink", default=None)


@contextmanager
def stream_rows(sink: Callable[[Example], None]) -> Iterator[None]:
    """Within this block every reader passes each good record to ``sink`` as it is built and leaves
    ``ReadResult.examples`` empty (skips and problems are counted as usual), so a caller can write a large
    dataset to disk without holding its records (the data spec's record tables). An exception raised by
    ``sink`` propagates out of the reader."""
    token = _SINK.set(sink)
    try:
        yield
    finally:
        _SINK.reset(token)


class _RowError(Exception):
    """Internal: what is wrong with one row; the caller adds the file and row to the message."""


# --------------------------------------------------------------------------- shared machinery


def _abs(path: str | os.PathLike[str]) -> Path:
    return Path(path).expanduser().absolute()


def _where(index: int, row_id: Any = None, line: int | None = None) -> str:
    s = f"row {index}"
    if line is not None:
        s += f" (line {line})"
    if row_id is not None:
        s += f", id {row_id!r}"
    return s


class _SeenIds:
    """The record ids read so far from one file and where each was first seen, in a private temporary
    SQLite database (on disk, deleted when closed; created at the first id): the duplicate check holds
    nothing per row in memory (a dict of ids and row descriptions costs ~160 B a row, 2 GB for GQA's
    14M all-questions file)."""

    def __init__(self) -> None:
        self._db: sqlite3.Connection | None = None

    def first(self, row_id: str, where: str) -> str | None:
        """Record ``row_id`` as seen at ``where``; if it was seen before, where that was (not recorded)."""
        if self._db is None:
            self._db = sqlite3.connect("")  # "": a temporary on-disk database, removed on close
            self._db.execute("CREATE TABLE seen (id TEXT PRIMARY KEY, at TEXT NOT NULL) WITHOUT ROWID")
        try:
            self._db.execute("INSERT INTO seen VALUES (?, ?)", (row_id, where))
        except sqlite3.IntegrityError:
            return self._db.execute("SELECT at FROM seen WHERE id = ?", (row_id,)).fetchone()[0]
        return None

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


class _Collector:
    """Gathers records for one annotation file and applies the skip_bad policy uniformly."""

    def __init__(self, file: Path, skip_bad: bool) -> None:
        self.file = file
        self.skip_bad = skip_bad
        self.result = ReadResult()
        self._seen = _SeenIds()
        self._sink = _SINK.get()

    def bad(self, where: str, what: str) -> None:
        msg = f"{self.file}: {where}: {what}"
        if not self.skip_bad:
            raise DatasetFormatError(msg)
        self.result.skipped += 1
        if len(self.result.problems) < MAX_PROBLEMS:
            self.result.problems.append(msg)

    def close(self) -> None:
        self._seen.close()

    def add(self, where: str, example: Example) -> None:
        # Ids key caches and splits downstream; a repeated id would silently merge two records.
        first = self._seen.first(example.id, where)
        if first is not None:
            self.bad(where, f"duplicate id {example.id!r} (first seen at {first})")
            return
        if self._sink is not None:
            self._sink(example)
        else:
            self.result.examples.append(example)


def _run_rows(
    col: _Collector,
    rows: Iterable[tuple[str, Any]],
    build: Callable[[Any], Example | Sequence[Example] | None],
    maps: Any = None,
    fields: Callable[[Any], Any] | None = None,
) -> ReadResult:
    """Build the records of each (where, row) (one, several as a list, or none); a _RowError becomes a
    file+row error or a skip. ``maps``: a :class:`~safe.data.readers.maps.RowMaps` whose columns each record
    of a row gets as ``meta["modalities"]``, read from ``fields(row)`` (the row itself when None)."""
    try:
        for where, row in rows:
            try:
                ex = build(row)
                found = maps.read(row if fields is None else fields(row)) if maps and ex else {}
            except _RowError as err:
                col.bad(where, str(err))
                continue
            for one in ex if isinstance(ex, (list, tuple)) else (() if ex is None else (ex,)):
                col.add(where, replace(one, meta={**one.meta, "modalities": found}) if found else one)
    finally:
        col.close()
    return col.result


#: The JSON value type a ``ijson.parse`` event opens, as ``type(value).__name__`` would name it.
_JSON_TYPE_NAMES = {"start_map": "dict", "start_array": "list", "string": "str", "boolean": "bool", "null": "NoneType"}


@contextmanager
def _json_errors(p: Path) -> Iterator[None]:
    """Turn a parse or read error of the JSON file ``p`` into a DatasetFormatError naming it."""
    try:
        yield
    except ijson.JSONError as err:
        raw = err.args[0] if err.args else err
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        # yajl's message is "<what>\n<the text around it>\n(right here) ---^": keep what and where.
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        near = f" (near {lines[1]!r})" if len(lines) > 2 else ""
        raise DatasetFormatError(f"{p}: not valid JSON: {lines[0] if lines else type(err).__name__}{near}") from err
    except (UnicodeDecodeError, OSError) as err:
        raise DatasetFormatError(f"{p}: cannot read: {err}") from err


def _json_root(path: str | os.PathLike[str], keys: Iterable[str] = ()) -> tuple[Path, str, dict[str, tuple[str, Any]]]:
    """Look at an annotation file's top level without parsing it whole: the root's type name and, for
    each of ``keys`` that the root object has, the ``(event, value)`` that opens its value (``("string",
    "val2014")``, ``("start_array", None)``, ...). Reads only up to the last of ``keys`` (the first event
    when ``keys`` is empty), so the rest of the file is checked when its rows are read."""
    p = _abs(path)
    if not p.is_file():
        raise DatasetFormatError(f"{p}: annotation file not found")
    wanted, found = set(keys), {}
    with _json_errors(p), open(p, "rb") as f:
        events = ijson.parse(f, use_float=True)
        _, event, value = next(events)
        root = _JSON_TYPE_NAMES.get(event) or type(value).__name__
        if event == "start_map" and wanted:
            pending = None
            for prefix, event, value in events:
                if pending is not None:  # the event after a wanted key opens its value
                    found[pending] = (event, value)
                    pending = None
                    if len(found) == len(wanted):
                        break
                elif prefix == "" and event == "map_key" and value in wanted and value not in found:
                    pending = value
    return p, root, found


def _json_items(p: Path, prefix: str, *, pairs: bool = False) -> Iterator[Any]:
    """The values at ``prefix`` (``"item"``: a root list's items; ``"questions.item"``), or with ``pairs``
    the ``(key, value)`` pairs of the object at ``prefix``, parsed one at a time (ijson), so reading an
    annotation file holds one row's objects, never the file's. Floats are floats, as ``json.load`` makes
    them."""
    with _json_errors(p), open(p, "rb") as f:
        if pairs:
            yield from ijson.kvitems(f, prefix, use_float=True)
        else:
            yield from ijson.items(f, prefix, use_float=True)


def _load_csv(path: str | os.PathLike[str], *, header: bool, required: Iterable[str] = ()) -> tuple[Path, Iterator[tuple[int, Any]]]:
    """Rows as (line number, dict or list), read one at a time; header CSVs must have the ``required``
    columns. The file is opened and its header checked now (file-level errors before any row)."""
    p = _abs(path)
    if not p.is_file():
        raise DatasetFormatError(f"{p}: annotation file not found")
    rows = _csv_rows(p, header, tuple(required))
    next(rows)  # runs up to the header check
    return p, rows


def _csv_rows(p: Path, header: bool, required: tuple[str, ...]) -> Iterator[Any]:
    # utf-8-sig: CSVs saved by spreadsheet tools often start with a BOM, which would corrupt the
    # first column name.
    with open(p, encoding="utf-8-sig", newline="") as f:
        reader: Any = csv.DictReader(f) if header else csv.reader(f)
        try:
            if header:
                names = reader.fieldnames
                if names is None:
                    raise DatasetFormatError(f"{p}: empty CSV file, expected a header row")
                missing = [c for c in required if c not in names]
                if missing:
                    raise DatasetFormatError(f"{p}: missing columns {missing}; header has {list(names)}")
            yield None
            for row in reader:
                yield reader.line_num, row
        except csv.Error as err:
            raise DatasetFormatError(f"{p}: line {reader.line_num}: malformed CSV: {err}") from err
        except UnicodeDecodeError as err:
            raise DatasetFormatError(f"{p}: not UTF-8 text: {err}") from err


def _require_dir(path: str | os.PathLike[str], what: str) -> Path:
    p = _abs(path)
    if not p.is_dir():
        raise DatasetFormatError(f"{what} {p} is not a directory")
    return p


def _get(row: Any, key: str, types: type | tuple[type, ...], *, nonempty: bool = False) -> Any:
    if not isinstance(row, dict):
        raise _RowError(f"expected a JSON object, got {type(row).__name__}")
    if key not in row:
        raise _RowError(f"missing key {key!r}")
    value = row[key]
    # bool is an int subclass; a true/false where an id or index belongs is a malformed row.
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise _RowError(f"key {key!r} is a boolean, expected {_type_names(types)}")
    if not isinstance(value, types):
        raise _RowError(f"key {key!r} has type {type(value).__name__}, expected {_type_names(types)}")
    if nonempty and isinstance(value, str) and not value.strip():
        raise _RowError(f"key {key!r} is empty")
    return value


def _type_names(types: type | tuple[type, ...]) -> str:
    ts = types if isinstance(types, tuple) else (types,)
    return " or ".join(t.__name__ for t in ts)


def _cell(row: dict[str | None, Any], key: str) -> str:
    value = row.get(key)
    if value is None:
        raise _RowError(f"missing value for column {key!r} (row has too few fields)")
    value = value.strip()
    if not value:
        raise _RowError(f"empty value for column {key!r}")
    return value


def _as_int(text: str, what: str) -> int:
    try:
        f = float(text)
    except ValueError:
        raise _RowError(f"{what} {text!r} is not a number") from None
    if not f.is_integer():
        raise _RowError(f"{what} {text!r} is not a whole number")
    return int(f)


#: How many paths a ``_Media`` remembers the check of (least recently used first forgotten). Questions
#: about one image or clip are adjacent in the published files, so a bounded memory keeps their media
#: opened once while reading a large file stays at constant memory (a path per row would not).
MEDIA_CACHE_ENTRIES = 4096


def inside(folder: Path, name: str) -> Path:
    """``folder / name``, refused (a skipped row, :class:`_RowError`) when ``name`` is absolute or the path
    leads out of ``folder`` (``..`` parts, or a symlink whose target lies outside): a row's id must not
    make the reader open files the dataset does not hold."""
    if Path(name).is_absolute() or Path(name).drive:
        raise _RowError(f"media name {name!r} is an absolute path; ids name files inside {folder}")
    path = folder / name
    if ".." in Path(name).parts or not _within(path, folder):
        raise _RowError(f"media name {name!r} leads out of the media folder {folder}")
    return path


def _within(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


class _Media:
    """Existence / readability checks for images and WAVs, the latest ``MEDIA_CACHE_ENTRIES`` paths' remembered."""

    def __init__(self, verify: bool, max_entries: int = MEDIA_CACHE_ENTRIES) -> None:
        self.verify = verify
        self.max_entries = max_entries
        self._cache: OrderedDict[str, str | None] = OrderedDict()
        self._frames: OrderedDict[tuple[str, str], Path | str] = OrderedDict()

    def _remember(self, cache: OrderedDict, key: Any, compute: Callable[[], Any]) -> Any:
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        value = cache[key] = compute()
        if len(cache) > self.max_entries:
            cache.popitem(last=False)
        return value

    def image(self, path: Path) -> str:
        s = str(path)
        if (err := self._remember(self._cache, s, lambda: self._check_image(path))) is not None:
            raise _RowError(err)
        return s

    def audio(self, path: Path) -> str:
        s = str(path)
        if (err := self._remember(self._cache, s, lambda: self._check_audio(path))) is not None:
            raise _RowError(err)
        return s

    def frame(self, frames_dir: Path, stem: str) -> str:
        """``<frames_dir>/<stem>.jpg``, else the first (sorted) ``<frames_dir>/<stem>/*.jpg``."""
        found = self._remember(self._frames, (str(frames_dir), stem), lambda: self._find_frame(frames_dir, stem))
        if isinstance(found, str):
            raise _RowError(found)
        return self.image(found)

    @staticmethod
    def _find_frame(frames_dir: Path, stem: str) -> Path | str:
        try:
            single = inside(frames_dir, f"{stem}.jpg")
            sub = inside(frames_dir, stem)
        except _RowError as err:
            return str(err)
        if single.is_file():
            return single
        if sub.is_dir() and (jpgs := sorted(q for q in sub.glob("*.jpg") if q.is_file() and _within(q, frames_dir))):
            return jpgs[0]
        return f"no frame for {stem!r}: neither {single} nor any *.jpg in {sub}"

    def _check_image(self, path: Path) -> str | None:
        err: str | None = None
        if not path.is_file():
            err = f"image file not found: {path}"
        elif self.verify:
            try:
                with Image.open(path) as im:
                    im.verify()
            # PIL signals a broken file with many exception types (OSError, SyntaxError,
            # struct.error, ...); any of them means the image cannot be used.
            except Exception as e:  # noqa: BLE001
                err = f"unreadable image file {path}: {type(e).__name__}: {e}"
        return err

    def _check_audio(self, path: Path) -> str | None:
        err: str | None = None
        if not path.is_file():
            err = f"audio file not found: {path}"
        elif self.verify:
            try:
                x, _ = read_wav(path)
                if x.size == 0:
                    err = f"audio file has no samples: {path}"
            # AudioReadError is a ValueError; truncated data can also surface as a numpy
            # ValueError (buffer not a multiple of the sample size) or as wave/EOF errors.
            except (ValueError, OSError, EOFError, wave.Error) as e:
                msg = str(e)
                err = msg if str(path) in msg else f"unreadable audio file {path}: {msg}"
        return err


def _parse_encoded_list(value: Any, key: str) -> list[str]:
    """A list stored as a JSON string (the published MUSIC-AVQA encoding) or as a real list."""
    if isinstance(value, list):
        items = value
    elif isinstance(value, str):
        try:
            items = json.loads(value)
        except json.JSONDecodeError:
            # Re-saved copies of the files often hold Python reprs ("['cello']"); the reference
            # loaders use ast.literal_eval, so accept what they accept.
            try:
                items = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                raise _RowError(f"key {key!r} is not a JSON-encoded list: {value!r}") from None
    else:
        raise _RowError(f"key {key!r} has type {type(value).__name__}, expected a JSON-encoded list")
    if not isinstance(items, list):
        raise _RowError(f"key {key!r} does not encode a list: {value!r}")
    out = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (str, int, float)):
            raise _RowError(f"key {key!r} holds a non-string item {item!r}")
        out.append(str(item))
    return out


def _family(text: str) -> str:
    return "_".join(text.strip().lower().split())


def _check_template(template: str, fields: dict[str, Any], param: str) -> None:
    try:
        names = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
        unknown = sorted(n for n in names if n not in fields)
        if unknown:
            raise ValueError(f"unknown field(s) {unknown}")
        template.format(**fields)
    except (ValueError, KeyError, IndexError) as err:
        raise ValueError(f"{param}={template!r} is not a valid template ({err}); fields: {sorted(fields)}") from None

def _peek(row: Any, key: str) -> Any:
    return row.get(key) if isinstance(row, dict) else None
