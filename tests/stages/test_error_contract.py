"""The command line's one error contract: every error a user's file or option causes (bad weights, bad
config, bad image, bad YAML, bad metrics, a bad certificate, a truncated training state) is one line on
stderr naming the input, exit code 2, no traceback; ``--debug`` shows the traceback."""
import json
import shutil
import time

import pytest
from PIL import Image

from safe import bench as synth
from safe.cli import main


@pytest.fixture(scope="module")
def run_copy(trained_run, tmp_path_factory):
    bench, _, run = trained_run
    example = synth.load_split(bench, "test")[0]

    def fresh():
        out = tmp_path_factory.mktemp("copy") / "run"
        shutil.copytree(run, out)
        return out, out / "checkpoints" / "final"

    return fresh, example


def _one_line_exit_2(argv, capsys, *words):
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, (rc, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for w in words:
        assert w in err, (w, err)
    return err


def _predict(run, example, **extra):
    argv = ["predict", "--run-dir", str(run), "--question", example.question, "--image", str(example.image)]
    for k, v in extra.items():
        argv += [f"--{k}", str(v)]
    return argv


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_bad_safe_weights(run_copy, capsys, damage):
    fresh, ex = run_copy
    run, ckpt = fresh()
    w = ckpt / "safe_weights.safetensors"
    w.write_bytes(w.read_bytes()[:200] if damage == "truncated" else b"\x00garbage" * 50)
    _one_line_exit_2(_predict(run, ex), capsys, "safe_weights.safetensors")


def test_safe_config_missing_a_key(run_copy, capsys):
    fresh, ex = run_copy
    run, ckpt = fresh()
    cfg = json.loads((ckpt / "safe_config.json").read_text())
    del cfg["base_signature"]
    (ckpt / "safe_config.json").write_text(json.dumps(cfg))
    _one_line_exit_2(_predict(run, ex), capsys, "safe_config.json", "base_signature")


def test_a_huge_png_in_predict(run_copy, capsys, tmp_path):
    fresh, ex = run_copy
    run, _ = fresh()
    big = tmp_path / "big.png"
    Image.new("1", (20000, 20000)).save(big)
    argv = ["predict", "--run-dir", str(run), "--question", ex.question, "--image", str(big)]
    _one_line_exit_2(argv, capsys, "big.png", "larger than")


def test_certificate_with_integer_hashes(run_copy, capsys, tmp_path):
    from safe.models.certificate import FORMAT, PARTS, VERSION

    fresh, _ = run_copy
    run, _ = fresh()
    cert = tmp_path / "cert.json"
    cert.write_text(json.dumps({"format": FORMAT, "version": VERSION, "passed": True,
                                "sha256": {p: 12345 for p in PARTS}, "libraries": {}}))
    _one_line_exit_2(["serve", "--run-dir", str(run), "--certificate", str(cert)], capsys, "cert.json", "sha256")


def test_metrics_json_that_is_a_list(tmp_path, capsys):
    (tmp_path / "metrics.json").write_text("[1, 2]")
    _one_line_exit_2(["report", "--run-dir", str(tmp_path)], capsys, "metrics.json")


def test_a_spec_nested_5000_deep(tmp_path, capsys):
    spec = tmp_path / "deep.yaml"
    spec.write_text("train: " + "[" * 5000 + "]" * 5000 + "\n")
    _one_line_exit_2(["data", "check", str(spec)], capsys, "deep.yaml")


def test_a_small_yaml_of_nested_aliases_does_not_hang_data_check(tmp_path, capsys):
    """600 bytes whose expansion is 9**9 strings: formatting it in an error message never ended."""
    lines = ["- &a [x, x, x, x, x, x, x, x, x]"]
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"- &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    spec = tmp_path / "lol.yaml"
    spec.write_text("\n".join(lines) + "\n")  # not a mapping: the error message showed the whole value
    t0 = time.perf_counter()
    _one_line_exit_2(["data", "check", str(spec)], capsys, "lol.yaml")
    assert time.perf_counter() - t0 < 10


def test_a_truncated_resume_state_names_the_file(tmp_path):
    import torch

    from safe.training.stage_a import load_resume_state

    f = tmp_path / "trainer_state.pt"
    torch.save({"step": torch.tensor(3), "x": torch.zeros(1000)}, f)
    f.write_bytes(f.read_bytes()[:300])
    with pytest.raises(ValueError, match="trainer_state.pt"):
        load_resume_state(f)


def test_debug_shows_the_traceback(tmp_path, capsys):
    (tmp_path / "metrics.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="metrics.json"):
        main(["report", "--run-dir", str(tmp_path), "--debug"])


def test_predict_refuses_an_empty_question_as_the_server_does(run_copy, capsys, tmp_path):
    fresh, ex = run_copy
    run, _ = fresh()
    _one_line_exit_2(["predict", "--run-dir", str(run), "--question", "  ", "--image", str(ex.image)], capsys,
                     "--question")
    f = tmp_path / "q.jsonl"
    f.write_text(json.dumps({"question": "what?", "image": str(ex.image)}) + "\n"
                 + json.dumps({"question": "", "image": str(ex.image)}) + "\n")
    _one_line_exit_2(["predict", "--run-dir", str(run), "--input", str(f)], capsys, "q.jsonl:2", "empty")


def test_predict_names_the_failing_row_by_file_and_line(run_copy, capsys, tmp_path):
    fresh, ex = run_copy
    run, _ = fresh()
    f = tmp_path / "rows.jsonl"
    f.write_text(json.dumps({"question": "what?", "image": str(ex.image)}) + "\n\n"
                 + json.dumps({"question": "what?", "image": str(ex.image), "use_audio": True}) + "\n")
    _one_line_exit_2(["predict", "--run-dir", str(run), "--input", str(f)], capsys, "rows.jsonl:3", "no audio")
