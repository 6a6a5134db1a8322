"""Per-modality rows of docs/results.md, generated from metrics.json: audio from the demo's figures, depth from
the depth track's (joined by `safe report --depth-run`), each beside its own oracle and always-on."""
import json

from safe.cli import main
from safe.reporting.docs import results_page
from safe.reporting.modalities import modality_rows, modality_table

AUDIO = {"stage_a": {"audio_accuracy_base": 0.128, "audio_accuracy": 0.923, "answers_identical_gate_closed": 1.0,
                     "vl_answers_changed_gate_open": 3, "vl_examples": 780},
         "policy": {"test": {"use_rate": 0.335, "accuracy": 0.950},
                    "baselines": {"oracle": {"use_rate": 0.292, "accuracy": 0.953},
                                  "always": {"use_rate": 1.0, "accuracy": 0.951}}}}
DEPTH = {"depth_accuracy_base": 0.246, "depth_accuracy": 0.898, "answers_identical_gate_closed": 1.0,
         "vl_answers_changed_gate_open": 0, "vl_examples": 360,
         "policy": {"policy": {"use_rate": 0.6, "accuracy": 0.938}, "oracle": {"use_rate": 0.406, "accuracy": 0.953},
                    "always": {"use_rate": 1.0, "accuracy": 0.939}}}


def test_each_modality_gets_its_row_from_its_own_figures():
    rows = {r["modality"]: r for r in modality_rows({**AUDIO, "depth": DEPTH})}
    assert list(rows) == ["audio", "depth"]
    assert (rows["audio"]["use_rate"], rows["audio"]["oracle_use_rate"]) == (0.335, 0.292)
    assert (rows["depth"]["base"], rows["depth"]["safe"], rows["depth"]["oracle_use_rate"]) == (0.246, 0.898, 0.406)
    table = modality_table({**AUDIO, "depth": DEPTH})
    assert "| depth | 0.246 -> 0.898 | 1.000 | 0 of 360 | 0.600 (0.406) | 0.938 (0.939) |" in table
    assert "| audio | 0.128 -> 0.923 | 1.000 | 3 of 780 | 0.335 (0.292) | 0.950 (0.951) |" in table
    assert [r["modality"] for r in modality_rows(AUDIO)] == ["audio"] and modality_table({}) == ""
    page = results_page({**AUDIO, "depth": DEPTH})
    assert "## Per modality" in page and "| depth | 0.246 -> 0.898" in page


def test_safe_report_joins_the_depth_track_run(tmp_path, capsys):
    demo, depth = tmp_path / "demo", tmp_path / "depth"
    demo.mkdir(), depth.mkdir()
    (demo / "metrics.json").write_text(json.dumps(AUDIO))
    (depth / "metrics.json").write_text(json.dumps({"depth": DEPTH}))
    assert main(["report", "--run-dir", str(demo), "--docs", str(tmp_path / "docs"), "--depth-run", str(depth)]) == 0
    page = (tmp_path / "docs" / "results.md").read_text()
    assert "| depth | 0.246 -> 0.898" in page and "| audio | 0.128 -> 0.923" in page
    assert main(["report", "--run-dir", str(demo), "--docs", str(tmp_path / "d2"), "--depth-run", str(demo)]) == 2
    assert "no depth figures" in capsys.readouterr().err


def test_report_html_has_a_per_modality_section_with_each_target(tmp_path):
    from safe.reporting.modalities import modality_html, targets
    from safe.reporting.report import report_sections, write_report

    rows = {r["modality"]: targets(r) for r in modality_rows({**AUDIO, "depth": DEPTH})}
    # audio: 0.335 vs oracle 0.292 (4.3 points), 0.950 vs 0.951; depth: 0.600 vs 0.406 (19.4 points off)
    assert rows == {"audio": {"use_rate": True, "accuracy": True}, "depth": {"use_rate": False, "accuracy": True}}
    text = write_report({**AUDIO, "depth": DEPTH}, tmp_path / "report.html").read_text()
    section = text[text.index('<section id="modalities">'):]
    section = section[: section.index("</section>")]
    assert "<h2>Per modality</h2>" in section and "<td>0.600 (0.406)</td>" in section
    assert section.count('class="pass">PASS') == 3 and section.count('class="fail">FAIL') == 1
    assert report_sections(AUDIO)["modalities"] is False and modality_html({}) == ""
