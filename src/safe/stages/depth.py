"""``safe demo --track depth``: the depth track of the built-in benchmark — the built-in frozen VL model (the
synthetic track's), the shipped frozen depth encoder, Stage A for depth through the same trainer and
retention machinery as audio, and the track's figures under ``depth`` in its own run directory."""
from __future__ import annotations

from dataclasses import dataclass

from safe.runs import RunDir, StageResult

#: Run directory and recipe of the track when ``safe demo``'s defaults are left as they are.
RUN_DIR = "runs/demo-depth"
RECIPE = "stage_a_depth.yaml"  # a shipped recipe (safe.training's recipes/)


@dataclass
class DepthResult(StageResult):
    """The depth track's figures (``metrics.json`` key ``depth``): depth-question accuracy of the depth-blind
    base and of SAFE, VL retention with the gate closed and open, per family, the frozen-weights check, and
    the depth policy beside never / always / oracle (``policy``)."""

    KEY = "depth"

    @property
    def ok(self) -> bool:
        return bool(self.metrics.get("frozen_byte_identical"))

    def summary(self) -> str:
        m = self.metrics
        rows = [("depth questions, depth-blind base", m["depth_accuracy_base"]),
                ("depth questions, SAFE", m["depth_accuracy"]),
                ("VL answers identical to base, gate closed", m["answers_identical_gate_closed"]),
                ("VL accuracy, base", m["vl_accuracy_base"]),
                ("VL accuracy, SAFE gate open", m["vl_accuracy_gate_open"]),
                ("VL retention ratio (gate open / base)", m["vl_retention_ratio_gate_open"])]
        lines = ["depth track (test split; gate open = each row with its own depth map)"]
        lines += [f"  {name:<44}{v:>8.3f}" for name, v in rows]
        lines.append(f"  {'VL answers changed with gate open':<44}{m['vl_answers_changed_gate_open']:>8d} of "
                     f"{m['vl_examples']}")
        lines.append("  per family (base -> SAFE gate open):")
        lines += [f"    {fam:<18}{v['base']:>7.3f} -> {v['open']:.3f}" for fam, v in m["per_family"].items()]
        lines.append(f"  {'base + depth encoder byte-identical (sha256)':<44}"
                     f"{'yes' if m['frozen_byte_identical'] else 'NO':>8}")
        p = m.get("policy")
        if p:
            lines.append(f"  depth policy (PPO, alpha {p['alpha']:g} chosen on held-out training rows; test split): "
                         "use rate / accuracy")
            lines += [f"    {name:<10}{p[name]['use_rate']:>7.3f} / {p[name]['accuracy']:.3f}"
                      for name in ("policy", "distilled", "oracle", "always", "never") if name in p]
            c = p["costs_ms_per_query"]["depth_question"]
            lines.append(f"    cost of a depth question: {c['without_audio']:.2f} ms without depth, "
                         f"{c['with_audio']:.2f} ms with it (measured)")
            if p.get("checkpoint"):
                lines.append(f"    the distilled gate with the depth weights (safe.pipeline consults it): {p['checkpoint']}")
        lines.append(f"  Stage A for depth took {m['seconds']:.0f} s ({m['train_seconds']:.0f} s training, "
                     f"{m['steps']} steps); SAFE depth weights: {m['checkpoint']}")
        return "\n".join(lines)


def demo_depth(cfg, echo=print) -> DepthResult:
    """The depth track into ``cfg.run_dir`` (a :class:`~safe.stages.demo.DemoConfig`): trains Stage A for depth
    (resuming unless ``cfg.fresh``), then the depth policy, and records ``depth``."""
    import shutil
    from pathlib import Path

    from safe.bench.build import SHIPPED_DIR
    from safe.bench.depth_model import run_depth_track
    from safe.stages.common import base_path
    from safe.training.config import load_stage_a_config

    run = RunDir(cfg.run_dir)
    # The built-in VL model: the one `safe base build` installed, else the build SAFE ships (the same weights
    # unless the base was rebuilt), so the track needs neither the audio benchmark nor a base build.
    vl = base_path(None) / "vl"
    vl = vl if (vl / "config.json").is_file() else SHIPPED_DIR / "vl"
    recipe = load_stage_a_config(cfg.recipe or RECIPE)
    if cfg.fresh and (Path(cfg.run_dir) / "checkpoints").exists():
        shutil.rmtree(Path(cfg.run_dir) / "checkpoints")
    echo(f"== Stage A for depth ({cfg.recipe or RECIPE}) ==")
    metrics = run_depth_track(run.path, vl, recipe, policy={})
    metrics.pop("samples", None)
    result = DepthResult(metrics)  # the command prints its summary
    run.record(result)
    return result
