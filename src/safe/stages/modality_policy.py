"""``safe policy train`` on a run of another modality (``safe train --modality depth``): Stages B and C for that
modality on the run's own data (:mod:`safe.policy.map_modality`), the SAFE weights saved with the distilled
gate under ``checkpoints/policy`` so ``safe predict`` / ``safe.pipeline`` consult it per row."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from safe.runs import RunDir, StageResult
from safe.stages.common import StageError, check_run_data, data_source, load_options


@dataclass
class ModalityPolicyResult(StageResult):
    """The policy of each non-audio modality a run trained (``metrics.json`` key ``modality_policy``): per
    modality, the policy's and the distilled gate's use rate and accuracy beside never / always / oracle, the
    alpha chosen on held-out training rows, the measured costs and the deployed checkpoint."""

    KEY = "modality_policy"

    def summary(self) -> str:
        lines = []
        for name, p in self.metrics.items():
            lines.append(f"{name} policy (PPO, alpha {p['alpha']:g} chosen on held-out training rows; test split, "
                         f"{p['rows']['test']} rows): use rate / accuracy")
            lines += [f"  {k:<10}{p[k]['use_rate']:>7.3f} / {p[k]['accuracy']:.3f}"
                      for k in ("policy", "distilled", "oracle", "always", "never")]
            lines += [f"  cost of a {kind}: {c['without_audio']:.2f} ms without {name}, {c['with_audio']:.2f} ms with "
                      "it (measured)" for kind, c in p["costs_ms_per_query"].items()]
            lines.append(f"  SAFE {name} weights with the distilled gate (safe predict consults it): {p['checkpoint']}")
        return "\n".join(lines)


def check_modality_flags(cfg, record: dict) -> None:
    """``--audio`` / ``--base`` given to a command on a run of modality ``record["modality"]``: refused, named."""
    name = record["modality"]
    if cfg.audio is not None:
        raise StageError(f"--audio: the run trained {name} (safe train --modality {name}), not audio")
    if cfg.base is not None and Path(cfg.base).resolve() != Path(record["base"]).resolve():
        raise StageError(f"--base {cfg.base}: the run was trained on {record['base']}; leave --base out")


def load_modality_run(cfg, record: dict, ckpt: Path):
    """``(data, model, front end, prompt format, embedding cache)`` of a run of another modality: its data (the
    record's unless ``cfg.data``; checked against the run's fingerprint) and the SAFE checkpoint ``ckpt`` on the
    recorded base with the recorded encoder."""
    from safe.data.embedding_cache import AudioEmbeddingCache
    from safe.data.modality_rows import modality_encoder_id
    from safe.inference.loading import load_trained_modalities, prompt_format

    name = record["modality"]
    data = data_source(cfg.data or record["data"])
    check_run_data(data, cfg.run_dir)
    model, fronts = load_trained_modalities(record["base"], ckpt, None, {name: record["modality_encoder"]},
                                            **load_options(cfg))
    front, fmt = fronts[name], prompt_format(record["base"], model.base_model, record.get("template"))
    return data, model, front, fmt, AudioEmbeddingCache(data.cache_dir, modality_encoder_id(model, front))


def train_map_policy(cfg, record: dict) -> ModalityPolicyResult:
    """Stages B and C for the modality ``record`` (the run's ``run.json``) names; ``cfg``: the
    :class:`~safe.stages.policy.PolicyTrainConfig` (its ``policy.steps``, ``policy.train_rows``,
    ``policy.eval_split``, ``policy.alphas`` apply; the alpha is always chosen on held-out training rows)."""
    from safe.data.modality_rows import map_pool, prepare_modality
    from safe.evaluation.gates import stage2_gate
    from safe.policy.map_modality import map_modality_policy
    from safe.processing.processor import SAFEProcessor
    from safe.stages.common import check_gate
    from safe.stages.options import given_flags
    from safe.stages.stage_a import StageAResult

    name, run = record["modality"], RunDir(cfg.run_dir)
    check_modality_flags(cfg, record)
    stage_a = run.read(StageAResult)
    if stage_a is not None and f"{name}_accuracy" in stage_a.metrics:
        check_gate(run.path, stage2_gate(stage_a.metrics, modality=name), cfg.continue_on_gate_failure)
    ckpt = Path(cfg.checkpoint) if cfg.checkpoint else run.checkpoints / "final"
    if not (ckpt / "safe_config.json").is_file():
        raise StageError(f"{ckpt} is not a SAFE checkpoint: run `safe train --modality {name} --run-dir "
                         f"{cfg.run_dir}` first or pass --checkpoint")
    data, model, front, fmt, cache = load_modality_run(cfg, record, ckpt)
    train = data.split("train")
    pool = map_pool(train, name)
    (train_set, train_rows), (test_set, test_rows) = (
        prepare_modality(split, fmt, model, front, name, cache, pool=pool, progress=True)
        for split in (train, data.split(cfg.policy.eval_split)))
    given = given_flags(cfg)
    metrics = map_modality_policy(
        model, fmt, front, name, train_set, train_rows.paths, test_set, test_rows.paths,
        steps=cfg.policy.steps if "policy.steps" in given else None, train_rows=cfg.policy.train_rows,
        **({"alphas": tuple(cfg.policy.alphas)} if "policy.alphas" in given else {}),
        progress=True, save_dir=run.path / "policy", checkpoint_dir=run.checkpoints / "policy")
    SAFEProcessor.from_pretrained(ckpt).save_pretrained(run.checkpoints / "policy")  # predict needs nothing else
    result = ModalityPolicyResult({name: {**metrics, "eval_split": cfg.policy.eval_split}})
    run.record(result)
    return result
