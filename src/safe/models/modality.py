"""One named modality of a SAFE model: its frozen encoder, projector, and one gated adapter per fusion layer."""
from __future__ import annotations

import torch
from torch import nn

from safe.adapters.cross_attention import GatedCrossAttention
from safe.adapters.injection import AudioContext
from safe.models.backbones import Backbone
from safe.models.config import SAFEConfig
from safe.models.encoders import EncoderEnsemble, Features, as_features, feature_rows, select_rows, wrap_encoder
from safe.models.projector import AudioProjector, EnsembleProjector

INPUT_SUFFIXES = ("features", "mask", "embeddings")
"""A modality ``m`` takes ``m_features`` (its encoder's input), ``m_mask`` (bool (batch,), True where a
row uses ``m``) and ``m_embeddings`` (precomputed encoder outputs instead of features)."""


def resolve_fusion_layers(config: SAFEConfig, backbone: Backbone) -> list[int]:
    """``config.fusion_layers`` as sorted, distinct non-negative layer indices of ``backbone``."""
    n = backbone.num_layers
    layers = []
    for i in config.fusion_layers:
        if not -n <= i < n:
            raise ValueError(f"fusion_layers entry {i} is out of range for a base with {n} decoder layers")
        if i % n in backbone.cross_attention_layers:
            # transformers skips a cross-attention layer on a batch without images, so an adapter after it
            # would silently do nothing there (measured on Mllama): refuse rather than train an inert adapter.
            raise ValueError(f"fusion_layers entry {i} names decoder layer {i % n}, a cross-attention layer of "
                             f"this {backbone.name} base ({list(backbone.cross_attention_layers)}), which "
                             "transformers skips on batches without images; choose a self-attention layer")
        layers.append(i % n)
    return sorted(set(layers))


BASE_INPUT_PREFIXES = ("input", "inputs", "image", "images", "video", "pixel", "audio_input", "vision", "attention",
                       "decoder_attention", "encoder", "token_type")
"""Prefixes of base-model arguments (``input_features``, ``pixel_mask``, ``attention_mask``, ``image_embeddings``,
...): a modality of such a name would take the base's own inputs, so none may be named so."""

NAME_RULE = ("a modality name must be a lower-case identifier without '__' (such as 'depth'), not an attribute "
             "of torch.nn.Module / nn.ModuleDict ('train', 'to', 'keys', ...) and not the prefix of a base-model "
             "input ({name}_features / _mask / _embeddings taken by the base, e.g. 'input', 'image', 'pixel', "
             "'attention')")


def check_modality_name(name: str, base_inputs: frozenset[str] | set[str] = frozenset()) -> str:
    """``name`` if it follows :data:`NAME_RULE`; ``base_inputs``: the base model's own argument names, so a
    modality never takes one of them (``<name>_mask`` would otherwise swallow the base's argument)."""
    ok = isinstance(name, str) and name.isidentifier() and name.islower() and "__" not in name
    if ok:
        taken = {f"{name}_{s}" for s in INPUT_SUFFIXES} & set(base_inputs)
        # a ModuleDict holds the branches: an attribute name there would shadow a method (or be refused)
        ok = not hasattr(nn.ModuleDict(), name) and name not in BASE_INPUT_PREFIXES and not taken
    if not ok:
        raise ValueError(f"invalid modality name {name!r}: {NAME_RULE}")
    return name


class ModalityBranch(nn.Module):
    """A named modality: frozen ``encoder``, ``projector`` (encoder output -> k tokens of the LLM width)
    and ``adapters`` (one :class:`~safe.adapters.cross_attention.GatedCrossAttention` per fusion layer,
    keyed by the layer index as a string), built from its own :class:`~safe.models.config.SAFEConfig`.

    Guarantees: the encoder is frozen (see :mod:`safe.models.encoders`); :meth:`context` runs it only
    on the rows its mask selects (``encoder_calls`` counts them) and returns None when no row uses the
    modality, so its adapters then never run."""

    def __init__(self, name: str, encoder, config: SAFEConfig, backbone: Backbone, device: torch.device) -> None:
        super().__init__()
        self.name, self.config = check_modality_name(name), config
        try:
            self.encoder = wrap_encoder(encoder)
        except ValueError as e:  # name the modality, as "unsupported audio encoder X" always has
            raise ValueError(str(e).replace("unsupported encoder", f"unsupported {name} encoder", 1)) from None
        hidden = backbone.hidden_size
        c = config
        if isinstance(self.encoder, EncoderEnsemble):
            self.projector = EnsembleProjector(self.encoder.output_dims, hidden, c.num_audio_tokens,
                                               mode=c.projector_mode, hidden_dim=c.projector_hidden).to(device)
        else:
            self.projector = AudioProjector(self.encoder.output_dim, hidden, c.num_audio_tokens,
                                            mode=c.projector_mode, hidden_dim=c.projector_hidden).to(device)
        self.fusion_layers = resolve_fusion_layers(c, backbone)
        # output_scale lists follow fusion_layers' own order; the adapters are keyed by the resolved index
        scales = {i % backbone.num_layers: s for i, s in zip(c.fusion_layers, c.layer_output_scales())}
        self.adapters = nn.ModuleDict({
            str(i): GatedCrossAttention(hidden, rank=c.lora_rank, num_heads=c.num_heads, attn_dim=c.attn_dim,
                                        null_key=c.null_key, gate_init=c.gate_init, ffn_rank=c.ffn_rank,
                                        rank_maps=c.rank_maps, output_scale=scale)
            for i, scale in ((i, scales[i]) for i in self.fusion_layers)})
        for i in self.fusion_layers:  # each adapter on its layer's device (a base spread by device_map="auto")
            layer_param = next(backbone.decoder_layers[i].parameters(), None)
            self.adapters[str(i)].to(device if layer_param is None else layer_param.device)
        self.encoder_calls = 0  # rows passed through the encoder (efficiency accounting)

    @property
    def signature(self) -> dict:
        """What a checkpoint of this modality was made with (encoder kind and width)."""
        return {"encoder": self.encoder.kind, "dim": self.encoder.output_dim}

    def gates(self) -> dict[int, nn.Parameter]:
        return {i: self.adapters[str(i)].gate.value for i in self.fusion_layers}

    def encode(self, features: Features) -> torch.Tensor:
        """Frozen encoder then projector: (n, ...) encoder input -> (n, k, hidden) tokens."""
        features = as_features(features, f"{self.name}_features")
        self.encoder_calls += feature_rows(features)
        return self.projector(self.encoder.encode(features))

    def resolve_mask(self, data: Features | None, mask, batch_size: int | None) -> torch.Tensor | None:
        what = "audio" if self.name == "audio" else self.name
        if data is None:
            if mask is not None and bool(torch.as_tensor(mask).any()):
                raise ValueError(f"{what}_mask marks rows as using {what} but no {what}_features were given")
            return None
        n = feature_rows(data)
        if batch_size is not None and n != batch_size:
            raise ValueError(f"{what}_features has {n} rows but the batch has {batch_size}")
        device = data[0].device if isinstance(data, tuple) else data.device
        if mask is None:
            return torch.ones(n, dtype=torch.bool, device=device)
        mask = torch.as_tensor(mask, device=device)
        if mask.dtype != torch.bool or mask.shape != (n,):
            raise ValueError(f"{what}_mask must be a bool tensor of shape ({n},), got {mask.dtype} {tuple(mask.shape)}")
        return mask

    def context(self, features=None, mask=None, batch_size: int | None = None, *, embeddings=None,
                device: torch.device | None = None) -> AudioContext | None:
        """The tokens of the rows in ``mask`` as an adapter context, or None when no row uses this modality."""
        what = "audio" if self.name == "audio" else self.name
        if features is not None and embeddings is not None:
            raise ValueError(f"pass {what}_features or {what}_embeddings, not both")
        if features is not None:  # numpy features (e.g. from a feature extractor) work as tensors do
            features = as_features(features, f"{what}_features")
        if embeddings is not None:
            embeddings = as_features(embeddings, f"{what}_embeddings")
        data = features if embeddings is None else embeddings
        mask = self.resolve_mask(data, mask, batch_size)
        if mask is None or not bool(mask.any()):
            return None
        rows = mask.nonzero().squeeze(1).to(device if device is not None else mask.device)
        if embeddings is None:
            tokens = self.encode(select_rows(features, mask))
        else:
            tokens = self.projector(select_rows(embeddings, mask))
        return AudioContext(tokens, rows, int(mask.shape[0]))
