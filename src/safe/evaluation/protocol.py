"""The evaluation protocol (the proposal's validation plan, docs/design.md) on the built-in benchmark, for a SAFE model with its policy attached:
retention (base / gate closed / gate open / policy, McNemar), audio gains with bootstrap CIs, both
also per benchmark (the records' ``task``, each scored with its benchmark's metric; corpus caption
metrics per caption benchmark), efficiency (FLOPs, memory, measured latency from Stage B), attribution
(muted-audio LOMO, exact two-player Shapley), robustness (SNR sweep, misaligned clips, irrelevant
audio, held-out sounds) and the proposal's targets as stage gates (docs/design.md) as PASS / FAIL with the measured values.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from safe.data.prepared import prepare, read_waveforms
from safe.data.source import DataSource
from safe.evaluation.attribution import lomo_drop, shapley_two_player, summarize_shapley
from safe.evaluation.efficiency import count_flops, safe_memory_report
from safe.evaluation.gates import STAGE2_MAX_VL_LOSS, STAGE2_MIN_AUDIO_GAIN
from safe.evaluation.metrics import cider_d_scores
from safe.evaluation.per_task import gains_per_task, retention_per_task
from safe.evaluation.robustness import add_noise, mix_background, other_rows
from safe.evaluation.scoring import BINARY_METRICS, answer_score, task_metric
from safe.evaluation.stats import bootstrap_ci, cohens_d, mcnemar
from safe.models.generation import MAX_NEW_TOKENS, answer_questions

SNR_LEVELS_DB = (20.0, 10.0, 0.0, -10.0)


def _answers(model, fmt, data, pixels=None, audio=None, progress=False) -> list[str]:
    # An explicit all-True mask: with a policy attached, audio without a mask would let the policy choose.
    extra = None if audio is None else (lambda idx: {"audio_embeddings": audio[idx],
                                                     "audio_mask": torch.ones(len(idx), dtype=torch.bool)})
    return answer_questions(model, fmt, data.enc, data.pixels if pixels is None else pixels,
                            max_new_tokens=MAX_NEW_TOKENS, extra=extra, progress=progress)


def policy_answers(model, fmt, data, previews: torch.Tensor, batch_size: int = 200) -> tuple[list[str], torch.Tensor]:
    """Greedy answers of ``data`` with the attached policy deciding each row from ``previews`` (and its state),
    and its choices (bool tensor)."""
    answers, used = [], []
    for s in range(0, len(data), batch_size):
        idx = list(range(s, min(s + batch_size, len(data))))
        batch = fmt.prompt_batch(data.enc, idx)
        out = model.generate(**batch, pixel_values=data.pixels[idx], audio_embeddings=data.audio[idx],
                             audio_preview=previews[idx], max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
        answers += fmt.decode(out.sequences, batch["input_ids"].shape[1])
        used.append(out.used_audio)
    return answers, torch.cat(used)


def bootstrap_mean(values: Sequence[float]) -> dict[str, float]:
    """``{mean, ci_low, ci_high, n}``: the mean with a percentile bootstrap 95% CI (NaN bounds under two values)."""
    if len(values) < 2:
        return {"mean": float(np.mean(values)) if len(values) else float("nan"), "ci_low": float("nan"),
                "ci_high": float("nan"), "n": len(values)}
    r = bootstrap_ci(np.asarray(values, dtype=float), n_resamples=2000)
    return {"mean": r.estimate, "ci_low": r.low, "ci_high": r.high, "n": len(values)}


def _acc(scores: Sequence[float], rows: Sequence[int]) -> float:
    return float(np.mean([scores[i] for i in rows])) if len(rows) else float("nan")


def retention_and_gains(ex, scores: dict[str, list[float]], answers: dict[str, list[str]], *,
                        meteor: bool = False) -> tuple[dict, dict]:
    """The retention and audio-gains sections: overall (VL-only rows; audio question rows; caption rows),
    per family, and per benchmark (``per_task``, ``captions_per_task``: :mod:`safe.evaluation.per_task`;
    ``meteor`` adds the Java METEOR to the caption metrics)."""
    vl = [i for i, e in enumerate(ex) if not e.needs_audio]
    qa = [i for i, e in enumerate(ex) if e.needs_audio and not e.is_caption]
    cap = [i for i, e in enumerate(ex) if e.is_caption]
    families = sorted({e.family for e in ex})
    vl_families = {e.family for e in ex if not e.needs_audio}
    right = {k: [v[i] == 1.0 for i in vl] for k, v in scores.items()}
    retention = {
        "vl_accuracy": {k: _acc(v, vl) for k, v in scores.items() if k in ("base", "gate_closed", "gate_open", "policy")},
        "mcnemar": {k: mcnemar(right[k], right["base"]).to_dict() for k in ("gate_closed", "gate_open", "policy")}
        if vl else {},  # a split without VL-only rows (e.g. captions only) has nothing to test
        "answers_changed": {**{k: sum(answers[k][i] != answers["base"][i] for i in vl)
                               for k in ("gate_closed", "gate_open", "policy")}, "n": len(vl)},
        "per_family": {f: {k: _acc(scores[k], [i for i in vl if ex[i].family == f])
                           for k in ("base", "gate_closed", "gate_open", "policy")}
                       for f in families if f in vl_families},
    }
    qa_d = cohens_d([scores["gate_open"][i] for i in qa], [scores["base"][i] for i in qa], paired=True) if qa else None
    gains = {
        "audio_accuracy": {k: bootstrap_mean([scores[src][i] for i in qa]) for k, src in
                           (("base", "base"), ("safe", "gate_open"), ("policy", "policy"))},
        "audio_cohens_d_safe_vs_base": qa_d,
        "per_family": {f: {k: _acc(scores[src], [i for i in qa + cap if ex[i].family == f]) for k, src in
                           (("base", "base"), ("safe", "gate_open"), ("policy", "policy"))}
                       for f in families if f not in vl_families},
    }
    if cap:
        refs = [list(ex[i].answers) for i in cap]
        gains["caption_cider_d"] = {k: bootstrap_mean(cider_d_scores([answers[src][i] for i in cap], refs)) for k, src in
                                    (("base", "base"), ("safe", "gate_open"), ("policy", "policy"))}
    retention["per_task"] = retention_per_task(ex, scores, answers)
    gains["per_task"], gains["captions_per_task"] = gains_per_task(ex, scores, answers, bootstrap_mean, meteor=meteor)
    return retention, gains


def _noisy_embeddings(model, frontend, waveforms, snr_db: float, seed: int, background=None) -> torch.Tensor:
    """Encoder outputs of ``waveforms`` with white noise (``background`` None) or ``background[i]`` mixed into
    clip ``i`` at ``snr_db``."""
    rng = np.random.default_rng(seed)
    noisy = [add_noise(np.asarray(w, dtype=np.float32), snr_db, rng) if background is None
             else mix_background(w, background[i], snr_db) for i, w in enumerate(waveforms)]
    with torch.no_grad():
        return model.audio_encoder.encode(frontend(noisy)).float().cpu()


@torch.no_grad()
def run_eval(model, fmt, frontend, data: DataSource, cache=None, policy_metrics: dict | None = None,
             stage_a: dict | None = None, split: str = "test", progress: bool = False,
             scale_results=None, caption_meteor: bool = False) -> dict[str, Any]:
    """Every section of the evaluation (module docstring) on ``data``'s ``split`` (and its ``ood_test``
    split, when it has one, for the held-out-sounds test); ``model`` has a policy attached.
    ``scale_results``: see :func:`stage_gates` (the latency gate's shape). ``caption_meteor``: add
    METEOR (a Java process of the caption toolkit) to the per-benchmark caption metrics."""
    if model.policy is None:
        raise ValueError("run_eval needs a SAFE model with its policy attached (safe policy train writes one)")
    t0 = time.perf_counter()
    ex = data.split(split)
    prepared = prepare(ex, fmt, model, frontend, cache, progress=progress)
    wav = read_waveforms(ex, frontend.sampling_rate)
    previews = model.policy.preview(model, frontend, wav)  # the preview part the policy was trained on
    answers: dict[str, list[str]] = {}
    with model.hooks_detached() as base:
        answers["base"] = _answers(base, fmt, prepared)
    with model.audio_disabled():
        answers["gate_closed"] = _answers(model, fmt, prepared)
    answers["gate_open"] = _answers(model, fmt, prepared, audio=prepared.audio)
    answers["policy"], used = policy_answers(model, fmt, prepared, previews)
    blank = prepared.pixels.map(torch.zeros_like)  # the normalised mean image: no visual information
    answers["no_image_no_audio"] = _answers(model, fmt, prepared, pixels=blank)
    answers["audio_only"] = _answers(model, fmt, prepared, pixels=blank, audio=prepared.audio)
    scores = {k: [answer_score(a, e) for a, e in zip(v, ex)] for k, v in answers.items()}
    retention, gains = retention_and_gains(ex, scores, answers, meteor=caption_meteor)
    families = [e.family for e in ex]
    audio_rows = [i for i, e in enumerate(ex) if e.needs_audio]
    vl_rows = [i for i, e in enumerate(ex) if not e.needs_audio]

    phi_img, phi_aud = shapley_two_player(scores["no_image_no_audio"], scores["base"], scores["audio_only"],
                                          scores["gate_open"])
    # LOMO takes 0/1 scores only: captions (token F1) and graded answers (VQAv2 accuracy) are left out.
    short = [i for i, e in enumerate(ex) if task_metric(e) in BINARY_METRICS]
    attribution = {"lomo": lomo_drop([scores["gate_open"][i] for i in short], [scores["gate_closed"][i] for i in short],
                                     [families[i] for i in short]) if short else {},
                   "shapley": summarize_shapley(phi_img, phi_aud, families)}

    robustness = _robustness(model, fmt, frontend, data, cache, prepared, ex, wav, scores, answers, used,
                             audio_rows, vl_rows, previews)
    efficiency = _efficiency(model, fmt, prepared, previews, wav, frontend, used, policy_metrics)
    out = {"split": split, "examples": len(ex), "retention": retention, "audio_gains": gains,
           "efficiency": efficiency, "attribution": attribution, "robustness": robustness,
           "ablations": stage_b_ablations(policy_metrics), "seeds": _seeds(policy_metrics)}
    out["stage_gates"] = stage_gates(out, stage_a, policy_metrics, scale_results)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def _robustness(model, fmt, frontend, source, cache, data, ex, wav, scores, answers, used, audio_rows, vl_rows,
                previews):
    # Each test needs its rows: the sweeps need audio questions, the irrelevant-audio test VL-only rows and
    # another row's clip to give them. A split without them (captions only, VL only...) reports NaN there, n = 0.
    qa = [i for i in audio_rows if not ex[i].is_caption]
    clean = _acc(scores["gate_open"], qa)
    sweep = [{"snr_db": None, "audio_accuracy": clean, "background_audio_accuracy": clean}]
    mis_acc = float("nan")
    # Background sounds: each audio question's clip with another row's clip of the split mixed in (the data's
    # own sound kinds, the same pick at every level), besides white noise.
    pick = other_rows(len(ex), np.random.default_rng(7))
    if qa:
        sub = data.subset(qa)
        background = [wav[pick[i]] for i in qa]
        for level in SNR_LEVELS_DB:
            point = {"snr_db": level}
            for key, mix in (("audio_accuracy", None), ("background_audio_accuracy", background)):
                emb = _noisy_embeddings(model, frontend, [wav[i] for i in qa], level, seed=int(level) + 100,
                                        background=mix)
                preds = _answers(model, fmt, sub, audio=emb)
                point[key] = float(np.mean([answer_score(p, ex[i]) for p, i in zip(preds, qa)]))
            sweep.append(point)
        shifted = sub.audio.take([(j - 1) % len(qa) for j in range(len(qa))])  # another audio question's clip
        mis = _answers(model, fmt, sub, audio=shifted)
        mis_acc = float(np.mean([answer_score(p, ex[i]) for p, i in zip(mis, qa)]))
    else:
        sweep += [{"snr_db": level, "audio_accuracy": float("nan"), "background_audio_accuracy": float("nan")}
                  for level in SNR_LEVELS_DB]
    # Irrelevance stress: VL questions with random clips of *other* rows of the split (seeded): the policy
    # decides on those clips' previews (its false positives) and the gate forced open hears them.
    irr: list[str] = []
    policy_irr: list[str] = []
    used_irr = torch.zeros(0)
    if vl_rows and len(ex) > 1:
        others = [int(pick[i]) for i in vl_rows]
        vl = dataclasses.replace(data.subset(vl_rows), audio=data.audio.take(others))
        irr = _answers(model, fmt, vl, audio=vl.audio)
        policy_irr, used_irr = policy_answers(model, fmt, vl, previews[others])
    out = {
        "snr_sweep": sweep,
        "misaligned": {"audio_accuracy": mis_acc, "aligned_audio_accuracy": _acc(scores["gate_open"], qa), "n": len(qa)},
        "irrelevant": {"clips": "a random other row's clip per VL question (seeded)",
                       "false_positive_rate": float(used_irr.float().mean()) if vl_rows else float("nan"),
                       "policy_answers_changed": sum(a != answers["base"][i] for a, i in zip(policy_irr, vl_rows)),
                       "answers_changed": sum(a != answers["base"][i] for a, i in zip(irr, vl_rows)),
                       "false_positive_rate_own_clip": float(used[vl_rows].float().mean()) if vl_rows else float("nan"),
                       "answers_changed_own_clip": sum(answers["gate_open"][i] != answers["base"][i] for i in vl_rows),
                       "n": len(vl_rows)},
    }
    if source.has_split("ood_test"):
        ood_ex = [e for e in source.split("ood_test") if e.needs_audio and not e.is_caption]
        ood = prepare(ood_ex, fmt, model, frontend, cache)
        with model.audio_disabled():
            base_ood = _answers(model, fmt, ood)
        safe_ood = _answers(model, fmt, ood, audio=ood.audio)
        out["ood_sounds"] = {"audio_accuracy": float(np.mean([answer_score(p, e) for p, e in zip(safe_ood, ood_ex)])),
                             "base_audio_accuracy": float(np.mean([answer_score(p, e) for p, e in zip(base_ood, ood_ex)])),
                             "in_domain_audio_accuracy": _acc(scores["gate_open"], qa), "n": len(ood_ex)}
    return out


FLOP_ROWS = 64
"""Rows (the first ones of the evaluated split, in batches of 16) whose generate calls are FLOP-counted."""


def _efficiency(model, fmt, data, previews, wav, frontend, used, policy_metrics) -> dict:
    # Audio enters as encoder input features, so the encoder's FLOPs are counted: on every row with
    # always-audio, only on the rows the deployed policy picks (a skipped row is never encoded).
    # The front end runs before the counter in both modes and the preview is numpy: neither is counted.
    device = next(model.base_model.parameters()).device
    gen = dict(max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
    rows = list(range(min(FLOP_ROWS, len(data))))
    totals = {"base": 0, "always_audio": 0, "policy": 0}
    picked = encoded = 0
    calls_before = model.audio_encoder_calls
    for s in range(0, len(rows), 16):
        idx = rows[s:s + 16]
        batch = data.prompt_inputs(fmt, idx, device)
        feats = frontend([wav[i] for i in idx]).to(device)
        with model.hooks_detached() as base:
            totals["base"] += count_flops(lambda: base.generate(**batch, **gen))
        totals["always_audio"] += count_flops(lambda: model.generate(
            **batch, **gen, audio_features=feats, audio_mask=torch.ones(len(idx), dtype=torch.bool, device=device)))
        res: dict = {}
        calls = model.audio_encoder_calls
        totals["policy"] += count_flops(lambda: res.setdefault("r", model.generate(
            **batch, **gen, audio_features=lambda r: feats[r.to(device)], audio_preview=previews[idx])))
        encoded += model.audio_encoder_calls - calls
        picked += int(res["r"].used_audio.sum())
    model.audio_encoder_calls = calls_before  # measurement runs are not queries
    out = {"audio_use_rate": float(used.float().mean()),
           "flops_per_query": {k: v / len(rows) for k, v in totals.items()},
           "flops_rows": len(rows), "flops_rows_using_audio": picked, "flops_encoder_rows": encoded,
           "flops_note": (f"PyTorch FlopCounterMode over the first {len(rows)} rows of the split (batches of 16), "
                          "audio encoder included (for the policy only on the rows it picks: flops_encoder_rows); "
                          "the front end and the audio preview are not counted"),
           "memory_bytes": safe_memory_report(model), "shape": model_shape(model)}
    if policy_metrics:
        out["oracle_use_rate"] = policy_metrics["test"]["oracle_use_rate"]
        out["latency_by_batch"] = policy_metrics.get("latency_by_batch")
        lat = policy_metrics.get("latency_by_batch", {}).get("1")
        if lat:
            out["latency_ms"] = {k: {"median": lat[f"{k}_median_ms"], "p95": lat[f"{k}_p95_ms"], "mean": lat[f"{k}_mean_ms"]}
                                 for k in ("base", "always_audio", "policy")}
            out["overhead_ms"] = lat["policy_mean_ms"] - lat["base_mean_ms"]
            out["latency_ratio_to_base"] = {"always_audio": lat["always_to_base"], "policy": lat["policy_to_base"]}
    return out


def model_shape(model) -> dict[str, Any]:
    """What the efficiency figures of a run were measured on: parameter counts of the frozen language model
    side, vision side and audio encoder, the SAFE parts, the dtype and the device, and a one-line text."""
    base = model.base_model
    device = next(base.parameters()).device
    dtype = next(base.parameters()).dtype
    vision = sum(p.numel() for n, p in base.named_parameters() if "vision" in n or "qformer" in n)
    total = sum(p.numel() for p in base.parameters())
    audio = sum(p.numel() for p in model.audio_encoder.parameters())
    safe_parts = sum(p.numel() for p in model.trainable_parameters())
    text = (f"this run's model: VL base {total / 1e6:,.2f}M parameters (vision side {vision / 1e6:,.2f}M), audio "
            f"encoder {audio / 1e6:,.2f}M, SAFE parts {safe_parts / 1e6:,.2f}M; {str(dtype).removeprefix('torch.')} "
            f"on {device.type}, {torch.get_num_threads()} thread(s)")
    return {"base_parameters": total, "vision_parameters": vision, "audio_encoder_parameters": audio,
            "safe_parameters": safe_parts, "dtype": str(dtype).removeprefix("torch."), "device": device.type,
            "text": text}


def stage_b_ablations(policy_metrics: dict | None) -> dict:
    """The Stage B / C half of the ablation grid, read off ``safe policy train``'s metrics: the learned
    gate, lambda = 0 (no retention constraint), the distilled gate and the two heuristic gates at the
    learned gate's use rate. ``{}`` without policy metrics."""
    if not policy_metrics:
        return {}
    b = policy_metrics["baselines"]
    rows = [{"name": f"learned gate (PPO, alpha={policy_metrics['alpha']:g})", **_row(policy_metrics["test"])},
            {"name": "lambda = 0 in Stage B (no retention constraint)", **_row(b["no_constraint"])},
            {"name": "distilled 2-layer MLP gate (Stage C)", **_row(b["distilled"])},
            {"name": "heuristic: confidence threshold at the same use rate", **_row(b["confidence"])},
            {"name": "heuristic: entropy threshold at the same use rate", **_row(b["entropy"])}]
    stress = policy_metrics.get("floor_stress") or {}
    for key, what in (("with_dual", "dual ascent"), ("without_dual", "lambda = 0")):
        if key in stress:  # the retention floor under stress (safe.policy.stress): audio hurts VL rows
            rows.append({"name": f"floor stress (audio breaks {100 * stress['harm']:g}% of VL rows, blank state), "
                                 f"{what}", **{k: stress[key][k] for k in ("accuracy", "vl_accuracy",
                                                                          "audio_accuracy", "use_rate")}})
    return {"rows": rows, "note": "Stage A ablations (no retention loss, k in {4, 8, 12, 16}, LoRA rank in {4, 8, 16}): "
            "not run for this report; `safe ablate --run-dir <run>` (make ablations) adds them here."}


def _row(ev: dict) -> dict:
    return {k: ev[k] for k in ("accuracy", "vl_accuracy", "audio_accuracy", "use_rate", "mean_latency_ms")}


def _seeds(policy_metrics: dict | None) -> dict:
    if not policy_metrics or not policy_metrics.get("seeds"):
        return {}
    s = policy_metrics["seeds"]
    return {"n": len(s["accuracy"]["values"]), "what": "PPO seeds at the deployed alpha (Stage A: one seed)",
            "metrics": {k: {"values": v["values"], "mean": v["mean"], "ci_low": v["low"], "ci_high": v["high"]}
                        for k, v in s.items()}}


def stage_gates(ev: dict, stage_a: dict | None, policy_metrics: dict | None, scale_results=None) -> list[dict]:
    """The proposal's targets (docs/design.md) that this benchmark can measure, each with its number.
    ``scale_results``: ``benchmarks/scale.py`` results (a path or the loaded dict; else the path under
    ``policy_metrics["scale_results"]``, if any) for the latency gate (:func:`latency_gate`)."""
    r, g, e = ev["retention"], ev["audio_gains"], ev["efficiency"]
    vl = r["vl_accuracy"]
    drop_open = vl["base"] - vl["gate_open"]
    drop_policy = vl["base"] - vl["policy"]
    gain = g["audio_accuracy"]["safe"]["mean"] - g["audio_accuracy"]["base"]["mean"]
    skip = 1.0 - e["audio_use_rate"]
    gates = [
        {"gate": "Stage 1: gate closed reproduces the base (answers identical)", "target": "0 answers changed",
         "measured": f"{r['answers_changed']['gate_closed']} of {r['answers_changed']['n']}",
         "passed": r["answers_changed"]["gate_closed"] == 0},
        {"gate": "Stage 2: VL retention, gate open", "target": f"< {100 * STAGE2_MAX_VL_LOSS:g} points lost",
         "measured": f"{100 * drop_open:.2f} points", "passed": drop_open < STAGE2_MAX_VL_LOSS},
        {"gate": "Stage 2: audio gains", "target": f">= {100 * STAGE2_MIN_AUDIO_GAIN:g} points",
         "measured": f"{100 * gain:.1f} points", "passed": gain >= STAGE2_MIN_AUDIO_GAIN - 1e-12},
        {"gate": "Stage 3: VL retention with the policy", "target": "<= 0.3 points lost",
         "measured": f"{100 * drop_policy:.2f} points", "passed": drop_policy <= 0.003},
        {"gate": "Stage 3: audio gains", "target": ">= 5 points", "measured": f"{100 * gain:.1f} points",
         "passed": gain >= 0.05},
        {"gate": "Stage 3: audio skipping", "target": ">= 40% of queries skip audio",
         "measured": f"{100 * skip:.1f}%", "passed": skip >= 0.40},
    ]
    latency = latency_gate(e, scale_results if scale_results is not None else (policy_metrics or {}).get("scale_results"))
    if latency is not None:
        gates.append(latency)
    if latency is not None and "source" in latency and e.get("overhead_ms") is not None:
        gates.append(latency_gate(e, None))  # and this run's own measurement, on this machine
    if stage_a is not None and "frozen_byte_identical" in stage_a:
        gates.append({"gate": "Frozen base and encoder byte-identical after training", "target": "sha256 equal",
                      "measured": "equal" if stage_a["frozen_byte_identical"] else "changed",
                      "passed": bool(stage_a["frozen_byte_identical"])})
    if policy_metrics is not None:
        gates.append({"gate": "Stage B: no policy collapse", "target": "use rate strictly between 2% and 98%",
                      "measured": policy_metrics.get("collapse") or "none", "passed": policy_metrics.get("collapse") is None})
    return gates


LATENCY_TARGET_MS = 50.0
"""The proposal's added latency per query (docs/design.md): < 50 ms for a 7B VL model."""
_SHAPE_PREFERENCE = (("llava7b", "cuda"), ("proxy", "cuda"), ("proxy", "cpu"), ("builtin", "cuda"), ("builtin", "cpu"))


class ScaleResultsError(ValueError):
    """A ``benchmarks/scale.py`` results file that is missing or not in its format (named in the message)."""


def load_scale_results(source) -> list[dict]:
    """The runs of a ``benchmarks/scale.py`` results file (a path, or the loaded JSON: one run or
    ``{"runs": [...]}``), each with ``preset``, ``device``, ``shape`` and ``cells``."""
    import json

    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise ScaleResultsError(f"scale results file {path} does not exist (benchmarks/scale.py --out writes it)")
        source = json.loads(path.read_text())
    runs = source.get("runs", [source]) if isinstance(source, dict) else None
    if not runs or not all(isinstance(r, dict) and {"preset", "device", "shape", "cells"} <= set(r) for r in runs):
        raise ScaleResultsError("scale results must be benchmarks/scale.py output: a run with preset, device, "
                                "shape and cells, or {'runs': [...]} of them")
    return runs


SHIPPED_SCALE_RESULTS = "scale_results.json"
"""The ``benchmarks/scale.py`` results SAFE ships beside this module (``docs/scale_results.json`` of the source
tree links to it); package data, so the latency gate reads them from an installed wheel too."""


def shipped_scale_results() -> dict:
    """The shipped scale results (:data:`SHIPPED_SCALE_RESULTS`), loaded through :mod:`importlib.resources`."""
    import json
    from importlib.resources import files

    data = json.loads((files(__package__) / SHIPPED_SCALE_RESULTS).read_text())
    # the latency gate names where its figure comes from; these are the results installed with SAFE
    data.setdefault("source", f"the scale results SAFE ships (safe/evaluation/{SHIPPED_SCALE_RESULTS}, "
                              "docs/scale_results.json of the source tree)")
    return data


def latency_gate(efficiency: dict, scale_results=None) -> dict | None:
    """The latency stage gate, naming the shape its number was measured on.

    With ``scale_results`` (see :func:`load_scale_results`): the largest shape there (the 7B on a GPU,
    else the CPU proxy, else the built-in shape), the policy at its use rate minus the base at batch 1,
    the worse of the answer lengths measured. Without: the built-in model's own Stage B figure, labelled
    "built-in model shape" (its overheads say little about a 7B deployment). None when neither exists."""
    if scale_results is not None:
        runs = load_scale_results(scale_results)
        if isinstance(scale_results, (str, Path)):
            file = str(scale_results)
        elif isinstance(scale_results, dict) and isinstance(scale_results.get("source"), str):
            file = scale_results["source"]
        else:
            file = "scale results given in memory"
        run = min(runs, key=lambda r: _SHAPE_PREFERENCE.index((r["preset"], r["device"]))
                  if (r["preset"], r["device"]) in _SHAPE_PREFERENCE else len(_SHAPE_PREFERENCE))
        cells = [c for c in run["cells"] if c["batch"] == 1] or [c for c in run["cells"] if c["batch"] == min(
            x["batch"] for x in run["cells"])]
        worst = max(cells, key=lambda c: c["paths"]["policy"]["added_ms"])
        added = worst["paths"]["policy"]["added_ms"]
        lm = run["shape"]["parameters"]["language_model"]
        shape = (f"{run['preset']} shape (LM {lm / 1e6:,.1f}M parameters, {run['dtype']} on {run['device']}), "
                 f"batch {worst['batch']}, {worst['new_tokens']} new tokens, policy at use rate {worst['use_rate']:.2f}, "
                 f"always-audio {worst['paths']['always']['added_ms']:+.2f} ms; benchmarks/scale.py")
        source = {"file": file, "machine": _machine(run), "date": run.get("date") or "not recorded in the file"}
        return {"gate": "Stage 3: latency overhead per query (batch 1), read from a file",
                "target": f"< {LATENCY_TARGET_MS:g} ms",
                "measured": f"{added:.2f} ms on the {shape}; read from {source['file']} (measured on "
                            f"{source['machine']}, {source['date']}), not by this run",
                "passed": added < LATENCY_TARGET_MS, "shape": run["preset"], "device": run["device"], "source": source}
    if efficiency.get("overhead_ms") is None:
        return None
    added = efficiency["overhead_ms"]
    return {"gate": "Stage 3: latency overhead per query (batch 1), measured by this run",
            "target": f"< {LATENCY_TARGET_MS:g} ms",
            "measured": f"{added:.2f} ms on the built-in model shape, measured by this run on this machine (not a "
                        f"7B deployment figure; benchmarks/scale.py measures the proxy / 7B shapes)",
            "passed": added < LATENCY_TARGET_MS, "shape": "builtin"}


def _machine(run: dict) -> str:
    """The machine a scale run names (platform, CPU count, GPU), as one phrase."""
    m = run.get("machine") or {}
    if not m:
        return "a machine the file does not name"
    gpu = m.get("gpu")
    return f"{m.get('platform', '?')}, {m.get('cpu_count', '?')} CPUs" + (f", {gpu}" if gpu else ", no GPU")
