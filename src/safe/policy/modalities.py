"""A policy that chooses per modality: for each modality a model carries, whether to run it, decided per row.

Each modality has its own :class:`~safe.policy.table.OutcomeTable` (its rows answered with and without that
modality, the measured cost of its own path), so its decision is trained with its own cost in the reward: the
joint action of a row is the set of modalities it runs (``{}``, ``{audio}``, ``{depth}``, ``{audio, depth}``),
chosen by independent per-modality decisions. For each modality :func:`modality_policy`:

* picks the latency weight ``alpha`` on a validation part of the training table (never the test rows): the
  largest saving whose validation accuracy stays within ``tolerance`` of always running the modality
  (on the built-in depth track the cost of a depth call is small next to what depth is worth, so at the
  smallest alpha the policy runs depth on every depth question, also where the depth-blind answer is
  already right; a larger alpha makes it skip those it can tell);
* trains PPO (Stage B) at that alpha on the whole training table and distils it into the small gate
  (Stage C, :func:`~safe.policy.stage.distill_gate`);
* scores the policy, the distilled gate and the never / always / oracle baselines of that modality on the
  test table with :func:`~safe.policy.table.evaluate_actions`.

:func:`modality_rows` lays the per-modality figures out as the report's rows (use rate and accuracy per
modality, each beside its oracle and always-on).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from safe.policy import baselines as B
from safe.policy.alpha import choose_alpha
from safe.policy.ppo import PPOConfig, evaluate_policy, train_ppo
from safe.policy.table import OutcomeTable, evaluate_actions

__all__ = ["modality_policy", "train_modality_policy", "modality_rows", "choose_alpha", "KEEP"]

KEEP = ("accuracy", "use_rate", "mean_latency_ms", "vl_accuracy", "audio_accuracy")
"""The figures kept per operating point (``audio_accuracy``: accuracy on the rows that need the modality)."""


def _keep(ev: dict[str, Any]) -> dict[str, float]:
    return {k: float(ev[k]) for k in KEEP if k in ev}


def modality_policy(train: OutcomeTable, test: OutcomeTable, *, alphas: Sequence[float] = (0.0, 0.1, 0.3),
                    ppo: dict[str, Any] | None = None, tolerance: float = 0.01, seed: int = 0,
                    distill_hidden: int = 32, distill_epochs: int = 100) -> dict[str, Any]:
    """One modality's Stage B and C (module docstring): ``{"policy", "distilled", "never", "always", "oracle"}``
    (each :data:`KEEP` on ``test``), ``alpha`` (chosen), ``alpha_sweep``, ``distill_agreement`` (test rows on
    which the distilled gate decides as the policy), ``rows``. :func:`train_modality_policy` also returns the
    trained networks."""
    return train_modality_policy(train, test, alphas=alphas, ppo=ppo, tolerance=tolerance, seed=seed,
                                 distill_hidden=distill_hidden, distill_epochs=distill_epochs)[0]


def train_modality_policy(train: OutcomeTable, test: OutcomeTable, *, alphas: Sequence[float] = (0.0, 0.1, 0.3),
                          ppo: dict[str, Any] | None = None, tolerance: float = 0.01, seed: int = 0,
                          distill_hidden: int = 32, distill_epochs: int = 100) -> tuple[dict[str, Any], Any, Any]:
    """:func:`modality_policy`'s figures, the Stage B :class:`~safe.policy.network.PolicyNetwork` and the
    Stage C gate (a :class:`~safe.policy.network.GateMLP` of ``distill_hidden``): what a deployment attaches
    (:class:`~safe.policy.runtime.AudioPolicy` ``"mlp"`` over the gate, as ``safe policy train`` does)."""
    from safe.policy.stage import distill_gate

    alpha, sweep = choose_alpha(train, alphas, ppo=ppo, tolerance=tolerance, seed=seed)
    net, _ = train_ppo(train, PPOConfig(alpha_final=alpha, seed=seed, **(ppo or {})))
    gate, report = distill_gate(net, train, test, distill_hidden, distill_epochs)
    return {
        "policy": _keep(evaluate_policy(net, test)),
        "distilled": _keep(report["test"]),
        "never": _keep(evaluate_actions(test, B.never(test))),
        "always": _keep(evaluate_actions(test, B.always(test))),
        "oracle": _keep(evaluate_actions(test, B.oracle(test))),
        "alpha": alpha, "alpha_sweep": sweep, "distill_agreement": float(report["test_agreement"]),
        "rows": {"train": len(train), "test": len(test)},
    }, net, gate


def modality_rows(per_modality: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One report row per modality: the policy's and the distilled gate's use rate and accuracy beside the
    oracle's and always-on's, and the gaps the targets read (use rate to the oracle, accuracy to always-on)."""
    rows = []
    for name, m in per_modality.items():
        p, o, a = m["policy"], m["oracle"], m["always"]
        rows.append({"modality": name, "alpha": m["alpha"],
                     "policy_use_rate": p["use_rate"], "policy_accuracy": p["accuracy"],
                     "distilled_use_rate": m["distilled"]["use_rate"], "distilled_accuracy": m["distilled"]["accuracy"],
                     "oracle_use_rate": o["use_rate"], "oracle_accuracy": o["accuracy"],
                     "always_accuracy": a["accuracy"], "never_accuracy": m["never"]["accuracy"],
                     "use_rate_gap_to_oracle": p["use_rate"] - o["use_rate"],
                     "accuracy_gap_to_always": p["accuracy"] - a["accuracy"]})
    return rows
