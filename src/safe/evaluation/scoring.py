"""One score per answer, the same rule everywhere (policy rewards, evaluation tables)."""
from __future__ import annotations

from safe.data.records import Example
from safe.evaluation.metrics import exact_match, token_f1


def answer_score(prediction: str, example: Example) -> float:
    """1/0 exact match for short answers, token F1 against the best reference for captions
    (:attr:`~safe.data.records.Example.is_caption`)."""
    if example.is_caption:
        return max(token_f1(prediction, a) for a in example.answers)
    return float(exact_match(prediction, example.answers))


__all__ = ["answer_score"]
