"""Audio in any form a user has -> mono float32 at the encoder's rate, or one clear error.

Decoding is libsndfile's (through ``soundfile``): WAV of any PCM width or float, FLAC, OGG/Vorbis,
and MP3 where the installed libsndfile reads it (1.1+). Resampling is libsoxr's (through ``soxr``,
quality "HQ"), never linear interpolation. The rules, in order:

* **source**: a path (``str`` / ``os.PathLike``), ``bytes`` or a binary file-like object (decoded), or
  a numpy array / torch tensor of samples, which needs its ``sampling_rate`` (an error without it);
* **shape**: 1-D is mono. 2-D is ``(samples, channels)`` when the second axis is the shorter one and
  ``(channels, samples)`` otherwise; the channel axis may hold at most :data:`MAX_CHANNELS`.
  Channels are averaged (an equal-weight downmix);
* **sample type**: floats are used as they are (a peak above 1 is logged, not clipped); integer PCM is
  scaled by its type's full range to [-1, 1] (int16 / 32768, int32 / 2**31, uint8 centred on 128);
* **validity**: no samples, any NaN / infinite sample, or a peak above ``max_peak`` (default
  :data:`MAX_PEAK`: float samples of 1e30 are finite but overflow every feature computed from them) is
  an :class:`AudioInputError`; silence is a valid clip. A file with more than ``max_channels``
  channels (default :data:`MAX_CHANNELS`) is refused from its header, before a sample is decoded;
* **length**: with ``max_seconds`` set (the processor sets it to the encoder's window, e.g. 1 s for
  the built-in encoder, 30 s for Whisper), a longer clip is cut to its first ``max_seconds`` with a
  logged warning naming the input (``long_audio="truncate"``, the default; a file is then read only
  that far), or refused (``long_audio="error"``). Without ``max_seconds`` the whole clip is kept.

Every error is an :class:`AudioInputError` (a ``ValueError``) whose message names the input: the file
name, or the name the caller gives (``"audio[3]"`` for the fourth clip of a batch).
"""
from __future__ import annotations

import io
import logging
import math
import os
import wave
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger("safe.processing")

MAX_CHANNELS = 8
MAX_PEAK = 1000.0
"""Largest absolute sample accepted. Float audio may exceed 1 (headroom, integer PCM passed as floats:
up to 32768 is refused too, as it is not audio in [-1, 1] at any sane gain); beyond this, squares and
spectra overflow float32 and the features turn infinite."""
LONG_AUDIO_RULES = ("truncate", "error")


class AudioInputError(ValueError):
    """Any audio that cannot be used: missing / truncated / not-audio file, unknown format, no samples,
    NaN or infinite samples, a wrong shape or sample type, a missing or bad sampling rate, or (with
    ``long_audio="error"``) a clip longer than the encoder reads. The message names the input."""


class AudioTooLongError(AudioInputError):
    """A clip longer than ``max_seconds`` with ``long_audio="error"``, refused from the file's header
    (frames / rate) before its samples are decoded; ``seconds`` is the clip's length."""

    def __init__(self, message: str, seconds: float | None = None, max_seconds: float | None = None) -> None:
        # Optional: callers re-raise with context as type(err)(message) (safe predict names the request).
        super().__init__(message)
        self.seconds, self.max_seconds = seconds, max_seconds


# Kept for code written against the old WAV reader (safe.data.audio_io).
AudioReadError = AudioInputError


def write_wav(path: str | Path, samples: np.ndarray, sample_rate: int) -> None:
    """Write mono float samples in [-1, 1] as 16-bit PCM. Values outside are clipped."""
    pcm = (np.clip(np.asarray(samples, dtype=np.float64), -1.0, 1.0) * 32767.0).round().astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(pcm.tobytes())


def _check_rate(rate: Any, name: str) -> int:
    if isinstance(rate, bool) or not isinstance(rate, (int, float, np.integer, np.floating)) \
            or not math.isfinite(float(rate)) or float(rate) <= 0 or float(rate) != int(rate):
        raise AudioInputError(f"{name}: sampling_rate must be a positive whole number of Hz, got {rate!r}")
    return int(rate)


def _limit(frames: int, rate: int, name: str, max_seconds: float | None, long_audio: str) -> int:
    """How many of ``frames`` input samples to keep under the length rule (module docstring)."""
    if max_seconds is None:
        return frames
    keep = int(math.ceil(max_seconds * rate))
    if frames <= keep:
        return frames
    seconds = frames / rate
    if long_audio == "error":
        raise AudioTooLongError(f"{name}: {seconds:.1f} s of audio is longer than the {max_seconds:g} s the audio "
                                "encoder reads (long_audio='error'); cut it or pass long_audio='truncate'",
                                seconds, max_seconds)
    logger.warning("%s: %.1f s of audio is longer than the %g s the audio encoder reads; using the first %g s",
                   name, seconds, max_seconds, max_seconds)
    return keep


def _wav_cut_short(head: bytes, total: int) -> str | None:
    """For a RIFF/WAVE byte stream of ``total`` bytes starting with ``head``: a message when its data
    chunk declares more bytes than the stream holds (libsndfile would quietly decode the part that is
    there). Streaming placeholders (a declared size of 0 or 0xFFFFFFFF) are not judged."""
    if len(head) < 12 or head[:4] not in (b"RIFF", b"RF64") or head[8:12] != b"WAVE":
        return None
    offset = 12
    while offset + 8 <= len(head):
        cid, size = head[offset:offset + 4], int.from_bytes(head[offset + 4:offset + 8], "little")
        if cid == b"data":
            have = total - offset - 8
            if size not in (0, 0xFFFFFFFF) and have < size:
                return f"the file is cut short: its header declares {size} bytes of samples, {have} are there"
            return None
        offset += 8 + size + (size & 1)
    return None


def _decode(source: Any, name: str, max_seconds: float | None, long_audio: str,
            max_channels: int = MAX_CHANNELS) -> tuple[np.ndarray, int]:
    """(samples (frames, channels) float32, rate) of a file path, bytes or file-like via libsndfile."""
    import soundfile as sf

    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise AudioInputError(f"audio file not found: {path}")
        source = str(path)
        with open(path, "rb") as fh:
            cut = _wav_cut_short(fh.read(65536), path.stat().st_size)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        source = bytes(source)
        cut = _wav_cut_short(source[:65536], len(source))
        source = io.BytesIO(source)
    else:
        cut = None
    if cut:
        raise AudioInputError(f"cannot read audio {name}: {cut}")
    try:
        with sf.SoundFile(source) as f:
            rate, frames = int(f.samplerate), int(f.frames)
            if frames <= 0:
                raise AudioInputError(f"{name}: the audio has no samples (a header only?)")
            if f.channels > max_channels:  # judged on the header: every channel would be decoded
                raise AudioInputError(f"{name}: the file has {f.channels} channels; at most {max_channels} are "
                                      "accepted")
            keep = _limit(frames, rate, name, max_seconds, long_audio)
            data = f.read(frames=keep, dtype="float32", always_2d=True)
    except AudioInputError:
        raise
    except (sf.SoundFileError, RuntimeError, EOFError, OSError, ValueError, TypeError) as err:
        raise AudioInputError(f"cannot read audio {name}: {err}") from err
    if data.shape[0] == 0:  # a header announcing samples that are not there (a file cut short)
        raise AudioInputError(f"{name}: the audio has no samples (the file is cut short?)")
    return data, rate


def _as_samples(array: Any, name: str) -> np.ndarray:
    """An array / tensor of samples -> float32 (frames, channels) under the shape and type rules."""
    if type(array).__module__.startswith("torch"):
        import torch

        if isinstance(array, torch.Tensor):
            t = array.detach().cpu()
            array = (t.float() if t.dtype in (torch.bfloat16, torch.float16) else t).numpy()
    x = np.asarray(array)
    if x.dtype.kind not in "iuf":
        raise AudioInputError(f"{name}: audio samples must be integers or floats, got dtype {x.dtype}")
    if x.ndim == 1:
        x = x[:, None]
    elif x.ndim == 2:
        if x.shape[1] > x.shape[0]:
            x = x.T  # (channels, samples) -> (samples, channels)
        if x.shape[1] > MAX_CHANNELS:
            raise AudioInputError(f"{name}: a 2-D audio array must be (samples, channels) or (channels, samples) "
                                  f"with at most {MAX_CHANNELS} channels, got shape {tuple(np.shape(array))}")
    else:
        raise AudioInputError(f"{name}: audio must be a 1-D (samples,) or 2-D (samples, channels) array, "
                              f"got shape {tuple(x.shape)}")
    if x.dtype.kind == "f":
        return x.astype(np.float32)
    info = np.iinfo(x.dtype)
    if x.dtype.kind == "u":
        half = (float(info.max) + 1.0) / 2.0
        return ((x.astype(np.float64) - half) / half).astype(np.float32)
    return (x.astype(np.float64) / -float(info.min)).astype(np.float32)


def resample(x: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    """Mono float32 ``x`` at ``rate`` -> ``target_rate`` with libsoxr (HQ); unchanged when equal."""
    if rate == target_rate:
        return x
    import soxr

    return np.ascontiguousarray(soxr.resample(x, rate, target_rate, quality="HQ"), dtype=np.float32)


def load_audio(source: Any, sampling_rate: int | None = None, target_rate: int = 16000, name: str | None = None, *,
               max_seconds: float | None = None, long_audio: str = "truncate", max_peak: float = MAX_PEAK,
               max_channels: int = MAX_CHANNELS) -> np.ndarray:
    """One clip -> 1-D float32 mono samples at ``target_rate`` (the module docstring's rules).

    ``source``: a path, ``bytes``, a binary file-like object, or a numpy array / torch tensor of samples
    (then ``sampling_rate`` is required). ``sampling_rate`` given with a file must match the file's own
    rate. ``name``: how errors and warnings name the input (default: the path, or ``"audio"``).
    ``max_peak`` / ``max_channels``: the validity limits (module docstring). Raises :class:`AudioInputError` for anything unusable."""
    if long_audio not in LONG_AUDIO_RULES:
        raise ValueError(f"long_audio must be one of {LONG_AUDIO_RULES}, got {long_audio!r}")
    if max_seconds is not None and not (isinstance(max_seconds, (int, float)) and max_seconds > 0):
        raise ValueError(f"max_seconds must be a positive number of seconds or None, got {max_seconds!r}")
    target_rate = _check_rate(target_rate, "target_rate")
    is_file = isinstance(source, (str, os.PathLike, bytes, bytearray, memoryview)) or hasattr(source, "read")
    if is_file:
        name = name or (str(source) if isinstance(source, (str, os.PathLike)) else "audio bytes")
        data, rate = _decode(source, name, max_seconds, long_audio, max_channels)
        if sampling_rate is not None and _check_rate(sampling_rate, name) != rate:
            raise AudioInputError(f"{name}: sampling_rate={sampling_rate} was given but the file says {rate} Hz")
    else:
        name = name or "audio"
        if source is None:
            raise AudioInputError(f"{name}: no audio given (None)")
        if sampling_rate is None:
            raise AudioInputError(f"{name}: an array of samples needs its sampling_rate (e.g. sampling_rate=44100); "
                                  "a rate cannot be guessed from the samples")
        rate = _check_rate(sampling_rate, name)
        data = _as_samples(source, name)
        if data.shape[1] > max_channels:
            raise AudioInputError(f"{name}: {data.shape[1]} channels; at most {max_channels} are accepted")
        data = data[:_limit(data.shape[0], rate, name, max_seconds, long_audio)]
    if data.shape[0] == 0:
        raise AudioInputError(f"{name}: the audio has no samples")
    bad = ~np.isfinite(data)
    if bad.any():
        what = "all samples are" if bad.all() else f"{int(bad.sum())} of {bad.size} samples are"
        raise AudioInputError(f"{name}: {what} NaN or infinite")
    peak = float(np.abs(data).max())
    if peak > max_peak:  # before the downmix: a mean of 1e38-scale samples overflows float32
        raise AudioInputError(f"{name}: samples peak at {peak:.3g}; at most {max_peak:g} is accepted (float audio "
                              "belongs in [-1, 1])")
    x = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    if peak > 1.0 + 1e-6:
        logger.warning("%s: float samples peak at %.3g, outside [-1, 1] (integer PCM passed as floats?)", name, peak)
    x = resample(np.ascontiguousarray(x, dtype=np.float32), rate, target_rate)
    if max_seconds is not None:  # resampling may round a sample up
        x = x[: int(math.ceil(max_seconds * target_rate))]
    return x


def read_wav(path: str | Path, target_rate: int | None = None) -> tuple[np.ndarray, int]:
    """An audio file (any format :func:`load_audio` decodes, despite the name) as mono float32 in
    [-1, 1] with its rate: ``(samples, rate)``, resampled with libsoxr to ``target_rate`` when given.
    The whole clip is kept. Raises :class:`AudioInputError` naming the file."""
    data, rate = _decode(path, str(path), None, "truncate")
    out_rate = rate if target_rate is None else int(target_rate)
    return load_audio(data, rate, out_rate, name=str(path)), out_rate


__all__ = ["AudioInputError", "AudioReadError", "LONG_AUDIO_RULES", "MAX_CHANNELS", "MAX_PEAK", "load_audio", "read_wav",
           "resample", "write_wav"]
