"""Does the built-in VL base's training depend on torch's thread count? Trains it for a few steps on a built-in
benchmark with a given ``torch.set_num_threads`` and prints the final answer loss and a SHA-256 of the weights.

    python benchmarks/base_threads.py --bench .cache/safe/benchmark --threads 1 --steps 20
    python benchmarks/base_threads.py --bench .cache/safe/benchmark --threads 2 --steps 20

Run it with 1, 2, 2 and 4 threads: equal digests at equal thread counts, different digests otherwise, is what
docs/reproducibility.md reports (CPU reductions are summed in an order that depends on the thread count)."""
from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bench", required=True, help="a built-in benchmark folder (safe data synth --out ...)")
    p.add_argument("--threads", type=int, required=True, help="torch.set_num_threads")
    p.add_argument("--steps", type=int, default=20, help="training steps (the build's own recipe runs 2,500)")
    args = p.parse_args(argv)

    import torch
    from safetensors.torch import load_file

    from safe.bench import files, scenes
    from safe.bench.vl_model import VLBuildConfig, build_vl_model

    torch.set_num_threads(args.threads)
    info = json.loads((Path(args.bench) / "benchmark.json").read_text())
    splits = {s: files.load_split(args.bench, s) for s in info["counts"]}
    train = [e for e in splits["train"] if not e.needs_audio]
    every = [e for s in splits.values() for e in s]
    with tempfile.TemporaryDirectory() as out:
        m = build_vl_model(out, train, every, VLBuildConfig(steps=args.steps), grid=info["config"]["grid"],
                           image_size=info["config"]["image_size"], shapes=scenes.SHAPES,
                           colours=scenes.COLOUR_NAMES, progress=False)
        weights = load_file(str(Path(out) / "model.safetensors"))
    digest = hashlib.sha256()
    for name in sorted(weights):
        digest.update(name.encode())
        digest.update(weights[name].numpy().tobytes())
    print(json.dumps({"threads": args.threads, "steps": args.steps, "final_answer_loss": m["final_answer_loss"],
                      "weights_sha256": digest.hexdigest()[:16]}))


if __name__ == "__main__":
    main()
