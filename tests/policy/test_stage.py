"""Stages B and C end to end on the tiny built-in benchmark and models (seconds)."""
import json

import pytest
import torch

from safe.bench.files import BuiltinSource
from safe.cli import main
from safe.inference.loading import load_frozen, load_trained
from safe.models.safe_model import SAFEModel
from safe.policy.stage import PolicyStageConfig, run_policy_stage

torch.set_num_threads(1)


def test_policy_stage_reports_every_figure_and_counts_encoder_rows(untrained_ckpt, tmp_path):
    bench, base, ckpt = untrained_ckpt
    model, fmt, frontend = load_trained(base, ckpt)
    cfg = PolicyStageConfig(alphas=[0.0, 0.3], alpha=0.0, steps=4, seeds=2, train_rows=40, cost_batch=8,
                            distill_epochs=3, latency_batches=[1, 8], state="cascade")
    m, art = run_policy_stage(model, fmt, frontend, BuiltinSource(bench), cfg, out_dir=tmp_path)
    assert m["state"]["confidence_dim"] == 3  # the proposal's state: the base's confidence included
    assert m["rows"]["test"] == 60 and m["rows"]["train"] == 80
    for key in ("never", "always", "oracle", "random", "confidence", "entropy", "distilled", "no_constraint"):
        assert 0.0 <= m["baselines"][key]["accuracy"] <= 1.0
    assert m["baselines"]["never"]["use_rate"] == 0.0 and m["baselines"]["always"]["use_rate"] == 1.0
    ppo = [p for p in m["pareto"] if p["kind"] == "ppo"]
    assert [p["alpha"] for p in ppo] == [0.0, 0.3] and all("beats_thresholds" in p for p in ppo)
    # the deployed gate: the encoder ran for exactly the rows that used audio, and its accuracy is
    # the table's prediction for the distilled gate (same answers, measured instead of looked up)
    c = m["deployed"]
    assert "cascade" not in m  # the old name of this key; only readers of old runs still know it
    assert c["encoder_rows"] == c["rows_using_audio"]
    assert c["accuracy"] == pytest.approx(m["baselines"]["distilled"]["accuracy"], abs=1e-6)
    if m["skip_all"]["rows"]:
        assert m["skip_all"]["encoder_rows"] == 0 and m["skip_all"]["rows_using_audio"] == 0
    assert set(m["latency_by_batch"]) == {"1", "8"}
    g = m["oracle_gap"]  # the deployed alpha's decisions, split by kind of row
    assert g["gap_points"] == pytest.approx(100 * (m["test"]["use_rate"] - m["test"]["oracle_use_rate"]))
    assert len(m["seeds"]["accuracy"]["values"]) == 2
    assert (tmp_path / "table_test.safetensors").is_file() and (tmp_path / "ppo_policy.safetensors").is_file()
    json.dumps(m)  # everything recorded is plain JSON


def test_policy_stage_with_the_early_state(untrained_ckpt):
    """The early state: no confidence in the state, costs without a base pass, the deployed gate decides
    before the language model and still encodes exactly the rows it picks."""
    bench, base, ckpt = untrained_ckpt
    model, fmt, frontend = load_trained(base, ckpt)
    cfg = PolicyStageConfig(alphas=[0.0], alpha=0.0, steps=4, seeds=1, train_rows=40, cost_batch=8,
                            distill_epochs=3, latency_batches=[8], state="early")
    m, _ = run_policy_stage(model, fmt, frontend, BuiltinSource(bench), cfg)
    assert m["state"]["confidence_dim"] == 0 and m["state_dim"] == m["state"]["question_dim"] * 2 + 34
    for costs in m["costs_ms_per_query"].values():
        extra = costs["preview"] + costs["policy"]  # the probe is inside early_skip / early_audio, timed as run
        assert costs["without_audio"] == pytest.approx(costs["early_skip"] + extra)
        # the early audio price, at least the encoder's own time above skipping
        assert costs["with_audio"] == pytest.approx(max(costs["early_audio"] + extra,
                                                        costs["without_audio"] + costs["encode"]))
        assert costs["encode"] > 0 and costs["with_audio"] >= costs["without_audio"] + costs["encode"]
        assert costs["state"] > 0 and costs["early_skip"] > 0 and costs["early_audio"] > 0
        assert costs["ms_per_token_base"] >= 0 and costs["ms_per_token_audio"] >= 0  # the per-row model's slope
        assert 1 <= costs["tokens_base"] <= 6 and 1 <= costs["tokens_audio"] <= 6
    rc = m["row_costs"]["test"]  # tokens per row: generated (>= 1) plus the k = 4 audio tokens with audio
    assert rc["tokens_with"] >= 5 and 1 <= rc["tokens_without"] <= 6 and rc["runtime_ms_extra"] >= 0
    stress = m["floor_stress"]
    assert stress["harm"] == 0.25 and len(stress["with_dual"]["lambda"]) == 4
    assert stress["without_dual"]["lambda_max"] == 0.0
    c = m["deployed"]
    assert c["encoder_rows"] == c["rows_using_audio"]
    assert c["accuracy"] == pytest.approx(m["baselines"]["distilled"]["accuracy"], abs=1e-6)
    if m["skip_all"]["rows"]:
        assert m["skip_all"]["encoder_rows"] == 0 and m["skip_all"]["rows_using_audio"] == 0
    with pytest.raises(ValueError, match="state must be one of"):
        PolicyStageConfig(state="late")


def test_the_deployed_alpha_can_be_chosen_on_held_out_training_rows(untrained_ckpt, monkeypatch):
    """choose_alpha: the deployed policy, its seeds and the saved teacher follow the alpha chosen on the training
    table's held-out quarter (here forced to 0.3 while alpha says 0.0); the test table plays no part."""
    import safe.policy.alpha as mod

    bench, base, ckpt = untrained_ckpt
    model, fmt, frontend = load_trained(base, ckpt)
    seen = []

    def chosen(table, alphas, **kw):
        seen.append((len(table), list(alphas), kw["tolerance"]))
        return 0.3, [{"alpha": 0.3, "val_accuracy": 0.5}]

    monkeypatch.setattr(mod, "choose_alpha", chosen)
    cfg = PolicyStageConfig(alphas=[0.0, 0.3], alpha=0.0, steps=4, seeds=1, train_rows=40, cost_batch=8,
                            distill_epochs=3, latency_batches=[8], floor_stress=0.0, choose_alpha=True,
                            alpha_tolerance=0.02)
    m, _ = run_policy_stage(model, fmt, frontend, BuiltinSource(bench), cfg)
    assert seen == [(m["rows"]["train"], [0.0, 0.3], 0.02)]
    assert m["alpha"] == 0.3 and m["test"] == m["runs"]["0.3"]["test"]
    assert m["alpha_choice"]["chosen_on"].startswith("a held-out quarter") and m["alpha_choice"]["sweep"]
    with pytest.raises(ValueError, match="alpha_tolerance must be a fraction"):
        PolicyStageConfig(alpha_tolerance=2)


def test_policy_cli_train_then_distill(untrained_ckpt, tmp_path, capsys):
    bench, base, ckpt = untrained_ckpt
    args = ["--run-dir", str(tmp_path), "--data", str(bench), "--base", str(base), "--checkpoint", str(ckpt),
            "--alphas", "0,0.5", "--alpha", "0", "--steps", "3", "--seeds", "1", "--train-rows", "20",
            "--distill-epochs", "2"]
    assert main(["policy", "train", *args]) == 0
    out = capsys.readouterr().out
    assert "Pareto table" in out and "oracle" in out
    saved = SAFEModel.from_pretrained(tmp_path / "checkpoints" / "policy", *load_frozen(base)[:2])
    assert saved.policy is not None and saved.policy.kind == "mlp"
    assert saved.policy.spec.early and "early state" in out  # the default state, and the printout says so
    assert main(["policy", "distill", "--run-dir", str(tmp_path), "--distill-epochs", "2"]) == 0
    assert "agreement with PPO" in capsys.readouterr().out
    # the demo's last step on the same run: evaluation, stage gates and the report
    assert main(["eval", "--run-dir", str(tmp_path), "--data", str(bench), "--base", str(base)]) == 0
    out = capsys.readouterr().out
    assert "FLOPs per query (audio encoder included;" in out and "Stage gates" in out
    assert (tmp_path / "report.html").is_file()
    assert main(["policy", "train", *args[:-2], "--alpha", "0.2"]) == 2  # not one of --alphas: a message
    assert "alpha 0.2 must be one of" in capsys.readouterr().err


@pytest.mark.parametrize("flags, state", [([], "early"), (["--state", "cascade"], "cascade")])
def test_demo_hands_its_state_to_the_policy_stage(monkeypatch, tmp_path, flags, state):
    """`safe demo --state` reaches the policy stage (every stage stubbed: only the wiring is tested)."""
    from pathlib import Path

    from safe.runs import StageResult

    seen = {}
    monkeypatch.setenv("SAFE_CACHE", str(tmp_path / "cache"))

    class Done(StageResult):
        path = Path(tmp_path)

    # safe.stages.demo binds the stage functions when imported: stub them there
    for target in ("synth", "build_base", "verify", "train", "evaluate", "report"):
        monkeypatch.setattr(f"safe.stages.demo.{target}", lambda cfg: Done())

    def policy(cfg):
        seen["policy"] = cfg
        return Done()

    monkeypatch.setattr("safe.stages.demo.train_policy", policy)
    assert main(["demo", "--run-dir", str(tmp_path / "run"), *flags]) == 0
    assert seen["policy"].policy.state == state
