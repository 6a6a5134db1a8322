"""Stage A ablations as one command over a config grid: every grid entry is the
recipe plus a few ``key=value`` overrides, trained for the same number of steps and seeds and scored
on the same split, so the rows of the table differ in exactly what their name says.

The grid (with the encoder comparison, :data:`ENCODER_GRID`) and its summary live here; :func:`safe.stages.ablate.run_ablations` trains it. The frozen models are loaded and the benchmark prepared once; each entry then wraps the same frozen
base in a fresh :class:`~safe.models.safe_model.SAFEModel` (hooks removed afterwards), trains it with
:class:`~safe.training.stage_a.StageATrainer` into ``<out>/<entry>/seed<k>`` and evaluates it with
:func:`~safe.training.evaluate.evaluate_stage_a`. Each finished (entry, seed) is written to
``<out>/ablations.json`` at once, so a killed grid resumes where it stopped; the recipe, steps and
benchmark are fingerprinted there and a mismatch raises instead of mixing runs.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from safe.atomic import write_atomic
from safe.evaluation.stats import PROPORTION, mean_ci

STAGE_A_GRID: dict[str, list[str]] = {
    "reference": [],
    "no retention loss": ["lambda_retention=0", "retention_every=0"],
    "k=4": ["safe.num_audio_tokens=4"],
    "k=8": ["safe.num_audio_tokens=8"],
    "k=12": ["safe.num_audio_tokens=12"],
    "k=16": ["safe.num_audio_tokens=16"],
    "rank=4": ["safe.lora_rank=4", "safe.rank_maps=all"],
    "rank=8": ["safe.lora_rank=8", "safe.rank_maps=all"],
    "rank=16": ["safe.lora_rank=16", "safe.rank_maps=all"],
    "no dense block": ["safe.ffn_rank=0"],
    "no Fisher": ["lambda_fisher=0"],
    "Fisher 0.1": ["lambda_fisher=0.1"],
    "no curriculum": ["curriculum.start=1.0", "curriculum.end=1.0", "curriculum.ramp_fraction=0"],
}
"""Entry name -> overrides of the recipe. ``reference`` is the recipe itself (k and rank as it sets them); k is
the number of audio tokens; the rank entries apply r to every attention map of each adapter (query, key,
value, output: ``rank_maps=all``), so r sizes the whole adapter, not only its query. ``no Fisher`` / ``Fisher 0.1``:
the penalty off and on, whichever the recipe sets (the built-in recipe has it off, so there ``no Fisher`` is the
recipe itself and ``Fisher 0.1`` the row that measures it)."""

ENCODER_GRID: dict[str, tuple[str, ...]] = {
    "encoder A alone": ("a",),
    "encoder B alone": ("b",),
    "encoders A + B (ensemble)": ("a", "b"),
}
"""The encoder comparison: the recipe itself (no overrides) with the frozen encoder(s) each entry names. A is the
run's audio encoder (``--audio``, default the built-in base's own), B the one ``safe ablate --encoder-b`` names;
A + B is an :class:`~safe.models.encoders.EncoderEnsemble` (one projector per member, their tokens concatenated).
These entries run only when B is given."""
ENCODER_FIELDS = ("encoders", "encoder_parameters", "encoder_ms_per_clip")
"""What an encoder entry's runs record besides :data:`METRICS`: which encoders (labels), their frozen parameters
and their measured milliseconds per clip (features and forward, summed over an ensemble's members)."""

METRICS = ("audio_accuracy", "vl_accuracy_gate_open", "vl_retention_ratio_gate_open", "vl_answers_changed_gate_open",
           "caption_cider_d", "answers_identical_gate_closed")
"""What each run records from :func:`~safe.training.evaluate.evaluate_stage_a` (test split)."""
FRACTIONS = frozenset({"audio_accuracy", "vl_accuracy_gate_open", "answers_identical_gate_closed"})
"""The metrics that are fractions: their intervals over seeds are kept inside [0, 1]."""
NON_NEGATIVE = frozenset({"vl_answers_changed_gate_open", "caption_cider_d", "vl_retention_ratio_gate_open"})
"""Counts and scores that cannot be negative: their intervals over seeds start at 0 at the lowest."""


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def write_state(path: Path, data: Any) -> None:
    """The grid's progress file, written atomically (a crash mid-write leaves the previous state)."""
    write_atomic(path, json.dumps(data, indent=1, sort_keys=True))


def select_grid(names: Sequence[str] | None, encoders: bool = False) -> dict[str, list[str]]:
    """The entries of :data:`STAGE_A_GRID` (and, with ``encoders``, of :data:`ENCODER_GRID`) named in ``names``
    (all when None), in grid order. An encoder entry without ``encoders`` is an error saying what it needs."""
    full = {**STAGE_A_GRID, **dict.fromkeys(ENCODER_GRID, [])}
    if not names:
        return {n: list(v) for n, v in full.items() if encoders or n in STAGE_A_GRID}
    unknown = [n for n in names if n not in full]
    if unknown:
        raise ValueError(f"unknown ablation {unknown}; choose from {list(full)}")
    if not encoders and (need := [n for n in names if n in ENCODER_GRID]):
        raise ValueError(f"ablation {need} compares encoders: give the second encoder (--encoder-b)")
    return {n: list(full[n]) for n in full if n in names}


def summarise(runs: dict[str, dict[str, Any]], grid: dict[str, list[str]]) -> list[dict[str, Any]]:
    """One row per entry: the overrides, seeds, and per metric the mean with a 95% t interval over
    seeds (clipped to [0, 1] for :data:`FRACTIONS`, at 0 for :data:`NON_NEGATIVE`; ``ci_low``/``ci_high`` NaN for one
    seed), plus trainable
    parameters and seconds."""
    rows = []
    for name, overrides in grid.items():
        done = [r for key, r in sorted(runs.items()) if key.split("/")[0] == name]
        if not done:
            continue
        changes = ", ".join(overrides) or ("the recipe, frozen encoder(s): " + " + ".join(
            k.upper() for k in ENCODER_GRID[name]) if name in ENCODER_GRID else "the recipe")
        row: dict[str, Any] = {"name": name, "changes": changes, "seeds": len(done)}
        for m in METRICS:
            values = [float(r[m]) for r in done if m in r]
            if not values:
                continue
            row[m] = float(sum(values) / len(values))
            if len(values) > 1:
                ci = mean_ci(values, bounds=PROPORTION if m in FRACTIONS else (0.0, None) if m in NON_NEGATIVE
                             else None)
                row[f"{m}_ci"] = [ci.low, ci.high]
        row["trainable_parameters"] = done[0]["trainable_parameters"]
        if "steps" in done[0]:
            row["steps"] = done[0]["steps"]
        row.update({k: done[0][k] for k in ENCODER_FIELDS if k in done[0]})
        row["train_seconds"] = float(sum(r["train_seconds"] for r in done) / len(done))
        rows.append(row)
    return rows
