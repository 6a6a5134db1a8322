"""Clip synthesis of the built-in benchmark: ten sound kinds, their pitches, beep trains and template captions.

Every clip is a pure function of its parameters and the ``numpy`` generator it is given, so the
benchmark's WAV files are byte-identical for the same seed.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

NUMBER_WORDS: tuple[str, ...] = ("one", "two", "three", "four")

#: Every sound kind, by name (the name is also the answer of the ``sound_kind`` family).
SOUND_KINDS: tuple[str, ...] = (
    "tone",  # pure sine
    "beeps",  # train of 1-4 short sine beeps
    "upchirp",  # exponential sweep ~350 Hz -> ~3 kHz
    "downchirp",  # the same sweep downwards
    "noise",  # white-noise burst
    "organ",  # steady harmonic stack 1..6
    "clarinet",  # odd harmonics only
    "bell",  # inharmonic partials, exponential decay
    "pluck",  # harmonic, fast decay, upper partials die first
    "siren",  # sine with slow frequency wobble
)
#: Kinds with a fundamental, hence a ``low`` / ``high`` pitch.
PITCHED_KINDS: tuple[str, ...] = ("tone", "beeps", "organ", "clarinet", "bell", "pluck", "siren")
PITCHES: tuple[str, ...] = ("low", "high")
#: Fundamental frequency ranges in Hz. More than an octave apart, so "high or low" is unambiguous.
PITCH_RANGES_HZ: dict[str, tuple[float, float]] = {"low": (200.0, 400.0), "high": (1000.0, 2000.0)}
MAX_BEEPS = 4

#: The audio-visual mapping: the sound each shape makes.
SHAPE_SOUNDS: dict[str, str] = {"circle": "tone", "square": "upchirp", "triangle": "noise"}
#: Kinds some family cannot do without, so they can never be held out.
REQUIRED_SOUNDS: tuple[str, ...] = ("beeps",) + tuple(SHAPE_SOUNDS.values())


def _envelope(t: np.ndarray, start: float, dur: float, attack: float, release: float) -> np.ndarray:
    """Trapezoid: 0 outside [start, start + dur], linear ramps (so no clicks), 1 in between."""
    up = np.clip((t - start) / attack, 0.0, 1.0)
    down = np.clip((start + dur - t) / release, 0.0, 1.0)
    return np.minimum(up, down)


def _decay(t: np.ndarray, start: float, tau: float, attack: float = 0.002) -> np.ndarray:
    """Struck-sound envelope: a 2 ms attack at ``start`` then exponential decay with time constant tau."""
    dt = t - start
    return np.where(dt < 0, 0.0, np.clip(dt / attack, 0.0, 1.0) * np.exp(-np.maximum(dt, 0.0) / tau))


def _partials(t: np.ndarray, f0: float, ratios: Sequence[float], amps: Sequence[float], rng: np.random.Generator,
              sample_rate: int, envelopes: Sequence[np.ndarray] | np.ndarray | None = None) -> np.ndarray:
    """Sum of sines at f0 * ratio; partials above 0.45 * rate are dropped (they would alias)."""
    x = np.zeros_like(t)
    phases = rng.uniform(0.0, 2 * np.pi, size=len(ratios))
    for i, (r, a) in enumerate(zip(ratios, amps)):
        if f0 * r >= 0.45 * sample_rate:
            continue
        part = a * np.sin(2 * np.pi * f0 * r * t + phases[i])
        if envelopes is not None and not isinstance(envelopes, np.ndarray):
            part = part * envelopes[i]
        x += part
    if isinstance(envelopes, np.ndarray):
        x = x * envelopes
    return x


def synthesize_clip(kind: str, rng: np.random.Generator, *, pitch: str | None = None, n_beeps: int | None = None,
                    sample_rate: int = 16000, seconds: float = 1.0) -> np.ndarray:
    """One clip of sound ``kind`` as float32 samples in [-1, 1], length ``round(sample_rate * seconds)``.

    ``pitch`` (``"low"`` / ``"high"``) applies to :data:`PITCHED_KINDS` and ``n_beeps`` (1-4) to
    ``"beeps"``; left as None they are drawn from ``rng``. Onset, duration, exact frequency, phase and
    loudness (peak 0.35-0.6) are always drawn from ``rng``, so clips of one kind vary but stay
    recognisable. Raises ``ValueError`` for an unknown kind or a parameter the kind does not take.
    """
    if kind not in SOUND_KINDS:
        raise ValueError(f"unknown sound kind {kind!r}; known: {list(SOUND_KINDS)}")
    if kind in PITCHED_KINDS:
        if pitch is None:
            pitch = PITCHES[int(rng.integers(len(PITCHES)))]
        if pitch not in PITCHES:
            raise ValueError(f"pitch must be one of {list(PITCHES)}, got {pitch!r}")
    elif pitch is not None:
        raise ValueError(f"sound kind {kind!r} has no pitch (pitched kinds: {list(PITCHED_KINDS)})")
    if kind == "beeps":
        if n_beeps is None:
            n_beeps = int(rng.integers(1, MAX_BEEPS + 1))
        if not 1 <= int(n_beeps) <= MAX_BEEPS:
            raise ValueError(f"n_beeps must be in 1..{MAX_BEEPS}, got {n_beeps!r}")
    elif n_beeps is not None:
        raise ValueError(f"n_beeps applies only to 'beeps', not {kind!r}")

    T = float(seconds)
    n = int(round(sample_rate * T))
    t = np.arange(n, dtype=np.float64) / sample_rate
    f0 = float(rng.uniform(*PITCH_RANGES_HZ[pitch])) if pitch is not None else 0.0

    def steady_span() -> tuple[float, float]:
        return float(rng.uniform(0.0, 0.15 * T)), float(rng.uniform(0.6 * T, 0.8 * T))

    if kind == "tone":
        start, dur = steady_span()
        x = np.sin(2 * np.pi * f0 * t + rng.uniform(0, 2 * np.pi)) * _envelope(t, start, dur, 0.01, 0.01)
    elif kind == "beeps":
        # Gaps (>= 0.1 T) longer than beeps (<= 0.1 T) keep the bursts countable on an energy envelope.
        beep = float(rng.uniform(0.07, 0.1)) * T
        gap = float(rng.uniform(0.1, 0.14)) * T
        total = n_beeps * beep + (n_beeps - 1) * gap
        onset = float(rng.uniform(0.02 * T, max(0.02 * T, T - total - 0.02 * T)))
        env = sum(_envelope(t, onset + i * (beep + gap), beep, 0.005, 0.005) for i in range(n_beeps))
        x = np.sin(2 * np.pi * f0 * t + rng.uniform(0, 2 * np.pi)) * env
    elif kind in ("upchirp", "downchirp"):
        start, dur = steady_span()
        lo = float(rng.uniform(300.0, 400.0))
        hi = float(min(rng.uniform(2500.0, 3500.0), 0.45 * sample_rate))
        fa, fb = (lo, hi) if kind == "upchirp" else (hi, lo)
        tau = np.clip(t - start, 0.0, dur)
        # Exponential sweep: constant speed on a log-frequency (mel-like) axis.
        phase = 2 * np.pi * fa * dur / math.log(fb / fa) * ((fb / fa) ** (tau / dur) - 1.0)
        x = np.sin(phase) * _envelope(t, start, dur, 0.01, 0.01)
    elif kind == "noise":
        start = float(rng.uniform(0.0, 0.3 * T))
        dur = float(rng.uniform(0.3 * T, 0.6 * T))
        x = rng.standard_normal(n) * _envelope(t, start, dur, 0.005, 0.005)
    elif kind == "organ":
        start, dur = steady_span()
        x = _partials(t, f0, range(1, 7), (1.0, 0.7, 0.5, 0.35, 0.25, 0.15), rng, sample_rate,
                      _envelope(t, start, dur, 0.03, 0.03))
    elif kind == "clarinet":
        start, dur = steady_span()
        x = _partials(t, f0, (1, 3, 5, 7, 9), (1.0, 0.45, 0.25, 0.15, 0.08), rng, sample_rate,
                      _envelope(t, start, dur, 0.05, 0.03))
    elif kind == "bell":
        start = float(rng.uniform(0.0, 0.2 * T))
        tau = float(rng.uniform(0.25, 0.35)) * T
        ratios = (1.0, 2.76, 5.40, 8.93)
        x = _partials(t, f0, ratios, (1.0, 0.6, 0.4, 0.25), rng, sample_rate,
                      [_decay(t, start, tau / (1 + 0.5 * i)) for i in range(len(ratios))])
    elif kind == "pluck":
        start = float(rng.uniform(0.0, 0.2 * T))
        tau = float(rng.uniform(0.12, 0.2)) * T
        ks = range(1, 9)
        x = _partials(t, f0, ks, [1.0 / k for k in ks], rng, sample_rate,
                      [_decay(t, start, tau / math.sqrt(k)) for k in ks])
    else:  # siren
        start, dur = steady_span()
        rate = float(rng.uniform(3.0, 5.0))
        inst = f0 * (1.0 + 0.15 * np.sin(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi)))
        x = np.sin(2 * np.pi * np.cumsum(inst) / sample_rate) * _envelope(t, start, dur, 0.02, 0.02)

    peak = float(np.max(np.abs(x)))
    gain = float(rng.uniform(0.35, 0.6))
    return (x * (gain / peak if peak > 0 else 0.0)).astype(np.float32)


def describe_clip(kind: str, pitch: str | None = None, n_beeps: int | None = None) -> str:
    """The template caption of a clip (the ``caption`` family's answer), e.g. ``"three high beeps"``."""
    if kind not in SOUND_KINDS:
        raise ValueError(f"unknown sound kind {kind!r}; known: {list(SOUND_KINDS)}")
    if kind in PITCHED_KINDS and pitch not in PITCHES:
        raise ValueError(f"sound kind {kind!r} needs a pitch in {list(PITCHES)}, got {pitch!r}")
    if kind == "beeps":
        if n_beeps is None or not 1 <= n_beeps <= MAX_BEEPS:
            raise ValueError(f"'beeps' needs n_beeps in 1..{MAX_BEEPS}, got {n_beeps!r}")
        return f"{NUMBER_WORDS[n_beeps - 1]} {pitch} beep{'s' if n_beeps > 1 else ''}"
    templates = {
        "tone": "a {pitch} tone",
        "upchirp": "a rising chirp",
        "downchirp": "a falling chirp",
        "noise": "a burst of noise",
        "organ": "a {pitch} organ note",
        "clarinet": "a {pitch} clarinet note",
        "bell": "a {pitch} bell",
        "pluck": "a {pitch} plucked string",
        "siren": "a {pitch} siren",
    }
    return templates[kind].format(pitch=pitch)
