"""Loading the frozen base models and SAFE checkpoints every stage and ``safe.pipeline`` start from: a
built-in models folder (``safe base build``) or a local checkpoint directory with its own processor files.
The weights (:func:`load_models`) and the prompt format and audio front end (:func:`build_formats`) load
separately, so a checkpoint that saved its processor is not given a second one."""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer

from safe.models.backbones import FIXED_IMAGE_TOKEN_FAMILIES, resolve_backbone
from safe.models.loading import load_audio_encoder, load_base
from safe.models.safe_model import SAFEModel
from safe.processing.features import BuiltinFrontEnd, FeatureFrontEnd
from safe.processing.hf_prompts import ProcessorFormat
from safe.processing.prompts import PromptFormat
from safe.processing.vlm_prompts import VLMProcessorFormat
from safe.training.config import StageAConfig


def is_builtin_dir(path: str | Path) -> bool:
    """A ``safe base build`` output folder (manifest + vl/ + audio_encoder/)."""
    p = Path(path)
    return (p / "manifest.json").is_file() and (p / "vl").is_dir() and (p / "audio_encoder").is_dir()


def load_models(base: str | Path, audio: str | Path | None = None, *, dtype=torch.float32, **load_options):
    """(frozen VL model, frozen audio encoder): the weights only, no tokenizer or feature extractor.

    ``base``: a built-in folder from ``safe base build`` (its own audio encoder is used unless
    ``audio`` is given), or a local checkpoint directory of a supported vision-language family with its
    tokenizer and image processor, in which case ``audio`` must name a local audio encoder checkpoint
    with its feature extractor. ``load_options``: :func:`safe.models.loading.load_base`'s
    ``attn_implementation`` / ``device_map`` for a checkpoint base."""
    if is_builtin_dir(base):
        base = Path(base)
        return (load_base(str(base / "vl"), dtype, **load_options),
                load_audio_encoder(str(audio or base / "audio_encoder"), dtype))
    if not (Path(base) / "config.json").is_file():
        raise FileNotFoundError(f"--base {base} is neither a built-in models folder (manifest.json, vl/, "
                                "audio_encoder/ from `safe base build`) nor a checkpoint directory (config.json)")
    if audio is None:
        raise ValueError(f"--audio must name a local audio encoder checkpoint when --base is a checkpoint ({base})")
    return load_base(str(base), dtype, **load_options), load_audio_encoder(str(audio), dtype)


def build_formats(base: str | Path, vl, audio: str | Path | None = None, template: str | None = None):
    """(prompt format, audio front end) for the base ``vl`` loaded from ``base`` and the encoder from ``audio``
    (see :func:`load_models`): the tokenizer, image processor and feature extractor read from those folders."""
    if is_builtin_dir(base):
        tokenizer = AutoTokenizer.from_pretrained(str(Path(base) / "vl"), local_files_only=True)
        fmt = PromptFormat(tokenizer, vl.config.image_seq_length)
        return fmt, (BuiltinFrontEnd() if audio is None else FeatureFrontEnd(audio))
    if resolve_backbone(vl).name in FIXED_IMAGE_TOKEN_FAMILIES:
        return ProcessorFormat(base, vl, template), FeatureFrontEnd(audio)
    # the families whose image-token count depends on the image: the checkpoint's own processor builds prompts
    return VLMProcessorFormat(base, vl, template), FeatureFrontEnd(audio)


def load_frozen(base: str | Path, audio: str | Path | None = None, *, dtype=torch.float32,
                template: str | None = None, **load_options):
    """(frozen VL model, frozen audio encoder, prompt format, audio front end): :func:`load_models` then
    :func:`build_formats`."""
    vl, encoder = load_models(base, audio, dtype=dtype, **load_options)
    return (vl, encoder, *build_formats(base, vl, audio, template))


def load_safe(base: str | Path, cfg: StageAConfig, audio: str | Path | None = None, *, dtype=torch.float32,
              template: str | None = None, **load_options):
    """(SAFE model, prompt format, audio front end) with SAFE parts initialised from ``cfg.seed``;
    ``base`` / ``audio``: see :func:`load_frozen`."""
    vl, encoder, fmt, frontend = load_frozen(base, audio, dtype=dtype, template=template, **load_options)
    torch.manual_seed(cfg.seed)
    return SAFEModel(vl, encoder, cfg.safe_config()), fmt, frontend


def load_trained_model(base: str | Path, checkpoint: str | Path, audio: str | Path | None = None, *,
                       dtype=torch.float32, **load_options) -> SAFEModel:
    """The SAFE model saved with ``save_pretrained`` at ``checkpoint`` over the frozen models of
    :func:`load_models`, in eval mode (no prompt format or front end: a saved processor brings its own)."""
    checkpoint = Path(checkpoint)
    if not (checkpoint / "safe_config.json").is_file():
        raise FileNotFoundError(f"{checkpoint} is not a SAFE checkpoint (no safe_config.json); "
                                "train Stage A first (safe train) or pass --checkpoint")
    vl, encoder = load_models(base, audio, dtype=dtype, **load_options)
    return SAFEModel.from_pretrained(checkpoint, vl, encoder).eval()


def load_trained(base: str | Path, checkpoint: str | Path, audio: str | Path | None = None, *,
                 dtype=torch.float32, template: str | None = None, **load_options):
    """(SAFE model loaded from a ``save_pretrained`` folder, prompt format, audio front end), in eval mode."""
    model = load_trained_model(base, checkpoint, audio, dtype=dtype, **load_options)
    return (model, *build_formats(base, model.base_model, audio, template))
