"""The policy at inference time: the policy picks the rows of a batch that consult audio; only those
rows reach the audio encoder and the adapters. Two paths, one per state layout
(:data:`safe.policy.features.STATE_KINDS`): the *cascade* (the proposal's state, with the base's
confidence, so the base answers first) and the *early* path (no confidence, decided before the language
model runs), which ``safe policy train`` deploys by default.

With the cascade state, for a batch, :func:`generate_with_policy`

1. starts the base model's own greedy/sampled ``generate`` (SAFE's gates closed: bit-exact base); at
   its first step a logits processor reads the first token's scores (the base's confidence), the image
   embedding having been recorded during the prefill (:mod:`safe.policy.features`);
2. there and then builds the state of every row (question and image embeddings, the audio preview,
   confidence) and asks the policy, one small MLP forward for the batch; a stopping criterion ends the
   VL-only generation of the rows that will use audio, so when every row left is finished (always at
   batch 1) the base stops after one step instead of decoding an answer that is thrown away;
3. for the rows that use audio only, runs the audio encoder, the projector and SAFE's ``generate``
   with the gates open, and puts those answers in place of the base's.

So a row the policy skips costs the base model plus the state and the policy, and its tokens are the
base's own on the same batch (ending rows early changes no other row's tokens); the encoder never sees
it (``SAFEModel.audio_encoder_calls`` counts rows). A row that uses audio costs the base's prefill and
first step, then the audio path: the price of asking the base's confidence first, measured and charged
in every latency figure (:mod:`safe.policy.outcomes`).

With the *early* state (``StateSpec.confidence_dim == 0``: no base confidence) the policy decides
before the language model runs: the question embedding is an embedding lookup and the image embedding
a forward of the vision tower and projector only (:func:`safe.policy.features.probe_image`); then
one ``generate`` runs the whole batch with audio in the chosen rows (SAFE's per-row mask: the other
rows are the base's own tokens on the same batch), its prefill reusing the probe's image features
instead of running the vision tower again (:meth:`safe.policy.features.ImageProbe.reused`). A skipped
row costs the base plus the question lookup, the preview and the policy; a row that uses audio costs
always-audio plus the same. The early path also serves beam search and ``num_return_sequences``
(``sequences`` then has a row per returned sequence, as ``generate`` returns them).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from safe.models.backbones import VL_INPUT_KEYS
from safe.policy.features import (
    ImageProbe,
    StateSpec,
    capture_image_embedding,
    check_deployable,
    confidence_features,
    probe_image,
    question_embedding,
    state_from_parts,
)
from safe.policy.network import SKIP_AUDIO, USE_AUDIO, GateMLP, PolicyNetwork
from safe.policy.preview import policy_preview
from safe.processing.vlm_prompts import ROW_PACKED, take_rows

POLICY_KINDS = ("ppo", "mlp")
_VISION_KWARGS = ("vision_feature_layer", "vision_feature_select_strategy", "interpolate_pos_encoding")


class AudioPolicy(nn.Module):
    """A trained gate plus the layout of the state it reads: ``decide(states) -> bool (n,)``.

    ``kind`` is ``"ppo"`` (the Stage B :class:`PolicyNetwork`, acting deterministically) or ``"mlp"``
    (the Stage C :class:`GateMLP`, use audio where its probability is above 0.5). Saved and loaded
    with the SAFE checkpoint (``SAFEModel.save_pretrained``), keys under ``policy.``.
    """

    def __init__(self, spec: StateSpec, kind: str = "ppo", hidden: int = 64, net: nn.Module | None = None) -> None:
        super().__init__()
        if kind not in POLICY_KINDS:
            raise ValueError(f"policy kind must be one of {POLICY_KINDS}, got {kind!r}")
        self.spec, self.kind, self.hidden = spec, kind, int(hidden)
        if net is None:
            net = PolicyNetwork(spec.dim, hidden) if kind == "ppo" else GateMLP(spec.dim, hidden)
        expected = PolicyNetwork if kind == "ppo" else GateMLP
        if not isinstance(net, expected) or net.state_dim != spec.dim:
            raise ValueError(f"a {kind!r} policy needs a {expected.__name__} over {spec.dim} state features, "
                             f"got {type(net).__name__} over {getattr(net, 'state_dim', '?')}")
        self.net = net
        self.requires_grad_(False)
        self.eval()

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "hidden": self.hidden, "state": self.spec.to_dict()}

    def check_deployable(self, model, frontend) -> None:
        """Raise ``ValueError`` unless ``model`` (with its audio ``frontend``) computes every part of the
        state this policy was trained on, at its width (:func:`safe.policy.features.check_deployable`):
        a deployed path calls this when it loads, so a mismatch fails there, not on the first request."""
        check_deployable(self.spec, model, frontend)

    def preview(self, model, frontend, waveforms) -> torch.Tensor:
        """The preview part of this policy's state for ``waveforms`` (:func:`safe.policy.preview.policy_preview`
        with ``model``'s audio encoder): what ``generate`` takes as ``audio_preview``. Layers below the policy
        (the evaluation) call it on the attached policy instead of importing this package."""
        return policy_preview(self.spec, waveforms, model.audio_encoder, frontend)

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> AudioPolicy:
        return cls(StateSpec.from_dict(cfg["state"]), cfg["kind"], cfg["hidden"])

    def generate_with(self, model, **kwargs) -> PolicyGenerateOutput:
        """``model.generate`` with this policy (attached to ``model``) choosing the audio rows: the hook
        ``SAFEModel.generate`` calls, so the model package needs no import of this one
        (:func:`generate_with_policy`)."""
        return generate_with_policy(model, **kwargs)

    @torch.no_grad()
    def use_probability(self, states: torch.Tensor) -> torch.Tensor:
        if self.kind == "ppo":
            return self.net.use_probability(states)
        return torch.sigmoid(self.net(states))

    @torch.no_grad()
    def decide(self, states: torch.Tensor) -> torch.Tensor:
        return self.net.decide(states)

    @torch.no_grad()
    def decide_with_probability(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(decide(states), use_probability(states))`` from one forward of the network, both on the CPU
        (``states`` are moved to the policy's device first: a policy attached to a GPU model lives there)."""
        states = states.to(next(self.net.parameters()).device)
        if self.kind == "ppo":
            logits, _ = self.net(states)
            use, prob = logits[:, USE_AUDIO] > logits[:, SKIP_AUDIO], torch.softmax(logits, dim=-1)[:, USE_AUDIO]
        else:
            prob = torch.sigmoid(self.net(states))
            use = prob > 0.5
        return use.cpu(), prob.cpu()


@dataclass
class BasePass:
    """The VL-only pass: ``sequences`` exactly as the base's ``generate`` returns them, and per row the
    ``state`` parts it yields (question / image embeddings (n, hidden), confidence features (n, 3), the
    vision tower's pooled output (n, vision width) where it has one, else None);
    ``use``: (n,) bool, the rows a ``decide`` callback chose for audio (None without one)."""

    sequences: torch.Tensor
    question: torch.Tensor
    image: torch.Tensor
    confidence: torch.Tensor
    use: torch.Tensor | None = None
    pooled: torch.Tensor | None = None

    def parts(self, preview: torch.Tensor | None = None, preview_kind: str = "stats") -> dict[str, Any]:
        """The state parts by :data:`~safe.policy.features.STATE_PARTS` name (``preview``: the clips'
        preview of ``preview_kind``), for :func:`~safe.policy.features.state_from_parts`."""
        return _parts(self.question, self.image, self.pooled, preview, preview_kind, self.confidence)


def _parts(question, image, pooled, preview, preview_kind: str, confidence=None) -> dict[str, Any]:
    return {"question": question, "image": image, "image_pooled": pooled,
            "preview" if preview_kind == "stats" else "preview_embedding": preview, "confidence": confidence}


@dataclass
class PolicyGenerateOutput:
    """What :func:`generate_with_policy` returns.

    ``sequences``: (n, L) tokens, rows that skipped audio are the base's own output (right-padded
    with the pad token if audio rows generated longer; on the early path with ``num_return_sequences``
    r > 1, (n * r, L), each row's sequences consecutive, as ``generate`` returns them); ``used_audio``: (n,) bool, True where the
    audio path ran; ``use_probability``: (n,) the policy's P(use audio); ``states``: (n, d) the
    policy's inputs."""

    sequences: torch.Tensor
    used_audio: torch.Tensor
    use_probability: torch.Tensor
    states: torch.Tensor


def _unsupported(kwargs: dict, early: bool) -> None:
    if not early:  # the cascade reads the base's own greedy/sampled pass: one sequence per row
        for key in ("num_beams", "num_return_sequences"):
            if int(kwargs.get(key, 1) or 1) != 1:
                raise ValueError(f"generate with a cascade policy supports one sequence per row (greedy or "
                                 f"sampling); got {key}={kwargs[key]}. An early-state policy, or audio_mask to "
                                 f"choose rows yourself, works with beam search.")
    if kwargs.get("input_ids") is None:
        raise ValueError("generate with a policy needs input_ids (the question embedding is read from them)")


class _FirstStep(LogitsProcessor):
    """Records the scores of the first generated token and, given ``decide``, the rows that will use
    audio; returns the scores unchanged so the base's tokens are its own."""

    def __init__(self, decide=None) -> None:
        self.decide, self.scores, self.use = decide, None, None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.scores is None:
            self.scores = scores.detach().clone()
            if self.decide is not None:
                self.use = self.decide(self.scores)
        return scores


class _EndChosenRows(StoppingCriteria):
    """Marks the rows :class:`_FirstStep` chose for audio as finished: their VL-only answer is not needed."""

    def __init__(self, first: _FirstStep) -> None:
        self.first = first

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        if self.first.use is None:
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        return self.first.use.to(input_ids.device)


def _with(kwargs: dict[str, Any], key: str, extra, kind) -> Any:
    given = kwargs.get(key)
    return kind([*(given or []), extra])


@torch.no_grad()
def base_pass(model, vl_inputs: dict[str, torch.Tensor], decide=None, **generate_kwargs) -> BasePass:
    """The base model's ``generate`` on ``vl_inputs`` with every SAFE gate closed, plus the state parts.

    ``decide``: optional ``(parts) -> bool (n,)`` called at the first step with the state parts by name
    (question, image, image_pooled, confidence; see :meth:`BasePass.parts`); the rows it marks stop
    generating there (their ``sequences`` rows are then not the base's answer) and come back as
    ``BasePass.use``. Without it every row is the base's full answer."""
    bb = model.backbone
    n = vl_inputs["input_ids"].shape[0]
    question = question_embedding(model.base_model, vl_inputs["input_ids"], vl_inputs.get("attention_mask"),
                                  bb.image_token_id).cpu()
    with model.audio_disabled(), capture_image_embedding(bb) as seen:

        def image() -> torch.Tensor:
            got = seen.get("image")  # no image in this batch: the image part of the state is zeros
            return torch.zeros(n, bb.hidden_size) if got is None else got.cpu()

        def pooled() -> torch.Tensor | None:  # None: the tower has no pooled output (a batch without images
            got = seen.get("pooled")           # gets zeros of the width the policy reads, in _zero_image)
            return None if got is None else got.cpu()

        first = _FirstStep(None if decide is None else lambda scores: decide(_parts(
            question, image(), pooled(), None, "stats", confidence_features(scores).cpu())))
        kwargs = dict(generate_kwargs)
        kwargs["logits_processor"] = _with(kwargs, "logits_processor", first, LogitsProcessorList)
        if decide is not None:
            kwargs["stopping_criteria"] = _with(kwargs, "stopping_criteria", _EndChosenRows(first),
                                                StoppingCriteriaList)
        sequences = model.base_model.generate(**vl_inputs, **kwargs)
    if first.scores is None:
        raise RuntimeError("the base model's generate produced no token (max_new_tokens must be >= 1)")
    use = None if first.use is None else first.use.cpu()
    return BasePass(sequences, question, image(), confidence_features(first.scores).cpu(), use, pooled())


def _rows(kwargs: dict[str, Any], rows: torch.Tensor, n: int, packed_image_token: int | None = None) -> dict[str, Any]:
    return take_rows(kwargs, rows, n, packed_image_token)


def _pad_id(base_model: nn.Module) -> int:
    cfg = getattr(base_model, "generation_config", None)
    for key in ("pad_token_id", "eos_token_id"):
        v = getattr(cfg, key, None)
        if isinstance(v, (list, tuple)):
            v = v[0] if v else None
        if v is not None:
            return int(v)
    return 0


def _merge(base: torch.Tensor, audio: torch.Tensor, rows: torch.Tensor, pad: int) -> torch.Tensor:
    width = max(base.shape[1], audio.shape[1])
    out = torch.full((base.shape[0], width), pad, dtype=base.dtype, device=base.device)
    out[:, : base.shape[1]] = base
    out[rows.to(base.device)] = torch.nn.functional.pad(audio, (0, width - audio.shape[1]), value=pad).to(base.device)
    return out


@torch.no_grad()
def generate_with_policy(model, *, audio_preview: torch.Tensor, audio_features: torch.Tensor | None = None,
                         audio_embeddings: torch.Tensor | None = None, **kwargs) -> PolicyGenerateOutput:
    """The cascade or the early path of the module docstring (by ``model.policy.spec.early``), for a
    ``SAFEModel`` with ``model.policy`` set.

    ``audio_preview``: (n, preview_dim), the preview part the policy's state reads, of the same clips
    (:func:`safe.policy.preview.policy_preview`: statistics, the encoder's preview embedding, or (n, 0)); ``audio_features`` (encoder input) or ``audio_embeddings`` (cached encoder output): (n, ...)
    for every row, of which only the chosen rows are used — or ``audio_features`` as a callable
    ``rows (LongTensor) -> features of those rows``, so the front end runs for chosen rows only.
    Other keyword arguments go to ``generate``.
    """
    policy: AudioPolicy = model.policy
    if policy is None:
        raise ValueError("this SAFE model has no policy attached (model.attach_policy(...))")
    if (audio_features is None) == (audio_embeddings is None):
        raise ValueError("generate with a policy needs audio_features or audio_embeddings (exactly one)")
    _unsupported(kwargs, policy.spec.early)
    audio = audio_features if audio_embeddings is None else audio_embeddings
    n = kwargs["input_ids"].shape[0]
    lazy = callable(audio) and not isinstance(audio, torch.Tensor)
    if not lazy and audio.shape[0] != n:
        raise ValueError(f"audio has {audio.shape[0]} rows but the batch has {n}")
    if audio_preview is None or tuple(audio_preview.shape) != (n, policy.spec.preview_dim):
        got = None if audio_preview is None else tuple(audio_preview.shape)
        raise ValueError(f"audio_preview must have shape ({n}, {policy.spec.preview_dim}), got {got}")
    vl_inputs = {k: v for k, v in kwargs.items() if k in VL_INPUT_KEYS}
    gen_kwargs = {k: v for k, v in kwargs.items() if k not in vl_inputs}
    preview = audio_preview.float().cpu()
    if policy.spec.early:
        return _generate_early(model, policy, vl_inputs, kwargs, preview, audio, lazy, audio_embeddings is not None)
    decided: dict[str, torch.Tensor] = {}

    def decide(parts: dict[str, Any]) -> torch.Tensor:
        parts[_preview_name(policy.spec)] = preview
        decided["states"] = state_from_parts(policy.spec, _zero_image(parts, policy.spec, vl_inputs))
        use, decided["prob"] = policy.decide_with_probability(decided["states"])
        return use

    bp = base_pass(model, vl_inputs, decide=decide, **gen_kwargs)
    states, use, prob = decided["states"], bp.use, decided["prob"]
    sequences = bp.sequences
    if bool(use.any()):
        rows = use.nonzero().squeeze(1)
        sub = _rows(kwargs, rows, n, model.backbone.image_token_id if model.backbone.name in ROW_PACKED else None)
        picked = audio(rows) if lazy else audio[rows.to(audio.device)]
        ones = torch.ones(rows.numel(), dtype=torch.bool, device=picked.device)
        with model.audio_context(None if audio_embeddings is not None else picked, ones, rows.numel(),
                                 audio_embeddings=picked if audio_embeddings is not None else None):
            audio_out = model.base_model.generate(**sub)
        sequences = _merge(sequences, audio_out, rows, _pad_id(model.base_model))
    return PolicyGenerateOutput(sequences, use, prob, states)


def _preview_name(spec: StateSpec) -> str:
    return "preview" if spec.preview_kind == "stats" else "preview_embedding"


def _zero_image(parts: dict[str, Any], spec: StateSpec, vl_inputs: dict[str, Any]) -> dict[str, Any]:
    """A batch without images has no image part: zeros of the width the state reads, whichever kind (as the
    projection part always was); with images, a missing pooled output stays missing (an error)."""
    if vl_inputs.get("pixel_values") is None:
        n = vl_inputs["input_ids"].shape[0]
        parts = {**parts, "image": torch.zeros(n, spec.image_dim), "image_pooled": torch.zeros(n, spec.image_dim)}
    return parts


def early_probe(model, vl_inputs: dict[str, Any]) -> tuple[torch.Tensor, ImageProbe | None]:
    """The question embedding (n, hidden) and the :class:`~safe.policy.features.ImageProbe` of the early
    state, computed without running the language model; the probe is None for a batch without
    ``pixel_values`` (the image part is then zeros, as in the cascade's :func:`base_pass`). In
    transformers 5.24 both LLaVA's and BLIP-2's ``generate`` encode the images once per input row, before
    expanding for beams / returned sequences, so the probe's record serves beam search too (a base that
    encodes the expanded batch would just run its image tower again: correct, no saving)."""
    bb = model.backbone
    question = question_embedding(model.base_model, vl_inputs["input_ids"], vl_inputs.get("attention_mask"),
                                  bb.image_token_id).cpu()
    if vl_inputs.get("pixel_values") is None:
        return question, None
    return question, probe_image(model.base_model, bb, vl_inputs)


def early_state_parts(model, vl_inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The question and image embeddings of the early state, (n, hidden) each on the CPU, computed without
    running the language model (an embedding lookup and :func:`safe.policy.features.image_embedding`).
    A batch without ``pixel_values`` gets a zero image part, as the cascade's :func:`base_pass` does."""
    question, probe = early_probe(model, vl_inputs)
    image = torch.zeros(question.shape[0], model.backbone.hidden_size) if probe is None else probe.embedding
    return question, image


def reusing(probe: ImageProbe | None):
    """``probe.reused()``, or a no-op block for a batch without images."""
    return contextlib.nullcontext() if probe is None else probe.reused()


def early_states(model, policy: AudioPolicy, vl_inputs: dict[str, Any], preview: torch.Tensor,
                 name: str = "audio") -> tuple[torch.Tensor, ImageProbe | None]:
    """``(states, probe)``: the early state ``policy`` (modality ``name``'s) reads for each row of a batch
    (question and image embeddings without running the language model, and ``preview``: its modality's preview
    of each row), and the image probe (None without images). ``ValueError`` for a policy whose state needs the
    base's confidence, naming the flag that decides those rows instead."""
    if policy.spec.confidence_dim:
        raise ValueError(f"the {name} policy's state includes the base's confidence (a cascade policy): it decides "
                         "inside its own generate, not beside another modality's policy; pass "
                         f"use_{name}=True / False for these rows")
    n = vl_inputs["input_ids"].shape[0]
    question, probe = early_probe(model, vl_inputs)
    image = torch.zeros(n, model.backbone.hidden_size) if probe is None else probe.embedding
    parts = _parts(question, image, None if probe is None else probe.pooled, preview, policy.spec.preview_kind)
    return state_from_parts(policy.spec, _zero_image(parts, policy.spec, vl_inputs)), probe


@torch.no_grad()
def decide_rows(model, policy: AudioPolicy, vl_inputs: dict[str, Any], preview: torch.Tensor,
                name: str = "audio") -> tuple[torch.Tensor, torch.Tensor]:
    """``(use, probability)``, (n,) each on the CPU: an early-state ``policy``'s decision for every row of a
    batch, made before the language model runs (:func:`early_states`), as :func:`generate_with_policy` makes it.
    A model carrying several modalities asks each one's policy so, then runs one ``generate`` with every
    modality in its chosen rows (``safe.pipeline``)."""
    states, _ = early_states(model, policy, vl_inputs, preview, name)
    return policy.decide_with_probability(states)


def _generate_early(model, policy: AudioPolicy, vl_inputs: dict, kwargs: dict, preview: torch.Tensor, audio,
                    lazy: bool, embeddings: bool) -> PolicyGenerateOutput:
    """The early state's path: decide from question, image and preview before the language model runs,
    then one ``generate`` for the whole batch with audio in the chosen rows only (the others are the
    base's own tokens on the same batch; the encoder sees only the chosen rows). That ``generate``'s
    prefill reuses the probe's image features (:meth:`~safe.policy.features.ImageProbe.reused`), so
    the vision tower and projector run once per batch, as in the base alone."""
    n = vl_inputs["input_ids"].shape[0]
    # options that change the vision side (LLaVA's feature layer, BLIP-2's position interpolation) reach
    # the probe too, so its image features are the ones the generate's prefill computes (and reuses)
    vision = {k: v for k, v in kwargs.items() if k in _VISION_KWARGS}
    states, probe = early_states(model, policy, {**vl_inputs, **vision}, preview)
    use, prob = policy.decide_with_probability(states)
    if not bool(use.any()):
        with model.audio_disabled(), reusing(probe):
            return PolicyGenerateOutput(model.base_model.generate(**kwargs), use, prob, states)
    rows = use.nonzero().squeeze(1)
    if lazy:  # featurise the chosen clips only; the other rows of the full-size input stay zeros, unread
        picked = audio(rows)
        full = picked.new_zeros((n, *picked.shape[1:]))
        full[rows.to(full.device)] = picked
    else:
        full = audio
    mask = use.to(full.device)
    with model.audio_context(None if embeddings else full, mask, n, audio_embeddings=full if embeddings else None), \
            reusing(probe):
        sequences = model.base_model.generate(**kwargs)
    return PolicyGenerateOutput(sequences, use, prob, states)
