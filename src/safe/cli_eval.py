"""``safe eval`` (the evaluation protocol, written into metrics.json and report.html), ``safe report`` and
``safe ablate`` (the Stage A ablation grid)."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-dir", default="runs/demo", help="run directory with checkpoints/policy and metrics.json")
    p.add_argument("--data", default=None, help="benchmark folder (default $SAFE_CACHE/benchmark)")
    p.add_argument("--base", default=None, help="built-in models folder (default $SAFE_CACHE/base)")
    p.add_argument("--checkpoint", default=None, help="SAFE + policy checkpoint (default <run-dir>/checkpoints/policy)")
    p.add_argument("--split", default="test", help="benchmark split to evaluate on")


def add_report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-dir", default="runs/demo", help="run directory whose metrics.json becomes report.html")
    p.add_argument("--export-plots", default=None, metavar="DIR",
                   help="also write every plot of the report to DIR as PNG files (for papers and the README)")


def print_gates(gates: list[dict]) -> None:
    print("\nStage gates (proposal section 14), measured:")
    for g in gates:
        print(f"  {'PASS' if g['passed'] else 'FAIL'}  {g['gate']:<60} target {g['target']:<34} measured {g['measured']}")


def cmd_eval(args: argparse.Namespace) -> int:
    from safe.cli import _data_and_base
    from safe.data.embedding_cache import AudioEmbeddingCache
    from safe.evaluation.protocol import run_eval
    from safe.runs import RunDir
    from safe.training.data import encoder_fingerprint
    from safe.training.pipeline import load_trained

    run = RunDir(args.run_dir)
    bench, base = _data_and_base(args)
    ckpt = Path(args.checkpoint) if args.checkpoint else run.path / "checkpoints" / "policy"
    model, fmt, frontend = load_trained(base, ckpt)
    if model.policy is None:
        raise ValueError(f"{ckpt} has no policy attached: run `safe policy train --run-dir {run.path}` first")
    cache = AudioEmbeddingCache(bench / ".embedding_cache", encoder_fingerprint(model.audio_encoder, frontend))
    metrics = run.metrics()
    ev = run_eval(model, fmt, frontend, bench, cache, policy_metrics=metrics.get("policy"),
                  stage_a=metrics.get("stage_a"), split=args.split)
    run.record("eval", ev)
    r, g = ev["retention"], ev["audio_gains"]
    print(f"\nevaluation on {ev['split']} ({ev['examples']} examples, {ev['seconds']:.0f} s)")
    print("  VL accuracy: " + ", ".join(f"{k} {v:.4f}" for k, v in r["vl_accuracy"].items()))
    print("  audio accuracy [95% CI]: " + ", ".join(f"{k} {v['mean']:.3f} [{v['ci_low']:.3f}, {v['ci_high']:.3f}]"
                                                 for k, v in g["audio_accuracy"].items()))
    rob = ev["robustness"]
    print("  SNR sweep (audio accuracy): " + ", ".join(
        f"{'clean' if p['snr_db'] is None else str(int(p['snr_db'])) + ' dB'} {p['audio_accuracy']:.3f}" for p in rob["snr_sweep"]))
    print(f"  misaligned clips: audio accuracy {rob['misaligned']['audio_accuracy']:.3f} (aligned "
          f"{rob['misaligned']['aligned_audio_accuracy']:.3f}); irrelevant audio on VL questions: policy false "
          f"positives {rob['irrelevant']['false_positive_rate']:.4f}, answers changed with the gate forced open "
          f"{rob['irrelevant']['answers_changed']} of {rob['irrelevant']['n']}")
    if "ood_sounds" in rob:
        o = rob["ood_sounds"]
        print(f"  held-out sound kinds: audio accuracy {o['audio_accuracy']:.3f} vs in-domain "
              f"{o['in_domain_audio_accuracy']:.3f} (base {o['base_audio_accuracy']:.3f}, {o['n']} questions)")
    sh = ev["attribution"]["shapley"]
    print(f"  Shapley (mean per question): image {sh['image_mean']:.3f}, audio {sh['audio_mean']:.3f}")
    e = ev["efficiency"]
    fl = e["flops_per_query"]
    print(f"  FLOPs per query (audio encoder included; first {e['flops_rows']} rows, {e['flops_rows_using_audio']} "
          f"using audio with the policy): base {fl['base']:.3g}, always-audio {fl['always_audio']:.3g}, "
          f"policy {fl['policy']:.3g}")
    print_gates(ev["stage_gates"])
    return cmd_report(argparse.Namespace(run_dir=str(run.path)))


def cmd_report(args: argparse.Namespace) -> int:
    from safe.evaluation.report import render_plots, report_sections, write_report
    from safe.runs import RunDir

    run = RunDir(args.run_dir)
    metrics = run.metrics()
    if not metrics:
        raise FileNotFoundError(f"{run.metrics_file} is missing or empty: run the pipeline (make demo) first")
    figures = render_plots(metrics)  # drawn once: embedded in the report, and the same bytes exported
    path = write_report(metrics, run.path / "report.html", figures=figures)
    missing = [k for k, v in report_sections(metrics).items() if not v]
    print(f"\nreport: {path.resolve()}" + (f" (sections not run: {', '.join(missing)})" if missing else ""))
    if getattr(args, "export_plots", None):
        from safe.evaluation.report import export_plots

        written = export_plots(metrics, args.export_plots, figures=figures)
        print(f"{len(written)} plots written to {Path(args.export_plots).resolve()}: "
              + ", ".join(p.name for p in written))
    return 0


def add_ablate_args(p: argparse.ArgumentParser) -> None:
    from safe.training.ablation import STAGE_A_GRID

    p.add_argument("--run-dir", default="runs/demo", help="run directory: results under <run-dir>/ablations, "
                   "the table in metrics.json (key 'ablations') and report.html")
    p.add_argument("--data", default=None, help="benchmark folder (default $SAFE_CACHE/benchmark)")
    p.add_argument("--base", default=None, help="built-in models folder (default $SAFE_CACHE/base)")
    p.add_argument("--config", default="configs/stage_a_builtin.yaml", help="the Stage A recipe every entry starts from")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field for every entry (repeatable)")
    p.add_argument("--steps", type=int, default=400,
                   help="Stage A steps of every entry (the same for all, so entries compare; default 400)")
    p.add_argument("--seeds", type=int, default=1, help="seeds per entry (mean and 95%% CI over seeds)")
    p.add_argument("--only", action="append", default=None, metavar="NAME",
                   help=f"run only this entry (repeatable); entries: {', '.join(STAGE_A_GRID)}")
    p.add_argument("--split", default="test", help="benchmark split the entries are scored on")


def cmd_ablate(args: argparse.Namespace) -> int:
    from safe.cli import _config_path, _data_and_base
    from safe.runs import RunDir
    from safe.training.ablation import run_ablations

    run = RunDir(args.run_dir)
    bench, base = _data_and_base(args)
    for what, path in (("--data", bench / "benchmark.json"), ("--base", base / "manifest.json")):
        if not path.is_file():
            raise FileNotFoundError(f"{what}: {path.parent} has no {path.name}; run `make demo` (or safe data synth / "
                                    "safe base build) first")
    result = run_ablations(bench, base, _config_path(args.config), run.path / "ablations", overrides=args.overrides,
                           steps=args.steps, seeds=args.seeds, names=args.only, eval_split=args.split)
    run.record("ablations", result)
    print(f"\nStage A ablations on {result['split']} ({result['steps']} steps each, {result['seeds']} seed(s), "
          f"{result['seconds']:.0f} s)")
    print(f"  {'entry':<20}{'audio acc':>10}{'VL acc open':>13}{'VL changed':>12}{'CIDEr-D':>9}{'trainable':>11}")
    for r in result["rows"]:
        print(f"  {r['name']:<20}{r['audio_accuracy']:>10.3f}{r['vl_accuracy_gate_open']:>13.3f}"
              f"{r['vl_answers_changed_gate_open']:>12.1f}{r.get('caption_cider_d', float('nan')):>9.3f}"
              f"{r['trainable_parameters']:>11,}")
    recorded = run.metrics()
    policy = recorded.get("policy")
    if policy:  # the Stage B half of the grid comes from this run's `safe policy train`
        from safe.evaluation.protocol import stage_b_ablations

        print(f"\nStage B ablations on {policy['config']['eval_split']} (from this run's safe policy train)")
        print(f"  {'entry':<54}{'accuracy':>9}{'VL acc':>8}{'audio acc':>10}{'use rate':>9}")
        for r in stage_b_ablations(policy)["rows"]:
            print(f"  {r['name']:<54}{r['accuracy']:>9.4f}{r['vl_accuracy']:>8.3f}{r['audio_accuracy']:>10.3f}"
                  f"{r['use_rate']:>9.3f}")
    else:
        print("\n(no Stage B in this run: `safe policy train` adds lambda = 0 and the heuristic gates to the grid)")
    if recorded.get("eval"):
        return cmd_report(argparse.Namespace(run_dir=str(run.path)))
    return 0
