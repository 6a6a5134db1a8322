"""Stage A's curriculum order: the audio-dependent training rows from easy to hard, measured.

The proposal's "gradual audio exposure (25% -> 100%)" needs an easy -> hard order of the audio rows
(:meth:`safe.data.mixture.BalancedMixtureSampler.set_exposure` makes a growing prefix of it eligible).
``base_loss`` measures it on the data itself, whatever reader the rows come from: each row's answer
cross-entropy per answer token under the frozen base (one forward pass over the audio rows, no
gradient, before training). The base hears nothing, so a low loss is an answer the image and the
question nearly give away (a short, common answer); a high loss one only the sound can give (a
caption, a rare word). ``family`` keeps a hand-written family list; ``none`` keeps the data order.

The order is written to ``<run>/checkpoints/curriculum_order.json`` the first time, so a resumed run
walks the same order even where a GPU's float sums differ run to run.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

ORDER_FILE = "curriculum_order.json"


def _key(kind: str, rows: Sequence[int], extra: str) -> str:
    return hashlib.sha256(json.dumps([kind, list(rows), extra]).encode()).hexdigest()[:16]


@torch.no_grad()
def base_losses(base_model, inputs: Callable[[Sequence[int]], tuple[dict, torch.Tensor]], rows: Sequence[int],
                batch: int = 64, autocast=None) -> list[float]:
    """Per-row answer cross-entropy (mean over the row's answer tokens) of ``base_model`` on ``rows``;
    ``inputs(idx)`` gives the model inputs and labels of rows ``idx``."""
    from contextlib import nullcontext

    from safe.training.losses import answer_cross_entropy

    out: list[float] = []
    for s in range(0, len(rows), batch):
        idx = list(rows[s:s + batch])
        vl, labels = inputs(idx)
        with autocast() if autocast else nullcontext():
            logits = base_model(**vl).logits
        out += answer_cross_entropy(logits, labels, reduction="none").tolist()
    return out


def curriculum_order(kind: str, rows: Sequence[int], examples, *, family_order: Sequence[str] = (),
                     losses: Callable[[Sequence[int]], list[float]] | None = None,
                     folder: str | Path | None = None, key_extra: str = "") -> tuple[list[int], dict]:
    """``rows`` (the audio rows' indices into ``examples``) easy -> hard, and a summary of the order
    (what the first quarter holds). ``kind``: ``base_loss`` (``losses(rows)`` measures them; ties keep
    data order), ``family`` or ``none``. ``folder``: where the order is kept for a resumed run."""
    from safe.data.mixture import order_by_family

    rows = list(rows)
    key = _key(kind, rows, key_extra + json.dumps(list(family_order)))
    file = Path(folder) / ORDER_FILE if folder is not None else None
    if file is not None and file.is_file():
        saved = json.loads(file.read_text())
        if saved.get("key") == key:
            return saved["order"], saved["summary"]
    summary: dict = {"order": kind}
    if kind == "none":
        order = rows
    elif kind == "family":
        order = order_by_family(examples, family_order, rows)
    elif kind == "base_loss":
        if losses is None:
            raise ValueError("curriculum order base_loss needs a way to measure the base's losses")
        measured = losses(rows)
        # rounded: float noise in the last digits must not reorder rows of equal difficulty
        ranked = sorted(range(len(rows)), key=lambda j: (round(measured[j], 4), j))
        order = [rows[j] for j in ranked]
        q = max(1, len(order) // 4)
        easy, hard = [measured[j] for j in ranked[:q]], [measured[j] for j in ranked[-q:]]
        summary.update({"easiest_quarter_mean_loss": round(sum(easy) / len(easy), 4),
                        "hardest_quarter_mean_loss": round(sum(hard) / len(hard), 4)})
    else:
        raise ValueError(f"curriculum order must be base_loss, family or none, got {kind!r}")
    families = list(examples.column("family")) if hasattr(examples, "column") else [e.family for e in examples]
    first = Counter(families[i] for i in order[:max(1, len(order) // 4)])
    summary["first_quarter_families"] = dict(first.most_common())
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"key": key, "order": order, "summary": summary}))
        os.replace(tmp, file)
    return order, summary
