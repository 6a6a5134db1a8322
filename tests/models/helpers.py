import copy

import torch

from safe import SAFEConfig, SAFEModel
from safe.bench import presets as P

MIXED = torch.tensor([True, False, True, False])


def build(base_kind="llava", audio_kind="whisper", dtype=torch.float32, fusion_layers=(0, -1), seed=0, ffn_rank=0,
          **config):
    """(safe model, an untouched frozen deep copy of the base, the encoder) — the reference is a
    separate object in the same requires_grad state, never wrapped."""
    base = P.tiny_base(base_kind, seed=seed).to(dtype)
    ref = copy.deepcopy(base).requires_grad_(False)
    enc = P.tiny_audio_encoder(audio_kind, seed=seed).to(dtype)
    model = SAFEModel(base, enc, SAFEConfig(fusion_layers=list(fusion_layers), num_audio_tokens=4, lora_rank=4,
                                                ffn_rank=ffn_rank, **config))
    return model, ref, enc


def inputs(model, enc, batch=4, dtype=torch.float32, seed=0, overflow=False):
    x = P.random_vl_inputs(model.base_model, batch, seed=seed, dtype=dtype)
    audio = P.random_audio(enc, batch, seed=seed + 1, dtype=dtype)
    if overflow:
        audio = torch.full_like(audio, 3e38)
    return x, audio
