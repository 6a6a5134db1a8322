"""The media of a data spec that passed verification, remembered across runs (:class:`VerifiedMedia`)."""
from __future__ import annotations

import os
from pathlib import Path


class VerifiedMedia:
    """Media files that passed verification, keyed by path, size and mtime, in ``<cache_dir>/verified_media.sqlite``:
    later reads of the spec (every stage, every process) decode each unchanged file once, not once per run.
    Only successes are stored, so a file that failed is checked again next time."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "verified_media.sqlite"
        self._db = None
        self._new: list[tuple[str, str]] = []

    @staticmethod
    def _stamp(path: str) -> str | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return f"{st.st_size}:{st.st_mtime_ns}"

    def _conn(self):
        if self._db is None:
            import sqlite3

            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), timeout=60)
            self._db.execute("CREATE TABLE IF NOT EXISTS ok (path TEXT PRIMARY KEY, stamp TEXT NOT NULL)")
        return self._db

    def known(self, path: str) -> bool:
        stamp = self._stamp(path)
        row = self._conn().execute("SELECT stamp FROM ok WHERE path = ?", (path,)).fetchone()
        return stamp is not None and row is not None and row[0] == stamp

    def add(self, path: str) -> None:
        stamp = self._stamp(path)
        if stamp is not None:
            self._new.append((path, stamp))
            if len(self._new) >= 4096:  # bounded memory on a large split
                self.commit()

    def commit(self) -> None:
        if self._new:
            with self._conn() as db:
                db.executemany("INSERT OR REPLACE INTO ok (path, stamp) VALUES (?, ?)", self._new)
            self._new = []


__all__ = ["VerifiedMedia"]
