"""``safe eval`` on a run of another modality (``safe train --modality depth``, then ``safe policy train``): the
evaluation protocol of :mod:`safe.evaluation.modality_protocol` on the deployed checkpoint (the SAFE weights
with the distilled gate, ``checkpoints/policy``), into ``metrics.json`` key ``modality_eval``."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from safe.runs import RunDir, StageResult
from safe.stages.common import StageError


def _pct(v: float) -> str:
    return f"{v:.3f}"


@dataclass
class ModalityEvalResult(StageResult):
    """The protocol's figures per modality (``metrics.json`` key ``modality_eval``): retention of the VL rows
    (base / gate closed / gate open / policy, McNemar), the modality's gains with bootstrap CIs, the policy beside
    its oracle and always-on, irrelevance (the policy's false positives on VL rows carrying another row's map),
    the measured cost per query and the stage gates as PASS / FAIL."""

    KEY = "modality_eval"

    @property
    def gates_passed(self) -> bool:
        return all(g["passed"] for m in self.metrics.values() for g in m["stage_gates"])

    def summary(self) -> str:
        lines = []
        for name, ev in self.metrics.items():
            r, g, p, irr = ev["retention"], ev["gains"], ev["policy"], ev["irrelevance"]
            lines.append(f"{name} evaluation on {ev['split']} ({ev['examples']} rows: {g['n']} with a {name} map, "
                         f"{r['n']} VL rows with another row's map; {ev['seconds']:.0f} s)")
            lines.append("  VL accuracy: " + ", ".join(f"{k} {_pct(v)}" for k, v in r["vl_accuracy"].items())
                         + "; answers changed against the base: " + ", ".join(
                             f"{k} {v}" for k, v in r["answers_changed"].items()))
            lines.append(f"  {name} accuracy [95% CI]: " + ", ".join(
                f"{k} {v['mean']:.3f} [{v['ci_low']:.3f}, {v['ci_high']:.3f}]" for k, v in g["accuracy"].items()))
            lines.append("  use rate / accuracy: " + ", ".join(
                f"{k} {v['use_rate']:.3f} / {v['accuracy']:.3f}" for k, v in p.items()))
            lines.append(f"  irrelevant {name} maps on VL rows: policy false positives "
                         f"{irr['false_positive_rate']:.4f}, answers changed with the gate forced open "
                         f"{irr['answers_changed_gate_open']} of {irr['n']}")
            if "efficiency" in ev:
                lines.append("  ms per query (measured by safe policy train): " + ", ".join(
                    f"{k} {v:.2f}" for k, v in ev["efficiency"]["ms_per_query"].items()))
            lines.append("  stage gates:")
            lines += [f"    {'PASS' if s['passed'] else 'FAIL'}  {s['gate']:<56} target {s['target']:<40} "
                      f"measured {s['measured']}" for s in ev["stage_gates"]]
        return "\n".join(lines)


def evaluate_modality(cfg, record: dict) -> ModalityEvalResult:
    """The protocol on the modality ``record`` (the run's ``run.json``) names; ``cfg``: the
    :class:`~safe.stages.evaluate.EvalConfig` (``checkpoint``, ``split``, ``data``, ``base`` apply)."""
    from safe.data.modality_rows import map_pool, prepare_modality
    from safe.evaluation.modality_protocol import run_modality_eval
    from safe.policy.map_modality import map_previews
    from safe.stages.modality_policy import ModalityPolicyResult, check_modality_flags, load_modality_run

    name, run = record["modality"], RunDir(cfg.run_dir)
    check_modality_flags(cfg, record)
    ckpt = Path(cfg.checkpoint) if cfg.checkpoint else run.checkpoints / "policy"
    if not (ckpt / "safe_config.json").is_file():
        raise StageError(f"{ckpt} is not a SAFE checkpoint: run `safe policy train --run-dir {cfg.run_dir}` first "
                         "or pass --checkpoint")
    data, model, front, fmt, cache = load_modality_run(cfg, record, ckpt)
    if model.policy is None:
        raise StageError(f"{ckpt} has no {name} policy attached: run `safe policy train --run-dir {cfg.run_dir}` "
                         "first")
    split, rows = prepare_modality(data.split(cfg.split), fmt, model, front, name, cache,
                                   pool=map_pool(data.split("train"), name), progress=True)
    if not int(split.needs_audio.sum()):
        raise StageError(f"--split {cfg.split}: no row names a {name} map, so there is nothing to evaluate")
    previews = map_previews(model, front, rows.paths, name)
    policy = run.read(ModalityPolicyResult)
    costs = ((policy.metrics if policy else {}).get(name) or {}).get("costs_ms_per_query")
    ev = run_modality_eval(model, fmt, name, split, previews, costs=costs, progress=True)
    result = ModalityEvalResult({name: {**ev, "split": cfg.split, "checkpoint": str(ckpt),
                                        "rows": rows.to_dict()}})
    run.record(result)
    return result
