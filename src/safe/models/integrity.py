"""Byte-level fingerprints of module weights: "frozen" is checked, not assumed."""
from __future__ import annotations

import hashlib

import torch
from torch import nn


def tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().cpu().contiguous().reshape(-1)  # 0-d tensors cannot be viewed as bytes
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def state_hash(module: nn.Module) -> str:
    """SHA-256 over every state-dict entry (name, dtype, shape and raw bytes), in key order.
    Equal hashes mean byte-identical tensors; -0.0 vs +0.0 or a NaN payload change counts."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(tensor_bytes(t))
    return h.hexdigest()
