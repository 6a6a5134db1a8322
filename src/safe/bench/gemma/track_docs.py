"""The Gemma track's README block and docs/gemma.md section, generated from a ``safe demo --track gemma`` run's
``metrics.json``::

    python -m safe.bench.gemma.track_docs --run-dir runs/demo-gemma --readme README.md --page docs/gemma.md

It rewrites what lies between ``<!-- gemma-track:start -->`` and ``<!-- gemma-track:end -->`` in each file and
nothing else; a row whose numbers the run lacks is left out, never filled in. Each target of the track is
printed with the measured value and whether it was met.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from safe.atomic import write_atomic
from safe.bench.speech.docs import splice
from safe.bench.speech.track import AUDIO_FAMILIES
from safe.reporting.format import label_value_table

START, END = "<!-- gemma-track:start -->", "<!-- gemma-track:end -->"
#: The track's targets (as :data:`safe.stages.gemma.TARGETS`; bench does not import stages).
OPEN_IDENTICAL, AUDIO_GAIN, USE_RATE_GAP, ACCURACY_GAP, MINUTES = 0.995, 0.30, 0.05, 0.01, 60


def _f(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}f}"


def _met(ok: bool) -> str:
    return "met" if ok else "**missed**"


def _closed(s: Mapping) -> str:
    exact = s["closed_first_token_logits_equal"] and s["closed_mixed_batch_logits_equal"]
    return (f"{_f(s['closed_identical'])} ({s['closed_changed']} of {s['n']} changed); logits torch.equal to the "
            f"base's: {'yes' if exact else 'NO'} (first answer token, every batch; every position, a mixed batch)")


def _open(s: Mapping) -> str:
    out = (f"{_f(s['open_identical'])} identical ({s['open_changed']} of {s['n']} changed; target >= "
           f"{OPEN_IDENTICAL}: {_met(s['open_identical'] >= OPEN_IDENTICAL)}); mean KL of the first answer token "
           f"{s['open_mean_kl']:.2e} nats (largest {s['open_max_kl']:.2e})")
    sc = s.get("scored")
    if sc:
        out += (f"; on the {sc['n']} rows with a known answer: base {_f(sc['base_accuracy'])}, gate open "
                f"{_f(sc['open_accuracy'])}, McNemar p {_f(sc['mcnemar']['pvalue'])}")
    return out


def _gain(m: Mapping) -> str:
    a = m["stage_a"]
    gain = a["audio_accuracy"] - a["audio_accuracy_base"]
    return (f"{_f(a['audio_accuracy'])} / {_f(a['audio_accuracy_base'])} ({100 * gain:+.1f} points; target "
            f"+{100 * AUDIO_GAIN:.0f}: {_met(gain >= AUDIO_GAIN)})")


def _use(m: Mapping) -> str:
    t = m["policy"]["test"]
    gap = t["use_rate"] - t["oracle_use_rate"]
    return (f"{_f(t['use_rate'])} / {_f(t['oracle_use_rate'])} ({100 * gap:+.1f} points; target within "
            f"{100 * USE_RATE_GAP:.0f}: {_met(abs(gap) <= USE_RATE_GAP)})")


def _acc(m: Mapping) -> str:
    p, always = m["policy"]["test"]["accuracy"], m["policy"]["baselines"]["always"]["accuracy"]
    return (f"{_f(p)} / {_f(always)} ({100 * (p - always):+.1f} points; target within {100 * ACCURACY_GAP:.0f}: "
            f"{_met(p >= always - ACCURACY_GAP)})")


def _digests(m: Mapping) -> str:
    d = m["gemma"]["lm_sha256"]
    places = [k for k in d if k not in ("expected", "all_equal")]
    return (f"{'yes' if d['all_equal'] else 'NO'}: `{d['expected'][:16]}...` at each of {', '.join(places)} "
            f"(the saved base before and after each stage; the model in memory before and after the retention "
            f"measurements); Stage A's own check (the base and encoder in memory): "
            f"{'byte-identical' if m['stage_a']['frozen_byte_identical'] else 'CHANGED'}")


def _time(m: Mapping) -> str:
    t, a = m["timing"], m["stage_a"]
    minutes = t["seconds"] / 60
    load = t.get("load_average")
    return (f"{minutes:.0f} min (target <= {MINUTES}: {_met(minutes <= MINUTES)}); Stage A {a['steps']} steps x "
            f"{a['config']['batch_size']} in {a['train_seconds'] / 60:.0f} min; {m['gemma']['torch_threads']} torch "
            f"thread(s)" + (f"; 1-minute load average {min(load.values()):.1f} to {max(load.values()):.1f} on "
                            f"this shared machine" if load else ""))


ROWS: list[tuple[str, Callable[[Mapping], str]]] = [
    ("Text-only prompts (facts, completions, arithmetic; reference: the base's own answer), gate closed",
     lambda m: _closed(m["gemma"]["text"])),
    ("Text-only prompts, gate open with an unrelated clip", lambda m: _open(m["gemma"]["text"])),
    ("VL questions (typed, each with an unrelated clip), gate closed", lambda m: _closed(m["gemma"]["vl"])),
    ("VL questions, gate open", lambda m: _open(m["gemma"]["vl"])),
    ("Spoken questions and facts: SAFE / deaf base", _gain),
    ("Per audio family: SAFE / deaf base", lambda m: ", ".join(
        f"{fam} {_f(m['stage_a']['per_family'][fam]['open'], 2)} / {_f(m['stage_a']['per_family'][fam]['base'], 2)}"
        for fam in AUDIO_FAMILIES if fam in m["stage_a"]["per_family"])),
    ("Audio-use rate: policy / oracle", _use),
    ("Accuracy: policy / always-audio", _acc),
    ("Gemma's tensors, SHA-256 at every stage boundary", _digests),
    ("SAFE's trainable parameters", lambda m: (
        f"{m['stage_a']['parameters']['total']['trainable']:,} ({100 * m['stage_a']['parameters']['total']['trainable'] / m['stage_a']['parameters']['total']['parameters']:.2f}% "
        f"of the {m['stage_a']['parameters']['total']['parameters']:,} in all)")),
    ("Track run time, end to end", _time),
]


def block(metrics: Mapping[str, Any], run_dir: str = "runs/demo-gemma") -> str:
    """The track's table from ``metrics.json``, then the limits and where the numbers come from."""
    table = label_value_table(metrics, ROWS)
    if not table:
        return "No Gemma-track results in this run's metrics.json yet: run `make demo-gemma`.\n"
    return (table + "\n"
            "Test split of the Gemma track. Synthetic pictures whose vision side SAFE trained itself (no PyPI package "
            "ships a pretrained image encoder), a 270M language model, Q4_K_M weights dequantised to float32, eSpeak NG "
            f"voices. Generated from `{run_dir}/metrics.json` by `make docs-gemma`.\n")


def write(run_dir: str | Path, files: list[str | Path]) -> str:
    """Rewrite the block in each of ``files`` from ``run_dir/metrics.json`` (atomically); return the block."""
    metrics_file = Path(run_dir) / "metrics.json"
    if not metrics_file.is_file():
        raise FileNotFoundError(f"--run-dir {run_dir}: no metrics.json; run `make demo-gemma` first")
    text = block(json.loads(metrics_file.read_text()), str(run_dir))
    for f in files:
        path = Path(f)
        write_atomic(path, splice(path.read_text(encoding="utf-8"), text, START, END))
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m safe.bench.gemma.track_docs", description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default="runs/demo-gemma", help="the Gemma track's run directory")
    parser.add_argument("--readme", default="README.md", help="README with the gemma-track markers")
    parser.add_argument("--page", default="docs/gemma.md", help="docs page with the gemma-track markers")
    args = parser.parse_args(argv)
    try:
        print(write(args.run_dir, [args.readme, args.page]))
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
