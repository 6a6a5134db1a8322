"""Tests for safe.validation: the one copy of the argument checks (schedules, PPO, distillation)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from safe.validation import int_arg, real_arg


def test_int_arg_accepts_integers_and_returns_int():
    assert int_arg("steps", 3, 1) == 3
    v = int_arg("seed", np.int64(0), 0)
    assert v == 0 and type(v) is int
    assert int_arg("offset", -5) == -5  # no minimum


@pytest.mark.parametrize("value,minimum,message", [
    (0, 1, "steps must be an integer >= 1, got 0"),
    (1.5, 1, "steps must be an integer >= 1, got 1.5"),
    (True, 0, "steps must be an integer >= 0, got True"),
    ("3", 1, "steps must be an integer >= 1, got '3'"),
    (2.0, None, "steps must be an integer, got 2.0"),
])
def test_int_arg_errors_name_the_field_and_value(value, minimum, message):
    with pytest.raises(ValueError) as e:
        int_arg("steps", value, minimum)
    assert str(e.value) == message


def test_real_arg_accepts_numbers_in_range():
    assert real_arg("lr", 3, 0.0, lo_open=True) == 3.0
    assert type(real_arg("lr", np.float32(0.5), 0.0, 1.0)) is float
    assert real_arg("x", 0.0, 0.0, 1.0) == 0.0 and real_arg("x", 1.0, 0.0, 1.0) == 1.0  # closed ends
    assert real_arg("x", -7.0) == -7.0  # unbounded


@pytest.mark.parametrize("kwargs,value,message", [
    ({"lo": 0.0, "lo_open": True}, 0.0, "lr must be > 0.0, got 0.0"),
    ({"lo": 0.0}, -1, "lr must be >= 0.0, got -1"),
    ({"hi": 1.0}, 2.0, "lr must be <= 1.0, got 2.0"),
    ({"hi": 1.0, "hi_open": True}, 1.0, "lr must be < 1.0, got 1.0"),
    ({"lo": 0.0, "hi": 1.0, "lo_open": True, "hi_open": True}, 1.0, "lr must be in (0.0, 1.0), got 1.0"),
    ({"lo": 0.0, "hi": 1.0}, 1.5, "lr must be in [0.0, 1.0], got 1.5"),
    ({}, math.nan, "lr must be a finite number, got nan"),
    ({"lo": 0.0}, math.inf, "lr must be a finite number, got inf"),
    ({}, True, "lr must be a finite number, got True"),
    ({}, "0.1", "lr must be a finite number, got '0.1'"),
])
def test_real_arg_errors_name_the_field_and_value(kwargs, value, message):
    with pytest.raises(ValueError) as e:
        real_arg("lr", value, **kwargs)
    assert str(e.value) == message


def test_the_three_modules_use_the_shared_helpers():
    # One copy: the schedules, PPO and distillation modules no longer define their own.
    import safe.policy.distill as distill
    import safe.policy.ppo as ppo
    import safe.training.schedules as schedules

    for mod in (schedules, ppo, distill):
        assert not hasattr(mod, "_int_arg") and not hasattr(mod, "_real_arg")
        assert mod.int_arg is int_arg and mod.real_arg is real_arg
