"""WAV reading and writing with the standard library only (no audio backend to install)."""
from __future__ import annotations

import wave
from pathlib import Path

import numpy as np


class AudioReadError(ValueError):
    """Raised when an audio file is missing or cannot be decoded; the message names the file."""


def write_wav(path: str | Path, samples: np.ndarray, sample_rate: int) -> None:
    """Write mono float samples in [-1, 1] as 16-bit PCM. Values outside are clipped."""
    pcm = (np.clip(np.asarray(samples, dtype=np.float64), -1.0, 1.0) * 32767.0).round().astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(pcm.tobytes())


def read_wav(path: str | Path, target_rate: int | None = None) -> tuple[np.ndarray, int]:
    """Read a PCM WAV file as mono float32 in [-1, 1].

    Multi-channel audio is averaged to mono; with ``target_rate`` the signal is resampled by linear
    interpolation (adequate for the embedded benchmark; real pipelines should resample offline).
    Raises ``AudioReadError`` naming the file if it is missing or not a readable PCM WAV.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioReadError(f"audio file not found: {path}")
    try:
        with wave.open(str(path), "rb") as w:
            channels, width, rate, n = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            raw = w.readframes(n)
    except (wave.Error, EOFError, OSError) as err:
        raise AudioReadError(f"cannot read audio file {path}: {err}") from err
    dtypes = {1: np.uint8, 2: "<i2", 4: "<i4"}
    if width not in dtypes:
        raise AudioReadError(f"cannot read audio file {path}: unsupported sample width {width} bytes")
    x = np.frombuffer(raw, dtype=dtypes[width]).astype(np.float32)
    if width == 1:
        x = (x - 128.0) / 128.0
    else:
        x = x / float(2 ** (8 * width - 1))
    if channels > 1:
        x = x.reshape(-1, channels).mean(axis=1)
    if target_rate is not None and target_rate != rate and len(x) > 1:
        n_out = max(1, int(round(len(x) * target_rate / rate)))
        x = np.interp(np.linspace(0, len(x) - 1, n_out), np.arange(len(x)), x).astype(np.float32)
        rate = target_rate
    return x, rate
