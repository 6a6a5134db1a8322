"""``safe ablate``: the Stage A ablation grid (no retention loss, k in {4, 8, 12, 16}, LoRA rank in {4, 16},
no dense block) trained and scored on the run's data, seeds with 95% CIs, resumable; the Stage B half of
the grid (lambda = 0, heuristic gates) comes from the run's own ``safe policy train``."""
from __future__ import annotations

from dataclasses import dataclass, field

from safe.runs import RunDir, StageResult
from safe.stages.common import DataOptions, StageError, base_path, config_path, data_source


@dataclass
class AblateConfig(DataOptions):
    """Options of ``safe ablate``."""

    config: str = "configs/stage_a_builtin.yaml"
    """The Stage A recipe every entry starts from."""
    overrides: list[str] = field(default_factory=list, metadata={"flag": "--set", "metavar": "KEY=VALUE"})
    """Override a recipe field for every entry (repeatable)."""
    steps: int = 400
    """Stage A steps of every entry (the same for all, so entries compare)."""
    seeds: int = 1
    """Seeds per entry (mean and 95% CI over seeds)."""
    only: list[str] = field(default_factory=list, metadata={"metavar": "NAME"})
    """Run only this entry (repeatable); entries: "reference", "no retention loss", "k=4", "k=8", "k=12",
    "k=16", "rank=4", "rank=16", "no dense block"."""
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
    from safe.stages.loading import run_ablations
    from safe.stages.policy import PolicyResult

    base = base_path(cfg.base)
    if not (base / "manifest.json").is_file() and cfg.audio is None:
        raise StageError(f"--base: {base} has no manifest.json; run `make demo` (or safe base build) first")
    data = data_source(cfg.data)
    run = RunDir(cfg.run_dir)
    grid = run_ablations(data, base, config_path(cfg.config), run.path / "ablations", overrides=cfg.overrides,
                         steps=cfg.steps, seeds=cfg.seeds, names=cfg.only or None, eval_split=cfg.split)
    policy = run.read(PolicyResult)
    result = AblationResult(grid, stage_b_ablations(policy.metrics)["rows"] if policy else [])
    run.record(result)
    if run.read(EvalResult):
        report(ReportConfig(run_dir=cfg.run_dir))
    return result
