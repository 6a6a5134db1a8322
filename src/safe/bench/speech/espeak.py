"""Speech synthesis with eSpeak NG through the library the PyPI package ``espeakng-loader`` ships.

The package carries ``libespeak-ng`` and its voice data (no system package); the library is driven through
:mod:`ctypes` in synchronous mode, so each call returns the whole utterance as 22,050 Hz int16 samples.
eSpeak NG keeps global state (one voice, one set of parameters), so every call takes a module lock and
sets voice, rate and pitch before synthesising: the same arguments always give the same samples.
"""
from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass

import numpy as np

#: espeak_AUDIO_OUTPUT value: synthesise synchronously, samples handed to the callback.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
#: espeak_PARAMETER values.
_RATE, _VOLUME, _PITCH, _RANGE = 1, 2, 3, 4
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_EE_OK = 0

_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class EspeakUnavailableError(RuntimeError):
    """``espeakng-loader`` is not installed or its library cannot be loaded (install ``safe-av[speech]``)."""


class EspeakError(ValueError):
    """eSpeak NG refused an input (unknown voice, out-of-range parameter); the message names it."""


@dataclass(frozen=True)
class Voice:
    """One speaker: an eSpeak NG voice name (language and variant, e.g. ``"en-us+f3"``), its speaking
    rate in words per minute (80-450) and its base pitch (0-99, eSpeak's scale; 50 is the voice's own)."""

    name: str
    rate: int = 175
    pitch: int = 50

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise EspeakError(f"Voice.name must be a non-empty voice name, got {self.name!r}")
        if isinstance(self.rate, bool) or not isinstance(self.rate, int) or not 80 <= self.rate <= 450:
            raise EspeakError(f"Voice.rate must be an integer in 80..450 words per minute, got {self.rate!r}")
        if isinstance(self.pitch, bool) or not isinstance(self.pitch, int) or not 0 <= self.pitch <= 99:
            raise EspeakError(f"Voice.pitch must be an integer in 0..99, got {self.pitch!r}")


class _Engine:
    """The loaded library, initialised once per process."""

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError as err:
            raise EspeakUnavailableError(
                "speech synthesis needs the package espeakng-loader (pip install 'safe-av[speech]')") from err
        try:
            lib = ctypes.CDLL(espeakng_loader.get_library_path())
            data = espeakng_loader.get_data_path()
        except (OSError, RuntimeError) as err:
            raise EspeakUnavailableError(f"cannot load eSpeak NG from espeakng-loader: {err}") from err
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_Synth.restype = ctypes.c_int
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data.encode(), 0)
        if rate <= 0:
            raise EspeakUnavailableError(f"espeak_Initialize failed (returned {rate}) with data at {data}")
        self.lib, self.sample_rate = lib, int(rate)
        self._chunks: list[np.ndarray] = []

        def collect(wav, n, events) -> int:
            if n > 0:
                self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
            return 0  # 0: continue synthesis

        self._callback = _CALLBACK(collect)  # kept referenced: the library holds only the pointer
        lib.espeak_SetSynthCallback(self._callback)

    def synth(self, text: str, voice: Voice) -> np.ndarray:
        if self.lib.espeak_SetVoiceByName(voice.name.encode()) != _EE_OK:
            raise EspeakError(f"eSpeak NG has no voice {voice.name!r} (e.g. 'en-us', 'en+f3', 'en-gb-scotland')")
        for param, value in ((_RATE, voice.rate), (_PITCH, voice.pitch), (_VOLUME, 100), (_RANGE, 50)):
            if self.lib.espeak_SetParameter(param, value, 0) != _EE_OK:
                raise EspeakError(f"eSpeak NG refused parameter {param} = {value} for voice {voice}")
        self._chunks = []
        data = text.encode("utf-8") + b"\0"
        if self.lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None) != _EE_OK:
            raise EspeakError(f"eSpeak NG could not synthesise {text!r} with {voice}")
        out = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        self._chunks = []
        return out.astype(np.int16, copy=False)


_LOCK = threading.Lock()
_ENGINE: _Engine | None = None


def _engine() -> _Engine:
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = _Engine()
    return _ENGINE


def available() -> tuple[bool, str]:
    """(whether synthesis works here, why not when it does not)."""
    try:
        with _LOCK:
            _engine()
    except EspeakUnavailableError as err:
        return False, str(err)
    return True, ""


def sample_rate() -> int:
    """The library's output rate in Hz (22,050 for eSpeak NG)."""
    with _LOCK:
        return _engine().sample_rate


def synthesize(text: str, voice: Voice | str = "en-us") -> np.ndarray:
    """``text`` spoken by ``voice``: mono int16 samples at :func:`sample_rate`, leading and trailing silence
    kept as eSpeak NG makes it. Raises :class:`EspeakUnavailableError` without the package and
    :class:`EspeakError` for an empty text or a voice the library does not have."""
    if not isinstance(text, str) or not text.strip():
        raise EspeakError(f"text must be a non-empty string, got {text!r}")
    voice = Voice(voice) if isinstance(voice, str) else voice
    with _LOCK:
        return _engine().synth(text, voice)
