"""Stages B and C for a modality of maps (depth, ...) trained on a user's data (``safe train --modality``): when to
consult it, decided per row by the same machinery as audio and as the depth track's policy.

* **Tables:** the early state (question and image embeddings, no base pass) with the map's preview in the preview
  slot: one cell per encoder patch, the cell's largest value of the encoder's input
  (:func:`~safe.processing.modalities.map_preview`), exactly what ``safe.pipeline`` computes from a map at
  inference; each row answered with and without its map.
* **Costs:** milliseconds per row measured on the model, with the map (its encoder run) and without, on rows that
  name a map and on rows that do not; each row is priced by its kind.
* **Policy:** :func:`~safe.policy.modalities.train_modality_policy` (alpha chosen on held-out training rows, PPO,
  Stage C) and the never / always / oracle baselines of this modality on the test table.
* **Deployment:** the distilled gate attached to the SAFE weights and saved, so ``safe.pipeline`` /
  ``safe predict`` consult it per row (a row without a map never uses the modality).
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from safe.data.modality_rows import WITH_MAP, WITHOUT_MAP
from safe.data.prepared import PreparedSet
from safe.processing.modalities import map_preview

ALPHAS = (0.0, 0.1, 0.3)
"""Latency weights alpha is chosen among (on held-out training rows), as for the depth track."""
TOLERANCE = 0.005
"""Held-out accuracy an alpha may lose to always-on (half a point, as for the depth track)."""


def patch_preview(model, name: str, pixel_values: torch.Tensor) -> torch.Tensor:
    """The preview modality ``name``'s policy reads from its front end's output: one cell per patch of its
    encoder (:func:`~safe.processing.modalities.map_preview`); training, ``safe.pipeline`` and ``safe serve`` all
    call this. ``ValueError`` when the encoder has no patch grid over such inputs."""
    cfg = getattr(getattr(model.modality(name).encoder, "model", None), "config", None)
    patch = getattr(cfg, "patch_size", None)
    if not isinstance(patch, int) or pixel_values.shape[-1] % patch:
        raise ValueError(f"the attached {name} policy reads a preview of one cell per encoder patch; this {name} "
                         f"encoder has no patch grid over {tuple(pixel_values.shape[-2:])} inputs "
                         f"(patch_size {patch!r}): pass use_{name}=True / False")
    return map_preview(pixel_values, pixel_values.shape[-1] // patch)


def map_previews(model, front, paths: Sequence[str], name: str, batch: int = 256) -> torch.Tensor:
    """(n, PREVIEW_DIM): the preview of each map of ``paths`` as the deployed policy reads it."""
    return torch.cat([patch_preview(model, name, front(list(paths[s:s + batch]), name))
                      for s in range(0, len(paths), batch)])


@torch.no_grad()
def ms_per_row(model, fmt, data: PreparedSet, rows: list[int], pixels: torch.Tensor | None,
               repeats: int = 3) -> float:
    """Median milliseconds per row to answer ``rows`` greedily, with the modality (its encoder run on
    ``pixels``, one per row of ``rows``) or without it (``pixels`` None)."""
    from safe.models.generation import MAX_NEW_TOKENS

    batch = data.prompt_inputs(fmt, rows)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        if pixels is not None:
            model.generate(**batch, audio_features=pixels, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
        else:
            with model.audio_disabled():
                model.generate(**batch, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
        times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times)) / len(rows)


def measure_costs(model, fmt, front, name: str, data: PreparedSet, paths: Sequence[str],
                  cost_rows: int = 32) -> dict[str, dict[str, float]]:
    """``{kind: {"without_audio", "with_audio"}}`` ms per row for the rows of ``data`` that name a map
    (:data:`WITH_MAP`) and those that do not (:data:`WITHOUT_MAP`; priced as rows with a map when there are none)."""
    needs = data.needs_audio.tolist()
    out = {}
    for kind, want in ((WITH_MAP, True), (WITHOUT_MAP, False)):
        rows = [i for i, n in enumerate(needs) if n == want][:cost_rows]
        if rows:
            pixels = front([paths[i] for i in rows], name)
            out[kind] = {"without_audio": ms_per_row(model, fmt, data, rows, None),
                         "with_audio": ms_per_row(model, fmt, data, rows, pixels)}
    out.setdefault(WITHOUT_MAP, out[WITH_MAP])
    return out


def row_kinds(data: PreparedSet) -> list[str]:
    """Each row's cost key (:data:`WITH_MAP` / :data:`WITHOUT_MAP`)."""
    return [WITH_MAP if n else WITHOUT_MAP for n in data.needs_audio.tolist()]


def deploy_gate(model, gate, checkpoint_dir: str | Path) -> str:
    """Save the SAFE weights of ``model`` with the distilled early-state ``gate`` attached as its policy (what
    ``safe.pipeline`` / ``safe predict`` consult per row) into ``checkpoint_dir``; the model leaves without it
    whatever happens. Returns the checkpoint's path."""
    from safe.policy.outcomes import state_spec
    from safe.policy.runtime import AudioPolicy

    model.attach_policy(AudioPolicy(state_spec(model, early=True), "mlp", gate.hidden, net=gate))
    try:
        return str(model.save_pretrained(checkpoint_dir))
    finally:
        model.attach_policy(None)


def map_modality_policy(model, fmt, front, name: str, train: PreparedSet, train_paths: Sequence[str],
                        test: PreparedSet, test_paths: Sequence[str], *, alphas: Sequence[float] = ALPHAS,
                        tolerance: float = TOLERANCE, steps: int | None = None, train_rows: int = 1200,
                        cost_rows: int = 32, progress: bool = False, save_dir: str | Path | None = None,
                        checkpoint_dir: str | Path | None = None) -> dict[str, Any]:
    """Stage B and C of modality ``name`` (module docstring) on the first ``train_rows`` of ``train`` and on
    ``test`` (prepared by :func:`~safe.data.modality_rows.prepare_modality`, ``*_paths`` the maps each row was
    given). ``save_dir``: where the tables go (``<name>_{train,test}_table.pt``); ``checkpoint_dir``: where the
    SAFE weights are saved with the distilled gate attached. Returns the figures (as
    :func:`~safe.policy.modalities.modality_policy`) with the measured costs."""
    from safe.policy.modalities import train_modality_policy
    from safe.policy.outcomes import build_table, collect_outcomes

    t0 = time.perf_counter()
    was = model.training
    model.eval()
    n = min(train_rows, len(train))
    train, train_paths = train.subset(range(n)), list(train_paths[:n])
    costs = measure_costs(model, fmt, front, name, test, test_paths, cost_rows)
    tables = {}
    for split, data, paths in (("train", train, train_paths), ("test", test, test_paths)):
        outcomes = collect_outcomes(model, fmt, data, map_previews(model, front, paths, name), progress=progress,
                                    early=True)
        tables[split] = build_table(outcomes, data, costs, keys=row_kinds(data))
    if save_dir is not None:  # the tables, so the policy can be retrained and rescored without the model
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        for split, table in tables.items():
            table.save(Path(save_dir) / f"{name}_{split}_table.pt")
    out, _, gate = train_modality_policy(tables["train"], tables["test"], alphas=alphas, tolerance=tolerance,
                                         **({"ppo": {"steps": steps}} if steps else {}))
    if checkpoint_dir is not None:
        out["checkpoint"] = deploy_gate(model, gate, checkpoint_dir)
    model.train(was)
    return {**out, "modality": name, "costs_ms_per_query": costs, "seconds": round(time.perf_counter() - t0, 1)}
