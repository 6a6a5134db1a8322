"""Tests for safe.policy.baselines and safe.policy.table (the outcome table and evaluate_actions),
on a six-row table whose numbers are worked out by hand."""
from __future__ import annotations

import math

import pytest
import torch

from safe.policy.baselines import (
    always,
    confidence_threshold,
    entropy_threshold,
    never,
    oracle,
    pareto_front,
    random_at_rate,
    threshold_for_rate,
    threshold_sweep,
)
from safe.policy.table import OutcomeTable, evaluate_actions, make_synthetic_table, oracle_gap

torch.set_num_threads(1)

# row: correct_with, correct_without, needs_audio, is_vl, cost_without, cost_with, confidence, entropy
ROWS = [
    (1, 0, 1, 0, 100.0, 150.0, 0.2, 0.9),   # audio question, audio fixes it
    (1, 1, 1, 0, 100.0, 140.0, 0.9, 0.3),   # audio question the image already answers
    (0, 1, 0, 1, 100.0, 120.0, 0.8, 0.4),   # VL question that audio breaks
    (1, 1, 0, 1, 200.0, 260.0, 0.7, 0.5),   # VL question, audio harmless
    (0, 0, 0, 1, 100.0, 130.0, 0.3, 0.8),   # VL question wrong either way
    (1, 0, 0, 0, 100.0, 200.0, 0.1, 0.7),   # neither flag, audio helps anyway
]


def _hand_table(states=None) -> OutcomeTable:
    cols = list(zip(*ROWS))
    return OutcomeTable(states=torch.arange(12, dtype=torch.float32).reshape(6, 2) if states is None else states,
                        correct_with=cols[0], correct_without=cols[1], needs_audio=cols[2], is_vl=cols[3],
                        cost_without_ms=cols[4], cost_with_ms=cols[5], confidence=cols[6], entropy=cols[7])


# ------------------------------------------------------------------------------------------
# table
# ------------------------------------------------------------------------------------------
def test_table_converts_and_validates():
    t = _hand_table()
    assert len(t) == 6 and t.state_dim == 2
    assert t.correct_with.dtype == torch.float32 and t.is_vl.dtype == torch.bool and t.cost_with_ms.dtype == torch.float32
    good = t.to_dict()
    bad_cases = [
        (dict(correct_with=[1, 0, 1]), "correct_with"),
        (dict(is_vl=[0, 1, 2, 0, 0, 0]), "is_vl"),
        (dict(correct_without=[0, 1, 1.5, 0, 0, 0]), "correct_without"),
        (dict(cost_with_ms=[-1.0, 1, 1, 1, 1, 1]), "cost_with_ms"),
        (dict(confidence=[math.nan, 1, 1, 1, 1, 1]), "confidence"),
        (dict(states=torch.zeros(6)), "states"),
        (dict(states=torch.zeros(0, 2)), "states"),
        (dict(entropy=torch.zeros(6, 1)), "entropy"),
        (dict(needs_audio=[1, 1, 1, 0, 0, 0]), "needs_audio and is_vl"),
    ]
    for change, name in bad_cases:
        with pytest.raises(ValueError, match=name):
            OutcomeTable(**{**good, **change})


def test_table_subset_and_roundtrip(tmp_path):
    t = _hand_table()
    s = t.subset([4, 0])
    assert s.states.tolist() == [[8.0, 9.0], [0.0, 1.0]]
    assert s.correct_with.tolist() == [0.0, 1.0]
    m = t.subset(t.is_vl)
    assert len(m) == 3 and bool(m.is_vl.all())
    with pytest.raises(ValueError, match="idx"):
        t.subset([6])
    with pytest.raises(ValueError, match="idx"):
        t.subset(torch.tensor([True, False]))
    path = t.save(tmp_path / "sub" / "table.safetensors")
    back = OutcomeTable.load(path)
    for k, v in t.to_dict().items():
        assert torch.equal(getattr(back, k), v), k
    from safetensors.torch import save_file
    save_file({"states": torch.zeros(2, 2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not an OutcomeTable"):
        OutcomeTable.load(tmp_path / "other.safetensors")


def test_evaluate_actions_by_hand():
    t = _hand_table()
    ev = evaluate_actions(t, torch.tensor([1, 0, 1, 0, 1, 0], dtype=torch.bool))
    # answers taken: with, without, with, without, with, without -> [1, 1, 0, 1, 0, 0]
    assert ev["accuracy"] == pytest.approx(3 / 6)
    assert ev["vl_accuracy"] == pytest.approx(1 / 3)          # rows 2, 3, 4 -> [0, 1, 0]
    assert ev["audio_accuracy"] == pytest.approx(1.0)         # rows 0, 1 -> [1, 1]
    assert ev["use_rate"] == pytest.approx(0.5)
    assert ev["mean_latency_ms"] == pytest.approx(800 / 6)    # 150 + 100 + 120 + 200 + 130 + 100
    assert ev["latency_ratio_to_base"] == pytest.approx(800 / 700)
    assert ev["false_positive_rate"] == pytest.approx(2 / 3)  # audio on VL rows 2 and 4
    # oracle: audio on rows 0 and 5 -> answers [1, 1, 1, 1, 0, 1]
    assert ev["oracle_accuracy"] == pytest.approx(5 / 6)
    assert ev["oracle_vl_accuracy"] == pytest.approx(2 / 3)
    assert ev["oracle_use_rate"] == pytest.approx(2 / 6)
    assert ev["oracle_mean_latency_ms"] == pytest.approx(850 / 6)
    assert ev["oracle_false_positive_rate"] == 0.0
    assert ev["base_accuracy"] == pytest.approx(0.5)
    assert ev["base_vl_accuracy"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="use_audio"):
        evaluate_actions(t, [1, 0])


def test_oracle_gap_by_hand():
    rows = ROWS + [(0, 0, 1, 0, 100.0, 150.0, 0.5, 0.5)]  # an audio question audio does not fix
    cols = list(zip(*rows))
    t = OutcomeTable(states=torch.zeros(7, 1), correct_with=cols[0], correct_without=cols[1], needs_audio=cols[2],
                     is_vl=cols[3], cost_without_ms=cols[4], cost_with_ms=cols[5], confidence=cols[6],
                     entropy=cols[7])
    use = torch.tensor([0, 1, 1, 1, 0, 0, 1], dtype=torch.bool)
    g = oracle_gap(t, use)
    # oracle uses rows 0 and 5; the decisions add row 1 (base right), rows 2-3 (VL), row 6 (no help)
    # and miss rows 0 and 5 (each worth 1 point of score)
    assert (g["vl"], g["base_as_good"], g["audio_no_help"], g["missed"]) == (2, 1, 1, 2)
    assert g["missed_score"] == pytest.approx(2.0)
    assert g["gap_points"] == pytest.approx(100 * (4 - 2) / 7)
    assert g["gap_points"] == pytest.approx(g["vl_points"] + g["base_as_good_points"] + g["audio_no_help_points"]
                                            - g["missed_points"])
    ev = evaluate_actions(t, use)
    assert g["gap_points"] == pytest.approx(100 * (ev["use_rate"] - ev["oracle_use_rate"]))
    assert oracle_gap(t, t.correct_with > t.correct_without)["gap_points"] == 0.0
    # captions score fractions: F1 0.3 without audio and 0.2 with it is a row the base does as well on;
    # a row marked neither VL nor audio is counted with the audio rows
    cap = OutcomeTable(states=torch.zeros(3, 1), correct_with=[0.2, 0.5, 1.0], correct_without=[0.3, 0.5, 1.0],
                       needs_audio=[1, 1, 0], is_vl=[0, 0, 0], cost_without_ms=[1.0] * 3, cost_with_ms=[2.0] * 3,
                       confidence=[0.5] * 3, entropy=[0.5] * 3)
    g = oracle_gap(cap, [True, True, True])
    assert (g["vl"], g["base_as_good"], g["audio_no_help"], g["missed"]) == (0, 3, 0, 0)
    assert g["gap_points"] == pytest.approx(100.0)


def test_evaluate_actions_without_vl_rows_gives_nan():
    t = _hand_table().subset([0, 1, 5])
    ev = evaluate_actions(t, [1, 1, 1])
    assert math.isnan(ev["vl_accuracy"]) and math.isnan(ev["false_positive_rate"])
    assert ev["accuracy"] == 1.0


# ------------------------------------------------------------------------------------------
# baselines
# ------------------------------------------------------------------------------------------
def test_baselines_by_hand():
    t = _hand_table()
    assert never(t).tolist() == [False] * 6
    assert always(t).tolist() == [True] * 6
    assert oracle(t).tolist() == [True, False, False, False, False, True]
    assert confidence_threshold(t, 0.5).tolist() == [True, False, False, False, True, True]
    assert confidence_threshold(t, 0.3).tolist() == [True, False, False, False, False, True]  # strict <
    assert entropy_threshold(t, 0.6).tolist() == [True, False, False, False, True, True]
    assert entropy_threshold(t, 0.8).tolist() == [True, False, False, False, False, False]   # strict >
    assert evaluate_actions(t, always(t))["accuracy"] == pytest.approx(4 / 6)
    assert evaluate_actions(t, never(t))["accuracy"] == pytest.approx(3 / 6)


def test_oracle_is_the_upper_bound():
    t = make_synthetic_table(400, 3, seed=0)
    best = evaluate_actions(t, oracle(t))["accuracy"]
    assert best == pytest.approx(float(torch.maximum(t.correct_with, t.correct_without).mean()))
    for use in (never(t), always(t), random_at_rate(t, 0.3, seed=1), confidence_threshold(t, 0.5)):
        assert evaluate_actions(t, use)["accuracy"] <= best + 1e-12


def test_random_at_rate_is_exact_and_seeded():
    t = make_synthetic_table(101, 2, seed=0)
    a = random_at_rate(t, 0.3, seed=7)
    assert int(a.sum()) == 30                                  # round(30.3)
    assert torch.equal(a, random_at_rate(t, 0.3, seed=7))
    assert not torch.equal(a, random_at_rate(t, 0.3, seed=8))
    assert int(random_at_rate(t, 0.0).sum()) == 0 and int(random_at_rate(t, 1.0).sum()) == 101
    with pytest.raises(ValueError, match="rate"):
        random_at_rate(t, 1.2)


def test_threshold_for_rate():
    t = _hand_table()
    # confidences sorted [0.1, 0.2, 0.3, 0.7, 0.8, 0.9]: rate 0.5 -> cut at 0.7 -> rows 0, 4, 5
    th = threshold_for_rate(t, "confidence", 0.5)
    assert confidence_threshold(t, th).tolist() == [True, False, False, False, True, True]
    # entropies sorted desc [0.9, 0.8, 0.7, 0.5, 0.4, 0.3]: rate 1/3 -> cut at 0.7 -> rows 0, 4
    th = threshold_for_rate(t, "entropy", 1 / 3)
    assert entropy_threshold(t, th).tolist() == [True, False, False, False, True, False]
    for kind, fn in (("confidence", confidence_threshold), ("entropy", entropy_threshold)):
        assert int(fn(t, threshold_for_rate(t, kind, 0.0)).sum()) == 0
        assert int(fn(t, threshold_for_rate(t, kind, 1.0)).sum()) == 6
    with pytest.raises(ValueError, match="kind"):
        threshold_for_rate(t, "margin", 0.5)


def test_threshold_sweep():
    t = _hand_table()
    rows = threshold_sweep(t, "confidence", [0.0, 0.5, 1.0])
    assert [r["threshold"] for r in rows] == [0.0, 0.5, 1.0]
    assert [r["use_rate"] for r in rows] == pytest.approx([0.0, 0.5, 1.0])
    assert rows[1]["accuracy"] == pytest.approx(evaluate_actions(t, confidence_threshold(t, 0.5))["accuracy"])
    assert all(r["kind"] == "confidence" for r in rows)
    rnd = threshold_sweep(t, "random", [0.5], seed=3)
    assert rnd[0]["use_rate"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="kind"):
        threshold_sweep(t, "margin", [0.5])
    with pytest.raises(ValueError, match="thresholds"):
        threshold_sweep(t, "entropy", [])


def test_pareto_front_by_hand():
    pts = [
        {"name": "a", "mean_latency_ms": 1.0, "accuracy": 0.5},
        {"name": "b", "mean_latency_ms": 2.0, "accuracy": 0.7},
        {"name": "c", "mean_latency_ms": 2.0, "accuracy": 0.6},   # same x as b, lower y
        {"name": "d", "mean_latency_ms": 3.0, "accuracy": 0.7},   # slower than b, no better
        {"name": "e", "mean_latency_ms": 0.5, "accuracy": 0.4},
        {"name": "f", "mean_latency_ms": 4.0, "accuracy": 0.9},
        {"name": "g", "mean_latency_ms": 2.0, "accuracy": 0.7},   # duplicate of b
        {"name": "h", "mean_latency_ms": math.nan, "accuracy": 1.0},
    ]
    assert [p["name"] for p in pareto_front(pts)] == ["e", "a", "b", "f"]
    assert [p["name"] for p in pareto_front(pts, x="accuracy", y="mean_latency_ms")] == ["e", "a", "c", "d", "f"]
    assert pareto_front([]) == []
    with pytest.raises(KeyError, match="points\\[0\\]"):
        pareto_front([{"accuracy": 1.0}])
