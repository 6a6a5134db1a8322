"""The data spec: validation errors name the field and value; SpecSource reads each published layout, pairs
rows by the documented seeded rules, counts bad rows, refuses empty splits, and `safe data check` reports."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from safe.cli import main
from safe.data.readers import DatasetFormatError
from safe.data.source import DataSource
from safe.data.spec import SpecError, load_spec
from safe.data.spec_source import STAND_IN_NAME, SpecSource
from tests.data.spec_fixtures import jpg, mixed_spec, write_all


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    return write_all(tmp_path_factory.mktemp("datasets"))


@pytest.fixture(scope="module")
def source(roots, tmp_path_factory):
    return SpecSource(load_spec(mixed_spec(roots), base_dir=tmp_path_factory.mktemp("spec")))


def _spec(roots, tmp_path, **changes):
    spec = {**mixed_spec(roots), **changes}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.update(tset=s["test"]), "unknown field 'tset'; known fields: train, val, test"),
    (lambda s: s["train"][0].update(rooot="x"), "train[0]: unknown field 'rooot'"),
    (lambda s: s["train"][1].update(reader="avqa2"),
     "train[1].reader: unknown reader 'avqa2'; known readers: audiocaps, avqa, builtin, clotho, gqa, music_avqa"),
    (lambda s: s["val"][0].update(root="/no/such/folder"), "val[0].root: /no/such/folder is not a folder"),
    (lambda s: s["val"][0].pop("root"), "val[0]: missing field 'root'"),
    (lambda s: s["train"][3].pop("split"), "train[3]: missing field 'split'"),
    (lambda s: s["train"][3].update(split="test2015"), "train[3].questions_json: "),
    (lambda s: s["test"][0].update(limit="ten"), "test[0].limit: expected an integer >= 1, got 'ten'"),
    (lambda s: s["test"][0].update(skip_bad="yes"), "test[0].skip_bad: expected true or false, got 'yes'"),
    (lambda s: s["train"][1].update(include_choices=1), "train[1].include_choices: expected true or false, got 1"),
    (lambda s: s.update(audio_share=1.5), "audio_share: expected a number strictly between 0 and 1, got 1.5"),
    (lambda s: s.update(val=[]), "val: expected a non-empty list of sources, got []"),
    (lambda s: s.update(pairing={"stand_in": "x"}), "pairing: unknown field 'stand_in'"),
])
def test_bad_specs_name_the_field_and_value(roots, edit, message):
    spec = mixed_spec(roots)
    edit(spec)
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    assert message in str(info.value)


def test_a_missing_default_file_says_which_option_moves_it(roots):
    spec = mixed_spec(roots)
    spec["train"][3]["split"] = "test2015"
    with pytest.raises(SpecError, match=r"v2_OpenEnded_mscoco_test2015_questions\.json does not exist .*"
                                        r"set questions_json: to where it is"):
        load_spec(spec)


def test_spec_file_paths_resolve_against_its_folder(roots, tmp_path):
    spec = mixed_spec(roots)
    link = tmp_path / "ds"
    link.symlink_to(roots["gqa"])
    spec["test"][1]["root"] = "ds"  # relative to the spec file
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    loaded = load_spec(tmp_path / "s.yaml")
    assert loaded.splits["test"][1].root == tmp_path / "ds" and loaded.cache_dir == tmp_path / ".safe_cache"
    (tmp_path / "bad.yaml").write_text("train: [unclosed")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(tmp_path / "bad.yaml")


# --------------------------------------------------------------------------- reading and pairing


def test_records_tasks_answers_and_pairing_rules(source):
    assert isinstance(source, DataSource)
    train, test = source.split("train"), source.split("test")
    assert len(train) == 28 - 4 and len(test) == 12  # 4 of train's 8 VL rows held out as the retention buffer
    assert {e.task for e in train} == {"audiocaps", "avqa", "vggsound", "vqav2"}
    assert {e.task for e in test} == {"music_avqa", "gqa", "clotho", "vggsound"}
    for e in train + test:
        assert Path(e.image).is_file() and Path(e.audio).is_file() and e.id.startswith(e.task + "/")
    vqa = [e for e in train if e.task == "vqav2"]
    assert all(len(e.answers) == 11 and e.answers[0] == e.answers[1] for e in vqa)  # canonical + all ten
    # VL-only rows: an unrelated clip from the split's own audio rows, needs_audio stays false
    pool = {e.audio for e in train if not e.meta.get("paired_audio")}
    assert all(e.meta["paired_audio"] and e.audio in pool and not e.needs_audio for e in vqa)
    # audio rows without a frame: the black stand-in; audio-visual rows: their own frame
    for e in train + test:
        if e.task in ("audiocaps", "clotho", "vggsound"):
            assert Path(e.image).name == STAND_IN_NAME and e.meta["stand_in_image"]
        else:
            assert not e.meta.get("stand_in_image") and STAND_IN_NAME not in e.image
    mavqa = [e for e in test if e.task == "music_avqa"]
    assert {e.needs_audio for e in mavqa} == {True, False} and not any(e.meta.get("paired_audio") for e in mavqa)
    assert all(e.meta["source"].startswith("test[") for e in test)


def test_pairing_and_order_are_a_function_of_the_seed(roots, tmp_path):
    a = SpecSource(load_spec(mixed_spec(roots), base_dir=tmp_path)).split("train")
    b = SpecSource(load_spec(mixed_spec(roots), base_dir=tmp_path)).split("train")
    assert [e.to_dict() for e in a] == [e.to_dict() for e in b]
    c = SpecSource(load_spec({**mixed_spec(roots), "seed": 4}, base_dir=tmp_path)).split("train")
    assert [e.id for e in c] != [e.id for e in a]  # several sources: interleaved in a seeded order
    clip = {e.id: e.audio for e in a}
    assert any(clip[e.id] != e.audio for e in c if e.task == "vqav2" and e.id in clip)  # (held-out rows differ too)
    # one source keeps its file order
    one = SpecSource(load_spec({"test": [mixed_spec(roots)["test"][1]]}, base_dir=tmp_path))
    with pytest.raises(SpecError, match="VL-only row 'gqa/testdev0' needs an unrelated clip"):
        one.split("test")  # GQA alone: no audio pool, no train to borrow one from


def test_retention_is_held_out_of_train_or_listed(roots, source, tmp_path):
    ret = source.split("retention")
    assert ret and all(e.task == "vqav2" and not e.needs_audio for e in ret)
    assert source.has_split("retention") and not source.has_split("ood_test")
    # held out: half of train's VL rows (fewer than retention_size), and train no longer has them
    whole = SpecSource(load_spec({**mixed_spec(roots), "retention": mixed_spec(roots)["test"]}, base_dir=tmp_path))
    vl = [e.id for e in whole.split("train") if not e.needs_audio]
    train = [e.id for e in source.split("train")]
    assert len(ret) == len(vl) // 2 and not {e.id for e in ret} & set(train)
    assert sorted(train + [e.id for e in ret]) == sorted(e.id for e in whole.split("train"))
    info = source.retention_source()
    assert info["rows"] == len(ret) and info["held_out"] and "held out of train" in info["source"]
    one = SpecSource(load_spec({**mixed_spec(roots), "retention_size": 1}, base_dir=tmp_path))
    assert len(one.split("retention")) == 1 and len(one.split("train")) == len(train) + len(ret) - 1
    with pytest.raises(SpecError, match="retention_size: expected an integer >= 1"):
        load_spec({**mixed_spec(roots), "retention_size": 0}, base_dir=tmp_path)
    spec = mixed_spec(roots)
    spec["train"] = spec["train"][:3]  # audio only
    no_vl = SpecSource(load_spec(spec, base_dir=tmp_path))
    assert not no_vl.has_split("retention")
    with pytest.raises(SpecError, match="no retention split and train has no VL-only rows"):
        no_vl.split("retention")
    spec["retention"] = [{"reader": "gqa", "root": str(roots["gqa"]), "split": "testdev"}]
    listed = SpecSource(load_spec(spec, base_dir=tmp_path)).split("retention")
    assert {e.task for e in listed} == {"gqa"} and all(e.meta["paired_audio"] for e in listed)  # train's pool
    del spec["val"]
    with pytest.raises(SpecError, match="gives no 'val' split .*add a val: list"):
        SpecSource(load_spec(spec, base_dir=tmp_path)).split("val")


def test_audiocaps_frames_dir_gives_the_datasets_own_frame(roots, tmp_path):
    for i in range(4):
        jpg(tmp_path / "frames" / f"ytval{i}_30.jpg")
    spec = {"train": [{"reader": "audiocaps", "root": str(roots["audiocaps"]), "split": "val",
                       "frames_dir": str(tmp_path / "frames")}]}
    rows = SpecSource(load_spec(spec, base_dir=tmp_path)).split("train")
    assert [Path(e.image).parent for e in rows] == [tmp_path / "frames"] * 4
    assert [e.id for e in rows] == [f"audiocaps/{1000 + i}" for i in range(4)]  # one source: file order


def test_corrupt_clip_is_a_counted_skip_or_an_error(roots, tmp_path):
    from tests.data.spec_fixtures import write_audiocaps

    root = write_audiocaps(tmp_path / "ac", "train", n=5)
    (root / "audio" / "yttrain1_30.wav").write_bytes(b"RIFF not really a wave file")
    (root / "audio" / "yttrain3_30.wav").unlink()
    spec = {"train": [{"reader": "audiocaps", "root": str(root), "split": "train", "limit": 3}]}
    src = SpecSource(load_spec(spec, base_dir=tmp_path))
    rows = src.split("train")
    assert [e.id for e in rows] == ["audiocaps/1000", "audiocaps/1002", "audiocaps/1004"]  # limit: 3 good rows
    rep = src.reports()["train"]["sources"][0]
    assert rep["skipped"] == 2 and rep["media_failures"] == 2
    assert any("yttrain1_30.wav" in p for p in rep["media_problems"])
    assert any("audio file not found" in p and "yttrain3_30.wav" in p for p in rep["media_problems"])
    spec["train"][0]["skip_bad"] = False
    with pytest.raises(DatasetFormatError, match="yttrain1_30.wav|yttrain3_30.wav"):
        SpecSource(load_spec(spec, base_dir=tmp_path)).split("train")


def test_an_empty_split_is_an_error_with_the_reasons(roots, tmp_path):
    from tests.data.spec_fixtures import write_clotho

    root = write_clotho(tmp_path / "clotho", "evaluation", n=2)
    for wav in (root / "clotho_audio_evaluation").iterdir():
        wav.write_bytes(b"junk")
    spec = {"test": [{"reader": "clotho", "root": str(root), "split": "evaluation"}]}
    with pytest.raises(SpecError, match=r"split 'test' is empty: test\[0\] clotho:evaluation: 0 rows, 2 skipped "
                                        r"\(first: .*clip 0.wav"):
        SpecSource(load_spec(spec, base_dir=tmp_path)).split("test")


def test_fingerprint_follows_spec_records_and_media(roots, tmp_path):
    from tests.data.spec_fixtures import write_gqa, write_music_avqa

    spec = {"test": [{"reader": "music_avqa", "root": str(write_music_avqa(tmp_path / "m", "test", n=3)),
                      "split": "test"},
                     {"reader": "gqa", "root": str(write_gqa(tmp_path / "g", "testdev", n=2)), "split": "testdev"}]}
    fp = SpecSource(load_spec(spec, base_dir=tmp_path)).fingerprint()
    assert fp == SpecSource(load_spec(spec, base_dir=tmp_path)).fingerprint()
    assert SpecSource(load_spec({**spec, "seed": 1}, base_dir=tmp_path)).fingerprint() != fp
    from tests.data.spec_fixtures import wav

    wav(tmp_path / "m" / "audio" / "test00001.wav", hz=1234.0, seconds=0.6)  # a clip changed on disk
    assert SpecSource(load_spec(spec, base_dir=tmp_path)).fingerprint() != fp


def test_builtin_reader_is_one_more_source(tmp_path):
    from safe import bench as synth
    from safe.bench.files import BuiltinSource

    bench = synth.generate_benchmark(tmp_path / "bench", synth.SynthConfig.tiny(), progress=False)
    src = SpecSource(load_spec({"reader": "builtin", "root": str(bench)}, base_dir=tmp_path))
    ref = BuiltinSource(bench)
    assert src.cache_dir == ref.cache_dir  # the same embedding cache as --data <folder>
    assert src.available_splits() == ["train", "val", "test", "retention", "ood_test"]
    assert not SpecSource(load_spec({"test": [{"reader": "builtin", "root": str(bench)}]})).has_split("ood_test")
    for split in ("train", "retention"):
        mine, theirs = src.split(split), ref.split(split)
        assert [e.id for e in mine] == [f"synth/{e.id}" for e in theirs]
        assert [(e.image, e.audio, e.answers, e.needs_audio) for e in mine] == \
               [(e.image, e.audio, e.answers, e.needs_audio) for e in theirs]
    mixed = {"train": [{"reader": "builtin", "root": str(bench), "limit": 10}],
             "test": [{"reader": "builtin", "root": str(bench), "split": "val"}]}
    src = SpecSource(load_spec(mixed, base_dir=tmp_path))
    held = len(src.split("retention"))  # no retention: list, so half of the 10 rows' VL rows are held out
    assert held >= 1 and len(src.split("train")) == 10 - held and len(src.split("test")) == len(ref.split("val"))


def test_stages_take_a_spec_file_or_a_benchmark_folder(roots, tmp_path):
    from safe.stages.common import data_source

    path = _spec(roots, tmp_path)
    assert isinstance(data_source(str(path)), SpecSource)
    with pytest.raises(SpecError, match="no such file"):
        data_source(str(tmp_path / "missing.yaml"))


# --------------------------------------------------------------------------- safe data check


def test_data_check_prints_splits_sources_and_skips(roots, tmp_path, capsys):
    spec = mixed_spec(roots)
    del spec["val"]
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["data", "check", str(path)]) == 0
    out = capsys.readouterr().out
    # 4 of train's 8 VL rows are held out as the retention buffer
    assert "train: 24 rows, audio-dependent share 0.833; tasks: audiocaps 8, avqa 8, vggsound 4, vqav2 4" in out
    assert "4 VL rows got an unrelated clip, 12 rows the stand-in image" in out
    assert "retention (held out of train's VL-only rows; train no longer has them): 4 rows" in out
    assert "test[1]     gqa:testdev" in out
    assert "safe policy train: needs val, which the spec does not give" in out
    assert main(["data", "check", str(path), "--strict"]) == 0  # nothing skipped


def test_data_check_bad_spec_is_one_line_exit_2(roots, tmp_path, capsys):
    path = _spec(roots, tmp_path, tset=[])
    assert main(["data", "check", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("safe data check: error:") and "'tset'" in err
    assert json.loads(json.dumps(err))  # plain text, no traceback


@pytest.mark.parametrize("doc", ["README.md", "docs/data.md"])
def test_the_documented_spec_is_valid(roots, doc, tmp_path):
    text = (Path(__file__).resolve().parents[2] / doc).read_text()
    block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    for name in ("audiocaps", "vqav2", "avqa", "gqa"):
        block = block.replace(f"/data/{name},", f"{roots[name]},")
    block = block.replace("/data/music-avqa,", f"{roots['music_avqa']},")
    src = SpecSource(load_spec(yaml.safe_load(block), base_dir=tmp_path))
    assert src.audio_share == 0.4 and src.available_splits() == ["train", "val", "test", "retention"]
    assert {e.task for e in src.split("test")} == {"music_avqa", "gqa"}


def test_verified_media_are_decoded_once_until_they_change(tmp_path, monkeypatch):
    from safe.data.readers import _common
    from tests.data.spec_fixtures import wav, write_audiocaps

    root = write_audiocaps(tmp_path / "ac", "train", n=3)
    spec = load_spec({"train": [{"reader": "audiocaps", "root": str(root), "split": "train"}]}, base_dir=tmp_path)
    decoded = []
    real = _common._Media._check_audio
    monkeypatch.setattr(_common._Media, "_check_audio", lambda self, p: (self.verify and decoded.append(p.name)) or real(self, p))
    SpecSource(spec).split("train")
    assert sorted(decoded) == ["yttrain0_30.wav", "yttrain1_30.wav", "yttrain2_30.wav"]
    decoded.clear()
    SpecSource(spec).split("train")
    assert decoded == []  # remembered in cache_dir
    (root / "audio" / "yttrain1_30.wav").write_bytes(b"junk now")  # changed: checked again, and skipped
    rows = SpecSource(spec).split("train")
    assert decoded == ["yttrain1_30.wav"] and [e.id for e in rows] == ["audiocaps/1000", "audiocaps/1002"]
    wav(root / "audio" / "yttrain1_30.wav")
    assert len(SpecSource(spec).split("train")) == 3


def test_train_on_a_spec_without_checkpoints_says_what_to_pass(roots, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SAFE_CACHE", str(tmp_path / "empty_cache"))
    path = _spec(roots, tmp_path)
    assert main(["train", "--data", str(path), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "with a data spec pass --base and --audio" in err and not (tmp_path / "run").exists()
    assert main(["train", "--data", str(tmp_path / "nope.yaml"), "--run-dir", str(tmp_path / "run")]) == 2
    assert "nope.yaml: no such file" in capsys.readouterr().err


def test_builtin_source_fields_are_checked_when_loaded(tmp_path):
    with pytest.raises(SpecError, match=r"^spec: unknown field 'sede'; known fields: reader, root, split"):
        load_spec({"reader": "builtin", "root": str(tmp_path), "sede": 1})
    with pytest.raises(SpecError, match=r"train\[0\]: unknown field 'rooot'"):
        load_spec({"train": [{"reader": "builtin", "rooot": str(tmp_path)}]})


def test_data_check_takes_a_builtin_benchmark_folder(tmp_path, capsys):
    from safe import bench as synth

    bench = synth.generate_benchmark(tmp_path / "bench", synth.SynthConfig.tiny(), progress=False)
    assert main(["data", "check", str(bench)]) == 0
    out = capsys.readouterr().out
    n = len(synth.load_split(bench, "train"))
    assert f"train: {n} rows" in out and "tasks: synth" in out and "ood_test:" in out


def test_a_vggsound_source_asks_presence_questions(roots, tmp_path):
    """The spec passes the reader's ``questions`` option on: VGGSound clips become yes / no presence rows."""
    spec = {"train": [{"reader": "vggsound", "root": str(roots["vggsound"]), "split": "train", "questions": "yes_no"}],
            "test": [{"reader": "vggsound", "root": str(roots["vggsound"]), "split": "test", "questions": "both"}]}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    src = SpecSource(load_spec(tmp_path / "s.yaml"))
    train, test = src.split("train"), src.split("test")
    assert len(train) == 8 and {e.family for e in train} == {"presence"}
    assert sorted(e.answers[0] for e in train) == ["no"] * 4 + ["yes"] * 4
    assert all(e.question.startswith("Is there ") and e.needs_audio for e in train)
    assert len(test) == 12 and [e.family for e in test].count("classification") == 4
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(
        {"train": [{"reader": "vggsound", "root": str(roots["vggsound"]), "split": "train", "questions": 2}]}))
    with pytest.raises(SpecError, match="questions"):
        load_spec(tmp_path / "bad.yaml")
