"""Records on disk: a split's :class:`~safe.data.records.Example` rows in one SQLite file, read lazily.

A data spec's split is read once, streaming from the readers, into ``<cache_dir>/records/<split>-<key>.sqlite``
(:class:`TableWriter`); stages then see a :class:`RecordView`, a ``Sequence[Example]`` that decodes rows
from the file when asked (one row, a slice, or a chunk at a time while iterating), so memory holds no
per-row Python objects and does not grow with the number of rows. SQLite (the standard library's
``sqlite3``) was chosen over an Arrow table: no new dependency, random access by row number through the
integer primary key, one file per split that several processes can read at once.

The file is written under a temporary name and renamed into place when complete (``os.replace``), so an
interrupted write never looks complete and a rerun starts it again; once in place it is never modified
(it is opened read-only and ``immutable``). Besides the rows it keeps ``media`` (every image and clip the
rows name, and every medium that failed verification, with its size and mtime, so a reuse can tell that
a file changed), ``pool`` (the split's sorted distinct clips, the pairing pool) and ``info`` (JSON: the
per-source reports and the row count).
"""
from __future__ import annotations

import glob
import json
import os
import socket
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from safe.data.records import Example

#: The record columns, in :class:`Example` field order.
FIELDS: tuple[str, ...] = ("id", "task", "family", "question", "answers", "image", "audio", "needs_audio", "meta")
#: Rows decoded per query while iterating (bounds the transient memory of a pass: ~3 KB a row).
CHUNK = 1024
_SCHEMA = """
CREATE TABLE rows (pos INTEGER PRIMARY KEY, id TEXT NOT NULL, task TEXT NOT NULL, family TEXT NOT NULL,
                   question TEXT NOT NULL, answers TEXT NOT NULL, image TEXT, audio TEXT,
                   needs_audio INTEGER NOT NULL, meta TEXT NOT NULL);
CREATE TABLE media (path TEXT PRIMARY KEY, stamp TEXT NOT NULL, used INTEGER NOT NULL);
CREATE TABLE pool (k INTEGER PRIMARY KEY, path TEXT NOT NULL);
CREATE TABLE info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def stamp(path: str) -> str:
    """``"<size>:<mtime_ns>"`` of a file, ``"missing"`` when it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return "missing"
    return f"{st.st_size}:{st.st_mtime_ns}"


def row_values(e: Example) -> tuple:
    """``e`` as the row's column values (``answers`` and ``meta`` as JSON, which keeps key order)."""
    return (e.id, e.task, e.family, e.question, json.dumps(list(e.answers)), e.image, e.audio, int(e.needs_audio),
            json.dumps(e.meta))


def _example(row: tuple) -> Example:
    i, task, family, question, answers, image, audio, needs, meta = row
    return Example(i, task, family, question, tuple(json.loads(answers)), image, audio, bool(needs), json.loads(meta))


def _decode(field: str, value: Any) -> Any:
    if field == "answers":
        return tuple(json.loads(value))
    if field == "meta":
        return json.loads(value)
    return bool(value) if field == "needs_audio" else value


def _tmp_prefix(path: Path) -> str:
    """Temporary-file prefix of ``path``'s writers on this host: a cache_dir shared by several hosts (NFS)
    sees other hosts' writers, whose process ids mean nothing here."""
    return f".{path.name}.{socket.gethostname()}-"


def _remove_orphans(path: Path) -> None:
    """Delete temporary files of ``path`` left by this host's writers that were killed (their process is gone)."""
    prefix = _tmp_prefix(path)
    for tmp in path.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        try:
            pid = int(tmp.name[len(prefix):].split(".")[0])
            os.kill(pid, 0)  # raises when no such process
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except (ValueError, PermissionError):  # not ours to judge: another user's live process, a foreign name
            continue


class TableWriter:
    """Builds one record file (module docstring) under a temporary name; :meth:`finish` renames it into
    place, :meth:`abort` (or an exception inside ``with``) removes it. Rows are appended with :meth:`add`
    and then reordered / completed with SQL, so the writer never holds the rows in memory."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f"{_tmp_prefix(self.path)}{os.getpid()}.{threading.get_ident()}.tmp")
        self.tmp.unlink(missing_ok=True)
        _remove_orphans(self.path)
        self.db = sqlite3.connect(str(self.tmp))
        # A temporary file that is renamed only once complete: no journal or fsync is needed for safety.
        self.db.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;" + _SCHEMA)
        self.db.execute("CREATE TABLE raw (src INTEGER PRIMARY KEY, uid TEXT NOT NULL UNIQUE, origin TEXT NOT NULL,"
                        " id TEXT, task TEXT, family TEXT, question TEXT, answers TEXT, image TEXT, audio TEXT,"
                        " needs_audio INTEGER, meta TEXT)")
        self.rows = 0

    def __enter__(self) -> TableWriter:
        return self

    def __exit__(self, kind, *_) -> None:
        if kind is not None:
            self.abort()

    def add(self, e: Example, origin: str) -> str | None:
        """Append ``e``; returns None, or the ``origin`` of an earlier row with the same id (not added)."""
        try:
            self.db.execute("INSERT INTO raw VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", (self.rows, e.id, origin, *row_values(e)))
        except sqlite3.IntegrityError:
            return self.db.execute("SELECT origin FROM raw WHERE uid = ?", (e.id,)).fetchone()[0]
        self.rows += 1
        return None

    def add_media(self, paths: Iterable[str], used: bool) -> None:
        """Remember the current size and mtime of ``paths`` (see :meth:`RecordView.media_changed`); ``used``:
        named by a row (else a medium that failed verification)."""
        self.db.executemany("INSERT INTO media VALUES (?, ?, ?) ON CONFLICT(path) DO UPDATE SET "
                            "used = max(used, excluded.used)", ((p, stamp(p), int(used)) for p in paths))

    def has(self, condition: str) -> bool:
        """Whether some row matches the SQL ``condition`` (e.g. ``"audio IS NULL"``)."""
        return self.db.execute(f"SELECT 1 FROM rows WHERE {condition} LIMIT 1").fetchone() is not None

    def order(self, permutation: np.ndarray | None) -> None:
        """Move the rows into place: row ``j`` is the ``permutation[j]``-th row added (None: in order)."""
        cols = ", ".join(FIELDS)
        if permutation is None:
            self.db.execute(f"INSERT INTO rows SELECT src, {cols} FROM raw ORDER BY src")
        else:
            self.db.execute("CREATE TEMP TABLE perm (dst INTEGER PRIMARY KEY, src INTEGER NOT NULL)")
            self.db.executemany("INSERT INTO perm VALUES (?, ?)", enumerate(permutation.tolist()))
            self.db.execute(f"INSERT INTO rows SELECT perm.dst, {', '.join('raw.' + c for c in FIELDS)} "
                            "FROM perm JOIN raw ON raw.src = perm.src ORDER BY perm.dst")
            self.db.execute("DROP TABLE perm")
        self.db.execute("DROP TABLE raw")

    def fill_pool(self, paths: Iterable[str] | None = None) -> int:
        """The pairing pool: ``paths`` (already sorted and distinct), or this split's sorted distinct clips.
        SQLite's default (binary) order of UTF-8 text is Python's order of ``str``."""
        self.db.execute("DELETE FROM pool")
        if paths is None:
            self.db.execute("INSERT INTO pool SELECT ROW_NUMBER() OVER (ORDER BY audio) - 1, audio FROM "
                            "(SELECT DISTINCT audio FROM rows WHERE audio IS NOT NULL)")
        else:
            self.db.executemany("INSERT INTO pool VALUES (?, ?)", enumerate(paths))
        return self.db.execute("SELECT COUNT(*) FROM pool").fetchone()[0]

    def pool_path(self, k: int) -> str:
        """Entry ``k`` (0-based) of the pool."""
        return self.db.execute("SELECT path FROM pool WHERE k = ?", (k,)).fetchone()[0]

    def incomplete(self) -> Iterator[tuple[int, Example]]:
        """``(pos, example)`` of the rows without an image or a clip, in row order (read a chunk at a time,
        so :meth:`update` may run in between)."""
        last = -1
        while True:
            chunk = self.db.execute(f"SELECT pos, {', '.join(FIELDS)} FROM rows WHERE pos > ? AND "
                                    "(audio IS NULL OR image IS NULL) ORDER BY pos LIMIT ?", (last, CHUNK)).fetchall()
            if not chunk:
                return
            for row in chunk:
                yield row[0], _example(row[1:])
            last = chunk[-1][0]

    def update(self, changes: list[tuple[int, Example]]) -> None:
        """Replace the rows at the given positions."""
        self.db.executemany(f"UPDATE rows SET {', '.join(c + ' = ?' for c in FIELDS)} WHERE pos = ?",
                            [(*row_values(e), pos) for pos, e in changes])

    def finish(self, info: dict[str, Any]) -> Path:
        """Write ``info``, close and rename into place; returns the final path."""
        self.db.executemany("INSERT INTO info VALUES (?, ?)", [(k, json.dumps(v)) for k, v in info.items()])
        self.db.commit()
        self.db.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        try:
            self.db.close()
        finally:
            self.tmp.unlink(missing_ok=True)


class _Table:
    """One open record file, shared by the views over it: a read-only connection per process (reopened
    after a fork or unpickling) and a lock, so worker threads may fetch rows too."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None
        self._pid = -1
        self._lock = threading.Lock()
        self.rows = self.query("SELECT COUNT(*) FROM rows")[0][0]

    def query(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            if self._conn is None or self._pid != os.getpid():
                uri = f"{self.path.absolute().as_uri()}?mode=ro&immutable=1"
                self._conn, self._pid = sqlite3.connect(uri, uri=True, check_same_thread=False), os.getpid()
            return self._conn.execute(sql, args).fetchall()

    def __getstate__(self) -> dict:
        return {"path": self.path, "rows": self.rows}

    def __setstate__(self, state: dict) -> None:
        self.path, self.rows = state["path"], state["rows"]
        self._conn, self._pid, self._lock = None, -1, threading.Lock()

    def info(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self.query("SELECT key, value FROM info")}

    def fetch(self, positions: Sequence[int], columns: str) -> list[tuple]:
        """Rows at file positions ``positions`` (any order, repeats allowed), ``columns`` selected."""
        if not len(positions):
            return []
        lo, hi = int(min(positions)), int(max(positions))
        if hi - lo < 2 * len(positions):  # dense: one range query
            got = dict((r[0], r[1:]) for r in self.query(f"SELECT pos, {columns} FROM rows WHERE pos BETWEEN ? AND ?",
                                                         (lo, hi)))
        else:
            got = {}
            uniq = sorted(set(int(p) for p in positions))
            for s in range(0, len(uniq), 500):  # below SQLite's bound on parameters
                part = uniq[s:s + 500]
                got.update((r[0], r[1:]) for r in self.query(
                    f"SELECT pos, {columns} FROM rows WHERE pos IN ({','.join('?' * len(part))})", tuple(part)))
        return [got[int(p)] for p in positions]


class RecordView(Sequence):
    """A read-only ``Sequence[Example]`` over a record file (module docstring), or over some of its rows.

    Guarantees: ``view[i]`` and iteration give the records that were written, in row order, equal to the
    ``Example`` objects written (``answers`` a tuple, ``meta`` with its keys in order); ``view[a:b]`` and
    :meth:`take` are views too (nothing decoded); iteration decodes :data:`CHUNK` rows at a time and keeps
    only the current chunk, and ascending ``view[i]`` access (``for i in rows: view[i]``) is served from
    the chunk read last. ``view + other`` builds a list (it materialises both, for small splits).
    Memory: the file path and, for a view of selected rows, 8 bytes a selected row."""

    def __init__(self, table: _Table | str | os.PathLike, positions: range | np.ndarray | None = None) -> None:
        self._table = table if isinstance(table, _Table) else _Table(Path(table))
        self._pos = range(self._table.rows) if positions is None else positions
        self._block: tuple[int, list[Example]] = (0, [])
        self._last = -2

    @property
    def path(self) -> Path:
        return self._table.path

    def __repr__(self) -> str:
        return f"RecordView({str(self.path)!r}, {len(self)} rows)"

    def __len__(self) -> int:
        return len(self._pos)

    @property
    def positions(self) -> np.ndarray:
        """The file rows this view shows, in its order (int64)."""
        return np.asarray(self._pos, dtype=np.int64)

    def _file_positions(self, start: int, stop: int) -> Sequence[int]:
        return self._pos[start:stop]

    def _decode(self, start: int, stop: int) -> list[Example]:
        return [_example(r) for r in self._table.fetch(self._file_positions(start, stop), ", ".join(FIELDS))]

    def __getitem__(self, index):
        if isinstance(index, slice):
            return RecordView(self._table, self._pos[index])
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"records are indexed by int or slice, got {type(index).__name__}")
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"row {index} is out of range for {n} rows")
        i = int(index) % n
        start, block = self._block
        if not start <= i < start + len(block):
            # A forward walk (enumerate, sorted row lists) reads a chunk; a lone access one row.
            size = CHUNK if 0 <= i - self._last <= 64 else 1
            self._block = start, block = i, self._decode(i, min(n, i + size))
        self._last = i
        return block[i - start]

    def __iter__(self) -> Iterator[Example]:
        for s in range(0, len(self), CHUNK):
            yield from self._decode(s, min(len(self), s + CHUNK))

    def take(self, index: Iterable[int]) -> RecordView:
        """A view of rows ``index`` (in that order) of this view."""
        idx = np.asarray(list(index), dtype=np.int64)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"row index out of range for {len(self)} rows")
        base = np.asarray(self._pos, dtype=np.int64) if isinstance(self._pos, range) else self._pos
        return RecordView(self._table, base[idx % max(1, len(self))] if idx.size else np.zeros(0, np.int64))

    def where(self, column: str, value: Any) -> RecordView:
        """The rows whose ``column`` equals ``value`` (a query on the file; the view keeps their positions)."""
        if column not in FIELDS:
            raise ValueError(f"unknown record column {column!r}; columns: {', '.join(FIELDS)}")
        found = {r[0] for r in self._table.query(f"SELECT pos FROM rows WHERE {column} = ?", (value,))}
        return RecordView(self._table, np.asarray([p for p in self._pos if p in found], dtype=np.int64))

    def column(self, name: str) -> RecordColumn:
        """One field of every row as a lazy sequence (e.g. the image paths, without the other fields)."""
        if name not in FIELDS:
            raise ValueError(f"unknown record column {name!r}; columns: {', '.join(FIELDS)}")
        return RecordColumn(self, name)

    def __add__(self, other):
        return [*self, *other]

    def __radd__(self, other):
        return [*other, *self]

    def info(self) -> dict[str, Any]:
        """The file's ``info`` (reports, row count)."""
        return self._table.info()

    def pool(self) -> list[str]:
        """The file's pairing pool (sorted distinct clips)."""
        return [r[0] for r in self._table.query("SELECT path FROM pool ORDER BY k")]

    def media(self, used: bool = False) -> Iterator[str]:
        """The media paths the file names, sorted: its rows' images and clips, and (unless ``used``) the
        media that failed verification."""
        last, only = "", " AND used = 1" if used else ""
        while True:
            part = self._table.query(f"SELECT path FROM media WHERE path > ?{only} ORDER BY path LIMIT {CHUNK}",
                                     (last,))
            if not part:
                return
            yield from (r[0] for r in part)
            last = part[-1][0]

    def media_changed(self) -> str | None:
        """The first medium whose size or mtime differs from when the file was written (None: none did)."""
        last = ""
        while True:
            part = self._table.query(f"SELECT path, stamp FROM media WHERE path > ? ORDER BY path LIMIT {CHUNK}",
                                     (last,))
            if not part:
                return None
            for path, old in part:
                if stamp(path) != old:
                    return path
            last = part[-1][0]


class RecordColumn(Sequence):
    """One field of a :class:`RecordView`'s rows (``answers`` a tuple, ``meta`` a dict, ``needs_audio`` a
    bool): ``col[i]``, ``col[a:b]`` (a list) and chunked iteration, each reading only that column."""

    def __init__(self, view: RecordView, name: str) -> None:
        self.view, self.name = view, name

    def __len__(self) -> int:
        return len(self.view)

    def _values(self, positions: Sequence[int]) -> list[Any]:
        return [_decode(self.name, r[0]) for r in self.view._table.fetch(positions, self.name)]

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self._values(self.view._pos[index])
        n = len(self)
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not -n <= index < n:
            raise IndexError(f"row {index!r} is not an int in range for {n} rows")
        return self._values([self.view._pos[int(index) % n]])[0]

    def __iter__(self) -> Iterator[Any]:
        for s in range(0, len(self), CHUNK):
            yield from self._values(self.view._pos[s:s + CHUNK])


__all__ = ["CHUNK", "FIELDS", "RecordColumn", "RecordView", "TableWriter", "stamp"]
