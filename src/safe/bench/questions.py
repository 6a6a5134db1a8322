"""The built-in synthetic audio-visual benchmark: question families, split plans and examples.

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
picking one of the objects at random on the audio-visual one
(:func:`~safe.bench.baselines.majority_baseline`, :func:`~safe.bench.baselines.object_guess_baseline`).
In the sounding-object family the sounding object and the others are drawn from the same
distribution, so nothing in the picture points at it.

Clips come from :mod:`safe.bench.audio`, pictures from :mod:`safe.bench.scenes`, the files on disk
from :mod:`safe.bench.files` and the deaf baselines from :mod:`safe.bench.baselines`.

Splits: ``train``, ``val``, ``test`` (VL share = ``vl_share``), ``retention`` (VL-only questions
with unrelated audio attached: the buffer for the retention loss), and ``ood_test`` (only when
``held_out_sounds`` is non-empty: every clip, relevant or not, is of a held-out sound kind that never
occurs in the other splits).

Everything is a pure function of ``(config, split, index)``: each example draws from its own
``numpy.random.default_rng`` seeded with ``(seed, split, index)``, so the same config gives
byte-identical files and generation could be split across processes without changing a byte.
"""
from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
from PIL import Image

from safe.bench.audio import (
    MAX_BEEPS,
    NUMBER_WORDS,
    PITCHED_KINDS,
    PITCHES,
    REQUIRED_SOUNDS,
    SHAPE_SOUNDS,
    SOUND_KINDS,
    describe_clip,
    synthesize_clip,
)
from safe.bench.scenes import COLOUR_NAMES, MAX_OBJECTS, SHAPES, choice, place_objects, random_scene, render_scene
from safe.data.records import CAPTION_FAMILY, Example
from safe.evaluation.robustness import add_noise

#: ``Example.task`` of every record of this benchmark.
TASK = "synth"

# ----------------------------------------------------------------------------------------------
# Families
# ----------------------------------------------------------------------------------------------
VL_FAMILIES: tuple[str, ...] = ("colour", "shape", "count", "position")
AUDIO_ONLY_FAMILIES: tuple[str, ...] = ("sound_kind", "beep_count", "pitch")
AUDIO_VISUAL_FAMILIES: tuple[str, ...] = ("sounding_object",)
CAPTION_FAMILIES: tuple[str, ...] = (CAPTION_FAMILY,)  # the library's caption rule: Example.is_caption
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
    def from_dict(cls, d: dict[str, Any]) -> SynthConfig:
        """Build from :meth:`to_dict` output; unknown keys raise ``ValueError``."""
        known = {f.name for f in fields(cls)}
        extra = sorted(set(d) - known)
        if extra:
            raise ValueError(f"unknown SynthConfig fields {extra}; known: {sorted(known)}")
        return cls(**d)

    @classmethod
    def tiny(cls, seed: int = 0, **overrides: Any) -> SynthConfig:
        """A few hundred examples: for tests and smoke runs (generates in about a second)."""
        sizes = dict(n_train=120, n_val=40, n_test=60, n_retention=20, n_ood_test=40)
        return cls(seed=seed, **{**sizes, **overrides})


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


def split_plan(config: SynthConfig, split: str) -> list[tuple[str, Any]]:
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


def _random_clip(rng: np.random.Generator, sounds: Sequence[str]) -> dict[str, Any]:
    kind = choice(rng, sounds)
    return {
        "kind": kind,
        "pitch": choice(rng, PITCHES) if kind in PITCHED_KINDS else None,
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
            shape = choice(rng, SHAPES)
            others = [s for s in SHAPES if s != shape]
            specs = [(shape, target)] + [(choice(rng, others), choice(rng, COLOUR_NAMES)) for _ in range(n - 1)]
            objects, question, answer = place_objects(rng, config, specs), tpl.format(shape=shape), target
        elif family == "shape":
            colour = choice(rng, COLOUR_NAMES)
            others = [c for c in COLOUR_NAMES if c != colour]
            specs = [(target, colour)] + [(choice(rng, SHAPES), choice(rng, others)) for _ in range(n - 1)]
            objects, question, answer = place_objects(rng, config, specs), tpl.format(colour=colour), target
        elif family == "count":
            objects, question, answer = random_scene(rng, config, int(target)), tpl, NUMBER_WORDS[int(target) - 1]
        else:  # position: the target is alone in the extreme occupied column
            side = choice(rng, ("left", "right"))
            g = config.grid
            # Columns that leave room for the other n - 1 objects strictly beyond the target.
            valid = [c for c in range(g) if (g - 1 - c if side == "left" else c) * g >= n - 1]
            col = choice(rng, valid)
            row = int(rng.integers(g))
            beyond = [(r, c) for r in range(g) for c in range(g) if (c > col if side == "left" else c < col)]
            others = place_objects(rng, config, [(choice(rng, SHAPES), choice(rng, COLOUR_NAMES)) for _ in range(n - 1)],
                            beyond) if n > 1 else []
            head = place_objects(rng, config, [(target, choice(rng, COLOUR_NAMES))], [(row, col)])
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
        objects = place_objects(rng, config, list(zip(shapes, colours)))
        kind = SHAPE_SOUNDS[shapes[0]]
        clip = {"kind": kind, "pitch": choice(rng, PITCHES) if kind in PITCHED_KINDS else None, "n_beeps": None}
        extra["sounding_shape"] = shapes[0]
        return tpl, target, objects, clip, extra

    objects = random_scene(rng, config)  # audio-only: an unrelated picture
    if family == "sound_kind":
        kind = target
        clip = {"kind": kind, "pitch": choice(rng, PITCHES) if kind in PITCHED_KINDS else None,
                "n_beeps": int(rng.integers(1, MAX_BEEPS + 1)) if kind == "beeps" else None}
        answer = kind
    elif family == "beep_count":
        clip = {"kind": "beeps", "pitch": choice(rng, PITCHES), "n_beeps": int(target)}
        answer = NUMBER_WORDS[int(target) - 1]
    elif family == "pitch":
        clip = {"kind": choice(rng, [k for k in sounds if k in PITCHED_KINDS]), "pitch": target, "n_beeps": None}
        if clip["kind"] == "beeps":
            clip["n_beeps"] = int(rng.integers(1, MAX_BEEPS + 1))
        answer = target
    elif family == "caption":
        kind = target
        clip = {"kind": kind, "pitch": choice(rng, PITCHES) if kind in PITCHED_KINDS else None,
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
        plan = split_plan(config, split)
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
