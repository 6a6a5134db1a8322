"""Tests for safe.evaluation.report and safe.evaluation.plots: a full synthetic metrics dict (every
section filled, numbers shaped like a real run) rendered to a self-contained HTML file."""
from __future__ import annotations

import base64
import copy
import html
import json
import math
import re

import pytest

from safe.evaluation import plots
from safe.evaluation.report import SECTION_TITLES, fmt, fmt_ci, report_sections, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FAMILIES_VL = ["colour", "shape", "count", "position"]
FAMILIES_AUDIO = ["which_sound", "beep_count", "sound_source", "pitch"]


def _ci(mean: float, half: float) -> dict:
    return {"mean": mean, "ci_low": mean - half, "ci_high": mean + half}


def _eval_row(acc, vl, audio, use, lat) -> dict:
    return {"accuracy": acc, "vl_accuracy": vl, "audio_accuracy": audio, "use_rate": use,
            "mean_latency_ms": lat, "latency_ratio_to_base": lat / 2.1, "false_positive_rate": 0.02,
            "oracle_accuracy": 0.97, "oracle_use_rate": 0.5, "base_accuracy": 0.55, "n": 512}


@pytest.fixture()
def metrics() -> dict:
    """A metrics.json as a full run would write it (every stage, every section)."""
    fam_ret = {f: {"base": 1.0, "gate_closed": 1.0, "gate_open": 0.99, "policy": 1.0} for f in FAMILIES_VL}
    pareto = [{"name": f"ppo_alpha_{a}", "kind": "ppo", "alpha": a, "threshold": None,
               "accuracy": 0.9 + a / 10, "mean_latency_ms": 2.2 + a * 2, "use_rate": 0.4 + a / 2,
               "on_front": True} for a in (0.05, 0.2, 0.5)]
    for kind, off in (("confidence", 0.0), ("entropy", 0.03), ("random", 0.15)):
        pareto += [{"name": f"{kind}_{t}", "kind": kind, "alpha": None, "threshold": t,
                    "accuracy": 0.6 + (0.3 - off) * t, "mean_latency_ms": 2.1 + 2.0 * t, "use_rate": t,
                    "on_front": False} for t in (0.1, 0.5, 0.9)]
    pareto += [{"name": k, "kind": k, "alpha": None, "threshold": None, "accuracy": acc,
                "mean_latency_ms": lat, "use_rate": use, "on_front": k == "oracle"}
               for k, acc, lat, use in [("never", 0.55, 2.1, 0.0), ("always", 0.96, 4.3, 1.0),
                                        ("oracle", 0.97, 3.2, 0.5), ("distilled", 0.95, 3.3, 0.52)]]
    return {
        "timing": {"verify": 3.2, "base": 95.0, "stage_a": 240.5, "policy": 60.1, "eval": 80.3},
        "verify": {"passed": True, "models": {
            "builtin_llava": {"passed": True, "seconds": 1.4, "checks": [
                {"name": "state_dict_unchanged", "passed": True, "detail": "214 keys bit-identical"},
                {"name": "gate_closed_logits_equal", "passed": True, "detail": "max |diff| 0.0"}]},
            "blip2_opt": {"passed": True, "seconds": 1.8,
                          "checks": {"state_dict_unchanged": True, "generate_equal": True}}}},
        "base": {"vl_accuracy": 1.0, "seconds": 95.0,
                 "test_accuracy": {f: 1.0 for f in FAMILIES_VL},
                 "audio_encoder": {"tag_exact_match": 0.97},
                 "deaf_check": {f: {"accuracy": 0.26, "bound": 0.4, "rule": "≤ chance + 0.15",
                                    "passed": True} for f in FAMILIES_AUDIO}},
        "stage_a": {"vl_accuracy_base": 1.0, "vl_accuracy_gate_open": 1.0, "audio_accuracy": 0.938,
                    "audio_accuracy_base": 0.27, "caption_cider_d": 0.61, "steps": 600, "seconds": 240.5,
                    "history": [{"step": s, "audio_loss": 2.0 / (1 + s / 50), "retention_kl": 0.01 / (1 + s),
                                 "lambda": 0.1 * s / 600, "lr": 1e-3} for s in range(0, 601, 50)]},
        "policy": {
            "test": _eval_row(0.95, 1.0, 0.93, 0.52, 3.3),
            "baselines": {"never": _eval_row(0.55, 1.0, 0.27, 0.0, 2.1),
                          "always": _eval_row(0.96, 0.99, 0.94, 1.0, 4.3),
                          "random": _eval_row(0.75, 1.0, 0.6, 0.5, 3.2),
                          "confidence": _eval_row(0.9, 1.0, 0.85, 0.6, 3.4),
                          "entropy": _eval_row(0.89, 1.0, 0.84, 0.62, 3.5),
                          "oracle": _eval_row(0.97, 1.0, 0.94, 0.5, 3.2),
                          "distilled": _eval_row(0.95, 1.0, 0.92, 0.52, 3.3)},
            "pareto": pareto,
            "history": [{"update": u, "alpha": 0.2, "lambda": 0.5 - u / 100, "use_rate": 0.9 - u / 60,
                         "mean_reward": 0.3 + u / 50, "approx_kl": 0.01, "clipfrac": 0.1, "entropy": 0.6}
                        for u in range(20)],
            "distill": {"agreement": 0.97, "student_params": 2210, "teacher_params": 35000,
                        "student_s_per_row": 2e-6, "teacher_s_per_row": 3e-5},
            "collapse": None},
        "eval": {
            "stage_gates": [
                {"gate": "retention vl_accuracy (policy)", "target": "≥ base − 0.005", "measured": 1.0,
                 "passed": True},
                {"gate": "audio gain", "target": "≥ +0.05", "measured": "+0.67", "passed": True},
                {"gate": "latency ratio (policy)", "target": "≤ 1.6", "measured": 1.57, "passed": True}],
            "retention": {
                "vl_accuracy": {"base": 1.0, "gate_closed": 1.0, "gate_open": 0.995, "policy": 1.0},
                "mcnemar": {"gate_open": {"b": 2, "c": 0, "statistic": 2.0, "p_value": 0.5, "exact": True},
                            "policy": {"b": 0, "c": 0, "statistic": 0.0, "p_value": 1.0, "exact": True}},
                "answers_changed": {"gate_closed": 0, "gate_open": 2, "policy": 0, "n": 400},
                "per_family": fam_ret, "effect_size": {"cohens_dz_gate_open": -0.07}},
            "audio_gains": {
                "audio_accuracy": {"base": _ci(0.27, 0.04), "safe": _ci(0.938, 0.025),
                                   "policy": _ci(0.93, 0.03)},
                "caption_cider_d": {"base": _ci(0.0, 0.0), "safe": _ci(0.61, 0.05)},
                "per_family": {f: {"base": 0.25, "safe": 0.94, "policy": 0.93} for f in FAMILIES_AUDIO}},
            "efficiency": {
                "audio_use_rate": 0.52, "oracle_use_rate": 0.5, "overhead_ms": 0.12,
                "latency_ms": {"base": {"median": 2.1, "p95": 2.6, "mean": 2.2},
                               "always_audio": {"median": 4.2, "p95": 4.9, "mean": 4.3},
                               "policy": {"median": 3.2, "p95": 4.6, "mean": 3.3}},
                "latency_ratio_to_base": {"always_audio": 2.0, "policy": 1.57},
                "flops_per_query": {"base": 1.2e7, "always_audio": 2.5e7, "policy": 1.9e7},
                "memory_bytes": {"base": 4_200_000, "audio_encoder": 1_100_000, "safe_parts": 310_000},
                "state_cost_ms": {"preview": 0.05, "policy": 0.01}},
            "attribution": {
                "lomo": {f: {"active": 0.94, "muted": 0.26, "drop": 0.68} for f in FAMILIES_AUDIO},
                "shapley": {"image_mean": 0.3, "audio_mean": 0.45,
                            "by_family": {**{f: {"image": 0.1, "audio": 0.6} for f in FAMILIES_AUDIO},
                                          **{f: {"image": 0.7, "audio": 0.0} for f in FAMILIES_VL}}}},
            "robustness": {
                "snr_sweep": [{"snr_db": None, "audio_accuracy": 0.938, "vl_accuracy": 1.0}]
                + [{"snr_db": s, "audio_accuracy": 0.4 + 0.5 * (s + 10) / 40, "vl_accuracy": 1.0}
                   for s in (-10.0, 0.0, 10.0, 20.0, 30.0)],
                "misaligned": {"audio_accuracy": 0.3, "aligned_audio_accuracy": 0.938, "n": 128},
                "irrelevant": {"false_positive_rate": 0.03, "answers_changed": 1, "n": 200},
                "ood_sounds": {"audio_accuracy": 0.51, "in_domain_audio_accuracy": 0.938, "n": 64}},
            "ablations": {
                "rows": [{"name": "full", "changes": {}, "vl_accuracy": 1.0, "audio_accuracy": 0.938,
                          "use_rate": 0.52, "steps": 600},
                         {"name": "no_retention_kl", "changes": {"retention_kl": 0.0}, "vl_accuracy": 0.97,
                          "audio_accuracy": 0.94, "use_rate": None, "steps": 600},
                         {"name": "rank_4", "changes": {"rank": 4}, "vl_accuracy": 1.0,
                          "audio_accuracy": 0.9, "use_rate": 0.55, "steps": 600, "seconds": 61.2}],
                "note": "short runs (600 steps) on the built-in benchmark"},
            "seeds": {"n": 5, "metrics": {
                "audio_accuracy": {"values": [0.93, 0.94, 0.938, 0.95, 0.92], **_ci(0.9356, 0.014)},
                "vl_accuracy": {"values": [1.0] * 5, **_ci(1.0, 0.0)}},
                "cohens_d": {"audio_accuracy": 12.3}},
        },
    }


@pytest.fixture()
def report(metrics, tmp_path):
    path = write_report(metrics, tmp_path / "run" / "report.html", title="SAFE demo")
    return path, path.read_text(encoding="utf-8")


def _images(text: str) -> list[bytes]:
    payloads = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    return [base64.b64decode(p, validate=True) for p in payloads]


def _footer_json(text: str):
    m = re.search(r'<pre id="metrics-json">(.*?)</pre>', text, re.S)
    assert m, "footer JSON missing"
    return json.loads(html.unescape(m.group(1)))


def test_write_report_writes_file_with_every_section(report):
    path, text = report
    assert path.is_file() and path.name == "report.html"
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    assert "<h1>SAFE demo</h1>" in text
    positions = [text.index(f"<h2>{html.escape(t)}</h2>") for t in SECTION_TITLES.values()]
    assert positions == sorted(positions), "sections out of order"
    assert "not run in this report" not in text
    assert "All 3 stage gates passed." in text
    assert text.count('class="pass">PASS') >= 3 + 2 + 4   # gates, verify models, deaf checks
    assert "<details>" in text


def test_embedded_plots_are_png(report):
    _, text = report
    images = _images(text)
    assert len(images) >= 5
    assert text.count('<img src="data:image/png;base64,') == len(images)
    assert all(img.startswith(PNG_SIGNATURE) for img in images)
    assert all(len(img) < 200_000 for img in images)


def test_no_external_references_or_script(report):
    _, text = report
    assert not re.search(r'(src|href)\s*=\s*["\']?https?://', text, re.I)
    assert "http://" not in text and "https://" not in text
    assert "<script" not in text.lower() and "<link" not in text.lower()


def test_numbers_formatted(report):
    _, text = report
    assert "0.938 [0.913, 0.963]" in text           # CI, 3 decimals
    assert "<td>3.30</td>" in text                  # mean latency in ms, 2 decimals
    assert "5 (n=5)" not in text and "(n=5)" in text
    assert "<td>2 / 400</td>" in text               # answers changed, gate open


def test_report_sections_all_present(metrics):
    sections = report_sections(metrics)
    assert list(sections) == list(SECTION_TITLES)
    assert all(sections.values()), sections


def test_report_sections_only_stage_a(metrics, tmp_path):
    only = {"stage_a": metrics["stage_a"]}
    sections = report_sections(only)
    assert sections["stage_a"] is True
    assert not any(v for k, v in sections.items() if k != "stage_a")
    text = write_report(only, tmp_path / "r.html").read_text()
    assert text.count("not run in this report") == len(SECTION_TITLES) - 1
    assert len(_images(text)) == 1                  # the Stage A curves
    assert "<td>0.938</td>" in text


def test_empty_metrics_do_not_crash(tmp_path):
    text = write_report({}, tmp_path / "r.html").read_text()
    assert text.count("not run in this report") == len(SECTION_TITLES)
    assert not any(report_sections({}).values())


def test_strings_from_metrics_are_escaped(metrics, tmp_path):
    evil = "<script>alert(1)</script>"
    metrics["eval"]["stage_gates"][0]["gate"] = evil
    metrics["eval"]["ablations"]["rows"][0]["name"] = evil
    metrics["policy"]["collapse"] = evil
    metrics["base"]["test_accuracy"][evil] = 0.5
    text = write_report(metrics, tmp_path / "r.html", title=evil).read_text()
    assert "<script" not in text.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text


def test_nan_and_none_render_as_dash(metrics, tmp_path):
    metrics["eval"]["retention"]["vl_accuracy"]["gate_open"] = float("nan")
    metrics["eval"]["audio_gains"]["audio_accuracy"]["safe"] = {"mean": None, "ci_low": float("nan"),
                                                                 "ci_high": None}
    metrics["eval"]["robustness"]["snr_sweep"][2]["audio_accuracy"] = float("nan")
    metrics["policy"]["pareto"][0]["accuracy"] = None
    metrics["policy"]["history"][3]["use_rate"] = float("inf")
    metrics["stage_a"]["audio_accuracy"] = None
    metrics["eval"]["efficiency"]["latency_ms"]["policy"]["p95"] = float("nan")
    metrics["eval"]["stage_gates"][1]["measured"] = None
    text = write_report(metrics, tmp_path / "r.html").read_text()
    assert "nan" not in re.sub(r'<pre id="metrics-json">.*?</pre>|base64,[^"]*', "", text, flags=re.S).lower()
    assert "— [—, —]" in text
    assert "<td>gate open</td><td>—</td>" in text
    assert len(_images(text)) >= 5


def test_malformed_sections_do_not_crash(tmp_path):
    odd = {"verify": {"passed": False, "models": {"m": {"passed": False, "checks": "bad", "error": "OOM"}}},
           "base": {"vl_accuracy": "n/a", "deaf_check": [1, 2]},
           "eval": {"stage_gates": ["not a dict"], "retention": {"vl_accuracy": 0.9, "answers_changed": 3},
                    "efficiency": {"latency_ms": 4.0, "latency_ratio_to_base": 1.2, "memory_bytes": 7},
                    "attribution": {"lomo": [], "shapley": 0.5}, "robustness": {"snr_sweep": {"a": 1}},
                    "ablations": {"rows": [None, {"changes": None}]}, "seeds": {"metrics": [0.9]},
                    "audio_gains": {"audio_accuracy": [0.5], "caption_cider_d": {"safe": "x"},
                                    "per_family": 3}},
           "policy": {"pareto": {"x": 1}, "history": [None], "baselines": []},
           "stage_a": {"history": "none"}, "timing": 12.5}
    text = write_report(odd, tmp_path / "r.html").read_text()
    assert "Time: 12.5 s" in text and "OOM" in text and "FAIL" in text
    assert "not run in this report" not in text     # present, if malformed: rendered, not skipped


def test_write_is_atomic_and_overwrites(metrics, tmp_path):
    path = tmp_path / "report.html"
    path.write_text("old")
    write_report(metrics, path)
    write_report({"stage_a": metrics["stage_a"]}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]
    assert "not run in this report" in path.read_text()


def test_failed_write_leaves_no_temp_file(metrics, tmp_path, monkeypatch):
    import safe.evaluation.report as report_mod

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(report_mod.os, "replace", boom)
    with pytest.raises(OSError):
        write_report(metrics, tmp_path / "report.html")
    assert list(tmp_path.iterdir()) == []


def test_footer_json_round_trips(metrics, report):
    _, text = report
    assert _footer_json(text) == metrics
    metrics["eval"]["stage_gates"][0]["gate"] = "<b>&amp; \"quoted\"</b>"
    assert _footer_json(write_report(metrics, report[0]).read_text()) == metrics


def test_failed_gate_gives_fail_verdict(metrics, tmp_path):
    metrics["eval"]["stage_gates"][2]["passed"] = False
    metrics["verify"]["models"]["blip2_opt"]["checks"]["generate_equal"] = False
    text = write_report(metrics, tmp_path / "r.html").read_text()
    assert "1 of 3 stage gates failed: latency ratio (policy)." in text
    assert 'class="fail">FAIL' in text
    assert "1/2 passed; failed: generate_equal" in text


def test_formatters():
    assert fmt(None) == fmt(float("nan")) == fmt(float("inf")) == "—"
    assert fmt(0.93751) == "0.938" and fmt(3.14159, 2) == "3.14" and fmt(7) == "7"
    assert fmt(True) == "yes" and fmt(1.2e9) == "1.2e+09" and fmt(2e-6) == "2e-06" and fmt(0.0) == "0.000"
    assert fmt_ci({"mean": 0.938, "ci_low": 0.91, "ci_high": 0.96}) == "0.938 [0.910, 0.960]"
    assert fmt_ci(0.5) == "0.500"


def test_plots_skip_missing_data():
    assert plots.pareto_plot(None) is None
    assert plots.pareto_plot([{"kind": "ppo", "accuracy": None, "mean_latency_ms": 2.0}]) is None
    assert plots.retention_plot({}) is None
    assert plots.snr_plot([]) is None
    assert plots.attribution_plot(None, None) is None
    assert plots.ppo_curves_plot([{"update": 1}]) is None
    assert plots.stage_a_plot(None) is None


def test_plots_return_png_for_partial_data():
    assert plots.snr_plot([{"snr_db": None, "audio_accuracy": 0.9}]).startswith(PNG_SIGNATURE)
    assert plots.attribution_plot({"pitch": {"drop": 0.5}}, None).startswith(PNG_SIGNATURE)
    assert plots.ppo_curves_plot([{"use_rate": 0.5}, {"use_rate": math.nan}]).startswith(PNG_SIGNATURE)
    assert plots.stage_a_keys([{"step": 1, "lr": 0.1, "audio_loss": 2.0, "tag": "x"}]) == ["audio_loss", "lr"]


def test_report_module_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, safe.evaluation.report, safe.evaluation.plots; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_input_metrics_not_mutated(metrics, tmp_path):
    before = copy.deepcopy(metrics)
    write_report(metrics, tmp_path / "r.html")
    assert metrics == before


def test_export_plots_writes_the_embedded_bytes(metrics, report, tmp_path):
    from safe.evaluation.report import export_plots, render_plots

    _, text = report
    figures = render_plots(metrics)
    assert list(figures) == ["retention_per_family", "pareto_plot", "ppo_curves", "attribution", "snr_sweep",
                             "stage_a_curves"]  # report order; every plot has data in the full fixture
    assert list(figures.values()) == _images(text)  # the report embeds exactly these bytes, in this order
    written = export_plots(metrics, tmp_path / "plots")  # drawn again from the metrics: the same bytes
    assert [p.name for p in written] == [f"{n}.png" for n in figures]
    assert [p.read_bytes() for p in written] == list(figures.values())
    assert tmp_path.joinpath("plots", "pareto_plot.png") in written


def test_plots_drawn_once_are_embedded_and_exported_as_given(metrics, tmp_path):
    from safe.evaluation.report import export_plots, render_plots

    figures = render_plots(metrics)
    fake = {"pareto_plot": PNG_SIGNATURE + b"drawn once", "snr_sweep": figures["snr_sweep"]}
    text = write_report(metrics, tmp_path / "r.html", figures=fake).read_text()
    assert _images(text) == list(fake.values())  # nothing re-drawn: exactly the given bytes
    assert 'alt="Pareto plot"' in text and 'alt="SNR sweep"' in text
    written = export_plots(metrics, tmp_path / "out", figures=fake)
    assert [(p.name, p.read_bytes()) for p in written] == [(f"{k}.png", v) for k, v in fake.items()]


def test_render_plots_leaves_out_plots_without_data(metrics):
    from safe.evaluation.report import render_plots

    assert render_plots({}) == {}
    assert list(render_plots({"stage_a": metrics["stage_a"]})) == ["stage_a_curves"]
    odd = {"policy": {"pareto": {"x": 1}, "history": "none"}, "eval": {"attribution": {"shapley": 0.5}}}
    assert render_plots(odd) == {}


@pytest.mark.parametrize("state", ["early", "cascade", None])
def test_latency_by_batch_names_the_deployed_state(metrics, tmp_path, state):
    metrics["eval"]["efficiency"]["latency_by_batch"] = {"16": {
        "rows": 64, "base_mean_ms": 0.7, "always_audio_mean_ms": 1.9, "policy_mean_ms": 1.8,
        "policy_to_always": 0.95, "policy_to_base": 2.6}}
    if state is not None:
        metrics["policy"]["config"] = {"state": state}
    text = write_report(metrics, tmp_path / "report.html").read_text(encoding="utf-8")
    # a run recorded before the state existed was a cascade run
    assert f"deployed gate, {state or 'cascade'} state, measured end to end" in text
