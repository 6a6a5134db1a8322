"""The go / no-go gates stop the run: Stage 1 (verification) before Stage A, Stage 2 (audio gain >= 3 points with
VL loss < 0.5 points) before Stage B; the command exits non-zero naming the gate, and
--continue-on-gate-failure goes on anyway."""
import json
from pathlib import Path

import pytest

from safe.cli import main
from safe.evaluation.gates import GateFailed, require, stage1_gate, stage2_gate
from safe.runs import RunDir, StageResult

PASSING_A = {"audio_accuracy": 0.60, "audio_accuracy_base": 0.20, "vl_accuracy_base": 0.90,
             "vl_accuracy_gate_open": 0.899}


def test_stage2_gate_reads_gain_and_vl_loss():
    assert stage2_gate(PASSING_A)["passed"]
    assert not stage2_gate({**PASSING_A, "audio_accuracy": 0.22})["passed"]  # 2 points of gain
    assert stage2_gate({**PASSING_A, "audio_accuracy": 0.23})["passed"]  # exactly 3 points
    lost = stage2_gate({**PASSING_A, "vl_accuracy_gate_open": 0.895})  # 0.5 points lost: not < 0.5
    assert not lost["passed"] and "VL loss 0.50 points" in lost["measured"]
    with pytest.raises(GateFailed, match="Stage 2 gate.*--continue-on-gate-failure"):
        require(lost, continue_anyway=False)
    assert require(lost, continue_anyway=True) is False


def test_stage1_gate_needs_every_pair_passed():
    ok = {"passed": True, "models": {"a x b": {"passed": True, "checks": [{}, {}]}}}
    assert stage1_gate(ok)["passed"] and "2 checks" in stage1_gate(ok)["measured"]
    bad = {"passed": False, "models": {**ok["models"], "c x d": {"passed": False, "checks": [{}]}}}
    assert not stage1_gate(bad)["passed"] and "c x d" in stage1_gate(bad)["measured"]
    assert not stage1_gate(None)["passed"]


def test_policy_train_stops_at_the_stage2_gate(tmp_path, capsys):
    run = RunDir(tmp_path / "run")
    run.record("stage_a", {**PASSING_A, "audio_accuracy": 0.21})
    assert main(["policy", "train", "--run-dir", str(run.path)]) == 2
    err = capsys.readouterr().err
    assert "Stage 2 gate: audio gain with VL retained failed" in err and "audio gain +1.0 points" in err
    gates = run.metrics()["gates"]
    assert gates["Stage 2 gate: audio gain with VL retained"]["passed"] is False
    # with the flag the stage goes on (here to the missing checkpoint, a different error)
    assert main(["policy", "train", "--run-dir", str(run.path), "--continue-on-gate-failure"]) == 2
    err = capsys.readouterr().err
    assert "Stage 2 gate" not in err and "safe train" in err
    assert run.metrics()["gates"]["Stage 2 gate: audio gain with VL retained"]["continued_anyway"] is True


class _Done(StageResult):
    path = Path(".")


def _stub_demo(monkeypatch, tmp_path, tiny_builtin, verify_passed: bool, reached: list):
    """The demo's stages stubbed, except the Stage A and policy stages' own gate checks."""
    bench, base = tiny_builtin
    monkeypatch.setenv("SAFE_CACHE", str(tmp_path / "cache"))

    class Bench(_Done):
        path = Path(bench)

    class Base(_Done):
        path = Path(base)

    def verify(cfg):
        RunDir(cfg.run_dir).record("verify", {"passed": verify_passed,
                                              "models": {"pair": {"passed": verify_passed, "checks": [{}]}}})
        return _Done()

    def run_stage_a(*args, **kwargs):
        reached.append("stage_a")
        raise RuntimeError("Stage A reached")

    monkeypatch.setattr("safe.stages.demo.synth", lambda cfg: Bench())
    monkeypatch.setattr("safe.stages.demo.build_base", lambda cfg: Base())
    monkeypatch.setattr("safe.stages.demo.verify", verify)
    monkeypatch.setattr("safe.stages.stage_a.run_stage_a", run_stage_a)


def test_demo_stops_before_stage_a_when_verification_fails(monkeypatch, tmp_path, tiny_builtin, capsys):
    reached: list = []
    _stub_demo(monkeypatch, tmp_path, tiny_builtin, verify_passed=False, reached=reached)
    run = tmp_path / "run"
    assert main(["demo", "--run-dir", str(run)]) == 1
    assert reached == []
    out = capsys.readouterr().out
    assert "demo stopped" in out and "Stage 1 gate: safety verification" in out
    assert json.loads((run / "metrics.json").read_text())["timing"]["stopped_at_gate"].startswith("Stage 1 gate")
    assert main(["demo", "--run-dir", str(run), "--continue-on-gate-failure"]) == 1  # the stub's error
    assert "Stage A reached" in capsys.readouterr().err and reached == ["stage_a"]  # the flag went on to Stage A


def test_demo_stops_before_stage_b_when_stage_a_misses_the_gate(monkeypatch, tmp_path, tiny_builtin, capsys):
    reached: list = []
    _stub_demo(monkeypatch, tmp_path, tiny_builtin, verify_passed=True, reached=reached)

    def train(cfg):  # Stage A "ran": it recorded figures that miss the Stage 2 gate
        RunDir(cfg.run_dir).record("stage_a", {**PASSING_A, "vl_accuracy_gate_open": 0.80})
        return _Done()

    def policy(cfg):
        reached.append("policy")
        return _Done()

    monkeypatch.setattr("safe.stages.demo.train", train)
    monkeypatch.setattr("safe.policy.stage.run_policy_stage", policy)
    run = tmp_path / "run"
    assert main(["demo", "--run-dir", str(run)]) == 1
    assert reached == [] and "Stage 2 gate: audio gain with VL retained" in capsys.readouterr().out
