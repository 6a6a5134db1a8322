"""The deployed alpha chosen on held-out rows: PPO at each candidate latency weight on a training part of an
outcome table, scored on its held-out part (the depth track's and ``PolicyStageConfig.choose_alpha``'s rule).
The test split plays no part in the choice."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from safe.policy import baselines as B
from safe.policy.ppo import PPOConfig, evaluate_policy, train_ppo
from safe.policy.table import OutcomeTable, evaluate_actions

__all__ = ["choose_alpha"]


def _split(n: int, holdout: float, seed: int) -> tuple[list[int], list[int]]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    k = max(1, int(round(n * holdout)))
    return sorted(perm[k:]), sorted(perm[:k])


def choose_alpha(train: OutcomeTable, alphas: Sequence[float], *, ppo: dict[str, Any] | None = None,
                 tolerance: float = 0.01, holdout: float = 0.25, seed: int = 0) -> tuple[float, list[dict[str, float]]]:
    """The alpha to deploy and the sweep behind it: PPO at each of ``alphas`` on a training part of ``train``,
    scored on its held-out part; the chosen one has the lowest held-out use rate among those whose held-out
    accuracy is within ``tolerance`` of always running the modality there (the smallest alpha if none is).
    ``ppo``: :class:`~safe.policy.ppo.PPOConfig` settings besides ``alpha_final`` and ``seed``."""
    fit_rows, val_rows = _split(len(train), holdout, seed)
    fit, val = train.subset(fit_rows), train.subset(val_rows)
    always = evaluate_actions(val, B.always(val))["accuracy"]
    sweep = []
    for a in sorted(float(x) for x in alphas):
        net, _ = train_ppo(fit, PPOConfig(alpha_final=a, seed=seed, **(ppo or {})))
        ev = evaluate_policy(net, val)
        sweep.append({"alpha": a, "val_accuracy": float(ev["accuracy"]), "val_use_rate": float(ev["use_rate"]),
                      "val_always_accuracy": float(always)})
    ok = [s for s in sweep if s["val_accuracy"] >= always - tolerance]
    best = min(ok, key=lambda s: (s["val_use_rate"], s["alpha"])) if ok else sweep[0]
    return best["alpha"], sweep
