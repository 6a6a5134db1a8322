"""Data scale: read, prepare and train Stage A on N synthetic rows in published layouts, measuring
peak memory (which must not grow with the media of N rows) and throughput (issue 16).

For each N the script writes (once, into ``--work``) half the rows as AudioCaps (``train.csv`` +
``audio/<youtube_id>_<start>.wav``, 16 kHz mono clips of ``--clip-seconds`` + ``frames/<stem>.jpg``)
and half as VQAv2 (``v2_OpenEnded_mscoco_train2014_questions.json`` + ``v2_mscoco_train2014_annotations.json``
+ ``train2014/COCO_train2014_<id:012d>.jpg``), every clip and image distinct. Then, in a fresh
process per N (so the peak RSS is that N's alone):

1. **check**: ``safe data check`` on a data spec naming both (:func:`safe.stages.data_check.check_data`):
   every row read with media verified (each image opened, each WAV decoded), streamed into the split's
   on-disk record table (:mod:`safe.data.record_table`), interleaved and paired (VQAv2 rows get an
   unrelated AudioCaps clip, seeded), reported and fingerprinted; rows/s;
2. **reopen**: the stages' own ``SpecSource(spec).split("train")``, which finds that table and reuses it
   (a lazy ``Sequence[Example]``: no record is held in memory);
3. **prepare**: :func:`safe.data.prepared.prepare` on that view (tokenise; hash and encode every clip once
   with the built-in tiny audio encoder into a fresh on-disk embedding cache), clips/s;
4. **train**: ``--steps`` Stage A steps (batch ``--batch``) streaming rows through the row stores,
   s/step and the share of it spent fetching rows (batch tensors, image decoding, embedding reads).

Peak RSS is read from ``/proc/self/status`` (``VmHWM``), reset before each phase (``clear_refs``), so
each phase's figure is its own; ``rss_after_model`` is the process with torch and the models loaded.
``--in-memory`` also stacks every pixel and embedding row as the old in-memory ``PreparedSet`` did
(what streaming avoids), for comparison.

    PYTHONPATH=src python benchmarks/data_scale.py --rows 10000 100000 --work /tmp/safe_data_scale \\
        --out docs/data_scale.json

``--only-check`` runs step 1 alone (``safe data check``) and replaces only each N's ``"read"`` entry in ``--out``.
"""
from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # this checkout's safe, first

WORDS = ("dog bark car engine rain wind bird song door knock water splash crowd cheer bell ring man speaks "
         "woman laughs music plays").split()


# ----------------------------------------------------------------------------------------- memory
def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so the next peak is the next phase's own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def mib(n: int) -> float:
    return round(n / 2**20, 1)


# ----------------------------------------------------------------------------------------- data
def generate(work: Path, rows: int, clip_seconds: float, image_size: int, seed: int = 0) -> Path:
    """Write ``rows`` rows (half AudioCaps, half VQAv2) under ``work/n<rows>``; skipped when complete."""
    import numpy as np
    from PIL import Image
    from tqdm.auto import tqdm

    from safe.processing.audio import write_wav

    out = work / f"n{rows}"
    if (out / "COMPLETE").is_file():
        return out
    n_audio, n_vl = rows // 2, rows - rows // 2
    rng = np.random.default_rng(seed)
    pyr = random.Random(seed)
    ac, vq = out / "audiocaps", out / "vqav2"
    for d in (ac / "audio", ac / "frames", vq / "train2014"):
        d.mkdir(parents=True, exist_ok=True)
    sr = 16000
    t = np.arange(int(clip_seconds * sr), dtype=np.float32) / sr

    def image(path: Path) -> None:
        arr = rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8)
        Image.fromarray(arr).save(path, quality=90)

    with open(ac / "train.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["audiocap_id", "youtube_id", "start_time", "caption"])
        for i in tqdm(range(n_audio), desc=f"AudioCaps rows (N={rows})"):
            ytid, start = f"yt{i:09d}", 30
            wave = 0.3 * np.sin(2 * np.pi * (200 + 5 * (i % 300)) * t) + 0.05 * rng.standard_normal(t.size)
            write_wav(ac / "audio" / f"{ytid}_{start}.wav", wave.astype(np.float32), sr)
            image(ac / "frames" / f"{ytid}_{start}.jpg")
            w.writerow([str(i), ytid, start, " ".join(pyr.choices(WORDS, k=4))])
    questions, annotations = [], []
    for i in tqdm(range(n_vl), desc=f"VQAv2 rows (N={rows})"):
        image_id, qid = i + 1, 10 * (i + 1)
        image(vq / "train2014" / f"COCO_train2014_{image_id:012d}.jpg")
        answer = pyr.choice(("yes", "no", "two", "red", "dog"))
        questions.append({"image_id": image_id, "question": f"what is shown {pyr.choice(WORDS)}?", "question_id": qid})
        annotations.append({"question_id": qid, "image_id": image_id, "multiple_choice_answer": answer,
                            "answers": [{"answer": answer, "answer_confidence": "yes", "answer_id": k + 1}
                                        for k in range(10)],
                            "question_type": "what is", "answer_type": "other"})
    (vq / "v2_OpenEnded_mscoco_train2014_questions.json").write_text(
        json.dumps({"data_subtype": "train2014", "questions": questions}))
    (vq / "v2_mscoco_train2014_annotations.json").write_text(json.dumps({"annotations": annotations}))
    (out / "COMPLETE").write_text(str(rows))
    return out


def build_base(work: Path) -> Path:
    """The tiny built-in models (LLaVA + audio encoder), built once under ``work``."""
    from safe import bench as synth
    from safe.bench.build import BuiltinConfig, build_builtin_models

    base = work / "base"
    if not (base / "manifest.json").is_file():
        bench = synth.generate_benchmark(work / "bench", synth.SynthConfig.tiny(), progress=False)
        build_builtin_models(bench, base, BuiltinConfig.tiny(), progress=False)
    return base


# ----------------------------------------------------------------------------------------- measure
def write_spec(data: Path, cache_root: Path) -> Path:
    """The data spec of the generated rows (both sources in train), with its own fresh ``cache_dir``."""
    spec_path = cache_root / "spec.yaml"
    spec_path.write_text(json.dumps({  # JSON is YAML
        "train": [{"reader": "audiocaps", "root": str(data / "audiocaps"), "split": "train",
                   "frames_dir": str(data / "audiocaps" / "frames")},
                  {"reader": "vqav2", "root": str(data / "vqav2"), "split": "train2014"}],
        "cache_dir": str(cache_root), "seed": 0}))
    return spec_path


def measure_check(args) -> dict:
    """``safe data check`` in a fresh process: reads the spec, writes the record table (none exists yet)."""
    from safe.stages.data_check import DataCheckConfig, check_data

    out = {"rss_start_mib": mib(_status("VmRSS"))}
    reset_peak()
    t0 = time.perf_counter()
    check = check_data(DataCheckConfig(spec=args.spec))
    read_s = time.perf_counter() - t0
    split = check.metrics["splits"]["train"]
    print(check.summary(), file=sys.stderr)
    return {**out, "rows": split["rows"], "skipped": sum(s["skipped"] for s in split["sources"]),
            "paired_audio": split["paired_audio"], "seconds": round(read_s, 1),
            "rows_per_s": round(split["rows"] / read_s, 1), "peak_rss_mib": mib(_status("VmHWM")),
            "rss_after_mib": mib(_status("VmRSS"))}


def measure(args) -> dict:
    """A stage's data path in a fresh process: the spec's train split (its record table, reused), prepare, train."""
    import shutil
    import tempfile

    import torch

    from safe.data.embedding_cache import AudioEmbeddingCache
    from safe.data.prepared import encoder_fingerprint, prepare
    from safe.data.spec_source import SpecSource
    from safe.inference.loading import load_safe
    from safe.training.config import load_stage_a_config
    from safe.training.stage_a import StageATrainer

    torch.set_num_threads(args.threads)
    recipe = load_stage_a_config("stage_a_builtin.yaml", [
        f"steps={args.steps}", f"batch_size={args.batch}", "warmup_steps=1", "retention_every=0", "checkpoint_every=0",
        "lambda_fisher=0.0", "retention_examples=16", "safe.fusion_layers=[0, -1]", "safe.num_audio_tokens=4"])
    model, fmt, frontend = load_safe(args.base, recipe)
    out: dict = {"rows": args.rows, "rss_after_model_mib": mib(_status("VmRSS"))}
    cache_root = Path(args.spec).parent

    reset_peak()
    t0 = time.perf_counter()
    rows = SpecSource(args.spec).split("train")  # what every stage does: finds the table check wrote
    out["reopen"] = {"seconds": round(time.perf_counter() - t0, 2), "peak_rss_mib": mib(_status("VmHWM")),
                     "rss_after_mib": mib(_status("VmRSS")), "rows": len(rows), "table": rows.path.name,
                     "table_bytes_per_row": round(rows.path.stat().st_size / len(rows), 1)}

    cache = AudioEmbeddingCache(cache_root / "embeddings", encoder_fingerprint(model.audio_encoder, frontend))
    reset_peak()
    t0 = time.perf_counter()
    # keep_all_bytes=0: always stream (the small-set shortcut would hold the 10K set's images in memory)
    train = prepare(rows, fmt, model, frontend, cache, progress=True, keep_all_bytes=0, workers=args.workers)
    prep_s = time.perf_counter() - t0
    out["prepare"] = {"clips_encoded": cache.misses, "seconds": round(prep_s, 1),
                      "clips_per_s": round(cache.misses / prep_s, 1), "rows_per_s": round(len(rows) / prep_s, 1),
                      "workers": args.workers, "peak_rss_mib": mib(_status("VmHWM")),
                      "rss_after_mib": mib(_status("VmRSS")),
                      "row_bytes": {"pixels": int(train.pixels[0].numel() * 4), "audio": int(train.audio[0].numel() * 4)},
                      # what the prepared set keeps per row (the records stay on disk): packed token ids,
                      # a 32-byte cache key, needs_audio (image paths: read from the record table)
                      "metadata_bytes_per_row": round((train.enc.prompts.nbytes + train.enc.answers.nbytes
                                                       + train.audio.keys.nbytes
                                                       + (8 * len(train.pixels.paths) if isinstance(train.pixels.paths, list) else 0)
                                                       + len(train)) / len(train), 1)}
    if args.in_memory:  # what the old PreparedSet held: every row stacked
        reset_peak()
        stacked = (train.pixels.tensor(), train.audio.tensor())
        out["in_memory"] = {"bytes_mib": mib(sum(t.numel() * t.element_size() for t in stacked)),
                            "peak_rss_mib": mib(_status("VmHWM"))}
        del stacked

    vl_rows = list(itertools.islice((i for i, e in enumerate(rows) if not e.needs_audio), 16))
    retention = train.subset(vl_rows)
    reset_peak()
    run_dir = Path(tempfile.mkdtemp(prefix="safe-stage-a-", dir=args.cache_dir))
    trainer = StageATrainer(model, fmt, train, retention, recipe, run_dir, progress=False)
    fetch = {"s": 0.0}
    inputs = trainer._inputs

    def timed(data, idx):  # the row fetch of each step: tokens -> tensors, pixels decoded, needs_audio
        t = time.perf_counter()
        try:
            return inputs(data, idx)
        finally:
            fetch["s"] += time.perf_counter() - t
    trainer._inputs = timed
    load_audio = train.audio._load

    def timed_audio(positions):  # embeddings read from the on-disk cache (LRU misses)
        t = time.perf_counter()
        try:
            return load_audio(positions)
        finally:
            fetch["s"] += time.perf_counter() - t
    train.audio._load = timed_audio
    t0 = time.perf_counter()
    trainer.fit(resume=False)
    train_s = time.perf_counter() - t0
    out["train"] = {"steps": args.steps, "batch": args.batch, "seconds": round(train_s, 1),
                    "s_per_step": round(train_s / args.steps, 4), "fetch_share": round(fetch["s"] / train_s, 3),
                    "peak_rss_mib": mib(_status("VmHWM")),
                    "row_store_memory_mib": {"pixels": mib(train.pixels.held_bytes), "audio": mib(train.audio.held_bytes)}}
    out["stage_peak_rss_mib"] = max(out[k]["peak_rss_mib"] for k in ("reopen", "prepare", "train"))
    # What the in-memory PreparedSet held for the same rows (every pixel and embedding row stacked).
    out["in_memory_prepared_set_mib"] = mib(len(rows) * sum(out["prepare"]["row_bytes"].values()))
    shutil.rmtree(run_dir, ignore_errors=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, nargs="+", default=[10000, 100000], help="N values (one fresh process each)")
    p.add_argument("--work", default="/tmp/safe_data_scale", help="where the synthetic datasets and models go")
    p.add_argument("--base", default=None, help="built-in base folder (default: build the tiny one in --work)")
    p.add_argument("--clip-seconds", type=float, default=0.5)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--workers", type=int, default=4, help="threads hashing and decoding clips")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--in-memory", action="store_true", help="also stack every row as the old PreparedSet did")
    p.add_argument("--out", default=None, help="JSON file to add the runs to (keyed by N)")
    p.add_argument("--only-check", action="store_true",
                   help="run only the read phase (`safe data check`); with --out, replace only each N's \"read\" entry")
    p.add_argument("--measure", default=None, help=argparse.SUPPRESS)  # internal: the per-N child processes
    p.add_argument("--phase", default="stage", help=argparse.SUPPRESS)
    p.add_argument("--spec", default=None, help=argparse.SUPPRESS)
    p.add_argument("--cache-dir", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    work = Path(args.work)
    if args.measure:
        args.data, args.rows = args.measure, int(Path(args.measure).name[1:])
        print(json.dumps(measure_check(args) if args.phase == "check" else measure(args)))
        return 0
    work.mkdir(parents=True, exist_ok=True)
    base = Path(args.base) if args.base else build_base(work)
    from safe.inference.loading import load_frozen

    vl = load_frozen(base, None)[0]
    image_size = int(vl.config.vision_config.image_size)
    del vl
    results = {}
    for n in args.rows:
        t0 = time.perf_counter()
        data = generate(work, n, args.clip_seconds, image_size)
        gen_s = round(time.perf_counter() - t0, 1)
        import shutil
        import tempfile

        cache_root = Path(tempfile.mkdtemp(prefix="safe-records-", dir=work))  # fresh: nothing read or verified yet
        spec = write_spec(data, cache_root)

        def child(phase: str) -> dict:
            cmd = [sys.executable, __file__, "--measure", str(data), "--phase", phase, "--spec", str(spec),
                   "--base", str(base), "--steps", str(args.steps), "--batch", str(args.batch),
                   "--workers", str(args.workers), "--threads", str(args.threads), "--cache-dir", str(work),
                   *(["--in-memory"] if args.in_memory else [])]
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
            return json.loads(proc.stdout.strip().splitlines()[-1])

        read = child("check")  # `safe data check`: reads the spec, writes the record table
        path = Path(args.out) if args.out else None
        old = json.loads(path.read_text()) if path is not None and path.is_file() else {}
        if args.only_check:  # keep this N's stage figures from the last full run
            res = dict(old.get(str(n), {}))
        else:
            res = child("stage")  # then a stage (its own process) on that table
            res["generate_seconds"] = gen_s
            res["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version()}
            res["clip_seconds"] = args.clip_seconds
        res["read"] = read
        res["peak_rss_mib"] = max(read["peak_rss_mib"], res.get("stage_peak_rss_mib", 0.0))
        shutil.rmtree(cache_root, ignore_errors=True)
        results[str(n)] = res
        print(json.dumps(res, indent=1))
        if path is not None:
            old[str(n)] = res
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(old, indent=1, sort_keys=True))
            os.replace(tmp, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
