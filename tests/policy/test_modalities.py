"""A policy per modality: each modality's decision trained on its own table with its own measured cost, alpha
chosen on held-out training rows within the accuracy tolerance, Stage C distilling the same decision, and the
report's per-modality rows. PPO itself is tested in test_ppo.py: here a stand-in teacher (a threshold on the
first state feature, lower for larger alpha) keeps these tests to seconds."""
import pytest

import safe.policy.alpha as A
import safe.policy.modalities as M
from safe.policy import baselines as B
from safe.policy.table import evaluate_actions, make_synthetic_table

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Gate:
    """Uses the modality where ``states[:, 0] > t``; larger alpha -> higher t (fewer rows)."""

    def __init__(self, t: float) -> None:
        self.t = t

    def decide(self, states):
        return states[:, 0] > self.t

    __call__ = decide


@pytest.fixture
def stand_in(monkeypatch):
    seen = []

    def train_ppo(table, cfg):
        seen.append((len(table), cfg.alpha_final))
        return Gate({0.1: -0.2, 0.3: 0.6, 3.0: 1.5}[cfg.alpha_final]), {}

    for module in (M, A):  # the per-modality stages and the held-out alpha choice (safe.policy.alpha)
        monkeypatch.setattr(module, "train_ppo", train_ppo)
        monkeypatch.setattr(module, "evaluate_policy", lambda net, t: evaluate_actions(t, net.decide(t.states)))
    return seen


def test_each_modality_is_scored_on_its_own_table_with_its_own_baselines(stand_in):
    tables = {"audio": make_synthetic_table(500, seed=1, audio_fraction=0.3, extra_ms=40.0),
              "depth": make_synthetic_table(500, seed=2, audio_fraction=0.6, extra_ms=5.0)}
    out = {name: M.modality_policy(t.subset(range(350)), t.subset(range(350, 500)), alphas=(0.1, 0.3),
                                   distill_epochs=30) for name, t in tables.items()}
    for name, m in out.items():
        test = tables[name].subset(range(350, 500))
        for base, fn in (("never", B.never), ("always", B.always), ("oracle", B.oracle)):
            assert m[base]["use_rate"] == pytest.approx(evaluate_actions(test, fn(test))["use_rate"])
            assert m[base]["accuracy"] == pytest.approx(evaluate_actions(test, fn(test))["accuracy"])
        assert m["policy"] == M._keep(evaluate_actions(test, Gate(-0.2 if m["alpha"] == 0.1 else 0.6).decide(test.states)))
        assert m["distill_agreement"] >= 0.9  # Stage C copies the per-modality decision
        assert [s["alpha"] for s in m["alpha_sweep"]] == [0.1, 0.3]
    assert out["audio"]["oracle"]["use_rate"] < out["depth"]["oracle"]["use_rate"]
    assert (350, out["depth"]["alpha"]) in stand_in  # the deployed policy is retrained on the whole train table
    rows = {r["modality"]: r for r in M.modality_rows(out)}
    assert set(rows) == {"audio", "depth"}
    for name, r in rows.items():
        assert r["policy_use_rate"] == out[name]["policy"]["use_rate"]
        assert r["use_rate_gap_to_oracle"] == pytest.approx(r["policy_use_rate"] - r["oracle_use_rate"])
        assert r["accuracy_gap_to_always"] == pytest.approx(r["policy_accuracy"] - r["always_accuracy"])


def test_alpha_is_the_cheapest_within_the_tolerance_on_held_out_training_rows(stand_in):
    """Rows above 0.6 need the modality, rows in (-0.2, 0.6] are right without it: alpha 0.3 (t = 0.6) uses it
    less at no loss and is chosen; alpha 3.0 (t = 1.5) skips rows that need it and is refused."""
    t = make_synthetic_table(400, seed=3, audio_fraction=0.5)
    need = t.states[:, 0] > 0.6
    t.correct_with[:] = 1.0
    t.correct_without[:] = (~need).float()
    t.needs_audio[:], t.is_vl[:] = need, ~need
    alpha, sweep = M.choose_alpha(t, (3.0, 0.1, 0.3), tolerance=0.01)
    assert alpha == 0.3 and [s["alpha"] for s in sweep] == [0.1, 0.3, 3.0]
    assert all(len_ < 400 for len_, _ in stand_in)  # fitted on the training part only
    by = {s["alpha"]: s for s in sweep}
    assert by[3.0]["val_accuracy"] < by[3.0]["val_always_accuracy"] - 0.01
    assert by[0.3]["val_use_rate"] < by[0.1]["val_use_rate"]
    assert M.choose_alpha(t, (3.0,), tolerance=0.01)[0] == 3.0  # none within: the smallest alpha given
