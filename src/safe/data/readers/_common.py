"""Shared machinery of the dataset readers: the error type, the result type, row collection, file and
media checks (see :mod:`safe.data.readers`)."""

import ast
import csv
import json
import os
import string
import wave
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from PIL import Image

from safe.processing.audio import read_wav
from safe.data.records import Example

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


class _Collector:
    """Gathers records for one annotation file and applies the skip_bad policy uniformly."""

    def __init__(self, file: Path, skip_bad: bool) -> None:
        self.file = file
        self.skip_bad = skip_bad
        self.result = ReadResult()
        self._seen: dict[str, str] = {}
        self._sink = _SINK.get()

    def bad(self, where: str, what: str) -> None:
        msg = f"{self.file}: {where}: {what}"
        if not self.skip_bad:
            raise DatasetFormatError(msg)
        self.result.skipped += 1
        if len(self.result.problems) < MAX_PROBLEMS:
            self.result.problems.append(msg)

    def add(self, where: str, example: Example) -> None:
        # Ids key caches and splits downstream; a repeated id would silently merge two records.
        first = self._seen.get(example.id)
        if first is not None:
            self.bad(where, f"duplicate id {example.id!r} (first seen at {first})")
            return
        self._seen[example.id] = where
        if self._sink is not None:
            self._sink(example)
        else:
            self.result.examples.append(example)


def _run_rows(
    col: _Collector,
    rows: Iterable[tuple[str, Any]],
    build: Callable[[Any], Example | None],
) -> ReadResult:
    """Build one record per (where, row); a _RowError becomes a file+row error or a skip."""
    for where, row in rows:
        try:
            ex = build(row)
        except _RowError as err:
            col.bad(where, str(err))
            continue
        if ex is not None:
            col.add(where, ex)
    return col.result


def _load_json(path: str | os.PathLike[str]) -> tuple[Path, Any]:
    p = _abs(path)
    if not p.is_file():
        raise DatasetFormatError(f"{p}: annotation file not found")
    try:
        with open(p, "r", encoding="utf-8") as f:
            return p, json.load(f)
    except json.JSONDecodeError as err:
        raise DatasetFormatError(f"{p}: not valid JSON: {err}") from err
    except (UnicodeDecodeError, OSError) as err:
        raise DatasetFormatError(f"{p}: cannot read: {err}") from err


def _load_csv(path: str | os.PathLike[str], *, header: bool, required: Iterable[str] = ()) -> tuple[Path, list[tuple[int, Any]]]:
    """Rows as (line number, dict or list); header CSVs must have the ``required`` columns."""
    p = _abs(path)
    if not p.is_file():
        raise DatasetFormatError(f"{p}: annotation file not found")
    rows: list[tuple[int, Any]] = []
    # utf-8-sig: CSVs saved by spreadsheet tools often start with a BOM, which would corrupt the
    # first column name.
    with open(p, "r", encoding="utf-8-sig", newline="") as f:
        reader: Any = csv.DictReader(f) if header else csv.reader(f)
        try:
            if header:
                names = reader.fieldnames
                if names is None:
                    raise DatasetFormatError(f"{p}: empty CSV file, expected a header row")
                missing = [c for c in required if c not in names]
                if missing:
                    raise DatasetFormatError(f"{p}: missing columns {missing}; header has {list(names)}")
            for row in reader:
                rows.append((reader.line_num, row))
        except csv.Error as err:
            raise DatasetFormatError(f"{p}: line {reader.line_num}: malformed CSV: {err}") from err
        except UnicodeDecodeError as err:
            raise DatasetFormatError(f"{p}: not UTF-8 text: {err}") from err
    return p, rows


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


class _Media:
    """Existence / readability checks for images and WAVs, cached per path."""

    def __init__(self, verify: bool) -> None:
        self.verify = verify
        self._cache: dict[Path, str | None] = {}
        self._frames: dict[tuple[Path, str], Path | str] = {}

    def image(self, path: Path) -> str:
        if path not in self._cache:
            self._cache[path] = self._check_image(path)
        if (err := self._cache[path]) is not None:
            raise _RowError(err)
        return str(path)

    def audio(self, path: Path) -> str:
        if path not in self._cache:
            self._cache[path] = self._check_audio(path)
        if (err := self._cache[path]) is not None:
            raise _RowError(err)
        return str(path)

    def frame(self, frames_dir: Path, stem: str) -> str:
        """``<frames_dir>/<stem>.jpg``, else the first (sorted) ``<frames_dir>/<stem>/*.jpg``."""
        key = (frames_dir, stem)
        found = self._frames.get(key)
        if found is None:
            single = frames_dir / f"{stem}.jpg"
            sub = frames_dir / stem
            if single.is_file():
                found = single
            elif sub.is_dir() and (jpgs := sorted(q for q in sub.glob("*.jpg") if q.is_file())):
                found = jpgs[0]
            else:
                found = f"no frame for {stem!r}: neither {single} nor any *.jpg in {sub}"
            self._frames[key] = found
        if isinstance(found, str):
            raise _RowError(found)
        return self.image(found)

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
