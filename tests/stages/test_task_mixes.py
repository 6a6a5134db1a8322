"""Every stage on any mix of task families a data spec allows: a run trained on a mixed spec is evaluated
on test splits without audio questions, with captions only, with audio questions only, and without
captions; `safe data check` on a spec whose audio source lost every row names that source's skips."""
import json

import pytest
import yaml

from safe.cli import main
from tests.data.spec_fixtures import mixed_spec
from tests.stages.test_data_spec_e2e import FAST, setup  # noqa: F401 - the module fixture (datasets, checkpoints)


def _roots(spec_path):
    spec = yaml.safe_load(spec_path.read_text())
    return {e["reader"]: e["root"] for s in ("train", "val", "test") for e in spec[s]}


def _with_test(spec_path, tmp_path, name, test):
    spec = mixed_spec({k: v for k, v in _roots(spec_path).items()})
    spec["test"] = test
    out = tmp_path / f"{name}.yaml"
    out.write_text(yaml.safe_dump(spec))
    return out


@pytest.fixture(scope="module")
def trained(setup):  # noqa: F811
    spec, base, audio, run, _ = setup
    args = ["--data", str(spec), "--base", str(base), "--audio", str(audio), "--run-dir", str(run)]
    sets = FAST  # the Stage A settings as --stage_a.* flags
    assert main(["train", *args, *sets, "--fresh"]) == 0
    # 4 steps of Stage A miss the Stage 2 gate (which stops Stage B): these tests are about the evaluation
    assert main(["policy", "train", *args, "--steps", "2", "--alphas", "0.0", "--alpha", "0.0", "--seeds", "1",
                 "--train-rows", "8", "--cost-batch", "8", "--distill-epochs", "1", "--latency-batches", "4",
                 "--continue-on-gate-failure"]) == 0
    return setup


MIXES = {
    # the reported crash: captions and VL rows, no audio question (IndexError in the robustness sweep)
    "no_audio_questions": lambda r: [{"reader": "audiocaps", "root": r["audiocaps"], "split": "val", "limit": 2},
                                     {"reader": "vqav2", "root": r["vqav2"], "split": "val2014", "limit": 3}],
    "captions_only": lambda r: [{"reader": "clotho", "root": r["clotho"], "split": "evaluation", "limit": 3}],
    "audio_questions_only": lambda r: [{"reader": "avqa", "root": r["avqa"], "split": "val", "limit": 3}],
    "no_captions": lambda r: [{"reader": "gqa", "root": r["gqa"], "split": "testdev", "limit": 2},
                              {"reader": "avqa", "root": r["avqa"], "split": "val", "limit": 2}],
}


@pytest.mark.slow
@pytest.mark.parametrize("mix", list(MIXES))
def test_eval_on_every_mix_of_task_families(trained, tmp_path, capsys, mix):
    spec, base, audio, run, _ = trained
    other = _with_test(spec, tmp_path, mix, MIXES[mix](_roots(spec)))
    # other data than the run trained on: its own run directory, the trained checkpoint given (the trained run
    # refuses data it was not trained on)
    out = tmp_path / "eval"
    code = main(["eval", "--data", str(other), "--base", str(base), "--audio", str(audio), "--run-dir", str(out),
                 "--checkpoint", str(run / "checkpoints" / "policy"), "--scale-results", "none"])
    err = capsys.readouterr().err
    assert code in (0, 1), err  # 1: a stage gate failed on the tiny models, still a full report
    ev = json.loads((out / "metrics.json").read_text())["eval"]
    assert ev["examples"] > 0 and "robustness" in ev and (out / "report.html").is_file()


def test_data_check_names_the_source_that_lost_every_row(setup, tmp_path, capsys):  # noqa: F811
    spec_path = setup[0]
    r = _roots(spec_path)
    empty = tmp_path / "empty_audio"
    empty.mkdir()
    spec = {"train": [{"reader": "vqav2", "root": r["vqav2"], "split": "train2014"},
                      {"reader": "audiocaps", "root": r["audiocaps"], "split": "train", "audio_dir": str(empty)}]}
    f = tmp_path / "lost.yaml"
    f.write_text(yaml.safe_dump(spec))
    assert main(["data", "check", str(f)]) == 2
    err = capsys.readouterr().err
    assert "audiocaps" in err and "0 rows, 8 skipped" in err and "audio file not found" in err, err


WHOLE_RUN_MIXES = {
    # every split without audio questions: captions and VL rows only
    "captions_and_vl": lambda r: {
        "train": [{"reader": "audiocaps", "root": r["audiocaps"], "split": "train"},
                  {"reader": "vqav2", "root": r["vqav2"], "split": "train2014"}],
        "val": [{"reader": "audiocaps", "root": r["audiocaps"], "split": "val", "limit": 2},
                {"reader": "vqav2", "root": r["vqav2"], "split": "val2014", "limit": 2}],
        "test": [{"reader": "audiocaps", "root": r["audiocaps"], "split": "val", "limit": 2},
                 {"reader": "gqa", "root": r["gqa"], "split": "testdev", "limit": 2}]},
    # every split without captions: audio questions and VL rows only
    "questions_and_vl": lambda r: {
        "train": [{"reader": "avqa", "root": r["avqa"], "split": "train"},
                  {"reader": "vqav2", "root": r["vqav2"], "split": "train2014"}],
        "val": [{"reader": "avqa", "root": r["avqa"], "split": "val", "limit": 3}],
        "test": [{"reader": "music_avqa", "root": r["music_avqa"], "split": "test", "limit": 3},
                 {"reader": "gqa", "root": r["gqa"], "split": "testdev", "limit": 2}]},
}


@pytest.mark.slow
@pytest.mark.parametrize("mix", list(WHOLE_RUN_MIXES))
def test_every_stage_on_a_spec_missing_a_task_family(setup, tmp_path, capsys, mix):  # noqa: F811
    spec_path, base, audio, _, _ = setup
    spec = tmp_path / f"{mix}.yaml"
    spec.write_text(yaml.safe_dump({**WHOLE_RUN_MIXES[mix](_roots(spec_path)), "seed": 1}))
    run = tmp_path / "run"
    args = ["--data", str(spec), "--base", str(base), "--audio", str(audio), "--run-dir", str(run)]
    assert main(["data", "check", str(spec)]) == 0, capsys.readouterr().err
    sets = FAST  # the Stage A settings as --stage_a.* flags
    assert main(["train", *args, *sets, "--fresh"]) == 0, capsys.readouterr().err
    # 4 steps of Stage A miss the Stage 2 gate (which stops Stage B): these tests are about the evaluation
    assert main(["policy", "train", *args, "--steps", "2", "--alphas", "0.0", "--alpha", "0.0", "--seeds", "1",
                 "--train-rows", "8", "--cost-batch", "8", "--distill-epochs", "1", "--latency-batches", "4",
                 "--continue-on-gate-failure"]) == 0, \
        capsys.readouterr().err
    assert main(["eval", *args, "--scale-results", "none"]) in (0, 1), capsys.readouterr().err
    assert main(["report", "--run-dir", str(run)]) == 0, capsys.readouterr().err
    assert main(["ablate", *args, *sets, "--steps", "2", "--only", "reference"]) == 0, capsys.readouterr().err
