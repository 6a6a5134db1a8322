"""The built-in base models: built, cached, loadable like real checkpoints, verified, and able."""
import json

import pytest
import torch

from safe.cli import main
from safe.bench.build import BuiltinConfig, build_builtin_models, read_manifest


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
