"""The speech track through the real stages on tiny parts: a tiny track, the tiny built-in VL model, a tiny
Whisper converted from a CTranslate2 file as `--audio`; Stage A trains on it and the per-voice figures read
it (skipped without espeakng-loader)."""
from __future__ import annotations

import importlib.util

import pytest
import torch

pytestmark = pytest.mark.skipif(importlib.util.find_spec("espeakng_loader") is None,
                                reason="speech synthesis needs espeakng-loader (pip install 'safe-av[speech]')")


def test_stage_a_runs_on_the_track_with_a_converted_whisper(tiny_builtin, tmp_path):
    from transformers import WhisperConfig, WhisperModel

    from safe.bench.files import BuiltinSource
    from safe.bench.speech import measure
    from safe.bench.speech.files import generate_speech_benchmark
    from safe.bench.speech.track import SpeechConfig
    from safe.bench.speech.whisper import convert
    from safe.data.prepared import prepare
    from safe.inference.loading import load_trained
    from safe.stages.stage_a import run_stage_a
    from safe.training.config import load_stage_a_config
    from tests.bench.test_speech_whisper import to_ct2, write_ct2

    _, base = tiny_builtin
    torch.manual_seed(0)
    cfg = WhisperConfig(vocab_size=64, num_mel_bins=16, d_model=16, encoder_layers=1, decoder_layers=1,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
                        max_source_positions=1500, max_target_positions=24, pad_token_id=62, bos_token_id=62,
                        eos_token_id=62, decoder_start_token_id=63)
    write_ct2(tmp_path / "model.bin", to_ct2(WhisperModel(cfg)), {})
    audio = convert(tmp_path / "whisper", window_seconds=2, source=tmp_path / "model.bin")
    track = SpeechConfig.tiny(n_train=32, n_test=16)
    source = BuiltinSource(generate_speech_benchmark(tmp_path / "speech", track, progress=False))
    recipe = load_stage_a_config(None, ["steps=3", "warmup_steps=1", "batch_size=8", "retention_every=3",
                                        "retention_examples=4", "checkpoint_every=3", "safe.fusion_layers=[0, -1]",
                                        "safe.num_audio_tokens=4"])
    m = run_stage_a(source, base, recipe, tmp_path / "run", audio=audio, progress=False)
    assert m["steps"] == 3 and m["frozen_byte_identical"]
    assert m["answers_identical_gate_closed"] == 1.0
    assert set(m["per_family"]) >= {"spoken_question", "colour"}
    model, fmt, frontend = load_trained(base, tmp_path / "run" / "checkpoints" / "final", audio)
    assert frontend.window_seconds == 2.0 and model.audio_encoder.output_dim == 16
    rows = [e for e in source.split("ood_test") if e.needs_audio]
    voices = measure.per_voice_accuracy(model, fmt, prepare(rows, fmt, model, frontend))
    assert set(voices) == {"en-us+m1"} and voices["en-us+m1"]["n"] == len(rows)
