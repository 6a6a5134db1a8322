"""The policy's state (docs/design.md): question embedding, image embedding, a cheap audio preview, and
the base model's confidence from its VL-only pass. Two layouts (:data:`STATE_KINDS`):

* *early* (``StateSpec(confidence_dim=0)``, the default of ``safe policy train``): no confidence, so
  the state is computed before the language model runs — the question embedding is a lookup and
  :func:`probe_image` runs the base only up to its image projection, recording the image path's
  calls so the ``generate`` that follows reuses them (:meth:`ImageProbe.reused`): the vision tower
  runs once per batch, as in the base alone;
* *cascade* (the proposal's): all four parts, read off the one VL-only ``generate`` the base runs
  first (:mod:`safe.policy.runtime`), so beyond the preview the state costs nothing extra.

The parts:

* question embedding: the mean of the LLM's input embeddings over the prompt's text tokens (image
  placeholders and padding left out) — one embedding lookup;
* image embedding: the mean over image tokens of the base's image projection output (LLaVA's
  multi-modal projector, BLIP-2's language projection, Mllama's cross-attention states), or for the
  families with a per-image token count (LLaVA-NeXT, Qwen-VL, Idefics3, ...) the mean of the LLM's input
  embeddings at the image placeholders, i.e. the model's own ``get_image_features`` output: captured by a forward hook during the
  base's own prefill in the cascade, computed by the :func:`probe_image` probe in the early state;
  zeros for a batch without images;
* confidence: from the logits of the first generated token (max probability, entropy in nats,
  top-1 minus top-2 probability) — read off the base's pass (cascade only);
* which parts a state holds (the image as the projection's mean or the tower's pooled output, the preview
  as statistics or the encoder's embedding, any part left out) is its :class:`StateSpec`, saved with the
  policy; :func:`state_from_parts` builds every state, in the training tables and the deployed paths alike;
* audio preview (:func:`safe.processing.features.audio_preview`): log-RMS energy and zero-crossing
  rate in ``PREVIEW_SEGMENTS`` equal segments of the raw waveform, plus overall log-RMS and log-peak. It never runs the audio front end or encoder;
  its measured cost is recorded by :func:`safe.policy.outcomes.measure_costs` (``make demo``, batches
  of 16 on one CPU thread: about 0.05 ms per one-second clip, against 1.3 to 2.0 ms per query for the
  built-in audio path — front end, encoder, projector and SAFE's ``generate`` — and about 0.1 ms for
  the early state's question and image parts).
"""
from __future__ import annotations

import contextlib
import copy
import inspect
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

# The preview lives in safe.processing (the processor computes it); its width is part of the state.
from safe.processing.features import PREVIEW_DIM

IMAGE_KINDS = ("projection", "pooled")
"""Which image embedding the state holds: ``projection`` the mean over image tokens of the base's image
projection (the layout of every policy saved before the choice existed), ``pooled`` the vision tower's own
pooled output (CLIP's ``pooler_output``: the post-layer-norm class token), read off the same forward."""
PREVIEW_KINDS = ("stats", "embedding")
"""Which audio preview the state holds: ``stats`` the waveform statistics of
:func:`safe.processing.features.audio_preview` (the layout of every policy saved before the choice
existed), ``embedding`` :func:`preview_embedding`, the frozen encoder's first layer on a short window."""

STATE_PARTS = ("question", "image", "image_pooled", "preview", "preview_embedding", "confidence")
"""Every part a policy's state can read, by name; a :class:`StateSpec` reads at most one image and one preview
part, in the order question, image, preview, confidence (:attr:`StateSpec.parts`)."""

STATE_KINDS = ("early", "cascade")
"""The two state layouts a policy can be trained on, the default first (``safe policy train --state``):
without the base's confidence (``confidence_dim = 0``) or with it (the proposal's)."""
CONFIDENCE_DIM = 3


@dataclass(frozen=True)
class StateSpec:
    """Widths of the four parts of the state vector, in order: question, image, preview, confidence, and
    which image and preview part the state holds (``image_kind`` / ``preview_kind``). Saved with the policy
    (its ``config()``), so the deployed path rebuilds exactly the parts the policy was trained on
    (:func:`state_from_parts`); a width of 0 leaves that part out (:attr:`parts`).

    ``confidence_dim = 0`` is the *early* state: question, image and preview only, all computable
    before the language model runs, so the policy decides first and one ``generate`` serves the batch
    (:mod:`safe.policy.runtime`); 3 (the default) is the proposal's state with the base's confidence."""

    question_dim: int
    image_dim: int
    preview_dim: int = PREVIEW_DIM
    confidence_dim: int = CONFIDENCE_DIM
    image_kind: str = IMAGE_KINDS[0]
    """:data:`IMAGE_KINDS`; a spec saved before the field existed reads as ``projection``."""
    preview_kind: str = PREVIEW_KINDS[0]
    """:data:`PREVIEW_KINDS`; a spec saved before the field existed reads as ``stats``."""

    def __post_init__(self) -> None:
        if self.confidence_dim not in (0, CONFIDENCE_DIM):
            raise ValueError(f"confidence_dim must be 0 (early state) or {CONFIDENCE_DIM}, got {self.confidence_dim}")
        if self.image_kind not in IMAGE_KINDS:
            raise ValueError(f"image_kind must be one of {IMAGE_KINDS}, got {self.image_kind!r}")
        if self.preview_kind not in PREVIEW_KINDS:
            raise ValueError(f"preview_kind must be one of {PREVIEW_KINDS}, got {self.preview_kind!r}")
        for name in ("question_dim", "image_dim", "preview_dim"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be an integer >= 0 (0: the state leaves the part out), got {v!r}")
        if self.dim == 0:
            raise ValueError("a policy state needs at least one part (every width is 0)")

    @property
    def parts(self) -> tuple[str, ...]:
        """The :data:`STATE_PARTS` this state reads, in state order (a part of width 0 is left out)."""
        image = "image" if self.image_kind == "projection" else "image_pooled"
        preview = "preview" if self.preview_kind == "stats" else "preview_embedding"
        widths = ((self.question_dim, "question"), (self.image_dim, image), (self.preview_dim, preview),
                  (self.confidence_dim, "confidence"))
        return tuple(name for width, name in widths if width)

    def width(self, part: str) -> int:
        """The width of ``part`` (a name of :attr:`parts`) in this state."""
        return {"question": self.question_dim, "image": self.image_dim, "image_pooled": self.image_dim,
                "preview": self.preview_dim, "preview_embedding": self.preview_dim,
                "confidence": self.confidence_dim}[part]

    @property
    def early(self) -> bool:
        """True for the state without the base's confidence (decided before the base runs)."""
        return self.confidence_dim == 0

    @property
    def dim(self) -> int:
        return self.question_dim + self.image_dim + self.preview_dim + self.confidence_dim

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StateSpec:
        """From :meth:`to_dict`'s form; a dict saved before the ``*_kind`` fields existed (widths only) gives
        the layout it was saved with (projection image, statistics preview)."""
        return cls(**{k: (str(v) if k.endswith("_kind") else int(v)) for k, v in d.items()})


def confidence_features(first_logits: torch.Tensor) -> torch.Tensor:
    """(n, V) logits of the first generated token -> (n, 3): max probability, entropy (nats), and the
    margin between the two most likely tokens."""
    logp = torch.log_softmax(first_logits.float(), dim=-1)
    p = logp.exp()
    top = p.topk(2, dim=-1).values if p.shape[-1] > 1 else torch.cat([p, torch.zeros_like(p)], dim=-1)
    entropy = -(p * logp).nan_to_num(0.0).sum(-1)
    return torch.stack([top[:, 0], entropy, top[:, 0] - top[:, 1]], dim=-1)


def question_embedding(base_model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                       image_token_id: int) -> torch.Tensor:
    """Mean input embedding of each prompt's text tokens, (n, hidden) float32."""
    emb = base_model.get_input_embeddings()(input_ids).float()
    keep = input_ids != image_token_id
    if attention_mask is not None:
        keep &= attention_mask.bool()
    w = keep.float().unsqueeze(-1)
    return (emb * w).sum(1) / w.sum(1).clamp_min(1.0)


def _image_hooks(source, seen: dict, stop=None) -> list:
    """Hooks recording the image embedding (n, hidden) under ``seen["image"]`` at the first call (the
    prefill); ``stop``: a callable run right after it is recorded (the probe stops the base there).

    ``source``: a :class:`~safe.models.backbones.Backbone` or (the older form) a projection module. With a
    backbone of the ``placeholders`` kind the embedding is the mean over each row's image placeholder
    positions of the text model's ``inputs_embeds`` (the features the model's own ``get_image_features``
    put there); otherwise the mean of the projection's output over each row's image tokens."""
    handles = []
    backbone = source if hasattr(source, "image_projection") else None
    inner = None if backbone is None else backbone.model._modules.get("model")
    tower = None if backbone is None else _vision_tower(backbone.model)
    if tower is not None:  # the pooled image embedding (IMAGE_KINDS "pooled"), recorded on the same forward
        def pooled_hook(_module, _args, output):
            pooled = getattr(output, "pooler_output", None)
            if "pooled" not in seen and isinstance(pooled, torch.Tensor) and pooled.dim() == 2:
                seen["pooled"] = pooled.detach().float()
        handles.append(tower.register_forward_hook(pooled_hook))
    if inner is not None:  # the batch's input_ids (rows, and where the image placeholders are)
        def ids_hook(_module, args, kwargs):
            if "_ids" not in seen:
                ids = kwargs.get("input_ids", args[0] if args else None)
                seen["_ids"] = ids if isinstance(ids, torch.Tensor) else None
        handles.append(inner.register_forward_pre_hook(ids_hook, with_kwargs=True))
    if backbone is not None and backbone.image_embedding == "placeholders":
        def embeds_hook(_module, _args, kwargs):
            ids, emb = seen.get("_ids"), kwargs.get("inputs_embeds")
            if "image" in seen or ids is None or emb is None:
                return
            w = (ids == backbone.image_token_id).to(emb.device).unsqueeze(-1)
            if not bool(w.any()):  # a text-only batch: no image part (zeros, as without pixel_values)
                return
            wf = w.float()
            seen["image"] = ((emb.detach().float() * wf).sum(1) / wf.sum(1).clamp_min(1.0))
            if stop is not None:
                stop()
        handles.append(backbone.text_model.register_forward_pre_hook(embeds_hook, with_kwargs=True))
        return handles
    projection = source if backbone is None else backbone.image_projection

    def hook(_module, _inputs, output):
        if "image" not in seen:
            out = output[0] if isinstance(output, tuple) else output
            ids = seen.get("_ids")
            rows = ids.shape[0] if ids is not None else out.shape[0]  # Mllama: images x tiles per row
            seen["image"] = out.detach().float().reshape(rows, -1, out.shape[-1]).mean(1)
            if stop is not None:
                stop()

    handles.append(projection.register_forward_hook(hook))
    return handles


@contextlib.contextmanager
def capture_image_embedding(source) -> Iterator[dict[str, torch.Tensor]]:
    """While open, records the image embedding of the first (prefill) call, (n, hidden), under key
    ``"image"`` of the yielded dict (see :func:`_image_hooks`; ``source``: the backbone, or a projection
    module for the projection-output kind). The hooks are removed on exit, also after an exception."""
    seen: dict[str, torch.Tensor] = {}
    handles = _image_hooks(source, seen)
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()
        seen.pop("_ids", None)


class _ProjectionDone(BaseException):
    """Raised by :func:`probe_image`'s hook to stop the base model right after the image projection
    (a ``BaseException``, so an ``except Exception`` inside a model cannot swallow it and let the
    language model run)."""


_IMAGE_PATH = ("vision_tower", "vision_model", "visual", "qformer")
"""Submodules (of the model or of LLaVA's inner ``model``) that compute image features before the
projection: LLaVA's vision tower, BLIP-2's vision model and Q-Former."""


def _vision_tower(base_model: nn.Module) -> nn.Module | None:
    """The first of :data:`_IMAGE_PATH`'s towers the model has (LLaVA's vision tower, BLIP-2's vision model),
    or None."""
    for owner in (base_model, base_model._modules.get("model")):
        for name in _IMAGE_PATH[:3]:
            m = None if owner is None else owner._modules.get(name)
            if m is not None:
                return m
    return None


def _image_path(base_model: nn.Module, projection: nn.Module) -> list[nn.Module]:
    found: list[nn.Module] = []
    for owner in (base_model, base_model._modules.get("model")):
        for name in _IMAGE_PATH:
            m = None if owner is None else owner._modules.get(name)
            if m is not None and all(m is not f for f in found):
                found.append(m)
    return [*found, projection]


def _same(a: Any, b: Any) -> bool:
    """Equal call arguments: tensors by identity or exact values (dtype, shape and device included)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
                and (a is b or (a.dtype == b.dtype and a.shape == b.shape and a.device == b.device
                                and torch.equal(a, b))))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    try:
        return bool(a == b)
    except Exception:  # an argument without a usable ==: treat as different (no replay, still correct)
        return False


def _bound(forward, args: tuple, kwargs: dict) -> dict[str, Any] | None:
    """The call's arguments by name (defaults filled in), so positional and keyword calls compare.
    ``forward``: a callable or its ``inspect.Signature``."""
    try:
        sig = forward if isinstance(forward, inspect.Signature) else inspect.signature(forward)
        bound = sig.bind(*args, **kwargs)
    except (TypeError, ValueError):
        return None
    bound.apply_defaults()
    return dict(bound.arguments)


class ImageProbe:
    """The image part of the early state plus what computing it cost, kept for the prefill.

    ``embedding``: (n, hidden) float32 on the CPU, the mean over image tokens of the projection output
    (the value :func:`capture_image_embedding` records during a full prefill). ``records``: for every
    module of the base's image path (vision tower / vision model, Q-Former, projection) the arguments
    of its one call and its output. Inside :meth:`reused`, the first call of each of these modules whose
    arguments are *exactly* the recorded ones (tensors by identity or ``torch.equal``, other arguments
    by ``==``) returns the recorded output instead of running again; any other call runs the module
    as usual. So the base's outputs are bit-exact either way (a deterministic module given the same
    inputs computes the same tensor), and the image tower runs once per early-path batch when the
    prefill's call matches (``replays`` counts the calls served from the record)."""

    def __init__(self, embedding: torch.Tensor, records: list[tuple[nn.Module, dict[str, Any], Any]],
                 pooled: torch.Tensor | None = None) -> None:
        self.embedding, self.records, self.replays = embedding, records, 0
        self.pooled = pooled
        """(n, vision hidden) the vision tower's pooled output where it has one (else None)."""

    @contextlib.contextmanager
    def reused(self) -> Iterator[ImageProbe]:
        """While open, the recorded image-path calls are answered from the record, once each. A probe
        serves one block: the records are released on exit (and each one as soon as it is replayed),
        so the image tower's activations are not held past the prefill."""
        patched = []
        for module, inputs, output in self.records:
            if "forward" in module.__dict__:  # someone else patched it: leave it alone (no reuse there)
                continue
            original = module.forward
            pending = [(inputs, output)]

            # defaults bind this iteration's module (a closure would see the last one)
            def forward(*args, _original=original, _sig=inspect.signature(original), _pending=pending, **kwargs):  # noqa: B008
                if _pending:
                    bound = _bound(_sig, args, kwargs)
                    if bound is not None and _same(bound, _pending[0][0]):
                        _, out = _pending.pop()
                        self.replays += 1
                        # a shallow copy: callers may set fields of a ModelOutput (LLaVA sets pooler_output)
                        return copy.copy(out)
                return _original(*args, **kwargs)

            module.forward = forward
            patched.append(module)
        self.records = []
        try:
            yield self
        finally:
            for module in patched:
                del module.forward  # back to the class's forward


@torch.no_grad()
def probe_image(base_model: nn.Module, projection, vl_inputs: dict[str, Any]) -> ImageProbe:
    """The image part of the state without running the language model: the base's forward is stopped
    by a hook right after the image embedding is recorded (vision tower + projector only; ``projection``:
    the :class:`~safe.models.backbones.Backbone`, or its projection module for the projection kind). Every image-path module's
    call is recorded so the ``generate`` that follows can reuse it (:meth:`ImageProbe.reused`) instead
    of running the vision tower a second time. A batch without ``pixel_values`` raises ``ValueError``."""
    if vl_inputs.get("pixel_values") is None:
        raise ValueError("image_embedding needs pixel_values (a batch without images has no image embedding)")
    records: list[tuple[nn.Module, dict[str, Any], Any]] = []
    handles = []

    def record(module, args, kwargs, output):
        if all(m is not module for m, _, _ in records):
            bound = _bound(module.forward, args, kwargs)
            if bound is not None:  # a shallow copy: the caller may set fields of the output afterwards
                records.append((module, bound, copy.copy(output)))  # (Qwen-VL's get_image_features does)

    seen: dict[str, Any] = {}

    def stop():
        raise _ProjectionDone

    source = projection
    projection = source.image_projection if hasattr(source, "image_projection") else source
    try:
        for m in _image_path(base_model, projection):
            handles.append(m.register_forward_hook(record, with_kwargs=True))
        handles += _image_hooks(source, seen, stop)  # last: run after the recording hooks
        base_model(**vl_inputs)
    except _ProjectionDone:
        pass
    finally:
        for h in handles:
            h.remove()
    if "image" not in seen:
        raise RuntimeError("the base model's forward never reached its image projection")
    pooled = seen.get("pooled")
    return ImageProbe(seen["image"].cpu(), records, None if pooled is None else pooled.cpu())


def image_embedding(base_model: nn.Module, projection: nn.Module, vl_inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The image part of the state, (n, hidden) float32 on the CPU: :func:`probe_image`'s embedding
    (without keeping its records). Zeros (n, 0) are never returned: a batch without ``pixel_values``
    raises ``ValueError``."""
    return probe_image(base_model, projection, vl_inputs).embedding


PART_SOURCES = {
    "question": "the mean input embedding of the prompt's text tokens",
    "image": "the mean of the base's image projection over image tokens",
    "image_pooled": "the vision tower's pooled output (its pooler_output)",
    "preview": "the waveform statistics preview",
    "preview_embedding": "the audio encoder's first layer on the clip's first quarter second",
    "confidence": "the base's first-token confidence",
}
"""What each part of :data:`STATE_PARTS` is, for error messages."""


def state_from_parts(spec: StateSpec, parts: dict[str, torch.Tensor | None]) -> torch.Tensor:
    """The state ``spec`` describes, (n, spec.dim) float32 on the CPU: its :attr:`~StateSpec.parts` taken
    from ``parts`` (name -> (n, width) tensor, or None where this deployment cannot compute the part), in
    state order. The one place both the training-time tables and the deployed path build a state, so a
    policy reads at inference the parts it was trained on. A part the state reads that is None or absent
    raises ``ValueError`` naming it; a part of the wrong shape too."""
    out = []
    n = None
    for name in spec.parts:
        t = parts.get(name)
        if t is None:
            raise ValueError(f"this policy was trained on a state with {PART_SOURCES[name]} ({name!r}), which "
                             f"this model cannot compute here; deploy it on the base and audio encoder it was "
                             f"trained with, or train a policy on parts this model has")
        n = t.shape[0] if n is None else n
        if t.dim() != 2 or t.shape != (n, spec.width(name)):
            raise ValueError(f"{name} features must have shape ({n}, {spec.width(name)}), got {tuple(t.shape)}")
        out.append(t.detach().float().cpu())
    return torch.cat(out, dim=1)


def pooled_width(base_model: nn.Module) -> int | None:
    """The width of the vision tower's pooled output (:data:`IMAGE_KINDS` ``pooled``), None without a tower."""
    tower = _vision_tower(base_model)
    cfg = None if tower is None else getattr(tower, "config", None)
    return None if cfg is None else int(getattr(cfg, "hidden_size", 0)) or None


def check_deployable(spec: StateSpec, model, frontend) -> None:
    """``ValueError`` naming the part unless ``model`` (a SAFE model; ``frontend``: its audio front end) computes
    every part ``spec`` reads at the width the policy was trained on: the question and projection image at the
    language model's width, the pooled image at the vision tower's, the statistics preview at its fixed width,
    the preview embedding with a Whisper-kind encoder and front end at the encoder's width."""
    have: dict[str, tuple[int | None, str]] = {
        "question": (model.hidden_size, "the language model's embedding width"),
        "image": (model.hidden_size, "the language model's width"),
        "image_pooled": (pooled_width(model.base_model), "the vision tower's pooled output"),
        "preview": (PREVIEW_DIM, "the statistics preview's width"),
        "preview_embedding": (getattr(model.audio_encoder, "output_dim", None), "the audio encoder's width")}
    for name in spec.parts:
        if name == "confidence":
            continue
        width, what = have[name]
        if name == "preview_embedding":
            enc = getattr(model.audio_encoder, "model", model.audio_encoder)
            extractor = type(getattr(frontend, "extractor", None)).__name__
            if getattr(model.audio_encoder, "kind", None) != "whisper" or not hasattr(enc, "conv1") \
                    or extractor != "WhisperFeatureExtractor":
                width, what = None, (f"a Whisper-kind encoder and front end (this model has a "
                                     f"{getattr(model.audio_encoder, 'kind', '?')} encoder, {extractor} front end)")
        if width is None:
            raise ValueError(f"this policy was trained on a state with {PART_SOURCES[name]} ({name!r}), which this "
                             f"model cannot compute: it needs {what}; deploy the policy on the base and audio "
                             f"encoder it was trained with, or train one on parts this model has")
        if width != spec.width(name):
            raise ValueError(f"this policy was trained on {PART_SOURCES[name]} ({name!r}) of width {spec.width(name)}; "
                             f"this model's is {width} ({what}): not the model the policy was trained with")


def assemble_state(question: torch.Tensor, image: torch.Tensor, preview: torch.Tensor,
                   confidence: torch.Tensor, spec: StateSpec) -> torch.Tensor:
    """Concatenate the four parts into (n, spec.dim) float32 on the CPU, checking every width."""
    parts = {"question": (question, spec.question_dim), "image": (image, spec.image_dim),
             "preview": (preview, spec.preview_dim), "confidence": (confidence, spec.confidence_dim)}
    n = question.shape[0]
    for name, (t, width) in parts.items():
        if t.dim() != 2 or t.shape != (n, width):
            raise ValueError(f"{name} features must have shape ({n}, {width}), got {tuple(t.shape)}")
    return torch.cat([t.detach().float().cpu() for t, _ in parts.values()], dim=1)
