"""``python -m safe.bench.gemma``: build the Gemma 3 270M base (``make gemma-base``): assemble and verify the
GGUF, convert it once into ``$SAFE_CACHE/gemma/lm``, install the built-in base (its vision tower starts the
vision side) and train the vision side into ``$SAFE_CACHE/gemma/vl``; prints the build record's figures.
A killed build resumes where its last checkpoint was."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def cache_root() -> Path:
    """``$SAFE_CACHE`` (default ``.cache/safe``, as every ``safe`` command has it)."""
    return Path(os.environ.get("SAFE_CACHE", ".cache/safe"))


def main(argv=None) -> int:
    from safe.bench.build import build_builtin_models
    from safe.bench.files import generate_benchmark
    from safe.bench.gemma.base import GemmaBaseConfig, fast_dtype
    from safe.bench.gemma.lm import MissingExtra, convert
    from safe.bench.gemma.train import build_gemma_base
    from safe.bench.questions import SynthConfig

    defaults = GemmaBaseConfig()
    p = argparse.ArgumentParser(prog="python -m safe.bench.gemma", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=None, help="output folder (default $SAFE_CACHE/gemma/vl)")
    p.add_argument("--steps", type=int, default=defaults.steps, help="vision-side optimiser steps")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--lr-projector", type=float, default=defaults.lr_projector)
    p.add_argument("--lr-tower", type=float, default=defaults.lr_tower, help="0 keeps the tower frozen")
    p.add_argument("--warm-start-steps", type=int, default=defaults.warm_start_steps,
                   help="steps of the projector's fit to Gemma's word embeddings (0: no warm start)")
    p.add_argument("--train-dtype", choices=("auto", "bfloat16", "float32"), default="auto",
                   help="dtype of the Gemma copy the steps run through (the saved Gemma stays float32; auto: the faster on this CPU)")
    p.add_argument("--eval-every", type=int, default=defaults.eval_every,
                   help="steps between accuracy probes on the 96 monitor rows (0: only at the end)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--force", action="store_true", help="train again even if a matching build is there")
    a = p.parse_args(argv)
    if a.threads > 0:
        import torch

        torch.set_num_threads(a.threads)
    root = cache_root() / "gemma"
    try:
        lm_dir = convert(root / "lm")
    except MissingExtra as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    bench = cache_root() / "benchmark"
    generate_benchmark(bench, SynthConfig(), progress=True)  # reused when already there
    base = cache_root() / "base"
    build_builtin_models(bench, base)  # the shipped build, installed when it matches
    cfg = GemmaBaseConfig(steps=a.steps, batch_size=a.batch_size, lr_projector=a.lr_projector, lr_tower=a.lr_tower,
                          warm_start_steps=a.warm_start_steps, train_dtype=fast_dtype(a.train_dtype),
                          eval_every=a.eval_every)
    record = build_gemma_base(bench, a.out or root / "vl", lm_dir=lm_dir, builtin_vl=base / "vl", cfg=cfg,
                              force=a.force)
    print(json.dumps({k: v for k, v in record.items() if k != "history"}, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
