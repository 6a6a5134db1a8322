"""The README's speech-track block: generated from metrics.json between its markers, rows without numbers left
out, and `safe demo` offers the track."""
from __future__ import annotations

import json

import pytest

from safe.bench.speech import docs

METRICS = {
    "stage_a": {"vl_accuracy_gate_closed": 1.0, "vl_accuracy_gate_open": 0.99667, "vl_accuracy_base": 1.0,
                "vl_answers_changed_gate_open": 1, "vl_examples": 300, "vl_retention_ratio_gate_open": 0.99667,
                "answers_identical_gate_closed": 1.0, "audio_accuracy": 0.9, "audio_accuracy_base": 0.25,
                "frozen_byte_identical": True,
                "per_family": {"colour": {"open": 1.0, "base": 1.0}, "spoken_question": {"open": 0.8, "base": 0.3},
                               "spoken_shape": {"open": 1.0, "base": 0.0}}},
    "speech": {"per_voice": {"test": {"en-us": {"n": 10, "safe": 0.9, "base": 0.2}},
                             "ood_test": {"en-us+m1": {"n": 30, "safe": 0.8, "base": 0.3},
                                          "en+f4": {"n": 10, "safe": 0.4, "base": 0.1}}}},
}


def test_block_holds_the_run_numbers_and_leaves_missing_rows_out():
    block = docs.readme_block(METRICS)
    assert "| VL accuracy: gate closed / gate open / base | 1.000 / 0.997 / 1.000 (1 of 300 answers changed" in block
    assert "| Audio-row accuracy (spoken questions and facts): SAFE / deaf base | 0.900 / 0.250 (+65.0 points) |" in block
    assert "| Per audio family: SAFE / deaf base | spoken_question 0.80 / 0.30, spoken_shape 1.00 / 0.00 |" in block
    # held-out voices, weighted by their question counts: (0.8 * 30 + 0.4 * 10) / 40 = 0.7
    assert "en-us+m1 0.80, en+f4 0.40 (all: 0.700 / 0.250)" in block
    assert "Policy accuracy" not in block and "Latency" not in block  # no policy stage in these metrics
    assert docs.readme_block({}).startswith("No speech-track results")


def test_readme_is_rewritten_between_the_markers_only(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text(json.dumps(METRICS))
    readme = tmp_path / "README.md"
    readme.write_text(f"# top\n{docs.START}\nold\n{docs.END}\ntail\n")
    assert docs.main(["--run-dir", str(tmp_path / "run"), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith(f"# top\n{docs.START}\n|  | value |") and text.endswith(f"{docs.END}\ntail\n")
    assert "old" not in text
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="speech-results:start"):
        docs.write_readme(tmp_path / "run", readme)
    assert docs.main(["--run-dir", str(tmp_path / "nowhere"), "--readme", str(readme)]) == 2


def test_demo_has_the_track_option():
    from safe.stages.demo import DemoConfig

    assert DemoConfig().track == "synthetic"
    assert DemoConfig(track="speech").track == "speech"
