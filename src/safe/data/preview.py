"""The policy's cheap audio preview: statistics of the raw waveform, no front end, no encoder.

Used by the policy's state (:mod:`safe.policy.features`, which re-exports it) and by evaluation,
which feeds it to a SAFE model with its policy attached.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

PREVIEW_SEGMENTS = 16
PREVIEW_DIM = 2 * PREVIEW_SEGMENTS + 2
_LOG_FLOOR = 1e-5


def audio_preview(waveforms: Sequence[Any], segments: int = PREVIEW_SEGMENTS) -> torch.Tensor:
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
        x = np.asarray(w.detach().cpu() if isinstance(w, torch.Tensor) else w, dtype=np.float32)
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
    return torch.from_numpy(np.stack(rows).astype(np.float32))


__all__ = ["PREVIEW_DIM", "PREVIEW_SEGMENTS", "audio_preview"]
