"""Stage A rows for a modality other than audio (depth, thermal, ...) read from a data spec's map columns.

A data spec names each row's map of a modality in a column (``modalities: {depth: ...}``; the reader keeps it
as ``meta["modalities"]["depth"]``). To train that modality, :func:`prepare_modality` builds the same
:class:`~safe.data.prepared.PreparedSet` audio training uses, with the modality's frozen-encoder outputs in the
slot the trainer reads the primary modality from (the model is built with ``modality=NAME``):

* **The modality's rows** (the trainer's "needs" rows: answer loss, gate open on their own map) are the rows
  that name a map of it.
* **Retention rows** are the VL-only rows without a map. Each gets an unrelated map, as the spec pairs clips:
  ``pool[sha256("<name>:<id>") mod len(pool)]`` over the sorted distinct maps of the set's own rows (or the
  ``pool`` given, train's, when the set has none), so a row's map does not depend on the other rows' order
  and the gate-open retention loss sees maps that must not matter.
* **Rows that need audio** (questions about sound, captions of clips) are dropped: a model of this modality
  cannot answer them, and they are neither its rows nor VL rows. :class:`ModalityRows` counts each kind.

Maps are encoded once into the on-disk embedding cache (keyed by file content and the encoder with its image
processor), exactly as clips are.
"""
from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from safe.data.prepared import (
    DEFAULT_CACHE_BYTES,
    KEEP_ALL_BYTES,
    PreparedSet,
    _column,
    _encode,
    encoder_rows,
    image_rows,
)
from safe.data.record_table import RecordView
from safe.data.records import Example

WITH_MAP, WITHOUT_MAP = "row with a map", "row without a map"
"""The two kinds of row a modality's costs are measured and priced for (``safe policy train``) and its
evaluation prices each row by (``safe eval``)."""


@dataclass(frozen=True)
class ModalityRows:
    """What :func:`prepare_modality` made of a set: ``rows`` kept, of which ``with_map`` name their own map
    (the modality's rows) and ``paired`` got an unrelated one (retention rows); ``dropped_audio`` rows needed
    audio and were left out. ``paths``: the map each kept row was given, in row order (not in :meth:`to_dict`)."""

    rows: int
    with_map: int
    paired: int
    dropped_audio: int
    paths: tuple[str, ...] = field(default=(), repr=False)

    def to_dict(self) -> dict[str, int]:
        return {"rows": self.rows, "with_map": self.with_map, "paired": self.paired,
                "dropped_audio": self.dropped_audio}


def own_maps(examples: Sequence[Example], name: str) -> list[str | None]:
    """Each row's own map of modality ``name`` (an absolute path), or None."""
    return [((m or {}).get("modalities") or {}).get(name) for m in _column(examples, "meta")]


def map_pool(examples: Sequence[Example], name: str) -> list[str]:
    """The sorted distinct maps of modality ``name`` that ``examples`` name (what retention rows are paired from)."""
    return sorted({p for p in own_maps(examples, name) if p is not None})


def _paired(pool: Sequence[str], name: str, row_id: str) -> str:
    digest = hashlib.sha256(f"{name}:{row_id}".encode()).digest()
    return pool[int.from_bytes(digest[:8], "big") % len(pool)]


def modality_encoder_id(model, front) -> str:
    """The embedding cache's namespace for a modality: its frozen encoder and its image processor's settings."""
    import json

    from safe.models.integrity import state_hash

    settings = json.dumps(front.image_processor.to_dict(), sort_keys=True, default=str)
    return f"{state_hash(model.audio_encoder)[:24]}-{hashlib.sha256(settings.encode()).hexdigest()[:8]}"


def prepare_modality(examples: Sequence[Example], fmt, model, front, name: str, cache=None, *,
                     pool: Sequence[str] | None = None, progress: bool = False,
                     cache_bytes: int = DEFAULT_CACHE_BYTES, keep_all_bytes: int = KEEP_ALL_BYTES,
                     workers: int | None = None) -> tuple[PreparedSet, ModalityRows]:
    """``examples`` as Stage A rows of modality ``name`` (module docstring): ``model`` is a SAFE model whose
    primary modality is ``name`` and ``front`` that modality's front end
    (:class:`~safe.processing.modalities.ImageModalityFrontEnd`). ``pool``: maps to pair retention rows from
    when ``examples`` name none (train's, for a test split of VL rows only). ``ValueError`` when no row names a
    map and no pool is given, or when nothing is left."""
    if not isinstance(examples, RecordView):
        examples = list(examples)
    needs_audio = list(_column(examples, "needs_audio"))
    maps = own_maps(examples, name)
    keep = [i for i, (a, m) in enumerate(zip(needs_audio, maps)) if m is not None or not a]
    if not keep:
        raise ValueError(f"no row is left to train {name} on: every row needs audio and names no {name} map")
    kept = examples.take(keep) if isinstance(examples, RecordView) else [examples[i] for i in keep]
    own = [maps[i] for i in keep]
    pool = map_pool(kept, name) or sorted(set(pool or ()))
    if not pool:
        raise ValueError(f"no row names a {name} map (a data spec source's modalities: {{{name}: COLUMN}}), so "
                         f"there is nothing to train {name} on and no map to pair the VL rows with")
    ids = _column(kept, "id")
    paths = [m if m is not None else _paired(pool, name, ids[j]) for j, m in enumerate(own)]
    from safe.processing.modalities import read_map

    embeddings = encoder_rows(None, model, front, cache, progress, cache_bytes=cache_bytes,
                              keep_all_bytes=keep_all_bytes, workers=workers, paths=paths,
                              read=functools.partial(read_map, name=name), what=name)
    needs = torch.tensor([m is not None for m in own], dtype=torch.bool)
    counts = ModalityRows(rows=len(keep), with_map=int(needs.sum()), paired=len(keep) - int(needs.sum()),
                          dropped_audio=len(examples) - len(keep), paths=tuple(paths))
    return PreparedSet(kept, _encode(fmt, kept), image_rows(kept, fmt, cache_bytes, keep_all_bytes), embeddings,
                       needs), counts
