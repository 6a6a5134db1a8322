"""The policy's state, part by part: which parts of the state earn their cost.

Every part the policy could read is computed once for the policy's train and test rows:

* ``question``: the mean input embedding of the prompt's text tokens;
* ``image``: the mean of the base's image projection output over image tokens (the early state's image);
* ``image_pooled``: the vision tower's pooled output (CLIP's post-layer-norm class token), recorded on the
  same forward (:func:`safe.policy.features.probe_image`), so it costs nothing beyond the image part;
* ``preview``: the waveform statistics of :func:`safe.processing.features.audio_preview`;
* ``preview_embedding``: the frozen encoder's first layer on the clip's first quarter second
  (:func:`safe.policy.features.preview_embedding`);
* ``confidence``: the base's first-token confidence (max probability, entropy, margin), which needs
  the base's VL-only pass first (the cascade).

Then for each entry of :data:`STATE_SUBSETS` a PPO policy is trained on the train table restricted to
those columns, over several seeds, and scored on test: accuracy, use rate, and the mean cost per query
priced from measured costs (:func:`safe.policy.outcomes.measure_costs`): with the confidence a cascade
(base pass, then the audio path for the rows that use it), without it the early path (probe, one
generate); plus the measured cost of whichever preview the entry reads and of the policy forward.
"""
from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from safe.evaluation.efficiency import time_calls
from safe.evaluation.stats import PROPORTION, mean_ci
from safe.policy.features import CONFIDENCE_DIM, probe_image
from safe.policy.outcomes import build_table, measure_costs, state_spec
from safe.policy.ppo import evaluate_policy, train_ppo
from safe.policy.preview import preview_embedding
from safe.policy.table import OutcomeTable

STATE_SUBSETS: dict[str, tuple[str, ...]] = {
    "question": ("question",),
    "question + image": ("question", "image"),
    "question + preview": ("question", "preview"),
    "question + image + preview (early)": ("question", "image", "preview"),
    "question + pooled image + preview": ("question", "image_pooled", "preview"),
    "question + image + preview embedding": ("question", "image", "preview_embedding"),
    "question + pooled image + preview embedding": ("question", "image_pooled", "preview_embedding"),
    "question + image + preview + confidence (cascade)": ("question", "image", "preview", "confidence"),
    "question + pooled image + preview embedding + confidence": ("question", "image_pooled", "preview_embedding",
                                                                 "confidence"),
    "image + preview + confidence": ("image", "preview", "confidence"),
}
"""Entry name -> the parts of the state it reads, in state order."""

DEFAULT_ENTRY = "question + image + preview (early)"
"""The entry that is ``safe policy train``'s default state (``--policy.state early``)."""

_METRICS = ("accuracy", "use_rate", "mean_latency_ms", "vl_accuracy", "audio_accuracy")


def select_subsets(names: list[str] | None) -> dict[str, tuple[str, ...]]:
    """The entries of :data:`STATE_SUBSETS` named in ``names`` (all when empty), in table order."""
    if not names:
        return dict(STATE_SUBSETS)
    unknown = [n for n in names if n not in STATE_SUBSETS]
    if unknown:
        raise ValueError(f"unknown state entry {unknown}; choose from {list(STATE_SUBSETS)}")
    return {n: p for n, p in STATE_SUBSETS.items() if n in names}


@torch.no_grad()
def extra_parts(model, fmt, data, frontend, batch_size: int = 64) -> dict[str, torch.Tensor]:
    """The parts the outcome table's states lack, for every row of ``data`` (a :class:`PolicyData`):
    ``image_pooled`` (n, vision width; zeros where the tower has no pooled output) and
    ``preview_embedding`` (n, encoder width)."""
    device = next(model.base_model.parameters()).device
    pooled, emb = [], []
    for s in range(0, len(data.examples), batch_size):
        idx = list(range(s, min(s + batch_size, len(data.examples))))
        batch = data.prepared.prompt_inputs(fmt, idx, device)
        probe = probe_image(model.base_model, model.backbone, batch)
        if probe.pooled is None:
            raise ValueError("the base's vision tower has no pooled output: the pooled image part does not exist")
        pooled.append(probe.pooled)
        emb.append(preview_embedding(model.audio_encoder, frontend, [data.waveforms[i] for i in idx]))
    return {"image_pooled": torch.cat(pooled), "preview_embedding": torch.cat(emb)}


def split_states(states: torch.Tensor, model) -> dict[str, torch.Tensor]:
    """The cascade state's columns (question, image, preview, confidence) by part."""
    spec = state_spec(model, early=False)
    widths = {"question": spec.question_dim, "image": spec.image_dim, "preview": spec.preview_dim,
              "confidence": CONFIDENCE_DIM}
    out, at = {}, 0
    for name, w in widths.items():
        out[name] = states[:, at:at + w]
        at += w
    return out


def subset_costs(parts: tuple[str, ...], costs: dict[str, dict[str, float]], early_costs: dict[str, dict[str, float]],
                 embedding_ms: float) -> dict[str, dict[str, float]]:
    """Per family ``without_audio`` / ``with_audio`` ms for a state reading ``parts``: with the confidence the
    cascade's prices (base pass, then the audio path), without it the early path's (probe + one generate);
    plus the preview the entry reads (statistics: measured ``preview``; embedding: ``embedding_ms``; none: 0)
    and the policy forward. The other measured figures of the path (per-token times) are kept, so the
    table prices each row by its answer's length as :func:`~safe.policy.outcomes.row_costs` does."""
    out = {}
    for fam, c in costs.items():
        e = early_costs[fam]
        preview = (c["preview"] if "preview" in parts else 0.0) + (embedding_ms if "preview_embedding" in parts else 0.0)
        # the path's own measured figures ride along (per-token times; base_pass marks a cascade's prices)
        if "confidence" in parts:
            without = c["base_pass"] + preview + c["policy"]
            out[fam] = {**c, "without_audio": without, "with_audio": without + c["audio"], "state_ms": preview}
        else:
            out[fam] = {**e, "without_audio": e["early_skip"] + preview + e["policy"],
                        "with_audio": e["early_audio"] + preview + e["policy"], "state_ms": preview}
    return out


def _table(parts: dict[str, torch.Tensor], names: tuple[str, ...], outcomes: dict, prepared,
           costs: dict[str, dict[str, float]]) -> OutcomeTable:
    states = torch.cat([parts[n] for n in names], dim=1)
    return build_table({**outcomes, "states": states}, prepared, costs)


def _costs(model, fmt, frontend, train, test, batch: int, early: bool) -> dict[str, dict[str, float]]:
    """:func:`measure_costs` per family on the train rows, and on the test rows for a family train lacks."""
    costs = measure_costs(model, fmt, train.prepared, train.waveforms, frontend, batch_size=batch, early=early)
    rows = [i for i, e in enumerate(test.examples) if e.family not in costs]
    if rows:
        costs.update(measure_costs(model, fmt, test.prepared.subset(rows), [test.waveforms[i] for i in rows],
                                   frontend, batch_size=batch, early=early))
    return costs


def measure_embedding_ms(model, frontend, waveforms, batch_size: int = 16, repeats: int = 5) -> float:
    """Milliseconds per clip of :func:`preview_embedding` on a batch of ``batch_size`` clips, one thread."""
    wav = list(waveforms[:batch_size])
    return statistics.median(time_calls(lambda: preview_embedding(model.audio_encoder, frontend, wav),
                                        repeats=repeats, warmup=1)) / len(wav)


def run_state_ablation(model, fmt, frontend, train, test, cfg, seeds: int = 5,
                       names: list[str] | None = None, progress: bool = False) -> dict[str, Any]:
    """Train and score PPO on each selected state entry (:data:`STATE_SUBSETS`) for ``seeds`` seeds.

    ``train`` / ``test``: :class:`~safe.policy.stage.PolicyData` with cascade outcomes (states with the
    confidence); ``cfg``: the :class:`~safe.policy.stage.PolicyStageConfig` (PPO steps, alpha, cost batch).
    Returns ``{"rows": [...], "best", "default", "default_is_best", "costs_ms": {...}, ...}``; each row has
    the mean and 95% t interval over seeds of accuracy, use rate and mean ms per query, and ``state_ms``,
    the entry's own preview cost per query."""
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"--seeds must be a positive integer, got {seeds!r}")
    grid = select_subsets(names)
    t0 = time.perf_counter()
    costs = _costs(model, fmt, frontend, train, test, cfg.cost_batch, early=False)
    early_costs = _costs(model, fmt, frontend, train, test, cfg.cost_batch, early=True)
    embedding_ms = measure_embedding_ms(model, frontend, train.waveforms, cfg.cost_batch)
    parts = {}
    for split, data in (("train", train), ("test", test)):
        parts[split] = {**split_states(data.outcomes["states"], model), **extra_parts(model, fmt, data, frontend)}
    rows = []
    for name, names_ in grid.items():
        c = subset_costs(names_, costs, early_costs, embedding_ms)
        tr = _table(parts["train"], names_, train.outcomes, train.prepared, c)
        te = _table(parts["test"], names_, test.outcomes, test.prepared, c)
        evals = []
        for seed in range(seeds):
            net, _ = train_ppo(tr, cfg.ppo(cfg.alpha, seed=seed))
            evals.append(evaluate_policy(net, te))
        row: dict[str, Any] = {"name": name, "parts": list(names_), "state_dim": int(tr.states.shape[1]),
                               "seeds": seeds, "collapsed": sum(bool(e["collapse"]) for e in evals)}
        for k in _METRICS:
            values = [float(e[k]) for e in evals]
            row[k] = sum(values) / len(values)
            if len(values) > 1:
                ci = mean_ci(values, bounds=None if k == "mean_latency_ms" else PROPORTION)
                row[f"{k}_ci"] = [ci.low, ci.high]
            row[f"{k}_values"] = values
        row["state_ms"] = float(statistics.mean(v["state_ms"] for v in c.values()))
        rows.append(row)
        if progress:
            print(f"  {name}: accuracy {row['accuracy']:.4f}, use rate {row['use_rate']:.3f}, "
                  f"{row['mean_latency_ms']:.3f} ms/query")
    best = max(rows, key=lambda r: (round(r["accuracy"], 3), -r["mean_latency_ms"]))
    names_run = [r["name"] for r in rows]
    return {"rows": rows, "best": best["name"], "default": DEFAULT_ENTRY,
            "default_is_best": best["name"] == DEFAULT_ENTRY if DEFAULT_ENTRY in names_run else None,
            "seeds": seeds, "ppo_steps": cfg.steps, "alpha": cfg.alpha, "cost_batch": cfg.cost_batch,
            "preview_embedding_ms": embedding_ms, "split": cfg.eval_split,
            "rows_train": len(train.examples), "rows_test": len(test.examples),
            "seconds": round(time.perf_counter() - t0, 1)}
