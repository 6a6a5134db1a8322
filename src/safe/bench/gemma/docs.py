"""The README's Gemma block and docs/gemma.md's results, generated from the Gemma base's build record
(``safe_gemma_build.json``, written by :func:`safe.bench.gemma.train.build_gemma_base`) and the conversion record
(``conversion.json``): ``python -m safe.bench.gemma.docs`` rewrites what lies between
``<!-- gemma-results:start -->`` and ``<!-- gemma-results:end -->`` in both files."""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safe.atomic import write_atomic
from safe.bench.gemma import lm as gemma_lm
from safe.bench.speech.docs import splice

START, END = "<!-- gemma-results:start -->", "<!-- gemma-results:end -->"
TARGET = 0.90
FAMILIES = ("colour", "shape", "count", "position")


def results_block(build: Mapping[str, Any], conversion: Mapping[str, Any], source: str) -> str:
    """The table of the build: the language model and its fingerprint, what trained, the VL accuracy per family
    against the 0.90 target, and the limits next to the numbers."""
    acc = build["monitor_accuracy"]
    gap = acc["all"] - TARGET
    verdict = "met" if gap >= 0 else f"missed by {-gap * 100:.1f} points"
    rows = [
        ("Language model (frozen from the first step)",
         f"Gemma 3 270M from `{conversion['package']}` (GGUF SHA-256 `{conversion['gguf_sha256'][:16]}...`), "
         f"Q4_K_M dequantised to float32, {conversion['parameters'] / 1e6:.1f}M parameters"),
        ("Its tensors byte-identical to the conversion's",
         f"yes: after loading, after training, and in the saved checkpoint (SHA-256 `{build['lm_sha256'][:16]}...`)"),
        ("Trained: vision side only", _trained(build)),
        (f"VL accuracy ({build['monitor_rows']} test rows, greedy, exact match)",
         f"{acc['all']:.3f} (target {TARGET:.2f}: {verdict})"),
        ("Per family", ", ".join(f"{f} {acc[f]:.2f}" for f in FAMILIES if f in acc)),
    ]
    full = build.get("test_accuracy")
    if full:
        rows.append((f"All {build['test_rows']} VL test rows",
                     f"{full['all']:.3f} ({', '.join(f'{f} {full[f]:.2f}' for f in FAMILIES if f in full)})"))
    table = "|  | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
    return (table + "\n\nSynthetic pictures (coloured shapes on a 3 x 3 grid), a 270M language model, quantised then "
            "dequantised weights, and a vision side SAFE trained itself on these scenes (no package ships a "
            "pretrained image encoder): these figures say what SAFE's vision side learned to tell this Gemma, not what a "
            f"production VLM sees. Generated from `{source}` by `python -m safe.bench.gemma.docs`.\n")


def _trained(build: Mapping[str, Any]) -> str:
    """What trained, how long and on how loaded a machine."""
    cfg = build["config"]
    parts = "the built-in 2-layer CLIP tower (48 px, 9 patches = 9 image tokens) + a LLaVA projector" \
        if cfg.get("lr_tower", 0) > 0 else \
        "a LLaVA projector over the built-in 2-layer CLIP tower (frozen; 48 px, 9 patches = 9 image tokens)"
    warm = next((h["warm_start"] for h in build.get("history", []) if "warm_start" in h), None)
    start = (f"warm start: fitted in {warm['seconds']:.0f} s to Gemma's embeddings of each cell's words "
             f"(relative distance {warm['distance_before']:.2f} -> {warm['distance_after']:.4f}), then ") if warm else ""
    dtype = cfg.get("train_dtype")
    through = f" through a {dtype} copy of the frozen Gemma" if dtype and dtype != "float32" else \
        " through the frozen Gemma in float32 (the build's choice on this CPU: its bfloat16 was slower)" \
        if dtype == "float32" else ""
    load = build.get("load_before")
    where = f"load {load[0]:.0f} to {build['load_after'][0]:.0f} on {build.get('cpus', 2)} cores" \
        if load and build.get("load_after") else "a shared 2-core CPU"
    return (f"{parts}, {build['trainable_parameters'] / 1e3:.0f}K parameters; {start}{build['steps']} steps x "
            f"{cfg['batch_size']} of {build['train_rows']} synthetic VL rows{through}, "
            f"{build['train_seconds'] / 60:.0f} min ({build['torch_threads']} torch threads; {where})")


def write(build_dir: str | Path, lm_dir: str | Path, targets: list[str | Path], source: str | None = None) -> str:
    """Rewrite the Gemma block in each of ``targets`` from the records in ``build_dir`` / ``lm_dir``."""
    build_file = Path(build_dir) / "safe_gemma_build.json"
    if not build_file.is_file():
        raise FileNotFoundError(f"{build_dir}: no safe_gemma_build.json; run `make gemma-base` first")
    conversion = gemma_lm.read_conversion(lm_dir)
    if conversion is None:
        raise FileNotFoundError(f"{lm_dir}: no {gemma_lm.CONVERSION_FILE}; run `make gemma-base` first")
    block = results_block(json.loads(build_file.read_text()), conversion,
                          source or "$SAFE_CACHE/gemma/vl/safe_gemma_build.json")
    for t in targets:
        path = Path(t)
        write_atomic(path, splice(path.read_text(encoding="utf-8"), block, START, END))
    return block


def main(argv: list[str] | None = None) -> int:
    from safe.bench.gemma.__main__ import cache_root

    root = cache_root() / "gemma"
    parser = argparse.ArgumentParser(prog="python -m safe.bench.gemma.docs", description=__doc__.splitlines()[0])
    parser.add_argument("--build", default=str(root / "vl"), help="the Gemma base's folder")
    parser.add_argument("--lm", default=str(root / "lm"), help="the converted Gemma folder")
    parser.add_argument("--targets", nargs="+", default=["README.md", "docs/gemma.md"])
    args = parser.parse_args(argv)
    try:
        print(write(args.build, args.lm, args.targets))
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
