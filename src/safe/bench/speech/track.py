"""The speech track of the built-in benchmark: spoken questions and spoken facts about the built-in pictures,
mixed with typed VL-only questions, in several eSpeak NG voices, speeds and pitches.

Families (answers are the built-in VL model's own words, so the deaf base is scored on equal terms):

* **typed VL-only** ``colour``, ``shape``, ``count``, ``position``: the synthetic track's questions and
  pictures (:func:`safe.bench.questions._build`), with an *unrelated* utterance attached (another row's
  spoken question or fact): the base's answers must not change.
* ``spoken_question``: the typed prompt is "answer the spoken question."; the clip is one of the VL
  questions spoken (balanced over the four VL families and their answers); the answer is read off the picture.
* ``spoken_shape``: "describe the shape the speaker names."; three objects of three different shapes and
  colours; the speaker names one shape ("the square", "I mean the square", ...); answer: that object in two
  words, colour then shape ("red square").
* ``spoken_colour``: "what shape is the colour the speaker names?"; the same pictures; the speaker names one
  colour ("red", "the red one", ...); answer: that object in two words ("red square").

Without the audio a spoken question is a guess among every possible answer (the deaf base gets about 30% of
them: it answers with a word about the picture), and a spoken fact cannot be answered at all: the built-in
VL model only ever learned one-word answers, so its answer to the two-word form is always wrong. An earlier
form asked for one word (the named shape's colour), which the deaf base guessed among the picture's three
objects a third of the time; the oracle then skipped those rows, and no policy can tell a lucky guess
(measured: use rate 0.500 against the oracle's 0.332). Spoken questions are a seventh of the audio rows for
the same reason, and spoken colours four sevenths, the harder fact. Its prompt keeps the words "what shape":
with "describe the colour the speaker names." (the caption family's word "describe") spoken_colour reached
0.83 and 1.00 over two seeds, with this prompt 1.00 (1,500 steps, configs/stage_a_speech.yaml). The built-in
tokenizer has no word for "answer", "spoken", "speaker" or "names": they become ``<unk>`` there, which the
prompts tolerate (the typed words that matter, "colour" and "shape", are known).

Voices: :attr:`SpeechConfig.voices` speak ``train`` / ``val`` / ``test`` / ``retention``;
:attr:`SpeechConfig.held_out_voices` speak only ``ood_test``. ``train``/``val``/``retention`` use the
rates and pitches of :attr:`SpeechConfig.rates` / :attr:`SpeechConfig.pitches`; ``test`` and ``ood_test``
use the in-between :attr:`SpeechConfig.test_rates` / :attr:`SpeechConfig.test_pitches`, so every test clip
is a rendering never heard in training. Every (text, voice, rate, pitch) is synthesised once per
generation and shared by the rows that use it, so the embedding cache encodes it once.

The plan (family, target, picture, text, voice, rate, pitch of every row) is a pure function of the
config; the samples are not byte-identical from one generation to the next, because eSpeak NG carries
its generator's phase (and its male voices' pitch jitter) from one utterance to the next.
"""
from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
from PIL import Image

from safe.bench.questions import QUESTION_TEMPLATES, VL_FAMILIES, SynthConfig, _build, _family_targets
from safe.bench.scenes import COLOUR_NAMES, SHAPES, choice, place_objects, render_scene
from safe.data.records import Example

#: The question design's version: a generated track of another version is regenerated, not reused (3: spoken
#: facts answered in two words, spoken questions a seventh of the audio rows).
TRACK_VERSION = 3
#: ``Example.task`` of every record of the speech track.
TASK = "speech"
AUDIO_FAMILIES: tuple[str, ...] = ("spoken_question", "spoken_shape", "spoken_colour")
#: Family name -> needs_audio.
QUESTION_FAMILIES: dict[str, bool] = {**{f: False for f in VL_FAMILIES}, **{f: True for f in AUDIO_FAMILIES}}
#: Typed prompt of each family (VL families: the synthetic track's templates).
PROMPTS: dict[str, str] = {
    **{f: QUESTION_TEMPLATES[f] for f in VL_FAMILIES},
    "spoken_question": "answer the spoken question.",
    "spoken_shape": "describe the shape the speaker names.",
    "spoken_colour": "what shape is the colour the speaker names?",
}
SHAPE_PHRASES: tuple[str, ...] = ("{x}", "the {x}", "the {x} please", "I mean the {x}")
COLOUR_PHRASES: tuple[str, ...] = ("{x}", "the {x} one", "{x} please", "I mean the {x} one")
#: Share of each audio family among the audio rows: spoken questions a seventh (the deaf base guesses about 30%
#: of them, and the oracle skips those rows: see the module docstring), spoken shapes two, spoken colours four.
AUDIO_WEIGHTS: dict[str, int] = {"spoken_question": 1, "spoken_shape": 2, "spoken_colour": 4}
SPLITS: tuple[str, ...] = ("train", "val", "test", "retention", "ood_test")
SAMPLE_RATE = 22050


@dataclass(frozen=True)
class SpeechConfig:
    """Everything that determines the speech track's plan. Invalid values raise ``ValueError``."""

    seed: int = 0
    """Root seed; each row draws from ``(seed, split, index)``."""
    n_train: int = 3000
    """Rows of ``train``."""
    n_val: int = 300
    """Rows of ``val``."""
    n_test: int = 600
    """Rows of ``test``."""
    n_retention: int = 300
    """Rows of ``retention`` (typed VL-only questions with unrelated speech)."""
    n_ood_test: int = 300
    """Rows of ``ood_test`` (every clip in a held-out voice)."""
    vl_share: float = 0.5
    """Share of typed VL-only rows in train / val / test / ood_test."""
    voices: tuple[str, ...] = ("en-us", "en+f3", "en-gb-x-rp+m3", "en-029+f2", "en-gb-scotland", "en-us+m1")
    """eSpeak NG voices of the in-distribution splits."""
    held_out_voices: tuple[str, ...] = ("en-gb-x-gbcwmd+f4", "en-us-nyc+m6")
    """Voices heard only in ``ood_test``."""
    rates: tuple[int, ...] = (170, 185, 200)
    """Speaking rates (words per minute) of train / val / retention."""
    test_rates: tuple[int, ...] = (178, 192)
    """Speaking rates of test / ood_test: between the training ones."""
    pitches: tuple[int, ...] = (35, 50, 65)
    """Base pitches (eSpeak NG's 0-99) of train / val / retention."""
    test_pitches: tuple[int, ...] = (42, 58)
    """Base pitches of test / ood_test."""
    window_seconds: int = 2
    """The encoder window the clips must fit (generation fails naming the clip if one is longer)."""
    image_size: int = 48
    """Picture side in pixels (the built-in VL model's)."""
    grid: int = 3
    """Grid of the pictures (the built-in VL model's)."""

    def __post_init__(self) -> None:
        for name in ("voices", "held_out_voices", "rates", "test_rates", "pitches", "test_pitches"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        for name in ("seed", "n_train", "n_val", "n_test", "n_retention", "n_ood_test"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"SpeechConfig.{name} must be a non-negative integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        if not isinstance(self.vl_share, (int, float)) or not 0.0 < float(self.vl_share) < 1.0:
            raise ValueError(f"SpeechConfig.vl_share must be in (0, 1), got {self.vl_share!r}")
        for name in ("voices", "held_out_voices", "rates", "test_rates", "pitches", "test_pitches"):
            if not getattr(self, name):
                raise ValueError(f"SpeechConfig.{name} must not be empty")
        shared = sorted(set(self.voices) & set(self.held_out_voices))
        if shared:
            raise ValueError(f"SpeechConfig.held_out_voices must differ from voices; both have {shared}")
        for name in ("rates", "test_rates"):
            bad = [r for r in getattr(self, name) if isinstance(r, bool) or not isinstance(r, int) or not 80 <= r <= 450]
            if bad:
                raise ValueError(f"SpeechConfig.{name} must be integers in 80..450 words per minute, got {bad}")
        for name in ("pitches", "test_pitches"):
            bad = [p for p in getattr(self, name) if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p <= 99]
            if bad:
                raise ValueError(f"SpeechConfig.{name} must be integers in 0..99, got {bad}")
        if isinstance(self.window_seconds, bool) or not isinstance(self.window_seconds, int) \
                or not 1 <= self.window_seconds <= 30:
            raise ValueError(f"SpeechConfig.window_seconds must be an integer in 1..30, got {self.window_seconds!r}")
        self.synth_config()  # validates image_size and grid

    def synth_config(self) -> SynthConfig:
        """The synthetic track's config with this track's picture settings (for its scene code)."""
        return SynthConfig(seed=self.seed, image_size=self.image_size, grid=self.grid, held_out_sounds=())

    def split_sizes(self) -> dict[str, int]:
        """Split name -> rows, in generation order."""
        return {"train": self.n_train, "val": self.n_val, "test": self.n_test, "retention": self.n_retention,
                "ood_test": self.n_ood_test}

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (inverse of :meth:`from_dict`)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SpeechConfig:
        """Build from :meth:`to_dict` output; unknown keys raise ``ValueError``."""
        known = {f.name for f in fields(cls)}
        extra = sorted(set(d) - known)
        if extra:
            raise ValueError(f"unknown SpeechConfig fields {extra}; known: {sorted(known)}")
        return cls(**d)

    @classmethod
    def tiny(cls, seed: int = 0, **overrides: Any) -> SpeechConfig:
        """A few dozen rows, two voices: for tests (generates in about a second)."""
        small = dict(n_train=24, n_val=8, n_test=12, n_retention=8, n_ood_test=8, voices=("en-us", "en+f3"),
                     held_out_voices=("en-us+m1",))
        return cls(seed=seed, **{**small, **overrides})

    def voice_pool(self, split: str) -> tuple[tuple[str, ...], tuple[int, ...], tuple[int, ...]]:
        """(voices, rates, pitches) a split draws its speakers from."""
        voices = self.held_out_voices if split == "ood_test" else self.voices
        heard = split in ("test", "ood_test")
        return voices, self.test_rates if heard else self.rates, self.test_pitches if heard else self.pitches


def _code(split: str) -> int:
    return zlib.crc32(split.encode("utf-8"))  # not hash(): stable across processes


def _spread(total: int, weights: dict[str, int]) -> dict[str, int]:
    """``total`` split over the names in proportion to the weights, remainders to the first names."""
    w = sum(weights.values())
    counts = {k: total * v // w for k, v in weights.items()}
    for k in list(weights)[: total - sum(counts.values())]:
        counts[k] += 1
    return counts


def split_plan(config: SpeechConfig, split: str) -> list[tuple[str, Any]]:
    """(family, target) of every row of ``split``: exact family shares and balanced targets, then shuffled.
    A spoken question's target is ``(VL family, that family's target)``."""
    sizes = config.split_sizes()
    if split not in sizes:
        raise ValueError(f"split {split!r} is not one of {list(sizes)}")
    n = sizes[split]
    n_vl = n if split == "retention" else int(round(n * config.vl_share))
    counts = _spread(n_vl, {f: 1 for f in VL_FAMILIES})
    if split != "retention":
        counts.update(_spread(n - n_vl, AUDIO_WEIGHTS))
    rng = np.random.default_rng([config.seed, _code(split), 0])
    plan: list[tuple[str, Any]] = []
    for family, m in counts.items():
        if family == "spoken_question":
            targets = [(f, t) for f in VL_FAMILIES for t in _family_targets(f, ())]
        elif family == "spoken_shape":
            targets = list(COLOUR_NAMES)
        elif family == "spoken_colour":
            targets = list(SHAPES)
        else:
            targets = list(_family_targets(family, ()))
        order = rng.permutation(len(targets))
        plan.extend((family, targets[order[j % len(targets)]]) for j in range(m))
    return [plan[i] for i in rng.permutation(len(plan))]


def _speaker(config: SpeechConfig, split: str, rng: np.random.Generator) -> dict[str, Any]:
    voices, rates, pitches = config.voice_pool(split)
    return {"voice": choice(rng, voices), "rate": int(choice(rng, rates)), "pitch": int(choice(rng, pitches))}


def _three_objects(rng: np.random.Generator, config: SpeechConfig) -> list[dict[str, Any]]:
    shapes = [SHAPES[i] for i in rng.permutation(len(SHAPES))]
    colours = [COLOUR_NAMES[i] for i in rng.permutation(len(COLOUR_NAMES))[:3]]
    return place_objects(rng, config.synth_config(), list(zip(shapes, colours)))


def _spoken_fact(rng: np.random.Generator, config: SpeechConfig, family: str, target: str
                 ) -> tuple[list[dict[str, Any]], str, str]:
    """(objects, spoken text, answer) of a spoken_shape / spoken_colour row: the object whose colour
    (spoken_shape) or shape (spoken_colour) is ``target``, named by its shape / colour, answered as
    "<colour> <shape>"."""
    while True:  # redraw until the target is in the picture (at most a few draws: 3 of 4 colours)
        objects = _three_objects(rng, config)
        key, named = ("colour", "shape") if family == "spoken_shape" else ("shape", "colour")
        match = [o for o in objects if o[key] == target]
        if match:
            phrases = SHAPE_PHRASES if family == "spoken_shape" else COLOUR_PHRASES
            obj = match[0]
            return objects, choice(rng, phrases).format(x=obj[named]), f"{obj['colour']} {obj['shape']}"


def unrelated_text(rng: np.random.Generator, config: SpeechConfig) -> str:
    """An utterance of one of the audio families, drawn at random: what a typed VL row hears."""
    family = choice(rng, AUDIO_FAMILIES)
    if family == "spoken_question":
        vl = choice(rng, VL_FAMILIES)
        return _build(config.synth_config(), "train", vl, choice(rng, _family_targets(vl, ())), rng)[0]
    _, text, _ = _spoken_fact(rng, config, family, choice(rng, COLOUR_NAMES if family == "spoken_shape" else SHAPES))
    return text


def make_row(config: SpeechConfig, split: str, index: int, plan: Sequence[tuple[str, Any]] | None = None
             ) -> tuple[Example, Image.Image, dict[str, Any]]:
    """Row ``index`` of ``split``: (record whose ``audio`` is None until the clip is written, picture,
    utterance ``{"text", "voice", "rate", "pitch"}``). A pure function of its arguments."""
    plan = split_plan(config, split) if plan is None else plan
    family, target = plan[index]
    rng = np.random.default_rng([config.seed, _code(split), 1, index])
    synth = config.synth_config()
    meta: dict[str, Any] = {"split": split, "index": index, "ood": split == "ood_test"}
    if family in VL_FAMILIES:
        # the split only picks the (unused) synthetic clip's sounds: always the in-distribution ones
        question, answer, objects, _, extra = _build(synth, "train", family, target, rng)
        text = unrelated_text(rng, config)
        meta.update(extra)
    elif family == "spoken_question":
        vl_family, vl_target = target
        text, answer, objects, _, extra = _build(synth, "train", vl_family, vl_target, rng)
        question = PROMPTS[family]
        meta.update(extra, spoken_family=vl_family)
    else:
        objects, text, answer = _spoken_fact(rng, config, family, target)
        question = PROMPTS[family]
    objects = sorted(objects, key=lambda o: (o["row"], o["col"]))
    utterance = {"text": text, **_speaker(config, split, rng)}
    meta.update(objects=objects, utterance=utterance)
    ex = Example(id=f"{TASK}-{split}_{index:06d}", task=TASK, family=family, question=question, answers=(answer,),
                 image=f"images/{split}_{index:06d}.png", audio=None, needs_audio=QUESTION_FAMILIES[family], meta=meta)
    return ex, render_scene(objects, config.image_size, config.grid), utterance
