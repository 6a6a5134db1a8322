"""Signal perturbations for robustness measurements (generic: no dataset knowledge)."""
from __future__ import annotations

import numpy as np


def add_noise(x: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Return ``x`` plus white Gaussian noise at ``snr_db`` dB below its mean power, as float32.

    Power is measured per clip over the last axis (so a ``(batch, samples)`` array gets per-row
    noise levels) and over the whole clip, silence included. A silent clip is returned unchanged.
    The result is not clipped or rescaled: callers that write 16-bit audio should rescale.
    """
    x = np.asarray(x, dtype=np.float64)
    power = np.mean(x**2, axis=-1, keepdims=True)
    noise = rng.standard_normal(x.shape) * np.sqrt(power / (10.0 ** (float(snr_db) / 10.0)))
    return (x + noise).astype(np.float32)


__all__ = ["add_noise"]
