"""Loading the frozen base models and SAFE checkpoints every stage and ``safe.pipeline`` start from: a
built-in models folder (``safe base build``) or a local checkpoint directory with its own processor files.
The weights (:func:`load_models`) and the prompt format and audio front end (:func:`build_formats`) load
separately, so a checkpoint that saved its processor is not given a second one."""
from __future__ import annotations

import json
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
    fmt = prompt_format(base, vl, template)
    if is_builtin_dir(base):
        return fmt, (BuiltinFrontEnd() if audio is None else FeatureFrontEnd(audio))
    return fmt, FeatureFrontEnd(audio)


def prompt_format(base: str | Path, vl, template: str | None = None):
    """The prompt format of the base ``vl`` loaded from ``base`` (a built-in folder or a checkpoint)."""
    if is_builtin_dir(base):
        tokenizer = AutoTokenizer.from_pretrained(str(Path(base) / "vl"), local_files_only=True)
        return PromptFormat(tokenizer, vl.config.image_seq_length, int(vl.config.vision_config.image_size))
    if resolve_backbone(vl).name in FIXED_IMAGE_TOKEN_FAMILIES:
        return ProcessorFormat(base, vl, template)
    # the families whose image-token count depends on the image: the checkpoint's own processor builds prompts
    return VLMProcessorFormat(base, vl, template)


def load_modality_safe(base: str | Path, cfg: StageAConfig, name: str, encoder: str | Path, *,
                       dtype=torch.float32, template: str | None = None, **load_options):
    """(SAFE model whose primary modality is ``name``, prompt format, that modality's front end), SAFE parts
    initialised from ``cfg.seed``: the frozen base of ``base`` (a built-in folder's VL model, or a checkpoint)
    and the frozen encoder folder ``encoder`` (:func:`load_modality_encoder`). No audio encoder is loaded."""
    vl = load_base(str(Path(base) / "vl" if is_builtin_dir(base) else base), dtype, **load_options)
    enc, front = load_modality_encoder(encoder, dtype)
    torch.manual_seed(cfg.seed)
    return SAFEModel(vl, enc, cfg.safe_config(), modality=name), prompt_format(base, vl, template), front


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


def load_modality_encoder(path: str | Path, dtype=torch.float32):
    """(frozen encoder, front end) of an image-like modality (depth, ...) from a local folder holding a
    transformers vision model (``config.json`` + weights) and its image processor (``preprocessor_config.json``)."""
    from transformers import AutoConfig, AutoModel

    from safe.processing.modalities import ImageModalityFrontEnd

    path = Path(path)
    if not (path / "config.json").is_file() or not (path / "preprocessor_config.json").is_file():
        raise FileNotFoundError(f"{path} is not a modality encoder folder (a transformers vision model's "
                                "config.json and weights, with its image processor's preprocessor_config.json)")
    # ViT's pooler is never read (SAFE uses the last hidden states): not building it keeps the load exact and quiet.
    extra = {"add_pooling_layer": False} if AutoConfig.from_pretrained(str(path)).model_type == "vit" else {}
    model = AutoModel.from_pretrained(str(path), local_files_only=True, **extra)
    return model.to(dtype).requires_grad_(False).eval(), ImageModalityFrontEnd.from_pretrained(path)


def load_trained_modalities(base: str | Path, checkpoint: str | Path, audio: str | Path | None,
                            encoders: dict[str, str | Path], *, dtype=torch.float32, **load_options):
    """(SAFE model in eval mode, {modality: front end}) for a checkpoint whose primary modality is not audio
    (``modality`` in its config) or that carries added modalities; ``encoders``: each such modality's encoder
    folder (:func:`load_modality_encoder`). The base is a built-in folder or a checkpoint (:func:`load_models`)."""
    meta = json.loads((Path(checkpoint) / "safe_config.json").read_text())
    primary = meta.get("modality", "audio")
    fronts, loaded = {}, {}
    for name in [n for n in (primary, *(meta.get("modalities") or {})) if n != "audio"]:
        if encoders.get(name) is None:
            raise ValueError(f"{checkpoint}: the checkpoint carries the {name} modality; give its encoder "
                             f"folder (encoders={{'{name}': DIR}}, or --{name}-encoder DIR)")
        loaded[name], fronts[name] = load_modality_encoder(encoders[name], dtype)
    if primary == "audio":
        vl, first = load_models(base, audio, dtype=dtype, **load_options)
    else:
        vl = load_base(str(Path(base) / "vl" if is_builtin_dir(base) else base), dtype, **load_options)
        first = loaded.pop(primary)
    return SAFEModel.from_pretrained(checkpoint, vl, first, encoders=loaded).eval(), fronts
