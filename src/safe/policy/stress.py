"""The retention floor under stress: a setting where Stage B's Lagrangian constraint must bind.

On a real outcome table the state tells a VL-only question from an audio question, and the reward
already charges every wrong answer, so a policy that skips audio on VL rows costs itself nothing and
the retention multiplier rarely has to move (``lambda`` stays near 0 and "lambda = 0" trains the
same gate). That shows the floor is not needed there, not that it works. :func:`harmful_audio_table`
builds the case it exists for from a real table:

* **audio hurts VL rows**: on a seeded fraction ``harm`` of the VL rows, the answer with audio is
  scored 0 (audio makes them wrong), as a badly trained adapter or a misleading clip would;
* **the state cannot see it**: the state is blanked (one constant feature), so it no longer says whether
  a row is a VL row or an audio row: the extreme of a state too weak to tell them apart. (Blank rather
  than the real states shuffled across rows, or noise: on 3,000 rows a policy memorises which training
  state belonged to a hurt VL row, which teaches nothing about new rows.)

Trained with audio free (``alpha = 0``, ``gamma = 0``), consulting audio everywhere then maximises the
reward whenever audio's gain on the audio rows outweighs what it breaks on the VL rows, and it takes
VL accuracy below the floor. :func:`floor_binding` trains PPO on such a table with dual ascent and with
``lambda`` frozen at 0 (``dual_lr = 0``) and scores both on a held-out stressed table: with the dual,
``lambda`` rises and VL accuracy is held at the floor (base - tau); without it, it is not.
"""
from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Any

import torch

from safe.policy.ppo import PPOConfig, evaluate_policy, train_ppo
from safe.policy.table import OutcomeTable
from safe.validation import real_arg

__all__ = ["harmful_audio_table", "floor_binding"]


def harmful_audio_table(table: OutcomeTable, harm: float = 0.25, seed: int = 0) -> OutcomeTable:
    """``table`` with audio scored wrong on a fraction ``harm`` of its VL rows and its state blanked, (n, 1)
    zeros (module docstring); everything else (answers without audio, costs, tokens, flags) as measured.
    Deterministic given ``seed``; ``table`` is not changed."""
    harm = real_arg("harm", harm, 0.0, 1.0)
    if not isinstance(table, OutcomeTable):
        raise TypeError(f"table must be an OutcomeTable, got {type(table).__name__}")
    g = torch.Generator().manual_seed(int(seed))
    n = len(table)
    hurt = table.is_vl & (torch.rand(n, generator=g) < harm)
    fields = table.to_dict()
    fields["correct_with"] = torch.where(hurt, torch.zeros_like(table.correct_with), table.correct_with)
    fields["states"] = torch.zeros(n, 1)
    return OutcomeTable(**fields)


def _summary(policy, history: list[dict[str, Any]], table: OutcomeTable) -> dict[str, Any]:
    ev = evaluate_policy(policy, table)
    lam = [float(h["lambda"]) for h in history]
    return {**{k: ev[k] for k in ("accuracy", "vl_accuracy", "audio_accuracy", "use_rate", "false_positive_rate")},
            "lambda_max": max(lam), "lambda_final": lam[-1], "lambda": [round(v, 4) for v in lam]}


def floor_binding(train: OutcomeTable, test: OutcomeTable, cfg: PPOConfig, harm: float = 0.25,
                  seed: int = 0) -> dict[str, Any]:
    """Train PPO (``cfg`` with ``alpha_final = 0``, ``gamma = 0``) on :func:`harmful_audio_table` of ``train``
    with dual ascent (``cfg.dual_lr``) and with ``dual_lr = 0``; score both on the stressed ``test``.

    Returns plain values: ``harm``, ``tau``, ``base_vl_accuracy`` (test, without audio), ``vl_floor`` (that
    minus tau), ``with_dual`` / ``without_dual`` (accuracy, VL / audio accuracy, use rate, VL false-positive
    rate, ``lambda_max``, ``lambda_final`` and ``lambda``, the multiplier at every update), ``held`` (VL
    accuracy with the dual at or above the floor) and ``broken_without`` (below it without the dual)."""
    stressed = dict(alpha_final=0.0, gamma=0.0)
    train_s = harmful_audio_table(train, harm, seed)
    test_s = harmful_audio_table(test, harm, seed + 1)
    base_vl = float(test_s.correct_without[test_s.is_vl].double().mean()) if bool(test_s.is_vl.any()) else float("nan")
    floor = base_vl - cfg.tau
    out: dict[str, Any] = {"harm": harm, "tau": cfg.tau, "base_vl_accuracy": base_vl, "vl_floor": floor,
                           "alpha": 0.0, "gamma": 0.0, "dual_lr": cfg.dual_lr, "updates": cfg.steps}
    for name, dual_lr in (("with_dual", cfg.dual_lr), ("without_dual", 0.0)):
        with warnings.catch_warnings():  # a collapse is the expected outcome of both runs here, not news
            warnings.simplefilter("ignore", UserWarning)
            policy, history = train_ppo(train_s, replace(cfg, dual_lr=dual_lr, **stressed))
        out[name] = _summary(policy, history, test_s)
    out["held"] = bool(out["with_dual"]["vl_accuracy"] >= floor - 1e-9)
    out["broken_without"] = bool(out["without_dual"]["vl_accuracy"] < floor - 1e-9)
    return out
