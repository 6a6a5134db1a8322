"""Stage A ablations as one command over a config grid (proposal section 9): every grid entry is the
recipe plus a few ``key=value`` overrides, trained for the same number of steps and seeds and scored
on the same split, so the rows of the table differ in exactly what their name says.

The frozen models are loaded and the benchmark prepared once; each entry then wraps the same frozen
base in a fresh :class:`~safe.models.safe_model.SAFEModel` (hooks removed afterwards), trains it with
:class:`~safe.training.stage_a.StageATrainer` into ``<out>/<entry>/seed<k>`` and evaluates it with
:func:`~safe.evaluation.stage_a.evaluate_stage_a`. Each finished (entry, seed) is written to
``<out>/ablations.json`` at once, so a killed grid resumes where it stopped; the recipe, steps and
benchmark are fingerprinted there and a mismatch raises instead of mixing runs.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from safe.data import synth
from safe.evaluation.stats import PROPORTION, mean_ci
from safe.models.integrity import state_hash
from safe.training.config import load_stage_a_config

STAGE_A_GRID: dict[str, list[str]] = {
    "reference": [],
    "no retention loss": ["lambda_retention=0", "retention_every=0"],
    "k=4": ["safe.num_audio_tokens=4"],
    "k=8": ["safe.num_audio_tokens=8"],
    "k=12": ["safe.num_audio_tokens=12"],
    "k=16": ["safe.num_audio_tokens=16"],
    "rank=4": ["safe.lora_rank=4"],
    "rank=16": ["safe.lora_rank=16"],
    "no dense block": ["safe.ffn_rank=0"],
}
"""Entry name -> overrides of the recipe. ``reference`` is the recipe itself (k and rank as it sets them)."""

METRICS = ("audio_accuracy", "vl_accuracy_gate_open", "vl_retention_ratio_gate_open", "vl_answers_changed_gate_open",
           "caption_cider_d", "answers_identical_gate_closed")
"""What each run records from :func:`~safe.evaluation.stage_a.evaluate_stage_a` (test split)."""
FRACTIONS = frozenset({"audio_accuracy", "vl_accuracy_gate_open", "answers_identical_gate_closed"})
"""The metrics that are fractions: their intervals over seeds are kept inside [0, 1]."""


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def _atomic_write(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def select_grid(names: Sequence[str] | None) -> dict[str, list[str]]:
    """The entries of :data:`STAGE_A_GRID` named in ``names`` (all when None), in grid order."""
    if not names:
        return dict(STAGE_A_GRID)
    unknown = [n for n in names if n not in STAGE_A_GRID]
    if unknown:
        raise ValueError(f"unknown ablation {unknown}; choose from {list(STAGE_A_GRID)}")
    return {n: STAGE_A_GRID[n] for n in STAGE_A_GRID if n in names}


def summarise(runs: dict[str, dict[str, Any]], grid: dict[str, list[str]]) -> list[dict[str, Any]]:
    """One row per entry: the overrides, seeds, and per metric the mean with a 95% t interval over
    seeds (clipped to [0, 1] for :data:`FRACTIONS`; ``ci_low``/``ci_high`` NaN for one seed), plus trainable
    parameters and seconds."""
    rows = []
    for name, overrides in grid.items():
        done = [r for key, r in sorted(runs.items()) if key.split("/")[0] == name]
        if not done:
            continue
        row: dict[str, Any] = {"name": name, "changes": ", ".join(overrides) or "the recipe", "seeds": len(done)}
        for m in METRICS:
            values = [float(r[m]) for r in done if m in r]
            if not values:
                continue
            row[m] = float(sum(values) / len(values))
            if len(values) > 1:
                ci = mean_ci(values, bounds=PROPORTION if m in FRACTIONS else None)
                row[f"{m}_ci"] = [ci.low, ci.high]
        row["trainable_parameters"] = done[0]["trainable_parameters"]
        row["train_seconds"] = float(sum(r["train_seconds"] for r in done) / len(done))
        rows.append(row)
    return rows


def run_ablations(bench_dir: str | Path, base_dir: str | Path, config: str | Path | None, out_dir: str | Path, *,
                  overrides: Sequence[str] = (), steps: int | None = None, seeds: int = 1,
                  names: Sequence[str] | None = None, eval_split: str = "test", progress: bool = True) -> dict:
    """Train and score every selected grid entry for ``seeds`` seeds (0 .. seeds-1) at ``steps``
    steps (the recipe's when None); ``overrides`` apply to every entry before its own. Returns
    ``{"steps", "seeds", "split", "runs": {"<entry>/seed<k>": metrics}, "rows": summarise(...)}``."""
    from safe.data.embedding_cache import AudioEmbeddingCache
    from safe.evaluation.stage_a import evaluate_stage_a
    from safe.models.safe_model import SAFEModel
    from safe.training.data import encoder_fingerprint, prepare
    from safe.training.pipeline import load_frozen
    from safe.training.stage_a import StageATrainer

    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"--seeds must be a positive integer, got {seeds!r}")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"--steps must be a positive integer, got {steps!r}")
    grid = select_grid(names)
    common = [*overrides, *([f"steps={steps}"] if steps is not None else [])]
    configs = {name: load_stage_a_config(config, [*common, *extra]) for name, extra in grid.items()}  # fail early
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state_file = out / "ablations.json"
    vl, encoder, fmt, frontend = load_frozen(base_dir)
    fingerprint = {"recipe": str(config), "overrides": list(common), "benchmark": synth.benchmark_fingerprint(bench_dir),
                   "base_vl": state_hash(vl), "split": eval_split}
    state = json.loads(state_file.read_text()) if state_file.is_file() else {"fingerprint": fingerprint, "runs": {}}
    if state.get("fingerprint") != fingerprint:
        raise ValueError(f"{state_file} holds ablations of another recipe, step count, benchmark or base "
                         f"({state.get('fingerprint')}); use another --out or delete it")
    t0 = time.perf_counter()
    cache = AudioEmbeddingCache(Path(bench_dir) / ".embedding_cache", encoder_fingerprint(encoder, frontend))
    probe = SAFEModel(vl, encoder, configs[next(iter(configs))].safe_config())  # prepare() reads the model's formats
    try:
        sets = {split: prepare(synth.load_split(bench_dir, split), fmt, probe, frontend, cache, progress=progress)
                for split in ("train", "retention", eval_split)}
    finally:
        probe.remove_hooks()
    for name, recipe in configs.items():
        for seed in range(seeds):
            key = f"{name}/seed{seed}"
            if key in state["runs"]:
                continue
            cfg = dataclasses.replace(recipe, seed=seed)
            torch.manual_seed(cfg.seed)
            model = SAFEModel(vl, encoder, cfg.safe_config())
            try:
                if progress:
                    print(f"  ablation {key}: {', '.join(grid[name]) or 'the recipe'} ({cfg.steps} steps)")
                trainer = StageATrainer(model, fmt, sets["train"], sets["retention"], cfg, out / _slug(name) / f"seed{seed}",
                                        progress=progress, fingerprint={"ablation": key, **fingerprint})
                fit = trainer.fit(resume=True)
                result = evaluate_stage_a(model, fmt, sets[eval_split])
                trainable = sum(p.numel() for p in model.trainable_parameters())
            finally:
                model.remove_hooks()
            state["runs"][key] = {**{m: result[m] for m in METRICS if m in result}, "trainable_parameters": trainable,
                                  "train_seconds": fit["seconds"], "steps": fit["steps"]}
            _atomic_write(state_file, state)
    rows = summarise(state["runs"], grid)
    return {"steps": next(iter(configs.values())).steps, "seeds": seeds, "split": eval_split,
            "runs": {k: v for k, v in state["runs"].items() if k.split("/")[0] in grid}, "rows": rows,
            "seconds": round(time.perf_counter() - t0, 1)}
