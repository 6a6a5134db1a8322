"""Tiny random-weight instances of the real Hugging Face classes, for verification and tests.

They need no download and build in well under a second; they exercise exactly the code paths a 7B
checkpoint does (same classes, same layer layout), only smaller.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from safe.bench.families import FAMILIES, family_inputs, tiny_family
from safe.models.backbones import image_token_layout, resolve_backbone
from safe.models.loading import load_audio_encoder, load_base

IMAGE_TOKEN = 99          # id of the image placeholder token in the tiny vocabularies
VOCAB = 100
NUM_IMAGE_TOKENS = 4      # 32 px images, 16 px patches
BASE_PRESETS = ("llava", "blip2-opt", "blip2-t5", *FAMILIES)
"""Tiny base presets: LLaVA and BLIP-2 (here) and every other supported family (:mod:`safe.bench.families`)."""
AUDIO_PRESETS = ("whisper", "clap", "ast", "wav2vec2", "hubert", "wavlm", "qwen2-audio")


def _quiet_transformers() -> None:
    from transformers.utils import logging

    logging.set_verbosity_error()


def tiny_base(kind: str, seed: int = 0) -> nn.Module:
    """A randomly initialised tiny ``LlavaForConditionalGeneration`` or ``Blip2ForConditionalGeneration``, or of
    another family (:func:`safe.bench.families.tiny_family`)."""
    if kind in FAMILIES:
        return tiny_family(kind, seed)
    _quiet_transformers()
    import transformers as tf

    torch.manual_seed(seed)
    if kind == "llava":
        vision = tf.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     image_size=32, patch_size=16, projection_dim=32)
        text = tf.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                              num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=128,
                              pad_token_id=0, bos_token_id=1, eos_token_id=2)
        cfg = tf.LlavaConfig(vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN,
                             vision_feature_select_strategy="default", vision_feature_layer=-1,
                             image_seq_length=NUM_IMAGE_TOKENS)
        model = tf.LlavaForConditionalGeneration(cfg)
    elif kind in ("blip2-opt", "blip2-t5"):
        vision = tf.Blip2VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                                      image_size=32, patch_size=16)
        qformer = tf.Blip2QFormerConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                        intermediate_size=64, encoder_hidden_size=32)
        if kind == "blip2-opt":
            text = tf.OPTConfig(hidden_size=64, ffn_dim=128, num_hidden_layers=3, num_attention_heads=4,
                                vocab_size=VOCAB, word_embed_proj_dim=64, max_position_embeddings=128,
                                pad_token_id=0, bos_token_id=1, eos_token_id=2)
        else:
            text = tf.T5Config(d_model=64, d_ff=128, num_layers=3, num_decoder_layers=3, num_heads=4, d_kv=16,
                               vocab_size=VOCAB, decoder_start_token_id=0, pad_token_id=0, eos_token_id=2)
        cfg = tf.Blip2Config(vision_config=vision.to_dict(), qformer_config=qformer.to_dict(), text_config=text.to_dict(),
                             num_query_tokens=NUM_IMAGE_TOKENS, image_token_index=IMAGE_TOKEN)
        model = tf.Blip2ForConditionalGeneration(cfg)
    else:
        raise ValueError(f"unknown base preset {kind!r}; choose from {BASE_PRESETS}")
    return model.eval()


def tiny_audio_encoder(kind: str, seed: int = 0) -> nn.Module:
    """A randomly initialised tiny Whisper encoder or CLAP audio model."""
    _quiet_transformers()
    import transformers as tf

    torch.manual_seed(seed)
    if kind == "whisper":
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        cfg = tf.WhisperConfig(d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64,
                               decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64, num_mel_bins=16,
                               max_source_positions=50, vocab_size=64, max_target_positions=16,
                               pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
        return WhisperEncoder(cfg).eval()
    if kind == "clap":
        cfg = tf.ClapAudioConfig(spec_size=64, num_mel_bins=16, window_size=4, hidden_size=32, depths=[1, 1],
                                 num_heads=[2, 2], patch_embeds_hidden_size=16, enable_fusion=False,
                                 projection_dim=24, patch_stride=(4, 4), patch_size=4)
        return tf.ClapAudioModelWithProjection(cfg).eval()
    if kind == "ast":
        cfg = tf.ASTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                           num_mel_bins=16, max_length=32, patch_size=8, frequency_stride=8, time_stride=8)
        return tf.ASTModel(cfg).eval()
    if kind in ("wav2vec2", "hubert", "wavlm"):
        common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                      conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16,
                      num_conv_pos_embedding_groups=2, vocab_size=8)
        conf, cls = {"wav2vec2": (tf.Wav2Vec2Config, tf.Wav2Vec2Model), "hubert": (tf.HubertConfig, tf.HubertModel),
                     "wavlm": (tf.WavLMConfig, tf.WavLMModel)}[kind]
        return cls(conf(**common)).eval()
    if kind == "qwen2-audio":
        from transformers.models.qwen2_audio.modeling_qwen2_audio import Qwen2AudioEncoder

        cfg = tf.Qwen2AudioEncoderConfig(d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64,
                                         num_mel_bins=16, max_source_positions=50)
        return Qwen2AudioEncoder(cfg).eval()
    raise ValueError(f"unknown audio preset {kind!r}; choose from {AUDIO_PRESETS}")


def audio_input_shape(encoder: nn.Module) -> tuple[int, ...]:
    """Per-example ``input_features`` shape the encoder expects, read from its config
    (Whisper: mels x frames; CLAP: 1 x frames x mels, frames filling HTSAT's square spectrogram)."""
    cfg = encoder.config
    cfg = getattr(cfg, "audio_config", cfg)  # ClapModel keeps the audio tower's config inside
    if cfg.model_type == "audio-spectrogram-transformer":
        return (cfg.max_length, cfg.num_mel_bins)
    if cfg.model_type in ("wav2vec2", "hubert", "wavlm"):
        return (WAVEFORM_SAMPLES,)
    if hasattr(cfg, "max_source_positions"):
        return (cfg.num_mel_bins, 2 * cfg.max_source_positions)
    return (1, cfg.spec_size * max(1, cfg.spec_size // cfg.num_mel_bins), cfg.num_mel_bins)


WAVEFORM_SAMPLES = 3200
"""Samples per clip (0.2 s at 16 kHz) of the tiny raw-waveform encoders' random input."""


def tiny_feature_extractor(kind: str):
    """The feature extractor matching :func:`tiny_audio_encoder` ``kind`` (its own class, small settings)."""
    import transformers as tf

    if kind in ("whisper", "qwen2-audio"):
        return tf.WhisperFeatureExtractor(feature_size=16, chunk_length=1, hop_length=160)
    if kind == "clap":
        return tf.ClapFeatureExtractor(feature_size=16, max_length_s=1, hop_length=250, truncation="rand_trunc")
    if kind == "ast":
        return tf.ASTFeatureExtractor(num_mel_bins=16, max_length=32)
    if kind in ("wav2vec2", "hubert", "wavlm"):
        return tf.Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, do_normalize=True)
    raise ValueError(f"unknown audio preset {kind!r}; choose from {AUDIO_PRESETS}")


def random_audio(encoder: nn.Module, batch: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    """Random encoder input features for ``batch`` clips (shape from :func:`audio_input_shape`)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn((batch, *audio_input_shape(encoder)), generator=g).to(dtype)


IMAGE_SIZES = ((32, 32), (48, 64), (64, 32))
"""(height, width) of the random images of the per-image-token-count families, cycled over the rows, so
a batch mixes image-token counts (tiling, dynamic resolution)."""


def random_vl_inputs(base: nn.Module, batch: int, text_len: int = 6, seed: int = 0, dtype=torch.float32,
                     left_pad: bool = True, prompt_format=None) -> dict[str, torch.Tensor]:
    """A batch of prompts ``[image tokens][text]`` with random pixel values, for any supported base.
    The first row is left-padded by two tokens when ``left_pad`` so padding paths are exercised.
    The per-image-token-count families get random images of :data:`IMAGE_SIZES` through their processor:
    ``prompt_format`` (a :class:`safe.processing.vlm_prompts.VLMProcessorFormat` of a checkpoint), else the
    tiny preset's (:func:`safe.bench.families.family_inputs`)."""
    name = resolve_backbone(base).name
    if name in FAMILIES:
        import numpy as np
        from PIL import Image

        from safe.bench.families import WORDS

        rng = np.random.default_rng(seed)
        images = [Image.fromarray(rng.integers(0, 256, (*IMAGE_SIZES[i % len(IMAGE_SIZES)], 3), dtype=np.uint8))
                  for i in range(batch)]
        words = [w for w in WORDS if w.isalpha()]
        questions = [" ".join(rng.choice(words, size=text_len - i % 3)) + " ?" for i in range(batch)]
        x = (prompt_format.batch(questions, images) if prompt_format is not None
             else family_inputs(name, base, questions, images))
        return {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in x.items()}
    g = torch.Generator().manual_seed(seed)
    image_token, n_image = image_token_layout(base)
    vocab = base.config.text_config.vocab_size
    text = torch.randint(0, vocab, (batch, text_len), generator=g)
    text[text == image_token] = (image_token + 1) % vocab  # only the image slots may hold the image token
    ids = torch.cat([torch.full((batch, n_image), image_token), text], dim=1)
    mask = torch.ones_like(ids)
    if left_pad and batch > 1:
        pad = base.config.text_config.pad_token_id or 0
        ids = torch.cat([torch.full((batch, 2), pad, dtype=ids.dtype), ids], dim=1)
        mask = torch.cat([torch.ones(batch, 2, dtype=mask.dtype), mask], dim=1)
        mask[0, :2] = 0
    size = base.config.vision_config.image_size
    pixels = torch.randn(batch, 3, size, size, generator=g).to(dtype)
    out = {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels}
    if getattr(base.config.text_config, "is_encoder_decoder", False):
        out["decoder_input_ids"] = torch.randint(0, vocab, (batch, 3), generator=g)
    return out


def load_base_or_preset(spec: str, dtype: torch.dtype = torch.float32, device: str = "cpu",
                        **load_options) -> nn.Module:
    """``spec``: a tiny preset (:data:`BASE_PRESETS`) or a local checkpoint path
    (:func:`safe.models.loading.load_base`; ``load_options``: its ``attn_implementation`` / ``device_map``,
    for a preset only ``attn_implementation``)."""
    if spec in FAMILIES:
        return tiny_family(spec, attn_implementation=load_options.get("attn_implementation")).to(device=device, dtype=dtype)
    if spec in BASE_PRESETS:
        return tiny_base(spec).to(device=device, dtype=dtype)
    if not Path(spec).exists():
        raise FileNotFoundError(f"base model {spec!r} is neither a preset {BASE_PRESETS} nor an existing path")
    return load_base(spec, dtype, device, **load_options)


def load_audio_encoder_or_preset(spec: str, dtype: torch.dtype = torch.float32, device: str = "cpu") -> nn.Module:
    """``spec``: a tiny preset (:data:`AUDIO_PRESETS`) or a local audio encoder checkpoint path
    (:func:`safe.models.loading.load_audio_encoder`)."""
    if spec in AUDIO_PRESETS:
        return tiny_audio_encoder(spec).to(device=device, dtype=dtype)
    if not Path(spec).exists():
        raise FileNotFoundError(f"audio encoder {spec!r} is neither a preset {AUDIO_PRESETS} nor an existing path")
    return load_audio_encoder(spec, dtype, device)
