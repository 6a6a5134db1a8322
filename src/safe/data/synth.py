"""The built-in synthetic audio-visual benchmark.

Every example is a 48 x 48 picture of one to four coloured shapes, a one-second 16 kHz clip and a
question about one or both. The benchmark is built so that every number SAFE reports is measurable
on a CPU in minutes:

* **VL-only families** (``needs_audio=False``; a clip *is* attached but is irrelevant):
  ``colour`` ("what colour is the circle?"), ``shape`` ("what shape is the red object?"),
  ``count`` ("how many objects are there?"), ``position`` ("what shape is the leftmost object?").
* **Audio-only families** (``needs_audio=True``; the picture is a random, unrelated scene):
  ``sound_kind`` ("what sound is playing?"), ``beep_count`` ("how many beeps are there?"),
  ``pitch`` ("is the sound high or low?").
* **Audio-visual family** ``sounding_object`` (MUSIC-AVQA style): each shape has its own sound,
  fixed by :data:`SHAPE_SOUNDS` — circle -> ``tone``, square -> ``upchirp``, triangle -> ``noise``.
  The picture shows two or three objects of different shapes and different colours, the clip is the
  sound of one of them, and the question is "what colour is the object making the sound?".
* **Audio caption family** ``caption`` (AudioCaps-like): "describe the sound." -> a template caption
  such as "three high beeps" (see :func:`describe_clip`).

Answers are short lowercase strings and are balanced inside every family, so a model that ignores
the audio can do no better than the majority answer on the audio-only families and no better than
picking one of the objects at random on the audio-visual one (:func:`majority_baseline`,
:func:`object_guess_baseline`). In the sounding-object family the sounding object and the others are
drawn from the same distribution, so nothing in the picture points at it.

Layout on disk (written by :func:`generate_benchmark`, read by :func:`load_split`)::

    out_dir/images/<split>_<index>.png
    out_dir/audio/<split>_<index>.wav
    out_dir/<split>.jsonl          one ``Example.to_dict()`` per line, paths relative to out_dir
    out_dir/benchmark.json         written last: its presence marks a complete benchmark

Splits: ``train``, ``val``, ``test`` (VL share = ``vl_share``), ``retention`` (VL-only questions
with unrelated audio attached: the buffer for the retention loss), and ``ood_test`` (only when
``held_out_sounds`` is non-empty: every clip, relevant or not, is of a held-out sound kind that never
occurs in the other splits).

Everything is a pure function of ``(config, split, index)``: each example draws from its own
``numpy.random.default_rng`` seeded with ``(seed, split, index)``, so the same config gives
byte-identical files and generation could be split across processes without changing a byte.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import zlib
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from safe.processing.audio import write_wav
from safe.data.records import Example

logger = logging.getLogger(__name__)

#: Version of the on-disk layout; :func:`load_split` refuses other versions.
FORMAT_VERSION = 1
#: ``Example.task`` of every record of this benchmark.
TASK = "synth"

# ----------------------------------------------------------------------------------------------
# Vocabulary
# ----------------------------------------------------------------------------------------------
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
#: Colour name -> RGB. Saturated and far apart so a 1M-parameter vision tower separates them.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 70),
    "blue": (40, 90, 235),
    "yellow": (240, 215, 40),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
BACKGROUND: tuple[int, int, int] = (24, 24, 24)
MAX_OBJECTS = 4
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

# ----------------------------------------------------------------------------------------------
# Families
# ----------------------------------------------------------------------------------------------
VL_FAMILIES: tuple[str, ...] = ("colour", "shape", "count", "position")
AUDIO_ONLY_FAMILIES: tuple[str, ...] = ("sound_kind", "beep_count", "pitch")
AUDIO_VISUAL_FAMILIES: tuple[str, ...] = ("sounding_object",)
CAPTION_FAMILIES: tuple[str, ...] = ("caption",)
AUDIO_FAMILIES: tuple[str, ...] = AUDIO_ONLY_FAMILIES + AUDIO_VISUAL_FAMILIES + CAPTION_FAMILIES
#: Family name -> needs_audio.
QUESTION_FAMILIES: dict[str, bool] = {**{f: False for f in VL_FAMILIES}, **{f: True for f in AUDIO_FAMILIES}}
#: Question text per family ({shape}, {colour}, {side} are filled in per example).
QUESTION_TEMPLATES: dict[str, str] = {
    "colour": "what colour is the {shape}?",
    "shape": "what shape is the {colour} object?",
    "count": "how many objects are there?",
    "position": "what shape is the {side}most object?",
    "sound_kind": "what sound is playing?",
    "beep_count": "how many beeps are there?",
    "pitch": "is the sound high or low?",
    "sounding_object": "what colour is the object making the sound?",
    "caption": "describe the sound.",
}

SPLITS: tuple[str, ...] = ("train", "val", "test", "retention", "ood_test")


# ----------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SynthConfig:
    """Everything that determines the benchmark's bytes. Invalid values raise ``ValueError``."""

    seed: int = 0
    """Root seed; each example's generator is derived from ``(seed, split, index)``."""
    n_train: int = 12000
    """Examples in the ``train`` split."""
    n_val: int = 600
    """Examples in the ``val`` split."""
    n_test: int = 1200
    """Examples in the ``test`` split."""
    n_retention: int = 600
    """Examples in the ``retention`` split (VL-only questions with unrelated audio: the retention buffer)."""
    n_ood_test: int = 600
    """Examples in the ``ood_test`` split; ignored (no such split) when ``held_out_sounds`` is empty."""
    image_size: int = 48
    """Image side in pixels; a multiple of ``grid``. 48 with grid 3 aligns cells with 16 px ViT patches."""
    grid: int = 3
    """Objects sit in the cells of a ``grid`` x ``grid`` layout, one object per cell at most."""
    jitter_px: int = 1
    """Maximum offset of an object from its cell centre, in pixels (larger breaks patch alignment)."""
    sample_rate: int = 16000
    """Audio sample rate in Hz."""
    clip_seconds: float = 1.0
    """Clip length in seconds; event timings scale with it."""
    vl_share: float = 0.65
    """Share of VL-only questions in train / val / test / ood_test, strictly between 0 and 1."""
    held_out_sounds: tuple[str, ...] = ("bell", "siren")
    """Sound kinds used only in ``ood_test``, never in the other splits (not even as irrelevant audio)."""
    snr_db: float | None = None
    """None: clean clips. Otherwise white background noise is added to every clip at this SNR (dB)."""

    def __post_init__(self) -> None:
        # JSON round trips give lists; keep the config hashable and comparable.
        object.__setattr__(self, "held_out_sounds", tuple(self.held_out_sounds))
        for name in ("seed", "n_train", "n_val", "n_test", "n_retention", "n_ood_test", "jitter_px"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"SynthConfig.{name} must be a non-negative integer, got {value!r}")
            object.__setattr__(self, name, int(value))  # numpy integers would not serialise to JSON
        if not isinstance(self.vl_share, (int, float)) or not 0.0 < float(self.vl_share) < 1.0:
            raise ValueError(f"SynthConfig.vl_share must be in (0, 1), got {self.vl_share!r}")
        if not isinstance(self.grid, int) or self.grid < 2:
            raise ValueError(f"SynthConfig.grid must be an integer >= 2, got {self.grid!r}")
        if not isinstance(self.image_size, int) or self.image_size % self.grid or self.image_size // self.grid < 8:
            raise ValueError(
                f"SynthConfig.image_size must be a multiple of grid ({self.grid}) with cells of >= 8 px, "
                f"got {self.image_size!r}"
            )
        max_jitter = (self.cell_size - 2 * self.object_half_size - 1) // 2
        if self.jitter_px > max_jitter:
            raise ValueError(
                f"SynthConfig.jitter_px must be <= {max_jitter} for {self.cell_size} px cells "
                f"(objects must stay inside their cell), got {self.jitter_px!r}"
            )
        if not isinstance(self.sample_rate, int) or self.sample_rate < 8000:
            raise ValueError(f"SynthConfig.sample_rate must be an integer >= 8000, got {self.sample_rate!r}")
        if not isinstance(self.clip_seconds, (int, float)) or not 0.5 <= float(self.clip_seconds) <= 30.0:
            raise ValueError(f"SynthConfig.clip_seconds must be in [0.5, 30], got {self.clip_seconds!r}")
        unknown = [k for k in self.held_out_sounds if k not in SOUND_KINDS]
        if unknown:
            raise ValueError(f"SynthConfig.held_out_sounds has unknown kinds {unknown}; known: {list(SOUND_KINDS)}")
        required = [k for k in self.held_out_sounds if k in REQUIRED_SOUNDS]
        if required:
            raise ValueError(
                f"SynthConfig.held_out_sounds cannot contain {required}: the beep-count and sounding-object "
                f"families need {list(REQUIRED_SOUNDS)}"
            )
        if len(set(self.held_out_sounds)) != len(self.held_out_sounds):
            raise ValueError(f"SynthConfig.held_out_sounds has duplicates: {list(self.held_out_sounds)}")
        if self.snr_db is not None and (
            isinstance(self.snr_db, bool) or not isinstance(self.snr_db, (int, float)) or not math.isfinite(self.snr_db)
        ):
            raise ValueError(f"SynthConfig.snr_db must be None or a finite number, got {self.snr_db!r}")

    # -- derived -------------------------------------------------------------------------------
    @property
    def cell_size(self) -> int:
        """Side of one grid cell in pixels."""
        return self.image_size // self.grid

    @property
    def object_half_size(self) -> int:
        """Half the extent of a drawn object (6 px in a 16 px cell)."""
        return max(2, int(self.cell_size * 0.375))

    @property
    def in_distribution_sounds(self) -> tuple[str, ...]:
        """Sound kinds used by train / val / test / retention."""
        return tuple(k for k in SOUND_KINDS if k not in self.held_out_sounds)

    def split_sizes(self) -> dict[str, int]:
        """Split name -> number of examples, in generation order (``ood_test`` only with held-out kinds)."""
        sizes = {"train": self.n_train, "val": self.n_val, "test": self.n_test, "retention": self.n_retention}
        if self.held_out_sounds:
            sizes["ood_test"] = self.n_ood_test
        return sizes

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (inverse of :meth:`from_dict`)."""
        d = asdict(self)
        d["held_out_sounds"] = list(self.held_out_sounds)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SynthConfig":
        """Build from :meth:`to_dict` output; unknown keys raise ``ValueError``."""
        known = {f.name for f in fields(cls)}
        extra = sorted(set(d) - known)
        if extra:
            raise ValueError(f"unknown SynthConfig fields {extra}; known: {sorted(known)}")
        return cls(**d)

    @classmethod
    def tiny(cls, seed: int = 0, **overrides: Any) -> "SynthConfig":
        """A few hundred examples: for tests and smoke runs (generates in about a second)."""
        sizes = dict(n_train=120, n_val=40, n_test=60, n_retention=20, n_ood_test=40)
        return cls(seed=seed, **{**sizes, **overrides})


# ----------------------------------------------------------------------------------------------
# Audio
# ----------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------
def render_scene(objects: Iterable[dict[str, Any]], image_size: int = 48, grid: int = 3) -> Image.Image:
    """Draw objects (dicts with ``shape``, ``colour``, ``row``, ``col``, ``dx``, ``dy``) on a dark background.

    No anti-aliasing: edges are exact, so the same objects always give the same pixels.
    """
    cell = image_size // grid
    h = max(2, int(cell * 0.375))
    img = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(img)
    for o in objects:
        cx = o["col"] * cell + cell // 2 + o.get("dx", 0)
        cy = o["row"] * cell + cell // 2 + o.get("dy", 0)
        rgb = COLOURS[o["colour"]]
        if o["shape"] == "circle":
            draw.ellipse([cx - h, cy - h, cx + h, cy + h], fill=rgb)
        elif o["shape"] == "square":
            s = max(1, round(h * 0.85))  # a bit smaller: similar area to the circle
            draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=rgb)
        elif o["shape"] == "triangle":
            draw.polygon([(cx, cy - h), (cx - h, cy + h), (cx + h, cy + h)], fill=rgb)
        else:
            raise ValueError(f"unknown shape {o['shape']!r}; known: {list(SHAPES)}")
    return img


# ----------------------------------------------------------------------------------------------
# Examples
# ----------------------------------------------------------------------------------------------
def _split_code(split: str) -> int:
    # crc32, not hash(): Python's str hash changes between processes.
    return zlib.crc32(split.encode("utf-8"))


def _example_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, _split_code(split), 1, index])


def _families_for(config: SynthConfig, split: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(VL families, audio families) of a split."""
    if split == "retention":
        return VL_FAMILIES, ()
    if split == "ood_test":
        # Only families whose clip kind is free can use held-out sounds; beep counting and the
        # shape -> sound mapping need specific in-distribution kinds.
        audio = ["sound_kind"]
        if any(k in PITCHED_KINDS for k in config.held_out_sounds):
            audio.append("pitch")
        audio.append("caption")
        return VL_FAMILIES, tuple(audio)
    return VL_FAMILIES, AUDIO_FAMILIES


def _allowed_sounds(config: SynthConfig, split: str) -> tuple[str, ...]:
    return config.held_out_sounds if split == "ood_test" else config.in_distribution_sounds


def _family_targets(family: str, sounds: tuple[str, ...]) -> tuple[Any, ...]:
    """The values balanced within a family (the answer, or what determines it)."""
    return {
        "colour": COLOUR_NAMES,
        "shape": SHAPES,
        "count": tuple(range(1, MAX_OBJECTS + 1)),
        "position": SHAPES,
        "sound_kind": sounds,
        "beep_count": tuple(range(1, MAX_BEEPS + 1)),
        "pitch": PITCHES,
        "sounding_object": COLOUR_NAMES,
        "caption": sounds,
    }[family]


def _spread(total: int, names: Sequence[str]) -> dict[str, int]:
    base, extra = divmod(total, len(names))
    return {name: base + (1 if i < extra else 0) for i, name in enumerate(names)}


def _split_plan(config: SynthConfig, split: str) -> list[tuple[str, Any]]:
    """(family, target) for every index of a split: exact shares and balanced targets, then shuffled.

    The plan is cheap and computed up front, so each example remains a pure function of
    ``(config, split, index, plan[index])``.
    """
    n = config.split_sizes()[split]
    vl_fams, audio_fams = _families_for(config, split)
    n_vl = n if not audio_fams else int(round(n * config.vl_share))
    counts = _spread(n_vl, vl_fams)
    if audio_fams:
        counts.update(_spread(n - n_vl, audio_fams))
    rng = np.random.default_rng([config.seed, _split_code(split), 0])
    sounds = _allowed_sounds(config, split)
    plan: list[tuple[str, Any]] = []
    for family, m in counts.items():
        targets = list(_family_targets(family, sounds))
        order = rng.permutation(len(targets))  # which targets get the leftover when m % len != 0
        plan.extend((family, targets[order[j % len(targets)]]) for j in range(m))
    perm = rng.permutation(len(plan))
    return [plan[i] for i in perm]


def _choice(rng: np.random.Generator, items: Sequence[Any]) -> Any:
    return items[int(rng.integers(len(items)))]


def _place(rng: np.random.Generator, config: SynthConfig, specs: list[tuple[str, str]],
           cells: Sequence[tuple[int, int]] | None = None) -> list[dict[str, Any]]:
    """Put (shape, colour) objects into distinct random cells (from ``cells`` if given) with jitter."""
    if cells is None:
        cells = [(r, c) for r in range(config.grid) for c in range(config.grid)]
    picked = rng.choice(len(cells), size=len(specs), replace=False)
    j = config.jitter_px
    out = []
    for (shape, colour), k in zip(specs, picked):
        r, c = cells[int(k)]
        dx, dy = (int(v) for v in rng.integers(-j, j + 1, size=2))
        out.append({"shape": shape, "colour": colour, "row": r, "col": c, "dx": dx, "dy": dy})
    return out


def _random_scene(rng: np.random.Generator, config: SynthConfig, n: int | None = None) -> list[dict[str, Any]]:
    if n is None:
        n = int(rng.integers(1, MAX_OBJECTS + 1))
    return _place(rng, config, [(_choice(rng, SHAPES), _choice(rng, COLOUR_NAMES)) for _ in range(n)])


def _random_clip(rng: np.random.Generator, sounds: Sequence[str]) -> dict[str, Any]:
    kind = _choice(rng, sounds)
    return {
        "kind": kind,
        "pitch": _choice(rng, PITCHES) if kind in PITCHED_KINDS else None,
        "n_beeps": int(rng.integers(1, MAX_BEEPS + 1)) if kind == "beeps" else None,
    }


def _build(config: SynthConfig, split: str, family: str, target: Any, rng: np.random.Generator
           ) -> tuple[str, str, list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """(question, answer, objects, clip spec, extra meta) of one example."""
    sounds = _allowed_sounds(config, split)
    extra: dict[str, Any] = {}
    tpl = QUESTION_TEMPLATES[family]
    if family in VL_FAMILIES:
        n = int(rng.integers(1, MAX_OBJECTS + 1))
        if family == "colour":
            # The asked-about shape is unique in the picture, so the answer is unambiguous.
            shape = _choice(rng, SHAPES)
            others = [s for s in SHAPES if s != shape]
            specs = [(shape, target)] + [(_choice(rng, others), _choice(rng, COLOUR_NAMES)) for _ in range(n - 1)]
            objects, question, answer = _place(rng, config, specs), tpl.format(shape=shape), target
        elif family == "shape":
            colour = _choice(rng, COLOUR_NAMES)
            others = [c for c in COLOUR_NAMES if c != colour]
            specs = [(target, colour)] + [(_choice(rng, SHAPES), _choice(rng, others)) for _ in range(n - 1)]
            objects, question, answer = _place(rng, config, specs), tpl.format(colour=colour), target
        elif family == "count":
            objects, question, answer = _random_scene(rng, config, int(target)), tpl, NUMBER_WORDS[int(target) - 1]
        else:  # position: the target is alone in the extreme occupied column
            side = _choice(rng, ("left", "right"))
            g = config.grid
            # Columns that leave room for the other n - 1 objects strictly beyond the target.
            valid = [c for c in range(g) if (g - 1 - c if side == "left" else c) * g >= n - 1]
            col = _choice(rng, valid)
            row = int(rng.integers(g))
            beyond = [(r, c) for r in range(g) for c in range(g) if (c > col if side == "left" else c < col)]
            others = _place(rng, config, [(_choice(rng, SHAPES), _choice(rng, COLOUR_NAMES)) for _ in range(n - 1)],
                            beyond) if n > 1 else []
            head = _place(rng, config, [(target, _choice(rng, COLOUR_NAMES))], [(row, col)])
            objects, question, answer = head + others, tpl.format(side=side), target
            extra["side"] = side
        clip = _random_clip(rng, sounds)  # attached but irrelevant to the question
        return question, answer, objects, clip, extra

    if family == "sounding_object":
        k = int(rng.integers(2, 4))
        shapes = [SHAPES[i] for i in rng.permutation(len(SHAPES))[:k]]
        others = [c for c in COLOUR_NAMES if c != target]
        colours = [target] + [others[i] for i in rng.permutation(len(others))[: k - 1]]
        # The sounding object is the first spec; since all shapes and colours are drawn the same way,
        # the picture says nothing about which object sounds.
        objects = _place(rng, config, list(zip(shapes, colours)))
        kind = SHAPE_SOUNDS[shapes[0]]
        clip = {"kind": kind, "pitch": _choice(rng, PITCHES) if kind in PITCHED_KINDS else None, "n_beeps": None}
        extra["sounding_shape"] = shapes[0]
        return tpl, target, objects, clip, extra

    objects = _random_scene(rng, config)  # audio-only: an unrelated picture
    if family == "sound_kind":
        kind = target
        clip = {"kind": kind, "pitch": _choice(rng, PITCHES) if kind in PITCHED_KINDS else None,
                "n_beeps": int(rng.integers(1, MAX_BEEPS + 1)) if kind == "beeps" else None}
        answer = kind
    elif family == "beep_count":
        clip = {"kind": "beeps", "pitch": _choice(rng, PITCHES), "n_beeps": int(target)}
        answer = NUMBER_WORDS[int(target) - 1]
    elif family == "pitch":
        clip = {"kind": _choice(rng, [k for k in sounds if k in PITCHED_KINDS]), "pitch": target, "n_beeps": None}
        if clip["kind"] == "beeps":
            clip["n_beeps"] = int(rng.integers(1, MAX_BEEPS + 1))
        answer = target
    elif family == "caption":
        kind = target
        clip = {"kind": kind, "pitch": _choice(rng, PITCHES) if kind in PITCHED_KINDS else None,
                "n_beeps": int(rng.integers(1, MAX_BEEPS + 1)) if kind == "beeps" else None}
        answer = describe_clip(**clip)
    else:  # pragma: no cover - guarded by QUESTION_FAMILIES
        raise ValueError(f"unknown family {family!r}")
    return tpl, answer, objects, clip, extra


def make_example(config: SynthConfig, split: str, index: int, plan: list[tuple[str, Any]] | None = None
                 ) -> tuple[Example, Image.Image, np.ndarray]:
    """Build example ``index`` of ``split`` in memory: (record with relative paths, image, clip).

    A pure function of its arguments; ``plan`` (from the split's plan) is recomputed when omitted.
    """
    sizes = config.split_sizes()
    if split not in sizes:
        raise ValueError(f"split {split!r} does not exist for this config; splits: {list(sizes)}")
    if plan is None:
        plan = _split_plan(config, split)
    family, target = plan[index]
    rng = _example_rng(config.seed, split, index)
    question, answer, objects, clip, extra = _build(config, split, family, target, rng)
    objects = sorted(objects, key=lambda o: (o["row"], o["col"]))
    image = render_scene(objects, config.image_size, config.grid)
    audio = synthesize_clip(clip["kind"], rng, pitch=clip["pitch"], n_beeps=clip["n_beeps"],
                            sample_rate=config.sample_rate, seconds=config.clip_seconds)
    if config.snr_db is not None:
        audio = add_noise(audio, config.snr_db, rng)
        peak = float(np.max(np.abs(audio)))
        if peak > 0.99:  # rescale rather than let the 16-bit writer clip
            audio = (audio * (0.99 / peak)).astype(np.float32)
    stem = f"{split}_{index:06d}"
    meta = {
        "split": split,
        "index": index,
        "objects": objects,
        "clip": clip,
        "snr_db": config.snr_db,
        "ood": split == "ood_test",
        **extra,
    }
    ex = Example(
        id=f"{TASK}-{stem}",
        task=TASK,
        family=family,
        question=question,
        answers=(answer,),
        image=f"images/{stem}.png",
        audio=f"audio/{stem}.wav",
        needs_audio=QUESTION_FAMILIES[family],
        meta=meta,
    )
    return ex, image, audio


# ----------------------------------------------------------------------------------------------
# Disk
# ----------------------------------------------------------------------------------------------
class BenchmarkMissingError(FileNotFoundError):
    """The benchmark folder is missing, incomplete (generation did not finish) or modified."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_benchmark_info(out_dir: str | Path) -> dict[str, Any]:
    """Read ``benchmark.json``; raise :class:`BenchmarkMissingError` if absent, unreadable or of another version."""
    out = Path(out_dir)
    path = out / "benchmark.json"
    hint = f"generate it with safe.data.synth.generate_benchmark({str(out)!r}) or `safe data`"
    if not path.is_file():
        raise BenchmarkMissingError(
            f"no complete synthetic benchmark at {out}: {path.name} is missing "
            f"(generation never ran or did not finish); {hint}"
        )
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise BenchmarkMissingError(f"cannot read {path}: {err}; {hint}") from err
    if info.get("format_version") != FORMAT_VERSION:
        raise BenchmarkMissingError(
            f"{path} has format version {info.get('format_version')!r}, this code reads {FORMAT_VERSION}; {hint}"
        )
    return info


def _is_complete(out: Path, config: SynthConfig) -> bool:
    try:
        info = load_benchmark_info(out)
    except BenchmarkMissingError:
        return False
    if info.get("config") != config.to_dict():
        return False
    for split in info.get("splits", []):
        try:
            load_split(out, split)  # checks the manifest's hash and that every referenced file exists
        except (BenchmarkMissingError, ValueError, KeyError):
            return False
    return True


def generate_benchmark(out_dir: str | Path, config: SynthConfig | None = None, progress: bool = True, *,
                       force: bool = False) -> Path:
    """Write the benchmark for ``config`` (default :class:`SynthConfig`) under ``out_dir``; return the folder.

    If ``out_dir`` already holds a complete benchmark of the same config it is reused unless
    ``force``. ``benchmark.json`` is removed first and written last (to a temporary file, then
    renamed), and each manifest is renamed into place only once complete, so a crash never leaves a
    benchmark that :func:`load_split` accepts. Files of an earlier, larger generation that the new
    manifests do not reference are left in place.
    """
    config = config if config is not None else SynthConfig()
    out = Path(out_dir)
    if not force and _is_complete(out, config):
        logger.info("synthetic benchmark at %s is complete for this config; reusing it", out)
        return out
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmark.json").unlink(missing_ok=True)  # invalidate before touching anything else
    (out / "images").mkdir(exist_ok=True)
    (out / "audio").mkdir(exist_ok=True)

    sizes = config.split_sizes()
    counts: dict[str, dict[str, int]] = {}
    vocab: dict[str, set[str]] = defaultdict(set)
    digests: dict[str, str] = {}
    with tqdm(total=sum(sizes.values()), desc="synth benchmark", unit="ex", disable=not progress) as bar:
        for split in sizes:
            plan = _split_plan(config, split)
            family_counts: Counter[str] = Counter()
            tmp = out / f"{split}.jsonl.tmp"
            with open(tmp, "w", encoding="utf-8", newline="\n") as f:
                for index in range(len(plan)):
                    ex, image, audio = make_example(config, split, index, plan)
                    # PIL writes no timestamp chunk for PNG, so the bytes depend on the pixels only.
                    image.save(out / ex.image, format="PNG")
                    write_wav(out / ex.audio, audio, config.sample_rate)
                    f.write(json.dumps(ex.to_dict(), sort_keys=True) + "\n")
                    family_counts[ex.family] += 1
                    vocab[ex.family].add(ex.answer)
                    bar.update(1)
            os.replace(tmp, out / f"{split}.jsonl")
            digests[split] = _sha256(out / f"{split}.jsonl")
            counts[split] = {fam: family_counts[fam] for fam in QUESTION_FAMILIES if family_counts[fam]}

    info = {
        "format_version": FORMAT_VERSION,
        "task": TASK,
        "config": config.to_dict(),
        "splits": list(sizes),
        "counts": {split: {"total": sizes[split], "families": counts[split]} for split in sizes},
        "families": dict(QUESTION_FAMILIES),
        "question_templates": dict(QUESTION_TEMPLATES),
        "answer_vocab": {fam: sorted(vocab[fam]) for fam in QUESTION_FAMILIES if fam in vocab},
        "answers": sorted(set().union(*vocab.values())) if vocab else [],
        "sound_kinds": list(SOUND_KINDS),
        "pitched_kinds": list(PITCHED_KINDS),
        "in_distribution_sounds": list(config.in_distribution_sounds),
        "held_out_sounds": list(config.held_out_sounds),
        "shape_sounds": dict(SHAPE_SOUNDS),
        "shapes": list(SHAPES),
        "colours": {k: list(v) for k, v in COLOURS.items()},
        "pitch_ranges_hz": {k: list(v) for k, v in PITCH_RANGES_HZ.items()},
        "manifest_sha256": digests,
    }
    _atomic_write_text(out / "benchmark.json", json.dumps(info, indent=2) + "\n")
    logger.info("wrote synthetic benchmark to %s: %s", out, {s: sizes[s] for s in sizes})
    return out


def benchmark_fingerprint(out_dir: str | Path) -> str:
    """Short content id of a generated benchmark (hash of its ``benchmark.json``, which holds the config
    and the SHA-256 of every manifest): models and checkpoints record it to know what they were trained on."""
    return hashlib.sha256((Path(out_dir) / "benchmark.json").read_bytes()).hexdigest()[:16]


def load_split(out_dir: str | Path, split: str) -> list[Example]:
    """Read one split's examples with image and audio paths made absolute.

    Raises :class:`BenchmarkMissingError` if the benchmark is missing, incomplete, modified since
    generation, or a referenced file is gone, and ``ValueError`` for a split it does not have.
    """
    out = Path(out_dir).resolve()
    info = load_benchmark_info(out)
    if split not in info["splits"]:
        raise ValueError(f"split {split!r} is not in the benchmark at {out}; splits: {info['splits']}")
    path = out / f"{split}.jsonl"
    if not path.is_file():
        raise BenchmarkMissingError(f"manifest {path} is missing; regenerate the benchmark")
    if _sha256(path) != info["manifest_sha256"].get(split):
        raise BenchmarkMissingError(
            f"manifest {path} does not match benchmark.json (incomplete or modified); regenerate the benchmark"
        )
    examples = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            for key in ("image", "audio"):
                if d[key] is not None:
                    p = out / d[key]
                    if not p.is_file():
                        raise BenchmarkMissingError(f"{p} (listed in {path.name}) is missing; regenerate the benchmark")
                    d[key] = str(p)
            examples.append(Example.from_dict(d))
    return examples


# ----------------------------------------------------------------------------------------------
# Deaf baselines
# ----------------------------------------------------------------------------------------------
def majority_baseline(examples: Iterable[Example]) -> dict[str, float]:
    """Family -> accuracy of always answering that family's most common canonical answer.

    This is the best a model without audio can do on the audio-only families (where the picture is
    unrelated); a guess counts as correct when it is among an example's acceptable answers.
    """
    by_family: dict[str, list[Example]] = defaultdict(list)
    for ex in examples:
        by_family[ex.family].append(ex)
    result = {}
    for family, exs in by_family.items():
        guess, _ = Counter(ex.answer for ex in exs).most_common(1)[0]
        result[family] = sum(guess in ex.answers for ex in exs) / len(exs)
    return result


def object_guess_baseline(examples: Iterable[Example]) -> dict[str, float]:
    """Audio-visual family -> expected accuracy of answering the colour of a random object in the picture.

    The best a model that sees the picture but not the audio can do on ``sounding_object``. Families
    without objects in ``meta`` are skipped; the dict is empty when no audio-visual example is given.
    """
    per_family: dict[str, list[float]] = defaultdict(list)
    for ex in examples:
        objects = ex.meta.get("objects") if ex.family in AUDIO_VISUAL_FAMILIES else None
        if objects:
            per_family[ex.family].append(sum(o["colour"] in ex.answers for o in objects) / len(objects))
    return {fam: float(np.mean(v)) for fam, v in per_family.items()}


__all__ = [
    "AUDIO_FAMILIES", "AUDIO_ONLY_FAMILIES", "AUDIO_VISUAL_FAMILIES", "BenchmarkMissingError", "CAPTION_FAMILIES",
    "COLOURS", "COLOUR_NAMES", "FORMAT_VERSION", "NUMBER_WORDS", "PITCHED_KINDS", "PITCHES", "PITCH_RANGES_HZ",
    "QUESTION_FAMILIES", "QUESTION_TEMPLATES", "SHAPES", "SHAPE_SOUNDS", "SOUND_KINDS", "SPLITS", "SynthConfig",
    "TASK", "VL_FAMILIES", "add_noise", "describe_clip", "generate_benchmark", "load_benchmark_info", "load_split",
    "majority_baseline", "make_example", "object_guess_baseline", "render_scene", "synthesize_clip",
]
