"""Registry of supported frozen VL backbones: where their decoder layers are and how wide they are.

Each entry knows how to find the decoder layers the adapters hook, the LLM hidden size, and the
layer count (both part of a SAFE checkpoint's compatibility signature), plus the two places the
policy's cheap state features come from: the module that projects image features into the LLM
(its output, mean-pooled, is the image embedding) and the image placeholder token (left out of the
question embedding).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Backbone:
    """A resolved backbone: the model, its registry name, and the pieces SAFE needs."""

    name: str
    model: nn.Module
    decoder_layers: nn.ModuleList
    hidden_size: int
    image_projection: nn.Module
    """Maps vision features to LLM-width image tokens; its output is ``(batch, image tokens, hidden)``."""
    image_token_id: int
    text_model: nn.Module | None = None
    """The decoder stack whose forward receives ``inputs_embeds`` (image features already in place)."""
    image_embedding: str = "projection"
    """``projection`` or ``placeholders`` (module docstring)."""
    cross_attention_layers: tuple[int, ...] = ()
    """Decoder layers that only run on batches with images (Mllama): adapters there would be inert."""

    @property
    def num_layers(self) -> int:
        return len(self.decoder_layers)

    @property
    def signature(self) -> dict:
        """What a SAFE checkpoint must match to load onto this base."""
        return {"architecture": self.name, "hidden_size": self.hidden_size, "num_layers": self.num_layers}


@dataclass(frozen=True)
class _Entry:
    name: str
    class_name: str
    matches: Callable[[nn.Module], bool]
    layers: Callable[[nn.Module], nn.ModuleList]
    hidden: Callable[[nn.Module], int]
    image_projection: Callable[[nn.Module], nn.Module]
    text_model: Callable[[nn.Module], nn.Module] | None = None
    image_embedding: str = "projection"
    cross_attention_layers: Callable[[nn.Module], tuple[int, ...]] = lambda m: ()


def _text_model_type(m: nn.Module) -> str:
    return getattr(m.config.text_config, "model_type", "")


def _image_token_id(m: nn.Module) -> int:
    token = getattr(m.config, "image_token_id", None)
    token = getattr(m.config, "image_token_index", None) if token is None else token
    return -1 if token is None else int(token)


_REGISTRY: tuple[_Entry, ...] = (
    _Entry("llava", "LlavaForConditionalGeneration", lambda m: True,
           lambda m: m.model.language_model.layers, lambda m: m.config.text_config.hidden_size,
           lambda m: m.model.multi_modal_projector),
    _Entry("blip2-t5", "Blip2ForConditionalGeneration", lambda m: _text_model_type(m) in ("t5", "mt5"),
           lambda m: m.language_model.decoder.block, lambda m: m.config.text_config.d_model,
           lambda m: m.language_projection),
    _Entry("blip2-opt", "Blip2ForConditionalGeneration", lambda m: _text_model_type(m) == "opt",
           lambda m: m.language_model.model.decoder.layers, lambda m: m.config.text_config.hidden_size,
           lambda m: m.language_projection),
)


def _vlm(name: str, class_name: str, projection: str = "multi_modal_projector", text: str = "language_model",
         image_embedding: str = "placeholders", cross=lambda m: ()) -> _Entry:
    """An entry for the transformers 5 layout ``Model.model.{vision part, projection, text model}``."""
    return _Entry(name, class_name, lambda m: True, lambda m: getattr(m.model, text).layers,
                  lambda m: m.config.text_config.hidden_size, lambda m: getattr(m.model, projection),
                  lambda m: getattr(m.model, text), image_embedding, cross)


_REGISTRY += (
    _vlm("llava-next", "LlavaNextForConditionalGeneration"),
    _vlm("llava-onevision", "LlavaOnevisionForConditionalGeneration"),
    _vlm("qwen2-vl", "Qwen2VLForConditionalGeneration", projection="visual"),
    _vlm("qwen2.5-vl", "Qwen2_5_VLForConditionalGeneration", projection="visual"),
    _vlm("qwen3-vl", "Qwen3VLForConditionalGeneration", projection="visual"),
    _vlm("idefics3", "Idefics3ForConditionalGeneration", projection="connector", text="text_model"),
    _vlm("smolvlm", "SmolVLMForConditionalGeneration", projection="connector", text="text_model"),
    _vlm("gemma3", "Gemma3ForConditionalGeneration"),
    _vlm("paligemma", "PaliGemmaForConditionalGeneration"),
    # Mllama feeds images through cross-attention layers, not placeholder tokens: its image embedding is
    # the projector's output (the cross-attention states), and those layers are skipped without images.
    _vlm("mllama", "MllamaForConditionalGeneration", image_embedding="projection",
         cross=lambda m: tuple(m.config.text_config.cross_attention_layers or ())),
    _vlm("internvl", "InternVLForConditionalGeneration"),
    _vlm("mistral3", "Mistral3ForConditionalGeneration"),
)

SUPPORTED_BACKBONES = ("LlavaForConditionalGeneration (any decoder LM)",
                       "Blip2ForConditionalGeneration (OPT or T5 language model)",
                       *(e.class_name for e in _REGISTRY[3:]))
VL_INPUT_KEYS = ("input_ids", "attention_mask", "pixel_values", "image_sizes", "image_grid_thw", "mm_token_type_ids",
                 "pixel_attention_mask", "token_type_ids", "aspect_ratio_ids", "aspect_ratio_mask",
                 "cross_attention_mask")
"""The model inputs a processor of a supported family returns (the rest of a ``generate`` call's keywords
are generation settings): what the policy runtime and the pipeline pass on as the VL inputs."""
FIXED_IMAGE_TOKEN_FAMILIES = ("llava", "blip2-opt", "blip2-t5")
"""Registry names whose image-token count is a config constant (prompts: :mod:`safe.processing.hf_prompts`);
the others get theirs per image from their processor (:mod:`safe.processing.vlm_prompts`)."""
BASE_CLASSES = tuple(dict.fromkeys(e.class_name for e in _REGISTRY))
"""Class names :func:`safe.models.loading.load_base` opens (a checkpoint's ``architectures[0]``)."""


def resolve_backbone(model: nn.Module) -> Backbone:
    """Identify ``model`` in the registry; ``ValueError`` naming the supported classes otherwise."""
    cls = type(model).__name__
    for entry in _REGISTRY:
        if cls == entry.class_name and entry.matches(model):
            return Backbone(entry.name, model, entry.layers(model), int(entry.hidden(model)),
                            entry.image_projection(model), _image_token_id(model),
                            entry.text_model(model) if entry.text_model else None, entry.image_embedding,
                            tuple(int(i) for i in entry.cross_attention_layers(model)))
    detail = f" with a {_text_model_type(model)!r} language model" if cls == "Blip2ForConditionalGeneration" else ""
    raise ValueError(f"unsupported base model {cls}{detail}; SAFE supports: {'; '.join(SUPPORTED_BACKBONES)}")


def image_token_layout(base: nn.Module) -> tuple[int, int]:
    """(image placeholder token id, number of placeholders per image) of a LLaVA or BLIP-2 config; the
    families whose count depends on the image (tiling, dynamic resolution) raise ``ValueError``: their
    count comes from their own processor (:mod:`safe.processing.vlm_prompts`)."""
    cfg = base.config
    if resolve_backbone(base).image_embedding == "placeholders" or type(base).__name__ == "MllamaForConditionalGeneration":
        raise ValueError(f"{type(base).__name__} has no fixed image-token count; its processor sets it per image")
    token = getattr(cfg, "image_token_id", None)
    token = getattr(cfg, "image_token_index", None) if token is None else token
    count = getattr(cfg, "num_query_tokens", None) or getattr(cfg, "image_seq_length", None)
    if token is None or count is None:
        raise ValueError(f"{type(base).__name__} config lacks the image token id or count")
    return int(token), int(count)
