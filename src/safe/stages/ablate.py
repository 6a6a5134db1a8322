"""``safe ablate``: the Stage A ablation grid (no retention loss, k in {4, 8, 12, 16} audio tokens, LoRA rank
in {4, 8, 16} on every attention map, no dense block) trained and scored on the run's data, seeds with 95% CIs, resumable; the Stage B half of
the grid (lambda = 0, heuristic gates) comes from the run's own ``safe policy train``."""
from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

from safe.data.source import DataSource
from safe.models.integrity import state_hash
from safe.runs import RunDir, StageResult
from safe.stages.common import DataOptions, StageError, base_path, data_source, load_options
from safe.stages.options import given_flags
from safe.stages.stage_a import BUILTIN_RECIPE
from safe.training.ablation import METRICS, _slug, select_grid, summarise, write_state
from safe.training.config import StageAConfig, load_stage_a_config


@dataclass
class AblateConfig(DataOptions):
    """Options of ``safe ablate``: the Stage A settings every entry starts from (as ``safe train``'s, a
    ``--config`` recipe or ``--stage_a.*`` flags), and the grid's own."""

    DEFAULT_CONFIG: ClassVar[str] = BUILTIN_RECIPE

    stage_a: StageAConfig = field(default_factory=StageAConfig, metadata={"group": True})
    """Stage A, every entry before its own change"""
    steps: int = 400
    """Stage A steps of every entry (the same for all, so entries compare)."""
    seeds: int = 1
    """Seeds per entry (mean and 95% CI over seeds)."""
    only: list[str] = field(default_factory=list, metadata={"metavar": "NAME"})
    """Run only this entry (repeatable); entries: "reference", "no retention loss", "k=4", "k=8", "k=12",
    "k=16", "rank=4", "rank=8", "rank=16", "no dense block", "no Fisher", "no curriculum"."""
    split: str = "test"
    """Benchmark split the entries are scored on."""


@dataclass
class AblationResult(StageResult):
    """The grid's rows (``metrics.json`` key ``ablations``)."""

    KEY = "ablations"
    stage_b_rows: list[dict] = field(default_factory=list)

    def summary(self) -> str:
        r0 = self.metrics
        lines = [f"Stage A ablations on {r0['split']} ({r0['steps']} steps each, {r0['seeds']} seed(s), "
                 f"{r0['seconds']:.0f} s)",
                 f"  {'entry':<20}{'audio acc':>10}{'VL acc open':>13}{'VL changed':>12}{'CIDEr-D':>9}{'trainable':>11}"]
        lines += [f"  {r['name']:<20}{r['audio_accuracy']:>10.3f}{r['vl_accuracy_gate_open']:>13.3f}"
                  f"{r['vl_answers_changed_gate_open']:>12.1f}{r.get('caption_cider_d', float('nan')):>9.3f}"
                  f"{r['trainable_parameters']:>11,}" for r in r0["rows"]]
        if self.stage_b_rows:
            lines += ["", "Stage B ablations (from this run's safe policy train)",
                      f"  {'entry':<54}{'accuracy':>9}{'VL acc':>8}{'audio acc':>10}{'use rate':>9}"]
            lines += [f"  {r['name']:<54}{r['accuracy']:>9.4f}{r['vl_accuracy']:>8.3f}{r['audio_accuracy']:>10.3f}"
                      f"{r['use_rate']:>9.3f}" for r in self.stage_b_rows]
        else:
            lines.append("\n(no Stage B in this run: `safe policy train` adds lambda = 0 and the heuristic gates to "
                         "the grid)")
        return "\n".join(lines)


def ablate(cfg: AblateConfig) -> AblationResult:
    """Train and score the selected grid entries under ``<run>/ablations`` (resuming finished entries), record
    ``ablations``, and refresh report.html when the run has been evaluated."""
    from safe.evaluation.protocol import stage_b_ablations
    from safe.stages.evaluate import EvalResult, ReportConfig, report
    from safe.stages.policy import PolicyResult

    opts = load_options(cfg)
    base = base_path(cfg.base)
    if not (base / "manifest.json").is_file() and cfg.audio is None:
        raise StageError(f"--base: {base} has no manifest.json; run `make demo` (or safe base build) first")
    data = data_source(cfg.data)
    share = getattr(data, "audio_share", None)  # a data spec's audio_share wins over the recipe's, a flag over both
    use_share = share is not None and "stage_a.audio_share" not in given_flags(cfg)
    overrides = [f"audio_share={share}"] if use_share else []
    run = RunDir(cfg.run_dir)
    grid = run_ablations(data, base, cfg.stage_a, run.path / "ablations", overrides=overrides,
                         steps=cfg.steps, seeds=cfg.seeds, names=cfg.only or None, eval_split=cfg.split,
                         audio=cfg.audio, load_options=opts)
    policy = run.read(PolicyResult)
    result = AblationResult(grid, stage_b_ablations(policy.metrics)["rows"] if policy else [])
    run.record(result)
    if run.read(EvalResult):
        report(ReportConfig(run_dir=cfg.run_dir))
    return result


def run_ablations(data: DataSource, base_dir: str | Path, config: StageAConfig | str | Path | None,
                  out_dir: str | Path, *,
                  overrides: Sequence[str] = (), steps: int | None = None, seeds: int = 1,
                  names: Sequence[str] | None = None, eval_split: str = "test", progress: bool = True,
                  audio: str | Path | None = None, load_options: dict | None = None) -> dict:
    """Train (on ``data``'s ``train`` and ``retention`` splits) and score every selected grid entry for ``seeds`` seeds (0 .. seeds-1) at ``steps``
    steps (the recipe's when None); ``config``: the Stage A settings, or a recipe file (None: the defaults);
    ``overrides`` apply to every entry before its own. Returns
    ``{"steps", "seeds", "split", "runs": {"<entry>/seed<k>": metrics}, "rows": summarise(...)}``. ``base_dir`` /
    ``audio`` / ``load_options``: see :func:`~safe.inference.loading.load_frozen`."""
    from safe.data.embedding_cache import AudioEmbeddingCache
    from safe.data.prepared import encoder_fingerprint, prepare
    from safe.inference.loading import load_frozen
    from safe.models.safe_model import SAFEModel
    from safe.training.evaluate import evaluate_stage_a
    from safe.training.stage_a import StageATrainer

    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"--seeds must be a positive integer, got {seeds!r}")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"--steps must be a positive integer, got {steps!r}")
    grid = select_grid(names)
    common = [*overrides, *([f"steps={steps}"] if steps is not None else [])]
    start = config if isinstance(config, StageAConfig) else None
    path = None if start is not None else config
    configs = {name: load_stage_a_config(path, [*common, *extra], base=start)
               for name, extra in grid.items()}  # fail early
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state_file = out / "ablations.json"
    vl, encoder, fmt, frontend = load_frozen(base_dir, audio, **(load_options or {}))
    fingerprint = {"recipe": start.to_dict() if start is not None else str(config), "overrides": list(common), "benchmark": data.fingerprint(),
                   "base_vl": state_hash(vl), "split": eval_split}
    state = json.loads(state_file.read_text()) if state_file.is_file() else {"fingerprint": fingerprint, "runs": {}}
    if state.get("fingerprint") != fingerprint:
        raise ValueError(f"{state_file} holds ablations of another recipe, step count, benchmark or base "
                         f"({state.get('fingerprint')}); use another --out or delete it")
    t0 = time.perf_counter()
    cache = AudioEmbeddingCache(data.cache_dir, encoder_fingerprint(encoder, frontend))
    probe = SAFEModel(vl, encoder, configs[next(iter(configs))].safe_config())  # prepare() reads the model's formats
    try:
        sets = {split: prepare(data.split(split), fmt, probe, frontend, cache, progress=progress)
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
            write_state(state_file, state)
    rows = summarise(state["runs"], grid)
    return {"steps": next(iter(configs.values())).steps, "seeds": seeds, "split": eval_split,
            "runs": {k: v for k, v in state["runs"].items() if k.split("/")[0] in grid}, "rows": rows,
            "seconds": round(time.perf_counter() - t0, 1)}
