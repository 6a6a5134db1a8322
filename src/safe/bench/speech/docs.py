"""The README's speech-track block, generated from a ``safe demo --track speech`` run's ``metrics.json``::

    python -m safe.bench.speech.docs --run-dir runs/demo-speech --readme README.md   # make docs-speech

It rewrites what lies between ``<!-- speech-results:start -->`` and ``<!-- speech-results:end -->`` and
nothing else; a row whose numbers the run lacks is left out, never filled in.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from safe.atomic import write_atomic
from safe.bench.speech.track import AUDIO_FAMILIES
from safe.reporting.format import label_value_table

START, END = "<!-- speech-results:start -->", "<!-- speech-results:end -->"


def _f(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _pts(x: float) -> str:
    return f"{abs(100 * x):.1f}"


def _voices(m: Mapping, split: str) -> str:
    return ", ".join(f"{v} {_f(r['safe'], 2)}" for v, r in m["speech"]["per_voice"][split].items())


def _mean_voice(m: Mapping, split: str, who: str) -> float:
    rows = m["speech"]["per_voice"][split].values()
    return sum(r[who] * r["n"] for r in rows) / sum(r["n"] for r in rows)


def _encoder(m: Mapping) -> str:
    c = m["speech"]["encoder_cost"]
    return (f"{_f(c['flops_share'], 2)} of the FLOPs ({c['flops_per_clip'] / 1e9:.2f} GFLOPs per clip); "
            f"{c['ms_per_clip']:.1f} ms per clip at batch {c['batch']}, one thread")


def _window(m: Mapping) -> str:
    w, enc = m["speech"]["window_check"], m["speech"]["encoder"]
    s = w["encoder_seconds_per_clip"]
    return (f"{enc['window_seconds']:g} s window: spoken text identified {_f(w['text_id_accuracy_cut'])} vs "
            f"{_f(w['text_id_accuracy_full'])} with 30 s ({w['clips']} clips); encoder {1000 * s['cut']:.0f} vs "
            f"{1000 * s['full']:.0f} ms per clip")


ROWS: list[tuple[str, Callable[[Mapping], str]]] = [
    ("VL accuracy: gate closed / gate open / base", lambda m: (
        f"{_f(m['stage_a']['vl_accuracy_gate_closed'])} / {_f(m['stage_a']['vl_accuracy_gate_open'])} / "
        f"{_f(m['stage_a']['vl_accuracy_base'])} ({m['stage_a']['vl_answers_changed_gate_open']} of "
        f"{m['stage_a']['vl_examples']} answers changed, gate open; retention "
        f"{_f(m['stage_a']['vl_retention_ratio_gate_open'], 4)})")),
    ("Answers identical to the base, gate closed", lambda m: _f(m["stage_a"]["answers_identical_gate_closed"])),
    ("Audio-row accuracy (spoken questions and facts): SAFE / deaf base", lambda m: (
        f"{_f(m['stage_a']['audio_accuracy'])} / {_f(m['stage_a']['audio_accuracy_base'])} "
        f"(+{_pts(m['stage_a']['audio_accuracy'] - m['stage_a']['audio_accuracy_base'])} points)")),
    ("Per audio family: SAFE / deaf base", lambda m: ", ".join(
        f"{fam} {_f(m['stage_a']['per_family'][fam]['open'], 2)} / {_f(m['stage_a']['per_family'][fam]['base'], 2)}"
        for fam in AUDIO_FAMILIES if fam in m["stage_a"]["per_family"])),
    ("Per voice, trained voices at unheard speeds and pitches (test)", lambda m: _voices(m, "test")),
    ("Per voice, held-out voices (ood_test): SAFE / deaf base", lambda m: (
        f"{_voices(m, 'ood_test')} (all: {_f(_mean_voice(m, 'ood_test', 'safe'))} / "
        f"{_f(_mean_voice(m, 'ood_test', 'base'))})")),
    ("Policy accuracy / always-audio", lambda m: (
        f"{_f(m['policy']['test']['accuracy'])} / {_f(m['policy']['baselines']['always']['accuracy'])} "
        f"({_pts(m['policy']['baselines']['always']['accuracy'] - m['policy']['test']['accuracy'])} points "
        f"{'under' if m['policy']['test']['accuracy'] <= m['policy']['baselines']['always']['accuracy'] else 'above'})")),
    ("Audio-use rate: policy / oracle", lambda m: (
        f"{_f(m['policy']['test']['use_rate'])} / {_f(m['policy']['test']['oracle_use_rate'])} "
        f"({_pts(m['policy']['test']['use_rate'] - m['policy']['test']['oracle_use_rate'])} points "
        f"{'above' if m['policy']['test']['use_rate'] >= m['policy']['test']['oracle_use_rate'] else 'under'})")),
    ("Latency, policy / always-audio (deployed gate, end to end)", lambda m: (
        " / ".join(_f(r["policy_to_always"], 2) for r in m["policy"]["latency_by_batch"].values())
        + f" (batch {' / '.join(m['policy']['latency_by_batch'])})")),
    ("Audio encoder's share of an always-audio query", _encoder),
    ("Encoder window", _window),
    ("Frozen base and encoder byte-identical after training",
     lambda m: "yes" if m["stage_a"]["frozen_byte_identical"] else "NO"),
    ("Track run time, end to end", lambda m: (
        f"{m['timing']['seconds']:.0f} s ({m['timing']['stage_a_done_seconds'] - m['timing']['models_done_seconds']:.0f} s "
        f"Stage A; {m['speech']['torch_threads']} torch thread(s))")),
]


def readme_block(metrics: Mapping[str, Any]) -> str:
    """The speech track's table from ``metrics.json``, then a line saying where it comes from."""
    table = label_value_table(metrics, ROWS)
    if not table:
        return "No speech-track results in this run's metrics.json yet: run `make demo-speech`.\n"
    return (table + "\n"
            "Test split of the speech track (held-out voices: its `ood_test` split); generated from "
            "`runs/demo-speech/metrics.json` by `make docs-speech`. How the track is built and measured: "
            "[docs/speech.md](docs/speech.md).\n")


def splice(text: str, block: str, start: str = START, end: str = END) -> str:
    """``text`` with the part between the ``start`` and ``end`` markers (default the speech block's) replaced by
    ``block`` (ValueError naming the markers when they are missing)."""
    if start not in text or end not in text or text.index(start) > text.index(end):
        raise ValueError(f"the file has no {start} ... {end} markers to write the block between")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{block}{end}{tail}"


def write_readme(run_dir: str | Path, readme: str | Path) -> str:
    """Rewrite the README's speech block from ``run_dir/metrics.json`` (atomically); return the block."""
    metrics_file = Path(run_dir) / "metrics.json"
    if not metrics_file.is_file():
        raise FileNotFoundError(f"--run-dir {run_dir}: no metrics.json; run `make demo-speech` first")
    block = readme_block(json.loads(metrics_file.read_text()))
    path = Path(readme)
    new = splice(path.read_text(encoding="utf-8"), block)
    write_atomic(path, new)
    return block


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m safe.bench.speech.docs", description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default="runs/demo-speech", help="the speech demo's run directory")
    parser.add_argument("--readme", default="README.md", help="README with the speech-results markers")
    args = parser.parse_args(argv)
    try:
        print(write_readme(args.run_dir, args.readme))
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
