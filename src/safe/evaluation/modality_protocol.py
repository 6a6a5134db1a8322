"""The evaluation protocol for a run of another modality (``safe train --modality depth``, then ``safe policy
train``): the audio protocol's sections that apply to a modality of maps, on the deployed checkpoint (SAFE
weights with the distilled gate attached).

Four passes over the split, each row with the map it was prepared with (its own, or an unrelated one for a VL row
without a map: :func:`~safe.data.modality_rows.prepare_modality`):

* **base**: SAFE's hooks detached; **gate closed**: the maps given, no row using them; **gate open**: every row
  using its map; **policy**: the deployed gate deciding per row from its early state and the map's preview.

Reported:

* **retention** on the VL rows (no map of their own): accuracy per pass, answers changed against the base,
  McNemar's test of each pass against the base;
* **gains** on the modality's rows: accuracy of base / SAFE (gate open) / policy with bootstrap 95% CIs, the paired
  difference SAFE - base, per family;
* **policy**: use rate overall and per kind of row beside the oracle (the map used exactly where it turns a wrong
  answer right) and always-on, and the accuracy of each;
* **irrelevance**: the VL rows carry another row's map, so the policy's use rate there is its false-positive rate
  and the gate-open pass says how many of their answers such a map moves;
* **efficiency**: the policy stage's measured milliseconds per row with and without the map, priced at each
  policy's use rate;
* **stage gates**: the closed path identical on every row, VL accuracy with the gate open within
  :data:`~safe.evaluation.gates.STAGE2_MAX_VL_LOSS` of the base, the modality's gain of at least
  :data:`~safe.evaluation.gates.STAGE2_MIN_AUDIO_GAIN`, and the two per-modality policy targets
  (:data:`~safe.evaluation.gates.USE_RATE_TOLERANCE`, :data:`~safe.evaluation.gates.ACCURACY_TOLERANCE`).
"""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from safe.data.modality_rows import WITH_MAP, WITHOUT_MAP
from safe.data.prepared import PreparedSet
from safe.evaluation.gates import (
    ACCURACY_TOLERANCE,
    STAGE2_MAX_VL_LOSS,
    STAGE2_MIN_AUDIO_GAIN,
    USE_RATE_TOLERANCE,
)
from safe.evaluation.protocol import bootstrap_mean, policy_answers
from safe.evaluation.scoring import answer_score
from safe.evaluation.stats import mcnemar
from safe.models.generation import MAX_NEW_TOKENS, answer_questions

PASSES = ("base", "gate_closed", "gate_open", "policy")


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


@torch.no_grad()
def modality_answers(model, fmt, data: PreparedSet, previews: torch.Tensor,
                     progress: bool = False) -> tuple[dict[str, list[str]], torch.Tensor]:
    """Each pass's greedy answers (module docstring) and the policy's choice per row (bool tensor); ``model``
    carries the modality as its primary one with the distilled gate attached, ``data.audio`` holds each row's
    map through the modality's encoder and ``previews`` each map's preview."""
    def forced(open_: bool):
        return lambda idx: {"audio_embeddings": data.audio[idx],
                            "audio_mask": torch.full((len(idx),), open_, dtype=torch.bool)}

    answers = {}
    with model.hooks_detached() as base:
        answers["base"] = answer_questions(base, fmt, data.enc, data.pixels, max_new_tokens=MAX_NEW_TOKENS,
                                           progress=progress)
    answers["gate_closed"] = answer_questions(model, fmt, data.enc, data.pixels, max_new_tokens=MAX_NEW_TOKENS,
                                              extra=forced(False), progress=progress)
    answers["gate_open"] = answer_questions(model, fmt, data.enc, data.pixels, max_new_tokens=MAX_NEW_TOKENS,
                                            extra=forced(True), progress=progress)
    answers["policy"], used = policy_answers(model, fmt, data, previews)
    return answers, used.bool().cpu()


def _gate(gate: str, target: str, measured: str, passed: bool) -> dict[str, Any]:
    return {"gate": gate, "target": target, "measured": measured, "passed": bool(passed)}


def _ok(passed: bool, *figures: float) -> bool:
    """``passed``, unless a figure it was read from is NaN (no rows of that kind): then the gate fails."""
    return not any(np.isnan(x) for x in figures) and bool(passed)


def modality_gates(name: str, ev: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The stage gates (module docstring) of :func:`summarise`'s figures ``ev``, as ``{"gate", "target",
    "measured", "passed"}`` dicts (the audio protocol's form)."""
    r, g, p = ev["retention"], ev["gains"], ev["policy"]
    closed = r["answers_identical_gate_closed"]
    loss = r["vl_accuracy"]["base"] - r["vl_accuracy"]["gate_open"]
    gain = g["accuracy"]["safe"]["mean"] - g["accuracy"]["base"]["mean"]
    use, oracle = p["policy"]["use_rate"], p["oracle"]["use_rate"]
    acc, always = p["policy"]["accuracy"], p["always"]["accuracy"]
    return [
        _gate("gate closed: answers identical to the base", "every row",
              f"{closed['identical']} of {closed['n']}", closed["identical"] == closed["n"]),
        _gate(f"VL retention with the gate open (another row's {name} map)",
              f"< {100 * STAGE2_MAX_VL_LOSS:g} points VL accuracy lost", f"{100 * loss:.2f} points",
              _ok(loss < STAGE2_MAX_VL_LOSS, loss)),
        _gate(f"{name} gain", f">= {100 * STAGE2_MIN_AUDIO_GAIN:g} points over the base", f"{100 * gain:+.1f} points",
              _ok(gain >= STAGE2_MIN_AUDIO_GAIN - 1e-12, gain)),
        _gate(f"{name} policy use rate", f"within {100 * USE_RATE_TOLERANCE:g} points of the oracle's",
              f"{use:.3f} (oracle {oracle:.3f})", _ok(abs(use - oracle) <= USE_RATE_TOLERANCE + 1e-9, use, oracle)),
        _gate(f"{name} policy accuracy", f"at most {100 * ACCURACY_TOLERANCE:g} point below always-on's",
              f"{acc:.3f} (always-on {always:.3f})", _ok(acc >= always - ACCURACY_TOLERANCE - 1e-9, acc, always)),
    ]


def summarise(name: str, data: PreparedSet, answers: Mapping[str, list[str]], used: torch.Tensor,
              costs: Mapping[str, Mapping[str, float]] | None = None) -> dict[str, Any]:
    """Every section of the module docstring from the passes' answers (:func:`modality_answers`) on ``data``;
    ``costs``: the policy stage's ``costs_ms_per_query`` (kind of row -> ms without / with the map)."""
    ex = data.examples
    needs = [bool(x) for x in data.needs_audio.tolist()]
    own = [i for i in range(len(ex)) if needs[i]]
    vl = [i for i in range(len(ex)) if not needs[i]]
    scores = {k: [answer_score(a, e) for a, e in zip(v, ex)] for k, v in answers.items()}
    right = {k: [s == 1.0 for s in v] for k, v in scores.items()}
    use = [bool(u) for u in used.tolist()]
    # the oracle consults the map exactly where it turns a wrong answer right
    oracle = [scores["gate_open"][i] > scores["base"][i] for i in range(len(ex))]
    oracle_scores = [max(scores["gate_open"][i], scores["base"][i]) for i in range(len(ex))]

    def acc(values: Sequence[float], rows: Sequence[int]) -> float:
        return _mean([values[i] for i in rows])

    families = sorted({ex[i].family for i in own})
    retention = {
        "n": len(vl),
        "vl_accuracy": {k: acc(scores[k], vl) for k in PASSES},
        "answers_changed": {k: sum(answers[k][i] != answers["base"][i] for i in vl) for k in PASSES[1:]},
        "answers_identical_gate_closed": {"identical": sum(a == b for a, b in zip(answers["gate_closed"],
                                                                                answers["base"])), "n": len(ex)},
        "mcnemar": {k: mcnemar([right[k][i] for i in vl], [right["base"][i] for i in vl]).to_dict()
                    for k in ("gate_open", "policy")} if vl else {},
    }
    gains = {
        "n": len(own),
        "accuracy": {k: bootstrap_mean([scores[src][i] for i in own]) for k, src in
                     (("base", "base"), ("safe", "gate_open"), ("policy", "policy"))},
        "safe_minus_base": bootstrap_mean([scores["gate_open"][i] - scores["base"][i] for i in own]),
        "per_family": {f: {k: acc(scores[src], [i for i in own if ex[i].family == f]) for k, src in
                           (("base", "base"), ("safe", "gate_open"), ("policy", "policy"))} for f in families},
    }
    everyone = range(len(ex))
    policy = {
        "policy": {"use_rate": _mean([use[i] for i in everyone]), "accuracy": acc(scores["policy"], everyone),
                   "use_rate_own_rows": _mean([use[i] for i in own]), "use_rate_vl_rows": _mean([use[i] for i in vl])},
        "oracle": {"use_rate": _mean(oracle), "accuracy": _mean(oracle_scores)},
        "always": {"use_rate": 1.0, "accuracy": acc(scores["gate_open"], everyone)},
        "never": {"use_rate": 0.0, "accuracy": acc(scores["base"], everyone)},
    }
    irrelevance = {"n": len(vl), "false_positive_rate": policy["policy"]["use_rate_vl_rows"],
                   "answers_changed_gate_open": retention["answers_changed"]["gate_open"]}
    out = {"modality": name, "examples": len(ex), "retention": retention, "gains": gains, "policy": policy,
           "irrelevance": irrelevance}
    if costs:
        kinds = [WITH_MAP if n else WITHOUT_MAP for n in needs]

        def ms(uses: Sequence[bool]) -> float:
            key = {True: "with_audio", False: "without_audio"}
            return _mean([costs[k][key[bool(u)]] for k, u in zip(kinds, uses)])

        base_ms = ms([False] * len(ex))
        out["efficiency"] = {"ms_per_query": {"never": base_ms, "policy": ms(use), "oracle": ms(oracle),
                                              "always": ms([True] * len(ex))}}
        out["efficiency"]["ratio_to_base"] = {k: v / base_ms for k, v in out["efficiency"]["ms_per_query"].items()}
    out["stage_gates"] = modality_gates(name, out)
    return out


def run_modality_eval(model, fmt, name: str, data: PreparedSet, previews: torch.Tensor,
                      costs: Mapping[str, Mapping[str, float]] | None = None, progress: bool = False) -> dict[str, Any]:
    """The protocol (module docstring) on ``data`` (a split prepared for modality ``name``); ``model`` with the
    distilled gate attached (``safe policy train`` saves it under ``checkpoints/policy``)."""
    if model.policy is None:
        raise ValueError(f"the {name} evaluation needs the SAFE {name} weights with their policy attached "
                         "(safe policy train writes them under checkpoints/policy)")
    t0 = time.perf_counter()
    was = model.training
    model.eval()
    try:
        answers, used = modality_answers(model, fmt, data, previews, progress=progress)
    finally:
        model.train(was)
    out = summarise(name, data, answers, used, costs)
    out["samples"] = [{"question": e.question, "answer": e.answer, "family": e.family,
                       **{k: answers[k][i] for k in PASSES}, "used": bool(used[i])}
                      for i, e in enumerate(data.examples[:12])]
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out
