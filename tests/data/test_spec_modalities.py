"""A second modality in a user's own data: a source's ``modalities`` names, per extra modality, the column of its
annotation file that gives each row's map; the rows carry the maps ``safe predict`` takes (``.npy`` or image),
validated (errors name the file, row and problem), counted, and part of the table's key and the fingerprint."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from safe.data.readers import DatasetFormatError, MapColumn, read_avqa
from safe.data.spec import SpecError, load_spec
from safe.data.spec_source import SpecSource
from safe.processing.modalities import ImageModalityFrontEnd, read_map
from tests.data.spec_fixtures import write_audiocaps, write_avqa, write_vggsound, write_vqav2


def _depth(path: Path, value: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.full((8, 8), value, dtype=np.float32))
    return path


def _with_depth(root: Path, split: str = "train", skip: tuple[int, ...] = (), key: str = "depth_file") -> Path:
    """AVQA rows with a depth map each (``depth/<video>.npy``; a 16-bit PNG for row 1), none for ``skip``."""
    qa = root / f"{split}_qa.json"
    rows = json.loads(qa.read_text())
    for i, r in enumerate(rows):
        if i in skip:
            continue
        if i == 1:
            Image.fromarray(np.full((8, 8), 1234, dtype=np.uint16)).save(root / "depth" / f"{r['video_name']}.png")
            r[key] = f"{r['video_name']}.png"
        else:
            _depth(root / "depth" / f"{r['video_name']}.npy", 1.0 + i)
            r[key] = f"{r['video_name']}.npy"
    qa.write_text(json.dumps(rows))
    return root


def _audiocaps_with_depth(root: Path) -> Path:
    """AudioCaps' CSV with a ``depth`` column (maps under ``root/maps``; row 2's cell empty: no map)."""
    path = root / "train.csv"
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    rows[0].append("depth")
    for i, r in enumerate(rows[1:]):
        r.append("" if i == 2 else _depth(root / "maps" / f"{r[1]}.npy", 2.0).name)
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    return root


@pytest.fixture
def avqa(tmp_path):
    root = write_avqa(tmp_path / "avqa", "train", n=6)
    (root / "depth").mkdir()
    return _with_depth(root)


def _spec(avqa_root: Path, **source) -> dict:
    return {"train": [{"reader": "avqa", "root": str(avqa_root), "split": "train",
                       "modalities": {"depth": {"column": "depth_file", "dir": "depth"}}, **source}]}


def test_rows_carry_the_map_their_column_names_and_inference_reads_it(avqa, tmp_path):
    source = SpecSource(load_spec(_spec(avqa), base_dir=tmp_path))
    rows = list(source.split("train"))
    qa = {str(r["id"]): r for r in json.loads((avqa / "train_qa.json").read_text())}
    assert len(rows) == 6
    for e in rows:
        want = avqa / "depth" / qa[e.id.split("/", 1)[1]]["depth_file"]
        assert e.meta["modalities"] == {"depth": str(want)}
    # The recorded path is what safe predict / the processor take for the modality: same values as the file.
    first = next(e for e in rows if e.meta["modalities"]["depth"].endswith(".npy"))
    path = first.meta["modalities"]["depth"]
    assert np.array_equal(read_map(path, "depth")[..., 0], np.load(path))
    png = next(e for e in rows if e.meta["modalities"]["depth"].endswith(".png"))
    assert int(read_map(png.meta["modalities"]["depth"], "depth").max()) == 1234  # 16-bit kept

    class Identity:  # an image processor that passes the maps through, as a float depth processor would
        def __call__(self, arrays, return_tensors, input_data_format):
            return {"pixel_values": np.stack([a.transpose(2, 0, 1) for a in arrays]).astype(np.float32)}

    feats = ImageModalityFrontEnd(Identity())([e.meta["modalities"]["depth"] for e in rows[:2]], "depth")
    assert feats.shape == (2, 1, 8, 8) and torch.isfinite(feats).all()
    rep = source.reports()["train"]
    assert rep["modalities"] == {"depth": 6} and rep["sources"][0]["modalities"] == {"depth": 6}
    assert source.summary()["splits"]["train"]["modalities"] == {"depth": 6}


def test_a_row_without_a_value_has_no_map_and_the_csv_column_works(tmp_path):
    root = _audiocaps_with_depth(write_audiocaps(tmp_path / "ac", "train", n=4))
    spec = {"train": [{"reader": "audiocaps", "root": str(root), "split": "train",
                       "modalities": {"depth": {"column": "depth", "dir": "maps"}}}]}
    rows = list(SpecSource(load_spec(spec, base_dir=tmp_path)).split("train"))
    with_map = [e for e in rows if "modalities" in e.meta]
    assert len(with_map) == 3 and all(Path(e.meta["modalities"]["depth"]).is_file() for e in with_map)
    # A CSV without the column: a file-level error naming the file and the column.
    write_audiocaps(tmp_path / "plain", "train", n=2)
    spec["train"][0].update(root=str(tmp_path / "plain"), modalities={"depth": "depth"})
    with pytest.raises(DatasetFormatError, match=r"train\.csv: missing columns \['depth'\]"):
        SpecSource(load_spec(spec, base_dir=tmp_path)).split("train")


def test_without_modalities_the_rows_have_no_maps(avqa, tmp_path):
    spec = _spec(avqa)
    del spec["train"][0]["modalities"]
    rows = list(SpecSource(load_spec(spec, base_dir=tmp_path)).split("train"))
    assert not any("modalities" in e.meta for e in rows)


def test_a_missing_map_names_the_file_and_row(avqa, tmp_path):
    os.remove(avqa / "depth" / "vidtrain3_000030.npy")
    with pytest.raises(DatasetFormatError) as info:
        SpecSource(load_spec(_spec(avqa, skip_bad=False), base_dir=tmp_path)).split("train")
    msg = str(info.value)
    assert "train_qa.json: row 3, id 3: depth map file not found:" in msg and "vidtrain3_000030.npy" in msg
    source = SpecSource(load_spec(_spec(avqa), base_dir=tmp_path / "skip"))
    assert len(source.split("train")) == 5
    rep = source.reports()["train"]["sources"][0]
    assert rep["skipped"] == 1 and "depth map file not found" in rep["media_problems"][0]


def test_an_unreadable_map_is_a_media_failure_naming_the_row(avqa, tmp_path):
    (avqa / "depth" / "vidtrain2_000030.npy").write_bytes(b"not an array")
    with pytest.raises(DatasetFormatError, match=r"row id '2': unreadable depth map.*vidtrain2_000030\.npy"):
        SpecSource(load_spec(_spec(avqa, skip_bad=False), base_dir=tmp_path)).split("train")
    source = SpecSource(load_spec(_spec(avqa), base_dir=tmp_path / "skip"))
    assert len(source.split("train")) == 5 and source.reports()["train"]["sources"][0]["media_failures"] == 1
    # verify_media false: existence checks only, so the row is kept.
    assert len(SpecSource(load_spec(_spec(avqa, verify_media=False), base_dir=tmp_path / "nv")).split("train")) == 6


@pytest.mark.parametrize("value, message", [
    ("../outside.npy", "leads out of the media folder"),
    ("/etc/passwd.npy", "is an absolute path"),
    ("notes.txt", "expected a .npy array or an image file"),
    (7, "key 'depth_file' has type int, expected a file name"),
])
def test_bad_map_names_are_bad_rows(avqa, tmp_path, value, message):
    qa = avqa / "train_qa.json"
    rows = json.loads(qa.read_text())
    rows[4]["depth_file"] = value
    qa.write_text(json.dumps(rows))
    with pytest.raises(DatasetFormatError, match=r"train_qa\.json: row 4, id 4: depth map"):
        SpecSource(load_spec(_spec(avqa, skip_bad=False), base_dir=tmp_path)).split("train")
    with pytest.raises(DatasetFormatError, match=message):
        SpecSource(load_spec(_spec(avqa, skip_bad=False), base_dir=tmp_path / "again")).split("train")


def test_a_column_no_row_has_is_an_error(avqa, tmp_path):
    spec = _spec(avqa)
    spec["train"][0]["modalities"] = {"depth": {"column": "depht_file", "dir": "depth"}}
    with pytest.raises(SpecError, match=r"train\[0\] avqa:train: modalities: no row of its 6 kept names a depth map "
                                        r"\(column 'depht_file'\)"):
        SpecSource(load_spec(spec, base_dir=tmp_path)).split("train")


@pytest.mark.parametrize("modalities, message", [
    ("depth", "train[0].modalities: expected a mapping of modality name -> column"),
    ({"Depth": "d"}, "train[0].modalities.Depth: invalid modality name 'Depth'"),
    ({"audio": "d"}, "train[0].modalities.audio: 'audio' is one of each row's own inputs"),
    ({"depth": {"col": "d"}}, "train[0].modalities.depth: unknown field 'col'; known fields: column, dir"),
    ({"depth": {"dir": "depth"}}, "train[0].modalities.depth: missing field 'column'"),
    ({"depth": {"column": "d", "dir": "nowhere"}}, "train[0].modalities.depth.dir: "),
    ({"depth": 3}, "train[0].modalities.depth: expected a column name or {column: ..., dir: ...}, got 3"),
])
def test_bad_modalities_fields_name_the_field(avqa, modalities, message):
    spec = _spec(avqa)
    spec["train"][0]["modalities"] = modalities
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    assert message in str(info.value)


def test_a_headerless_csv_or_a_registry_source_takes_no_modalities(tmp_path):
    root = write_vggsound(tmp_path / "vgg", n=4)
    spec = {"train": [{"reader": "vggsound", "root": str(root), "modalities": {"depth": "d"}}]}
    with pytest.raises(SpecError, match=r"train\[0\]\.modalities: the vggsound file has no header row"):
        load_spec(spec)


def test_maps_are_media_of_the_table_and_the_fingerprint(avqa, tmp_path):
    spec = load_spec(_spec(avqa), base_dir=tmp_path)
    before = SpecSource(spec).fingerprint()
    path = avqa / "depth" / "vidtrain0_000030.npy"
    np.save(path, np.full((8, 8), 9.0, dtype=np.float32))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))
    again = SpecSource(spec)
    assert again.fingerprint() != before
    assert not again.split("train").media_changed()  # the table was read anew, not served stale


def test_the_reader_takes_map_columns_directly(avqa):
    result = read_avqa(avqa / "train_qa.json", avqa / "frames", avqa / "audio",
                       modalities={"depth": MapColumn("depth_file", avqa / "depth")})
    assert [Path(e.meta["modalities"]["depth"]).parent for e in result.examples] == [avqa / "depth"] * 6
    assert not any("modalities" in e.meta for e in read_avqa(avqa / "train_qa.json", avqa / "frames",
                                                            avqa / "audio").examples)


def test_vqav2_question_objects_name_maps(tmp_path):
    root = write_vqav2(tmp_path / "vqa", "val2014", n=3)
    qfile = root / "v2_OpenEnded_mscoco_val2014_questions.json"
    data = json.loads(qfile.read_text())
    for q in data["questions"]:
        q["depth"] = _depth(root / "depth" / f"{q['image_id']}.npy", 3.0).name
    qfile.write_text(json.dumps(data))
    spec = {"train": [{"reader": "vqav2", "root": str(root), "split": "val2014",
                       "modalities": {"depth": {"column": "depth", "dir": "depth"}}},
                      {"reader": "avqa", "root": str(write_avqa(tmp_path / "a", "train", n=2)), "split": "train"}],
            "retention_size": 1}
    rows = list(SpecSource(load_spec(spec, base_dir=tmp_path)).split("train"))
    vqa = {e.id: Path(e.meta["modalities"]["depth"]).name for e in rows if e.task == "vqav2"}
    assert sorted(vqa.values()) == ["1.npy", "2.npy", "3.npy"][:len(vqa)] or len(vqa) == 2
    assert all(e.meta.get("paired_audio") for e in rows if e.task == "vqav2")


def test_data_check_counts_the_rows_with_a_map(avqa, tmp_path, capsys):
    import yaml

    from safe.cli import main

    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(_spec(avqa)))
    assert main(["data", "check", str(path)]) == 0
    assert "6 rows with a depth map" in capsys.readouterr().out
