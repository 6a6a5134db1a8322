"""The built-in audio encoder: log-mel features, tag vocabulary, build / save / reload, determinism."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from safe.bench.audio import MAX_BEEPS, PITCHED_KINDS, PITCHES, SOUND_KINDS, synthesize_clip
from safe.bench.audio_model import (
    AUDIO_TAGS,
    BUILD_INFO_FILE,
    AudioEncoderBuildConfig,
    build_audio_encoder,
    clip_tags,
    make_clip_bank,
    tag_vector,
)
from safe.models.audio_encoders import AudioEncoder
from safe.models.loading import load_audio_encoder
from safe.processing.features import FEATURE_CONFIG, NUM_FRAMES, NUM_MEL_BINS, log_mel, make_feature_extractor

SR = FEATURE_CONFIG["sampling_rate"]


def _clip(kind, seed=0, **kw):
    return synthesize_clip(kind, np.random.default_rng(seed), **kw)


# ---------------------------------------------------------------------------------------------
# Features
# ---------------------------------------------------------------------------------------------
def test_log_mel_shape_dtype_and_input_forms():
    clips = [_clip("tone", pitch="low"), _clip("noise"), _clip("beeps", n_beeps=3, pitch="high")]
    feats = log_mel(clips)
    assert feats.shape == (3, NUM_MEL_BINS, NUM_FRAMES) == (3, 32, 100)
    assert feats.dtype == torch.float32 and torch.isfinite(feats).all()
    assert torch.equal(log_mel(np.stack(clips)), feats)  # (n, samples) array == list
    assert torch.equal(log_mel(clips[1]), feats[1:2])  # one 1-D clip -> a batch of one
    assert log_mel([]).shape == (0, 32, 100)
    with pytest.raises(ValueError):
        log_mel(np.zeros((2, 2, SR), dtype=np.float32))


def test_log_mel_is_per_clip_and_pads_or_truncates_to_one_second():
    clips = [_clip(k, seed=i) for i, k in enumerate(SOUND_KINDS)]
    batch = log_mel(clips)
    alone = torch.cat([log_mel([c]) for c in clips])
    assert torch.equal(batch, alone)  # normalisation is per clip: batch-mates do not matter
    x = _clip("organ", pitch="high")
    longer = np.concatenate([x, _clip("noise", seed=5)])  # 2 s: the second second is dropped
    assert torch.equal(log_mel([longer]), log_mel([x]))
    half = x[: SR // 2]
    padded = np.concatenate([half, np.zeros(SR - len(half), dtype=np.float32)])
    assert torch.equal(log_mel([half]), log_mel([padded]))


def test_different_sounds_give_different_features():
    low, high = _clip("tone", pitch="low"), _clip("tone", pitch="high")
    feats = log_mel([low, high, _clip("noise"), _clip("upchirp")])
    for i in range(4):
        for j in range(i + 1, 4):
            assert (feats[i] - feats[j]).abs().mean() > 0.05, (i, j)
    # A low tone puts its energy in lower mel bins than a high tone.
    def centroid(f):
        return (f.clamp(min=0).sum(-1) * torch.arange(NUM_MEL_BINS)).sum() / f.clamp(min=0).sum()

    assert centroid(feats[0] + 1.5) < centroid(feats[1] + 1.5)


def test_feature_extractor_config():
    fe = make_feature_extractor()
    assert fe.feature_size == 32 and fe.sampling_rate == SR and fe.hop_length == 160 and fe.n_fft == 400
    assert fe.nb_max_frames == NUM_FRAMES and fe.n_samples == SR


# ---------------------------------------------------------------------------------------------
# Tags and config
# ---------------------------------------------------------------------------------------------
def test_tag_vocabulary_covers_every_sound_pitch_and_beep_count():
    assert len(set(AUDIO_TAGS)) == len(AUDIO_TAGS) == len(SOUND_KINDS) + len(PITCHES) + MAX_BEEPS
    assert set(SOUND_KINDS) <= set(AUDIO_TAGS)
    assert {f"pitch:{p}" for p in PITCHES} <= set(AUDIO_TAGS)
    assert {f"beeps:{n}" for n in range(1, MAX_BEEPS + 1)} <= set(AUDIO_TAGS)
    assert clip_tags("beeps", "high", 3) == ["beeps", "pitch:high", "beeps:3"]
    assert clip_tags("noise") == ["noise"]
    v = tag_vector(clip_tags("bell", "low"))
    assert v.sum() == 2 and v[AUDIO_TAGS.index("bell")] == 1 and v[AUDIO_TAGS.index("pitch:low")] == 1
    with pytest.raises(ValueError):
        clip_tags("violin")
    with pytest.raises(ValueError):
        clip_tags("beeps", "high", MAX_BEEPS + 1)


def test_clip_bank_is_deterministic_and_labelled_consistently():
    cfg = AudioEncoderBuildConfig.tiny()
    w1, y1, m1 = make_clip_bank(40, np.random.default_rng(3), cfg)
    w2, y2, m2 = make_clip_bank(40, np.random.default_rng(3), cfg)
    assert m1 == m2 and np.array_equal(y1, y2) and all(np.array_equal(a, b) for a, b in zip(w1, w2))
    kinds = y1[:, : len(SOUND_KINDS)]
    assert (kinds.sum(1) == 1).all()  # exactly one sound-kind tag per clip
    for row, meta in zip(y1, m1):
        assert row.sum() == 1 + (meta["kind"] in PITCHED_KINDS) + (meta["kind"] == "beeps")
        assert [AUDIO_TAGS[i] for i in np.flatnonzero(row)] == clip_tags(meta["kind"], meta["pitch"], meta["n_beeps"])


def test_config_validation_and_round_trip():
    cfg = AudioEncoderBuildConfig.tiny(seed=3)
    assert AudioEncoderBuildConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    for bad in (dict(steps=0), dict(d_model=63), dict(max_source_positions=40), dict(noisy_share=1.5),
                dict(snr_db_range=(20.0, 5.0)), dict(lr=0.0)):
        with pytest.raises(ValueError):
            AudioEncoderBuildConfig(**bad)


# ---------------------------------------------------------------------------------------------
# Build, save, reload
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("audio_enc")
    state = torch.get_rng_state()
    metrics = build_audio_encoder(out, AudioEncoderBuildConfig.tiny(), progress=False)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's global RNG is untouched
    return out, metrics


def test_tiny_build_saves_a_loadable_whisper_encoder(tiny_build):
    out, metrics = tiny_build
    assert set(metrics) >= {"tag_exact_match", "tag_f1", "steps", "seconds", "parameters"}
    assert 0.0 <= metrics["tag_exact_match"] <= 1.0 and 0.0 <= metrics["tag_f1"] <= 1.0
    assert metrics["steps"] == AudioEncoderBuildConfig.tiny().steps
    assert json.loads((out / "config.json").read_text())["architectures"] == ["WhisperEncoder"]
    info = json.loads((out / BUILD_INFO_FILE).read_text())
    assert info["tags"] == list(AUDIO_TAGS) and info["config"] == AudioEncoderBuildConfig.tiny().to_dict()

    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor.from_pretrained(out, local_files_only=True)
    assert (fe.feature_size, fe.sampling_rate, fe.hop_length, fe.n_fft, fe.nb_max_frames) == (32, SR, 160, 400, 100)

    model = load_audio_encoder(str(out))
    assert type(model).__name__ == "WhisperEncoder"
    assert sum(p.numel() for p in model.parameters()) == metrics["parameters"]
    enc = AudioEncoder(model)
    feats = log_mel([_clip("tone", pitch="low"), _clip("beeps", n_beeps=2, pitch="high"), _clip("noise")])
    tokens = enc.encode(feats)
    assert tokens.shape == (3, 50, 64) and enc.output_dim == 64 and torch.isfinite(tokens).all()
    assert not any(p.requires_grad for p in enc.parameters())


def test_build_is_deterministic(tiny_build, tmp_path):
    out, _ = tiny_build
    build_audio_encoder(tmp_path / "again", AudioEncoderBuildConfig.tiny(), progress=False)
    a = load_audio_encoder(str(out)).state_dict()
    b = load_audio_encoder(str(tmp_path / "again")).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    build_audio_encoder(tmp_path / "seed1", AudioEncoderBuildConfig.tiny(seed=1), progress=False)
    c = load_audio_encoder(str(tmp_path / "seed1")).state_dict()
    assert not all(torch.equal(a[k], c[k]) for k in a)
