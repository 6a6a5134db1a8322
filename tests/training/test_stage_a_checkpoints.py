"""Stage A on local checkpoint directories (not the built-in folder), for every supported architecture:
tiny random instances of the real classes saved with save_pretrained, their own tokenizer, image
processor and feature extractor, as a real LLaVA / BLIP-2 / Whisper / CLAP directory would have."""
import math

import pytest

from safe import bench as synth
from safe.bench import presets as P
from safe.bench.files import BuiltinSource
from safe.processing.prompts import build_tokenizer, words_of
from safe.stages.stage_a import run_stage_a
from safe.training.config import load_stage_a_config

FAST = ["steps=6", "warmup_steps=1", "batch_size=8", "retention_every=3", "retention_examples=8",
        "checkpoint_every=3", "lr_gates=0.05", "safe.fusion_layers=[0, -1]", "safe.num_audio_tokens=4"]


def _save_base(kind, bench, path):
    from transformers import CLIPImageProcessor

    model = P.tiny_base(kind)
    model.save_pretrained(path)
    examples = [e for s in ("train", "retention", "test") for e in synth.load_split(bench, s)]
    tok = build_tokenizer(words_of([t for e in examples for t in (e.question, *e.answers, "question answer user assistant")]))
    assert len(tok) < P.IMAGE_TOKEN  # the tiny vocabulary keeps id 99 for the image placeholder
    tok.save_pretrained(path)
    size = model.config.vision_config.image_size
    CLIPImageProcessor(size={"height": size, "width": size}, crop_size={"height": size, "width": size},
                       do_center_crop=False).save_pretrained(path)
    return path


def _save_audio(kind, path):
    from transformers import ClapFeatureExtractor, WhisperFeatureExtractor

    enc = P.tiny_audio_encoder(kind)
    enc.save_pretrained(path)
    if kind == "whisper":
        WhisperFeatureExtractor(feature_size=16, chunk_length=1).save_pretrained(path)
    else:
        ClapFeatureExtractor(feature_size=16, sampling_rate=16000, hop_length=160, fft_window_size=400,
                             max_length_s=1, frequency_max=8000, truncation="rand_trunc").save_pretrained(path)
    return path


@pytest.mark.parametrize("base_kind,audio_kind", [("llava", "whisper"), ("blip2-opt", "clap"), ("blip2-t5", "whisper")])
def test_stage_a_runs_on_checkpoint_directories(tiny_builtin, tmp_path, base_kind, audio_kind):
    bench, _ = tiny_builtin
    base = _save_base(base_kind, bench, tmp_path / "base")
    audio = _save_audio(audio_kind, tmp_path / "audio")
    m = run_stage_a(BuiltinSource(bench), base, load_stage_a_config(None, FAST), tmp_path / "run", audio=audio,
                    progress=False, max_eval=10)
    assert m["frozen_byte_identical"] and m["answers_identical_gate_closed"] == 1.0
    assert m["history"][0]["loss_retention"] == 0.0  # zero gate: adapted == base
    assert all(math.isfinite(h["loss_audio"]) and h["loss_audio"] > 0 for h in m["history"])
    assert len(m["history"]) == 6 and "retention_vl_accuracy" in m["history"][2]


def test_checkpoint_base_needs_an_audio_checkpoint(tiny_builtin, tmp_path):
    bench, _ = tiny_builtin
    base = _save_base("llava", bench, tmp_path / "base")
    with pytest.raises(ValueError, match="--audio must name a local audio encoder checkpoint"):
        run_stage_a(BuiltinSource(bench), base, load_stage_a_config(None, FAST), tmp_path / "run", progress=False)
