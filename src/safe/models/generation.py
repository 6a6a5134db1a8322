"""Answering pre-encoded prompts by greedy generation, and exact-match accuracy per family.

Used by Stage A (retention), the policy stage (outcomes) and evaluation alike. The prompt format is
duck-typed: anything with ``prompt_batch(enc, index) -> dict`` and ``decode(sequences, prompt_len)``
(``safe.processing.prompts.PromptFormat``, ``safe.processing.hf_prompts.ProcessorFormat``).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from safe.models.encoders import features_to

MAX_NEW_TOKENS = 6
"""Tokens generated per answer: the short answers and template captions fit in six."""


@torch.no_grad()
def answer_questions(model: nn.Module, fmt: Any, enc: Any, pixels: torch.Tensor,
                     batch_size: int = 200, max_new_tokens: int = MAX_NEW_TOKENS, progress: bool = False,
                     extra=None, index: Sequence[int] | None = None) -> list[str]:
    """Greedy answers of a LLaVA (or a SAFE model over one) to pre-encoded prompts.

    ``extra(idx) -> dict`` adds per-batch ``generate`` arguments (e.g. SAFE's audio); ``index``
    restricts answering to those examples (default all)."""
    from tqdm.auto import tqdm

    out: list[str] = []
    index = list(range(len(enc.prompts))) if index is None else list(index)
    starts = range(0, len(index), batch_size)
    for s in tqdm(starts, desc="answering", disable=not progress, leave=False):
        idx = index[s:s + batch_size]
        device = next(model.parameters()).device
        batch = {k: v.to(device) for k, v in fmt.prompt_batch(enc, idx).items()}
        # an encoder ensemble's embeddings are a tuple, one tensor per member
        more = {k: features_to(v, device) for k, v in (extra(idx) if extra is not None else {}).items()}
        gen = model.generate(**batch, pixel_values=pixels[idx].to(device), max_new_tokens=max_new_tokens,
                             do_sample=False, **more)
        out.extend(fmt.decode(gen, batch["input_ids"].shape[1]))
    return out


def accuracy_by_family(examples: Sequence[Any], predictions: Sequence[str]) -> dict[str, float]:
    """Exact-match accuracy per question family plus ``"all"``; ``examples`` need ``family`` and
    ``answers`` (:class:`safe.data.records.Example`)."""
    per: dict[str, list[bool]] = {}
    for ex, p in zip(examples, predictions):
        per.setdefault(ex.family, []).append(p.strip().lower() in {a.lower() for a in ex.answers})
    out = {f: sum(v) / len(v) for f, v in sorted(per.items())}
    out["all"] = sum(sum(v) for v in per.values()) / max(1, sum(len(v) for v in per.values()))
    return out


__all__ = ["MAX_NEW_TOKENS", "accuracy_by_family", "answer_questions"]
