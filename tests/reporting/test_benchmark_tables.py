"""The per-benchmark tables in the HTML report and in docs/results.md, from a fake mixed-data run."""
from __future__ import annotations

import html

from safe.reporting.benchmark_tables import captions_table, gains_table, retention_table
from safe.reporting.docs import results_page
from safe.reporting.report import render_report
from tests.evaluation.fake_metrics import full_metrics, per_benchmark_metrics


def test_tables_hold_one_row_per_benchmark():
    m = per_benchmark_metrics()["eval"]
    r = retention_table(m["retention"])
    assert [row[0] for row in r.rows] == ["gqa", "vqav2"]
    assert r.rows[1] == ["vqav2", "vqa_accuracy", "400", "0.710", "0.710", "0.700", "0.709", "4 of 400", "wilcoxon",
                         "0.625", "0.900"]
    assert "Wilcoxon signed-rank" in r.notes[0] and "McNemar" in r.notes[0]
    g = gains_table(m["audio_gains"])
    assert g.rows == [["avqa", "exact_match", "4", "0.250 [0.000, 0.500]", "0.750 [0.500, 1.000]",
                       "0.750 [0.500, 1.000]", "0.500 [0.000, 1.000]"]]
    c = captions_table(m["audio_gains"])
    assert [row[:4] for row in c.rows] == [["audiocaps", "base", "2", "0.050 [-0.050, 0.150]"],
                                           ["audiocaps", "safe", "2", "0.600 [0.500, 0.700]"]]
    assert c.rows[1][-1] == "—"  # METEOR not computed: a dash, never a number
    assert "audiocaps: SPICE not computed: no CoreNLP offline" in c.notes


def test_older_runs_have_no_per_benchmark_tables():
    m = full_metrics()["eval"]
    assert retention_table(m["retention"]) is None and gains_table(m["audio_gains"]) is None
    assert captions_table(m["audio_gains"]) is None and retention_table(None) is None
    text = render_report(full_metrics(), figures={})
    assert "per benchmark" not in text
    assert "per benchmark" not in results_page(full_metrics())


def test_report_renders_the_per_benchmark_sections():
    m = per_benchmark_metrics()
    m["eval"]["retention"]["per_task"]["<b>x</b>"] = m["eval"]["retention"]["per_task"]["gqa"]
    text = render_report(m, figures={})
    retention = text[text.index('<section id="retention">'):text.index('<section id="audio_gains">')]
    assert "<h3>Retention per benchmark</h3>" in retention
    assert "<td>vqav2</td><td>vqa_accuracy</td><td>400</td>" in retention
    assert html.escape("<b>x</b>") in retention and "<b>x</b>" not in retention
    gains = text[text.index('<section id="audio_gains">'):text.index('<section id="efficiency">')]
    assert "<h3>Audio gains per benchmark</h3>" in gains and "<h3>Captions per benchmark</h3>" in gains
    assert "<td>0.750 [0.500, 1.000]</td>" in gains and "METEOR not requested (Java)" in gains


def test_results_page_has_the_per_benchmark_sections():
    page = results_page(per_benchmark_metrics())
    assert "## Evaluation: retention per benchmark" in page
    assert "| vqav2 | vqa_accuracy | 400 | 0.710 | 0.710 | 0.700 | 0.709 | 4 of 400 | wilcoxon | 0.625 | 0.900 |" in page
    assert "## Evaluation: audio gains per benchmark" in page and "## Evaluation: captions per benchmark" in page
    assert page.index("## Evaluation: retention\n") < page.index("## Evaluation: retention per") < page.index(
        "## Evaluation: stage gates")


def test_safe_eval_prints_one_line_per_benchmark():
    from safe.stages.evaluate import _per_benchmark

    ev = per_benchmark_metrics()["eval"]
    lines = _per_benchmark(ev["retention"], ev["audio_gains"])
    assert lines == [
        "  retention on gqa (gqa_exact_match, 300 rows): base 0.6100, gate_closed 0.6100, gate_open 0.6033, "
        "policy 0.6100; mcnemar p (gate open) 0.625",
        "  retention on vqav2 (vqa_accuracy, 400 rows): base 0.7100, gate_closed 0.7100, gate_open 0.7000, "
        "policy 0.7090; wilcoxon p (gate open) 0.625",
        "  gains on avqa (exact_match, 4 rows): base 0.250, safe 0.750, policy 0.750; SAFE - base +0.500 "
        "[+0.000, +1.000]",
        "  captions on audiocaps (2 clips): CIDEr-D base 0.050, safe 0.600; BLEU-4 base 0.050, safe 0.138"]
    assert _per_benchmark(full_metrics()["eval"]["retention"], full_metrics()["eval"]["audio_gains"]) == []
