"""``safe policy ablate-state``: the policy's state ablated part by part on a run's Stage A checkpoint
(:mod:`safe.policy.state_ablation`), recorded in ``metrics.json`` under ``policy_state_ablation``."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from safe.policy.stage import PolicyStageConfig
from safe.runs import RunDir, StageResult
from safe.stages.common import DataOptions, audio_runs_only, check_run_data, from_run, load_options


@dataclass
class StateAblationConfig(DataOptions):
    """Options of ``safe policy ablate-state``: the Stage A checkpoint, the Stage B settings every entry
    shares (its seeds: per entry) and the entries."""

    checkpoint: str | None = None
    """Stage A SAFE checkpoint (default <run-dir>/checkpoints/final)."""
    policy: PolicyStageConfig = field(default_factory=PolicyStageConfig)
    """Stage B settings shared by every entry (PPO --steps, --alpha, --train-rows, and --seeds: PPO seeds
    per entry, mean and 95% CI over seeds)."""
    only: list[str] = field(default_factory=list, metadata={"metavar": "NAME"})
    """Run only this entry (repeatable); the entries are safe.policy.state_ablation.STATE_SUBSETS's names."""


@dataclass
class StateAblationResult(StageResult):
    """The state ablation's rows (``metrics.json`` key ``policy_state_ablation``)."""

    KEY = "policy_state_ablation"

    def summary(self) -> str:
        m = self.metrics
        lines = [f"Policy state ablation on {m['split']} ({m['seeds']} PPO seeds x {m['ppo_steps']} updates per entry, "
                 f"alpha {m['alpha']}, {m['seconds']:.0f} s)",
                 f"  {'state':<58}{'dim':>5}{'accuracy':>10}{'use rate':>10}{'ms/query':>10}{'state ms':>10}"]
        lines += [f"  {r['name']:<58}{r['state_dim']:>5}{r['accuracy']:>10.4f}{r['use_rate']:>10.3f}"
                  f"{r['mean_latency_ms']:>10.3f}{r['state_ms']:>10.3f}" for r in m["rows"]]
        verdict = ("the default state is the best measured" if m.get("default_is_best") else
                   f"best measured: {m['best']} (the default: {m['default']})")
        return "\n".join([*lines, f"  {verdict}"])


def ablate_state(cfg: StateAblationConfig) -> StateAblationResult:
    """The state ablation on the Stage A checkpoint of ``cfg.run_dir`` (its data, base and encoder as
    ``safe train`` recorded them); records ``policy_state_ablation``."""
    from safe.policy.stage import prepare_policy_data
    from safe.policy.state_ablation import run_state_ablation, select_subsets
    from safe.stages.checkpoint import open_checkpoint

    select_subsets(cfg.only)  # a misspelt entry fails before anything loads
    audio_runs_only(cfg.run_dir, "safe policy ablate-state")
    cfg = from_run(cfg)
    run = RunDir(cfg.run_dir)
    ckpt = Path(cfg.checkpoint) if cfg.checkpoint else run.checkpoints / "final"
    data, model, fmt, frontend, cache = open_checkpoint(
        ckpt, data=cfg.data, base=cfg.base, audio=cfg.audio, load_options=load_options(cfg),
        missing=f"run `safe train --run-dir {cfg.run_dir}` first or pass --checkpoint")
    check_run_data(data, cfg.run_dir)
    p = cfg.policy
    train_ex = data.split("train")[: p.train_rows] + data.split("val")
    train = prepare_policy_data(model, fmt, frontend, train_ex, cache, True, early=False)
    test = prepare_policy_data(model, fmt, frontend, data.split(p.eval_split), cache, True, early=False)
    metrics = run_state_ablation(model, fmt, frontend, train, test, p, seeds=p.seeds, names=cfg.only or None,
                                 progress=True)
    result = StateAblationResult(metrics)
    run.record(result)
    return result
