"""benchmarks/scale.py's gemma preset on a tiny Gemma LLaVA base saved as the real one is: it loads the base's
own weights (not a shape), runs every path in float32 and bfloat16, keeps one run per dtype in the results file,
and puts the base-alone peak RSS beside SAFE's."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from tests.bench.gemma_lora_helpers import tiny_gemma_llava

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "scale.py"
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _scale():
    spec = importlib.util.spec_from_file_location("scale_benchmark_gemma", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    from safe.bench import presets as P

    root = tmp_path_factory.mktemp("gemma_scale")
    P.tiny_audio_encoder("whisper").save_pretrained(root / "whisper")
    P.tiny_feature_extractor("whisper").save_pretrained(root / "whisper")
    return tiny_gemma_llava(root), root / "whisper"


def test_gemma_preset_runs_the_real_base_in_both_dtypes(dirs, tmp_path):
    from safetensors.torch import load_file

    vl, whisper = dirs
    out = tmp_path / "scale.json"
    scale = _scale()
    threads = torch.get_num_threads()
    try:
        for dtype in ("float32", "bfloat16", "float32"):  # the second float32 run replaces the first
            rc = scale.main(["--preset", "gemma", "--gemma-base", str(vl), "--audio", str(whisper), "--dtype", dtype,
                             "--batches", "2", "--new-tokens", "1", "--repeats", "1", "--warmup", "0",
                             "--safe-override", "safe.fusion_layers=[0, -1]", "--out", str(out)])
            assert rc == 0
    finally:
        torch.set_num_threads(threads)
    runs = json.loads(out.read_text())["runs"]
    assert sorted(r["dtype"] for r in runs) == ["bfloat16", "float32"]
    saved = load_file(str(vl / "model.safetensors"))
    lm_saved = sum(v.numel() for k, v in saved.items() if "language_model" in k)
    for r in runs:
        assert r["preset"] == "gemma" and r["use_rate"] == 0.5  # the speech track's rate by default
        assert r["shape"]["parameters"]["language_model"] == lm_saved  # the saved model's, tied head counted once
        assert {"base", "closed", "always", "policy", "skip"} <= set(r["cells"][0]["paths"])
        m = r["memory"]
        assert 0 < m["cpu_peak_rss_base_alone_bytes"] <= m["cpu_peak_rss_bytes"]
    md = out.with_suffix(".md").read_text()
    assert "`gemma` on cpu (bfloat16" in md and "peak RSS with the base alone" in md
    assert "batch 1: the use rate" not in md  # no batch-1 cell, no footnote about one
    # --render measures nothing: the page's gemma block is rewritten from the file, both dtypes in it
    page = tmp_path / "page.md"
    page.write_text("head\n<!-- scale-gemma:start -->\nold\n<!-- scale-gemma:end -->\ntail\n")
    assert scale.main(["--render", "--out", str(out), "--docs", str(page)]) == 0
    text = page.read_text()
    assert "old" not in text and "(float32," in text and "(bfloat16," in text and text.endswith("tail\n")


def test_gemma_preset_names_a_missing_base(tmp_path, capsys):
    rc = _scale().main(["--preset", "gemma", "--gemma-base", str(tmp_path / "none"), "--batches", "1",
                        "--new-tokens", "1", "--repeats", "1"])
    assert rc == 2 and "--gemma-base" in capsys.readouterr().err


def test_only_the_gemma_preset_takes_another_dtype(capsys):
    assert _scale().main(["--preset", "builtin", "--dtype", "bfloat16", "--batches", "1", "--new-tokens", "1"]) == 2
    assert "--dtype bfloat16" in capsys.readouterr().err
