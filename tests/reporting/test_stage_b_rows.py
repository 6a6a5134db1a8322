"""Stage B's per-row costs and the retention floor under stress reach docs/results.md and report.html from
metrics.json (and runs without them simply lack the rows)."""
from __future__ import annotations

from safe.evaluation.protocol import stage_b_ablations
from safe.reporting.docs import results_page
from safe.reporting.report import render_report
from tests.evaluation.fake_metrics import demo_metrics, full_metrics

COSTS = {"runtime_ms_without": 1.17, "runtime_ms_with": 2.37, "runtime_ms_extra": 1.2, "runtime_ms_extra_p5": 1.0,
         "runtime_ms_extra_p95": 2.19, "tokens_without": 2.0, "tokens_with": 10.5, "tokens_extra": 8.5,
         "tokens_extra_p5": 8.0, "tokens_extra_p95": 10.0, "runtime_rows_distinct": 40}
STRESS = {"harm": 0.25, "tau": 0.003, "base_vl_accuracy": 1.0, "vl_floor": 0.997, "alpha": 0.0, "gamma": 0.0,
          "dual_lr": 1.0, "updates": 3, "held": True, "broken_without": True,
          "with_dual": {"accuracy": 0.686, "vl_accuracy": 1.0, "audio_accuracy": 0.1, "use_rate": 0.0,
                        "false_positive_rate": 0.0, "lambda_max": 3.07, "lambda_final": 2.84,
                        "lambda": [0.0, 3.07, 2.84]},
          "without_dual": {"accuracy": 0.784, "vl_accuracy": 0.74, "audio_accuracy": 0.87, "use_rate": 1.0,
                           "false_positive_rate": 1.0, "lambda_max": 0.0, "lambda_final": 0.0,
                           "lambda": [0.0, 0.0, 0.0]}}


def _with_stage_b(m: dict) -> dict:
    m["policy"]["row_costs"] = {"train": COSTS, "test": COSTS, "model": "runtime per row: ..."}
    m["policy"]["floor_stress"] = STRESS
    return m


def test_results_page_rows_for_costs_and_floor_stress():
    page = results_page(_with_stage_b(demo_metrics()))
    assert "| Stage B: audio's extra cost per row (test)" in page
    assert "1.20 [1.00, 2.19] / 8.5 (audio 10.5 vs 2.0 without); 40 distinct row prices" in page
    assert "1.000 / 0.740 / 0.997 (audio breaks 25.0% of VL rows; use rate 0.000 / 1.000); lambda 3.07 / 2.84: " \
           "floor held with the dual, broken without" in page
    bare = results_page(demo_metrics())
    assert "cost per row" not in bare and "under stress" not in bare


def test_ablation_rows_and_report_show_the_stress():
    m = _with_stage_b(demo_metrics())
    names = [r["name"] for r in stage_b_ablations({**m["policy"], "alpha": 0.1,
                                                    "baselines": {**m["policy"]["baselines"],
                                                                  "no_constraint": m["policy"]["test"]}})["rows"]]
    assert names[-2:] == ["floor stress (audio breaks 25% of VL rows, blank state), dual ascent",
                          "floor stress (audio breaks 25% of VL rows, blank state), lambda = 0"]
    html = render_report(_with_stage_b(full_metrics()))
    assert "Retention floor under stress" in html and "Costs per row (test table)" in html
    assert "Retention floor under stress" not in render_report(full_metrics())
