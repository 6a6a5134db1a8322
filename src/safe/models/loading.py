"""Load a base VL model or an audio encoder from a preset name or a local checkpoint directory.

Nothing here downloads: local paths are opened with ``local_files_only=True``.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from safe.models import presets
from safe.models.audio_encoders import SUPPORTED_AUDIO_ENCODERS
from safe.models.backbones import SUPPORTED_BACKBONES

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}

_BASE_CLASSES = ("LlavaForConditionalGeneration", "Blip2ForConditionalGeneration")


def parse_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"--dtype {name!r} is not one of {sorted(DTYPES)}")
    return DTYPES[name]


def _architecture(path: Path, what: str) -> str:
    cfg = path / "config.json"
    if not cfg.is_file():
        raise FileNotFoundError(f"{what} {path}: no config.json (expected a Hugging Face checkpoint directory)")
    archs = json.loads(cfg.read_text()).get("architectures") or []
    if not archs:
        raise ValueError(f"{cfg} names no 'architectures'; cannot tell which class to load")
    return archs[0]


def _load(spec: str, what: str, preset_names, build_preset, supported: tuple[str, ...], supported_text: str,
          dtype: torch.dtype, device: str) -> nn.Module:
    if spec in preset_names:
        return build_preset(spec).to(device=device, dtype=dtype)
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"{what} {spec!r} is neither a preset {preset_names} nor an existing path")
    arch = _architecture(path, what)
    if arch not in supported:
        raise ValueError(f"{path}: architecture {arch} is not supported; SAFE supports: {supported_text}")
    if arch == "WhisperEncoder":  # not exported at the top level of transformers
        from transformers.models.whisper.modeling_whisper import WhisperEncoder as cls
    else:
        import transformers

        cls = getattr(transformers, arch)
    return cls.from_pretrained(path, dtype=dtype, local_files_only=True).to(device).eval()


def load_base(spec: str, dtype: torch.dtype = torch.float32, device: str = "cpu") -> nn.Module:
    """``spec``: a tiny preset (``llava``, ``blip2-opt``, ``blip2-t5``) or a local checkpoint path."""
    return _load(spec, "base model", presets.BASE_PRESETS, presets.tiny_base, _BASE_CLASSES,
                 "; ".join(SUPPORTED_BACKBONES), dtype, device)


def load_audio_encoder(spec: str, dtype: torch.dtype = torch.float32, device: str = "cpu") -> nn.Module:
    """``spec``: a tiny preset (``whisper``, ``clap``) or a local CLAP / Whisper checkpoint path."""
    return _load(spec, "audio encoder", presets.AUDIO_PRESETS, presets.tiny_audio_encoder, SUPPORTED_AUDIO_ENCODERS,
                 ", ".join(SUPPORTED_AUDIO_ENCODERS), dtype, device)
