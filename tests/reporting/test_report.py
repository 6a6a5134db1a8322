"""Tests for safe.reporting.report and safe.reporting.plots: a full synthetic metrics dict (every
section filled, numbers shaped like a real run) rendered to a self-contained HTML file."""
from __future__ import annotations

import base64
import copy
import html
import json
import math
import re

import pytest

from safe.reporting import plots
from safe.reporting.report import OPTIONAL_SECTIONS, SECTION_TITLES, fmt, fmt_ci, report_sections, write_report
from tests.evaluation.fake_metrics import full_metrics

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# the sections every report shows (present or "not run"); the optional ones only where a run has them
ALWAYS = [k for k in SECTION_TITLES if k not in OPTIONAL_SECTIONS]


@pytest.fixture()
def metrics() -> dict:
    """A metrics.json as a full run would write it (every stage, every section)."""
    return full_metrics()


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
    positions = [text.index(f"<h2>{html.escape(SECTION_TITLES[k])}</h2>") for k in ALWAYS]
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
    assert list(sections) == ALWAYS  # an audio run: no section of another modality's run, not even "not run"
    assert all(sections.values()), sections


def test_report_sections_only_stage_a(metrics, tmp_path):
    only = {"stage_a": metrics["stage_a"]}
    sections = report_sections(only)
    assert sections["stage_a"] is True
    assert not any(v for k, v in sections.items() if k != "stage_a")
    text = write_report(only, tmp_path / "r.html").read_text()
    assert text.count("not run in this report") == len(ALWAYS) - 1
    assert len(_images(text)) == 1                  # the Stage A curves
    assert "<td>0.938</td>" in text


def test_empty_metrics_do_not_crash(tmp_path):
    text = write_report({}, tmp_path / "r.html").read_text()
    assert text.count("not run in this report") == len(ALWAYS)
    assert not any(report_sections({}).values()) and "modality_eval" not in text


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
           "stage_a": {"history": "none"}, "timing": 12.5, "depth": {"depth_accuracy": "n/a", "policy": "bad"}}
    text = write_report(odd, tmp_path / "r.html").read_text()
    assert "run time 12.5 s" in text and "OOM" in text and "FAIL" in text
    assert "not run in this report" not in text     # present, if malformed: rendered, not skipped


def test_write_is_atomic_and_overwrites(metrics, tmp_path):
    path = tmp_path / "report.html"
    path.write_text("old")
    write_report(metrics, path)
    write_report({"stage_a": metrics["stage_a"]}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]
    assert "not run in this report" in path.read_text()


def test_failed_write_leaves_no_temp_file(metrics, tmp_path, monkeypatch):
    import safe.atomic

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(safe.atomic.os, "replace", boom)
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

    code = ("import sys, safe.reporting.report, safe.reporting.plots, safe.reporting.docs; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_input_metrics_not_mutated(metrics, tmp_path):
    before = copy.deepcopy(metrics)
    write_report(metrics, tmp_path / "r.html")
    assert metrics == before


def test_export_plots_writes_the_embedded_bytes(metrics, report, tmp_path):
    from safe.reporting.report import export_plots, render_plots

    _, text = report
    figures = render_plots(metrics)
    assert list(figures) == ["stage_a_curves", "pareto_plot", "ppo_curves", "retention_per_family", "attribution",
                             "snr_sweep"]  # report order; every plot has data in the full fixture
    assert list(figures.values()) == _images(text)  # the report embeds exactly these bytes, in this order
    written = export_plots(metrics, tmp_path / "plots")  # drawn again from the metrics: the same bytes
    assert [p.name for p in written] == [f"{n}.png" for n in figures]
    assert [p.read_bytes() for p in written] == list(figures.values())
    assert tmp_path.joinpath("plots", "pareto_plot.png") in written


def test_plots_drawn_once_are_embedded_and_exported_as_given(metrics, tmp_path):
    from safe.reporting.report import export_plots, render_plots

    figures = render_plots(metrics)
    fake = {"pareto_plot": PNG_SIGNATURE + b"drawn once", "snr_sweep": figures["snr_sweep"]}
    text = write_report(metrics, tmp_path / "r.html", figures=fake).read_text()
    assert _images(text) == list(fake.values())  # nothing re-drawn: exactly the given bytes
    assert 'alt="Pareto plot"' in text and 'alt="SNR sweep"' in text
    written = export_plots(metrics, tmp_path / "out", figures=fake)
    assert [(p.name, p.read_bytes()) for p in written] == [(f"{k}.png", v) for k, v in fake.items()]


def test_render_plots_leaves_out_plots_without_data(metrics):
    from safe.reporting.report import render_plots

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


def test_efficiency_section_names_the_shape_behind_its_numbers():
    """Issue 20: every efficiency number says which model shape it was measured on, and the latency gate's
    own text (which may come from benchmarks/scale.py) is quoted there."""
    from safe.reporting.report import render_report
    from tests.evaluation.fake_metrics import demo_metrics

    metrics = demo_metrics()
    shape = "this run's model: VL base 0.81M parameters (vision side 0.10M), audio encoder 0.09M"
    metrics["eval"]["efficiency"]["shape"] = {"text": shape, "device": "cpu"}
    metrics["eval"]["stage_gates"] = [{"gate": "Stage 3: latency overhead per query (batch 1)", "target": "< 50 ms",
                                       "measured": "11.76 ms on the proxy shape (LM 19.4M parameters)", "passed": True}]
    import html

    html_text = html.unescape(render_report(metrics, figures={}))
    assert f"Every figure below was measured on {shape}." in html_text
    assert "The latency stage gate reads 11.76 ms on the proxy shape" in html_text


def _cells(text: str) -> list[str]:
    """The text of every table cell, the folded full-metrics JSON left out."""
    body = re.sub(r'<pre id="metrics-json">.*?</pre>', "", text, flags=re.S)
    return [html.unescape(c) for c in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", body, re.S)]


def test_targets_come_first_beside_this_runs_figures(report):
    _, text = report
    assert re.findall(r"<h2>(.*?)</h2>", text)[0] == "Targets"
    assert "3 of 3 targets met" in text.split("<h2>")[0]  # the line under the title
    assert "required</th><th class=\"text\">this run</th>" in text


def test_no_raw_key_names_or_dicts_in_cells(metrics, tmp_path):
    metrics["timing"] = {"verify_done_seconds": 48.3, "policy_done_seconds": 373.9, "seconds": 452.6}
    metrics["eval"]["stage_gates"][0]["gate"] = "Stage 3: VL retention with the policy"  # as the evaluation names it
    metrics["verify"]["models"]["builtin_llava"]["parameters"] = {"total": {"parameters": 1172224, "trainable": 266756}}
    text = write_report(metrics, tmp_path / "r.html").read_text()
    cells = _cells(text)
    assert not [c for c in cells if "{" in c], [c for c in cells if "{" in c][:5]
    keys = ("policy_done_seconds", "verify_done_seconds", "mean_latency_ms", "latency_ratio_to_base", "use_rate",
            "false_positive_rate", "vl_accuracy", "audio_use_rate", "overhead_ms", "base_as_good_points", "approx_kl",
            "tag_exact_match", "caption_cider_d", "student_params", "test_agreement", "vl_accuracy_gate_open")
    assert not [c for c in cells if any(k in c for k in keys)], [c for c in cells if any(k in c for k in keys)][:5]
    assert "Stages B and C finished after" in cells and "6 min 14 s" in cells and "whole run" in cells
    assert "266,756 of 1,172,224 (22.76%)" in cells


def test_verification_is_a_base_by_encoder_matrix_with_the_details_folded(metrics, tmp_path):
    ok = {"passed": True, "seconds": 0.4, "checks": [{"name": "gate closed: logits equal", "passed": True}]}
    bad = {"passed": False, "seconds": 0.4, "checks": [{"name": "gate closed: logits equal", "passed": False}]}
    models = {f"{b} x {e}": (bad if (b, e) == ("mllama", "ast") else ok)
              for b in ("llava", "mllama", "qwen2-vl") for e in ("whisper", "clap", "ast")}
    models["run runs/demo"] = ok
    metrics["verify"] = {"passed": False, "models": models}
    text = write_report(metrics, tmp_path / "r.html").read_text()
    section = text[text.index('<section id="verify">'):text.index("</section>", text.index('<section id="verify">'))]
    matrix = re.search(r'<table class="matrix">(.*?)</table>', section, re.S).group(1)
    assert matrix.count("<tr>") == 1 + 3 and "<th>ast</th>" in matrix  # a header row, one row per base
    assert re.search(r"<td>mllama</td><td>.*?PASS.*?</td><td>.*?PASS.*?</td><td>.*?FAIL", matrix)
    assert "1 of 10 model pairs fail: mllama x ast (gate closed: logits equal)." in section
    folded = section[section.index("<details>"):]
    assert folded.count("<tr>") == 1 + 10  # every pair, under the matrix, folded
    assert ">run runs/demo</td>" in section[:section.index("<details>")]  # the run's own model is not a preset
