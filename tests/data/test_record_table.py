"""Record tables: a data spec's split is read once, streaming, into an SQLite file and served as a lazy
``Sequence[Example]`` that gives exactly the records the in-memory reading gave; an interrupted write never
looks complete; a rerun reuses the file until an input changes; iterating holds one chunk, not the split."""
from __future__ import annotations

import hashlib
import pickle
import socket
import tracemalloc
import zlib
from dataclasses import replace

import numpy as np
import pytest

from safe.data import record_table
from safe.data.readers import read_audiocaps, stream_rows
from safe.data.record_table import CHUNK, RecordView, TableWriter
from safe.data.records import Example
from safe.data.spec import LAYOUTS, load_spec
from safe.data.spec_source import SpecSource, write_stand_in
from tests.data.spec_fixtures import mixed_spec, write_all, write_audiocaps


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    return write_all(tmp_path_factory.mktemp("datasets"))


# --------------------------------------------------------------------------- the reference: the in-memory reading
def _reference(spec, name: str, train: list[Example] | None = None) -> list[Example]:
    """What SpecSource.split returned before record tables (every list in memory): each source read with
    its reader, ids prefixed, sources interleaved in the seeded order, then the pairing rules."""
    rows: list[Example] = []
    for entry in spec.splits[name]:
        got = LAYOUTS[entry.reader].read(**entry.paths, **entry.options, skip_bad=True, verify_media=True)
        for e in got.examples[: entry.limit]:
            rows.append(replace(e, id=f"{e.task}/{e.id}", meta={**e.meta, "source": f"{entry.where} {entry.label()}"}))
    if len(spec.splits[name]) > 1:
        order = np.random.default_rng([spec.seed, zlib.crc32(name.encode())]).permutation(len(rows))
        rows = [rows[i] for i in order]
    pool = sorted({e.audio for e in rows if e.audio is not None})
    if not pool and train is not None:
        pool = sorted({e.audio for e in train})
    stand_in = str(write_stand_in(spec.cache_dir).absolute())
    out = []
    for e in rows:
        changes, meta = {}, dict(e.meta)
        if e.audio is None:
            digest = int(hashlib.sha256(f"{spec.seed}:{name}:{e.id}".encode()).hexdigest()[:16], 16)
            changes["audio"], meta["paired_audio"] = pool[digest % len(pool)], True
        if e.image is None:
            changes["image"], meta["stand_in_image"] = stand_in, True
        out.append(replace(e, **changes, meta=meta) if changes else e)
    return out


def test_splits_give_exactly_the_rows_of_the_in_memory_reading(roots, tmp_path):
    spec_dict = mixed_spec(roots)
    spec_dict["retention"] = [{"reader": "gqa", "root": str(roots["gqa"]), "split": "testdev"}]  # borrows train's pool
    spec = load_spec(spec_dict, base_dir=tmp_path)
    src = SpecSource(spec)
    train = _reference(spec, "train")
    for name in ("train", "val", "test", "retention"):
        view = src.split(name)
        want = train if name == "train" else _reference(spec, name, train)
        assert isinstance(view, RecordView) and len(view) == len(want)
        assert list(view) == want  # same records (answers, meta), same order
        # ... with meta keys in the same order (the fingerprint hashes their repr)
        assert [repr(sorted(e.to_dict().items())) for e in view] == [repr(sorted(e.to_dict().items())) for e in want]
    assert any(e.meta.get("paired_audio") for e in src.split("retention"))
    carved = SpecSource(load_spec(mixed_spec(roots), base_dir=tmp_path))
    derived, rest = list(carved.split("retention")), list(carved.split("train"))
    vl = [e for e in train if not e.needs_audio]  # half of train's VL rows held out, in train's order
    assert len(derived) == len(vl) // 2 and derived == [e for e in vl if e in derived]
    assert rest == [e for e in train if e not in derived]
    assert sorted(p.name.split("-")[0] for p in (tmp_path / ".safe_cache" / "records").glob("*.sqlite")) == \
        ["retention", "test", "train", "val"]


def test_readers_stream_records_to_a_sink(roots):
    root = roots["audiocaps"]
    args = dict(captions_csv=root / "train.csv", audio_dir=root / "audio")
    got: list[Example] = []
    with stream_rows(got.append):
        streamed = read_audiocaps(**args)
    assert streamed.examples == [] and got == read_audiocaps(**args).examples and len(got) == 8


# --------------------------------------------------------------------------- the lazy view
def _rows(n: int) -> list[Example]:
    return [Example(id=f"r{i}", task="t", family=f"f{i % 3}", question=f"q {i}?", answers=(f"a{i}", "b"),
                    image=f"/img/{i}.jpg", audio=None if i % 4 else f"/a/{i}.wav", needs_audio=bool(i % 2),
                    meta={"z": i, "a": [i, "x"], "n": None}) for i in range(n)]


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    rows = _rows(6 * CHUNK + 37)
    with TableWriter(tmp_path_factory.mktemp("t") / "rows.sqlite") as w:
        for e in rows:
            assert w.add(e, "here") is None
        assert w.add(rows[5], "there") == "here"  # a repeated id is refused, naming where it came first
        w.order(None)
        path = w.finish({"rows": len(rows)})
    return RecordView(path), rows


def test_record_view_indexes_slices_and_iterates_like_the_list(table):
    view, rows = table
    assert len(view) == len(rows) and view[0] == rows[0] and view[-1] == rows[-1] and view[CHUNK + 3] == rows[CHUNK + 3]
    assert list(view) == rows
    assert [view[i] for i in range(0, len(rows), 7)] == rows[::7]  # forward walk with gaps
    assert [view[i] for i in (900, 3, 2000, 3)] == [rows[900], rows[3], rows[2000], rows[3]]  # random access
    part = view[10:2000:3]
    assert isinstance(part, RecordView) and list(part) == rows[10:2000:3] and part[-1] == rows[10:2000:3][-1]
    picked = view.take([5, 1, 5, -1])
    assert list(picked) == [rows[5], rows[1], rows[5], rows[-1]] and list(picked[1:3]) == [rows[1], rows[5]]
    assert list(view.column("image")) == [e.image for e in rows] and view.column("answers")[7] == ("a7", "b")
    assert view.column("needs_audio")[:4] == [False, True, False, True] and view.column("meta")[2] == rows[2].meta
    assert list(view.where("needs_audio", 0)) == [e for e in rows if not e.needs_audio]
    assert view[:3] + rows[:1] == rows[:3] + rows[:1] and rows[:1] + view[:2] == rows[:1] + rows[:2]
    again = pickle.loads(pickle.dumps(view[5:9]))  # e.g. into a worker process: reopens the file
    assert list(again) == rows[5:9] and view.info() == {"rows": len(rows)}
    with pytest.raises(IndexError, match="out of range"):
        view[len(rows)]
    with pytest.raises(ValueError, match="unknown record column 'imgae'"):
        view.column("imgae")


def test_iterating_holds_one_chunk_not_the_split(table):
    view, rows = table
    tracemalloc.start()
    try:
        n = sum(1 for _ in view)
        _, peak_view = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        held = list(view)
        _, peak_list = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == len(rows) == len(held)
    assert peak_view < peak_list / 3  # one chunk of 1024 rows, not 6181


def test_an_interrupted_write_never_looks_complete(tmp_path):
    path = tmp_path / "records" / "train-x.sqlite"
    with pytest.raises(RuntimeError):
        with TableWriter(path) as w:
            w.add(_rows(1)[0], "here")
            raise RuntimeError("killed")
    assert not path.exists() and list(path.parent.iterdir()) == []
    host = socket.gethostname()
    orphan = path.with_name(f".{path.name}.{host}-999999999.1.tmp")  # a writer killed outright (no such process)
    orphan.write_bytes(b"half a table")
    elsewhere = path.with_name(f".{path.name}.other-host-999999999.1.tmp")  # another host's writer (shared disk)
    elsewhere.write_bytes(b"being written")
    TableWriter(path).abort()
    assert list(path.parent.iterdir()) == [elsewhere]
    elsewhere.unlink()
    # a split whose reading fails (a corrupt clip with skip_bad false) leaves no table behind
    root = write_audiocaps(tmp_path / "ac", "train", n=3)
    (root / "audio" / "yttrain2_30.wav").write_bytes(b"junk")
    spec = {"train": [{"reader": "audiocaps", "root": str(root), "split": "train", "skip_bad": False}]}
    with pytest.raises(ValueError, match="yttrain2_30.wav"):
        SpecSource(load_spec(spec, base_dir=tmp_path)).split("train")
    assert list((tmp_path / ".safe_cache" / "records").iterdir()) == []


def test_a_rerun_reuses_the_table_until_an_input_changes(tmp_path, monkeypatch):
    root = write_audiocaps(tmp_path / "ac", "train", n=4)
    spec = load_spec({"train": [{"reader": "audiocaps", "root": str(root), "split": "train"}]}, base_dir=tmp_path)
    built = []
    real = TableWriter.__init__
    monkeypatch.setattr(TableWriter, "__init__", lambda self, path: built.append(path) or real(self, path))
    first = SpecSource(spec).split("train")
    again = SpecSource(spec)
    assert list(again.split("train")) == list(first) and len(built) == 1  # reused, not read again
    assert again.reports()["train"]["sources"][0]["rows"] == 4  # the reports come with it
    assert SpecSource(spec, verify_media=False).split("train").path != first.path  # other flags: another table
    csv = root / "train.csv"
    csv.write_text(csv.read_text().splitlines()[0] + "\n" + "\n".join(csv.read_text().splitlines()[2:]) + "\n")
    rows = SpecSource(spec).split("train")  # annotation file changed: read again
    assert [e.id for e in rows] == ["audiocaps/1001", "audiocaps/1002", "audiocaps/1003"] and rows.path != first.path
    n = len(built)
    (root / "audio" / "yttrain3_30.wav").write_bytes(b"junk")  # a medium changed in place: read again
    assert [e.id for e in SpecSource(spec).split("train")] == ["audiocaps/1001", "audiocaps/1002"]
    assert len(built) == n + 1


def test_module_chunk_is_what_the_view_reads():
    assert record_table.CHUNK == CHUNK and CHUNK >= 256
