"""benchmarks/scale.py end to end on the built-in shape, and the latency gate that reads its results."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from safe.evaluation.protocol import ScaleResultsError, latency_gate, load_scale_results

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "scale.py"


def _scale():
    spec = importlib.util.spec_from_file_location("scale_benchmark", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("scale") / "scale.json"
    threads = torch.get_num_threads()
    try:
        rc = _scale().main(["--preset", "builtin", "--batches", "1,4", "--new-tokens", "1,2", "--repeats", "1",
                            "--warmup", "0", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    return out


def test_scale_writes_every_path_per_cell_and_a_table(results):
    res = json.loads(results.read_text())["runs"][0]
    assert res["preset"] == "builtin" and res["device"] == "cpu" and res["threads"] == 1
    assert [(c["batch"], c["new_tokens"]) for c in res["cells"]] == [(1, 1), (4, 1), (1, 2), (4, 2)]
    for c in res["cells"]:
        p = c["paths"]
        assert {"base", "closed", "always", "policy", "skip"} <= set(p)
        assert p["base"]["ratio_to_base"] == 1.0 and p["base"]["added_ms"] == 0.0
        assert all(v["median_ms"] > 0 for v in p.values())
        if c["batch"] == 1:  # a rate of whole queries: derived from the two early paths
            assert p["policy"]["derived"] and "early_audio" in p
            r = c["use_rate"]
            want = r * p["early_audio"]["median_ms"] + (1 - r) * p["skip"]["median_ms"]
            assert p["policy"]["median_ms"] == pytest.approx(want)
        else:
            assert c["use_rate"] == 0.25  # round(0.34 * 4) = 1 row of 4, forced through the preview
    mem = res["shape"]["memory_bytes"]
    assert mem["safe_parts"] > 0 and res["memory"]["cpu_peak_rss_bytes"] > 0
    table = results.with_suffix(".md").read_text()
    assert "`builtin` on cpu" in table and table.count("\n| 4 |") == 2


def test_scale_merges_runs_and_refuses_a_missing_device(results, capsys):
    mod = _scale()
    if not torch.cuda.is_available():
        assert mod.main(["--preset", "llava7b", "--device", "cuda", "--out", str(results)]) == 2
        assert "no CUDA device" in capsys.readouterr().err
    assert mod.main(["--preset", "llava7b", "--device", "cpu"]) == 2
    assert "needs --device cuda" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        mod.parse_args(["--use-rate", "1.5"])
    assert len(json.loads(results.read_text())["runs"]) == 1  # a refused run writes nothing


def test_latency_gate_names_the_shape_it_was_measured_on(results):
    runs = load_scale_results(results)
    gate = latency_gate({"overhead_ms": 1.0}, results)
    cells = [c for c in runs[0]["cells"] if c["batch"] == 1]
    worst = max(c["paths"]["policy"]["added_ms"] for c in cells)
    assert gate["measured"].startswith(f"{worst:.2f} ms on the builtin shape") and gate["shape"] == "builtin"
    assert gate["passed"] == (worst < 50.0)
    # a gate read from a file names the file, the machine and the date it was measured on
    src = gate["source"]
    assert src["file"] == str(results) and f"read from {results}" in gate["measured"]
    assert "CPUs" in src["machine"] and len(src["date"]) == 10 and "not by this run" in gate["measured"]
    proxy = {**runs[0], "preset": "proxy"}
    both = {"runs": [runs[0], proxy]}
    assert latency_gate({}, both)["shape"] == "proxy"  # the larger shape wins
    fallback = latency_gate({"overhead_ms": 4.37}, None)
    assert "4.37 ms on the built-in model shape, measured by this run" in fallback["measured"] and fallback["passed"]
    assert latency_gate({}, None) is None
    with pytest.raises(ScaleResultsError, match="does not exist"):
        latency_gate({}, results.parent / "nope.json")
    with pytest.raises(ScaleResultsError, match="benchmarks/scale.py output"):
        load_scale_results({"cells": []})


def test_the_shipped_results_are_named_as_such():
    from safe.evaluation.protocol import shipped_scale_results

    gate = latency_gate({}, shipped_scale_results())
    assert gate["source"]["file"].startswith("the scale results SAFE ships")
    assert "read from the scale results SAFE ships" in gate["measured"] and "given in memory" not in gate["measured"]
