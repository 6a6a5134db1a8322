"""Preset names are resolved by the benchmark package; the library loader takes checkpoints only."""
from __future__ import annotations

import pytest

from safe.bench import presets as P
from safe.models.loading import load_audio_encoder, load_base


def test_library_loader_refuses_preset_names_naming_the_supported_architectures():
    with pytest.raises(FileNotFoundError, match="'llava' is not an existing checkpoint directory.*Llava"):
        load_base("llava")
    with pytest.raises(FileNotFoundError, match="'whisper' is not an existing checkpoint directory.*Whisper"):
        load_audio_encoder("whisper")


def test_presets_resolve_names_then_fall_back_to_checkpoints(tmp_path):
    base = P.load_base_or_preset("llava")
    assert type(base).__name__ == "LlavaForConditionalGeneration"
    enc = P.load_audio_encoder_or_preset("whisper")
    assert type(enc).__name__ == "WhisperEncoder"
    base.save_pretrained(tmp_path / "b")
    again = P.load_base_or_preset(str(tmp_path / "b"))
    assert all((a == b).all() for a, b in zip(base.state_dict().values(), again.state_dict().values()))
    with pytest.raises(FileNotFoundError, match=r"neither a preset \('llava', 'blip2-opt', 'blip2-t5', 'llava-next'"):
        P.load_base_or_preset("nowhere")
    with pytest.raises(FileNotFoundError, match=r"neither a preset \('whisper', 'clap', 'ast'"):
        P.load_audio_encoder_or_preset("nowhere")
