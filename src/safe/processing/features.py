"""Audio front ends (waveforms -> the encoder's input features) and the policy's cheap audio preview.

Built-in front end: log-mel features of the built-in benchmark's clips, as the built-in audio encoder
reads them.

The features come from transformers' real :class:`~transformers.WhisperFeatureExtractor`, configured
small: 32 mel bins over 1 s at 16 kHz with a 10 ms hop, i.e. ``(32, 100)`` per clip. Using the real
extractor (not a re-implementation) means the built-in encoder's checkpoint directory carries a
``preprocessor_config.json`` that any Whisper pipeline can read, and a real Whisper checkpoint swaps
in by changing only the configuration.

Each clip is normalised on its own (Whisper's log10, floor at ``max - 8``, then ``(x + 4) / 4``), so
the features do not depend on which other clips share a batch.
"""
from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

#: Keyword arguments of the :class:`~transformers.WhisperFeatureExtractor` of the built-in encoder:
#: 32 mel bins, 16 kHz, 25 ms window (``n_fft`` 400), 10 ms hop, 1 s chunks -> 100 frames per clip.
FEATURE_CONFIG: dict[str, int] = {
    "feature_size": 32,
    "sampling_rate": 16000,
    "hop_length": 160,
    "n_fft": 400,
    "chunk_length": 1,
}
#: Mel bins per frame.
NUM_MEL_BINS: int = FEATURE_CONFIG["feature_size"]
#: Frames per clip (``chunk_length * sampling_rate // hop_length``).
NUM_FRAMES: int = FEATURE_CONFIG["chunk_length"] * FEATURE_CONFIG["sampling_rate"] // FEATURE_CONFIG["hop_length"]

# The extractor's STFT holds (batch, 201, 101) complex values; chunks of this many clips keep that
# under ~50 MB while staying as fast per clip as one big batch (measured: ~0.7 ms / clip on 2 threads).
_CHUNK = 256


def make_feature_extractor():
    """A new :class:`~transformers.WhisperFeatureExtractor` with :data:`FEATURE_CONFIG` (no download)."""
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(**FEATURE_CONFIG)


@lru_cache(maxsize=1)
def _shared_extractor():
    # Building the extractor computes its mel filter bank; do it once per process for log_mel.
    return make_feature_extractor()


def log_mel(waveforms: Sequence[np.ndarray] | np.ndarray) -> torch.FloatTensor:
    """Log-mel features ``(n, 32, 100)`` (float32) of ``n`` mono 16 kHz clips.

    ``waveforms``: a list of 1-D arrays (lengths may differ), a ``(n, samples)`` array, or one 1-D
    array (treated as a single clip, giving ``n = 1``). Clips shorter than 1 s are zero-padded at the
    end and longer ones truncated to their first second, as the extractor does. An empty batch gives
    an empty ``(0, 32, 100)`` tensor.
    """
    if isinstance(waveforms, np.ndarray):
        if waveforms.ndim == 1:
            waveforms = waveforms[None]
        if waveforms.ndim != 2:
            raise ValueError(f"log_mel expects (n, samples) or (samples,) arrays, got shape {waveforms.shape}")
        clips = [np.asarray(w, dtype=np.float32) for w in waveforms]
    else:
        clips = [np.asarray(w, dtype=np.float32).reshape(-1) for w in waveforms]
    if not clips:
        return torch.zeros(0, NUM_MEL_BINS, NUM_FRAMES)
    extractor = _shared_extractor()
    parts = []
    for i in range(0, len(clips), _CHUNK):
        out = extractor(clips[i:i + _CHUNK], sampling_rate=FEATURE_CONFIG["sampling_rate"], return_tensors="pt")
        parts.append(out["input_features"])
    return torch.cat(parts).float()


class BuiltinFrontEnd:
    """Waveforms -> log-mel features of the built-in Whisper-architecture encoder (16 kHz, 1 s window):
    the same numbers as :func:`log_mel`, so features match those the model was trained on."""

    sampling_rate = FEATURE_CONFIG["sampling_rate"]
    window_seconds: float | None = float(FEATURE_CONFIG["chunk_length"])

    def __call__(self, waveforms) -> torch.Tensor:
        return finite_features(log_mel(list(waveforms)))

    def config(self) -> dict:
        return FEATURE_CONFIG

    @property
    def extractor(self):
        """The equivalent transformers feature extractor (what ``save_pretrained`` writes)."""
        return make_feature_extractor()


WAVEFORM_WINDOW_SECONDS = 10.0
"""Fixed clip length of the raw-waveform extractors (wav2vec2 / HuBERT / WavLM), which pad only to the
longest clip of a batch: padding / truncating every clip to one length keeps an encoder's output length
the same in every batch (the embedding cache stacks them)."""


class FeatureFrontEnd:
    """Waveforms -> the audio encoder's input (``input_features``, or ``input_values`` for AST and the
    raw-waveform encoders) with the checkpoint's own feature extractor.

    ``window_seconds``: the longest clip the extractor keeps (Whisper's ``n_samples``, CLAP's
    ``nb_max_samples``, AST's ``max_length`` frames at its 10 ms shift), for raw-waveform extractors
    ``waveform_seconds`` (default :data:`WAVEFORM_WINDOW_SECONDS`), to which every clip is padded or cut."""

    def __init__(self, checkpoint: str | Path | None = None, extractor=None,
                 waveform_seconds: float = WAVEFORM_WINDOW_SECONDS) -> None:
        if extractor is None:
            from transformers import AutoFeatureExtractor

            extractor = AutoFeatureExtractor.from_pretrained(str(checkpoint), local_files_only=True)
        self.extractor = extractor
        self.sampling_rate = int(self.extractor.sampling_rate)
        n = getattr(extractor, "n_samples", None) or getattr(extractor, "nb_max_samples", None)
        self.waveform = type(extractor).__name__ == "Wav2Vec2FeatureExtractor"
        if self.waveform:
            n = int(round(waveform_seconds * self.sampling_rate))
        elif type(extractor).__name__ == "ASTFeatureExtractor":
            n = int(extractor.max_length) * self.sampling_rate // 100
        self.window_seconds = float(n) / self.sampling_rate if n else None

    def config(self) -> dict:
        """The extractor's settings (part of the embedding cache's namespace)."""
        extra = {"safe_window_seconds": self.window_seconds} if self.waveform else {}
        return {**self.extractor.to_dict(), **extra}

    def __call__(self, waveforms) -> torch.Tensor:
        kwargs = {}
        if self.waveform:
            kwargs = {"padding": "max_length", "truncation": True,
                      "max_length": int(round(self.window_seconds * self.sampling_rate))}
        out = self.extractor(list(waveforms), sampling_rate=self.sampling_rate, return_tensors="pt", **kwargs)
        return finite_features(out["input_features"] if "input_features" in out else out["input_values"])


def finite_features(features: torch.Tensor) -> torch.Tensor:
    """``features`` unchanged, or a ``ValueError`` naming the clips whose features are NaN / infinite: they
    must never reach the encoder and adapters (the answer would silently be garbage)."""
    bad = ~torch.isfinite(torch.as_tensor(features)).flatten(1).all(1)
    if bool(bad.any()):
        raise ValueError(f"audio[{', '.join(str(i) for i in bad.nonzero().flatten().tolist())}]: the clip's audio "
                         "features are NaN or infinite (samples far outside [-1, 1]?)")
    return features


# --------------------------------------------------------------------------------------------------
# The policy's audio preview
PREVIEW_SEGMENTS = 16
PREVIEW_DIM = 2 * PREVIEW_SEGMENTS + 2
_LOG_FLOOR = 1e-5


def audio_preview(waveforms: Sequence, segments: int = PREVIEW_SEGMENTS) -> torch.Tensor:
    """Cheap statistics of raw waveforms: (n, 2 * segments + 2) float32.

    Per clip: log10 RMS of each of ``segments`` equal parts (an energy envelope: onsets, beeps,
    silence), the zero-crossing rate of each part (a pitch / noisiness proxy), then log10 of the
    overall RMS and of the peak. Clips may differ in length; a clip shorter than ``segments`` samples
    is zero-padded, and the last ``len % segments`` samples only enter the overall statistics. Raises ``ValueError`` for a clip that is not 1-D or not finite.
    """
    if isinstance(segments, bool) or not isinstance(segments, int) or segments < 1:
        raise ValueError(f"segments must be a positive integer, got {segments!r}")
    rows = []
    for i, w in enumerate(waveforms):
        # float64: squares of loud float samples overflow float32 (the statistics are logs anyway)
        x = np.asarray(w.detach().cpu() if isinstance(w, torch.Tensor) else w, dtype=np.float64)
        if x.ndim != 1:
            raise ValueError(f"waveforms[{i}] must be a 1-D mono clip, got shape {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError(f"waveforms[{i}] holds NaN or inf samples")
        if x.size < segments:
            x = np.pad(x, (0, segments - x.size))
        # Equal segments over the first segments * (len // segments) samples; the < segments left over
        # are ignored, which keeps the statistics one vectorised reduction per clip.
        parts = x[: segments * (x.size // segments)].reshape(segments, -1)
        rms = np.sqrt(np.mean(parts * parts, axis=1))
        sign = np.signbit(parts)
        zcr = np.mean(sign[:, 1:] != sign[:, :-1], axis=1) if parts.shape[1] > 1 else np.zeros(segments)
        overall = np.sqrt(np.mean(x * x))
        rows.append(np.concatenate([np.log10(rms + _LOG_FLOOR), zcr,
                                    [np.log10(overall + _LOG_FLOOR), np.log10(np.abs(x).max() + _LOG_FLOOR)]]))
    if not rows:
        return torch.zeros(0, 2 * segments + 2)
    out = np.stack(rows).astype(np.float32)
    if not np.isfinite(out).all():  # beyond float32's range: never hand the policy an inf / NaN state
        raise ValueError("the audio preview of a clip is not finite (samples far outside [-1, 1]?)")
    return torch.from_numpy(out)


__all__ = ["WAVEFORM_WINDOW_SECONDS", "FEATURE_CONFIG", "NUM_FRAMES", "NUM_MEL_BINS", "PREVIEW_DIM", "PREVIEW_SEGMENTS", "BuiltinFrontEnd",
           "FeatureFrontEnd", "audio_preview", "finite_features", "log_mel", "make_feature_extractor"]
