"""Tests for safe.policy.ppo and safe.policy.network: hand-computed rewards, schedule, PPO loss and
statistics, dual ascent inside training, collapse detection, determinism, and the Stage B
acceptance in miniature (a synthetic table with a known optimal gate)."""
from __future__ import annotations

import math
import warnings

import pytest
import torch

from safe.policy.distill import distill
from safe.policy.network import GateMLP, PolicyNetwork
from safe.policy.ppo import (
    PPOConfig,
    alpha_schedule,
    detect_collapse,
    evaluate_policy,
    explained_variance,
    latency_scale,
    normalize_advantages,
    ppo_loss,
    retention_penalty,
    reward,
    train_ppo,
)
from safe.policy.table import OutcomeTable, evaluate_actions, make_synthetic_table

torch.set_num_threads(1)


def _table(cost_without, cost_with):
    n = len(cost_without)
    return OutcomeTable(states=torch.zeros(n, 1), correct_without=[0] * n, correct_with=[1] * n,
                        needs_audio=[1] * n, is_vl=[0] * n, cost_without_ms=cost_without,
                        cost_with_ms=cost_with, confidence=[0.5] * n, entropy=[0.5] * n)


# ------------------------------------------------------------------------------------------
# reward
# ------------------------------------------------------------------------------------------
def test_reward_by_hand():
    correct = [1, 0, 1, 1, 1]
    use = [1, 1, 0, 1, 1]
    cost = [150.0, 130.0, 100.0, 180.0, 95.0]
    base = [100.0, 100.0, 100.0, 120.0, 100.0]
    needs = [1, 0, 0, 0, 1]
    r = reward(correct, use, cost, base, alpha=0.5, gamma=0.2, needs_audio=needs, latency_scale=50.0)
    # latency_cost = [50/50, 30/50, 0, 60/50, max(0, -5)/50] = [1, 0.6, 0, 1.2, 0]
    # irrelevant   = [0, 1, 0, 1, 0]
    # r = [1 - 0.5, 0 - 0.3 - 0.2, 1, 1 - 0.6 - 0.2, 1]
    assert r.dtype == torch.float32
    assert r.tolist() == pytest.approx([0.5, -0.5, 1.0, 0.2, 1.0], abs=1e-6)


def test_reward_rejects_bad_arguments():
    args = ([1], [1], [150.0], [100.0])
    with pytest.raises(ValueError, match="latency_scale"):
        reward(*args, 0.5, 0.1, [1], latency_scale=0.0)
    with pytest.raises(ValueError, match="alpha"):
        reward(*args, -0.1, 0.1, [1], latency_scale=1.0)
    with pytest.raises(ValueError, match="cost_ms"):
        reward([1, 0], [1, 0], [150.0], [100.0, 100.0], 0.5, 0.1, [1, 0], latency_scale=1.0)
    with pytest.raises(TypeError):
        reward(*args, 0.5, 0.1, [1])  # latency_scale is keyword-only and required


def test_latency_scale_modes_by_hand():
    t = _table([100.0, 100.0, 200.0], [140.0, 90.0, 260.0])
    # extras clamped at 0: [40, 0, 60] -> mean 100/3; base mean 400/3
    assert latency_scale(t, "mean_extra") == pytest.approx(100.0 / 3)
    assert latency_scale(t, "base") == pytest.approx(400.0 / 3)
    with pytest.raises(ValueError, match="mode"):
        latency_scale(t, "median")
    with pytest.raises(ValueError, match="no extra cost"):
        latency_scale(_table([100.0, 100.0], [100.0, 90.0]))


def test_retention_penalty_by_hand():
    p = retention_penalty([1, 0, 0, 1], [1, 1, 0, 0], lam=2.0)
    assert p.tolist() == [0.0, 2.0, 0.0, 0.0]       # only the wrong VL row pays lambda
    with pytest.raises(ValueError, match="lam"):
        retention_penalty([1], [1], lam=-1.0)


# ------------------------------------------------------------------------------------------
# schedules and statistics
# ------------------------------------------------------------------------------------------
def test_alpha_schedule_by_hand():
    # total 100, ramp 0.2 -> 20 ramp updates, 0.6 / 20 = 0.03 per update
    assert alpha_schedule(0, 100) == 0.0
    assert alpha_schedule(5, 100) == pytest.approx(0.15)
    assert alpha_schedule(10, 100) == pytest.approx(0.3)
    assert alpha_schedule(19, 100) == pytest.approx(0.57)
    assert alpha_schedule(20, 100) == 0.6
    assert alpha_schedule(99, 100) == 0.6
    assert alpha_schedule(150, 100) == 0.6
    assert alpha_schedule(2, 10, final=1.0, ramp_fraction=0.5) == pytest.approx(0.4)
    assert alpha_schedule(0, 10, final=0.6, ramp_fraction=0.0) == 0.6
    vals = [alpha_schedule(s, 50) for s in range(60)]
    assert all(a <= b for a, b in zip(vals, vals[1:]))
    for kwargs, name in [(dict(step=-1, total=10), "step"), (dict(step=0, total=0), "total"),
                         (dict(step=0, total=10, final=-0.1), "final"),
                         (dict(step=0, total=10, ramp_fraction=1.5), "ramp_fraction")]:
        with pytest.raises(ValueError, match=name):
            alpha_schedule(**kwargs)


def test_normalize_advantages():
    assert normalize_advantages(torch.tensor([1.0, 2.0, 3.0])).tolist() == pytest.approx([-1.0, 0.0, 1.0])
    # unbiased std of [0, 4] is sqrt(8)
    assert normalize_advantages(torch.tensor([0.0, 4.0])).tolist() == pytest.approx([-2 / math.sqrt(8), 2 / math.sqrt(8)])
    assert normalize_advantages(torch.tensor([2.5])).tolist() == [0.0]
    assert normalize_advantages(torch.tensor([5.0, 5.0, 5.0])).tolist() == [0.0, 0.0, 0.0]
    x = normalize_advantages(torch.randn(100, generator=torch.Generator().manual_seed(0)) * 7 + 3)
    assert float(x.mean()) == pytest.approx(0.0, abs=1e-6)
    assert float(x.std()) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="adv"):
        normalize_advantages(torch.tensor([]))


def test_explained_variance_by_hand():
    # Var(returns) = 1.25; residual [0, 0, 0, 1] has variance 0.25 - 0.0625 = 0.1875 -> 1 - 0.15
    assert explained_variance([1.0, 2.0, 3.0, 3.0], [1.0, 2.0, 3.0, 4.0]) == pytest.approx(0.85)
    assert explained_variance([1.0, 2.0], [1.0, 2.0]) == pytest.approx(1.0)
    assert math.isnan(explained_variance([0.0, 1.0], [2.0, 2.0]))


def test_ppo_loss_by_hand():
    ratios = [1.5, 0.5, 1.1, 0.5]
    old = torch.tensor([-0.5, -1.0, -0.2, -0.7])
    new = (old + torch.log(torch.tensor(ratios))).requires_grad_()
    adv = torch.tensor([1.0, 1.0, -2.0, -1.0])
    values = torch.tensor([0.5, 0.0, 1.0, -1.0], requires_grad=True)
    returns = torch.tensor([1.0, 0.0, 0.0, -1.0])
    entropy = torch.tensor([0.6, 0.5, 0.7, 0.2], requires_grad=True)
    loss, st = ppo_loss(new, old, adv, values, returns, entropy, clip=0.2, vf_coef=0.5, ent_coef=0.01)
    # per row max(-A r, -A clip(r)): max(-1.5, -1.2), max(-0.5, -0.8), max(2.2, 2.2), max(0.5, 0.8)
    policy = (-1.2 - 0.5 + 2.2 + 0.8) / 4                      # 0.325
    value = 0.5 * (0.25 + 0 + 1 + 0) / 4                       # 0.15625
    ent = (0.6 + 0.5 + 0.7 + 0.2) / 4                          # 0.5
    assert st["policy_loss"] == pytest.approx(policy, abs=1e-6)
    assert st["value_loss"] == pytest.approx(value, abs=1e-6)
    assert st["entropy"] == pytest.approx(ent, abs=1e-6)
    assert float(loss.detach()) == pytest.approx(policy + 0.5 * value - 0.01 * ent, abs=1e-6)
    assert float(loss.detach()) == pytest.approx(0.398125, abs=1e-6)
    kl = ((0.5 - math.log(1.5)) + (-0.5 - math.log(0.5)) + (0.1 - math.log(1.1)) + (-0.5 - math.log(0.5))) / 4
    assert st["approx_kl"] == pytest.approx(kl, abs=1e-6)
    assert st["clipfrac"] == pytest.approx(0.75)               # |r - 1| > 0.2 for 1.5, 0.5, 0.5
    loss.backward()
    # clipped branch active on rows 0 and 3 -> no gradient; rows 1, 2: -A r / 4
    assert new.grad.tolist() == pytest.approx([0.0, -0.125, 0.55, 0.0], abs=1e-6)
    assert values.grad.tolist() == pytest.approx([0.5 * (v - r) / 4 for v, r in
                                                  zip([0.5, 0.0, 1.0, -1.0], [1.0, 0.0, 0.0, -1.0])], abs=1e-6)
    assert entropy.grad.tolist() == pytest.approx([-0.0025] * 4, abs=1e-7)


def test_ppo_loss_identity_ratio_and_errors():
    lp = torch.tensor([-0.3, -1.2])
    _, st = ppo_loss(lp, lp, torch.tensor([1.0, -1.0]), torch.zeros(2), torch.zeros(2), torch.zeros(2))
    assert st["approx_kl"] == 0.0 and st["clipfrac"] == 0.0 and st["policy_loss"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="old_logp"):
        ppo_loss(lp, lp[:1], lp, lp, lp, lp)
    with pytest.raises(ValueError, match="clip"):
        ppo_loss(lp, lp, lp, lp, lp, lp, clip=0.0)


def test_detect_collapse():
    assert detect_collapse(0.01) == "never"
    assert detect_collapse(0.02) == "never"
    assert detect_collapse(0.5) is None
    assert detect_collapse(0.98) == "always"
    assert detect_collapse(1.0) == "always"
    history = [0.5] * 20 + [0.0] * 10
    assert detect_collapse(history) == "never"               # last 10 average 0
    assert detect_collapse(history, window=20) is None       # last 20 average 0.25
    assert detect_collapse([0.99, 0.95], window=2) is None   # mean 0.97
    assert detect_collapse([0.99, 0.99], window=2) == "always"
    assert detect_collapse(0.1, low=0.15, high=0.9) == "never"
    with pytest.raises(ValueError, match="low"):
        detect_collapse(0.5, low=0.6, high=0.4)
    with pytest.raises(ValueError, match="empty"):
        detect_collapse([])
    with pytest.raises(ValueError, match=r"use_rate\[1\]"):
        detect_collapse([0.5, 1.5])


# ------------------------------------------------------------------------------------------
# networks
# ------------------------------------------------------------------------------------------
def test_policy_network_shapes_and_actions():
    torch.manual_seed(0)
    net = PolicyNetwork(5, hidden=16)
    x = torch.randn(7, 5)
    logits, value = net(x)
    assert logits.shape == (7, 2) and value.shape == (7,)
    # 2 * (5*16 + 16 + 16*16 + 16) + 3*16 + 3
    assert net.num_parameters() == 2 * (5 * 16 + 16 + 16 * 16 + 16) + 3 * 16 + 3
    # the small action-head gain starts near 50/50
    assert net.use_probability(x).sub(0.5).abs().max() < 0.1
    a, lp, v = net.act(x, generator=torch.Generator().manual_seed(3))
    a2, lp2, _ = net.act(x, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, a2) and torch.equal(lp, lp2) and torch.equal(v, value.detach())
    lp_eval, ent, _ = net.evaluate(x, a)
    assert torch.allclose(lp_eval, lp)
    p = torch.softmax(logits, -1)
    assert torch.allclose(ent, -(p * p.log()).sum(-1))
    ad, _, _ = net.act(x, deterministic=True)
    assert torch.equal(ad, (logits[:, 1] > logits[:, 0]).long())
    assert torch.equal(net.decide(x), ad.bool())
    with pytest.raises(ValueError, match=r"\(n, 5\)"):
        net(torch.randn(3, 4))
    with pytest.raises(ValueError, match="hidden"):
        PolicyNetwork(5, hidden=0)


def test_input_normalization_is_in_the_state_dict():
    net = PolicyNetwork(3, hidden=8)
    net.set_input_normalization(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 0.0, 4.0]))
    sd = net.state_dict()
    assert sd["norm.input_mean"].tolist() == [1.0, 2.0, 3.0]
    assert sd["norm.input_std"].tolist() == [2.0, 1.0, 4.0]    # a zero std is taken as 1
    other = PolicyNetwork(3, hidden=8)
    other.load_state_dict(sd)
    x = torch.randn(4, 3)
    assert torch.equal(other(x)[0], net(x)[0])
    with pytest.raises(ValueError, match="std"):
        net.set_input_normalization(torch.zeros(3), torch.ones(2))


def test_gate_mlp():
    g = GateMLP(4, hidden=8)
    assert g.num_parameters() == 4 * 8 + 8 + 8 + 1
    x = torch.randn(6, 4)
    assert g(x).shape == (6,)
    d = g.decide(x)
    assert d.dtype == torch.bool and torch.equal(d, torch.sigmoid(g(x)) > 0.5)
    assert not g.decide(x, threshold=1.0).any()
    with pytest.raises(ValueError, match="threshold"):
        g.decide(x, threshold=2.0)


# ------------------------------------------------------------------------------------------
# config and training
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,name", [
    (dict(batch_size=0), "batch_size"),
    (dict(minibatch_size=512), "minibatch_size"),
    (dict(lr=0.0), "lr"),
    (dict(alpha_ramp=1.5), "alpha_ramp"),
    (dict(latency_norm="p99"), "latency_norm"),
    (dict(tau=-0.1), "tau"),
    (dict(steps=1.5), "steps"),
    (dict(collapse_low=0.9, collapse_high=0.1), "collapse_low"),
    (dict(target_kl=0.0), "target_kl"),
])
def test_config_validation_names_the_field(kwargs, name):
    with pytest.raises(ValueError, match=name):
        PPOConfig(**kwargs)


def test_training_is_deterministic_and_leaves_global_rng_alone():
    table = make_synthetic_table(500, 4, seed=5)
    cfg = PPOConfig(steps=12, seed=3)
    state = torch.random.get_rng_state()
    p1, h1 = train_ppo(table, cfg)
    assert torch.equal(torch.random.get_rng_state(), state)
    p2, h2 = train_ppo(table, cfg)
    assert h1 == h2
    for (k1, v1), (k2, v2) in zip(p1.state_dict().items(), p2.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    p3, h3 = train_ppo(table, PPOConfig(steps=12, seed=4))
    assert h3 != h1
    keys = {"update", "alpha", "lambda", "use_rate", "mean_reward", "accuracy", "vl_accuracy", "vl_floor",
            "approx_kl", "clipfrac", "entropy", "policy_loss", "value_loss", "explained_variance",
            "epochs_run", "collapse"}
    assert set(h1[0]) == keys
    assert [r["alpha"] for r in h1] == [alpha_schedule(k, 12, 0.6, 0.2) for k in range(12)]
    assert all(r["approx_kl"] >= 0 and 0 <= r["clipfrac"] <= 1 for r in h1)


def test_log_callback_and_target_kl():
    table = make_synthetic_table(300, 3, seed=1)
    seen = []
    _, hist = train_ppo(table, PPOConfig(steps=5, target_kl=1e-9, seed=0), log=seen.append)
    assert seen == hist
    assert all(r["epochs_run"] == 1 for r in hist)   # any KL exceeds 1e-9 after the first epoch


def _binding_table(n=2000, seed=0):
    """States carry no information; audio fixes every audio row (40 %) but breaks a quarter of the right
    VL answers. Unconstrained, using audio everywhere gains 0.4 - 0.6 * 0.8 * 0.25 = +0.28 accuracy and
    drops VL accuracy from 0.8 to 0.6: the retention constraint must bind."""
    g = torch.Generator().manual_seed(seed)
    needs = torch.rand(n, generator=g) < 0.4
    vl = ~needs
    right = torch.rand(n, generator=g) < 0.8
    breaks = torch.rand(n, generator=g) < 0.25
    return OutcomeTable(states=torch.randn(n, 4, generator=g), correct_without=vl & right,
                        correct_with=needs | (vl & right & ~breaks), needs_audio=needs, is_vl=vl,
                        cost_without_ms=torch.full((n,), 100.0), cost_with_ms=torch.full((n,), 140.0),
                        confidence=torch.rand(n, generator=g), entropy=torch.rand(n, generator=g))


def test_dual_ascent_enforces_vl_retention():
    table = _binding_table()
    base_vl = float(table.correct_without[table.is_vl].double().mean())
    cfg = dict(steps=80, alpha_final=0.0, gamma=0.0, seed=0)
    with pytest.warns(UserWarning, match="always"):
        free, h_free = train_ppo(table, PPOConfig(dual_lr=0.0, **cfg))
    assert all(r["lambda"] == 0.0 for r in h_free)
    assert h_free[-1]["collapse"] == "always"
    ev_free = evaluate_policy(free, table)
    assert ev_free["collapse"] == "always"
    assert ev_free["vl_accuracy"] < base_vl - 0.1              # retention lost without the constraint

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tied, h = train_ppo(table, PPOConfig(dual_lr=1.0, **cfg))
    # lambda follows projected dual ascent on the logged (paired) VL accuracy, exactly
    floor = base_vl - 0.003
    assert h[0]["vl_floor"] == pytest.approx(floor)
    for prev, nxt in zip(h, h[1:]):
        expected = min(10.0, max(0.0, prev["lambda"] + 1.0 * (floor - prev["vl_accuracy"])))
        assert nxt["lambda"] == pytest.approx(expected, abs=1e-9)
    assert h[-1]["lambda"] > 1.0
    ev = evaluate_policy(tied, table)
    assert ev["vl_accuracy"] >= floor - 0.01
    assert ev["use_rate"] < 0.5 * ev_free["use_rate"]


def test_no_vl_rows_means_no_constraint():
    t = make_synthetic_table(300, 3, seed=2)
    t = t.subset(t.needs_audio)                                # audio rows only
    _, h = train_ppo(t, PPOConfig(steps=3, lambda_init=0.5, seed=0))
    assert all(r["lambda"] == 0.5 and math.isnan(r["vl_accuracy"]) for r in h)


# ------------------------------------------------------------------------------------------
# Stage B acceptance in miniature
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained():
    train = make_synthetic_table(3000, 8, seed=0)
    policy, history = train_ppo(train, PPOConfig(steps=200, seed=0))
    return train, policy, history


def test_stage_b_acceptance_in_miniature(trained):
    """Audio helps exactly where x0 > 0 and costs ~40 % latency everywhere: on held-out rows the
    policy must be within 1 accuracy point of always-audio at a use rate within 5 points of the
    oracle's, without collapsing."""
    _, policy, history = trained
    test = make_synthetic_table(6000, 8, seed=1)
    ev = evaluate_policy(policy, test)
    always = evaluate_actions(test, torch.ones(len(test), dtype=torch.bool))
    assert ev["accuracy"] >= always["accuracy"] - 0.01
    assert abs(ev["use_rate"] - ev["oracle_use_rate"]) <= 0.05
    assert ev["latency_ratio_to_base"] < always["latency_ratio_to_base"] - 0.15
    assert ev["false_positive_rate"] < 0.05
    assert ev["collapse"] is None and history[-1]["collapse"] is None
    assert history[-1]["alpha"] == 0.6
    assert history[-1]["entropy"] < history[0]["entropy"]
    assert history[-1]["explained_variance"] > history[0]["explained_variance"]


def test_stage_c_distils_the_trained_policy(trained):
    train, policy, _ = trained
    gate, report = distill(policy, train, epochs=50, seed=0)
    assert report["agreement"] >= 0.95
    assert report["student_params"] == gate.num_parameters() < report["teacher_params"]
    assert abs(report["student"]["accuracy"] - report["teacher"]["accuracy"]) <= 0.02
