"""Write-then-rename: every file and folder SAFE writes appears complete or not at all.

A reader (another process, a crash-restarted run, ``safe report`` while a stage writes) never sees half a
file: the content goes to a temporary name in the same folder, then ``os.replace`` (atomic on POSIX and
Windows) puts it in place. On an exception the temporary is removed and the old file, if any, stays.
This module imports nothing from the rest of the package, so every layer may use it.
"""
from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["staged_dir", "staged_file", "write_atomic"]


@contextmanager
def staged_file(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` (same folder, same suffix, so writers that pick a format from the
    suffix still do) for the block to write; renamed over ``path`` when the block ends without an exception,
    otherwise deleted."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A fresh name the writer creates itself, so the file gets the usual permissions (mkstemp's are 0600).
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{secrets.token_hex(4)}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8 with ``\\n`` line ends, or bytes) to ``path`` through :func:`staged_file`."""
    path = Path(path)
    with staged_file(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data if isinstance(data, bytes) else data.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
    return path


@contextmanager
def staged_dir(out: str | os.PathLike, what: str) -> Iterator[Path]:
    """A temporary folder beside ``out`` to fill; when the block ends without an exception it replaces
    ``out`` (removed first), otherwise it is deleted: a half-written folder never looks complete. ``what``
    names the work in the temporary folder's name (``building``, ``converting``)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-{what}-"))
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
