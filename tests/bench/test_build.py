"""The built-in base models: built, cached, loadable like real checkpoints, verified, and able."""
import json

import pytest
import torch

from safe.bench.build import BuiltinConfig, build_builtin_models, read_manifest
from safe.cli import main


def test_build_is_cached_and_reused(tiny_builtin):
    bench, base = tiny_builtin
    manifest = read_manifest(base)
    assert manifest["config_hash"] == BuiltinConfig.tiny().digest()
    for key in ("test_accuracy", "vl_accuracy", "deaf_check", "seconds", "seed", "benchmark"):
        assert key in manifest
    again = build_builtin_models(bench, base, BuiltinConfig.tiny(), progress=False)
    assert again["reused"] is True and again["seconds"] == manifest["seconds"]


def test_builtin_checkpoints_load_like_real_ones_and_pass_verification(tiny_builtin, capsys):
    _, base = tiny_builtin
    cfg = json.loads((base / "vl" / "config.json").read_text())
    assert cfg["architectures"] == ["LlavaForConditionalGeneration"]
    assert json.loads((base / "audio_encoder" / "config.json").read_text())["architectures"] == ["WhisperEncoder"]
    assert main(["verify", "--base", str(base / "vl"), "--audio", str(base / "audio_encoder")]) == 0
    out = capsys.readouterr().out
    assert "verification PASSED" in out and "FAIL" not in out


def test_cli_data_and_base_commands(tmp_path, capsys):
    assert main(["data", "synth", "--tiny", "--out", str(tmp_path / "bench")]) == 0
    assert "train" in capsys.readouterr().out
    assert main(["base", "build", "--tiny", "--data", str(tmp_path / "bench"), "--out", str(tmp_path / "base"),
                 "--run-dir", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "deaf-guesser check" in out and "VL-only accuracy" in out
    assert "base" in json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert main(["verify", "--base", str(tmp_path / "nowhere")]) == 2
    assert "neither a preset" in capsys.readouterr().err


@pytest.mark.slow
def test_builtin_vl_model_reaches_the_accuracy_floor_and_cannot_hear(tmp_path):
    """The default VL build (the real recipe; ~2.5 min on 2 cores) answers VL-only test questions at
    >= 95% and does no better than a deaf guesser on audio questions."""
    from safe import bench as synth
    from safe.bench.audio_model import AudioEncoderBuildConfig

    torch.set_num_threads(2)
    bench = synth.generate_benchmark(tmp_path / "bench", synth.SynthConfig(), progress=False)
    cfg = BuiltinConfig(audio=AudioEncoderBuildConfig.tiny())  # the audio encoder plays no part here
    manifest = build_builtin_models(bench, tmp_path / "base", cfg, progress=False)
    assert manifest["vl_accuracy"] >= 0.95, manifest["test_accuracy"]
    for fam, check in manifest["deaf_check"].items():
        assert check["passed"], (fam, check)


def test_the_shipped_build_is_the_default_config_and_loads_like_a_checkpoint():
    """The build SAFE ships is what the default recipe makes: a recipe change without a rebuilt shipped
    build fails here (rebuild it with `safe base build --force` and copy $SAFE_CACHE/base over it)."""
    from safe.bench.build import SHIPPED_DIR
    from safe.processing.prompts import load_vl_model

    manifest = read_manifest(SHIPPED_DIR)
    assert manifest["config_hash"] == BuiltinConfig().digest()
    assert manifest["vl_accuracy"] == 1.0 and all(c["passed"] for c in manifest["deaf_check"].values())
    model, _, _ = load_vl_model(SHIPPED_DIR / "vl")
    assert type(model).__name__ == "LlavaForConditionalGeneration" and model.config.image_seq_length == 9
    assert json.loads((SHIPPED_DIR / "audio_encoder" / "config.json").read_text())["architectures"] == ["WhisperEncoder"]


def test_the_shipped_build_is_installed_only_for_its_config_and_benchmark(tmp_path, monkeypatch):
    from safe.bench import build

    shipped = read_manifest(build.SHIPPED_DIR)
    monkeypatch.setattr(build.files, "load_benchmark_info", lambda d: {"config": {"grid": 3, "image_size": 48}, "counts": {"train": 0}})
    monkeypatch.setattr(build.files, "benchmark_fingerprint", lambda d: shipped["benchmark"])
    monkeypatch.setattr(build.files, "load_split", lambda d, split: [])
    answers = {"test_accuracy": dict(shipped["test_accuracy"])}  # what the installed model answers here
    monkeypatch.setattr(build, "evaluate_base", lambda vl, examples, progress=False: answers["test_accuracy"])
    out = tmp_path / "base"
    got = build_builtin_models(tmp_path / "bench", out, BuiltinConfig(), progress=False)
    assert got["reused"] == "shipped" and read_manifest(out) == {**shipped, "installed_from": "shipped"}
    assert (out / "vl" / "model.safetensors").read_bytes() == (build.SHIPPED_DIR / "vl" / "model.safetensors").read_bytes()
    again = build_builtin_models(tmp_path / "bench", out, BuiltinConfig(), progress=False)
    assert again["reused"] is True and again["installed_from"] == "shipped"
    # another benchmark, or another config: the shipped build does not apply (nothing is installed)
    assert build.install_shipped(tmp_path / "other", BuiltinConfig(), "0" * 16) is None
    assert build.install_shipped(tmp_path / "other", BuiltinConfig.tiny(), shipped["benchmark"]) is None
    assert not (tmp_path / "other").exists()

    # installed, but answering this benchmark otherwise than when it was built: removed, and trained instead
    class Trained(Exception):
        pass

    def train(*args, **kwargs):
        raise Trained

    answers["test_accuracy"] = {**shipped["test_accuracy"], "position": 0.5}
    monkeypatch.setattr(build, "build_vl_model", train)
    with pytest.raises(Trained):  # (no training rows here: the mock stands for the build)
        build_builtin_models(tmp_path / "bench", tmp_path / "drifted", BuiltinConfig(), progress=False)
    assert not (tmp_path / "drifted").exists()


@pytest.mark.slow
def test_the_shipped_build_answers_the_generated_benchmark(tmp_path):
    """A freshly generated default benchmark has the shipped build's fingerprint (so `safe demo` installs it)
    and the shipped VL model answers its VL-only test questions perfectly (its manifest's figures)."""
    from safe import bench as synth
    from safe.bench.build import SHIPPED_DIR, evaluate_base
    from safe.bench.files import benchmark_fingerprint, load_split

    bench = synth.generate_benchmark(tmp_path / "bench", synth.SynthConfig(), progress=False)
    manifest = read_manifest(SHIPPED_DIR)
    assert benchmark_fingerprint(bench) == manifest["benchmark"]
    test = [e for e in load_split(bench, "test") if not e.needs_audio]
    accuracy = evaluate_base(SHIPPED_DIR / "vl", test)
    assert accuracy["all"] == 1.0, accuracy
