"""Audio projector: encoder output -> ``num_audio_tokens`` tokens of the LLM width."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PROJECTOR_MODES = ("sequence", "pooled")


class AudioProjector(nn.Module):
    """Maps frozen-encoder features to audio tokens the adapters attend to.

    ``mode="sequence"``: average-pool the encoder's token sequence to ``num_tokens`` segments (keeps
    *when* things happen, e.g. beep counts), then a 2-layer MLP per token.
    ``mode="pooled"``: mean over the sequence (a CLAP-style clip embedding), then an MLP emitting all
    ``num_tokens`` tokens at once, as the proposal's ``projector(audio_features) -> (batch, k, d)``.

    Shapes: ``features`` (n, T, in_dim) -> (n, num_tokens, out_dim).
    """

    def __init__(self, in_dim: int, out_dim: int, num_tokens: int, *, mode: str = "sequence",
                 hidden_dim: int | None = None) -> None:
        super().__init__()
        if mode not in PROJECTOR_MODES:
            raise ValueError(f"projector_mode must be one of {PROJECTOR_MODES}, got {mode!r}")
        if num_tokens < 1:
            raise ValueError(f"num_audio_tokens must be >= 1, got {num_tokens}")
        self.mode, self.num_tokens, self.out_dim = mode, num_tokens, out_dim
        hidden_dim = hidden_dim or out_dim
        self.norm = nn.LayerNorm(in_dim)
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, out_dim * (num_tokens if mode == "pooled" else 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = features.to(self.fc1.weight.dtype)
        if self.mode == "pooled":
            x = self.fc2(F.gelu(self.fc1(self.norm(x.mean(dim=1)))))
            return x.view(x.shape[0], self.num_tokens, self.out_dim)
        # (n, T, C) -> (n, k, C): adaptive pooling also up-samples when T < k.
        x = F.adaptive_avg_pool1d(x.transpose(1, 2), self.num_tokens).transpose(1, 2)
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


class EnsembleProjector(nn.Module):
    """One :class:`AudioProjector` per member of an encoder ensemble; their tokens are concatenated.

    Shapes: a tuple of ``(n, T_i, in_dim_i)`` -> (n, len(in_dims) * num_tokens, out_dim), member order."""

    def __init__(self, in_dims, out_dim: int, num_tokens: int, *, mode: str = "sequence",
                 hidden_dim: int | None = None) -> None:
        super().__init__()
        self.members = nn.ModuleList(AudioProjector(d, out_dim, num_tokens, mode=mode, hidden_dim=hidden_dim)
                                     for d in in_dims)
        self.num_tokens, self.out_dim = num_tokens * len(self.members), out_dim

    def forward(self, features) -> torch.Tensor:
        return torch.cat([p(f) for p, f in zip(self.members, features)], dim=1)
