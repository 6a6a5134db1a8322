"""Tiny random-weight instances of transformers' vision classes, as encoders of image-like modalities
(depth maps, ...): the same classes a real ViT / Dinov2 / SigLIP / ConvNext checkpoint loads into."""
from __future__ import annotations

import torch
from torch import nn

VISION_PRESETS = ("vit", "dinov2", "siglip", "convnext")
IMAGE_SIZE = 32


def tiny_vision_encoder(kind: str, seed: int = 0, channels: int = 1, image_size: int = IMAGE_SIZE) -> nn.Module:
    """A randomly initialised tiny vision model of ``kind`` reading ``channels``-channel images."""
    import transformers as tf
    from transformers.utils import logging

    logging.set_verbosity_error()
    torch.manual_seed(seed)
    common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                  num_channels=channels, image_size=image_size, patch_size=8)
    if kind == "vit":
        return tf.ViTModel(tf.ViTConfig(**common), add_pooling_layer=False).eval()
    if kind == "dinov2":
        return tf.Dinov2Model(tf.Dinov2Config(**{k: v for k, v in common.items() if k != "intermediate_size"},
                                              mlp_ratio=2)).eval()
    if kind == "siglip":
        return tf.SiglipVisionModel(tf.SiglipVisionConfig(**common)).eval()
    if kind == "convnext":
        return tf.ConvNextModel(tf.ConvNextConfig(num_channels=channels, hidden_sizes=[16, 32], depths=[1, 1],
                                                  patch_size=4, num_stages=2, image_size=image_size)).eval()
    raise ValueError(f"unknown vision preset {kind!r}; choose from {VISION_PRESETS}")


def random_pixels(encoder: nn.Module, batch: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    """Random ``pixel_values`` (batch, channels, size, size) for ``encoder``."""
    cfg = encoder.config
    size = getattr(cfg, "image_size", IMAGE_SIZE)
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, cfg.num_channels, size, size, generator=g).to(dtype)
