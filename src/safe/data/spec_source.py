"""A data spec (:mod:`safe.data.spec`) as a :class:`~safe.data.source.DataSource`: reading, pairing, checking.

Reading a split: each source in the order listed; a dataset reader reads its annotation file with
existence checks only, keeps the first ``limit`` rows whose media open (``verify_media``: the image
passes ``PIL`` verification, the clip decodes to at least one sample); a bad row or medium is a
counted skip (``skip_bad: true``, the default) or a :class:`~safe.data.readers.DatasetFormatError`
naming the file and row. Media that passed are remembered by path, size and mtime in ``cache_dir``
(:class:`VerifiedMedia`), so later runs decode only new or changed files. Ids become ``<task>/<id>`` (AVQA and MUSIC-AVQA both number their questions
from 0); the same id twice in one split is an error. A split of one source keeps its order; a split
of several is interleaved in a random order drawn from ``(seed, split name)``, so any prefix (the
policy's ``train_rows``, ``max_train``) is a mixture. A split that ends up empty is an error.

Pairing rules (every stage needs an image and a clip per row; deterministic given the spec's ``seed``):

* VL-only rows without a clip (VQAv2, GQA): an unrelated clip from the audio pool, the sorted
  distinct clips of the split's own rows with audio (train's when the split has none). Row ``r``
  of split ``s`` gets ``pool[sha256(f"{seed}:{s}:{r.id}") mod len(pool)]``, so its clip does not
  depend on the other rows' order. ``needs_audio`` stays false: the retention loss and the
  "irrelevant audio" tests run these rows with the gate open on audio that must not matter, as the
  built-in benchmark's retention split does. ``meta["paired_audio"] = True``.
* Audio rows without a frame (AudioCaps, VGGSound without ``frames_dir``; Clotho): the stand-in
  image, a black 224 x 224 RGB PNG written once into ``cache_dir`` (or ``pairing.stand_in_image``).
  AudioCaps and VGGSound use the dataset's own key frame when the source names ``frames_dir``.
  ``meta["stand_in_image"] = True``.
* Audio-visual rows (AVQA, MUSIC-AVQA) and the built-in benchmark: their own frame and clip,
  unchanged (MUSIC-AVQA's visual questions keep their own soundtrack, ``needs_audio`` false).

Every row also gets ``meta["source"]`` (e.g. ``"train[1] vqav2:train2014"``).
"""
from __future__ import annotations

import hashlib
import os
import re
import zlib
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from safe.data.readers import DatasetFormatError
from safe.data.readers._common import MAX_PROBLEMS, _Media, _RowError
from safe.data.records import Example
from safe.data.spec import LAYOUTS, SPLITS, DataSpec, SourceEntry, SpecError, load_spec

#: Side of the black stand-in image (pixels); the checkpoint's image processor resizes it anyway.
STAND_IN_SIZE = 224
STAND_IN_NAME = "stand_in_black_224.png"
_MEDIA = re.compile(r"image file not found|audio file not found|unreadable (image|audio)|no frame for|has no samples")


@dataclass
class EntryReport:
    """What reading one source gave: rows kept, rows skipped with the first reasons (``MAX_PROBLEMS`` kept),
    media that could not be opened (the reader's missing files among its first reasons, plus every medium
    that failed to open or decode)."""

    where: str
    label: str
    rows: int = 0
    skipped: int = 0
    problems: list[str] = field(default_factory=list)
    media_problems: list[str] = field(default_factory=list)
    media_failures: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.where, "reader": self.label, "rows": self.rows, "skipped": self.skipped,
                "problems": self.problems[:5], "media_failures": self.media_failures,
                "media_problems": self.media_problems[:5]}


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

    def commit(self) -> None:
        if self._new:
            with self._conn() as db:
                db.executemany("INSERT OR REPLACE INTO ok (path, stamp) VALUES (?, ?)", self._new)
            self._new = []


def _digest(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:16], 16)


def pair_rows(rows: list[Example], pool: list[str], *, seed: int, split: str, stand_in: str) -> list[Example]:
    """The pairing rules (module docstring) applied to ``rows``: a row without a clip gets
    ``pool[hash(seed, split, id) % len(pool)]``, a row without an image gets ``stand_in``."""
    out = []
    for e in rows:
        changes: dict[str, Any] = {}
        meta = dict(e.meta)
        if e.audio is None:
            if e.needs_audio:  # the readers never build this; a plug-in source might
                raise SpecError(f"row {e.id!r} ({meta.get('source')}) needs audio but has no clip")
            if not pool:
                raise SpecError(f"split {split!r}: VL-only row {e.id!r} needs an unrelated clip, but the spec has no "
                                "audio rows to pair it with (add an audio source to this split or to train)")
            changes["audio"] = pool[_digest(f"{seed}:{split}:{e.id}") % len(pool)]
            meta["paired_audio"] = True
        if e.image is None:
            changes["image"] = stand_in
            meta["stand_in_image"] = True
        out.append(replace(e, **changes, meta=meta) if changes else e)
    return out


def audio_pool(rows: list[Example]) -> list[str]:
    """The sorted distinct clips of the rows that have one (the pool VL-only rows are paired from)."""
    return sorted({e.audio for e in rows if e.audio is not None})


def write_stand_in(folder: Path) -> Path:
    """The black stand-in PNG in ``folder`` (written once, atomically)."""
    from PIL import Image

    path = folder / STAND_IN_NAME
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        Image.new("RGB", (STAND_IN_SIZE, STAND_IN_SIZE), (0, 0, 0)).save(tmp, format="PNG")
        os.replace(tmp, path)
    return path


class SpecSource:
    """The :class:`~safe.data.source.DataSource` of a :class:`~safe.data.spec.DataSpec` (or a spec file).

    Guarantees: :meth:`split` returns the same records in the same order for unchanged files (read once
    per instance, then cached); every record has an existing image and clip (the pairing rules of the
    module docstring) and a split-unique id; ``split`` raises ``ValueError`` (:class:`SpecError`) for a
    split the spec does not give and for a split that is empty after skips. ``retention`` exists when
    the spec lists it or train has VL-only rows. :meth:`fingerprint` covers the resolved spec, every
    record of every split and the size and mtime of every medium. :meth:`reports` gives, per split, what
    each source read and skipped (``safe data check`` prints it).

    ``skip_bad`` / ``verify_media`` given here replace the spec's (``safe data check`` reads with
    ``skip_bad=True`` to count every problem instead of stopping at the first).
    """

    name = "spec"

    def __init__(self, spec: DataSpec | str | os.PathLike, *, skip_bad: bool | None = None,
                 verify_media: bool | None = None) -> None:
        self.spec = spec if isinstance(spec, DataSpec) else load_spec(spec)
        self._skip_bad, self._verify = skip_bad, verify_media
        self._raw: dict[str, list[Example]] = {}
        self._paired: dict[str, list[Example]] = {}
        self._reports: dict[str, list[EntryReport]] = {}
        self._sources: dict[tuple[str, str], Any] = {}
        self._fingerprint: str | None = None

    def __repr__(self) -> str:
        return f"SpecSource({str(self.spec.path) if self.spec.path else 'mapping'!r})"

    @property
    def cache_dir(self) -> Path:
        """The spec's ``cache_dir`` (default ``.safe_cache`` beside the spec file): embeddings, stand-in image."""
        return self.spec.cache_dir

    @property
    def audio_share(self) -> float | None:
        """The spec's ``audio_share`` (None when not given: the recipe's own applies)."""
        return self.spec.audio_share

    # ------------------------------------------------------------------ reading
    def _open(self, entry: SourceEntry):
        from safe.data.source import open_source

        key = (entry.reader, str(entry.root))
        if key not in self._sources:
            try:
                self._sources[key] = open_source(entry.reader, entry.root, **entry.options)
            except TypeError as err:
                raise SpecError(f"{entry.where}: reader {entry.reader!r} does not take the fields "
                                f"{sorted(entry.options)}: {err}") from None
        return self._sources[key]

    def _read_entry(self, entry: SourceEntry) -> tuple[list[Example], EntryReport]:
        report = EntryReport(entry.where, entry.label())
        skip = entry.skip_bad if self._skip_bad is None else self._skip_bad
        verify = entry.verify_media if self._verify is None else self._verify
        if not entry.is_dataset:
            rows = self._open(entry).split(entry.split)[: entry.limit]
            report.rows = len(rows)
            return rows, report
        layout = LAYOUTS[entry.reader]
        # Existence checks only while reading: verification (decoding) is done below on the rows kept, so a
        # limit of 1000 over a 200k-row file decodes about 1000 clips.
        result = layout.read(**entry.paths, **entry.options, skip_bad=skip, verify_media=False)
        report.skipped, report.problems = result.skipped, list(result.problems)
        media = _Media(verify)
        checked = VerifiedMedia(self.cache_dir) if verify else None
        report.media_problems = [p for p in report.problems if _MEDIA.search(p)]  # the reader's existence checks
        report.media_failures = len(report.media_problems)
        kept: list[Example] = []
        for e in result.examples:
            if entry.limit is not None and len(kept) >= entry.limit:
                break
            try:
                for path, check in ((e.image, media.image), (e.audio, media.audio)):
                    if path is not None and not (checked is not None and checked.known(path)):
                        check(Path(path))
                        if checked is not None:
                            checked.add(path)
            except _RowError as err:
                msg = f"{entry.where} {entry.label()}: row id {e.id!r}: {err}"
                if not skip:
                    raise DatasetFormatError(msg) from None
                report.skipped += 1
                report.media_failures += 1
                if len(report.problems) < MAX_PROBLEMS:
                    report.problems.append(msg)
                    report.media_problems.append(msg)
                continue
            kept.append(e)
        if checked is not None:
            checked.commit()
        report.rows = len(kept)
        return kept, report

    def _read(self, name: str) -> list[Example]:
        if name in self._raw:
            return self._raw[name]
        entries = self.spec.splits[name]
        rows: list[Example] = []
        reports: list[EntryReport] = []
        seen: dict[str, str] = {}
        for entry in entries:
            part, report = self._read_entry(entry)
            reports.append(report)
            for e in part:
                uid = f"{e.task}/{e.id}"
                if uid in seen:
                    raise SpecError(f"split {name!r}: id {uid!r} comes from both {seen[uid]} and {entry.where}; "
                                    "a row listed twice would be trained or scored twice")
                seen[uid] = entry.where
                rows.append(replace(e, id=uid, meta={**e.meta, "source": f"{entry.where} {entry.label()}"}))
        if not rows:
            detail = "; ".join(f"{r.where} {r.label}: {r.rows} rows, {r.skipped} skipped"
                               + (f" (first: {r.problems[0]})" if r.problems else "") for r in reports)
            raise SpecError(f"split {name!r} is empty: {detail}")
        if len(entries) > 1:
            order = np.random.default_rng([self.spec.seed, zlib.crc32(name.encode())]).permutation(len(rows))
            rows = [rows[i] for i in order]
        self._raw[name], self._reports[name] = rows, reports
        return rows

    def _stand_in(self) -> str:
        if self.spec.stand_in_image != "black":
            return str(self.spec.stand_in_image)
        return str(write_stand_in(self.cache_dir).absolute())

    def has_split(self, name: str) -> bool:
        """Whether ``split(name)`` has rows to give: listed in the spec (for the top-level form: the source
        has it), or ``retention`` derivable from train's VL-only rows."""
        if name in self.spec.splits:
            return all(not e.implicit or self._open(e).has_split(e.split) for e in self.spec.splits[name])
        if name == "retention" and self.has_split("train"):
            return any(not e.needs_audio for e in self._read("train"))
        return False

    def split(self, name: str) -> list[Example]:
        """The records of split ``name``, paired (module docstring); a copy of the cached list."""
        if name not in self._paired:
            if name in self.spec.splits and self.has_split(name):
                raw = self._read(name)
                pool = audio_pool(raw)
                if not pool and any(e.audio is None for e in raw) and name != "train" and "train" in self.spec.splits:
                    pool = audio_pool(self._read("train"))
                stand_in = self._stand_in() if any(e.image is None for e in raw) else ""  # written only when needed
                self._paired[name] = pair_rows(raw, pool, seed=self.spec.seed, split=name, stand_in=stand_in)
            elif name == "retention" and "train" in self.spec.splits:
                vl = [e for e in self.split("train") if not e.needs_audio]
                if not vl:
                    raise SpecError("the spec lists no retention split and train has no VL-only rows (needs_audio "
                                    "false, e.g. VQAv2 or GQA) to derive it from: add such rows to train or list "
                                    "a retention: split")
                self._paired[name] = vl
            else:
                listed = [s for s in SPLITS if s in self.spec.splits]
                where = f"the data spec {self.spec.path}" if self.spec.path else "the data spec"
                raise SpecError(f"{where} gives no {name!r} split (it gives: {', '.join(listed)}); "
                                f"add a {name}: list of sources")
        return list(self._paired[name])

    # ------------------------------------------------------------------ identity and reports
    def available_splits(self) -> list[str]:
        """The splits this source gives, in :data:`~safe.data.spec.SPLITS` order."""
        return [s for s in SPLITS if self.has_split(s)]

    def fingerprint(self) -> str:
        """sha256 (16 hex) of the resolved spec, every split's records and every medium's size and mtime."""
        if self._fingerprint is None:
            h = hashlib.sha256(self.spec.canonical().encode())
            media: set[str] = set()
            for name in self.available_splits():
                for e in self.split(name):
                    h.update(repr(sorted(e.to_dict().items())).encode())
                    media.update(p for p in (e.image, e.audio) if p)
            for p in sorted(media):
                st = Path(p).stat()
                h.update(f"{p}:{st.st_size}:{st.st_mtime_ns}".encode())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def reports(self) -> dict[str, dict[str, Any]]:
        """Per split: ``rows``, ``tasks`` (rows per task), ``audio_dependent_share``, ``paired_audio`` and
        ``stand_in_image`` (rows the pairing rules completed) and ``sources`` (:class:`EntryReport` dicts)."""
        out: dict[str, dict[str, Any]] = {}
        for name in self.available_splits():
            rows = self.split(name)
            derived = name not in self.spec.splits
            out[name] = {
                "rows": len(rows), "derived_from_train": derived,
                "tasks": dict(sorted(Counter(e.task for e in rows).items())),
                "audio_dependent_share": sum(e.needs_audio for e in rows) / len(rows),
                "paired_audio": sum(bool(e.meta.get("paired_audio")) for e in rows),
                "stand_in_image": sum(bool(e.meta.get("stand_in_image")) for e in rows),
                "sources": [] if derived else [r.to_dict() for r in self._reports[name]],
            }
        return out

    def summary(self) -> dict[str, Any]:
        """What a run records about its data (``metrics.json``): spec file, fingerprint, audio_share and a
        short per-split table (rows, skipped, tasks, audio-dependent share)."""
        reps = self.reports()
        return {"spec": str(self.spec.path) if self.spec.path else None, "fingerprint": self.fingerprint(),
                "audio_share": self.spec.audio_share, "seed": self.spec.seed,
                "splits": {k: {"rows": v["rows"], "skipped": sum(s["skipped"] for s in v["sources"]),
                               "tasks": v["tasks"], "audio_dependent_share": round(v["audio_dependent_share"], 4)}
                           for k, v in reps.items()}}


__all__ = ["EntryReport", "SpecSource", "VerifiedMedia", "audio_pool", "pair_rows", "write_stand_in"]
