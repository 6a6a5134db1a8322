"""The printed summary of Stages B and C (kept apart from :mod:`safe.stages.policy` for length)."""
from __future__ import annotations


def policy_summary(result) -> str:
    """The lines `safe policy train` prints (a :class:`~safe.stages.policy.PolicyResult`)."""
    m = result.metrics
    t, b = m["test"], m["baselines"]
    state = result.state
    lines: list[str] = []
    out = lines.append
    out(f"Stage B/C on the {m['config']['eval_split']} split ({m['rows']['test']} rows; policy trained on "
          f"{m['rows']['train']} rows of train + val; {state} state, {m['state_dim']} features)")
    out(f"  {'gate':<26}{'accuracy':>9}{'VL acc':>8}{'audio acc':>10}{'use rate':>9}{'ms/query':>9}{'VL FP':>7}")
    rows = [(f"PPO policy (alpha={m['alpha']:g})", t)] + [(k, b[k]) for k in
            ("distilled", "always", "never", "oracle", "random", "confidence", "entropy", "no_constraint")]
    for name, r in rows:
        out(f"  {name:<26}{r['accuracy']:>9.4f}{r['vl_accuracy']:>8.3f}{r['audio_accuracy']:>10.3f}"
              f"{r['use_rate']:>9.3f}{r['mean_latency_ms']:>9.3f}{r['false_positive_rate']:>7.3f}")
    out("  (random / confidence / entropy at the policy's use rate; no_constraint = PPO with lambda fixed at 0)")
    out("  Pareto table (accuracy vs mean ms per query; thresholds swept over their whole range):")
    for p in [p for p in m["pareto"] if p["kind"] == "ppo"]:
        out(f"    {p['name']:<18} acc {p['accuracy']:.4f}  {p['mean_latency_ms']:.3f} ms  use {p['use_rate']:.3f}  "
              f"strictly above every no-slower threshold point: {'yes' if p['beats_thresholds'] else 'no'}")
    gap_acc = b["always"]["accuracy"] - t["accuracy"]
    gap_use = t["use_rate"] - t["oracle_use_rate"]
    out(f"  accuracy {100 * gap_acc:.2f} points below always-audio; use rate {100 * gap_use:.1f} points above the "
          f"oracle's ({t['oracle_use_rate']:.3f}); VL accuracy {t['vl_accuracy']:.4f} of base {t['base_vl_accuracy']:.4f}")
    g = m.get("oracle_gap")
    if g:
        out(f"  of those {g['gap_points']:.1f} points: +{g['base_as_good_points']:.1f} audio questions the VL-only base "
              f"already answered as well ({g['base_as_good']} rows; invisible without hearing the clip), "
              f"+{g['audio_no_help_points']:.1f} where audio does not help either ({g['audio_no_help']}), "
              f"+{g['vl_points']:.1f} VL questions ({g['vl']}), -{g['missed_points']:.1f} audio-helped rows skipped "
              f"({g['missed']})")
    out(f"  irrelevant-audio false positives (VL rows using audio): {t['false_positive_rate']:.4f}")
    out(f"  table latency: policy {t['mean_latency_ms']:.3f} ms vs always-audio SAFE {m['always_audio_direct_ms']:.3f} ms "
          f"(ratio {m['policy_vs_always_direct_latency']:.3f}), base {m['base_ms']:.3f} ms; policy / base = "
          f"{t['mean_latency_ms'] / m['base_ms']:.3f}")
    out(f"  deployed gate (the distilled one, attached to the model; {state} path), measured end to end, "
          "ms per query, mean (median / p95):")
    for bs, r in m["latency_by_batch"].items():
        cells = "  ".join(f"{name} {r[k + '_mean_ms']:.3f} ({r[k + '_median_ms']:.3f} / {r[k + '_p95_ms']:.3f})"
                          for name, k in (("base", "base"), ("always-audio", "always_audio"), ("policy", "policy")))
        out(f"    batch {bs:>3} ({r['rows']} rows): {cells}")
        out(f"              mean ratios: policy/always {r['policy_to_always']:.3f}, policy/base "
              f"{r['policy_to_base']:.3f}, always/base {r['always_to_base']:.3f}")
    c, s = result.deployed, m["skip_all"]
    out(f"  deployed accuracy {c['accuracy']:.4f}, use rate {c['use_rate']:.3f}; encoder rows {c['encoder_rows']} "
          f"= rows using audio {c['rows_using_audio']}")
    if s.get("rows"):
        out(f"  all-skipped batch of {s['rows']} VL questions: {s['encoder_rows']} encoder rows, {s['cascade_ms']:.3f} ms "
              f"vs base {s['base_ms']:.3f} ms per query (x{s['ratio_to_base']:.2f}: the base plus state and policy)")
    d = m["distill"]
    out(f"  Stage C: {d['student_params']:,}-parameter MLP vs {d['teacher_params']:,}-parameter PPO policy; agreement "
          f"{d['test_agreement']:.4f} on test; {1e6 * d['student_s_per_row']:.2f} vs {1e6 * d['teacher_s_per_row']:.2f} "
          "us per row")
    if m.get("seeds"):
        a, u = m["seeds"]["accuracy"], m["seeds"]["use_rate"]
        out(f"  {len(a['values'])} PPO seeds: accuracy {a['mean']:.4f} [{a['low']:.4f}, {a['high']:.4f}], "
            f"use rate {u['mean']:.3f} [{u['low']:.3f}, {u['high']:.3f}] (95% CI)")
    out(f"  collapse: {m['collapse'] or 'none'}; took {m['seconds']['total']:.0f} s")
    out(f"SAFE + policy weights: {m['checkpoint']}")
    return "\n".join(lines)
