"""Load a base VL model or an audio encoder from a local checkpoint directory.

Nothing here downloads: local paths are opened with ``local_files_only=True``. Names of the tiny
random-weight presets (``llava``, ``whisper``, ...) are not checkpoints: callers that accept them
resolve them first (``safe.bench.presets.load_base_or_preset``).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

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


def _load(spec: str | Path, what: str, supported: tuple[str, ...], supported_text: str,
          dtype: torch.dtype, device: str) -> nn.Module:
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"{what} {str(spec)!r} is not an existing checkpoint directory "
                                f"(supported architectures: {supported_text})")
    arch = _architecture(path, what)
    if arch not in supported:
        raise ValueError(f"{path}: architecture {arch} is not supported; SAFE supports: {supported_text}")
    if arch == "WhisperEncoder":  # not exported at the top level of transformers
        from transformers.models.whisper.modeling_whisper import WhisperEncoder as cls
    else:
        import transformers

        cls = getattr(transformers, arch)
    return cls.from_pretrained(path, dtype=dtype, local_files_only=True).to(device).eval()


def load_base(spec: str | Path, dtype: torch.dtype = torch.float32, device: str = "cpu") -> nn.Module:
    """A frozen-to-be base VL model from a local LLaVA / BLIP-2 checkpoint directory ``spec``."""
    return _load(spec, "base model", _BASE_CLASSES, "; ".join(SUPPORTED_BACKBONES), dtype, device)


def load_audio_encoder(spec: str | Path, dtype: torch.dtype = torch.float32, device: str = "cpu") -> nn.Module:
    """An audio encoder from a local CLAP / Whisper checkpoint directory ``spec``."""
    return _load(spec, "audio encoder", SUPPORTED_AUDIO_ENCODERS, ", ".join(SUPPORTED_AUDIO_ENCODERS), dtype, device)
