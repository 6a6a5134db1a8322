"""What Stage A promised, measured on a held-out split: retention (gate closed and open), audio gains,
captions, and that the frozen parts were not touched. Stage A's own evaluation (called by the Stage A
run and the ablations); the cross-stage evaluation protocol is :mod:`safe.evaluation.protocol`."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from safe.data.prepared import PreparedSet
from safe.evaluation.metrics import bleu, cider_d, exact_match
from safe.evaluation.stats import mcnemar
from safe.models.generation import answer_questions
from safe.models.safe_model import SAFEModel
from safe.processing.prompts import PromptFormat


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


@torch.no_grad()
def evaluate_stage_a(model: SAFEModel, fmt: PromptFormat, data: PreparedSet, progress: bool = False) -> dict:
    """Answers of the unwrapped base, of SAFE with the gate closed, and of SAFE with the gate open
    (each row with its own clip; VL rows carry unrelated audio), compared per family."""
    was = model.training
    model.eval()
    try:
        with model.hooks_detached() as base:
            base_preds = answer_questions(base, fmt, data.enc, data.pixels, progress=progress)
        with model.audio_disabled():
            closed_preds = answer_questions(model, fmt, data.enc, data.pixels, progress=progress)
        open_preds = answer_questions(model, fmt, data.enc, data.pixels, progress=progress,
                                      extra=lambda idx: {"audio_embeddings": data.audio[idx]})
    finally:
        model.train(was)
    ex = data.examples
    right = {name: [exact_match(p, e.answers) == 1.0 for p, e in zip(preds, ex)]
             for name, preds in (("base", base_preds), ("closed", closed_preds), ("open", open_preds))}
    # The set's own flags, not the records': a set of another modality's rows marks the rows naming its maps.
    needs = [bool(n) for n in data.needs_audio.tolist()]
    vl = [i for i in range(len(ex)) if not needs[i]]
    audio_qa = [i for i, e in enumerate(ex) if needs[i] and not e.is_caption]
    captions = [i for i, e in enumerate(ex) if e.is_caption]

    def acc(name: str, rows: list[int]) -> float:
        return _mean([float(right[name][i]) for i in rows])

    families = sorted({e.family for e in ex})
    per_family = {f: {name: acc(name, [i for i, e in enumerate(ex) if e.family == f]) for name in right}
                  for f in families}
    base_vl, open_vl = acc("base", vl), acc("open", vl)
    out = {
        "examples": len(ex),
        "vl_accuracy_base": base_vl,
        "vl_accuracy_gate_closed": acc("closed", vl),
        "vl_accuracy_gate_open": open_vl,
        "vl_retention_ratio_gate_open": open_vl / base_vl if base_vl else float("nan"),
        "answers_identical_gate_closed": _mean([float(a == b) for a, b in zip(closed_preds, base_preds)]),
        "vl_answers_changed_gate_open": sum(open_preds[i] != base_preds[i] for i in vl),
        "vl_examples": len(vl),
        "audio_accuracy_base": acc("base", audio_qa),
        "audio_accuracy": acc("open", audio_qa),
        "audio_examples": len(audio_qa),
        "per_family": per_family,
    }
    if vl:
        out["vl_mcnemar_gate_open"] = mcnemar([right["open"][i] for i in vl], [right["base"][i] for i in vl]).to_dict()
    if captions:
        refs = [list(ex[i].answers) for i in captions]
        out["caption_cider_d"] = cider_d([open_preds[i] for i in captions], refs)
        out["caption_cider_d_base"] = cider_d([base_preds[i] for i in captions], refs)
        out["caption_bleu2"] = bleu([open_preds[i] for i in captions], refs, n=2)
        out["caption_bleu2_base"] = bleu([base_preds[i] for i in captions], refs, n=2)
        out["caption_exact_match"] = acc("open", captions)
    out["samples"] = [{"question": ex[i].question, "answer": ex[i].answer, "base": base_preds[i],
                       "safe": open_preds[i], "family": ex[i].family} for i in range(min(12, len(ex)))]
    return out
