"""Frozen encoders of any modality behind one interface: ``encode(features) -> (batch, tokens, dim)``.

Three kinds of module are accepted by :func:`wrap_encoder`:

* a transformers audio model (:class:`safe.models.audio_encoders.AudioEncoder`: Whisper, CLAP, AST, ...);
* a transformers vision model (:class:`VisionEncoder`: ViT, Dinov2, SigLIP / CLIP vision, ConvNext), for
  image-like modalities (depth, thermal, radar maps rendered as images), fed by its own image processor;
* a custom module following the *encoder protocol* (:class:`CustomEncoder`): an ``nn.Module`` with an
  integer attribute ``output_dim`` whose ``forward(features)`` returns ``(batch, tokens, output_dim)``;
  optionally ``encoder_kind`` (a short name saved in checkpoints; default the class name) and
  ``feature_extractor`` (a callable turning raw inputs into the ``features`` tensor).

:class:`EncoderEnsemble` runs several of them on one modality (e.g. Whisper + CLAP): its features are a
tuple with one tensor per member, and each member keeps its own projector (its tokens are concatenated).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from safe.models.audio_encoders import SUPPORTED_AUDIO_ENCODERS, AudioEncoder, as_feature_tensor

SUPPORTED_VISION_ENCODERS = ("ViTModel", "Dinov2Model", "SiglipVisionModel", "CLIPVisionModel",
                             "ConvNextModel", "ConvNextV2Model")
"""transformers vision classes an image-like modality's encoder may be (their ``pixel_values`` input)."""

Features = torch.Tensor | tuple
"""One modality's encoder input: a tensor (batch first), or for an ensemble a tuple of them."""


class VisionEncoder(nn.Module):
    """A frozen transformers vision model as a modality encoder.

    Guarantees: parameters never require grad, ``encode`` runs under ``torch.no_grad`` in eval mode and
    returns ``(batch, tokens, output_dim)``: a ViT / Dinov2 / SigLIP / CLIP tower's last hidden states
    (patch tokens, plus the class token where the model has one), or a ConvNext's last feature map
    flattened over height x width. Input: ``pixel_values`` (n, channels, height, width) as the model's
    own image processor makes them (``num_channels`` may be 1, e.g. a depth map)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        cls = type(model).__name__
        if cls not in SUPPORTED_VISION_ENCODERS:
            raise ValueError(f"unsupported vision encoder {cls}; SAFE supports: {', '.join(SUPPORTED_VISION_ENCODERS)}")
        cfg = model.config
        self.kind = cls.replace("Model", "").lower()
        self.model = model
        self.output_dim = int(cfg.hidden_sizes[-1] if cls.startswith("ConvNext") else cfg.hidden_size)
        model.requires_grad_(False)
        model.eval()

    def train(self, mode: bool = True):
        return super().train(False)

    @torch.no_grad()
    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        param = next(self.model.parameters())
        x = as_feature_tensor(pixel_values, "pixel_values").to(device=param.device, dtype=param.dtype)
        out = self.model(pixel_values=x).last_hidden_state
        if out.dim() == 4:  # ConvNext: (n, C, H, W) -> (n, H*W, C)
            out = out.flatten(2).transpose(1, 2)
        return out


class CustomEncoder(nn.Module):
    """A user module following the encoder protocol (see the module docstring), frozen.

    Guarantees: as for the built-in kinds (frozen, eval mode, ``no_grad``); the output's shape is
    checked on every call, so a module breaking the protocol fails with a ``ValueError`` naming it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        dim = getattr(model, "output_dim", None)
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"custom encoder {type(model).__name__} must have a positive integer attribute "
                             f"output_dim (the width of its (batch, tokens, width) output), got {dim!r}")
        self.model, self.output_dim = model, dim
        self.kind = str(getattr(model, "encoder_kind", type(model).__name__))
        self.feature_extractor = getattr(model, "feature_extractor", None)
        model.requires_grad_(False)
        model.eval()

    def train(self, mode: bool = True):
        return super().train(False)

    @torch.no_grad()
    def encode(self, features: torch.Tensor) -> torch.Tensor:
        param = next(self.model.parameters(), None)
        x = as_feature_tensor(features, "features")
        if param is not None:
            x = x.to(device=param.device, dtype=param.dtype if x.is_floating_point() else x.dtype)
        out = self.model(x)
        if not isinstance(out, torch.Tensor) or out.dim() != 3 or out.shape[0] != x.shape[0] \
                or out.shape[2] != self.output_dim:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"custom encoder {self.kind} must return (batch={x.shape[0]}, tokens, "
                             f"output_dim={self.output_dim}), got {got}")
        return out


class EncoderEnsemble(nn.Module):
    """Several frozen encoders of one modality used together (e.g. Whisper + CLAP).

    ``encode`` takes a tuple of features, one per member in order, and returns a tuple of outputs; the
    modality's projector maps each member's output with its own projector and concatenates the tokens,
    so each member keeps its native width and token rate."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        members = [wrap_encoder(m) for m in members]
        if len(members) < 2:
            raise ValueError(f"an encoder ensemble needs at least two encoders, got {len(members)}")
        if any(isinstance(m, EncoderEnsemble) for m in members):
            raise ValueError("an encoder ensemble cannot contain another ensemble")
        self.members = nn.ModuleList(members)
        self.kind = "+".join(m.kind for m in members)
        self.output_dims = [m.output_dim for m in members]
        self.output_dim = self.output_dims  # saved in the checkpoint signature as a list

    def train(self, mode: bool = True):
        return super().train(False)

    def encode(self, features: Features) -> tuple[torch.Tensor, ...]:
        if not isinstance(features, (tuple, list)) or len(features) != len(self.members):
            raise ValueError(f"features for the {self.kind} ensemble must be a tuple of {len(self.members)} "
                             f"tensors (one per encoder, in order), got {type(features).__name__}")
        return tuple(m.encode(f) for m, f in zip(self.members, features))


def wrap_encoder(module: nn.Module | Sequence[nn.Module]) -> nn.Module:
    """The frozen-encoder wrapper for ``module``: already wrapped as it is, a list / tuple as an
    :class:`EncoderEnsemble`, an audio or vision class of transformers, or a protocol module."""
    if isinstance(module, (AudioEncoder, VisionEncoder, CustomEncoder, EncoderEnsemble)):
        return module
    if isinstance(module, (list, tuple)):
        return EncoderEnsemble(module)
    cls = type(module).__name__
    if cls in SUPPORTED_AUDIO_ENCODERS:
        return AudioEncoder(module)
    if cls in SUPPORTED_VISION_ENCODERS:
        return VisionEncoder(module)
    if isinstance(module, nn.Module) and hasattr(module, "output_dim"):
        return CustomEncoder(module)
    raise ValueError(f"unsupported encoder {cls}; SAFE supports audio encoders ({', '.join(SUPPORTED_AUDIO_ENCODERS)}), "
                     f"vision encoders ({', '.join(SUPPORTED_VISION_ENCODERS)}), or a module with an integer "
                     "output_dim returning (batch, tokens, output_dim)")


def as_features(x: Features, name: str) -> Features:
    """``x`` as a tensor, or a tuple of tensors for an ensemble."""
    if isinstance(x, (tuple, list)):
        return tuple(as_feature_tensor(t, name) for t in x)
    return as_feature_tensor(x, name)


def features_to(x: Features, device) -> Features:
    """``x`` on ``device``: a tensor, or each tensor of an ensemble's tuple."""
    return tuple(t.to(device) for t in x) if isinstance(x, (tuple, list)) else x.to(device)


def feature_rows(x: Features) -> int:
    return int(x[0].shape[0] if isinstance(x, tuple) else x.shape[0])


def select_rows(x: Features, mask: torch.Tensor) -> Features:
    """The rows of ``mask`` (bool) of a tensor or of each tensor of a tuple."""
    if isinstance(x, tuple):
        return tuple(t[mask.to(t.device)] for t in x)
    return x[mask.to(x.device)]
