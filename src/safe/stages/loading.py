"""Loading the frozen base models and SAFE checkpoints every stage starts from: a built-in models folder
(``safe base build``) or a local checkpoint directory with its own processor files."""
from __future__ import annotations

from pathlib import Path

import torch

from safe.processing.prompts import load_vl_model
from safe.models.safe_model import SAFEModel
from safe.training.config import StageAConfig


def is_builtin_dir(path: str | Path) -> bool:
    """A ``safe base build`` output folder (manifest + vl/ + audio_encoder/)."""
    p = Path(path)
    return (p / "manifest.json").is_file() and (p / "vl").is_dir() and (p / "audio_encoder").is_dir()


def load_frozen(base: str | Path, audio: str | Path | None = None, *, dtype=torch.float32,
                template: str | None = None, **load_options):
    """(frozen VL model, frozen audio encoder, prompt format, audio front end).

    ``base``: a built-in folder from ``safe base build`` (its own audio encoder is used unless
    ``audio`` is given), or a local LLaVA / BLIP-2 checkpoint directory with its tokenizer and image
    processor, in which case ``audio`` must name a local CLAP / Whisper checkpoint with its feature
    extractor. ``load_options``: :func:`safe.models.loading.load_base`'s ``attn_implementation`` /
    ``device_map`` for a checkpoint base."""
    from safe.models.loading import load_audio_encoder, load_base
    from safe.processing.features import BuiltinFrontEnd, FeatureFrontEnd
    from safe.models.backbones import FIXED_IMAGE_TOKEN_FAMILIES, resolve_backbone
    from safe.processing.hf_prompts import ProcessorFormat
    from safe.processing.vlm_prompts import VLMProcessorFormat

    if is_builtin_dir(base):
        base = Path(base)
        vl, _, fmt = load_vl_model(base / "vl", dtype=dtype, **load_options)
        encoder = load_audio_encoder(str(audio or base / "audio_encoder"), dtype)
        frontend = BuiltinFrontEnd() if audio is None else FeatureFrontEnd(audio)
        return vl, encoder, fmt, frontend
    if not (Path(base) / "config.json").is_file():
        raise FileNotFoundError(f"--base {base} is neither a built-in models folder (manifest.json, vl/, "
                                "audio_encoder/ from `safe base build`) nor a checkpoint directory (config.json)")
    if audio is None:
        raise ValueError(f"--audio must name a local CLAP / Whisper checkpoint when --base is a checkpoint ({base})")
    vl, encoder = load_base(str(base), dtype, **load_options), load_audio_encoder(str(audio), dtype)
    if resolve_backbone(vl).name in FIXED_IMAGE_TOKEN_FAMILIES:
        return vl, encoder, ProcessorFormat(base, vl, template), FeatureFrontEnd(audio)
    # the families whose image-token count depends on the image: the checkpoint's own processor builds prompts
    return vl, encoder, VLMProcessorFormat(base, vl, template), FeatureFrontEnd(audio)


def load_safe(base: str | Path, cfg: StageAConfig, audio: str | Path | None = None, *, dtype=torch.float32,
              template: str | None = None, **load_options):
    """(SAFE model, prompt format, audio front end) with SAFE parts initialised from ``cfg.seed``;
    ``base`` / ``audio``: see :func:`load_frozen`."""
    vl, encoder, fmt, frontend = load_frozen(base, audio, dtype=dtype, template=template, **load_options)
    torch.manual_seed(cfg.seed)
    return SAFEModel(vl, encoder, cfg.safe_config()), fmt, frontend


def load_trained(base: str | Path, checkpoint: str | Path, audio: str | Path | None = None, *,
                 dtype=torch.float32, template: str | None = None, **load_options):
    """(SAFE model loaded from a ``save_pretrained`` folder, prompt format, audio front end), in eval mode."""
    checkpoint = Path(checkpoint)
    if not (checkpoint / "safe_config.json").is_file():
        raise FileNotFoundError(f"{checkpoint} is not a SAFE checkpoint (no safe_config.json); "
                                "train Stage A first (safe train) or pass --checkpoint")
    vl, encoder, fmt, frontend = load_frozen(base, audio, dtype=dtype, template=template, **load_options)
    return SAFEModel.from_pretrained(checkpoint, vl, encoder).eval(), fmt, frontend


def open_checkpoint(checkpoint: Path, *, data: str | None, base: str | None, audio: str | None, missing: str,
                    load_options: dict | None = None):
    """What ``safe policy train`` and ``safe eval`` start from: ``(data source, SAFE model, prompt format,
    audio front end, embedding cache)`` for the SAFE checkpoint folder ``checkpoint``. A folder without
    ``safe_config.json`` raises :class:`~safe.stages.common.StageError` ending in ``missing`` (what to run
    first), before anything is loaded or created. ``load_options``: see :func:`load_frozen`."""
    from safe.data.embedding_cache import AudioEmbeddingCache
    from safe.data.prepared import encoder_fingerprint
    from safe.stages.common import StageError, base_path, data_source

    if not (checkpoint / "safe_config.json").is_file():
        raise StageError(f"--checkpoint {checkpoint} is not a SAFE checkpoint (no safe_config.json): {missing}")
    source = data_source(data)
    model, fmt, frontend = load_trained(base_path(base), checkpoint, audio, **(load_options or {}))
    cache = AudioEmbeddingCache(source.cache_dir, encoder_fingerprint(model.audio_encoder, frontend))
    return source, model, fmt, frontend, cache

