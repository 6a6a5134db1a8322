"""Reading a SAFE checkpoint (``safe_config.json`` + ``safe_weights.safetensors``): every malformed file is a
:class:`CheckpointError` (a ``ValueError``) naming it, and weights load only when their keys are exactly the model's."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from safe.models.config import SAFEConfig

CONFIG_NAME = "safe_config.json"
WEIGHTS_NAME = "safe_weights.safetensors"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A SAFE checkpoint whose files are missing a part, malformed, or of another format; names the file."""


def read_checkpoint(path: Path) -> tuple[dict, Path]:
    cfg_file, w_file = path / CONFIG_NAME, path / WEIGHTS_NAME
    for f in (cfg_file, w_file):
        if not f.is_file():
            raise FileNotFoundError(f"not a SAFE checkpoint: {f} is missing")
    try:
        meta = json.loads(cfg_file.read_text())
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise CheckpointError(f"{cfg_file}: not a readable JSON file ({type(err).__name__}: {err})") from None
    lacking = [k for k in ("format_version", "base_signature", "config") if not isinstance(meta, dict) or k not in meta]
    if lacking:
        raise CheckpointError(f"{cfg_file}: not a SAFE config (missing {', '.join(lacking)})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{cfg_file}: format_version {meta.get('format_version')!r}, expected {FORMAT_VERSION}")
    check_modalities_block(meta, cfg_file)
    return meta, w_file


def check_modalities_block(meta: dict, cfg_file: Path) -> None:
    """Refuse a ``modality`` / ``modalities`` entry of the wrong shape (a hand-edited or foreign file) before
    anything reads it: ``modality`` a string; ``modalities`` an object mapping each added modality's name to
    ``{"config": {...}, "signature": {"encoder": ..., "dim": ...}}``."""
    if "base_signature" in meta and not isinstance(meta["base_signature"], dict):
        raise CheckpointError(f"{cfg_file}: 'base_signature' must be an object, got {type(meta['base_signature']).__name__}")
    if not isinstance(meta.get("modality", "audio"), str):
        raise CheckpointError(f"{cfg_file}: 'modality' must be the primary modality's name (a string), "
                              f"got {meta['modality']!r}")
    block = meta.get("modalities")
    if block is None:
        return
    if not isinstance(block, dict):
        raise CheckpointError(f"{cfg_file}: 'modalities' must be an object mapping each added modality's name to "
                              f"its config and signature, got {type(block).__name__}")
    for name, spec in block.items():
        where = f"{cfg_file}: 'modalities.{name}'"
        if not isinstance(spec, dict):
            raise CheckpointError(f"{where} must be an object with 'config' and 'signature', got {type(spec).__name__}")
        lacking = [k for k in ("config", "signature") if not isinstance(spec.get(k), dict)]
        if lacking:
            raise CheckpointError(f"{where} lacks {' and '.join(repr(k) for k in lacking)} (an object)")
        lacking = [k for k in ("encoder", "dim") if k not in spec["signature"]]
        if lacking:
            raise CheckpointError(f"{where}.signature lacks {', '.join(repr(k) for k in lacking)}")


def config_of(meta: dict, key: str, path: Path) -> SAFEConfig:
    try:
        return SAFEConfig.from_dict(meta[key] if key == "config" else meta["modalities"][key]["config"])
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        what = "'config'" if key == "config" else f"modality {key!r}'s config"
        raise CheckpointError(f"{path / CONFIG_NAME}: its {what} is not a SAFE config ({type(err).__name__}: {err})") from None


def load_weights(w_file: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(w_file))
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error type for a bad file
        raise CheckpointError(f"{w_file}: not a readable safetensors file (truncated or not weights: "
                         f"{' '.join(str(err).split())[:200]})") from None


def check_signature(path, want: dict, have: dict) -> None:
    have = {k: list(v) if isinstance(v, tuple) else v for k, v in have.items()}
    diff = {k: (want.get(k), have.get(k)) for k in set(want) | set(have) if want.get(k) != have.get(k)}
    if diff:
        detail = ", ".join(f"{k}: checkpoint {a!r} vs given {b!r}" for k, (a, b) in sorted(diff.items()))
        raise ValueError(f"SAFE checkpoint {path} was made for another base model ({detail})")


def load_parts(parts: dict[str, nn.Module], state: dict[str, torch.Tensor], w_file: Path) -> None:
    own = {f"{name}.{k}" for name, m in parts.items() for k in m.state_dict()}
    missing, unexpected = sorted(own - set(state)), sorted(set(state) - own)
    if missing or unexpected:
        raise CheckpointError(f"{w_file}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
    with torch.no_grad():
        for name, module in parts.items():
            prefix = name + "."
            module.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
