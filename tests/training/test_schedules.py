"""Tests for safe.training.schedules, against values worked out by hand."""
from __future__ import annotations

import json
import math

import pytest
import torch

from safe.training.schedules import DualAscent, audio_exposure, cosine_with_warmup, make_lr_lambda


def test_cosine_with_warmup_by_hand():
    # total 10, warmup 2: steps 0, 1 warm up to 1; cosine over steps 2..10
    assert cosine_with_warmup(0, 10, 2) == 0.5
    assert cosine_with_warmup(1, 10, 2) == 1.0
    assert cosine_with_warmup(2, 10, 2) == 1.0
    assert cosine_with_warmup(4, 10, 2) == pytest.approx(0.5 + math.sqrt(2) / 4)   # progress 1/4
    assert cosine_with_warmup(6, 10, 2) == pytest.approx(0.5)                      # progress 1/2
    assert cosine_with_warmup(8, 10, 2) == pytest.approx(0.5 - math.sqrt(2) / 4)   # progress 3/4
    assert cosine_with_warmup(10, 10, 2) == pytest.approx(0.0, abs=1e-15)
    assert cosine_with_warmup(50, 10, 2) == pytest.approx(0.0, abs=1e-15)
    # no warm-up: starts at 1
    assert cosine_with_warmup(0, 4, 0) == 1.0
    assert cosine_with_warmup(2, 4, 0) == pytest.approx(0.5)


def test_cosine_is_in_unit_interval_and_monotone_after_warmup():
    vals = [cosine_with_warmup(s, 100, 10) for s in range(101)]
    assert all(0.0 <= v <= 1.0 for v in vals)
    assert vals[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert all(a >= b for a, b in zip(vals[10:], vals[11:]))


def test_lr_lambda_drives_lambdalr():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, make_lr_lambda(total=10, warmup=2))
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.05, 0.1, 0.1, 0.1 * (0.5 + 0.5 * math.cos(math.pi / 8))])


@pytest.mark.parametrize("kwargs,name", [
    ({"step": -1, "total": 10, "warmup": 2}, "step"),
    ({"step": 0, "total": 0, "warmup": 0}, "total"),
    ({"step": 0, "total": 10, "warmup": 10}, "warmup"),
    ({"step": 0, "total": 10, "warmup": -1}, "warmup"),
    ({"step": 1.5, "total": 10, "warmup": 2}, "step"),
])
def test_cosine_argument_errors(kwargs, name):
    with pytest.raises(ValueError, match=name):
        cosine_with_warmup(**kwargs)
    if name != "step":
        with pytest.raises(ValueError, match=name):
            make_lr_lambda(kwargs["total"], kwargs["warmup"])


def test_audio_exposure_by_hand():
    assert audio_exposure(0, 100) == 0.25
    assert audio_exposure(25, 100) == pytest.approx(0.625)      # half way up the 50-step ramp
    assert audio_exposure(40, 100) == pytest.approx(0.25 + 0.75 * 0.8)
    assert audio_exposure(50, 100) == 1.0
    assert audio_exposure(99, 100) == 1.0
    assert audio_exposure(500, 100) == 1.0
    assert audio_exposure(5, 10, start=0.0, end=0.5, ramp_fraction=1.0) == pytest.approx(0.25)
    assert audio_exposure(0, 10, ramp_fraction=0.0) == 1.0      # no curriculum
    assert audio_exposure(3, 10, start=0.4, end=0.4) == 0.4


@pytest.mark.parametrize("kwargs,name,value", [
    ({"start": -0.1}, "start", "-0.1"),
    ({"start": 0.8, "end": 0.5}, "end", "0.5"),
    ({"end": 1.5}, "end", "1.5"),
    ({"ramp_fraction": 2.0}, "ramp_fraction", "2.0"),
    ({"ramp_fraction": float("nan")}, "ramp_fraction", "nan"),
])
def test_audio_exposure_argument_errors(kwargs, name, value):
    with pytest.raises(ValueError, match=rf"{name}.*{value}"):
        audio_exposure(3, 10, **kwargs)
    with pytest.raises(ValueError, match="total"):
        audio_exposure(3, 0)


def test_dual_ascent_by_hand():
    d = DualAscent(initial=1.0, lr=2.0, floor=0.9)
    assert d.value == 1.0
    assert d.update(0.8) == pytest.approx(1.2)     # 1 + 2 * (0.9 - 0.8)
    assert d.update(0.7) == pytest.approx(1.6)     # + 2 * 0.2
    assert d.update(1.0) == pytest.approx(1.4)     # - 2 * 0.1: relaxes when above the floor
    for _ in range(10):
        d.update(1.0)
    assert d.value == 1.0                           # never below initial (the default min_value)
    assert d.num_updates == 13


def test_dual_ascent_bounds():
    d = DualAscent(initial=0.5, lr=1000.0, floor=0.9, max_value=20.0)
    assert d.update(0.0) == 20.0
    d = DualAscent(initial=0.5, lr=1.0, floor=0.9, min_value=0.0)
    assert d.update(0.9) == 0.5                     # exactly at the floor: unchanged
    assert d.update(1.5) == 0.0                     # 0.5 - 0.6, clipped at min_value 0
    assert d.update(1.0) == 0.0


def test_dual_ascent_state_round_trip_through_json():
    d = DualAscent(initial=1.0, lr=0.5, floor=0.95, max_value=3.0)
    for m in (0.5, 0.6):
        d.update(m)
    state = json.loads(json.dumps(d.state_dict()))
    e = DualAscent(initial=9.0, lr=9.0, floor=0.0, max_value=50.0)
    e.load_state_dict(state)
    assert e.value == d.value and e.num_updates == 2
    assert [e.update(m) for m in (0.9, 0.99, 0.1)] == [d.update(m) for m in (0.9, 0.99, 0.1)]


def test_dual_ascent_argument_errors():
    with pytest.raises(ValueError, match="lr"):
        DualAscent(initial=1.0, lr=-1.0, floor=0.9)
    with pytest.raises(ValueError, match="min_value"):
        DualAscent(initial=1.0, lr=1.0, floor=0.9, min_value=2.0)
    with pytest.raises(ValueError, match="initial"):
        DualAscent(initial=200.0, lr=1.0, floor=0.9)
    with pytest.raises(ValueError, match="measured"):
        DualAscent(initial=1.0, lr=1.0, floor=0.9).update(float("nan"))
    with pytest.raises(ValueError, match="missing"):
        DualAscent(initial=1.0, lr=1.0, floor=0.9).load_state_dict({"value": 1.0})


def _formula(step: int, total: int, warmup: int) -> float:
    """The multiplier written as the docstring states it (kept verbatim from the first version)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / (total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


@pytest.mark.parametrize("total,warmup", [(2000, 25), (4000, 200), (500, 25), (400, 25), (10, 2), (4, 0), (1, 0), (7, 6), (1000, 100), (333, 17)])
def test_cosine_is_bit_identical_to_the_formula_over_a_whole_schedule(total, warmup):
    # Stage A prints the same figures as every earlier version: each multiplier, including steps past the
    # end, equals the formula exactly (==, not approx).
    for step in range(total + 20):
        got = cosine_with_warmup(step, total, warmup)
        assert type(got) is float
        assert got == _formula(step, total, warmup), (step, total, warmup)


def test_lr_lambda_matches_transformers_scheduler_after_warmup():
    # The same LambdaLR learning rates as transformers.get_cosine_schedule_with_warmup from the end
    # of warm-up on (before, ours is one warm-up step ahead by design).
    from transformers import get_cosine_schedule_with_warmup

    def lrs(make):
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([p], lr=0.1)
        sched = make(opt)
        out = []
        for _ in range(60):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    ours = lrs(lambda o: torch.optim.lr_scheduler.LambdaLR(o, make_lr_lambda(50, 5)))
    theirs = lrs(lambda o: get_cosine_schedule_with_warmup(o, 5, 50))
    assert ours[5:51] == theirs[5:51]
    assert ours[:5] == pytest.approx(theirs[1:6])
