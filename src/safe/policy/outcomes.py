"""From a trained SAFE model to an :class:`OutcomeTable`: both actions' outcomes and measured costs.

For every example of a split, :func:`collect_outcomes` runs the base model's VL-only ``generate``
(which also yields the state; the early state keeps only its confidence-free parts) and SAFE with the
example's own clip (gate open), and scores both answers: exact match for short answers, token F1 for
captions. :func:`measure_costs` times, per query in a batch on one CPU thread, every piece of the
deployed path for examples of each question family: the plain base, the base pass with state features, the audio preview,
the policy forward, and the audio path (front end + encoder + projector + SAFE ``generate``). Costs
then enter the table per family: in the cascade, answering without audio costs the base pass + preview
+ policy, with audio that plus the audio path (the early state's prices: see :func:`measure_costs`).
Nothing is assumed free.
"""
from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

import torch

from safe.data.prepared import PreparedSet
from safe.data.records import Example
from safe.evaluation.efficiency import time_calls
from safe.evaluation.scoring import answer_score
from safe.models.generation import MAX_NEW_TOKENS, answer_questions
from safe.policy.features import CONFIDENCE_DIM, StateSpec, assemble_state
from safe.policy.network import PolicyNetwork
from safe.policy.runtime import base_pass, early_probe, early_state_parts, reusing
from safe.policy.table import OutcomeTable
from safe.processing.features import audio_preview


def state_spec(model, early: bool = False) -> StateSpec:
    """The state layout for ``model``: the proposal's (with the base's confidence) or, with ``early``,
    the one decided before the base runs (see :class:`~safe.policy.features.StateSpec`)."""
    return StateSpec(question_dim=model.hidden_size, image_dim=model.hidden_size,
                     confidence_dim=0 if early else CONFIDENCE_DIM)


@torch.no_grad()
def collect_outcomes(model, fmt, data: PreparedSet, previews: torch.Tensor, batch_size: int = 200,
                     progress: bool = False, early: bool = False) -> dict[str, Any]:
    """States, both answers and both scores for every row of ``data`` (see the module docstring);
    ``early``: states without the base's confidence (the confidence is still recorded for the
    threshold baselines)."""
    from tqdm.auto import tqdm

    spec = state_spec(model, early)
    device = next(model.base_model.parameters()).device
    states, base_answers, conf = [], [], []
    for s in tqdm(range(0, len(data), batch_size), desc="base pass", disable=not progress, leave=False):
        idx = list(range(s, min(s + batch_size, len(data))))
        batch = data.prompt_inputs(fmt, idx, device)
        bp = base_pass(model, batch, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
        base_answers += fmt.decode(bp.sequences, batch["input_ids"].shape[1])
        conf_part = bp.confidence[:, : spec.confidence_dim]  # (n, 0) for the early state
        states.append(assemble_state(bp.question, bp.image, previews[idx], conf_part, spec))
        conf.append(bp.confidence)
    audio_answers = answer_questions(model, fmt, data.enc, data.pixels, batch_size=batch_size,
                                     max_new_tokens=MAX_NEW_TOKENS, progress=progress,
                                     extra=lambda idx: {"audio_embeddings": data.audio[idx],
                                                        "audio_mask": torch.ones(len(idx), dtype=torch.bool)})
    conf_t = torch.cat(conf)
    return {
        "states": torch.cat(states),
        "correct_without": torch.tensor([answer_score(p, e) for p, e in zip(base_answers, data.examples)]),
        "correct_with": torch.tensor([answer_score(p, e) for p, e in zip(audio_answers, data.examples)]),
        "confidence": conf_t[:, 0], "entropy": conf_t[:, 1],
        "base_answers": base_answers, "audio_answers": audio_answers,
    }


def _sample_by_family(examples: Sequence[Example], per_family: int) -> dict[str, list[int]]:
    rows: dict[str, list[int]] = {}
    for i, e in enumerate(examples):
        if len(rows.setdefault(e.family, [])) < per_family:
            rows[e.family].append(i)
    return rows


@torch.no_grad()
def measure_costs(model, fmt, data: PreparedSet, waveforms: Sequence[Any], frontend, batch_size: int = 16,
                  repeats: int = 5, early: bool = False) -> dict[str, dict[str, float]]:
    """Milliseconds per query, per family, of each piece of the deployed path, timed on a batch of up
    to ``batch_size`` examples of the family on one thread (median of ``repeats`` batch times divided
    by the batch): ``base`` (the unwrapped base's ``generate``), ``base_pass`` (the same with the state
    parts recorded), ``preview``, ``policy`` (state assembly + a Stage B network forward), ``audio``
    (front end + encoder + projector + SAFE ``generate`` with audio), and the derived costs of the
    two actions. The cascade: ``without_audio = base_pass + preview + policy`` and
    ``with_audio = without_audio + audio``. The ``early`` state adds ``state`` (question embedding +
    the image probe of :func:`~safe.policy.features.probe_image`, for reference), ``early_skip`` and
    ``early_audio`` (the probe then one ``generate`` whose prefill reuses the probe's image features,
    without / with audio: what the deployed early path runs) and, since it decides before any
    generate, ``without_audio = early_skip + preview + policy`` and
    ``with_audio = early_audio + preview + policy`` (and no ``base_pass``). These are per-row
    prices: in a real early batch the skipped rows decode inside the one ``generate`` until the
    longest audio answer ends, so the table overstates what a skip saves there; the end-to-end
    latency of :func:`safe.policy.stage.measure_deployed` is the number to trust.

    Batch size matters on small models: at batch 1 fixed per-call overheads dominate every piece."""
    spec = state_spec(model, early)
    device = next(model.base_model.parameters()).device
    probe = PolicyNetwork(spec.dim).eval()
    gen = dict(max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
    out: dict[str, dict[str, float]] = {}
    calls = model.audio_encoder_calls
    for family, rows in _sample_by_family(data.examples, batch_size).items():
        batch = data.prompt_inputs(fmt, rows, device)
        wav = [waveforms[i] for i in rows]
        mask = torch.ones(len(rows), dtype=torch.bool, device=device)

        def plain_base():
            with model.hooks_detached() as base:
                base.generate(**batch, **gen)

        bp = base_pass(model, batch, **gen)
        prev = audio_preview(wav)

        def policy_forward():
            probe.decide(assemble_state(bp.question, bp.image, prev, bp.confidence[:, : spec.confidence_dim], spec))

        def audio_path():
            model.generate(**batch, **gen, audio_features=frontend(wav).to(device), audio_mask=mask)

        pieces = [("base", plain_base), ("preview", lambda: audio_preview(wav)), ("policy", policy_forward),
                  ("audio", audio_path)]
        if early:
            def early_run(with_audio: bool) -> None:  # the deployed early sequence: probe, then one generate
                _, probe = early_probe(model, batch)  # whose prefill reuses the probe's image features
                with reusing(probe):
                    if with_audio:
                        model.generate(**batch, **gen, audio_features=frontend(wav).to(device), audio_mask=mask)
                    else:
                        with model.audio_disabled():
                            model.base_model.generate(**batch, **gen)

            pieces += [("state", lambda: early_state_parts(model, batch)),
                       ("early_skip", lambda: early_run(False)), ("early_audio", lambda: early_run(True))]
        else:
            pieces.append(("base_pass", lambda: base_pass(model, batch, **gen)))
        med = {name: statistics.median(time_calls(fn, repeats=repeats, warmup=1)) / len(rows) for name, fn in pieces}
        if early:
            overhead = med["preview"] + med["policy"]
            med["without_audio"] = med["early_skip"] + overhead
            med["with_audio"] = med["early_audio"] + overhead
        else:
            med["without_audio"] = med["base_pass"] + med["preview"] + med["policy"]
            med["with_audio"] = med["without_audio"] + med["audio"]
        out[family] = med
    model.audio_encoder_calls = calls  # timing runs are not queries
    return out


def build_table(outcomes: dict[str, Any], data: PreparedSet, costs: dict[str, dict[str, float]]) -> OutcomeTable:
    """The :class:`OutcomeTable` of ``data`` from :func:`collect_outcomes` and :func:`measure_costs`."""
    missing = sorted({e.family for e in data.examples} - set(costs))
    if missing:
        raise ValueError(f"no measured costs for families {missing}")
    fam = [e.family for e in data.examples]
    return OutcomeTable(
        states=outcomes["states"], correct_without=outcomes["correct_without"],
        correct_with=outcomes["correct_with"], needs_audio=data.needs_audio.clone(),
        is_vl=~data.needs_audio, cost_without_ms=torch.tensor([costs[f]["without_audio"] for f in fam]),
        cost_with_ms=torch.tensor([costs[f]["with_audio"] for f in fam]),
        confidence=outcomes["confidence"], entropy=outcomes["entropy"])
