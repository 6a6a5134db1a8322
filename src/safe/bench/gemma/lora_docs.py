"""docs/gemma.md's comparison of SAFE with the LoRA baseline, generated from the record
(``lora_baseline.json``, written by :func:`safe.bench.gemma.lora_baseline.compare`):
``python -m safe.bench.gemma.lora_docs RECORD`` rewrites what lies between ``<!-- gemma-lora:start -->`` and
``<!-- gemma-lora:end -->``."""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safe.atomic import write_atomic
from safe.bench.speech.docs import splice

START, END = "<!-- gemma-lora:start -->", "<!-- gemma-lora:end -->"


def _of(n: int, total: int) -> str:
    return f"{n} of {total}"


def _row(label: str, m: Mapping[str, Any], batch: int | str) -> str:
    p = m["parameters"]
    parts = (f"projector {p['projector']:,} + LoRA {p['lora']:,}" if "lora" in p
             else f"projector {p['projector']:,} + adapters {p['adapters']:,}")
    logits = "yes (`torch.equal`)" if m["logits_equal_no_audio"] else f"no (max change {m['logits_max_abs_diff_no_audio']:.3g})"
    return (f"| {label} | {p['trainable']:,} ({parts}) | {m['steps']} x {batch} "
            f"in {m['train_seconds'] / 60:.1f} min "
            f"| {_of(m['text_changed_no_audio'], m['text_prompts'])} / {_of(m['text_changed_unrelated_audio'], m['text_prompts'])} "
            f"| {_of(m['vl_changed_no_audio'], m['vl_questions'])} / {_of(m['vl_changed_unrelated_audio'], m['vl_questions'])} "
            f"| {logits} | {m['spoken_accuracy']:.3f} |")


def _base_note(build: Mapping[str, Any] | None) -> str:
    """What the VL base's own vision side had learned (its build record), which bounds every VL figure."""
    if not build:
        return ""
    acc = (build.get("monitor_accuracy") or {}).get("all")
    return (f" The VL base's vision side was trained {build.get('steps')} steps"
            + (f" (VL accuracy {acc:.3f} on its own probe rows)" if acc is not None else "") + ".")


def block(record: Mapping[str, Any], source: str) -> str:
    """The comparison table, the deaf base's figures, the budget, the load it was measured under, and the limits."""
    cfg = record["config"]
    lc = cfg["lora"]
    head = ("| method | trainable parameters | training (steps x batch, time) | text answers changed: no audio / "
            "unrelated clip | VL answers changed: no audio / unrelated clip | logits without audio = base's | "
            "spoken accuracy |\n|---|---:|---|---|---|---|---:|")
    safe_recipe = cfg.get("safe_recipe")
    safe_batch = safe_recipe.get("batch_size", "?") if isinstance(safe_recipe, dict) else lc["batch_size"]
    rows = [_row("SAFE (gated adapters, Stage A)", record["safe"], safe_batch),
            _row(f"audio prefix + LoRA r={lc['lora_rank']} on {', '.join(lc['target_modules'])} (PEFT)",
                 record["lora"], lc["batch_size"])]
    if cfg.get("safe_run"):
        budget = (f"SAFE's side is the Stage A of `{cfg['safe_run']}` ({record['safe']['steps']} steps of {safe_batch} "
                  f"rows: half audio rows, half typed VL rows with unrelated clips, with its retention KL); the "
                  f"baseline trained {record['lora']['steps']} steps of {lc['batch_size']} audio rows "
                  f"({record['train_audio_rows']} of them) from the same {record['train_rows']} training rows, ")
    else:
        budget = (f"Both methods trained {record['lora']['steps']} steps of {lc['batch_size']} rows from the same "
                  f"{record['train_rows']} training rows (SAFE: half audio rows, half typed VL rows with unrelated "
                  f"clips, with its retention KL; the baseline: audio rows only, {record['train_audio_rows']} of "
                  "them), ")
    base = record["base"]
    ls, le = record["load_average_start"], record["load_average_end"]
    text = (f"{head}\n" + "\n".join(rows) + "\n\n"
            f"The base alone (deaf): spoken accuracy {base['spoken_accuracy']:.3f}, VL accuracy {base['vl_accuracy']:.3f} "
            f"on the same {cfg['n_vl']} typed VL questions. Changed answers are counted against the base's own greedy "
            f"answers: {cfg['n_text']} text-only prompts (no image; `{record['text_source']}`), {cfg['n_vl']} typed VL "
            f"test questions of the speech track, {cfg['n_spoken']} spoken test rows scored by exact match. "
            f"{budget}the same frozen base and Whisper encoder, {record['torch_threads']} torch thread(s); load average "
            f"{ls[0]:.1f} at the start, {le[0]:.1f} at the end, on {record['cpu_count']} cores. "
            f"SAFE's base byte-identical after training: {'yes' if record['safe'].get('base_byte_identical') else 'NO'}."
            f"{_base_note(record.get('vl_base_build'))}\n\n"
            f"Measured {record['date']}. Generated from `{source}` by `python -m safe.bench.gemma.lora_docs`.\n")
    return text


def write(record_path: str | Path, targets: list[str | Path], source: str | None = None) -> str:
    """Rewrite the comparison section in each of ``targets`` from the record at ``record_path``."""
    path = Path(record_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no record; run `python -m safe.bench.gemma.lora_baseline` first")
    text = block(json.loads(path.read_text()), source or str(record_path))
    for t in targets:
        p = Path(t)
        write_atomic(p, splice(p.read_text(encoding="utf-8"), text, START, END))
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m safe.bench.gemma.lora_docs", description=__doc__.splitlines()[0])
    p.add_argument("record", nargs="?", default="runs/gemma-lora/lora_baseline.json")
    p.add_argument("--targets", nargs="+", default=["docs/gemma.md"])
    a = p.parse_args(argv)
    try:
        print(write(a.record, a.targets))
    except (FileNotFoundError, ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
