"""``safe <command>``: one table from sub-command to the library function that does the work."""
from __future__ import annotations

import argparse
import os
import sys

# Before torch (and MKL) load: MKL otherwise picks its thread count by machine load, which changes float
# summation order, so a long CPU training run (the built-in base models) is not reproducible run to run.
os.environ.setdefault("MKL_DYNAMIC", "FALSE")
os.environ.setdefault("MKL_CBWR", "AUTO")
import time
from pathlib import Path
from typing import Callable


def _add_verify_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", default="llava",
                   help="tiny preset (llava, blip2-opt, blip2-t5) or a local LLaVA / BLIP-2 checkpoint directory")
    p.add_argument("--audio", default="whisper",
                   help="tiny preset (whisper, clap) or a local CLAP / Whisper checkpoint directory")
    p.add_argument("--all-presets", action="store_true", help="verify every tiny base x encoder preset pair")
    p.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16 for the frozen parts")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0")
    p.add_argument("--fusion-layers", default="0,-1", help="comma-separated decoder layers to fuse after")
    p.add_argument("--batch", type=int, default=4, help="verification batch size (>= 2; half the rows use audio)")
    p.add_argument("--run-dir", default=None, help="also record the results under this run directory")


def cmd_verify(args: argparse.Namespace) -> int:
    import torch

    from safe.evaluation.safety import verify_model
    from safe.models import presets
    from safe.models.loading import load_audio_encoder, load_base, parse_dtype
    from safe.models.safe_model import SAFEConfig, SAFEModel
    from safe.runs import RunDir

    if args.batch < 2:
        raise SystemExit(f"--batch must be >= 2 (a mix of audio and no-audio rows), got {args.batch}")
    try:
        layers = [int(v) for v in args.fusion_layers.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"--fusion-layers must be comma-separated integers, got {args.fusion_layers!r}")
    dtype = parse_dtype(args.dtype)
    _check_device(args.device)
    pairs = ([(b, a) for b in presets.BASE_PRESETS for a in presets.AUDIO_PRESETS] if args.all_presets
             else [(args.base, args.audio)])
    results, ok = {}, True
    for base_spec, audio_spec in pairs:
        t0 = time.perf_counter()
        base = load_base(base_spec, dtype, args.device)
        encoder = load_audio_encoder(audio_spec, dtype, args.device)
        model = SAFEModel(base, encoder, SAFEConfig(fusion_layers=layers))
        vl = {k: v.to(args.device) for k, v in presets.random_vl_inputs(base, args.batch, dtype=dtype).items()}
        audio = presets.random_audio(model.audio_encoder.model, args.batch, dtype=dtype).to(args.device)
        mask = (torch.arange(args.batch) % 2 == 0).to(args.device)
        result = verify_model(model, vl, audio, mask)
        ok &= result.passed
        name = f"{base_spec} x {audio_spec}"
        print(f"\n== safe verify: {name} ({args.dtype}, {args.device}) ==")
        print(result.table())
        print()
        print(result.parameter_report.table())
        results[name] = {**result.to_dict(), "seconds": round(time.perf_counter() - t0, 3)}
    print(f"\nverification {'PASSED' if ok else 'FAILED'} for {len(pairs)} model pair(s)")
    if args.run_dir:  # merge, so several verify calls of one run (built-in + presets) all land in metrics.json
        run = RunDir(args.run_dir)
        models = {**run.metrics().get("verify", {}).get("models", {}), **results}
        run.record("verify", {"passed": all(m["passed"] for m in models.values()), "models": models})
    return 0 if ok else 1


def _config_path(path: str) -> str:
    """A recipe path as given, else relative to the source checkout (``safe`` run outside the repo root)."""
    if Path(path).exists():
        return path
    repo = Path(__file__).resolve().parents[2] / path
    return str(repo) if repo.exists() else path


def _check_device(device: str) -> None:
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"--device {device!r} is not a torch device ({err})") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device!r}: this torch build or machine has no CUDA device")


def _cache_dir() -> Path:
    return Path(os.environ.get("SAFE_CACHE", ".cache/safe"))


def _data_and_base(args: argparse.Namespace) -> tuple[Path, Path]:
    """``--data`` and ``--base``, each defaulting to its folder under the cache ($SAFE_CACHE)."""
    return (Path(args.data) if args.data else _cache_dir() / "benchmark",
            Path(args.base) if args.base else _cache_dir() / "base")


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["synth"], help="synth: generate the built-in audio-visual benchmark")
    p.add_argument("--out", default=None, help="output folder (default $SAFE_CACHE/benchmark, SAFE_CACHE=.cache/safe)")
    p.add_argument("--seed", type=int, default=0, help="generation seed (same seed -> byte-identical files)")
    p.add_argument("--tiny", action="store_true", help="a seconds-long miniature (for tests)")
    p.add_argument("--snr-db", type=float, default=None, help="add background noise at this SNR (default clean)")
    p.add_argument("--vl-share", type=float, default=None, help="share of VL-only questions (default 0.65)")
    p.add_argument("--force", action="store_true", help="regenerate even if a complete benchmark is there")


def _synth_config(args: argparse.Namespace):
    from safe.data.synth import SynthConfig

    extra = {k: v for k, v in (("snr_db", args.snr_db), ("vl_share", args.vl_share)) if v is not None}
    return SynthConfig.tiny(seed=args.seed, **extra) if args.tiny else SynthConfig(seed=args.seed, **extra)


def cmd_data(args: argparse.Namespace) -> int:
    from safe.data import synth

    out = Path(args.out) if args.out else _cache_dir() / "benchmark"
    t0 = time.perf_counter()
    synth.generate_benchmark(out, _synth_config(args), progress=True, force=args.force)
    info = synth.load_benchmark_info(out)
    print(f"benchmark at {out} ({time.perf_counter() - t0:.1f} s)")
    for split, n in info["counts"].items():
        families = ", ".join(f"{f} {c}" for f, c in n["families"].items())
        print(f"  {split:<10}{n['total']:>7} examples ({families})")
    return 0


def _add_base_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["build"], help="build: train (or reuse) the built-in VL model and audio encoder")
    p.add_argument("--data", default=None, help="benchmark folder (default $SAFE_CACHE/benchmark; generated if missing)")
    p.add_argument("--out", default=None, help="output folder (default $SAFE_CACHE/base)")
    p.add_argument("--tiny", action="store_true", help="seconds-long builds (for tests; no accuracy floor)")
    p.add_argument("--seed", type=int, default=0, help="seed of both models")
    p.add_argument("--force", action="store_true", help="rebuild even if a matching build is there")
    p.add_argument("--run-dir", default=None, help="also record the results under this run directory")


def _ensure_benchmark(path: Path | None, tiny: bool) -> Path:
    """A benchmark given with --data is used as it is (it must be complete); the default location is
    generated when missing (and reused, byte-identical, when present)."""
    from safe.data import synth

    if path is not None:
        synth.load_benchmark_info(path)  # raises BenchmarkMissingError naming what is wrong
        return path
    path = _cache_dir() / ("benchmark-tiny" if tiny else "benchmark")
    synth.generate_benchmark(path, synth.SynthConfig.tiny() if tiny else synth.SynthConfig(), progress=True)
    return path


def _print_base(manifest: dict) -> None:
    acc = manifest["test_accuracy"]
    print(f"\nbuilt-in VL model, exact match on the test split (generate, greedy):")
    print(f"  {'family':<18}{'accuracy':>9}")
    for fam in [f for f in acc if f != "all"] + ["all"]:
        print(f"  {fam:<18}{acc[fam]:>9.3f}")
    print(f"  VL-only accuracy {manifest['vl_accuracy']:.3f}; audio encoder tag exact match "
          f"{manifest['audio_encoder'].get('tag_exact_match', float('nan')):.3f}")
    print("  deaf-guesser check (the base cannot hear):")
    for fam, c in manifest["deaf_check"].items():
        print(f"    {fam:<16}{c['accuracy']:.3f} <= {c['bound']:.3f} ({c['rule']}): {'PASS' if c['passed'] else 'FAIL'}")
    print(f"  {'reused' if manifest.get('reused') else 'built'} ({manifest['seconds']:.0f} s to build)")


def cmd_base(args: argparse.Namespace) -> int:
    import dataclasses

    from safe.models.builtin import BuiltinConfig, build_builtin_models
    from safe.runs import RunDir

    bench = _ensure_benchmark(Path(args.data) if args.data else None, args.tiny)
    out = Path(args.out) if args.out else _cache_dir() / ("base-tiny" if args.tiny else "base")
    cfg = BuiltinConfig.tiny() if args.tiny else BuiltinConfig()
    cfg.vl = dataclasses.replace(cfg.vl, seed=args.seed)
    cfg.audio = dataclasses.replace(cfg.audio, seed=args.seed)
    manifest = build_builtin_models(bench, out, cfg, force=args.force, progress=True)
    _print_base(manifest)
    print(f"models at {out}/vl and {out}/audio_encoder")
    if args.run_dir:
        RunDir(args.run_dir).record("base", {**manifest, "path": str(out)})
    return 0


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="configs/stage_a_builtin.yaml", help="YAML recipe (keys under stage_a:)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set steps=200 --set safe.lora_rank=4 (repeatable)")
    p.add_argument("--data", default=None, help="benchmark folder (default $SAFE_CACHE/benchmark)")
    p.add_argument("--base", default=None,
                   help="built-in models folder (default $SAFE_CACHE/base) or a local LLaVA / BLIP-2 checkpoint")
    p.add_argument("--audio", default=None, help="local CLAP / Whisper checkpoint (required with a checkpoint --base)")
    p.add_argument("--dtype", default="float32", help="dtype of the frozen parts: float32 | bfloat16 | float16")
    p.add_argument("--template", default=None,
                   help="prompt template with {question} and <image> (checkpoints; default per architecture)")
    p.add_argument("--run-dir", default="runs/stage_a", help="run directory (checkpoints, logs, metrics.json)")
    p.add_argument("--fresh", action="store_true", help="ignore checkpoints in the run directory (default: resume)")
    p.add_argument("--tiny", action="store_true", help="tiny benchmark and models (for tests)")


def _print_stage_a(m: dict) -> None:
    print("\nStage A summary (test split; gate open = each row with its own clip, VL rows with unrelated audio)")
    rows = [
        ("VL accuracy, base", m["vl_accuracy_base"]),
        ("VL accuracy, SAFE gate closed", m["vl_accuracy_gate_closed"]),
        ("VL accuracy, SAFE gate open", m["vl_accuracy_gate_open"]),
        ("VL retention ratio (gate open / base)", m["vl_retention_ratio_gate_open"]),
        ("answers identical to base, gate closed", m["answers_identical_gate_closed"]),
        ("audio-dependent accuracy, base", m["audio_accuracy_base"]),
        ("audio-dependent accuracy, SAFE", m["audio_accuracy"]),
    ]
    if "caption_cider_d" in m:
        rows += [("caption CIDEr-D, base", m["caption_cider_d_base"]), ("caption CIDEr-D, SAFE", m["caption_cider_d"]),
                 ("caption BLEU-2, base", m["caption_bleu2_base"]), ("caption BLEU-2, SAFE", m["caption_bleu2"])]
    for name, v in rows:
        print(f"  {name:<42}{v:>8.3f}")
    print(f"  {'VL answers changed with gate open':<42}{m['vl_answers_changed_gate_open']:>8d} of {m['vl_examples']}")
    print(f"  {'base + encoder byte-identical (sha256)':<42}{'yes' if m['frozen_byte_identical'] else 'NO':>8}")
    print(f"  per family (base -> SAFE gate open):")
    for fam, v in m["per_family"].items():
        print(f"    {fam:<18}{v['base']:>7.3f} -> {v['open']:.3f}")
    print(f"  Stage A took {m['seconds']:.0f} s ({m['train_seconds']:.0f} s training, {m['steps']} steps)")


def cmd_train(args: argparse.Namespace) -> int:
    from safe.models.loading import parse_dtype
    from safe.runs import RunDir
    from safe.training.config import load_stage_a_config
    from safe.training.pipeline import run_stage_a

    overrides = list(args.overrides)
    if args.tiny and not any(o.startswith("safe.fusion_layers") for o in overrides):
        overrides.append("safe.fusion_layers=[0, -1]")  # the tiny built-in LM has 2 decoder layers
    cfg = load_stage_a_config(_config_path(args.config), overrides)
    dtype = parse_dtype(getattr(args, "dtype", "float32"))
    bench = _ensure_benchmark(Path(args.data) if args.data else None, args.tiny)
    base = Path(args.base) if args.base else _cache_dir() / ("base-tiny" if args.tiny else "base")
    if args.base is None and not (base / "manifest.json").is_file():
        cmd_base(argparse.Namespace(action="build", data=str(bench), out=str(base), tiny=args.tiny, seed=0,
                                    force=False, run_dir=None))
    run = RunDir(args.run_dir)
    metrics = run_stage_a(bench, base, cfg, run.path, audio=getattr(args, "audio", None), dtype=dtype,
                          template=getattr(args, "template", None), fresh=args.fresh)
    run.record("stage_a", {k: v for k, v in metrics.items() if k != "samples"})
    _print_stage_a(metrics)
    print(f"SAFE weights: {metrics['checkpoint']}; metrics: {run.metrics_file}")
    return 0 if metrics["frozen_byte_identical"] else 1


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job: benchmark -> built-in base models -> Stage 1 verification -> Stage A -> Stages B/C."""
    from safe.runs import RunDir

    run = RunDir(args.run_dir)
    t0 = time.perf_counter()
    bench = _cache_dir() / "benchmark"
    print("== 1. built-in benchmark ==")
    cmd_data(argparse.Namespace(action="synth", out=str(bench), seed=0, tiny=False, snr_db=None, vl_share=None,
                                force=False))
    print("\n== 2. built-in frozen base models ==")
    base = _cache_dir() / "base"
    cmd_base(argparse.Namespace(action="build", data=str(bench), out=str(base), tiny=False, seed=0, force=False,
                                run_dir=str(run.path)))
    print("\n== 3. Stage 1 safety verification: built-in models and every tiny preset pair ==")
    verify = argparse.Namespace(base=str(base / "vl"), audio=str(base / "audio_encoder"), all_presets=False,
                                dtype="float32", device="cpu", fusion_layers="0,-1", batch=4, run_dir=str(run.path))
    run.record("verify", {})  # this run's verification only
    code = cmd_verify(verify)
    code |= cmd_verify(argparse.Namespace(**{**vars(verify), "all_presets": True}))
    timing = {"verify_done_seconds": round(time.perf_counter() - t0, 1)}
    print("\n== 4. Stage A: projector + gated adapters (configs/stage_a_builtin.yaml) ==")
    code |= cmd_train(argparse.Namespace(config=args.config, overrides=args.overrides, data=str(bench), base=str(base),
                                         run_dir=str(run.path), fresh=args.fresh, tiny=False))
    timing["stage_a_done_seconds"] = round(time.perf_counter() - t0, 1)
    print("\n== 5. Stages B and C: policy (PPO over measured outcomes), baselines, distilled gate ==")
    from safe.cli_policy import cmd_policy

    code |= cmd_policy(argparse.Namespace(action="train", run_dir=str(run.path), data=str(bench), base=str(base),
                                          checkpoint=None, alphas="0,0.1,0.3,0.6", alpha=0.1, steps=200,
                                          seeds=args.seeds, train_rows=2400, hidden=32, epochs=100,
                                          state=args.state))
    timing["policy_done_seconds"] = round(time.perf_counter() - t0, 1)
    print("\n== 6. Evaluation protocol and report ==")
    from safe.cli_eval import cmd_eval

    run.record("timing", {**timing, "seconds": round(time.perf_counter() - t0, 1)})
    code |= cmd_eval(argparse.Namespace(run_dir=str(run.path), data=str(bench), base=str(base), checkpoint=None,
                                        split="test"))
    timing["seconds"] = round(time.perf_counter() - t0, 1)
    run.record("timing", timing)
    from safe.cli_eval import cmd_report

    if args.ablations:
        print("\n== 7. Stage A ablations (safe ablate) ==")
        from safe.cli_eval import cmd_ablate

        code |= cmd_ablate(argparse.Namespace(run_dir=str(run.path), data=str(bench), base=str(base), config=args.config,
                                              overrides=args.overrides, steps=400, seeds=1, only=None, split="test"))
        timing["seconds"] = round(time.perf_counter() - t0, 1)
        run.record("timing", timing)
    cmd_report(argparse.Namespace(run_dir=str(run.path)))  # again, so the report carries the final timing
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f} s; metrics written to {run.metrics_file}")
    return code


def _add_demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-dir", default="runs/demo", help="where results are written")
    p.add_argument("--config", default="configs/stage_a_builtin.yaml", help="Stage A recipe")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a Stage A config field (repeatable)")
    p.add_argument("--fresh", action="store_true", help="retrain Stage A even if the run directory has checkpoints")
    p.add_argument("--seeds", type=int, default=3, help="PPO seeds at the deployed operating point")
    from safe.cli_policy import add_state_arg

    add_state_arg(p)
    p.add_argument("--ablations", action="store_true",
                   help="also run the Stage A ablation grid (safe ablate, 400 steps per entry; about 4 more minutes)")


def _add_predict_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-dir", default=None, help="run directory (checkpoints/policy, else checkpoints/final)")
    p.add_argument("--checkpoint", default=None, help="a SAFE checkpoint directory instead of --run-dir")
    p.add_argument("--base", default=None, help="frozen base (default: the one recorded with the checkpoint)")
    p.add_argument("--audio-model", default=None, help="audio encoder checkpoint (default: the recorded one)")
    p.add_argument("--image", default=None, help="image file for one question")
    p.add_argument("--question", default=None, help="the question (one request)")
    p.add_argument("--audio", default=None, help="audio file (WAV / FLAC / OGG / MP3) for the question")
    p.add_argument("--use-audio", choices=["true", "false"], default=None,
                   help="force the audio path on or off (default: the policy decides, or audio is used when given)")
    p.add_argument("--input", default=None,
                   help="JSON lines, one {question, image, audio, use_audio, id} object a line (relative paths "
                        "from the file's folder); prints one JSON object a line, in order")
    p.add_argument("--batch-size", type=int, default=16, help="questions per generate call with --input")
    p.add_argument("--long-audio", choices=["truncate", "error"], default="truncate",
                   help="clips longer than the audio encoder's window: use the first window (a warning) or refuse")


def cmd_predict(args: argparse.Namespace) -> int:
    """``safe predict``: one JSON object per question on stdout; any error is one line on stderr, exit 2."""
    import json
    import logging

    # the length rule's warnings (a clip cut to the encoder's window) go to stderr, one line each
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("safe predict: warning: %(message)s"))
    log = logging.getLogger("safe.processing")
    log.addHandler(handler)
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # keep stderr to errors and warnings
    hf_logging.set_verbosity_error()
    try:
        from safe.stages.predict import predict, read_requests

        source = args.checkpoint or args.run_dir
        if source is None:
            raise ValueError("give --run-dir DIR (or --checkpoint DIR)")
        if (args.input is None) == (args.question is None):
            raise ValueError("give either --question (with --image / --audio) or --input FILE.jsonl")
        if args.input is not None:
            requests = read_requests(args.input)
        else:
            use = None if args.use_audio is None else args.use_audio == "true"
            requests = [{"question": args.question, "image": args.image, "audio": args.audio, "use_audio": use,
                         "_where": "--question"}]
        results = predict(source, requests, args.base, args.audio_model, args.batch_size, args.long_audio)
    except (ValueError, OSError, TypeError) as err:
        print(f"safe predict: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    finally:
        log.removeHandler(handler)
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    for r in results:
        print(json.dumps(r))
    return 0


def _lazy(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        import importlib

        return getattr(importlib.import_module(module), name)(args)
    return run


def _lazy_args(module: str, name: str) -> Callable[[argparse.ArgumentParser], None]:
    def add(p: argparse.ArgumentParser) -> None:
        import importlib

        getattr(importlib.import_module(module), name)(p)
    return add


# name -> (function, help, argument builder)
COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], str, Callable[[argparse.ArgumentParser], None]]] = {
    "verify": (cmd_verify, "Stage 1 safety verification: bit-exact bypass, frozen weights, parameter table",
               _add_verify_args),
    "data": (cmd_data, "generate the built-in audio-visual benchmark (safe data synth)", _add_data_args),
    "base": (cmd_base, "build the built-in frozen VL model and audio encoder (safe base build)", _add_base_args),
    "train": (cmd_train, "Stage A: train projector + gated adapters (audio CE, retention KL, Fisher, dual ascent)",
              _add_train_args),
    "policy": (_lazy("safe.cli_policy", "cmd_policy"),
               "Stages B and C: PPO policy over measured outcome tables, baselines, Pareto, distilled gate",
               _lazy_args("safe.cli_policy", "add_policy_args")),
    "eval": (_lazy("safe.cli_eval", "cmd_eval"),
             "the evaluation protocol: retention, audio gains, efficiency, attribution, robustness, stage gates",
             _lazy_args("safe.cli_eval", "add_eval_args")),
    "ablate": (_lazy("safe.cli_eval", "cmd_ablate"),
               "Stage A ablations over a config grid (no retention loss, k in {4,8,12,16}, LoRA rank in {4,16})",
               _lazy_args("safe.cli_eval", "add_ablate_args")),
    "report": (_lazy("safe.cli_eval", "cmd_report"), "write report.html from a run's metrics.json",
               _lazy_args("safe.cli_eval", "add_report_args")),
    "predict": (cmd_predict, "answer questions about images and audio with a trained run (one JSON object each)",
                _add_predict_args),
    "demo": (cmd_demo, "run the embedded pipeline end to end on CPU: data, base models, verify, Stages A, B, C",
             _add_demo_args),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="safe", description="SAFE: add audio to a frozen vision-language model.")
    sub = parser.add_subparsers(dest="command", metavar="command")
    for name, (_, help_text, add_args) in COMMANDS.items():
        add_args(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return COMMANDS[args.command][0](args)
    except (ValueError, OSError) as err:  # ConfigError, missing files, broken checkpoints: a message, not a traceback
        print(f"safe {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
