"""A synthetic metrics.json as a full run writes it (shared by the report and docs tests)."""
from __future__ import annotations

FAMILIES_VL = ["colour", "shape", "count", "position"]
FAMILIES_AUDIO = ["which_sound", "beep_count", "sound_source", "pitch"]


def _ci(mean: float, half: float) -> dict:
    return {"mean": mean, "ci_low": mean - half, "ci_high": mean + half}


def _eval_row(acc, vl, audio, use, lat) -> dict:
    return {"accuracy": acc, "vl_accuracy": vl, "audio_accuracy": audio, "use_rate": use,
            "mean_latency_ms": lat, "latency_ratio_to_base": lat / 2.1, "false_positive_rate": 0.02,
            "oracle_accuracy": 0.97, "oracle_use_rate": 0.5, "base_accuracy": 0.55, "n": 512}


def full_metrics() -> dict:
    """A metrics.json as a full run would write it (every stage, every section)."""
    fam_ret = {f: {"base": 1.0, "gate_closed": 1.0, "gate_open": 0.99, "policy": 1.0} for f in FAMILIES_VL}
    pareto = [{"name": f"ppo_alpha_{a}", "kind": "ppo", "alpha": a, "threshold": None,
               "accuracy": 0.9 + a / 10, "mean_latency_ms": 2.2 + a * 2, "use_rate": 0.4 + a / 2,
               "on_front": True} for a in (0.05, 0.2, 0.5)]
    for kind, off in (("confidence", 0.0), ("entropy", 0.03), ("random", 0.15)):
        pareto += [{"name": f"{kind}_{t}", "kind": kind, "alpha": None, "threshold": t,
                    "accuracy": 0.6 + (0.3 - off) * t, "mean_latency_ms": 2.1 + 2.0 * t, "use_rate": t,
                    "on_front": False} for t in (0.1, 0.5, 0.9)]
    pareto += [{"name": k, "kind": k, "alpha": None, "threshold": None, "accuracy": acc,
                "mean_latency_ms": lat, "use_rate": use, "on_front": k == "oracle"}
               for k, acc, lat, use in [("never", 0.55, 2.1, 0.0), ("always", 0.96, 4.3, 1.0),
                                        ("oracle", 0.97, 3.2, 0.5), ("distilled", 0.95, 3.3, 0.52)]]
    return {
        "timing": {"verify": 3.2, "base": 95.0, "stage_a": 240.5, "policy": 60.1, "eval": 80.3},
        "verify": {"passed": True, "models": {
            "builtin_llava": {"passed": True, "seconds": 1.4, "checks": [
                {"name": "state_dict_unchanged", "passed": True, "detail": "214 keys bit-identical"},
                {"name": "gate_closed_logits_equal", "passed": True, "detail": "max |diff| 0.0"}]},
            "blip2_opt": {"passed": True, "seconds": 1.8,
                          "checks": {"state_dict_unchanged": True, "generate_equal": True}}}},
        "base": {"vl_accuracy": 1.0, "seconds": 95.0,
                 "test_accuracy": {f: 1.0 for f in FAMILIES_VL},
                 "audio_encoder": {"tag_exact_match": 0.97},
                 "deaf_check": {f: {"accuracy": 0.26, "bound": 0.4, "rule": "≤ chance + 0.15",
                                    "passed": True} for f in FAMILIES_AUDIO}},
        "stage_a": {"vl_accuracy_base": 1.0, "vl_accuracy_gate_open": 1.0, "audio_accuracy": 0.938,
                    "audio_accuracy_base": 0.27, "caption_cider_d": 0.61, "steps": 600, "seconds": 240.5,
                    "history": [{"step": s, "audio_loss": 2.0 / (1 + s / 50), "retention_kl": 0.01 / (1 + s),
                                 "lambda": 0.1 * s / 600, "lr": 1e-3} for s in range(0, 601, 50)]},
        "policy": {
            "test": _eval_row(0.95, 1.0, 0.93, 0.52, 3.3),
            "baselines": {"never": _eval_row(0.55, 1.0, 0.27, 0.0, 2.1),
                          "always": _eval_row(0.96, 0.99, 0.94, 1.0, 4.3),
                          "random": _eval_row(0.75, 1.0, 0.6, 0.5, 3.2),
                          "confidence": _eval_row(0.9, 1.0, 0.85, 0.6, 3.4),
                          "entropy": _eval_row(0.89, 1.0, 0.84, 0.62, 3.5),
                          "oracle": _eval_row(0.97, 1.0, 0.94, 0.5, 3.2),
                          "distilled": _eval_row(0.95, 1.0, 0.92, 0.52, 3.3)},
            "pareto": pareto,
            "history": [{"update": u, "alpha": 0.2, "lambda": 0.5 - u / 100, "use_rate": 0.9 - u / 60,
                         "mean_reward": 0.3 + u / 50, "approx_kl": 0.01, "clipfrac": 0.1, "entropy": 0.6}
                        for u in range(20)],
            "distill": {"agreement": 0.97, "student_params": 2210, "teacher_params": 35000,
                        "student_s_per_row": 2e-6, "teacher_s_per_row": 3e-5},
            "collapse": None},
        "eval": {
            "stage_gates": [
                {"gate": "retention vl_accuracy (policy)", "target": "≥ base − 0.005", "measured": 1.0,
                 "passed": True},
                {"gate": "audio gain", "target": "≥ +0.05", "measured": "+0.67", "passed": True},
                {"gate": "latency ratio (policy)", "target": "≤ 1.6", "measured": 1.57, "passed": True}],
            "retention": {
                "vl_accuracy": {"base": 1.0, "gate_closed": 1.0, "gate_open": 0.995, "policy": 1.0},
                "mcnemar": {"gate_open": {"b": 2, "c": 0, "statistic": 2.0, "pvalue": 0.5, "exact": True},
                            "policy": {"b": 0, "c": 0, "statistic": 0.0, "pvalue": 1.0, "exact": True}},
                "answers_changed": {"gate_closed": 0, "gate_open": 2, "policy": 0, "n": 400},
                "per_family": fam_ret, "effect_size": {"cohens_dz_gate_open": -0.07}},
            "audio_gains": {
                "audio_accuracy": {"base": _ci(0.27, 0.04), "safe": _ci(0.938, 0.025),
                                   "policy": _ci(0.93, 0.03)},
                "caption_cider_d": {"base": _ci(0.0, 0.0), "safe": _ci(0.61, 0.05)},
                "per_family": {f: {"base": 0.25, "safe": 0.94, "policy": 0.93} for f in FAMILIES_AUDIO}},
            "efficiency": {
                "audio_use_rate": 0.52, "oracle_use_rate": 0.5, "overhead_ms": 0.12,
                "latency_ms": {"base": {"median": 2.1, "p95": 2.6, "mean": 2.2},
                               "always_audio": {"median": 4.2, "p95": 4.9, "mean": 4.3},
                               "policy": {"median": 3.2, "p95": 4.6, "mean": 3.3}},
                "latency_ratio_to_base": {"always_audio": 2.0, "policy": 1.57},
                "flops_per_query": {"base": 1.2e7, "always_audio": 2.5e7, "policy": 1.9e7},
                "memory_bytes": {"base": 4_200_000, "audio_encoder": 1_100_000, "safe_parts": 310_000},
                "state_cost_ms": {"preview": 0.05, "policy": 0.01}},
            "attribution": {
                "lomo": {f: {"active": 0.94, "muted": 0.26, "drop": 0.68} for f in FAMILIES_AUDIO},
                "shapley": {"image_mean": 0.3, "audio_mean": 0.45,
                            "by_family": {**{f: {"image": 0.1, "audio": 0.6} for f in FAMILIES_AUDIO},
                                          **{f: {"image": 0.7, "audio": 0.0} for f in FAMILIES_VL}}}},
            "robustness": {
                "snr_sweep": [{"snr_db": None, "audio_accuracy": 0.938, "vl_accuracy": 1.0}]
                + [{"snr_db": s, "audio_accuracy": 0.4 + 0.5 * (s + 10) / 40, "vl_accuracy": 1.0}
                   for s in (-10.0, 0.0, 10.0, 20.0, 30.0)],
                "misaligned": {"audio_accuracy": 0.3, "aligned_audio_accuracy": 0.938, "n": 128},
                "irrelevant": {"false_positive_rate": 0.03, "answers_changed": 1, "n": 200},
                "ood_sounds": {"audio_accuracy": 0.51, "in_domain_audio_accuracy": 0.938, "n": 64}},
            "ablations": {
                "rows": [{"name": "full", "changes": {}, "vl_accuracy": 1.0, "audio_accuracy": 0.938,
                          "use_rate": 0.52, "steps": 600},
                         {"name": "no_retention_kl", "changes": {"retention_kl": 0.0}, "vl_accuracy": 0.97,
                          "audio_accuracy": 0.94, "use_rate": None, "steps": 600},
                         {"name": "rank_4", "changes": {"rank": 4}, "vl_accuracy": 1.0,
                          "audio_accuracy": 0.9, "use_rate": 0.55, "steps": 600, "seconds": 61.2}],
                "note": "short runs (600 steps) on the built-in benchmark"},
            "seeds": {"n": 5, "metrics": {
                "audio_accuracy": {"values": [0.93, 0.94, 0.938, 0.95, 0.92], **_ci(0.9356, 0.014)},
                "vl_accuracy": {"values": [1.0] * 5, **_ci(1.0, 0.0)}},
                "cohens_d": {"audio_accuracy": 12.3}},
        },
        "depth": {"depth_accuracy_base": 0.246, "depth_accuracy": 0.898, "answers_identical_gate_closed": 1.0,
                  "vl_answers_changed_gate_open": 0, "vl_examples": 360,
                  "policy": {"policy": {"use_rate": 0.577, "accuracy": 0.933},
                             "oracle": {"use_rate": 0.406, "accuracy": 0.953},
                             "always": {"use_rate": 1.0, "accuracy": 0.939}}},
    }


def _lat(base: float, always: float, policy: float, rows: int) -> dict:
    row = {"rows": rows, "policy_to_always": policy / always, "policy_to_base": policy / base,
           "always_to_base": always / base}
    for k, v in (("base", base), ("always_audio", always), ("policy", policy)):
        row.update({f"{k}_mean_ms": v, f"{k}_median_ms": v * 0.98, f"{k}_p95_ms": v * 1.2})
    return row


def demo_metrics() -> dict:
    """:func:`full_metrics` with everything ``make demo`` (and ``make ablations``) records, numbers as in the
    README's fresh-clone run, and the deployed gate under its current key ``deployed``."""
    m = full_metrics()
    m["command"] = "make demo && make ablations"
    m["stage_a"].update({
        "vl_accuracy_base": 1.0, "vl_accuracy_gate_closed": 1.0, "vl_accuracy_gate_open": 1.0,
        "answers_identical_gate_closed": 1.0, "vl_answers_changed_gate_open": 0, "vl_examples": 780,
        "audio_accuracy": 1.0, "audio_accuracy_base": 0.122, "caption_exact_match": 0.988,
        "caption_cider_d": 8.7, "caption_cider_d_base": 0.0, "caption_bleu2": 0.997, "caption_bleu2_base": 0.0,
        "frozen_byte_identical": True,
        "per_family": {"sound_kind": {"base": 0.0, "open": 1.0}, "beep_count": {"base": 0.179, "open": 1.0}}})
    m["base"]["audio_encoder"]["tag_exact_match"] = 0.997
    p = m["policy"]
    p.update({"alpha": 0.1, "config": {"state": "early", "alpha": 0.1},
              "deployed": {"accuracy": 0.999, "use_rate": 0.347, "encoder_rows": 416, "rows_using_audio": 416},
              "latency_by_batch": {"1": _lat(5.22, 9.70, 8.48, 1200), "16": _lat(0.69, 1.92, 1.79, 1200),
                                   "64": _lat(0.45, 1.40, 1.13, 1200)},
              "skip_all": {"rows": 16, "rows_using_audio": 0, "encoder_rows": 0, "base_ms": 0.7,
                           "cascade_ms": 0.91, "ratio_to_base": 1.30},
              "oracle_gap": {"vl": 0, "base_as_good": 38, "audio_no_help": 0, "missed": 6, "missed_score": 6.0,
                             "vl_points": 0.0, "base_as_good_points": 3.2, "audio_no_help_points": 0.0,
                             "missed_points": 0.5, "gap_points": 2.7, "rows": 1200},
              "seeds": {"accuracy": {"values": [0.995, 0.996, 0.994], "mean": 0.995, "low": 0.994, "high": 0.997},
                        "use_rate": {"values": [0.343, 0.345, 0.344], "mean": 0.344, "low": 0.340, "high": 0.347}}})
    p["test"].update({"accuracy": 0.995, "use_rate": 0.343, "oracle_use_rate": 0.316, "oracle_accuracy": 1.0,
                      "vl_accuracy": 1.0, "base_vl_accuracy": 1.0, "false_positive_rate": 0.0})
    p["baselines"]["always"]["accuracy"] = 1.0
    p["baselines"]["confidence"]["accuracy"] = 0.906
    p["baselines"]["entropy"]["accuracy"] = 0.907
    p["baselines"]["distilled"].update({"accuracy": 0.999, "use_rate": 0.347})
    p["distill"].update({"test_agreement": 0.995, "student_params": 9345})
    for q in p["pareto"]:
        if q["kind"] == "ppo":
            q["beats_thresholds"] = True
    e = m["eval"]
    e["efficiency"].update({"flops_per_query": {"base": 29.5e6, "always_audio": 54.9e6, "policy": 41.5e6},
                            "flops_rows": 64, "flops_rows_using_audio": 20})
    e["robustness"]["irrelevant"]["answers_changed"] = 1
    e["robustness"]["irrelevant"]["n"] = 780
    m["ablations"] = {"steps": 400, "seeds": 1, "split": "test", "rows": [
        {"name": "reference", "changes": "the recipe", "seeds": 1, "audio_accuracy": 0.497, "vl_accuracy_gate_open": 0.995,
         "vl_answers_changed_gate_open": 4, "caption_cider_d": 0.52, "trainable_parameters": 266756,
         "train_seconds": 25.1},
        {"name": "no retention loss", "changes": "lambda_retention=0, retention_every=0", "seeds": 1,
         "audio_accuracy": 0.429, "vl_accuracy_gate_open": 0.149, "vl_answers_changed_gate_open": 664,
         "caption_cider_d": 0.278, "trainable_parameters": 266756, "train_seconds": 24.0}]}
    return m


def per_benchmark_metrics() -> dict:
    """:func:`full_metrics` with the per-benchmark sections of a mixed-data run (VQAv2 + GQA retention,
    AVQA gains, AudioCaps captions), shaped as ``safe.evaluation.per_task`` writes them."""
    m = full_metrics()
    wilcoxon = {"test": "wilcoxon", "statistic": 2.5, "pvalue": 0.625, "n": 400, "n_differing": 4, "mean_a": 0.7,
                "mean_b": 0.71, "diff": -0.01, "ci_low": -0.02, "ci_high": 0.0}
    mc = {"test": "mcnemar", "b": 3, "c": 1, "n": 300, "statistic": 1.0, "pvalue": 0.625, "method": "exact"}
    m["eval"]["retention"]["per_task"] = {
        "gqa": {"metric": "gqa_exact_match", "n": 300, "test": "mcnemar",
                "accuracy": {"base": 0.61, "gate_closed": 0.61, "gate_open": 0.6033, "policy": 0.61},
                "answers_changed": {"gate_closed": 0, "gate_open": 5, "policy": 0},
                "paired_tests": {"gate_closed": {**mc, "b": 0, "c": 0, "pvalue": 1.0}, "gate_open": mc,
                                 "policy": {**mc, "b": 0, "c": 0, "pvalue": 1.0}}},
        "vqav2": {"metric": "vqa_accuracy", "n": 400, "test": "wilcoxon",
                  "accuracy": {"base": 0.71, "gate_closed": 0.71, "gate_open": 0.70, "policy": 0.709},
                  "answers_changed": {"gate_closed": 0, "gate_open": 4, "policy": 1},
                  "paired_tests": {"gate_closed": {**wilcoxon, "pvalue": 1.0}, "gate_open": wilcoxon,
                                   "policy": {**wilcoxon, "pvalue": 0.9}}}}
    m["eval"]["audio_gains"]["per_task"] = {
        "avqa": {"metric": "exact_match", "n": 4, "accuracy": {"base": _ci(0.25, 0.25), "safe": _ci(0.75, 0.25),
                                                             "policy": _ci(0.75, 0.25)},
                 "safe_minus_base": {"mean": 0.5, "ci_low": 0.0, "ci_high": 1.0, "n": 4}}}
    m["eval"]["audio_gains"]["captions_per_task"] = {
        "audiocaps": {"clips": 2, "rows": 10, "systems": {
            k: {"cider_d": _ci(c, 0.1), "bleu_1": b, "bleu_2": b / 2, "bleu_3": b / 3, "bleu_4": b / 4,
                "rouge_l": b / 1.5, "meteor": None} for k, c, b in (("base", 0.05, 0.2), ("safe", 0.6, 0.55))},
            "unavailable": {"spice": "not computed: no CoreNLP offline", "meteor": "not requested (Java)"}}}
    return m
