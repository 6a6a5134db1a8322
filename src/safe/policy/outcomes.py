"""From a trained SAFE model to an :class:`OutcomeTable`: both actions' outcomes and measured costs.

For every example of a split, :func:`collect_outcomes` runs the base model's VL-only ``generate``
(which also yields the state; the early state keeps only its confidence-free parts) and SAFE with the
example's own clip (gate open), scores both answers (exact match for short answers, token F1 for
captions) and counts the tokens each answer generated. :func:`measure_costs` times, per query in a batch
on one CPU thread, every piece of the deployed path for examples of each question family: the plain
base, the base pass with state features, the audio preview, the policy forward, and the audio path
(front end + encoder + projector + SAFE ``generate``). In the cascade, answering without audio costs the
base pass + preview + policy, with audio that plus the audio path (the early state's prices: see
:func:`measure_costs`). Nothing is assumed free.

Costs per row, not per family (:func:`build_table`): timing every row alone would measure batch-1
overheads, not the batched path that is deployed, and would cost a generate per row and action. So the
family's batch is timed, and the price is spread over its rows by a measured per-row model: the time of
one more generated token (the family batch timed with exactly 1 and exactly ``MAX_NEW_TOKENS`` new
tokens, without and with audio). A row that generates ``t`` tokens where the timed batch averaged
``t_mean`` costs the family's price plus ``(t - t_mean)`` times that per-token time; so a family's mean
price is kept and a long caption costs more than a one-word answer. The table also records each row's
language-model tokens per action (generated, plus the ``k`` audio tokens the adapters attend to with
audio): Stage B's token cost (:mod:`safe.policy.reward`).
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
from safe.models.generation import MAX_NEW_TOKENS
from safe.policy.features import CONFIDENCE_DIM, STATE_PARTS, StateSpec, pooled_width, state_from_parts
from safe.policy.network import PolicyNetwork
from safe.policy.preview import policy_preview
from safe.policy.runtime import base_pass, early_probe, early_state_parts, reusing
from safe.policy.table import OutcomeTable
from safe.processing.features import PREVIEW_DIM

ROW_COST_MODEL = ("runtime per row: the family's batch price (batch of up to cost_batch, one thread) plus the "
                  "measured time of one more generated token times the row's generated tokens above or below the "
                  "timed batch's mean; tokens per row: generated tokens, plus the k audio tokens the adapters "
                  "attend to with audio")


DEFAULT_PARTS = ("question", "image", "preview")
"""The parts of the state beside the confidence that ``safe policy train`` reads by default."""


def check_parts(parts) -> tuple[str, ...]:
    """``parts`` (names of :data:`~safe.policy.features.STATE_PARTS` without the confidence, which the
    early / cascade choice decides) in state order; ``ValueError`` for an unknown or repeated name, two
    image or two preview parts, or none."""
    parts = list(parts)
    allowed = [p for p in STATE_PARTS if p != "confidence"]
    bad = [p for p in parts if p not in allowed]
    if bad:
        raise ValueError(f"state parts: unknown part {bad[0]!r}; choose from {allowed} (the confidence comes with "
                         f"--state cascade)")
    if not parts or len(set(parts)) != len(parts):
        raise ValueError(f"state parts must name at least one part, each once, got {parts}")
    for pair in (("image", "image_pooled"), ("preview", "preview_embedding")):
        if set(pair) <= set(parts):
            raise ValueError(f"state parts: {pair[0]!r} and {pair[1]!r} are two kinds of one part; choose one")
    return tuple(p for p in allowed if p in parts)


def state_spec(model, early: bool = False, parts=DEFAULT_PARTS) -> StateSpec:
    """The state layout for ``model`` reading ``parts`` (:func:`check_parts`; default question, projection
    image, statistics preview): the proposal's (with the base's confidence) or, with ``early``, the one
    decided before the base runs (see :class:`~safe.policy.features.StateSpec`). ``ValueError`` for the
    pooled image on a base without a vision tower."""
    parts = check_parts(parts)
    pooled = "image_pooled" in parts
    width = pooled_width(model.base_model) if pooled else model.hidden_size
    if width is None:
        raise ValueError("state parts: 'image_pooled' needs a vision tower with a pooled output; this base has none")
    preview = model.audio_encoder.output_dim if "preview_embedding" in parts else PREVIEW_DIM
    return StateSpec(question_dim=model.hidden_size if "question" in parts else 0,
                     image_dim=width if {"image", "image_pooled"} & set(parts) else 0,
                     preview_dim=preview if {"preview", "preview_embedding"} & set(parts) else 0,
                     confidence_dim=0 if early else CONFIDENCE_DIM,
                     image_kind="pooled" if pooled else "projection",
                     preview_kind="embedding" if "preview_embedding" in parts else "stats")


@torch.no_grad()
def collect_outcomes(model, fmt, data: PreparedSet, previews: torch.Tensor, batch_size: int = 200,
                     progress: bool = False, early: bool = False, spec: StateSpec | None = None) -> dict[str, Any]:
    """States, both answers and both scores for every row of ``data`` (see the module docstring);
    ``early``: states without the base's confidence (the confidence is still recorded for the
    threshold baselines); ``spec``: the state's parts (default :func:`state_spec` of ``early``),
    ``previews`` the preview part it reads (:func:`~safe.policy.preview.policy_preview`)."""
    from tqdm.auto import tqdm

    spec = spec or state_spec(model, early)
    device = next(model.base_model.parameters()).device
    states, base_answers, conf, tok_without, tok_with, audio_answers = [], [], [], [], [], []
    for s in tqdm(range(0, len(data), batch_size), desc="base pass", disable=not progress, leave=False):
        idx = list(range(s, min(s + batch_size, len(data))))
        batch = data.prompt_inputs(fmt, idx, device)
        prompt_len = batch["input_ids"].shape[1]
        bp = base_pass(model, batch, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
        base_answers += fmt.decode(bp.sequences, prompt_len)
        tok_without.append(generated_tokens(bp.sequences[:, prompt_len:], fmt.eos))
        states.append(state_from_parts(spec, bp.parts(previews[idx], spec.preview_kind)))
        conf.append(bp.confidence)
    for s in tqdm(range(0, len(data), batch_size), desc="answering", disable=not progress, leave=False):
        idx = list(range(s, min(s + batch_size, len(data))))
        batch = data.prompt_inputs(fmt, idx, device)
        prompt_len = batch["input_ids"].shape[1]
        seq = model.generate(**batch, max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
                             audio_embeddings=data.audio[idx].to(device),
                             audio_mask=torch.ones(len(idx), dtype=torch.bool, device=device))
        audio_answers += fmt.decode(seq, prompt_len)
        tok_with.append(generated_tokens(seq[:, prompt_len:], fmt.eos))
    conf_t = torch.cat(conf)
    return {
        "generated_without": torch.cat(tok_without), "generated_with": torch.cat(tok_with),
        "audio_tokens": int(model.config.num_audio_tokens),
        "states": torch.cat(states),
        "correct_without": torch.tensor([answer_score(p, e) for p, e in zip(base_answers, data.examples)]),
        "correct_with": torch.tensor([answer_score(p, e) for p, e in zip(audio_answers, data.examples)]),
        "confidence": conf_t[:, 0], "entropy": conf_t[:, 1],
        "base_answers": base_answers, "audio_answers": audio_answers,
    }


def generated_tokens(new: torch.Tensor, eos: int) -> torch.Tensor:
    """Tokens each row of ``generate``'s new tokens (n, L) generated: up to and including its first ``eos``
    (the padding after it is not generated), or all ``L`` when it has none; float32 (n,)."""
    if new.shape[1] == 0:
        return torch.zeros(new.shape[0])
    is_eos = (new == eos).cpu()
    first = torch.where(is_eos.any(1), is_eos.float().argmax(1) + 1, torch.full((new.shape[0],), new.shape[1]))
    return first.float()


def _sample_by_family(examples: Sequence[Example], per_family: int) -> dict[str, list[int]]:
    rows: dict[str, list[int]] = {}
    for i, e in enumerate(examples):
        if len(rows.setdefault(e.family, [])) < per_family:
            rows[e.family].append(i)
    return rows


@torch.no_grad()
def measure_costs(model, fmt, data: PreparedSet, waveforms: Sequence[Any], frontend, batch_size: int = 16,
                  repeats: int = 5, early: bool = False, spec: StateSpec | None = None) -> dict[str, dict[str, float]]:
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

    For the per-row model of :func:`build_table` each family also gets ``ms_per_token_base`` and
    ``ms_per_token_audio`` (per query: the batch generating exactly ``MAX_NEW_TOKENS`` new tokens minus
    exactly 1, over the tokens between, without and with audio; at least 0) and ``tokens_base`` /
    ``tokens_audio``, the mean tokens the timed rows generate greedily without / with audio. ``encode`` (front
    end + encoder + projector alone) is the floor of audio's price: ``with_audio >= without_audio + encode``.

    ``spec``: the state's parts (default :func:`state_spec` of ``early``): ``preview`` times the preview it
    reads, ``policy`` the assembly of its state.

    Batch size matters on small models: at batch 1 fixed per-call overheads dominate every piece."""
    spec = spec or state_spec(model, early)
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

        def preview():
            return policy_preview(spec, wav, model.audio_encoder, frontend)

        prev = preview()

        def policy_forward():
            probe.decide(state_from_parts(spec, bp.parts(prev, spec.preview_kind)))

        def audio_path():
            model.generate(**batch, **gen, audio_features=frontend(wav).to(device), audio_mask=mask)

        def forced(tokens: int, with_audio: bool):  # exactly `tokens` new tokens: the per-token time
            kw = dict(max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
            if with_audio:
                return lambda: model.generate(**batch, **kw, audio_features=frontend(wav).to(device), audio_mask=mask)
            return lambda: model.base_model.generate(**batch, **kw)

        pieces = [("base", plain_base), ("preview", preview), ("policy", policy_forward),
                  ("audio", audio_path), ("encode", lambda: model.encode_audio(frontend(wav).to(device)))]
        if MAX_NEW_TOKENS > 1:
            pieces += [(f"forced_{k}_{a}", forced(k, a == "audio")) for k in (1, MAX_NEW_TOKENS)
                       for a in ("base", "audio")]
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
        with model.audio_disabled():  # the forced base runs: SAFE's gates closed, as in the base pass
            med = {name: statistics.median(time_calls(fn, repeats=repeats, warmup=1)) / len(rows)
                   for name, fn in pieces if name.endswith("_base")}
        med.update({name: statistics.median(time_calls(fn, repeats=repeats, warmup=1)) / len(rows)
                    for name, fn in pieces if not name.endswith("_base")})
        prompt_len = batch["input_ids"].shape[1]
        for a in ("base", "audio"):
            first, last = med.pop(f"forced_1_{a}", None), med.pop(f"forced_{MAX_NEW_TOKENS}_{a}", None)
            med[f"ms_per_token_{a}"] = max(0.0, (last - first) / (MAX_NEW_TOKENS - 1)) if first is not None else 0.0
        with model.audio_disabled():
            seq = model.base_model.generate(**batch, **gen)
        med["tokens_base"] = float(generated_tokens(seq[:, prompt_len:], fmt.eos).mean())
        seq = model.generate(**batch, **gen, audio_features=frontend(wav).to(device), audio_mask=mask)
        med["tokens_audio"] = float(generated_tokens(seq[:, prompt_len:], fmt.eos).mean())
        if early:
            overhead = med["preview"] + med["policy"]
            med["without_audio"] = med["early_skip"] + overhead
            med["with_audio"] = med["early_audio"] + overhead
        else:
            med["without_audio"] = med["base_pass"] + med["preview"] + med["policy"]
            med["with_audio"] = med["without_audio"] + med["audio"]
        # Consulting audio runs the front end and encoder at least: on a large language model the two generates'
        # difference can drown in timing noise (measured at or below 0 on every family of the Gemma track),
        # and audio must never look free or cheaper than skipping.
        med["with_audio"] = max(med["with_audio"], med["without_audio"] + med["encode"])
        out[family] = med
    model.audio_encoder_calls = calls  # timing runs are not queries
    return out


def row_costs(outcomes: dict[str, Any], families: Sequence[str],
              costs: dict[str, dict[str, float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row milliseconds ``(without, with)`` audio, (n,) each: the family's price plus the per-token time
    times the row's generated tokens above or below the timed batch's mean (module docstring), at least 0.
    Costs measured before the per-token times existed (or outcomes without token counts) give the family's
    price on every row. In the cascade (``base_pass`` priced) the audio action also pays the base's answer."""
    def col(key: str, default: float = 0.0) -> torch.Tensor:
        return torch.tensor([float(costs[f].get(key, default)) for f in families], dtype=torch.float64)

    without, with_ = col("without_audio"), col("with_audio")
    if "generated_without" in outcomes and "generated_with" in outcomes:
        d_base = col("ms_per_token_base") * (outcomes["generated_without"].double() - col("tokens_base"))
        d_audio = col("ms_per_token_audio") * (outcomes["generated_with"].double() - col("tokens_audio"))
        cascade = torch.tensor([float("base_pass" in costs[f]) for f in families], dtype=torch.float64)
        without, with_ = without + d_base, with_ + d_audio + cascade * d_base
    without, with_ = without.clamp_min(0), with_.clamp_min(0)
    # at least the encoder's own time above skipping (measure_costs' floor; costs timed before it existed
    # have no "encode" and keep their rows as they were)
    encode = col("encode", float("nan"))
    with_ = torch.where(encode.isnan(), with_, torch.maximum(with_, without + encode.nan_to_num()))
    return without.float(), with_.float()


def build_table(outcomes: dict[str, Any], data: PreparedSet, costs: dict[str, dict[str, float]],
                keys: Sequence[str] | None = None) -> OutcomeTable:
    """The :class:`OutcomeTable` of ``data`` from :func:`collect_outcomes` and :func:`measure_costs`: costs per
    row (:func:`row_costs`), tokens per row (generated, plus the ``k`` audio tokens with audio). ``keys``: each
    row's key into ``costs`` (default its family)."""
    keys = [e.family for e in data.examples] if keys is None else list(keys)
    missing = sorted(set(keys) - set(costs))
    if missing:
        raise ValueError(f"no measured costs for families {missing}")
    without, with_ = row_costs(outcomes, keys, costs)
    tokens = {}
    if "generated_without" in outcomes:
        tokens = {"tokens_without": outcomes["generated_without"],
                  "tokens_with": outcomes["generated_with"] + float(outcomes.get("audio_tokens", 0))}
    return OutcomeTable(
        states=outcomes["states"], correct_without=outcomes["correct_without"],
        correct_with=outcomes["correct_with"], needs_audio=data.needs_audio.clone(),
        is_vl=~data.needs_audio, cost_without_ms=without, cost_with_ms=with_,
        confidence=outcomes["confidence"], entropy=outcomes["entropy"], **tokens)
