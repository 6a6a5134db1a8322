"""`safe train --modality depth` on a user's own data: a data spec whose VQAv2-layout questions name depth maps
in a column, and no audio anywhere. The rows naming a map are depth's training rows; the VL rows without one are
retention rows paired with an unrelated map; the run trains, scores and records depth figures, keeps the frozen
parts byte-identical, and `safe predict` answers from the run directory with and without a map."""
import json

import numpy as np
import pytest
import torch
import yaml

from safe.cli import main
from safe.data.modality_rows import map_pool, own_maps, prepare_modality
from safe.data.records import Example
from tests.data.spec_fixtures import write_vqav2

FAST = ["--stage_a.steps", "4", "--stage_a.warmup_steps", "1", "--stage_a.batch_size", "8",
        "--stage_a.retention_every", "2", "--stage_a.retention_examples", "4", "--stage_a.checkpoint_every", "4",
        "--stage_a.safe.num_audio_tokens", "4"]
SIDE = 48  # the shipped depth encoder's input size (its image processor does not resize)


def _with_depth(root, subtype: str, rows: range):
    """Give questions ``rows`` (1-based) of a VQAv2 fixture a ``depth_file`` naming a map under ``root/depth``."""
    qfile = root / f"v2_OpenEnded_mscoco_{subtype}_questions.json"
    data = json.loads(qfile.read_text())
    (root / "depth").mkdir(exist_ok=True)
    for k, q in enumerate(data["questions"], start=1):
        if k in rows:
            name = f"{subtype}-{k}.npy"
            np.save(root / "depth" / name, np.full((SIDE, SIDE), 1.0 + 0.4 * k, dtype=np.float32))
            q["depth_file"] = name
    qfile.write_text(json.dumps(data))


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    root = tmp_path_factory.mktemp("depthdata")
    data = write_vqav2(write_vqav2(root / "vqa", "train2014", n=12), "val2014", n=6)
    _with_depth(data, "train2014", range(1, 7))
    _with_depth(data, "val2014", range(1, 4))
    maps = {"depth": {"column": "depth_file", "dir": "depth"}}
    spec = root / "spec.yaml"
    spec.write_text(yaml.safe_dump({
        "train": [{"reader": "vqav2", "root": str(data), "split": "train2014", "modalities": maps}],
        "test": [{"reader": "vqav2", "root": str(data), "split": "val2014", "modalities": maps}]}))
    return spec


def test_depth_trains_from_the_spec_maps_and_predict_reads_the_run(spec, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(spec), "--modality", "depth", "--run-dir", str(run), *FAST]) == 0, \
        capsys.readouterr().err
    out = capsys.readouterr().out
    assert "depth-dependent accuracy, SAFE" in out and "train: 6 rows with a depth map" in out
    a = json.loads((run / "metrics.json").read_text())["stage_a"]
    assert a["modality"] == "depth" and "depth_accuracy" in a and "audio_accuracy" not in a
    # train: 12 rows less the held-out retention rows, drawn only from the 6 without a map
    assert a["modality_rows"]["train"]["with_map"] == 6 and a["modality_rows"]["retention"]["with_map"] == 0
    assert a["modality_rows"]["retention"]["paired"] == a["retention_buffer"]["rows"] > 0
    assert a["modality_rows"]["test"] == {"rows": 6, "with_map": 3, "paired": 3, "dropped_audio": 0}
    assert a["depth_examples"] == 3 and a["vl_examples"] == 3
    assert a["answers_identical_gate_closed"] == 1.0 and a["frozen_byte_identical"]
    assert set(a["frozen_hashes_before"]) == {"base_vl", "depth_encoder"}
    record = json.loads((run / "run.json").read_text())
    assert record["modality"] == "depth" and record["audio"] is None

    # The run directory alone: its processor names the depth encoder, so predict needs no --depth-encoder.
    qa = json.loads((spec.parent / "vqa" / "v2_OpenEnded_mscoco_val2014_questions.json").read_text())["questions"]
    image = next((spec.parent / "vqa" / "val2014").glob("*.jpg"))
    depth = spec.parent / "vqa" / "depth" / qa[0]["depth_file"]
    args = ["predict", "--run-dir", str(run), "--image", str(image), "--question", qa[0]["question"]]
    assert main([*args, "--depth-file", str(depth)]) == 0, capsys.readouterr().err
    with_map = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(args) == 0
    without = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert with_map["used_depth"] is True and without["used_depth"] is False

    # Stages B and C for depth on the same data: tables, measured costs, the policy beside its baselines, and the
    # distilled gate deployed with the weights; predict then reports the policy's probability per row.
    policy = ["policy", "train", "--run-dir", str(run), "--steps", "4", "--train-rows", "8"]
    assert main(policy) == 2  # 4 steps teach depth nothing: the Stage 2 gate stops the run, naming the modality
    assert "Stage 2 gate: depth gain with VL retained failed" in capsys.readouterr().err
    assert main([*policy, "--continue-on-gate-failure"]) == 0, capsys.readouterr().err
    assert "depth policy (PPO, alpha" in capsys.readouterr().out
    p = json.loads((run / "metrics.json").read_text())["modality_policy"]["depth"]
    assert p["rows"] == {"train": 8, "test": 6} and set(p["costs_ms_per_query"]) == {"row with a map",
                                                                                        "row without a map"}
    # VL rows carry their paired map in the table too (a question its map does not bear on): always-on uses all 6
    assert p["never"]["use_rate"] == 0.0 and p["always"]["use_rate"] == 1.0 and p["oracle"]["use_rate"] <= 0.5
    assert (run / "policy" / "depth_test_table.pt").is_file()
    assert main([*args, "--depth-file", str(depth)]) == 0, capsys.readouterr().err
    decided = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0.0 <= decided["depth_probability"] <= 1.0

    # safe eval on the deployed depth checkpoint: the protocol's sections and gates for depth, into the report
    assert main(["eval", "--run-dir", str(run)]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "depth evaluation on test (6 rows: 3 with a depth map, 3 VL rows" in out and "stage gates:" in out
    ev = json.loads((run / "metrics.json").read_text())["modality_eval"]["depth"]
    r, g, pol = ev["retention"], ev["gains"], ev["policy"]
    assert r["answers_identical_gate_closed"] == {"identical": 6, "n": 6} and r["answers_changed"]["gate_closed"] == 0
    assert g["n"] == 3 and set(g["accuracy"]) == {"base", "safe", "policy"}
    assert pol["always"]["use_rate"] == 1.0 and pol["never"]["use_rate"] == 0.0
    assert 0.0 <= pol["policy"]["use_rate"] <= 1.0 and ev["irrelevance"]["n"] == 3
    assert set(ev["efficiency"]["ms_per_query"]) == {"never", "policy", "oracle", "always"}
    assert [s["passed"] for s in ev["stage_gates"]][0] is True and len(ev["stage_gates"]) == 5
    html = (run / "report.html").read_text()
    assert "Evaluation of another modality" in html and "Stages B and C for another modality" in html
    passed = sum(s["passed"] for s in ev["stage_gates"])
    assert f"{passed} of 5 targets met" in html
    assert main(["ablate", "--run-dir", str(run)]) == 2
    assert "safe ablate measures the audio path" in capsys.readouterr().err


def test_bad_modality_flags_are_named(spec, tmp_path, capsys):
    run = ["--data", str(spec), "--run-dir", str(tmp_path / "r"), *FAST]
    assert main(["train", *run, "--modality", "Depth"]) == 2
    assert "--modality: invalid modality name 'Depth'" in capsys.readouterr().err
    assert main(["train", *run, "--modality", "thermal"]) == 2
    assert "give its frozen encoder with --modality-encoder" in capsys.readouterr().err
    assert main(["train", *run, "--modality", "depth", "--modality-encoder", str(tmp_path)]) == 2
    assert "is not an encoder folder" in capsys.readouterr().err
    assert main(["train", *run, "--modality-encoder", str(tmp_path)]) == 2
    assert "--modality-encoder is for --modality other than audio" in capsys.readouterr().err


class _Encoder(torch.nn.Module):
    """Stands in for a frozen map encoder: one token per map, its mean."""

    def encode(self, x):
        return x.mean(dim=(1, 2, 3)).reshape(-1, 1, 1)


class _Front:
    def __call__(self, maps, name="map"):
        return torch.stack([torch.as_tensor(np.asarray(m), dtype=torch.float32).reshape(1, 2, 2) for m in maps])


class _Fmt:
    def encode(self, examples):
        from safe.processing.prompts import Encoded

        return Encoded([[1]] * len(examples), [[2]] * len(examples))

    def pixels(self, path):
        return torch.zeros(3, 2, 2)


def _rows(tmp_path):
    def ex(i, depth=None, needs_audio=False):
        meta = {"modalities": {"depth": str(depth)}} if depth else {}
        return Example(id=f"r{i}", task="t", family="f", question="q", answers=("a",), image=str(tmp_path / "i.png"),
                       audio=None, needs_audio=needs_audio, meta=meta)

    maps = []
    for k in range(3):
        maps.append(tmp_path / f"m{k}.npy")
        np.save(maps[-1], np.full((2, 2), float(k + 1), dtype=np.float32))
    return [ex(0, maps[0]), ex(1), ex(2, maps[1]), ex(3, needs_audio=True), ex(4), ex(5, maps[2], needs_audio=True)], maps


def test_rows_with_a_map_are_the_modalitys_vl_rows_get_an_unrelated_one_audio_rows_are_dropped(tmp_path):
    rows, maps = _rows(tmp_path)
    model = type("M", (), {"audio_encoder": _Encoder()})()
    data, counts = prepare_modality(rows, _Fmt(), model, _Front(), "depth")
    assert [e.id for e in data.examples] == ["r0", "r1", "r2", "r4", "r5"]  # r3 needs audio and names no map
    assert data.needs_audio.tolist() == [True, False, True, False, True]
    assert counts.to_dict() == {"rows": 5, "with_map": 3, "paired": 2, "dropped_audio": 1}
    emb = data.audio[list(range(5))].flatten().tolist()
    assert emb[0] == 1.0 and emb[2] == 2.0 and emb[4] == 3.0  # each row with its own map
    assert emb[1] in (1.0, 2.0, 3.0) and emb[3] in (1.0, 2.0, 3.0)  # VL rows: a map from the pool
    # The pairing depends on the row's id only: the same rows in another order get the same maps.
    again, _ = prepare_modality(rows[::-1], _Fmt(), model, _Front(), "depth")
    by_id = dict(zip([e.id for e in again.examples], again.audio[list(range(5))].flatten().tolist()))
    assert by_id["r1"] == emb[1] and by_id["r4"] == emb[3]
    assert own_maps(rows, "depth")[:3] == [str(maps[0]), None, str(maps[1])]
    assert map_pool(rows, "depth") == sorted(str(m) for m in maps)


def test_a_set_without_maps_is_paired_from_the_pool_given_and_refused_without_one(tmp_path):
    rows, maps = _rows(tmp_path)
    model = type("M", (), {"audio_encoder": _Encoder()})()
    vl_only = [rows[1], rows[4]]
    data, counts = prepare_modality(vl_only, _Fmt(), model, _Front(), "depth", pool=[str(maps[2])])
    assert data.audio[[0, 1]].flatten().tolist() == [3.0, 3.0] and counts.with_map == 0
    with pytest.raises(ValueError, match="no row names a depth map"):
        prepare_modality(vl_only, _Fmt(), model, _Front(), "depth")
    with pytest.raises(ValueError, match="no row is left to train depth on"):
        prepare_modality([rows[3]], _Fmt(), model, _Front(), "depth")


def test_depth_on_a_checkpoint_base_with_a_vision_encoder_folder(spec, tmp_path, capsys):
    """--base (a LLaVA checkpoint with its own tokenizer and image processor) and --modality-encoder (a ViT folder
    with its image processor): the same run on a user's own models."""
    from transformers import CLIPImageProcessor

    from safe.bench import presets as P
    from safe.bench.depth import depth_processor
    from safe.bench.vision import tiny_vision_encoder
    from safe.data.spec_source import SpecSource
    from safe.processing.prompts import build_tokenizer, words_of

    base, vit = tmp_path / "llava", tmp_path / "vit"
    model = P.tiny_base("llava")
    model.save_pretrained(base)
    rows = [e for s in ("train", "test") for e in SpecSource(spec).split(s)]
    build_tokenizer(words_of([t for e in rows for t in (e.question, *e.answers, "user assistant")])).save_pretrained(base)
    size = model.config.vision_config.image_size
    CLIPImageProcessor(size={"height": size, "width": size}, crop_size={"height": size, "width": size},
                       do_center_crop=False).save_pretrained(base)
    encoder = tiny_vision_encoder("vit", image_size=SIDE)
    encoder.save_pretrained(vit)
    depth_processor(SIDE).save_pretrained(str(vit))
    run = tmp_path / "run"
    assert main(["train", "--data", str(spec), "--base", str(base), "--modality", "depth", "--modality-encoder",
                 str(vit), "--run-dir", str(run), *FAST, "--stage_a.safe.fusion_layers", "0,-1"]) == 0, \
        capsys.readouterr().err
    a = json.loads((run / "metrics.json").read_text())["stage_a"]
    assert a["modality_encoder"] == str(vit) and a["answers_identical_gate_closed"] == 1.0 and a["frozen_byte_identical"]
    saved = json.loads((run / "checkpoints" / "final" / "safe_processor.json").read_text())
    assert saved["sources"]["depth"] == str(vit.resolve()) and saved["modalities"] == ["depth"]


def test_data_check_says_which_training_the_spec_allows(spec, capsys):
    assert main(["data", "check", str(spec)]) == 0
    out = capsys.readouterr().out
    assert "6 rows with a depth map" in out
    assert "safe train / safe ablate: needs audio-dependent rows in train (none here)" in out
    assert "safe train --modality depth: ok (6 training rows with a depth map)" in out


def test_eval_on_the_depth_track_says_what_it_is(tmp_path, capsys):
    """The depth track's run directory has no safe train record: safe eval names the track and where its figures
    are, instead of failing while loading its checkpoint."""
    (tmp_path / "metrics.json").write_text(json.dumps({"depth": {"depth_accuracy": 0.9}}))
    assert main(["eval", "--run-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is the depth track (safe demo --track depth)" in err and "metrics.json key depth" in err
