"""Efficiency measurements (the proposal's efficiency targets, docs/design.md): latency, FLOPs and memory.

* :func:`time_calls` times a zero-argument callable with ``time.perf_counter``, single-threaded by
  default (on the project's 2-core machines only single-threaded medians are stable, docs/design.md);
  :func:`latency_stats` summarises the samples (median, p95, mean, min, n).
* :func:`count_flops` counts the FLOPs PyTorch's own ``FlopCounterMode`` sees while a callable runs
  once, so "SAFE with audio" and "SAFE with audio skipped" can be compared on the same inputs.
* :func:`module_memory_bytes` / :func:`safe_memory_report`: bytes held by parameters and buffers, per
  part of a :class:`~safe.models.safe_model.SAFEModel`.

Every function validates its inputs and raises ``ValueError`` naming the offending argument.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["latency_stats", "time_calls", "count_flops", "module_memory_bytes", "safe_memory_report"]


def latency_stats(samples_ms: Sequence[float]) -> dict:
    """Summary of latency samples in milliseconds.

    Returns ``{"median", "p95", "mean", "min", "n"}``: floats except ``n`` (an int). ``p95`` uses
    numpy's default (linear) interpolation, i.e. equals ``numpy.percentile(samples, 95)``.
    Raises ``ValueError`` (naming ``samples_ms``) for an empty, non-1-D, or non-finite input.
    """
    arr = np.asarray(samples_ms, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"samples_ms must be a 1-D sequence, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError("samples_ms is empty: need at least one latency sample")
    if not np.all(np.isfinite(arr)):
        raise ValueError("samples_ms contains NaN or infinite values")
    return {"median": float(np.median(arr)), "p95": float(np.percentile(arr, 95)), "mean": float(arr.mean()),
            "min": float(arr.min()), "n": int(arr.size)}


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def time_calls(fn: Callable[[], Any], repeats: int = 20, warmup: int = 3, threads: int | None = 1) -> list[float]:
    """Wall-clock milliseconds of ``repeats`` calls of ``fn()`` after ``warmup`` untimed calls.

    Each call is timed on its own with ``time.perf_counter``; the list has exactly ``repeats``
    entries, in call order. With ``threads`` not None the calls run under
    ``torch.set_num_threads(threads)`` and the previous thread count is restored afterwards, also
    when ``fn`` raises. Raises ``ValueError`` naming ``fn``, ``repeats``, ``warmup`` or ``threads``.
    """
    if not callable(fn):
        raise ValueError(f"fn must be callable, got {type(fn).__name__}")
    _check_int(repeats, "repeats", 1)
    _check_int(warmup, "warmup", 0)
    if threads is not None:
        _check_int(threads, "threads", 1)
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        for _ in range(warmup):
            fn()
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - start) * 1000.0)
    finally:
        if threads is not None:
            torch.set_num_threads(previous)
    return samples


def count_flops(fn: Callable[[], Any]) -> int:
    """Total FLOPs counted by ``torch.utils.flop_counter.FlopCounterMode`` while ``fn()`` runs once
    under ``torch.no_grad()``.

    The count covers the operators PyTorch has FLOP formulas for (matmuls, convolutions, attention),
    one multiply-add counting as 2 FLOPs; element-wise ops count 0. Raises ``ValueError`` if ``fn``
    is not callable.
    """
    if not callable(fn):
        raise ValueError(f"fn must be callable, got {type(fn).__name__}")
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        fn()
    return int(counter.get_total_flops())


def _tensor_bytes(tensors: Iterable[torch.Tensor], seen: dict) -> int:
    """Bytes of ``tensors`` not yet in ``seen`` (keyed by device and data pointer; views starting at
    the same address count once, at the size of the largest)."""
    added = 0
    for t in tensors:
        if t.numel() == 0:
            continue
        key = (t.device.type, t.device.index, t.data_ptr())
        size = t.numel() * t.element_size()
        old = seen.get(key, 0)
        if size > old:
            added += size - old
            seen[key] = size
    return added


def module_memory_bytes(module: nn.Module) -> int:
    """Bytes held by ``module``'s parameters and buffers (``numel * element_size`` each).

    A tensor shared by several submodules (same data pointer, e.g. tied embeddings) is counted
    once. Raises ``ValueError`` if ``module`` is not an ``nn.Module``.
    """
    if not isinstance(module, nn.Module):
        raise ValueError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    return _tensor_bytes([*module.parameters(), *module.buffers()], {})


def safe_memory_report(model) -> dict:
    """Parameter + buffer bytes of a ``SAFEModel`` per part.

    Returns ``{"base", "audio_encoder", "safe_parts", "safe_parts_fraction"}``: bytes of the frozen
    VL base, of the frozen audio encoder, of SAFE's own parts (projector, adapters and the policy if
    attached, i.e. ``model.safe_modules()``, de-duplicated together), and ``safe_parts`` divided by
    ``base + audio_encoder``. Raises ``ValueError`` naming ``model`` if it lacks those parts.
    """
    for attr in ("base_model", "audio_encoder", "safe_modules"):
        if not hasattr(model, attr):
            raise ValueError(f"model must be a SAFEModel (missing {attr!r}), got {type(model).__name__}")
    base = module_memory_bytes(model.base_model)
    encoder = module_memory_bytes(model.audio_encoder)
    seen: dict = {}
    parts = 0
    for module in model.safe_modules().values():
        parts += _tensor_bytes([*module.parameters(), *module.buffers()], seen)
    frozen = base + encoder
    return {"base": base, "audio_encoder": encoder, "safe_parts": parts,
            "safe_parts_fraction": parts / frozen if frozen else math.nan}
