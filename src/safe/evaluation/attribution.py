"""Attribution over modalities: who earns the answer, image or audio?

* :func:`shapley_two_player`: exact per-sample Shapley values of a two-player game (image, audio)
  whose payoff ``v(S)`` is a per-sample score (correctness 0/1, a caption score...) measured with
  each subset ``S`` of modalities present.
* :func:`summarize_shapley`: means, the audio share of the attribution, and a breakdown per family.
* :func:`lomo_drop`: leave-one-modality-out with the audio muted: accuracy drop per family.
* :func:`paired_change_count`: how many answers differ between two runs on the same questions.

Pure numpy functions, no model code. Every function validates its inputs and raises ``ValueError``
with a message naming the offending argument.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["shapley_two_player", "summarize_shapley", "lomo_drop", "paired_change_count"]


def _as_1d(x: Any, name: str, n: int | None = None) -> np.ndarray:
    """``x`` as a finite 1-D float array (booleans become 0/1), of length ``n`` when given."""
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must hold numbers or booleans, got dtype {arr.dtype}")
    arr = arr.astype(float)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if n is not None and arr.size != n:
        raise ValueError(f"{name} has {arr.size} entries, expected {n} (the length of the first argument)")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _groups(groups: Sequence[str], n: int) -> list[str]:
    if isinstance(groups, str):
        raise ValueError("groups must be a sequence of group names, got a single string")
    out = [str(g) for g in groups]
    if len(out) != n:
        raise ValueError(f"groups has {len(out)} entries, expected {n}")
    return out


def shapley_two_player(v_none, v_image, v_audio, v_both) -> tuple[np.ndarray, np.ndarray]:
    """Exact two-player Shapley values per sample, players "image" and "audio".

    ``v_none``, ``v_image``, ``v_audio``, ``v_both``: per-sample payoffs (equal-length 1-D arrays of
    numbers or booleans) with no modality, image only, audio only, and both present. Returns
    ``(phi_image, phi_audio)`` as float arrays with
    ``phi_image = ((v_image - v_none) + (v_both - v_audio)) / 2`` and ``phi_audio`` symmetric.
    Guarantees: ``phi_image + phi_audio == v_both - v_none`` (efficiency; exact whenever the payoffs
    are dyadic, such as 0/1 correctness), swapping the players swaps the values (symmetry), and a
    modality that never changes the payoff gets 0 (null player).
    """
    none = _as_1d(v_none, "v_none")
    n = none.size
    image, audio, both = (_as_1d(v, name, n) for v, name in
                          ((v_image, "v_image"), (v_audio, "v_audio"), (v_both, "v_both")))
    phi_image = 0.5 * ((image - none) + (both - audio))
    phi_audio = 0.5 * ((audio - none) + (both - image))
    return phi_image, phi_audio


def summarize_shapley(phi_image, phi_audio, groups: Sequence[str]) -> dict:
    """Summary of per-sample Shapley values.

    Returns ``{"image_mean", "audio_mean", "audio_share", "by_family"}``: the means of ``phi_image``
    and ``phi_audio``; ``audio_share = mean|phi_audio| / (mean|phi_image| + mean|phi_audio|)`` in
    [0, 1] (NaN when both are 0); ``by_family[g] = {"image": mean, "audio": mean, "n": count}`` for
    every group name in ``groups`` (one name per sample), in order of first appearance.
    Raises ``ValueError`` for empty or unequal-length inputs.
    """
    pi = _as_1d(phi_image, "phi_image")
    if pi.size == 0:
        raise ValueError("phi_image is empty: need at least one sample")
    pa = _as_1d(phi_audio, "phi_audio", pi.size)
    names = _groups(groups, pi.size)
    abs_i, abs_a = float(np.abs(pi).mean()), float(np.abs(pa).mean())
    denom = abs_i + abs_a
    by_family = {}
    names_arr = np.array(names, dtype=object)
    for g in dict.fromkeys(names):
        sel = names_arr == g
        by_family[g] = {"image": float(pi[sel].mean()), "audio": float(pa[sel].mean()), "n": int(sel.sum())}
    return {"image_mean": float(pi.mean()), "audio_mean": float(pa.mean()),
            "audio_share": abs_a / denom if denom > 0 else math.nan, "by_family": by_family}


def lomo_drop(active_correct, muted_correct, groups: Sequence[str]) -> dict:
    """Leave-one-modality-out with the audio muted: accuracy per group with audio active and muted.

    ``active_correct`` / ``muted_correct``: per-question correctness (booleans or 0/1) on the same
    questions, audio active vs muted; ``groups``: one group name per question. Returns
    ``{group: {"active": acc, "muted": acc, "drop": active - muted, "n": count}}`` for each group in
    order of first appearance, plus ``"all"`` over every question (a group literally named "all"
    is rejected). Raises ``ValueError`` naming the argument for unequal lengths, empty input, or
    values other than booleans / 0 / 1.
    """
    active = _as_1d(active_correct, "active_correct")
    if active.size == 0:
        raise ValueError("active_correct is empty: need at least one question")
    muted = _as_1d(muted_correct, "muted_correct", active.size)
    for arr, name in ((active, "active_correct"), (muted, "muted_correct")):
        if not np.all((arr == 0) | (arr == 1)):
            raise ValueError(f"{name} must contain only booleans or 0/1")
    names = _groups(groups, active.size)
    if "all" in names:
        raise ValueError('groups must not contain the reserved name "all"')
    names_arr = np.array(names, dtype=object)

    def entry(sel: np.ndarray) -> dict:
        a, m = float(active[sel].mean()), float(muted[sel].mean())
        return {"active": a, "muted": m, "drop": a - m, "n": int(sel.sum())}

    out = {g: entry(names_arr == g) for g in dict.fromkeys(names)}
    out["all"] = entry(np.ones(active.size, dtype=bool))
    return out


def paired_change_count(a_answers: Sequence[Any], b_answers: Sequence[Any]) -> int:
    """Number of positions where ``a_answers[i] != b_answers[i]`` (answers compared with ``==``).

    Raises ``ValueError`` naming ``b_answers`` when the lengths differ (or either is a bare string).
    """
    for seq, name in ((a_answers, "a_answers"), (b_answers, "b_answers")):
        if isinstance(seq, str):
            raise ValueError(f"{name} must be a sequence of answers, got a single string")
    a, b = list(a_answers), list(b_answers)
    if len(a) != len(b):
        raise ValueError(f"b_answers has {len(b)} entries but a_answers has {len(a)}")
    return sum(1 for x, y in zip(a, b) if x != y)
