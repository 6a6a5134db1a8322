"""Signal perturbations for robustness measurements (generic: no dataset knowledge): white noise, and
background sounds taken from the data's own other clips (:func:`mix_background`), at a given SNR."""
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


def mix_background(x: np.ndarray, background: np.ndarray, snr_db: float) -> np.ndarray:
    """Return clip ``x`` with ``background`` (another clip: a real sound, not white noise) mixed in at
    ``snr_db`` dB below ``x``'s mean power, as float32. The background is tiled or cut to ``x``'s length;
    a silent ``x`` or a silent background leaves ``x`` unchanged."""
    x = np.asarray(x, dtype=np.float64)
    b = np.asarray(background, dtype=np.float64).reshape(-1)
    if x.size == 0 or b.size == 0:
        return x.astype(np.float32)
    b = np.resize(b, x.shape[-1])  # tiles a short background, cuts a long one
    px, pb = float(np.mean(x**2)), float(np.mean(b**2))
    if px == 0.0 or pb == 0.0:
        return x.astype(np.float32)
    return (x + b * np.sqrt(px / (pb * 10.0 ** (float(snr_db) / 10.0)))).astype(np.float32)


def other_rows(n: int, rng: np.random.Generator) -> np.ndarray:
    """For each of ``n`` rows a random *other* row (uniform over the ``n - 1`` others; row 0 for ``n`` = 1)."""
    if n <= 1:
        return np.zeros(n, dtype=np.int64)
    pick = rng.integers(0, n - 1, size=n)
    return pick + (pick >= np.arange(n))  # skips the row itself


__all__ = ["add_noise", "mix_background", "other_rows"]
