"""Measured adapter output scales: ``SAFEConfig.output_scale = "hidden_rms"`` resolved on real inputs.

A pretrained language model's residual stream is far wider than the unit scale an adapter starts at (Gemma 3
270M: hidden RMS 733 after layer 9 and 1,107 after layer 15 on the Gemma track's training prompts), so an
adapter's delta is a ten-thousandth of it and training barely moves the model. Scaling each adapter's output by its layer's measured hidden RMS makes
its weights' unit a unit of the stream. The gate still multiplies the whole delta, so a closed gate is still
exactly nothing; the scale is a constant of the checkpoint, saved in its config.
"""
from __future__ import annotations

import torch

from safe.models.config import HIDDEN_RMS


def _asking(model) -> list:
    """The modality branches of ``model`` whose ``output_scale`` is still to be measured."""
    return [model.modality(n) for n in model.modality_names if model.modality(n).config.output_scale == HIDDEN_RMS]


def needs_calibration(model) -> bool:
    """Whether any modality of ``model`` asks for ``output_scale="hidden_rms"`` (so a caller can skip building
    the inputs of :func:`calibrate_output_scale`)."""
    return bool(_asking(model))


def hidden_rms(model, inputs: dict, layers: list[int]) -> dict[int, float]:
    """The frozen base's hidden-state RMS after each decoder layer in ``layers`` on ``inputs`` (the base's
    own forward, SAFE's hooks detached), averaged over the attended positions when the mask matches the
    sequence (else over all)."""
    captured: dict[int, torch.Tensor] = {}

    def keep(i: int):
        def hook(_module, _args, output):
            captured[i] = (output[0] if isinstance(output, tuple) else output).detach()
        return hook

    handles = [model.backbone.decoder_layers[i].register_forward_hook(keep(i)) for i in layers]
    try:
        with torch.no_grad(), model.hooks_detached() as base:
            base(**inputs)
    finally:
        for h in handles:
            h.remove()
    mask = inputs.get("attention_mask")
    out = {}
    for i in layers:
        sq = captured[i].float().pow(2).mean(-1)  # (n, T)
        if mask is not None and tuple(mask.shape) == tuple(sq.shape):
            m = mask.to(sq.dtype)
            mean = (sq * m).sum() / m.sum().clamp_min(1.0)
        else:
            mean = sq.mean()
        out[i] = float(mean.sqrt())
    return out


def calibrate_output_scale(model, inputs: dict) -> dict[str, list[float]]:
    """For every modality of ``model`` (a :class:`~safe.models.safe_model.SAFEModel`) whose config says
    ``output_scale="hidden_rms"``: measure the base's hidden RMS after each of its fusion layers on ``inputs``
    (the base's keyword inputs, e.g. a batch of training prompts), set each adapter's ``output_scale`` to it
    and write the list into the config, so ``save_pretrained`` records it. Returns ``{modality: scales}``
    (empty when no modality asks). The same base and inputs give the same scales, so a resumed run that
    calibrates again gets what the interrupted one had."""
    branches = _asking(model)
    if not branches:
        return {}
    n_layers = model.backbone.num_layers
    rms = hidden_rms(model, inputs, sorted({i for b in branches for i in b.fusion_layers}))
    found = {}
    for b in branches:
        scales = [rms[i % n_layers] for i in b.config.fusion_layers]
        for i, s in zip(b.config.fusion_layers, scales):
            b.adapters[str(i % n_layers)].output_scale = s
        b.config.output_scale = scales
        found[b.name] = scales
    return found
