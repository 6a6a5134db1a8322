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
