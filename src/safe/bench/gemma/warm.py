"""A warm start for the Gemma base's projector that needs no Gemma forward: words per image token.

Each of the 9 image tokens is one 16 px cell of the 48 px picture (the built-in scenes put at most one object in
a cell, cells aligned with the tower's patches), and the built-in vision tower was trained with a per-patch
shape / colour loss, so a patch's features already say what its cell holds. :func:`fit_projector` regresses the
projector so that each patch token lands on the mean of Gemma's own (scaled, frozen) input embeddings of the
words naming its cell's object (" red" and " square"), and of :data:`EMPTY_WORD` for an empty cell, from the
scenes' ground truth (``Example.meta["objects"]``). Gemma then starts by reading words it knows in the image
positions instead of noise, and the training through the frozen language model
(:mod:`safe.bench.gemma.train`) starts from there. Nothing of Gemma changes: its embedding matrix is read only.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

#: The word an empty cell's token is fitted to.
EMPTY_WORD = "nothing"


def cell_words(example, grid: int = 3) -> list[list[str]]:
    """Per cell, in the tower's patch order (row-major), the words naming the object there
    (``[colour, shape]``), or ``[EMPTY_WORD]``."""
    cells: list[list[str]] = [[EMPTY_WORD] for _ in range(grid * grid)]
    for o in example.meta["objects"]:
        cells[int(o["row"]) * grid + int(o["col"])] = [o["colour"], o["shape"]]
    return cells


@torch.no_grad()
def word_embeddings(model, tok, words: Sequence[str]) -> dict[str, torch.Tensor]:
    """Word -> Gemma's scaled input embedding of " word" (mean over its tokens if it has several)."""
    embed = model.model.language_model.embed_tokens
    out = {}
    for w in sorted(set(words)):
        ids = tok(" " + w, add_special_tokens=False)["input_ids"]
        out[w] = embed(torch.tensor([ids]))[0].mean(0)
    return out


def cell_targets(model, tok, examples: Sequence, grid: int = 3) -> torch.Tensor:
    """(examples, grid * grid, hidden): per image token, the mean embedding of its cell's words."""
    words = [cell_words(e, grid) for e in examples]
    table = word_embeddings(model, tok, [w for cells in words for ws in cells for w in ws])
    return torch.stack([torch.stack([torch.stack([table[w] for w in ws]).mean(0) for ws in cells])
                        for cells in words])


@torch.no_grad()
def patch_features(model, pixels: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The projector's inputs for ``pixels`` (the tower's selected patch features), as LLaVA computes them."""
    projector = model.model.multi_modal_projector
    seen: list[torch.Tensor] = []
    hook = projector.register_forward_hook(lambda m, args, out: seen.append(args[0].detach()))
    try:
        for s in range(0, len(pixels), batch_size):
            model.model.get_image_features(pixel_values=pixels[s:s + batch_size])
    finally:
        hook.remove()
    return torch.cat(seen)


def embedding_distance(projector, feats: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean squared distance between projected patches and their targets, relative to the targets' mean
    squared norm (1.0: as far as predicting zero)."""
    with torch.no_grad():
        return float(((projector(feats) - targets) ** 2).sum(-1).mean() / (targets ** 2).sum(-1).mean())


def fit_projector(projector, feats: torch.Tensor, targets: torch.Tensor, *, steps: int = 300,
                  batch_size: int = 1024, lr: float = 3e-3, seed: int = 0) -> dict[str, float]:
    """Regress ``projector`` (in place) so patch ``feats`` (N, P, d) map onto ``targets`` (N, P, hidden):
    AdamW on the relative squared distance over random patch minibatches, cosine-decayed. Returns the
    :func:`embedding_distance` before and after."""
    x, y = feats.reshape(-1, feats.shape[-1]), targets.reshape(-1, targets.shape[-1])
    before = embedding_distance(projector, x, y)
    scale = (y ** 2).sum(-1).mean()
    params = [p for p in projector.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(len(x), (min(batch_size, len(x)),), generator=gen)
        loss = ((projector(x[idx]) - y[idx]) ** 2).sum(-1).mean() / scale
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return {"distance_before": round(before, 4), "distance_after": round(embedding_distance(projector, x, y), 4)}
