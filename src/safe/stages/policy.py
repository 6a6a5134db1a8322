"""``safe policy train`` (Stages B and C on a Stage A checkpoint) and ``safe policy distill`` (Stage C
again, from the outcome tables and the PPO policy a train run saved)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from safe.policy.stage import PolicyStageConfig
from safe.runs import RunDir, StageResult
from safe.stages.common import DataOptions, RunOptions, StageError, base_path, check_run_data, from_run, load_options


@dataclass
class PolicyTrainConfig(DataOptions):
    """Options of ``safe policy train``: where the Stage A checkpoint is, and the Stages B/C settings."""

    checkpoint: str | None = None
    """Stage A SAFE checkpoint (default <run-dir>/checkpoints/final)."""
    policy: PolicyStageConfig = field(default_factory=PolicyStageConfig)
    """Stages B and C settings (flags --alphas, --alpha, --steps, ...)."""
    continue_on_gate_failure: bool = False
    """Train Stage B even when the run's Stage A misses the Stage 2 gate (audio gain >= 3 points, VL loss
    < 0.5 points; default: stop, naming the gate)."""


@dataclass
class DistillConfig(RunOptions):
    """Options of ``safe policy distill``; the state kind is read from the saved PPO policy."""

    distill_hidden: int = PolicyStageConfig.distill_hidden
    """Hidden width of the Stage C gate."""
    distill_epochs: int = PolicyStageConfig.distill_epochs
    """Epochs of Stage C distillation."""


@dataclass
class PolicyResult(StageResult):
    """Stages B/C figures (``metrics.json`` key ``policy``) and the SAFE + policy checkpoint."""

    KEY = "policy"

    @property
    def checkpoint(self) -> Path:
        return Path(self.metrics["checkpoint"])

    @property
    def state(self) -> str:
        return self.metrics["config"].get("state", "cascade")  # runs recorded before --state were cascade runs

    @property
    def deployed(self) -> dict:
        """The deployed gate's end-to-end run (older runs stored it under ``cascade``)."""
        return self.metrics.get("deployed", self.metrics.get("cascade", {}))

    def summary(self) -> str:
        from safe.stages.policy_summary import policy_summary

        return policy_summary(self)


def train_policy(cfg: PolicyTrainConfig) -> PolicyResult:
    """Stages B and C on the Stage A checkpoint of ``cfg.run_dir``; saves the SAFE + policy checkpoint under
    ``checkpoints/policy`` and the tables under ``policy/``. A run of another modality (``safe train
    --modality``) trains that modality's policy (:mod:`safe.stages.modality_policy`)."""
    from safe.policy.stage import run_policy_stage
    from safe.stages.checkpoint import open_checkpoint
    from safe.stages.common import run_record

    record = run_record(cfg.run_dir)
    if record is not None and record.get("modality", "audio") != "audio":  # safe train --modality depth
        from safe.stages.modality_policy import train_map_policy

        return train_map_policy(cfg, record)
    cfg = from_run(cfg)  # base, encoder and data as `safe train` recorded them, unless given (and then matching)
    run = RunDir(cfg.run_dir)
    ckpt = Path(cfg.checkpoint) if cfg.checkpoint else run.checkpoints / "final"
    _stage2(run, cfg.continue_on_gate_failure)
    data, model, fmt, frontend, cache = open_checkpoint(
        ckpt, data=cfg.data, base=cfg.base, audio=cfg.audio, load_options=load_options(cfg),
        missing=f"run `safe train --run-dir {cfg.run_dir}` first or pass --checkpoint")
    check_run_data(data, cfg.run_dir)
    metrics, _ = run_policy_stage(model, fmt, frontend, data, cfg.policy, cache, out_dir=run.path / "policy",
                                  progress=True)
    out = model.save_pretrained(run.checkpoints / "policy")
    from safe.processing.processor import SAFEProcessor  # beside the weights: `safe predict` needs nothing else

    SAFEProcessor.from_components(fmt, frontend, model.base_model, base=base_path(cfg.base),
                                  audio=cfg.audio).save_pretrained(out)
    result = PolicyResult({**metrics, "checkpoint": str(out),
                           **({"data": data.summary()} if hasattr(data, "summary") else {})})
    run.record(result)
    return result


def _stage2(run: RunDir, continue_anyway: bool) -> None:
    """The Stage 2 go / no-go gate on the run's recorded Stage A figures (none recorded: nothing to check)."""
    from safe.evaluation.gates import stage2_gate
    from safe.stages.common import check_gate
    from safe.stages.stage_a import StageAResult

    stage_a = run.read(StageAResult)
    if stage_a is not None and "audio_accuracy" in stage_a.metrics:
        check_gate(run.path, stage2_gate(stage_a.metrics), continue_anyway)


def distill_again(cfg: DistillConfig) -> PolicyResult:
    """Stage C again from ``<run>/policy``'s saved tables and PPO policy; adds ``distill_again`` to the
    recorded policy figures."""
    from safetensors import safe_open

    from safe.policy.network import PolicyNetwork
    from safe.policy.stage import distill_gate
    from safe.policy.table import OutcomeTable

    run = RunDir(cfg.run_dir)
    folder = run.path / "policy"
    for name in ("table_train.safetensors", "table_test.safetensors", "ppo_policy.safetensors"):
        if not (folder / name).is_file():
            raise StageError(f"{folder / name} is missing: run `safe policy train --run-dir {run.path}` first")
    train = OutcomeTable.load(folder / "table_train.safetensors")
    test = OutcomeTable.load(folder / "table_test.safetensors")
    with safe_open(str(folder / "ppo_policy.safetensors"), framework="pt") as f:
        meta = f.metadata()
        state = {k: f.get_tensor(k) for k in f.keys()}
    teacher = PolicyNetwork(int(meta["state_dim"]), int(meta["hidden"]))
    teacher.load_state_dict(state)
    teacher.eval()
    _, rep = distill_gate(teacher, train, test, cfg.distill_hidden, cfg.distill_epochs)
    recorded = run.read(PolicyResult) or PolicyResult()
    again = {k: v for k, v in rep.items() if k not in ("student", "teacher")}
    result = PolicyResult({**recorded.metrics, "distill_again": {**again, "alpha": meta["alpha"]}})
    run.record(result)
    return result


def distill_summary(result: PolicyResult) -> str:
    rep = result.metrics["distill_again"]
    ev = rep["test"]
    return (f"Stage C: {rep['student_params']:,}-parameter MLP distilled from the PPO policy (alpha {rep['alpha']}):\n"
            f"  agreement with PPO on test {rep['test_agreement']:.4f}; accuracy {ev['accuracy']:.4f}, use rate "
            f"{ev['use_rate']:.3f}, {ev['mean_latency_ms']:.3f} ms per query (table costs); "
            f"{1e6 * rep['student_s_per_row']:.2f} us per row for the gate itself")


def distill_ok(result: PolicyResult) -> bool:
    return not math.isnan(result.metrics["distill_again"]["test"]["accuracy"])
