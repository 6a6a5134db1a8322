"""The built-in frozen audio encoder: a tiny Whisper-architecture encoder pretrained as a sound tagger.

SAFE's embedded default needs a *pretrained* audio encoder that installs offline and builds on a
2-core CPU in a couple of minutes. This module makes one: a real
:class:`transformers.models.whisper.modeling_whisper.WhisperEncoder` (so SAFE runs it through exactly
the code path of a real Whisper checkpoint), randomly initialised and trained to tag the built-in
benchmark's sounds (:func:`safe.bench.audio.synthesize_clip`) from their log-mel features
(:func:`safe.processing.features.log_mel`). The tagging head is thrown away afterwards; what is saved
is the encoder alone, whose last hidden states ``(n, 50, 64)`` are what SAFE's projector reads.

The encoder stands in for a general pretrained encoder such as CLAP, which has heard every kind of
sound long before SAFE is trained. It is therefore trained on **all** of :data:`SOUND_KINDS`,
including the kinds the benchmark holds out of SAFE's own training (``SynthConfig.held_out_sounds``):
the out-of-distribution test measures whether SAFE's adapters generalise to sounds *they* never saw,
not whether the encoder can represent them.

Usage::

    metrics = build_audio_encoder("runs/demo/audio_encoder", AudioEncoderBuildConfig())
    encoder = safe.models.loading.load_audio_encoder("runs/demo/audio_encoder")
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from safe.bench.audio import MAX_BEEPS, PITCHED_KINDS, PITCHES, SOUND_KINDS, synthesize_clip
from safe.evaluation.robustness import add_noise
from safe.processing.features import FEATURE_CONFIG, NUM_FRAMES, NUM_MEL_BINS, log_mel, make_feature_extractor

logger = logging.getLogger(__name__)

#: The tagging vocabulary (multi-label; 16 tags). Every clip has exactly one sound-kind tag
#: (the 10 names of :data:`SOUND_KINDS`), pitched kinds (:data:`PITCHED_KINDS`) also one of
#: ``pitch:low`` / ``pitch:high``, and ``beeps`` clips also one of ``beeps:1`` .. ``beeps:4`` (the
#: number of beeps). These are exactly the audio facts the benchmark asks about (sound kind, pitch,
#: beep count; the sounding object follows from the kind), so a good tagger's hidden states carry them.
AUDIO_TAGS: tuple[str, ...] = (
    SOUND_KINDS
    + tuple(f"pitch:{p}" for p in PITCHES)
    + tuple(f"beeps:{n}" for n in range(1, MAX_BEEPS + 1))
)
_TAG_INDEX = {tag: i for i, tag in enumerate(AUDIO_TAGS)}

#: File (next to ``config.json``) with the build config and the metrics of the build.
BUILD_INFO_FILE = "safe_audio_encoder_build.json"


def clip_tags(kind: str, pitch: str | None = None, n_beeps: int | None = None) -> list[str]:
    """The :data:`AUDIO_TAGS` of one clip, e.g. ``("beeps", "high", 3) -> ["beeps", "pitch:high", "beeps:3"]``."""
    if kind not in SOUND_KINDS:
        raise ValueError(f"unknown sound kind {kind!r}; known: {list(SOUND_KINDS)}")
    tags = [kind]
    if pitch is not None:
        tags.append(f"pitch:{pitch}")
    if n_beeps is not None:
        tags.append(f"beeps:{int(n_beeps)}")
    unknown = [t for t in tags if t not in _TAG_INDEX]
    if unknown:
        raise ValueError(f"tags {unknown} are not in AUDIO_TAGS {list(AUDIO_TAGS)}")
    return tags


def tag_vector(tags: list[str]) -> np.ndarray:
    """Multi-hot float32 vector over :data:`AUDIO_TAGS`."""
    v = np.zeros(len(AUDIO_TAGS), dtype=np.float32)
    for t in tags:
        v[_TAG_INDEX[t]] = 1.0
    return v


@dataclass(frozen=True)
class AudioEncoderBuildConfig:
    """Everything that determines the built-in encoder's weights (same config -> same weights).

    The defaults build in about 1-2 minutes on 2 CPU threads; :meth:`tiny` is for tests.
    """

    seed: int = 0
    """Seeds the clip bank, the weight initialisation and the batch order."""
    steps: int = 2500
    """Optimiser steps (2,500 x 64 clips: ~65 s on 2 CPU threads, >= 99% exact tag sets on the eval bank)."""
    batch_size: int = 64
    """Clips per step, drawn with replacement from the training bank."""
    lr: float = 2e-3
    """Peak AdamW learning rate (after linear warm-up, then cosine decay to 0)."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    warmup_steps: int = 100
    """Linear warm-up steps of the learning rate."""
    n_train_clips: int = 8000
    """Clips in the training bank, generated once up front (synthesising on the fly would dominate the time;
    ~1.7 ms per clip with featurisation). 8,000 rather than 4,000 mainly helps the noisy clips."""
    n_eval_clips: int = 1000
    """Clips in the held-out evaluation bank (its own random stream, never used for training)."""
    beeps_share: float = 0.25
    """Share of ``beeps`` clips in the banks; the other kinds share the rest equally. Beep counting
    is the hardest tag, so it gets more than the uniform 1/10."""
    noisy_share: float = 0.3
    """Share of clips with white background noise added (robustness to the benchmark's SNR settings)."""
    snr_db_range: tuple[float, float] = (5.0, 30.0)
    """SNR in dB of the noisy clips, drawn uniformly from this range."""
    d_model: int = 64
    """Encoder width (the dimension of the audio tokens SAFE sees)."""
    encoder_layers: int = 2
    """Transformer layers of the encoder."""
    encoder_attention_heads: int = 4
    """Attention heads per layer."""
    encoder_ffn_dim: int = 128
    """Feed-forward width per layer."""
    max_source_positions: int = NUM_FRAMES // 2
    """Output tokens per clip: Whisper's second convolution halves the 100 input frames to 50."""
    eval_every: int = 0
    """Evaluate on the eval bank every this many steps (logged); 0 evaluates only at the end."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "snr_db_range", tuple(float(v) for v in self.snr_db_range))
        for name in ("steps", "batch_size", "n_train_clips", "n_eval_clips", "d_model", "encoder_layers",
                     "encoder_attention_heads", "encoder_ffn_dim", "max_source_positions"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"AudioEncoderBuildConfig.{name} must be a positive integer, got {value!r}")
        if self.d_model % self.encoder_attention_heads:
            raise ValueError(f"d_model {self.d_model} must be a multiple of encoder_attention_heads "
                             f"{self.encoder_attention_heads}")
        if self.max_source_positions * 2 != NUM_FRAMES:
            raise ValueError(f"max_source_positions must be {NUM_FRAMES // 2}: the features have {NUM_FRAMES} "
                             f"frames and Whisper's encoder halves them")
        for name in ("beeps_share", "noisy_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"AudioEncoderBuildConfig.{name} must be in [0, 1], got {getattr(self, name)!r}")
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup_steps < 0 or self.eval_every < 0:
            raise ValueError("lr must be > 0 and weight_decay, warmup_steps, eval_every >= 0")
        if len(self.snr_db_range) != 2 or self.snr_db_range[0] > self.snr_db_range[1]:
            raise ValueError(f"snr_db_range must be (low, high) with low <= high, got {self.snr_db_range!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (inverse of :meth:`from_dict`)."""
        d = asdict(self)
        d["snr_db_range"] = list(self.snr_db_range)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AudioEncoderBuildConfig:
        """Build from :meth:`to_dict` output."""
        return cls(**d)

    @classmethod
    def tiny(cls, seed: int = 0, **overrides: Any) -> AudioEncoderBuildConfig:
        """A few steps on a small bank: for tests and CI (a few seconds; the encoder is not useful)."""
        # Same architecture as the default (so shapes match what SAFE sees), far less data and training.
        small = dict(steps=20, batch_size=16, warmup_steps=2, n_train_clips=64, n_eval_clips=32)
        return cls(seed=seed, **{**small, **overrides})


def whisper_config(config: AudioEncoderBuildConfig):
    """The :class:`~transformers.WhisperConfig` of the encoder (the decoder fields are unused but kept small)."""
    from transformers import WhisperConfig

    return WhisperConfig(
        num_mel_bins=NUM_MEL_BINS, d_model=config.d_model, encoder_layers=config.encoder_layers,
        encoder_attention_heads=config.encoder_attention_heads, encoder_ffn_dim=config.encoder_ffn_dim,
        max_source_positions=config.max_source_positions,
        decoder_layers=1, decoder_attention_heads=config.encoder_attention_heads,
        decoder_ffn_dim=config.encoder_ffn_dim, vocab_size=64, max_target_positions=16,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
    )


def make_clip_bank(n: int, rng: np.random.Generator, config: AudioEncoderBuildConfig,
                   progress: bool = False, desc: str = "audio clips") -> tuple[list[np.ndarray], np.ndarray, list[dict]]:
    """``n`` random clips from ``rng``: (waveforms, multi-hot targets ``(n, len(AUDIO_TAGS))``, per-clip metadata).

    Kinds are drawn with ``config.beeps_share`` for ``beeps`` and the rest uniform; pitch and beep
    count uniform; ``config.noisy_share`` of the clips get white noise at an SNR from ``config.snr_db_range``.
    """
    others = [k for k in SOUND_KINDS if k != "beeps"]
    probs = np.array([config.beeps_share if k == "beeps" else (1.0 - config.beeps_share) / len(others)
                      for k in SOUND_KINDS])
    waves, targets, meta = [], np.zeros((n, len(AUDIO_TAGS)), dtype=np.float32), []
    for i in tqdm(range(n), desc=desc, unit="clip", disable=not progress, leave=False):
        kind = SOUND_KINDS[int(rng.choice(len(SOUND_KINDS), p=probs))]
        pitch = PITCHES[int(rng.integers(len(PITCHES)))] if kind in PITCHED_KINDS else None
        n_beeps = int(rng.integers(1, MAX_BEEPS + 1)) if kind == "beeps" else None
        x = synthesize_clip(kind, rng, pitch=pitch, n_beeps=n_beeps)
        snr = None
        if rng.random() < config.noisy_share:
            snr = float(rng.uniform(*config.snr_db_range))
            x = add_noise(x, snr, rng)
        waves.append(x)
        targets[i] = tag_vector(clip_tags(kind, pitch, n_beeps))
        meta.append({"kind": kind, "pitch": pitch, "n_beeps": n_beeps, "snr_db": snr})
    return waves, targets, meta


class _Tagger(nn.Module):
    """Encoder + temporary linear head on the mean-pooled last hidden state (discarded after the build)."""

    def __init__(self, encoder: nn.Module, d_model: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(d_model, len(AUDIO_TAGS))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(features).last_hidden_state.mean(dim=1))


@torch.no_grad()
def _evaluate(tagger: _Tagger, features: torch.Tensor, targets: torch.Tensor, batch_size: int = 256) -> dict[str, float]:
    """Exact tag-set match and micro F1 (threshold 0.5 on the sigmoid, i.e. logit > 0)."""
    was_training = tagger.training
    tagger.eval()
    pred = torch.cat([tagger(features[i:i + batch_size]) > 0 for i in range(0, len(features), batch_size)])
    tagger.train(was_training)
    truth = targets > 0.5
    tp = (pred & truth).sum().item()
    fp = (pred & ~truth).sum().item()
    fn = (~pred & truth).sum().item()
    return {
        "tag_exact_match": float((pred == truth).all(dim=1).double().mean().item()),
        "tag_f1": float(2 * tp / max(1, 2 * tp + fp + fn)),
    }


def build_audio_encoder(out_dir: str | Path, config: AudioEncoderBuildConfig | None = None,
                        progress: bool = True) -> dict[str, Any]:
    """Pretrain the built-in encoder as a sound tagger and save it to ``out_dir``; return its metrics.

    Steps: generate the training and evaluation clip banks (deterministic in ``config.seed``; on all
    :data:`SOUND_KINDS`, see the module docstring), featurise them with
    :func:`~safe.processing.features.log_mel`, train a randomly initialised ``WhisperEncoder`` plus a
    linear head on its mean-pooled last hidden state with BCE-with-logits over :data:`AUDIO_TAGS`
    (AdamW, linear warm-up then cosine decay, gradient norm clipped at 1), then discard the head.

    ``out_dir`` receives the encoder (``save_pretrained``: ``config.json`` with architectures
    ``["WhisperEncoder"]`` and safetensors weights, loadable by
    :func:`safe.models.loading.load_audio_encoder`), the feature extractor's
    ``preprocessor_config.json``, and :data:`BUILD_INFO_FILE` (build config and metrics).

    Returns ``{"tag_exact_match", "tag_f1"`` (on the held-out eval bank, fractions in [0, 1]),
    ``"tag_exact_match_clean", "tag_exact_match_noisy"`` (the same split by noise), ``"steps",
    "seconds"`` (wall time of the whole build), ``"parameters"}`` (of the saved encoder).
    Thread count is the caller's (``torch.set_num_threads``); the global torch RNG is left untouched.
    Same config and thread count -> identical weights.
    """
    from transformers import get_cosine_schedule_with_warmup
    from transformers.models.whisper.modeling_whisper import WhisperEncoder
    from transformers.utils import logging as hf_logging

    config = config if config is not None else AudioEncoderBuildConfig()
    t0 = time.perf_counter()
    out = Path(out_dir)

    # Separate streams for train and eval clips, so changing one bank's size never changes the other.
    train_rng = np.random.default_rng([config.seed, 0])
    eval_rng = np.random.default_rng([config.seed, 1])
    train_waves, train_targets, _ = make_clip_bank(config.n_train_clips, train_rng, config, progress, "train clips")
    eval_waves, eval_targets, eval_meta = make_clip_bank(config.n_eval_clips, eval_rng, config, progress, "eval clips")
    train_x, eval_x = log_mel(train_waves), log_mel(eval_waves)
    train_y, eval_y = torch.from_numpy(train_targets), torch.from_numpy(eval_targets)
    del train_waves, eval_waves
    t_bank = time.perf_counter() - t0
    logger.info("audio encoder build: %d + %d clips synthesised and featurised in %.1f s",
                len(train_x), len(eval_x), t_bank)

    hf_logging.set_verbosity_error()  # no chatter about unused decoder fields
    # fork_rng: seed the initialisation without disturbing the caller's global RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        encoder = WhisperEncoder(whisper_config(config))
        tagger = _Tagger(encoder, config.d_model)
    tagger.train()
    batch_gen = torch.Generator().manual_seed(config.seed)

    params = [p for p in tagger.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]  # biases and LayerNorm gains are not decayed
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=config.lr, betas=(0.9, 0.98))
    scheduler = get_cosine_schedule_with_warmup(optimizer, min(config.warmup_steps, config.steps - 1), config.steps)
    loss_fn = nn.BCEWithLogitsLoss()

    loss_ema = math.nan
    with tqdm(range(config.steps), desc="audio encoder", unit="step", disable=not progress) as bar:
        for step in bar:
            idx = torch.randint(len(train_x), (config.batch_size,), generator=batch_gen)
            loss = loss_fn(tagger(train_x[idx]), train_y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            value = loss.item()
            loss_ema = value if math.isnan(loss_ema) else 0.95 * loss_ema + 0.05 * value
            if step % 10 == 0 or step == config.steps - 1:
                bar.set_postfix(loss=f"{loss_ema:.4f}")
            if config.eval_every and (step + 1) % config.eval_every == 0 and step + 1 < config.steps:
                logger.info("audio encoder step %d: loss %.4f, eval %s", step + 1, loss_ema,
                            _evaluate(tagger, eval_x, eval_y))

    metrics: dict[str, Any] = _evaluate(tagger, eval_x, eval_y)
    noisy = torch.tensor([m["snr_db"] is not None for m in eval_meta], dtype=torch.bool)
    for name, mask in (("clean", ~noisy), ("noisy", noisy)):
        if mask.any():
            metrics[f"tag_exact_match_{name}"] = _evaluate(tagger, eval_x[mask], eval_y[mask])["tag_exact_match"]
    encoder = tagger.encoder.eval()
    metrics.update({
        "final_loss": float(loss_ema),
        "steps": config.steps,
        "parameters": int(sum(p.numel() for p in encoder.parameters())),
    })

    out.mkdir(parents=True, exist_ok=True)
    encoder.save_pretrained(out)
    make_feature_extractor().save_pretrained(out)
    metrics["seconds"] = float(time.perf_counter() - t0)
    info = {"config": config.to_dict(), "tags": list(AUDIO_TAGS), "feature_config": dict(FEATURE_CONFIG),
            "metrics": metrics}
    (out / BUILD_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    logger.info("audio encoder saved to %s: %s", out, metrics)
    return metrics


__all__ = ["AUDIO_TAGS", "AudioEncoderBuildConfig", "BUILD_INFO_FILE", "build_audio_encoder", "clip_tags",
           "make_clip_bank", "tag_vector", "whisper_config"]
