"""The depth track's own policy: whether to consult depth, decided per question by the same Stage B machinery
as audio (outcome tables with measured costs, PPO with the VL floor, the never / always / oracle baselines).

A model with several modalities decides for each independently: each modality has its own table, cost and
policy. The state is the early one (question and image embeddings, no base pass) plus a cheap preview of the
depth map (the nearness of each grid cell, read off the map without the encoder) in the preview slot.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from safe.bench.depth import BACKGROUND_DEPTH, NEAR, DepthSplits, depth_split, load_depth_processor
from safe.bench.questions import SynthConfig
from safe.processing.modalities import map_preview

ALPHAS = (0.0, 0.1, 0.3)
"""Latency weights the depth policy's alpha is chosen among (on held-out training rows)."""
TOLERANCE = 0.005
"""Held-out accuracy an alpha may lose to always-on: half a point, a margin for the noise of the 300 held-out
rows under the 1-point target on the test split (at 1 point a run picked alpha 0.1 and lost 1.9 on test)."""


def depth_preview(maps: np.ndarray, grid: int) -> torch.Tensor:
    """(n, PREVIEW_DIM): each grid cell's nearest point as nearness in [0, 1], then zeros: the deployed
    preview (:func:`~safe.processing.modalities.map_preview`) of the maps as the depth encoder's input, so the
    policy is trained on what the pipeline computes from a map."""
    return map_preview(torch.from_numpy(depth_pixels_batch(maps)), grid)


def depth_pixels_batch(maps: np.ndarray) -> np.ndarray:
    """(n, 1, H, W) nearness in [-1, 1]: :func:`~safe.bench.depth.depth_pixels` of each map of ``maps`` (n, H, W)."""
    return ((BACKGROUND_DEPTH - maps) / (BACKGROUND_DEPTH - NEAR) * 2.0 - 1.0).astype(np.float32)[:, None]


def depth_policy(model, fmt, scene: SynthConfig, splits: DepthSplits, train_set, test_set, *,
                 alphas: tuple[float, ...] = ALPHAS,
                 steps: int | None = None, train_rows: int = 1200, cost_rows: int = 32,
                 progress: bool = False, save_dir=None, checkpoint_dir=None) -> dict[str, Any]:
    """Stage B for depth on the trained depth model: outcome tables of the first ``train_rows`` of
    ``train_set`` and of ``test_set`` (prepared by :func:`~safe.bench.depth_model.prepare_depth` from the same
    ``splits``), measured costs, then :func:`~safe.policy.modalities.modality_policy`: alpha chosen among
    ``alphas`` on held-out training rows, PPO, Stage C, and the test figures beside never / always / oracle;
    ``save_dir``: where the two tables are saved (``depth_{train,test}_table.pt``); ``checkpoint_dir``: where
    the SAFE depth weights are saved with the distilled gate attached (as ``safe policy train`` deploys audio's),
    so ``safe.pipeline`` / ``safe predict`` consult the depth policy per row."""
    from safe.policy.map_modality import deploy_gate, ms_per_row
    from safe.policy.modalities import train_modality_policy
    from safe.policy.outcomes import build_table, collect_outcomes

    t0 = time.perf_counter()
    model.eval()
    tables = {}
    train_set = train_set.subset(range(min(train_rows, len(train_set))))
    for name, data in (("train", train_set), ("test", test_set)):
        maps = depth_split(scene, splits, name)[2][: len(data)]
        outcomes = collect_outcomes(model, fmt, data, depth_preview(maps, scene.grid), progress=progress, early=True)
        tables[name] = (outcomes, data, maps)
    # cost of a query with and without depth (the encoder included), measured on test rows of each kind
    maps = load_depth_processor()(tables["test"][2])
    rows = {True: [i for i, e in enumerate(test_set.examples) if e.needs_audio][:cost_rows],
            False: [i for i, e in enumerate(test_set.examples) if not e.needs_audio][:cost_rows]}
    ms = {kind: {"without_audio": ms_per_row(model, fmt, test_set, r, None),
                 "with_audio": ms_per_row(model, fmt, test_set, r, maps[r])} for kind, r in rows.items()}
    costs = {e.family: ms[e.needs_audio] for d in (train_set, test_set) for e in d.examples}
    train, test = (build_table(o, d, costs) for o, d, _ in tables.values())
    if save_dir is not None:  # the tables, so the policy can be retrained and rescored without the model
        from pathlib import Path

        Path(save_dir).mkdir(parents=True, exist_ok=True)
        train.save(Path(save_dir) / "depth_train_table.pt")
        test.save(Path(save_dir) / "depth_test_table.pt")
    out, _, gate = train_modality_policy(train, test, alphas=alphas, tolerance=TOLERANCE,
                                         **({"ppo": {"steps": steps}} if steps else {}))
    if checkpoint_dir is not None:
        out["checkpoint"] = deploy_gate(model, gate, checkpoint_dir)
    return {
        **out,
        "costs_ms_per_query": {"depth_question": ms[True], "vl_question": ms[False]},
        "seconds": round(time.perf_counter() - t0, 1),
    }


def rescore(run_dir, alphas: tuple[float, ...] = ALPHAS) -> dict[str, Any]:
    """Stage B and C for depth again from the outcome tables a depth track run saved (``run_dir/policy``), the
    model not needed: replaces ``depth.policy`` in the run's ``metrics.json`` (its measured costs kept)."""
    import json
    from pathlib import Path

    from safe.policy.modalities import modality_policy
    from safe.policy.table import OutcomeTable

    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    old = metrics["depth"]["policy"]
    train, test = (OutcomeTable.load(run_dir / "policy" / f"depth_{s}_table.pt") for s in ("train", "test"))
    new = {**modality_policy(train, test, alphas=alphas, tolerance=TOLERANCE),
           "costs_ms_per_query": old["costs_ms_per_query"], "seconds": round(time.perf_counter() - t0, 1)}
    metrics["depth"]["policy"] = new
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return new


if __name__ == "__main__":  # python -m safe.bench.depth_policy RUN_DIR: rescore a depth track run's policy
    import sys

    torch.set_num_threads(1)
    p = rescore(sys.argv[1] if len(sys.argv) > 1 else "runs/demo-depth")
    print({k: p[k] for k in ("policy", "distilled", "oracle", "always", "never", "alpha")})
