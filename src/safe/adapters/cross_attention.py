"""Gated low-rank cross-attention from LLM hidden states to audio tokens, with an optional low-rank
dense block (Flamingo's gated xattn-dense, in low rank)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from safe.adapters.gate import TanhGate

RANK_MAPS = ("query", "all")
"""Which of the adapter's attention maps take the rank ``rank``: ``"query"`` the query map only (keys, values
and output full-width: the layout of every checkpoint saved before the choice existed), ``"all"`` the query,
key, value and output maps, each a rank-``rank`` factorisation."""


def check_output_scale(value) -> float:
    """``value`` as a float if it is a finite number > 0, else ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"an adapter's output_scale must be a finite number > 0, got {value!r}")
    return float(value)


def _map(fan_in: int, fan_out: int, rank: int | None) -> nn.Module:
    """A full ``Linear`` (``rank`` None) or the rank-``rank`` product ``up(down(x))`` (a ``Sequential``, so its
    keys are ``<name>.0.weight`` / ``<name>.1.weight`` / ``<name>.1.bias``: the bias sits on the up map as on
    the full one)."""
    if rank is None:
        return nn.Linear(fan_in, fan_out)
    return nn.Sequential(nn.Linear(fan_in, rank, bias=False), nn.Linear(rank, fan_out))


class GatedCrossAttention(nn.Module):
    """``delta = tanh(g) * (x + dense(h + x))`` with ``x = W_o . attn(q = LN(h) A B, k = W_k a, v = W_v a)``.

    The query is a LoRA-style low-rank map of the hidden state (rank ``rank``); keys and values are
    projections of the audio tokens, full-width or, with ``rank_maps="all"``, of rank ``rank`` too, as is
    then the output map (:data:`RANK_MAPS`: the rank reaches every attention map, so it is what sizes
    the adapter); an optional learned *null key* with a zero value lets a head
    attend to "nothing" when the audio is irrelevant. With ``ffn_rank > 0`` a low-rank dense block
    ``dense(z) = U gelu(D LN(z))`` reads the fused state ``h + x``: attention alone returns a convex
    mix of the same audio values at every position, so it cannot say "low" at one step and "organ" at
    the next unless the frozen LM already tracks what it has said; the dense block can, because it
    mixes the current token with the audio. Both parts sit under the one gate, so ``g = 0`` still
    makes the adapter exactly nothing. ``output_scale`` (a constant, not trained) multiplies both parts'
    output: a pretrained LM's residual stream is far wider than 1 (Gemma 3 270M's hidden RMS is 700 to 1,100
    after layers 9 to 15), and an adapter speaking at unit scale there moves nothing for hundreds of steps;
    set to the layer's hidden RMS, a unit change of the adapter's weights is a unit change relative to it. The module returns only the gated delta; the caller adds it to
    the rows that use audio.

    Shapes: ``hidden`` (n, T, hidden_size), ``audio_tokens`` (n, k, hidden_size) -> (n, T, hidden_size),
    in the dtype of ``hidden`` (the adapter itself may run in a wider dtype than a bf16 base).
    """

    def __init__(self, hidden_size: int, *, rank: int = 8, num_heads: int = 4, attn_dim: int | None = None,
                 null_key: bool = True, gate_init: float = 0.0, ffn_rank: int = 0,
                 rank_maps: str = "query", output_scale: float = 1.0) -> None:
        super().__init__()
        attn_dim = attn_dim or min(hidden_size, 256)
        if attn_dim % num_heads:
            raise ValueError(f"attn_dim={attn_dim} must be divisible by num_heads={num_heads}")
        if rank < 1:
            raise ValueError(f"lora_rank must be >= 1, got {rank}")
        if rank_maps not in RANK_MAPS:
            raise ValueError(f"rank_maps must be one of {RANK_MAPS}, got {rank_maps!r}")
        if isinstance(ffn_rank, bool) or not isinstance(ffn_rank, int) or ffn_rank < 0:
            raise ValueError(f"ffn_rank must be an integer >= 0 (0: no dense block), got {ffn_rank!r}")
        self.num_heads, self.head_dim = num_heads, attn_dim // num_heads
        self.norm = nn.LayerNorm(hidden_size)
        self.q_down = nn.Linear(hidden_size, rank, bias=False)
        self.q_up = nn.Linear(rank, attn_dim, bias=False)
        low = rank if rank_maps == "all" else None
        self.rank_maps = rank_maps
        self.k_proj = _map(hidden_size, attn_dim, low)
        self.v_proj = _map(hidden_size, attn_dim, low)
        self.o_proj = _map(attn_dim, hidden_size, low)
        self.null_key = nn.Parameter(torch.randn(num_heads, self.head_dim) * 0.02) if null_key else None
        if ffn_rank:
            self.ffn_norm = nn.LayerNorm(hidden_size)
            self.ffn_down = nn.Linear(hidden_size, ffn_rank)
            self.ffn_up = nn.Linear(ffn_rank, hidden_size, bias=False)
        self.ffn_rank = ffn_rank
        self.output_scale = check_output_scale(output_scale)
        self.gate = TanhGate(gate_init)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        n, t, _ = x.shape
        return x.view(n, t, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, hidden: torch.Tensor, audio_tokens: torch.Tensor) -> torch.Tensor:
        dtype = self.norm.weight.dtype
        h = hidden.to(dtype)
        a = audio_tokens.to(dtype)
        q = self._heads(self.q_up(self.q_down(self.norm(h))))
        k = self._heads(self.k_proj(a))
        v = self._heads(self.v_proj(a))
        if self.null_key is not None:
            n = a.shape[0]
            k = torch.cat([self.null_key.to(dtype).expand(n, -1, -1).unsqueeze(2), k], dim=2)
            v = torch.cat([v.new_zeros(n, self.num_heads, 1, self.head_dim), v], dim=2)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).reshape(hidden.shape[0], hidden.shape[1], -1)
        s = self.output_scale
        x = self.o_proj(out)
        if s != 1.0:  # skipped at 1.0: checkpoints saved before the scale existed compute the same bits
            x = x * s
        if self.ffn_rank:
            d = self.ffn_up(F.gelu(self.ffn_down(self.ffn_norm(h + x))))
            x = x + (d * s if s != 1.0 else d)
        return self.gate(x).to(hidden.dtype)
