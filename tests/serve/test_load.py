"""The CI version of benchmarks/load_test.py: a real uvicorn server on loopback, concurrent clients sending
audio and VL-only questions of the test split, batching on and off: zero errors, and batched requests
really share batches."""
import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "load_test.py"


@pytest.fixture(scope="module")
def load_test():
    spec = importlib.util.spec_from_file_location("load_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_small_load_test_has_zero_errors(load_test, policy_run, trained_run):
    run, _ = policy_run
    bench = trained_run[0]
    rows = load_test.run(str(run), str(bench), requests=12, concurrency=(1, 6), time_limit=60, server="thread",
                         rounds=2, max_wait_ms=20, echo=lambda _: None)
    assert len(rows) == 8 and all(r["errors"] == 0 and r["requests"] == 12 for r in rows), rows
    on = [r for r in rows if r["batching"] == "on" and r["concurrency"] == 6]
    off = [r for r in rows if r["batching"] == "off"]
    assert all(r["mean_batch"] > 1 for r in on) and all(r["mean_batch"] == 1 for r in off)
    assert all(r["audio_used"] == 1 for r in rows if r["mode"] == "always-audio")
    table = load_test.table(rows)
    assert table.count("\n") == 9 and "| on | policy | 6 | 12 | 0 |" in table
