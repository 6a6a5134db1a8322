"""Tests for safe.policy.distill: a student MLP must copy a teacher whose decision is a known linear
threshold on one feature."""
from __future__ import annotations

import pytest
import torch

from safe.policy.distill import distill, teacher_decisions, time_per_row
from safe.policy.network import PolicyNetwork
from safe.policy.table import evaluate_actions, make_synthetic_table

torch.set_num_threads(1)


def _threshold_policy(state_dim: int, feature: int, cut: float) -> PolicyNetwork:
    """A PolicyNetwork set by hand to use audio iff states[:, feature] > cut."""
    net = PolicyNetwork(state_dim, hidden=8)
    with torch.no_grad():
        for p in net.actor.parameters():
            p.zero_()
        net.actor[0].weight[0, feature] = 1.0      # h0 = tanh(x_f - cut)
        net.actor[0].bias[0] = -cut
        net.actor[2].weight[0, 0] = 1.0            # g0 = tanh(h0): same sign
        net.actor[4].weight[1, 0] = 10.0           # logit(use) = 10 g0, logit(skip) = 0
    return net


def test_hand_set_teacher_is_the_threshold():
    net = _threshold_policy(6, 2, 0.3)
    x = torch.zeros(4, 6)
    x[:, 2] = torch.tensor([-1.0, 0.29, 0.31, 2.0])
    assert teacher_decisions(net, x).tolist() == [False, False, True, True]


def test_distill_a_linear_threshold_policy():
    table = make_synthetic_table(2000, 6, seed=3)
    teacher = _threshold_policy(6, 2, 0.3)
    gate, rep = distill(teacher, table, hidden=32, epochs=30, seed=0)
    assert rep["agreement"] >= 0.95
    assert rep["agreement_train"] >= 0.95
    assert rep["n_holdout"] == 400 and rep["n_train"] == 1600
    assert rep["student_params"] == 6 * 32 + 32 + 32 + 1 == gate.num_parameters()
    assert rep["teacher_params"] == teacher.num_parameters()
    assert rep["student_s_per_row"] > 0 and rep["teacher_s_per_row"] > 0
    truth = table.states[:, 2] > 0.3
    assert rep["teacher_use_rate_train"] == pytest.approx(float(truth.float().mean()), abs=0.05)
    # the student's decisions on fresh states follow the rule, not just the table it saw
    fresh = make_synthetic_table(1000, 6, seed=9).states
    assert float((gate.decide(fresh) == (fresh[:, 2] > 0.3)).float().mean()) >= 0.95
    for key in ("accuracy", "use_rate", "mean_latency_ms", "latency_ratio_to_base"):
        assert key in rep["student"] and key in rep["teacher"]


def test_distill_from_a_callable_teacher_and_determinism():
    table = make_synthetic_table(1000, 4, seed=1)
    rule = lambda s: s[:, 1] < -0.2  # noqa: E731
    g1, r1 = distill(rule, table, epochs=20, seed=5)
    g2, r2 = distill(rule, table, epochs=20, seed=5)
    assert r1["agreement"] >= 0.95 and r1["teacher_params"] is None
    for (k1, v1), (k2, v2) in zip(g1.state_dict().items(), g2.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    assert r1["agreement"] == r2["agreement"]
    # the held-out teacher numbers are the rule's own, scored on the held-out rows
    perm = torch.randperm(1000, generator=torch.Generator().manual_seed(5))
    hold = table.subset(perm[:200])
    assert r1["teacher"] == evaluate_actions(hold, rule(hold.states))


def test_distill_rejects_bad_arguments():
    table = make_synthetic_table(50, 2, seed=0)
    rule = lambda s: s[:, 0] > 0  # noqa: E731
    for kwargs, name in [(dict(holdout=0.0), "holdout"), (dict(holdout=1.0), "holdout"), (dict(epochs=0), "epochs"),
                         (dict(lr=-1.0), "lr"), (dict(batch_size=0), "batch_size")]:
        with pytest.raises(ValueError, match=name):
            distill(rule, table, **kwargs)
    with pytest.raises(ValueError, match="decisions"):
        distill(lambda s: s[:3, 0] > 0, table)
    with pytest.raises(TypeError, match="teacher"):
        distill(42, table)


def test_time_per_row_restores_threads():
    threads = torch.get_num_threads()
    t = time_per_row(lambda s: s.sum(), torch.ones(100, 3), repeats=3)
    assert t > 0
    assert torch.get_num_threads() == threads
