"""``safe <command>``: one table from sub-command to the library function that does the work."""
from __future__ import annotations

import argparse
import sys
import time
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
    if args.run_dir:
        RunDir(args.run_dir).record("verify", {"passed": ok, "models": results})
    return 0 if ok else 1


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job. For now: Stage-1 verification of every tiny preset pair."""
    from safe.runs import RunDir

    run = RunDir(args.run_dir)
    t0 = time.perf_counter()
    code = cmd_verify(argparse.Namespace(base="llava", audio="whisper", all_presets=True, dtype="float32",
                                         device="cpu", fusion_layers="0,-1", batch=4, run_dir=str(run.path)))
    run.record("timing", {"seconds": round(time.perf_counter() - t0, 3)})
    print(f"\nmetrics written to {run.metrics_file}")
    return code


# name -> (function, help, argument builder)
COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], str, Callable[[argparse.ArgumentParser], None]]] = {
    "verify": (cmd_verify, "Stage 1 safety verification: bit-exact bypass, frozen weights, parameter table",
               _add_verify_args),
    "demo": (cmd_demo, "run the embedded pipeline end to end on CPU",
             lambda p: p.add_argument("--run-dir", default="runs/demo", help="where results are written")),
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
    except (ValueError, FileNotFoundError) as err:
        print(f"safe {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
