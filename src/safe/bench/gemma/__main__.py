"""``python -m safe.bench.gemma``: build the Gemma 3 270M base (``make gemma-base``): assemble and verify the
GGUF, convert it once into ``$SAFE_CACHE/gemma/lm``, install the built-in base (its vision tower starts the
vision side) and train the vision side into ``$SAFE_CACHE/gemma/vl``; prints the build record's figures.
A killed build resumes where its last checkpoint was."""
from __future__ import annotations

import argparse
import json
import sys


def main(argv=None) -> int:
    from safe.bench.gemma.base import GemmaBaseConfig
    from safe.bench.gemma.lm import MissingExtra, convert
    from safe.bench.gemma.train import build_gemma_base
    from safe.stages.builtin import BaseBuildConfig, SynthStageConfig, build_base, synth
    from safe.stages.common import base_path, cache_dir

    defaults = GemmaBaseConfig()
    p = argparse.ArgumentParser(prog="python -m safe.bench.gemma", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=None, help="output folder (default $SAFE_CACHE/gemma/vl)")
    p.add_argument("--steps", type=int, default=defaults.steps, help="vision-side optimiser steps")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--lr-tower", type=float, default=defaults.lr_tower, help="0 keeps the tower frozen")
    p.add_argument("--force", action="store_true", help="train again even if a matching build is there")
    a = p.parse_args(argv)
    root = cache_dir() / "gemma"
    try:
        lm_dir = convert(root / "lm")
    except MissingExtra as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    bench = synth(SynthStageConfig(out=str(cache_dir() / "benchmark")))
    base = build_base(BaseBuildConfig(data=str(bench.path), out=str(base_path(None))))
    cfg = GemmaBaseConfig(steps=a.steps, batch_size=a.batch_size, lr_tower=a.lr_tower)
    record = build_gemma_base(bench.path, a.out or root / "vl", lm_dir=lm_dir, builtin_vl=base.path / "vl", cfg=cfg,
                              force=a.force)
    print(json.dumps({k: v for k, v in record.items() if k != "history"}, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
