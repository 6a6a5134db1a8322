"""Stages B and C end to end on a trained SAFE model: outcome tables -> PPO over several alpha values
-> baselines and the Pareto table -> distillation -> the deployed gate, measured.

The policy learns on a part of ``train`` plus ``val`` and is scored on ``test``; every threshold
baseline is swept over its whole range on ``test`` (its best case), so "the learned policy is above
the thresholds" is a statement against their full curve, not against one hand-picked threshold.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from safe.data.prepared import read_waveforms
from safe.data.source import DataSource
from safe.evaluation.efficiency import latency_stats
from safe.evaluation.scoring import answer_score
from safe.evaluation.stats import PROPORTION, mean_ci
from safe.models.generation import MAX_NEW_TOKENS
from safe.policy import baselines as B
from safe.policy.distill import distill
from safe.policy.features import STATE_KINDS, StateSpec
from safe.policy.outcomes import (
    DEFAULT_PARTS,
    ROW_COST_MODEL,
    build_table,
    check_parts,
    collect_outcomes,
    measure_costs,
    state_spec,
)
from safe.policy.ppo import PPOConfig, evaluate_policy, train_ppo
from safe.policy.preview import policy_preview
from safe.policy.runtime import AudioPolicy
from safe.policy.stress import floor_binding
from safe.policy.table import OutcomeTable, cost_summary, evaluate_actions, oracle_gap

SWEEP_RATES = tuple(i / 20 for i in range(21))


@dataclass
class PolicyStageConfig:
    """Stages B and C settings; validated on construction, errors name the field."""

    alphas: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.3, 0.6])
    """Final latency weights of the PPO runs that make the Pareto table (proposal: alpha 0 -> 0.6)."""
    alpha: float = 0.1
    """The operating point deployed and reported as "the policy"; must be one of ``alphas``."""
    choose_alpha: bool = False
    """Choose the deployed alpha among ``alphas`` on held-out rows instead: PPO at each on three quarters of the
    training table, scored on the other quarter; deployed is the one with the lowest held-out use rate whose
    held-out accuracy is within ``alpha_tolerance`` of always-audio's (the smallest alpha when none is). The test
    split plays no part in the choice; ``metrics.json`` keeps the sweep (``alpha_choice``)."""
    alpha_tolerance: float = 0.01
    """With choose_alpha: the held-out accuracy an alpha may lose to always-audio (0.01: one point)."""
    steps: int = PPOConfig.steps
    """PPO updates per run (batch 256, alpha ramped over the first 20%)."""
    gamma: float = PPOConfig.gamma
    """Irrelevance penalty for consulting audio on a question that does not need it."""
    tau: float = PPOConfig.tau
    """Retention tolerance of the Lagrangian floor (VL accuracy >= base - tau)."""
    seeds: int = 5
    """PPO seeds at the deployed alpha (mean and 95% CI reported; the proposal's five)."""
    train_rows: int = 2400
    """Rows of the train split added to val for the policy's training table."""
    cost_batch: int = 16
    """Batch size at which the per-query costs are measured."""
    distill_hidden: int = 32
    """Hidden width of the Stage C gate."""
    distill_epochs: int = 100
    """Epochs of Stage C distillation."""
    eval_split: str = "test"
    """Split the policy is scored on."""
    floor_stress: float = 0.25
    """The retention floor under stress (:mod:`safe.policy.stress`): PPO with and without dual ascent on the
    tables with audio made to break this fraction of the VL rows and the state blanked; 0 skips it."""
    latency_batches: list[int] = field(default_factory=lambda: [1, 16, 64])
    """Batch sizes at which the deployed gate's per-query latency is measured end to end (batch 1
    on the first 128 test rows, the others on the whole split)."""
    state: Literal[STATE_KINDS] = STATE_KINDS[0]  # type: ignore[valid-type]
    """``"early"``: question, image and preview only, decided before the language model runs, one
    ``generate`` per batch; ``"cascade"``: the proposal's state with the base's confidence, so the base
    answers first and the policy decides at its first step (see :mod:`safe.policy.runtime`). Early is
    the default because the cascade pays a second decode loop for the rows that use audio: on the
    built-in model (make demo, README "Stages B and C") that made it slower than always-audio at batch
    16, while the early state was faster at every batch size measured, at the same accuracy."""
    parts: list[str] = field(default_factory=lambda: list(DEFAULT_PARTS), metadata={"metavar": "PART"})
    """The state's parts beside the confidence (which ``state`` decides): question, image (the projection's
    mean) or image_pooled (the vision tower's pooled output), preview (waveform statistics) or
    preview_embedding (the encoder's first layer on 0.25 s); repeatable (``--parts question --parts
    image_pooled --parts preview``). Saved with the policy; the deployed paths compute the same parts
    (``safe policy ablate-state`` compares them)."""

    def __post_init__(self) -> None:
        self.parts = list(check_parts(self.parts))
        self.alphas = [float(a) for a in self.alphas]
        if not self.alphas or any(not math.isfinite(a) or a < 0 for a in self.alphas):
            raise ValueError(f"alphas must be a non-empty list of numbers >= 0, got {self.alphas}")
        if self.state not in STATE_KINDS:
            raise ValueError(f"state must be one of {STATE_KINDS}, got {self.state!r}")
        if float(self.alpha) not in self.alphas:
            raise ValueError(f"alpha {self.alpha} must be one of alphas {self.alphas}")
        if isinstance(self.alpha_tolerance, bool) or not (isinstance(self.alpha_tolerance, (int, float))
                                                          and 0.0 <= self.alpha_tolerance <= 1.0):
            raise ValueError(f"alpha_tolerance must be a fraction in [0, 1], got {self.alpha_tolerance!r}")
        if not (isinstance(self.floor_stress, (int, float)) and 0.0 <= self.floor_stress <= 1.0):
            raise ValueError(f"floor_stress must be a fraction in [0, 1], got {self.floor_stress!r}")
        for name in ("steps", "seeds", "train_rows", "cost_batch", "distill_hidden", "distill_epochs"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "train_rows" else 1):
                raise ValueError(f"{name} must be a positive integer, got {v!r}")

    def ppo(self, alpha: float, seed: int = 0, **changes: Any) -> PPOConfig:
        return PPOConfig(steps=self.steps, alpha_final=alpha, gamma=self.gamma, tau=self.tau, seed=seed, **changes)


@dataclass
class PolicyData:
    """One split ready for the policy: prepared tensors, waveforms, previews, outcomes and table."""

    examples: list
    prepared: Any
    waveforms: list
    outcomes: dict
    table: OutcomeTable | None = None


def prepare_policy_data(model, fmt, frontend, examples, cache, progress: bool = False,
                        early: bool = False, spec: StateSpec | None = None) -> PolicyData:
    """``examples`` ready for the policy, their states reading ``spec``'s parts (default :func:`state_spec`
    of ``early``: question, projection image, statistics preview), computed as the deployed path computes them
    (:func:`~safe.policy.features.state_from_parts`, :func:`~safe.policy.preview.policy_preview`)."""
    from safe.data.prepared import prepare

    spec = spec or state_spec(model, early)
    prepared = prepare(examples, fmt, model, frontend, cache, progress=progress)
    waveforms = read_waveforms(examples, frontend.sampling_rate)
    previews = policy_preview(spec, waveforms, model.audio_encoder, frontend)
    outcomes = collect_outcomes(model, fmt, prepared, previews, progress=progress, early=early, spec=spec)
    return PolicyData(list(examples), prepared, waveforms, outcomes)


def distill_gate(teacher, train: OutcomeTable, test: OutcomeTable, hidden: int, epochs: int):
    """Stage C: distil ``teacher`` on ``train`` and score the gate on ``test``; returns ``(gate, report)``
    with :func:`~safe.policy.distill.distill`'s report plus ``test_agreement`` (with the teacher) and
    ``test`` (:func:`evaluate_actions` of the gate)."""
    gate, report = distill(teacher, train, hidden=hidden, epochs=epochs)
    use = gate.decide(test.states)
    report["test_agreement"] = float((use == teacher.decide(test.states)).float().mean())
    report["test"] = evaluate_actions(test, use)
    return gate, report


def _head(data: PolicyData, n: int) -> PolicyData:
    return PolicyData(data.examples[:n], data.prepared.subset(range(min(n, len(data.examples)))),
                      data.waveforms[:n], {})  # a latency sample: its outcomes are not needed


def _point(name: str, kind: str, ev: dict[str, Any], **extra: Any) -> dict[str, Any]:
    keys = ("accuracy", "vl_accuracy", "audio_accuracy", "use_rate", "mean_latency_ms", "latency_ratio_to_base",
            "false_positive_rate")
    return {"name": name, "kind": kind, "alpha": None, "threshold": None, **{k: ev[k] for k in keys}, **extra}


def pareto_points(test: OutcomeTable, ppo_points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every operating point on the accuracy / mean-latency plane, each flagged ``on_front``."""
    pts = list(ppo_points)
    for kind in ("confidence", "entropy", "random"):
        for rate in SWEEP_RATES:
            th = rate if kind == "random" else B.threshold_for_rate(test, kind, rate)
            use = (B.random_at_rate(test, rate, 0) if kind == "random" else
                   B.confidence_threshold(test, th) if kind == "confidence" else B.entropy_threshold(test, th))
            pts.append(_point(f"{kind} rate {rate:.2f}", kind, evaluate_actions(test, use), threshold=th))
    for kind, use in (("never", B.never(test)), ("always", B.always(test)), ("oracle", B.oracle(test))):
        pts.append(_point(kind, kind, evaluate_actions(test, use)))
    front = {id(p) for p in B.pareto_front([p for p in pts if p["kind"] != "oracle"])}
    for p in pts:
        p["on_front"] = id(p) in front
    return pts


def beats_thresholds(point: dict[str, Any], points: list[dict[str, Any]]) -> bool:
    """True if ``point`` is strictly more accurate than every confidence / entropy threshold point
    that is no slower than it."""
    rivals = [p["accuracy"] for p in points if p["kind"] in ("confidence", "entropy")
              and p["mean_latency_ms"] <= point["mean_latency_ms"]]
    return not rivals or point["accuracy"] > max(rivals)


@torch.no_grad()
def measure_deployed(model, fmt, data: PolicyData, frontend, batch_size: int = 16) -> dict[str, Any]:
    """Run the deployed gate (``model.policy`` attached; the cascade or the early path, by its state)
    over ``data`` in batches, next to the base and always-audio SAFE on the same batches; per-query
    milliseconds = batch time / batch size."""
    device = next(model.base_model.parameters()).device
    prepared = data.prepared
    gen = dict(max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
    samples: dict[str, list[float]] = {"base": [], "always_audio": [], "policy": []}
    answers, used = [], []
    calls0 = model.audio_encoder_calls
    enc_calls = 0
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for s in range(0, len(prepared), batch_size):
            idx = list(range(s, min(s + batch_size, len(prepared))))
            batch = prepared.prompt_inputs(fmt, idx, device)
            wav = [data.waveforms[i] for i in idx]
            t = time.perf_counter()
            with model.hooks_detached() as base:
                base.generate(**batch, **gen)
            samples["base"].append((time.perf_counter() - t) * 1e3 / len(idx))
            t = time.perf_counter()
            model.generate(**batch, **gen, audio_features=frontend(wav).to(device),
                           audio_mask=torch.ones(len(idx), dtype=torch.bool, device=device))
            samples["always_audio"].append((time.perf_counter() - t) * 1e3 / len(idx))
            before = model.audio_encoder_calls
            t = time.perf_counter()
            preview = policy_preview(model.policy.spec, wav, model.audio_encoder, frontend)
            out = _deployed(model, batch, gen, preview, wav, frontend, device)
            samples["policy"].append((time.perf_counter() - t) * 1e3 / len(idx))
            enc_calls += model.audio_encoder_calls - before
            answers += fmt.decode(out.sequences, batch["input_ids"].shape[1])
            used.append(out.used_audio)
    finally:
        torch.set_num_threads(torch_threads)
        model.audio_encoder_calls = calls0
    used_t = torch.cat(used)
    scores = [answer_score(a, e) for a, e in zip(answers, prepared.examples)]
    return {
        "batch_size": batch_size,
        "latency_ms": {k: latency_stats(v) for k, v in samples.items()},
        "accuracy": sum(scores) / len(scores),
        "use_rate": float(used_t.float().mean()),
        "encoder_rows": enc_calls, "rows_using_audio": int(used_t.sum()),
        "used_audio": used_t, "answers": answers, "scores": scores,
    }


def _deployed(model, batch, gen, preview, wav, frontend, device):
    """The deployed path: the policy decides first, then the front end featurises only the clips of
    the rows it picked (a skipped clip is never featurised nor encoded)."""
    from safe.policy.runtime import generate_with_policy

    def featurise(rows: torch.Tensor) -> torch.Tensor:
        return frontend([wav[i] for i in rows.tolist()]).to(device)

    return generate_with_policy(model, audio_preview=preview, audio_features=featurise, **batch, **gen)


def run_policy_stage(model, fmt, frontend, data: DataSource, cfg: PolicyStageConfig, cache=None,
                     out_dir: str | Path | None = None, progress: bool = False) -> tuple[dict[str, Any], dict]:
    """Stages B and C (module docstring). Returns ``(metrics, artefacts)``; artefacts hold the tables,
    the deployed :class:`AudioPolicy` and the per-row test outcomes for the evaluation. The policy
    learns on ``data``'s ``train`` (first ``cfg.train_rows``) plus ``val`` splits."""
    t0 = time.perf_counter()
    train_ex = data.split("train")[: cfg.train_rows] + data.split("val")
    test_ex = data.split(cfg.eval_split)
    early = cfg.state == "early"
    spec = state_spec(model, early, cfg.parts)
    train = prepare_policy_data(model, fmt, frontend, train_ex, cache, progress, early, spec)
    test = prepare_policy_data(model, fmt, frontend, test_ex, cache, progress, early, spec)
    costs = measure_costs(model, fmt, train.prepared, train.waveforms, frontend, batch_size=cfg.cost_batch,
                          early=early, spec=spec)
    unseen = sorted({e.family for e in test.examples} - set(costs))
    if unseen:  # a test benchmark's own question families (a data spec's test sources): timed on its rows
        rows = [i for i, e in enumerate(test.examples) if e.family in unseen]
        costs.update(measure_costs(model, fmt, test.prepared.subset(rows), [test.waveforms[i] for i in rows],
                                   frontend, batch_size=cfg.cost_batch, early=early, spec=spec))
    train.table = build_table(train.outcomes, train.prepared, costs)
    test.table = build_table(test.outcomes, test.prepared, costs)
    t_tables = time.perf_counter() - t0

    alpha, alpha_choice = cfg.alpha, {"chosen_on": "configured (alpha)"}
    if cfg.choose_alpha:  # on the training table's held-out quarter: the test split plays no part
        from safe.policy.alpha import choose_alpha

        alpha, sweep = choose_alpha(train.table, cfg.alphas, tolerance=cfg.alpha_tolerance,
                                    ppo={"steps": cfg.steps, "gamma": cfg.gamma, "tau": cfg.tau})
        alpha_choice = {"chosen_on": "a held-out quarter of the training table", "tolerance": cfg.alpha_tolerance,
                        "sweep": sweep}
    runs, ppo_points, policies = {}, [], {}
    for a in cfg.alphas:
        net, hist = train_ppo(train.table, cfg.ppo(a), progress=False)
        ev = evaluate_policy(net, test.table)
        policies[a] = net
        runs[a] = {"test": ev, "history": hist}
        ppo_points.append(_point(f"PPO alpha={a:g}", "ppo", ev, alpha=a))
    points = pareto_points(test.table, ppo_points)
    for p in ppo_points:
        p["beats_thresholds"] = beats_thresholds(p, points)

    seed_evals = [runs[alpha]["test"]] + [
        evaluate_policy(train_ppo(train.table, cfg.ppo(alpha, seed=s))[0], test.table) for s in range(1, cfg.seeds)]
    no_constraint = evaluate_policy(train_ppo(train.table, cfg.ppo(alpha, dual_lr=0.0))[0], test.table)
    floor_stress = floor_binding(train.table, test.table, cfg.ppo(0.0), cfg.floor_stress) if cfg.floor_stress else {}
    teacher = policies[alpha]
    gate, dist = distill_gate(teacher, train.table, test.table, cfg.distill_hidden, cfg.distill_epochs)
    t_train = time.perf_counter() - t0 - t_tables

    model.attach_policy(AudioPolicy(spec, "mlp", cfg.distill_hidden, net=gate))
    deployed = measure_deployed(model, fmt, test, frontend, batch_size=cfg.cost_batch)
    by_batch = {}
    for bs in cfg.latency_batches:
        sub = test if bs >= 16 else _head(test, 16 * bs * 8)
        r = deployed if bs == cfg.cost_batch else measure_deployed(model, fmt, sub, frontend, batch_size=bs)
        lat = r["latency_ms"]
        by_batch[str(bs)] = {"rows": len(sub.examples),
                             **{f"{k}_{stat}_ms": v[stat] for k, v in lat.items() for stat in ("mean", "median", "p95")},
                             "policy_to_always": lat["policy"]["mean"] / lat["always_audio"]["mean"],
                             "policy_to_base": lat["policy"]["mean"] / lat["base"]["mean"],
                             "always_to_base": lat["always_audio"]["mean"] / lat["base"]["mean"]}
    skipped_vl = [i for i, e in enumerate(test.examples) if not e.needs_audio and not bool(deployed["used_audio"][i])]
    skip_all = measure_skip_all(model, fmt, test, frontend, skipped_vl[: cfg.cost_batch])

    headline = runs[alpha]["test"]
    always = evaluate_actions(test.table, B.always(test.table))
    direct_always_ms = float(torch.tensor([costs[e.family]["audio"] for e in test.examples]).mean())
    base_ms = float(torch.tensor([costs[e.family]["base"] for e in test.examples]).mean())
    # accuracies and the use rate are fractions: their intervals over seeds stay inside [0, 1]
    seeds = {k: mean_ci([e[k] for e in seed_evals], bounds=None if k == "mean_latency_ms" else PROPORTION)._asdict()
             | {"values": [e[k] for e in seed_evals]}
             for k in ("accuracy", "use_rate", "mean_latency_ms", "vl_accuracy")} if cfg.seeds > 1 else {}
    metrics = {
        "config": asdict(cfg),
        "rows": {"train": len(train.table), "test": len(test.table)},
        "state_dim": spec.dim, "state": spec.to_dict(),
        "costs_ms_per_query": costs,
        "row_costs": {"train": cost_summary(train.table), "test": cost_summary(test.table), "model": ROW_COST_MODEL},
        "floor_stress": floor_stress,
        "test": headline,
        "oracle_gap": oracle_gap(test.table, teacher.decide(test.table.states)),
        "alpha": alpha, "alpha_choice": alpha_choice,
        "always_audio_direct_ms": direct_always_ms, "base_ms": base_ms,
        "policy_vs_always_direct_latency": headline["mean_latency_ms"] / direct_always_ms,
        "baselines": {
            "never": evaluate_actions(test.table, B.never(test.table)), "always": always,
            "oracle": evaluate_actions(test.table, B.oracle(test.table)),
            "random": evaluate_actions(test.table, B.random_at_rate(test.table, headline["use_rate"], 0)),
            "confidence": evaluate_actions(test.table, B.confidence_threshold(
                test.table, B.threshold_for_rate(test.table, "confidence", headline["use_rate"]))),
            "entropy": evaluate_actions(test.table, B.entropy_threshold(
                test.table, B.threshold_for_rate(test.table, "entropy", headline["use_rate"]))),
            "distilled": dist["test"],
            "no_constraint": no_constraint,
        },
        "pareto": points,
        "runs": {f"{a:g}": {"test": r["test"], "collapse": r["test"]["collapse"]} for a, r in runs.items()},
        "history": runs[alpha]["history"],
        "collapse": headline["collapse"],
        "seeds": seeds,
        "distill": {k: v for k, v in dist.items() if k not in ("student", "teacher")},
        # The deployed gate's end-to-end run, either state. Runs written before this key hold the same
        # result under "cascade" (named before the early path existed); readers fall back to it.
        "deployed": {k: v for k, v in deployed.items() if k not in ("used_audio", "answers", "scores")},
        "latency_by_batch": by_batch,
        "skip_all": skip_all,
        "seconds": {"tables": round(t_tables, 1), "train": round(t_train, 1),
                    "total": round(time.perf_counter() - t0, 1)},
    }
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        train.table.save(out / "table_train.safetensors")
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in teacher.state_dict().items()}, str(out / "ppo_policy.safetensors"),
                  metadata={"alpha": str(alpha), "state_dim": str(spec.dim), "hidden": str(teacher.hidden)})
        test.table.save(out / "table_test.safetensors")
    return metrics, {"train": train, "test": test, "deployed": deployed, "policies": policies, "gate": gate}


@torch.no_grad()
def measure_skip_all(model, fmt, data: PolicyData, frontend, vl_rows: list[int], repeats: int = 5) -> dict:
    """A batch of the VL-only questions ``vl_rows`` that the policy skips: per-query ms of the deployed gate vs
    the base alone on the same batch, and the encoder rows it ran (0 when everything is skipped)."""
    from safe.evaluation.efficiency import time_calls

    if not vl_rows:
        return {"rows": 0}
    device = next(model.base_model.parameters()).device
    batch = data.prepared.prompt_inputs(fmt, vl_rows, device)
    wav = [data.waveforms[i] for i in vl_rows]
    gen = dict(max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
    calls = model.audio_encoder_calls
    preview = lambda: policy_preview(model.policy.spec, wav, model.audio_encoder, frontend)  # noqa: E731
    out = _deployed(model, batch, gen, preview(), wav, frontend, device)
    encoder_rows = model.audio_encoder_calls - calls

    def base():
        with model.hooks_detached() as b:
            b.generate(**batch, **gen)

    t_base = statistics.median(time_calls(base, repeats=repeats, warmup=1)) / len(vl_rows)
    t_cascade = statistics.median(time_calls(
        lambda: _deployed(model, batch, gen, preview(), wav, frontend, device),
        repeats=repeats, warmup=1)) / len(vl_rows)
    model.audio_encoder_calls = calls
    return {"rows": len(vl_rows), "rows_using_audio": int(out.used_audio.sum()), "encoder_rows": encoder_rows,
            "base_ms": t_base, "cascade_ms": t_cascade, "ratio_to_base": t_cascade / t_base}
