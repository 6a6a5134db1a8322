"""Bring your own data, end to end: fixture datasets in every published layout mixed in one spec YAML, a tiny
LLaVA and a tiny Whisper saved to disk as checkpoint directories, then `safe data check`, `safe train`, `safe
policy train`, `safe eval` and `safe ablate` with --data / --base / --audio, each writing into one run directory; the
later stages take the base and encoder from the run's own record (run.json) and refuse others."""
import json

import pytest
import yaml

from safe.cli import main
from tests.data.spec_fixtures import mixed_spec, write_all

FAST = ["--stage_a.steps", "4", "--stage_a.warmup_steps", "1", "--stage_a.batch_size", "8",
        "--stage_a.retention_every", "2", "--stage_a.retention_examples", "4", "--stage_a.checkpoint_every", "4",
        "--stage_a.lr_gates", "0.05", "--stage_a.safe.fusion_layers", "0,-1", "--stage_a.safe.num_audio_tokens", "4"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Datasets, spec and checkpoints (written once for the module)."""
    from safe.bench import presets as P
    from safe.data.spec_source import SpecSource
    from safe.processing.prompts import build_tokenizer, words_of
    from tests.training.test_stage_a_checkpoints import _save_audio

    root = tmp_path_factory.mktemp("byod")
    spec = root / "spec.yaml"
    spec.write_text(yaml.safe_dump(mixed_spec(write_all(root / "data"))))
    rows = [e for s in ("train", "val", "test") for e in SpecSource(spec).split(s)]
    # The checkpoint's own tokenizer and image processor, as a real LLaVA directory has them.
    from transformers import CLIPImageProcessor

    base = root / "llava"
    model = P.tiny_base("llava")
    model.save_pretrained(base)
    tok = build_tokenizer(words_of([t for e in rows for t in (e.question, *e.answers, "user assistant")]))
    assert len(tok) < P.IMAGE_TOKEN
    tok.save_pretrained(base)
    size = model.config.vision_config.image_size
    CLIPImageProcessor(size={"height": size, "width": size}, crop_size={"height": size, "width": size},
                       do_center_crop=False).save_pretrained(base)
    audio = _save_audio("whisper", root / "whisper")
    return spec, base, audio, root / "run", rows


def _args(setup):
    spec, base, audio, run, _ = setup
    return ["--data", str(spec), "--base", str(base), "--audio", str(audio), "--run-dir", str(run)]


def test_data_check_reports_every_split(setup, capsys):
    spec = setup[0]
    assert main(["data", "check", str(spec)]) == 0
    out = capsys.readouterr().out
    assert "train: 24 rows" in out and "test: 12 rows" in out and "val: 8 rows" in out
    assert "retention (held out of train's VL-only rows; train no longer has them): 4 rows" in out
    assert "tasks: clotho 2, gqa 4, music_avqa 4, vggsound 2" in out
    assert "safe policy train: ok (train, val, test)" in out


def test_train_policy_eval_end_to_end(setup, capsys):
    spec, base, audio, run, rows = setup
    assert main(["train", *_args(setup), *FAST, "--fresh"]) == 0, capsys.readouterr().err
    metrics = json.loads((run / "metrics.json").read_text())
    a = metrics["stage_a"]
    assert a["frozen_byte_identical"] and a["answers_identical_gate_closed"] == 1.0
    assert a["config"]["audio_share"] == 0.5 and a["steps"] == 4  # the spec's audio_share reached the recipe
    assert a["data"]["splits"]["train"]["tasks"] == {"audiocaps": 8, "avqa": 8, "vggsound": 4, "vqav2": 4}
    assert a["retention_buffer"]["rows"] == 4 and "held out of train" in a["retention_buffer"]["source"]
    assert (run / "checkpoints" / "final" / "safe_config.json").is_file()
    record = json.loads((run / "run.json").read_text())  # what the later stages take when not told again
    assert record["base"] == str(base) and record["audio"] == str(audio) and record["data"] == str(spec)
    assert record["data_fingerprint"] == a["data"]["fingerprint"] and record["recipe"]["steps"] == 4

    # Only --data and --run-dir: the run's base and encoder; another encoder or other data is refused.
    only = ["--data", str(spec), "--run-dir", str(run)]
    # 4 steps of Stage A miss the Stage 2 gate: Stage B goes on only when asked to
    assert main(["policy", "train", *only]) == 2 and "Stage 2 gate" in capsys.readouterr().err
    go_on = "--continue-on-gate-failure"
    assert main(["policy", "train", *only, go_on, "--audio", str(base)]) == 2
    assert "--audio" in capsys.readouterr().err
    assert main(["policy", "train", *only, go_on, "--steps", "3", "--alphas", "0.0", "--alpha", "0.0",
                 "--seeds", "1", "--train-rows", "8", "--cost-batch", "8", "--distill-epochs", "2",
                 "--latency-batches", "12"]) == 0, capsys.readouterr().err
    policy = json.loads((run / "metrics.json").read_text())["policy"]
    assert policy["rows"] == {"train": 8 + 8, "test": 12}  # train[:train_rows] + val; the test split

    code = main(["eval", *only, "--scale-results", "none"])
    assert code in (0, 1), capsys.readouterr().err  # 1: a stage gate failed (tiny untrained models), still reported
    ev = json.loads((run / "metrics.json").read_text())["eval"]
    assert ev["examples"] == 12 and ev["data"]["fingerprint"] == a["data"]["fingerprint"]
    # Retention per VL benchmark, gains per audio benchmark, caption metrics per caption benchmark.
    # MUSIC-AVQA has visual-only question types: those rows are VL rows of its benchmark
    assert set(ev["retention"]["per_task"]) == {"gqa", "music_avqa"} and ev["retention"]["per_task"]["gqa"]["n"] == 4
    assert set(ev["audio_gains"]["per_task"]) == {"music_avqa", "vggsound"}
    assert set(ev["audio_gains"]["captions_per_task"]) == {"clotho"}
    report = (run / "report.html").read_text()
    assert "<html" in report.lower() and "Stage A" in report
    assert all(task in report for task in ("gqa", "music_avqa", "vggsound", "clotho"))

    assert main(["ablate", *_args(setup), *FAST, "--steps", "2", "--only", "reference"]) == 0, capsys.readouterr().err
    abl = json.loads((run / "metrics.json").read_text())["ablations"]
    assert [r["name"] for r in abl["rows"]] == ["reference"] and abl["steps"] == 2
