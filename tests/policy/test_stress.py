"""The retention floor binding: on a table where audio hurts VL rows and the state cannot tell them from
audio rows, Stage B's dual ascent raises lambda and holds VL accuracy at the floor; lambda = 0 does not."""
from __future__ import annotations

import pytest
import torch

from safe.policy.ppo import PPOConfig
from safe.policy.stress import floor_binding, harmful_audio_table
from safe.policy.table import make_synthetic_table

torch.set_num_threads(1)


def test_harmful_audio_table_hurts_only_vl_rows_and_hides_the_row_kind():
    t = make_synthetic_table(2000, 4, seed=0)
    s = harmful_audio_table(t, harm=0.25, seed=1)
    assert torch.equal(s.correct_without, t.correct_without) and torch.equal(s.is_vl, t.is_vl)
    assert torch.equal(s.correct_with[t.needs_audio], t.correct_with[t.needs_audio])  # audio rows untouched
    hurt = t.is_vl & (s.correct_with < t.correct_with)
    assert 0.15 < float(hurt.sum()) / float(t.is_vl.sum()) < 0.25   # a quarter of the VL rows, of those right
    assert float(s.correct_with[t.is_vl].mean()) < float(t.correct_with[t.is_vl].mean())
    assert s.state_dim == 1 and not bool(s.states.any())              # blank: no row kind to see
    assert torch.equal(harmful_audio_table(t, 0.25, 1).correct_with, s.correct_with)      # deterministic
    with pytest.raises(ValueError, match="harm"):
        harmful_audio_table(t, harm=1.5)


def test_dual_ascent_holds_the_floor_that_lambda_zero_breaks():
    """Audio fixes every audio row (half the rows) and breaks half the right VL answers; with audio free and
    the row kind hidden, the reward alone says 'always audio' (+0.5 on audio rows, -0.2 on VL rows). The dual
    must hold VL accuracy at base - tau on held-out rows; lambda frozen at 0 (dual_lr 0) must lose it."""
    train, test = make_synthetic_table(1000, 4, seed=0), make_synthetic_table(1000, 4, seed=3)
    cfg = PPOConfig(steps=60, batch_size=128, epochs=2, seed=0)
    out = floor_binding(train, test, cfg, harm=0.5)
    free, tied = out["without_dual"], out["with_dual"]
    assert free["lambda_max"] == 0.0 and free["use_rate"] > 0.9          # lambda = 0: audio everywhere ...
    assert free["vl_accuracy"] < out["vl_floor"] - 0.1 and out["broken_without"]  # ... and the floor broken
    assert tied["lambda_max"] > 0.5 and len(tied["lambda"]) == 60         # lambda rose
    assert tied["vl_accuracy"] >= out["vl_floor"] and out["held"]         # and the floor held
    assert tied["use_rate"] < 0.1
