"""The Stage A resume state is loaded without unpickling: tensors and plain containers only."""
import os

import pytest
import torch

from safe.bench.files import BuiltinSource
from safe.stages.stage_a import run_stage_a
from safe.training.config import load_stage_a_config
from safe.training.stage_a import STATE_FILE, ResumeMismatch, UnsafeCheckpoint, load_resume_state

FAST = ["steps=6", "warmup_steps=1", "batch_size=8", "retention_every=3", "retention_examples=8",
        "checkpoint_every=3", "lr_gates=0.05", "safe.fusion_layers=[0, 1]", "safe.num_audio_tokens=4"]


class _Payload:
    """Unpickling this calls os.makedirs(marker): code run by merely loading the file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def _killed_run(tiny_builtin, run_dir):
    bench, base = tiny_builtin
    bench = BuiltinSource(bench)
    cfg = load_stage_a_config(None, FAST)
    assert run_stage_a(bench, base, cfg, run_dir, progress=False, stop_after=4) == {"interrupted": True, "step": 4}
    return bench, base, cfg, run_dir / "checkpoints" / "step_000003" / STATE_FILE


def test_saved_state_loads_with_weights_only(tiny_builtin, tmp_path):
    *_, state_file = _killed_run(tiny_builtin, tmp_path)
    state = torch.load(state_file, weights_only=True)  # raises if anything in it needs unpickling
    assert state["step"] == 3 and isinstance(state["rng"]["numpy"]["keys"], torch.Tensor)
    assert load_resume_state(state_file)["step"] == 3


def test_a_pickled_payload_in_the_state_is_refused_and_never_runs(tiny_builtin, tmp_path):
    bench, base, cfg, state_file = _killed_run(tiny_builtin, tmp_path / "run")
    marker = tmp_path / "payload-ran"
    state = torch.load(state_file, weights_only=True)
    state["history"] = _Payload(marker)
    torch.save(state, state_file)
    # The file really is harmful: an unpickling load runs the payload (so the refusal below is the guard).
    torch.load(state_file, weights_only=False)
    assert marker.is_dir()
    marker.rmdir()
    with pytest.raises(UnsafeCheckpoint, match=r"trainer_state\.pt holds objects other than tensors") as err:
        run_stage_a(bench, base, cfg, tmp_path / "run", progress=False, max_eval=4)
    assert str(state_file) in str(err.value) and "os.makedirs" in str(err.value) and "--fresh" in str(err.value)
    assert isinstance(err.value, ResumeMismatch) and isinstance(err.value, ValueError)
    assert not marker.exists()
    # --fresh starts over without touching the refused file's content
    m = run_stage_a(bench, base, cfg, tmp_path / "run", progress=False, fresh=True, max_eval=4)
    assert m["steps"] == 6 and not marker.exists()


def test_rng_states_round_trip_through_a_weights_only_file(tmp_path):
    import random

    import numpy as np

    from safe.training.stage_a import _rng_state, _set_rng_state

    torch.manual_seed(3), np.random.seed(4), random.seed(5)
    np.random.standard_normal()  # leaves a cached Gaussian in numpy's state
    torch.save({"rng": _rng_state()}, tmp_path / "s.pt")
    expected = (torch.rand(4), np.random.standard_normal(3), [random.random() for _ in range(3)])
    torch.manual_seed(0), np.random.seed(0), random.seed(0)  # move every generator elsewhere
    _set_rng_state(torch.load(tmp_path / "s.pt", weights_only=True)["rng"])
    assert torch.equal(torch.rand(4), expected[0])
    assert np.array_equal(np.random.standard_normal(3), expected[1])
    assert [random.random() for _ in range(3)] == expected[2]
