"""The ``gemma`` preset of ``benchmarks/scale.py``: SAFE's cost at the shape of a real model, Gemma 3 270M inside
the LLaVA base (``make gemma-base``), with its real weights.

Unlike the other presets (random weights of a chosen shape), this one loads the Gemma VL base from its folder
(default ``$SAFE_CACHE/gemma/vl``) and the real Whisper tiny.en encoder of the speech track (2-s window, default
``$SAFE_CACHE/whisper-tiny.en/window-2s``; a randomly initialised encoder of the same shape when the folder is
missing: its cost does not depend on its values), in float32 or bfloat16. SAFE's parts follow the recipe the
LoRA comparison trains on this base (:data:`safe.bench.gemma.lora_baseline.SAFE_OVERRIDES` over the speech
recipe). The policy's default use rate is the speech track's measured one (:data:`SPEECH_USE_RATE`).

Memory on a CPU: the process's peak RSS is measured twice, once after the base alone has answered the largest
batch (before SAFE is attached) and once at the end of the run, so the two peaks stand side by side.
"""
from __future__ import annotations

import os
import resource
from pathlib import Path

import torch

#: The speech track's deployed audio-use rate (its README block: policy 0.500 against the oracle's 0.472).
SPEECH_USE_RATE = 0.5
#: Tokens of the base's prompt besides the image ones: <bos> "Question: {a VL question}\n" ... "\nAnswer:".
TEXT_TOKENS = 14
#: Random prompt ids are drawn below this id: Gemma's special and multimodal tokens sit at the top of its vocabulary.
SAFE_TEXT_IDS = 250_000

SPEC = dict(real=True, text_tokens=TEXT_TOKENS, feature_layer=-1, clip_samples=32000, policy_hidden=32,
            cpu_only=False, default_use_rate=SPEECH_USE_RATE)


def text_ids(cfg) -> int:
    """The bound random prompt ids are drawn below: Gemma's plain words (not its special / image tokens)."""
    return min(SAFE_TEXT_IDS, int(cfg.image_token_id), int(cfg.text_config.vocab_size))


def cache_root() -> Path:
    return Path(os.environ.get("SAFE_CACHE", ".cache/safe"))


def default_paths() -> tuple[Path, Path]:
    return cache_root() / "gemma" / "vl", cache_root() / "whisper-tiny.en" / "window-2s"


def _whisper_tiny_shape(dtype):
    """A Whisper tiny.en encoder of the 2-s window's shape (4 layers of 384, 80 mels, 100 frames), random."""
    import transformers as tf
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    cfg = tf.WhisperConfig(d_model=384, encoder_layers=4, encoder_attention_heads=6, encoder_ffn_dim=1536,
                           num_mel_bins=80, max_source_positions=100, decoder_layers=1, vocab_size=64,
                           max_target_positions=16, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                           decoder_start_token_id=1)
    torch.manual_seed(0)
    return WhisperEncoder(cfg).to(dtype).eval()


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def build_gemma(base_dir, audio_dir, device: str, dtype: torch.dtype, warm_base=None, safe_overrides=()):
    """(SAFEModel with an early-state policy, spec, image tokens, image token id, memory notes): the real Gemma
    VL base and audio encoder, SAFE's parts from the recipe (``safe_overrides``: more ``key=value`` settings over
    it). ``warm_base(base)`` runs before SAFE is attached (the base-alone peak RSS is taken right after it)."""
    from transformers import LlavaForConditionalGeneration

    from safe import SAFEModel
    from safe.bench.gemma.lora_baseline import SAFE_OVERRIDES, SAFE_RECIPE
    from safe.models.loading import load_audio_encoder
    from safe.training.config import load_stage_a_config

    base_dir = Path(base_dir)
    if not (base_dir / "config.json").is_file():
        raise FileNotFoundError(f"--gemma-base {base_dir}: no Gemma VL base there (config.json); build it with "
                                "`make gemma-base` or name its folder")
    base = LlavaForConditionalGeneration.from_pretrained(str(base_dir), dtype=dtype, local_files_only=True)
    base = base.to(device).eval().requires_grad_(False)
    real_audio = audio_dir is not None and (Path(audio_dir) / "config.json").is_file()
    encoder = load_audio_encoder(str(audio_dir), dtype) if real_audio else _whisper_tiny_shape(dtype)
    encoder = encoder.to(device)
    recipe = load_stage_a_config(SAFE_RECIPE, [*SAFE_OVERRIDES, *safe_overrides])
    cfg = base.config
    base.generation_config.pad_token_id = cfg.text_config.pad_token_id
    base.generation_config.eos_token_id = cfg.text_config.eos_token_id
    spec = {**SPEC, "safe": recipe.safe_config().to_dict(),
            "vision": {"image_size": cfg.vision_config.image_size, "patch_size": cfg.vision_config.patch_size},
            "text": {"vocab_size": text_ids(cfg)}, "base_dir": str(base_dir),
            "audio_dir": str(audio_dir) if real_audio else None}
    memory = {"cpu_rss_base_loaded_bytes": _rss_now()}
    if warm_base is not None:
        warm_base(base)
        memory["cpu_peak_rss_base_alone_bytes"] = peak_rss_bytes()
    torch.manual_seed(0)
    model = SAFEModel(base, encoder, recipe.safe_config()).to(device)
    return model, spec, int(cfg.image_seq_length), int(cfg.image_token_id), memory


def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
