"""``safe policy train`` (Stages B and C) and ``safe policy distill`` (Stage C again, from saved tables)."""
from __future__ import annotations

import argparse
import math
from pathlib import Path


def add_policy_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["train", "distill"],
                   help="train: outcome tables, PPO over alphas, baselines, distillation, deployed gate; "
                        "distill: Stage C again from the tables and PPO policy a train run saved")
    p.add_argument("--run-dir", default="runs/demo", help="run directory (Stage A checkpoint under checkpoints/final)")
    p.add_argument("--data", default=None, help="benchmark folder (default $SAFE_CACHE/benchmark)")
    p.add_argument("--base", default=None, help="built-in models folder (default $SAFE_CACHE/base)")
    p.add_argument("--checkpoint", default=None, help="Stage A SAFE checkpoint (default <run-dir>/checkpoints/final)")
    p.add_argument("--alphas", default="0,0.1,0.3,0.6", help="comma-separated final latency weights (Pareto sweep)")
    p.add_argument("--alpha", type=float, default=0.1, help="the deployed operating point (one of --alphas)")
    p.add_argument("--steps", type=int, default=200, help="PPO updates per run")
    p.add_argument("--seeds", type=int, default=3, help="PPO seeds at the deployed alpha")
    p.add_argument("--train-rows", type=int, default=2400, help="train-split rows added to val for the policy")
    p.add_argument("--hidden", type=int, default=32, help="Stage C gate width")
    p.add_argument("--epochs", type=int, default=100, help="Stage C epochs")
    add_state_arg(p)


def add_state_arg(p: argparse.ArgumentParser) -> None:
    from safe.policy.features import STATE_KINDS

    p.add_argument("--state", choices=list(STATE_KINDS), default=STATE_KINDS[0],
                   help="state the policy is trained on (train; distill reads it from the saved policy). early "
                        "(default): question, image and preview only, decided before the language model runs; "
                        "cascade: the proposal's state with the base's confidence (the base answers first)")


def _alphas(text: str) -> list[float]:
    try:
        return [float(a) for a in text.split(",") if a.strip()]
    except ValueError:
        raise ValueError(f"--alphas must be comma-separated numbers, got {text!r}") from None


def print_policy(m: dict) -> None:
    t, b = m["test"], m["baselines"]
    state = m["config"].get("state", "cascade")  # runs recorded before --state existed were cascade runs
    print(f"\nStage B/C on the {m['config']['eval_split']} split ({m['rows']['test']} rows; policy trained on "
          f"{m['rows']['train']} rows of train + val; {state} state, {m['state_dim']} features)")
    print(f"  {'gate':<26}{'accuracy':>9}{'VL acc':>8}{'audio acc':>10}{'use rate':>9}{'ms/query':>9}{'VL FP':>7}")
    rows = [(f"PPO policy (alpha={m['alpha']:g})", t)] + [(k, b[k]) for k in
            ("distilled", "always", "never", "oracle", "random", "confidence", "entropy", "no_constraint")]
    for name, r in rows:
        print(f"  {name:<26}{r['accuracy']:>9.4f}{r['vl_accuracy']:>8.3f}{r['audio_accuracy']:>10.3f}"
              f"{r['use_rate']:>9.3f}{r['mean_latency_ms']:>9.3f}{r['false_positive_rate']:>7.3f}")
    print("  (random / confidence / entropy at the policy's use rate; no_constraint = PPO with lambda fixed at 0)")
    print("  Pareto table (accuracy vs mean ms per query; thresholds swept over their whole range):")
    for p in [p for p in m["pareto"] if p["kind"] == "ppo"]:
        print(f"    {p['name']:<18} acc {p['accuracy']:.4f}  {p['mean_latency_ms']:.3f} ms  use {p['use_rate']:.3f}  "
              f"strictly above every no-slower threshold point: {'yes' if p['beats_thresholds'] else 'no'}")
    gap_acc = b["always"]["accuracy"] - t["accuracy"]
    gap_use = t["use_rate"] - t["oracle_use_rate"]
    print(f"  accuracy {100 * gap_acc:.2f} points below always-audio; use rate {100 * gap_use:.1f} points above the "
          f"oracle's ({t['oracle_use_rate']:.3f}); VL accuracy {t['vl_accuracy']:.4f} of base {t['base_vl_accuracy']:.4f}")
    g = m.get("oracle_gap")
    if g:
        print(f"  of those {g['gap_points']:.1f} points: +{g['base_as_good_points']:.1f} audio questions the VL-only base "
              f"already answered as well ({g['base_as_good']} rows; invisible without hearing the clip), "
              f"+{g['audio_no_help_points']:.1f} where audio does not help either ({g['audio_no_help']}), "
              f"+{g['vl_points']:.1f} VL questions ({g['vl']}), -{g['missed_points']:.1f} audio-helped rows skipped "
              f"({g['missed']})")
    print(f"  irrelevant-audio false positives (VL rows using audio): {t['false_positive_rate']:.4f}")
    print(f"  table latency: policy {t['mean_latency_ms']:.3f} ms vs always-audio SAFE {m['always_audio_direct_ms']:.3f} ms "
          f"(ratio {m['policy_vs_always_direct_latency']:.3f}), base {m['base_ms']:.3f} ms; policy / base = "
          f"{t['mean_latency_ms'] / m['base_ms']:.3f}")
    print(f"  deployed gate (the distilled one, attached to the model; {state} path), measured end to end, "
          "ms per query, mean (median / p95):")
    for bs, r in m["latency_by_batch"].items():
        cells = "  ".join(f"{name} {r[k + '_mean_ms']:.3f} ({r[k + '_median_ms']:.3f} / {r[k + '_p95_ms']:.3f})"
                          for name, k in (("base", "base"), ("always-audio", "always_audio"), ("policy", "policy")))
        print(f"    batch {bs:>3} ({r['rows']} rows): {cells}")
        print(f"              mean ratios: policy/always {r['policy_to_always']:.3f}, policy/base "
              f"{r['policy_to_base']:.3f}, always/base {r['always_to_base']:.3f}")
    c, s = m["cascade"], m["skip_all"]
    print(f"  deployed accuracy {c['accuracy']:.4f}, use rate {c['use_rate']:.3f}; encoder rows {c['encoder_rows']} "
          f"= rows using audio {c['rows_using_audio']}")
    if s.get("rows"):
        print(f"  all-skipped batch of {s['rows']} VL questions: {s['encoder_rows']} encoder rows, {s['cascade_ms']:.3f} ms "
              f"vs base {s['base_ms']:.3f} ms per query (x{s['ratio_to_base']:.2f}: the base plus state and policy)")
    d = m["distill"]
    print(f"  Stage C: {d['student_params']:,}-parameter MLP vs {d['teacher_params']:,}-parameter PPO policy; agreement "
          f"{d['test_agreement']:.4f} on test; {1e6 * d['student_s_per_row']:.2f} vs {1e6 * d['teacher_s_per_row']:.2f} "
          "us per row")
    if m.get("seeds"):
        a, u = m["seeds"]["accuracy"], m["seeds"]["use_rate"]
        print(f"  {len(a['values'])} PPO seeds: accuracy {a['mean']:.4f} [{a['low']:.4f}, {a['high']:.4f}], "
              f"use rate {u['mean']:.3f} [{u['low']:.3f}, {u['high']:.3f}] (95% CI)")
    print(f"  collapse: {m['collapse'] or 'none'}; took {m['seconds']['total']:.0f} s")


def cmd_policy(args: argparse.Namespace) -> int:
    from safe.cli import _data_and_base
    from safe.runs import RunDir

    run = RunDir(args.run_dir)
    if args.action == "distill":
        return _distill_again(run, args)
    from safe.data.embedding_cache import AudioEmbeddingCache
    from safe.policy.stage import PolicyStageConfig, run_policy_stage
    from safe.training.data import encoder_fingerprint
    from safe.training.pipeline import load_trained

    cfg = PolicyStageConfig(alphas=_alphas(args.alphas), alpha=args.alpha, steps=args.steps, seeds=args.seeds,
                            train_rows=args.train_rows, distill_hidden=args.hidden, distill_epochs=args.epochs,
                            state=args.state)
    bench, base = _data_and_base(args)
    ckpt = Path(args.checkpoint) if args.checkpoint else run.path / "checkpoints" / "final"
    model, fmt, frontend = load_trained(base, ckpt)
    cache = AudioEmbeddingCache(bench / ".embedding_cache", encoder_fingerprint(model.audio_encoder, frontend))
    metrics, _ = run_policy_stage(model, fmt, frontend, bench, cfg, cache, out_dir=run.path / "policy", progress=True)
    out = model.save_pretrained(run.path / "checkpoints" / "policy")
    from safe.processing.processor import SAFEProcessor  # beside the weights: `safe predict` needs nothing else

    SAFEProcessor.from_components(fmt, frontend, model.base_model, base=base).save_pretrained(out)
    metrics["checkpoint"] = str(out)
    run.record("policy", metrics)
    print_policy(metrics)
    print(f"SAFE + policy weights: {out}; metrics: {run.metrics_file}")
    return 0


def _distill_again(run, args: argparse.Namespace) -> int:
    from safetensors import safe_open

    from safe.policy.network import PolicyNetwork
    from safe.policy.stage import distill_gate
    from safe.policy.table import OutcomeTable

    folder = run.path / "policy"
    for name in ("table_train.safetensors", "table_test.safetensors", "ppo_policy.safetensors"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name} is missing: run `safe policy train --run-dir {run.path}` first")
    train, test = OutcomeTable.load(folder / "table_train.safetensors"), OutcomeTable.load(folder / "table_test.safetensors")
    with safe_open(str(folder / "ppo_policy.safetensors"), framework="pt") as f:
        meta = f.metadata()
        state = {k: f.get_tensor(k) for k in f.keys()}
    teacher = PolicyNetwork(int(meta["state_dim"]), int(meta["hidden"]))
    teacher.load_state_dict(state)
    teacher.eval()
    _, rep = distill_gate(teacher, train, test, args.hidden, args.epochs)
    ev = rep["test"]
    print(f"Stage C: {rep['student_params']:,}-parameter MLP distilled from the PPO policy (alpha {meta['alpha']}):")
    print(f"  agreement with PPO on test {rep['test_agreement']:.4f}; accuracy {ev['accuracy']:.4f}, use rate "
          f"{ev['use_rate']:.3f}, {ev['mean_latency_ms']:.3f} ms per query (table costs); "
          f"{1e6 * rep['student_s_per_row']:.2f} us per row for the gate itself")
    metrics = run.metrics().get("policy", {})
    metrics["distill_again"] = {k: v for k, v in rep.items() if k not in ("student", "teacher")}
    run.record("policy", metrics)
    return 0 if not math.isnan(ev["accuracy"]) else 1
