"""The Stage A ablation grid: entries differ in exactly their overrides, results resume, summaries are right."""
import json

import pytest

from safe.bench.files import BuiltinSource
from safe.evaluation.stats import mean_ci
from safe.stages.ablate import run_ablations
from safe.training.ablation import STAGE_A_GRID, select_grid, summarise
from tests.training.test_stage_a import FAST

STEPS = 6


def test_grid_covers_the_issue_and_selection_checks_names():
    assert {"reference", "no retention loss", "k=4", "k=8", "k=12", "k=16", "rank=4", "rank=8", "rank=16",
            "no dense block", "no Fisher", "Fisher 0.1", "no curriculum"} == set(STAGE_A_GRID)
    assert list(select_grid(["rank=4", "k=4"])) == ["k=4", "rank=4"]  # grid order, not argument order
    with pytest.raises(ValueError, match="unknown ablation \\['k=5'\\]; choose from"):
        select_grid(["k=5"])


def test_summary_mean_and_ci_over_seeds_by_hand():
    runs = {"k=4/seed0": {"audio_accuracy": 0.5, "trainable_parameters": 10, "train_seconds": 1.0},
            "k=4/seed1": {"audio_accuracy": 0.7, "trainable_parameters": 10, "train_seconds": 3.0},
            "reference/seed0": {"audio_accuracy": 0.9, "trainable_parameters": 12, "train_seconds": 2.0}}
    rows = summarise(runs, select_grid(["reference", "k=4"]))
    assert [r["name"] for r in rows] == ["reference", "k=4"]
    ref, k4 = rows
    assert ref["seeds"] == 1 and ref["audio_accuracy"] == 0.9 and "audio_accuracy_ci" not in ref
    ci = mean_ci([0.5, 0.7], bounds=(0, 1))  # an accuracy: the interval is kept inside [0, 1]
    assert k4["audio_accuracy"] == pytest.approx(0.6) and k4["audio_accuracy_ci"] == [ci.low, ci.high]
    assert ci.low == 0.0 and ci.high == 1.0 and mean_ci([0.5, 0.7]).low < 0.0  # two seeds: t(1) is wide
    assert k4["changes"] == "safe.num_audio_tokens=4" and k4["train_seconds"] == 2.0


def test_grid_trains_each_entry_per_seed_and_resumes(tiny_builtin, tmp_path, monkeypatch):
    bench, base = tiny_builtin
    names = ["reference", "no retention loss", "rank=4"]
    out = run_ablations(BuiltinSource(bench), base, None, tmp_path, overrides=FAST, steps=STEPS, seeds=2, names=names,
                        progress=False)
    assert sorted(out["runs"]) == sorted(f"{n}/seed{s}" for n in names for s in (0, 1))
    assert all(r["steps"] == STEPS for r in out["runs"].values())
    rows = {r["name"]: r for r in out["rows"]}
    assert rows["rank=4"]["trainable_parameters"] < rows["reference"]["trainable_parameters"]
    assert rows["no retention loss"]["trainable_parameters"] == rows["reference"]["trainable_parameters"]
    assert all(r["seeds"] == 2 and "audio_accuracy_ci" in r for r in rows.values())
    assert all(r["answers_identical_gate_closed"] == 1.0 for r in rows.values())  # every entry keeps the bypass
    assert (tmp_path / "rank_4" / "seed1" / "checkpoints" / "final").is_dir()
    saved = json.loads((tmp_path / "ablations.json").read_text())
    assert saved["runs"] == out["runs"]

    def no_training(*a, **k):
        raise AssertionError("a finished entry was trained again")

    monkeypatch.setattr("safe.training.stage_a.StageATrainer.fit", no_training)
    again = run_ablations(BuiltinSource(bench), base, None, tmp_path, overrides=FAST, steps=STEPS, seeds=2, names=names,
                        progress=False)
    assert again["runs"] == out["runs"]
    with pytest.raises(ValueError, match="holds ablations of another recipe, step count"):
        run_ablations(BuiltinSource(bench), base, None, tmp_path, overrides=FAST, steps=STEPS + 1, names=names,
                      progress=False)


@pytest.mark.parametrize("kw,match", [({"seeds": 0}, "--seeds must be a positive integer"),
                                      ({"steps": 0}, "--steps must be a positive integer"),
                                      ({"names": ["nope"]}, "unknown ablation")])
def test_bad_arguments_name_the_flag(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        run_ablations(BuiltinSource(tmp_path), tmp_path, None, tmp_path / "out", **kw)


def test_ablate_command_prints_both_halves_of_the_grid(tiny_builtin, tmp_path, monkeypatch, capsys):
    """`safe ablate` is the one command for the whole grid: the Stage A entries it trains, then the
    Stage B entries (lambda = 0, heuristic and distilled gates) read from the run's policy metrics."""
    from safe.cli import main
    from safe.runs import RunDir

    bench, base = tiny_builtin
    row = {"accuracy": 0.9, "vl_accuracy": 1.0, "audio_accuracy": 0.7, "use_rate": 0.3, "mean_latency_ms": 1.0}
    grid = {"split": "test", "steps": 3, "seeds": 1, "seconds": 1.0,
            "rows": [{"name": "no retention loss", "audio_accuracy": 0.5, "vl_accuracy_gate_open": 0.2,
                      "vl_answers_changed_gate_open": 7.0, "caption_cider_d": 0.1, "trainable_parameters": 10}]}
    monkeypatch.setattr("safe.stages.ablate.run_ablations", lambda *a, **k: grid)
    run = RunDir(tmp_path / "run")
    run.record("policy", {"alpha": 0.1, "config": {"eval_split": "test"}, "test": row,
                          "baselines": {k: {**row, "use_rate": 0.4} for k in
                                        ("no_constraint", "distilled", "confidence", "entropy")}})
    assert main(["ablate", "--run-dir", str(run.path), "--data", str(bench), "--base", str(base)]) == 0
    out = capsys.readouterr().out
    assert "no retention loss" in out and "Stage B ablations" in out
    for name in ("learned gate (PPO, alpha=0.1)", "lambda = 0 in Stage B", "entropy threshold"):
        assert name in out
    assert RunDir(run.path).metrics()["ablations"] == grid


def test_five_seeds_give_the_t_interval_of_scipy():
    """`safe ablate --seeds 5`: each row's interval is the Student-t 95% interval over the five seeds
    (scipy.stats.t.interval with n - 1 degrees of freedom and the standard error of the mean)."""
    import numpy as np
    from scipy import stats as st

    values = [0.62, 0.70, 0.66, 0.74, 0.69]
    runs = {f"rank=8/seed{s}": {"audio_accuracy": v, "caption_cider_d": 5 + v, "trainable_parameters": 1,
                                "train_seconds": 1.0} for s, v in enumerate(values)}
    (row,) = summarise(runs, select_grid(["rank=8"]))
    x = np.array(values)
    want = st.t.interval(0.95, 4, loc=x.mean(), scale=x.std(ddof=1) / np.sqrt(5))
    assert row["seeds"] == 5 and row["audio_accuracy"] == pytest.approx(x.mean())
    assert row["audio_accuracy_ci"] == pytest.approx(list(want), abs=1e-12)
    assert row["caption_cider_d_ci"] == pytest.approx([5 + want[0], 5 + want[1]], abs=1e-12)  # unbounded metric
    assert row["changes"] == "safe.lora_rank=8, safe.rank_maps=all"
