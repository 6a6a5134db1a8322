"""Deaf baselines of the built-in benchmark: what a model without audio can score at best."""
from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable

import numpy as np

from safe.bench.questions import AUDIO_VISUAL_FAMILIES
from safe.data.records import Example


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
