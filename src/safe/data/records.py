"""The one record type every dataset reader and the built-in benchmark produce."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

#: The family name that marks a free-text caption row (see :attr:`Example.is_caption`).
CAPTION_FAMILY = "caption"


@dataclass(frozen=True)
class Example:
    """One question about an image and (optionally) an audio clip.

    Guarantees: ``answers`` is non-empty and its first entry is the canonical answer used as the
    training target; ``image`` and ``audio`` are absolute paths to existing files or ``None``
    (readers check existence before building the record); ``needs_audio`` is True exactly when the
    question cannot be answered from the image and text alone.

    Captions: a row is a free-text caption (scored with caption metrics, CIDEr-D / token F1, instead
    of exact match) exactly when its ``family`` is :data:`CAPTION_FAMILY` (``"caption"``); every
    reader that yields captions (AudioCaps, Clotho, the built-in benchmark's caption family) names
    the family so. :attr:`is_caption` reads this rule, so no caller needs a list of caption families.

    Fields:
        id: unique within its dataset split, stable across runs.
        task: dataset or benchmark name, e.g. ``"vqav2"``, ``"music_avqa"``, ``"synth"``.
        family: question family inside the task, e.g. ``"colour"``, ``"beep_count"``; readers of
            public datasets use the dataset's own question type where it has one.
        question: the question (or caption prompt) text.
        answers: acceptable answers, canonical first (VQAv2 keeps all ten annotator answers).
        image: path to the image (or the key frame of a video), or None.
        audio: path to the audio clip (WAV), or None.
        needs_audio: True when the answer depends on the audio.
        meta: free-form, JSON-serialisable extras (video id, timestamps, SNR, ...).
    """

    id: str
    task: str
    family: str
    question: str
    answers: tuple[str, ...]
    image: str | None = None
    audio: str | None = None
    needs_audio: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.answers, (list, str)):
            object.__setattr__(self, "answers", tuple([self.answers] if isinstance(self.answers, str) else self.answers))
        if not self.answers:
            raise ValueError(f"example {self.id!r} of task {self.task!r} has no answers")

    @property
    def answer(self) -> str:
        """The canonical answer (training target)."""
        return self.answers[0]

    @property
    def is_caption(self) -> bool:
        """True for a free-text caption row (``family == CAPTION_FAMILY``; see the class docstring)."""
        return self.family == CAPTION_FAMILY

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["answers"] = list(self.answers)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Example:
        return cls(**{**d, "answers": tuple(d["answers"])})
