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
from safe.models.backbones import BASE_CLASSES, SUPPORTED_BACKBONES

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}

_BASE_CLASSES = BASE_CLASSES
ATTN_IMPLEMENTATIONS = ("sdpa", "eager")
"""Attention implementations a base or encoder may be loaded with (``attn_implementation``); None: the
class default. Closed rows are bit-exact to the base under each (tests/models/test_families.py), since
the base runs the same kernels with and without SAFE."""


DEVICE_MAPS = ("auto", "balanced", "sequential")
"""Named ``device_map`` strategies a base may be loaded with (accelerate places its layers); a dict also works."""


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


def _check_options(attn_implementation: str | None, device_map: str | dict | None) -> None:
    if attn_implementation is not None and attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise ValueError(f"attn_implementation {attn_implementation!r} is not one of {ATTN_IMPLEMENTATIONS}")
    if device_map is not None and not isinstance(device_map, dict) and device_map not in DEVICE_MAPS:
        raise ValueError(f"device_map {device_map!r} must be one of {DEVICE_MAPS} or a dict")


def _load(spec: str | Path, what: str, supported: tuple[str, ...], supported_text: str,
          dtype: torch.dtype, device: str, attn_implementation: str | None = None,
          device_map: str | dict | None = None) -> nn.Module:
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"{what} {str(spec)!r} is not an existing checkpoint directory "
                                f"(supported architectures: {supported_text})")
    arch = _architecture(path, what)
    if arch not in supported:
        raise ValueError(f"{path}: architecture {arch} is not supported; SAFE supports: {supported_text}")
    _check_options(attn_implementation, device_map)
    if arch == "WhisperEncoder":  # not exported at the top level of transformers
        from transformers.models.whisper.modeling_whisper import WhisperEncoder as cls
    elif arch == "Qwen2AudioEncoder":
        from transformers.models.qwen2_audio.modeling_qwen2_audio import Qwen2AudioEncoder as cls
    else:
        import transformers

        cls = getattr(transformers, arch)
    kwargs = {"dtype": dtype, "local_files_only": True}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if device_map is not None:  # accelerate places the layers (a base larger than one device); no .to() after
        return cls.from_pretrained(path, device_map=device_map, **kwargs).eval()
    return cls.from_pretrained(path, **kwargs).to(device).eval()


def load_base(spec: str | Path, dtype: torch.dtype = torch.float32, device: str = "cpu", *,
              attn_implementation: str | None = None, device_map: str | dict | None = None) -> nn.Module:
    """A frozen-to-be base VL model from a local checkpoint directory ``spec`` of a supported family
    (:data:`safe.models.backbones.SUPPORTED_BACKBONES`). ``attn_implementation``: ``sdpa`` / ``eager``
    (None: the class default); ``device_map``: e.g. ``"auto"`` to spread a base larger than one device
    over the visible devices (accelerate), instead of moving it to ``device``."""
    return _load(spec, "base model", _BASE_CLASSES, "; ".join(SUPPORTED_BACKBONES), dtype, device,
                 attn_implementation, device_map)


def load_audio_encoder(spec: str | Path, dtype: torch.dtype = torch.float32, device: str = "cpu", *,
                       attn_implementation: str | None = None) -> nn.Module:
    """An audio encoder from a local checkpoint directory ``spec`` of a supported class
    (:data:`safe.models.audio_encoders.SUPPORTED_AUDIO_ENCODERS`)."""
    return _load(spec, "audio encoder", SUPPORTED_AUDIO_ENCODERS, ", ".join(SUPPORTED_AUDIO_ENCODERS), dtype, device,
                 attn_implementation)
