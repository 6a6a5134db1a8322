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

Other modalities: a source's ``modalities`` (:func:`safe.data.spec._modalities`) names, per extra modality, the
column of its annotation file that gives each row's map (:mod:`safe.data.readers.maps`); a row keeps its maps
as ``meta["modalities"]`` (``{"depth": "/abs/path.npy"}``), the files ``safe predict`` takes for that modality.
With ``verify_media`` every map is decoded once as inference would (``read_map``); the maps are media of the
table (a changed map makes it stale; the fingerprint covers them). A row without a map keeps none (no pairing
rule supplies one); a source none of whose kept rows names a map of a listed modality is an error. A spec that
names maps and has no audio rows at all leaves its VL-only rows without a clip (it trains that modality:
``safe train --modality NAME``, :mod:`safe.data.modality_rows`) instead of failing the clip pairing.

Records on disk: a split is read once, the readers streaming each record into a record table
(:mod:`safe.data.record_table`, ``cache_dir/records/<split>-<key>.sqlite``; the interleaving and the
pairing are queries on that file), and :meth:`SpecSource.split` returns a lazy view of it, so no split is
ever held as ``Example`` objects. The key (:meth:`SpecSource.table_key`) covers what the records are made
from; a table with the same key is reused when no medium it names changed size or mtime since."""
from __future__ import annotations

import functools
import hashlib
import heapq
import json
import os
import re
import zlib
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from safe.atomic import staged_file
from safe.data.readers import DatasetFormatError, stream_rows
from safe.data.readers._common import MAX_PROBLEMS, _Media, _RowError
from safe.data.readers.maps import check_map
from safe.data.record_table import CHUNK, RecordView, TableWriter, stamp
from safe.data.records import Example
from safe.data.spec import LAYOUTS, SPLITS, DataSpec, SourceEntry, SpecError, load_spec, reader_options
from safe.data.verified_media import VerifiedMedia

#: Side of the black stand-in image (pixels); the checkpoint's image processor resizes it anyway.
STAND_IN_SIZE = 224
STAND_IN_NAME = "stand_in_black_224.png"
#: Version of the record tables' layout (part of their key): bump when a table written before would be wrong.
TABLE_FORMAT = 1
_MEDIA = re.compile(r"image file not found|audio file not found|unreadable (image|audio)|no frame for|has no samples"
                    r"|map file not found|unreadable \w+ map")


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
    modalities: dict[str, int] = field(default_factory=dict)  # rows kept with a map of each extra modality

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.where, "reader": self.label, "rows": self.rows, "skipped": self.skipped,
                "problems": self.problems[:5], "media_failures": self.media_failures,
                "media_problems": self.media_problems[:5],
                **({"modalities": dict(self.modalities)} if self.modalities else {})}


def _digest(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:16], 16)


@functools.lru_cache(maxsize=1)
def _code_hash() -> str:
    """Hash of the code that turns files into records (readers, spec, pairing, table format): part of every
    record table's key, so a changed reader never serves records written by the old one."""
    import safe.data.readers as readers

    here = Path(__file__).resolve().parent
    files = sorted(Path(readers.__file__).resolve().parent.glob("*.py"))
    files += [here / n for n in ("records.py", "record_table.py", "spec.py", "spec_source.py")]
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:16]


def write_stand_in(folder: Path) -> Path:
    """The black stand-in PNG in ``folder`` (written once, atomically)."""
    from PIL import Image

    path = folder / STAND_IN_NAME
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        with staged_file(path) as tmp:
            Image.new("RGB", (STAND_IN_SIZE, STAND_IN_SIZE), (0, 0, 0)).save(tmp, format="PNG")
    return path


class SpecSource:
    """The :class:`~safe.data.source.DataSource` of a :class:`~safe.data.spec.DataSpec` (or a spec file).

    Guarantees: :meth:`split` returns the same records in the same order for unchanged files, as a
    :class:`~safe.data.record_table.RecordView` (a lazy ``Sequence[Example]``) over the split's record
    table in ``cache_dir/records`` (module docstring: read once, reused while its inputs are unchanged);
    every record has an existing image and clip (the pairing rules of the module docstring) and a
    split-unique id; ``split`` raises ``ValueError`` (:class:`SpecError`) for a split the spec does not
    give and for a split that is empty after skips. ``retention`` exists when the spec lists it or train
    has VL-only rows (then it is held out: those rows leave train, see :meth:`_held_out`). :meth:`fingerprint` covers the resolved spec, every record of every split and the
    size and mtime of every medium. :meth:`reports` gives, per split, what each source read and skipped
    (``safe data check`` prints it). Memory does not grow with the number of rows.

    ``skip_bad`` / ``verify_media`` given here replace the spec's (``safe data check`` reads with
    ``skip_bad=True`` to count every problem instead of stopping at the first).
    """

    name = "spec"

    def __init__(self, spec: DataSpec | str | os.PathLike, *, skip_bad: bool | None = None,
                 verify_media: bool | None = None) -> None:
        self.spec = spec if isinstance(spec, DataSpec) else load_spec(spec)
        self._skip_bad, self._verify = skip_bad, verify_media
        self._views: dict[str, RecordView] = {}
        self._reports: dict[str, list[EntryReport]] = {}
        self._keys: dict[str, str] = {}
        self._sources: dict[tuple[str, str], Any] = {}
        self._fingerprint: str | None = None
        self._held: np.ndarray | None = None  # train positions held out as the retention buffer
        self._train_view: RecordView | None = None

    def __repr__(self) -> str:
        return f"SpecSource({str(self.spec.path) if self.spec.path else 'mapping'!r})"

    @property
    def cache_dir(self) -> Path:
        """The spec's ``cache_dir`` (default ``.safe_cache`` beside the spec file): embeddings, stand-in image,
        record tables."""
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

    def _flags(self, entry: SourceEntry) -> tuple[bool, bool]:
        return (entry.skip_bad if self._skip_bad is None else self._skip_bad,
                entry.verify_media if self._verify is None else self._verify)

    def table_key(self, name: str) -> str:
        """The key of split ``name``'s record table: the code that reads it, the seed and stand-in, each
        source's resolved entry and effective flags, the size and mtime of its annotation files and media
        folders (a file added or removed changes a folder's mtime) or a registry source's fingerprint,
        and for a split other than train, train's key (its clips may be the pairing pool)."""
        if name not in self._keys:
            parts: list[Any] = [TABLE_FORMAT, _code_hash(), name, self.spec.seed, str(self.spec.stand_in_image)]
            for entry in self.spec.splits[name]:
                inputs = ({k: stamp(str(p)) for k, p in sorted(entry.paths.items())} if entry.is_dataset
                          else self._open(entry).fingerprint())
                if entry.options.get("modalities"):  # a map added or removed changes its folder's mtime
                    inputs = [inputs, {k: stamp(v["dir"]) for k, v in sorted(entry.options["modalities"].items())}]
                parts.append([entry.to_dict(), self._flags(entry), inputs])
            if name != "train" and "train" in self.spec.splits:
                parts.append(self.table_key("train"))
            self._keys[name] = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]
        return self._keys[name]

    def _read_entry(self, name: str, entry: SourceEntry, out: TableWriter) -> EntryReport:
        """Stream ``entry``'s good rows into ``out`` (ids ``<task>/<id>``, ``meta["source"]``)."""
        report = EntryReport(entry.where, entry.label())
        origin = f"{entry.where} {entry.label()}"
        skip, verify = self._flags(entry)

        maps = sorted(entry.options.get("modalities") or {}) if entry.is_dataset else []
        report.modalities = dict.fromkeys(maps, 0)

        def keep(e: Example) -> None:
            uid = f"{e.task}/{e.id}"
            first = out.add(replace(e, id=uid, meta={**e.meta, "source": origin}), entry.where)
            if first is not None:
                raise SpecError(f"split {name!r}: id {uid!r} comes from both {first} and {entry.where}; "
                                "a row listed twice would be trained or scored twice")
            extra = e.meta.get("modalities") or {}
            out.add_media((p for p in (e.image, e.audio, *extra.values()) if p), used=True)
            for m in extra:
                report.modalities[m] = report.modalities.get(m, 0) + 1
            report.rows += 1

        if not entry.is_dataset:
            for e in self._open(entry).split(entry.split)[: entry.limit]:
                keep(e)
            return report
        media = _Media(verify)
        checked = VerifiedMedia(self.cache_dir) if verify else None
        failed: list[str] = []  # verification failures, appended after the reader's own problems
        failures = 0

        def sink(e: Example) -> None:  # each record as the reader builds it (existence checks done)
            nonlocal failures
            if entry.limit is not None and report.rows >= entry.limit:
                return  # a limit of 1000 over a 200k-row file decodes about 1000 clips
            path = None
            checks = [(e.image, media.image), (e.audio, media.audio)]
            if verify:  # the reader checked that each map exists; decoding it is verification
                checks += [(p, functools.partial(check_map, name=m)) for m, p in (e.meta.get("modalities") or {}).items()]
            try:
                for path, check in checks:
                    if path is not None and not (checked is not None and checked.known(path)):
                        check(Path(path))
                        if checked is not None:
                            checked.add(path)
            except _RowError as err:
                msg = f"{entry.where} {entry.label()}: row id {e.id!r}: {err}"
                if not skip:
                    raise DatasetFormatError(msg) from None
                out.add_media([path], used=False)  # a repaired file makes the table stale
                failures += 1
                if len(failed) < MAX_PROBLEMS:
                    failed.append(msg)
                return
            keep(e)

        with stream_rows(sink):
            result = LAYOUTS[entry.reader].read_in(self.cache_dir, **entry.paths, **reader_options(entry), skip_bad=skip,
                                                   verify_media=False)
        if checked is not None:
            checked.commit()
        report.problems = list(result.problems)
        report.media_problems = [p for p in report.problems if _MEDIA.search(p)]  # the reader's existence checks
        report.skipped = result.skipped + failures
        report.media_failures = len(report.media_problems) + failures
        for msg in failed:
            if len(report.problems) < MAX_PROBLEMS:
                report.problems.append(msg)
                report.media_problems.append(msg)
        unnamed = [m for m in maps if not report.modalities[m]]
        if report.rows and unnamed:  # a misspelt JSON key reads as "no map" on every row: say so, not train blind
            cols = entry.options["modalities"]
            raise SpecError(f"{entry.where} {entry.label()}: modalities: no row of its {report.rows} kept names a "
                            + ", ".join(f"{m} map (column {cols[m]['column']!r})" for m in unnamed)
                            + "; check the column name against the annotation file")
        return report

    def _build(self, name: str, path: Path) -> RecordView:
        """Read split ``name`` into a new record table at ``path``: sources in order, then the seeded
        interleaving, then the pairing rules, each as queries on the file."""
        entries = self.spec.splits[name]
        with TableWriter(path) as out:
            reports = [self._read_entry(name, entry, out) for entry in entries]
            if not out.rows:
                detail = "; ".join(f"{r.where} {r.label}: {r.rows} rows, {r.skipped} skipped"
                                   + (f" (first: {r.problems[0]})" if r.problems else "") for r in reports)
                raise SpecError(f"split {name!r} is empty: {detail}")
            order = None
            if len(entries) > 1:
                order = np.random.default_rng([self.spec.seed, zlib.crc32(name.encode())]).permutation(out.rows)
            out.order(order)
            pool = out.fill_pool()
            if not pool and out.has("audio IS NULL") and name != "train" and "train" in self.spec.splits:
                borrowed = self._table("train").pool()
                pool = out.fill_pool(borrowed)
                out.add_media(borrowed, used=True)  # this table names them now: a changed clip makes it stale
            stand_in = self._stand_in() if out.has("image IS NULL") else ""  # written only when needed
            try:
                self._pair(name, out, pool, stand_in)
            except SpecError as err:
                # A pairing failure is most often a source that lost every row (a wrong audio_dir): say so.
                lost = [r for r in reports + (self._reports.get("train", []) if name != "train" else [])
                        if r.rows == 0 and r.skipped]
                if not lost:
                    raise
                raise SpecError("; ".join(f"{r.where} {r.label}: 0 rows, {r.skipped} skipped"
                                          + (f" (first: {r.problems[0]})" if r.problems else "") for r in lost)
                                + f" (so {err})") from None
            out.finish({"reports": [asdict(r) for r in reports]})
        self._reports[name] = reports
        return RecordView(path)

    def _pair(self, name: str, out: TableWriter, pool: int, stand_in: str) -> None:
        """The pairing rules (module docstring) on the rows of ``out`` that lack a clip or an image: a row
        without a clip gets ``pool[hash(seed, split, id) % len(pool)]``, one without an image ``stand_in``."""
        changes: list[tuple[int, Example]] = []
        for pos, e in out.incomplete():
            fix: dict[str, Any] = {}
            meta = dict(e.meta)
            if e.audio is None:
                if e.needs_audio:  # the readers never build this; a plug-in source might
                    raise SpecError(f"row {e.id!r} ({meta.get('source')}) needs audio but has no clip")
                if pool:
                    fix["audio"] = out.pool_path(_digest(f"{self.spec.seed}:{name}:{e.id}") % pool)
                    meta["paired_audio"] = True
                elif not self._lists_maps():
                    raise SpecError(f"split {name!r}: VL-only row {e.id!r} needs an unrelated clip, but the spec has "
                                    "no audio rows to pair it with (add an audio source to this split or to train)")
            if e.image is None:
                fix["image"] = stand_in
                meta["stand_in_image"] = True
            changes.append((pos, replace(e, **fix, meta=meta)))
            if len(changes) >= CHUNK:
                out.update(changes)
                changes = []
        out.update(changes)
        if stand_in:
            out.add_media([stand_in], used=True)

    def _lists_maps(self) -> bool:
        """A source of the spec names maps of another modality: a spec without audio then trains that modality
        (``safe train --modality``), so its VL-only rows keep no clip instead of failing the pairing."""
        return any(e.options.get("modalities") for entries in self.spec.splits.values() for e in entries)

    def _table(self, name: str) -> RecordView:
        """Split ``name``'s record table: the one in ``cache_dir/records`` when its key matches and no medium
        it names changed since, else read anew."""
        if name not in self._views:
            path = self.cache_dir / "records" / f"{name}-{self.table_key(name)}.sqlite"
            view = RecordView(path) if path.is_file() else None
            if view is not None and view.media_changed() is None:
                self._reports[name] = [EntryReport(**r) for r in view.info()["reports"]]
            else:
                view = self._build(name, path)
            self._views[name] = view
        return self._views[name]

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
            return len(self._retention()) > 0
        return False

    def _held_out(self) -> np.ndarray:
        """Positions in train's table of the retention buffer carved out of it (the spec lists no retention
        split): ``retention_size`` of its VL-only rows, at most half, those with the smallest
        ``sha256(seed:retention:id)`` (independent of the rows' order), in file order. A row naming a map of
        another modality is that modality's training row, never a retention row."""
        if self._held is None:
            table = self._table("train")
            vl = table.where("needs_audio", 0)
            if self._lists_maps():
                vl = vl.take([k for k, m in enumerate(vl.column("meta")) if not (m or {}).get("modalities")])
            n = min(self.spec.retention_size, len(vl) // 2)
            keys = [(hashlib.sha256(f"{self.spec.seed}:retention:{i}".encode()).digest(), k)
                    for k, i in enumerate(vl.column("id"))]
            chosen = sorted(k for _, k in heapq.nsmallest(n, keys))
            self._held = vl.positions[chosen] if chosen else np.zeros(0, np.int64)
        return self._held

    def _retention(self) -> RecordView:
        if "retention" not in self._views:
            self._views["retention"] = self._table("train").take(self._held_out())
        return self._views["retention"]

    def _train(self) -> RecordView:
        """Train without the rows held out for the retention buffer (all of train when the spec lists one)."""
        if "retention" in self.spec.splits:
            return self._table("train")
        if self._train_view is None:
            table = self._table("train")
            self._train_view = table.take(np.setdiff1d(np.arange(len(table), dtype=np.int64), self._held_out()))
        return self._train_view

    def retention_source(self) -> dict[str, Any]:
        """Where the retention buffer comes from and its size (a run records it in ``metrics.json``)."""
        rows = len(self.split("retention"))
        if "retention" in self.spec.splits:
            return {"source": "the spec's retention: split", "rows": rows, "held_out": True}
        return {"source": f"held out of train: {rows} of its VL-only rows (retention_size "
                          f"{self.spec.retention_size}, at most half), excluded from train", "rows": rows,
                "held_out": True}

    def split(self, name: str) -> RecordView:
        """The records of split ``name``, paired (module docstring), as a lazy read-only sequence; without a
        ``retention`` list, ``train`` lacks the rows held out as the retention buffer."""
        if name == "train" and self.has_split("train"):
            return self._train()
        if name in self.spec.splits and self.has_split(name):
            return self._table(name)
        if name == "retention" and "train" in self.spec.splits:
            vl = self._retention()
            if not len(vl):
                raise SpecError("the spec lists no retention split and train has no VL-only rows (needs_audio "
                                "false, e.g. VQAv2 or GQA) to derive it from: add such rows to train or list "
                                "a retention: split")
            return vl
        listed = [s for s in SPLITS if s in self.spec.splits]
        where = f"the data spec {self.spec.path}" if self.spec.path else "the data spec"
        raise SpecError(f"{where} gives no {name!r} split (it gives: {', '.join(listed)}); "
                        f"add a {name}: list of sources")

    # ------------------------------------------------------------------ identity and reports
    def available_splits(self) -> list[str]:
        """The splits this source gives, in :data:`~safe.data.spec.SPLITS` order."""
        return [s for s in SPLITS if self.has_split(s)]

    def fingerprint(self) -> str:
        """sha256 (16 hex) of the resolved spec, every split's records and every medium's size and mtime."""
        if self._fingerprint is None:
            h = hashlib.sha256(self.spec.canonical().encode())
            names = self.available_splits()
            for name in names:
                for e in self.split(name):
                    h.update(repr(sorted(e.to_dict().items())).encode())
            # The media of every split's rows, sorted and distinct, merged from the tables (never all in memory).
            tables = [self._table(n) for n in names if n in self.spec.splits]
            last = None
            for p in heapq.merge(*(t.media(used=True) for t in tables)):
                if p != last:
                    st = Path(p).stat()
                    h.update(f"{p}:{st.st_size}:{st.st_mtime_ns}".encode())
                    last = p
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def reports(self) -> dict[str, dict[str, Any]]:
        """Per split: ``rows``, ``tasks`` (rows per task), ``audio_dependent_share``, ``paired_audio`` and
        ``stand_in_image`` (rows the pairing rules completed) and ``sources`` (:class:`EntryReport` dicts)."""
        out: dict[str, dict[str, Any]] = {}
        for name in self.available_splits():
            rows = self.split(name)
            derived = name not in self.spec.splits
            paired = stand_in = 0
            maps: Counter = Counter()
            for meta in rows.column("meta"):
                paired += bool(meta.get("paired_audio"))
                stand_in += bool(meta.get("stand_in_image"))
                maps.update(list(meta.get("modalities") or ()))  # the names, not the paths
            out[name] = {
                "rows": len(rows), "derived_from_train": derived,
                "tasks": dict(sorted(Counter(rows.column("task")).items())),
                "audio_dependent_share": sum(rows.column("needs_audio")) / len(rows),
                "paired_audio": paired, "stand_in_image": stand_in,
                "sources": [] if derived else [r.to_dict() for r in self._reports[name]],
                **({"modalities": dict(sorted(maps.items()))} if maps else {}),
            }
        return out

    def summary(self) -> dict[str, Any]:
        """What a run records about its data (``metrics.json``): spec file, fingerprint, audio_share and a
        short per-split table (rows, skipped, tasks, audio-dependent share)."""
        reps = self.reports()
        return {"spec": str(self.spec.path) if self.spec.path else None, "fingerprint": self.fingerprint(),
                "audio_share": self.spec.audio_share, "seed": self.spec.seed,
                "splits": {k: {"rows": v["rows"], "skipped": sum(s["skipped"] for s in v["sources"]),
                               "tasks": v["tasks"], "audio_dependent_share": round(v["audio_dependent_share"], 4),
                               **({"modalities": v["modalities"]} if "modalities" in v else {})}
                           for k, v in reps.items()}}


__all__ = ["EntryReport", "SpecSource", "TABLE_FORMAT", "VerifiedMedia", "write_stand_in"]
