"""The balanced Stage A mixture: every batch has a fixed share of audio-dependent examples.

The proposal's Stage A mixes audio-dependent and VL-only retention pairs in a fixed share per batch
(docs/design.md). :class:`BalancedMixtureSampler` yields an infinite, deterministic stream
of batches of dataset indices; :func:`order_by_family` builds the easy -> hard order its curriculum
(:meth:`BalancedMixtureSampler.set_exposure`, driven by :func:`safe.training.schedules.audio_exposure`)
walks along.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from numbers import Integral, Real
from typing import Any

import numpy as np

from safe.data.records import Example

__all__ = ["BalancedMixtureSampler", "order_by_family"]

_AUDIO, _VL = 0, 1  # stream tags in the RNG key: the two pools never share random numbers

#: Bump when the meaning of the state dict changes.
_STATE_VERSION = 1


def _index_list(name: str, values: Any) -> list[int]:
    if isinstance(values, (str, bytes)):
        raise ValueError(f"{name} must be a sequence of integers, got {values!r}")
    try:
        items = list(values)
    except TypeError:
        raise ValueError(f"{name} must be a sequence of integers, got {values!r}") from None
    bad = [v for v in items if isinstance(v, bool) or not isinstance(v, Integral)]
    if bad:
        raise ValueError(f"{name} must hold integers only, got {bad[0]!r}")
    return [int(v) for v in items]


def _digest(values: Sequence[int]) -> str:
    return hashlib.sha256(json.dumps(list(values)).encode()).hexdigest()[:16]


class BalancedMixtureSampler:
    """Infinite, deterministic stream of batches with a fixed audio / VL composition.

    Every batch (a ``list[int]`` of dataset indices, from :meth:`next_batch` or iteration) holds
    exactly ``n_audio = round(batch_size * audio_share)`` indices from ``audio_indices`` followed
    by ``n_vl = batch_size - n_audio`` indices from ``vl_indices`` (audio first, so the trainer can
    split a batch by position). ``round`` is Python's (half to even): batch 5 at share 0.5 -> 2 audio.

    Each pool is drawn in epochs: a fresh random permutation of the eligible items, consumed in
    order, so within an epoch no item repeats; a batch that crosses an epoch boundary takes the rest
    from the next permutation (only then can an item appear twice in one batch, when a pool is
    smaller than its share of the batch). The permutations are a pure function of ``seed`` and a
    counter, so equal arguments give equal streams.

    Curriculum: ``audio_order`` lists ``audio_indices`` from easy to hard (default: the order of
    ``audio_indices``); after ``set_exposure(f)`` only its first ``max(1, ceil(f * len))`` entries
    are eligible. Changing the exposure does not restart the epoch: items that become eligible are
    shuffled into what remains of the current epoch (so they are seen in it), and items that stop
    being eligible are dropped from it; items already drawn in the epoch are not drawn again before
    the next one. The initial exposure is 1.0 (everything eligible).

    ``state_dict()`` is a JSON-serialisable dict; a sampler built with the same arguments and given
    it produces exactly the batches the original would have produced next.

    An empty pool is allowed only when the batch never draws from it (``audio_share = 0`` with no
    audio, or ``audio_share = 1`` with no VL examples).
    """

    def __init__(self, audio_indices: Sequence[int], vl_indices: Sequence[int], batch_size: int,
                 audio_share: float = 0.5, seed: int = 0, audio_order: Sequence[int] | None = None) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, Integral) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if (isinstance(audio_share, bool) or not isinstance(audio_share, Real)
                or not 0.0 <= float(audio_share) <= 1.0):
            raise ValueError(f"audio_share must be a number in [0, 1], got {audio_share!r}")
        if isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        audio = _index_list("audio_indices", audio_indices)
        vl = _index_list("vl_indices", vl_indices)
        self.batch_size = int(batch_size)
        self.audio_share = float(audio_share)
        self.seed = int(seed)
        self.n_audio = round(self.batch_size * self.audio_share)
        self.n_vl = self.batch_size - self.n_audio
        if self.n_audio > 0 and not audio:
            raise ValueError(f"audio_indices is empty but each batch of {self.batch_size} needs "
                             f"{self.n_audio} audio examples (audio_share={self.audio_share})")
        if self.n_vl > 0 and not vl:
            raise ValueError(f"vl_indices is empty but each batch of {self.batch_size} needs "
                             f"{self.n_vl} VL examples (audio_share={self.audio_share})")
        if audio_order is None:
            order = list(audio)
        else:
            order = _index_list("audio_order", audio_order)
            if sorted(order) != sorted(audio):
                raise ValueError(f"audio_order must be a permutation of audio_indices "
                                 f"({len(audio)} items), got {len(order)} items that differ")
        # The pools are kept as ordered lists; the streams below work on *positions* into them, so
        # an index listed twice (deliberate oversampling) is simply two items.
        self._audio_order = order
        self._vl = vl
        self._fingerprint = {"audio_order": _digest(order), "vl_indices": _digest(vl),
                             "batch_size": self.batch_size, "audio_share": self.audio_share,
                             "seed": self.seed}
        self._exposure = 1.0
        self._eligible = len(order)             # audio positions [0, _eligible) may be drawn
        self._remaining: list[list[int]] = [[], []]   # per stream: positions left in this epoch
        self._shuffles = [0, 0]                 # per stream: random permutations drawn so far
        self.batches_drawn = 0

    # ------------------------------------------------------------------ curriculum
    @property
    def exposure(self) -> float:
        """The fraction last given to :meth:`set_exposure` (1.0 initially)."""
        return self._exposure

    @property
    def eligible_audio(self) -> list[int]:
        """The audio indices that can currently be drawn (a prefix of the easy -> hard order)."""
        return self._audio_order[: self._eligible]

    def set_exposure(self, fraction: float) -> None:
        """Make only the first ``max(1, ceil(fraction * len(audio_order)))`` audio items eligible.

        ``fraction * len`` is rounded to 9 decimals before the ceiling, so that e.g. 0.07 of 100 items
        is 7 (in floating point 0.07 * 100 = 7.000000000000001).
        """
        if (isinstance(fraction, bool) or not isinstance(fraction, Real)
                or not 0.0 <= float(fraction) <= 1.0):
            raise ValueError(f"fraction must be a number in [0, 1], got {fraction!r}")
        n = len(self._audio_order)
        new = min(n, max(1, math.ceil(round(float(fraction) * n, 9)))) if n else 0
        self._exposure = float(fraction)
        old = self._eligible
        if new == old:
            return
        self._eligible = new
        rem = self._remaining[_AUDIO]
        if not rem:
            return  # the next draw starts a new epoch over the new eligible set anyway
        if new < old:
            self._remaining[_AUDIO] = [p for p in rem if p < new]
        else:
            # The remaining part of the epoch is a uniform random order; shuffling the newcomers
            # into it keeps it uniform, and they are seen before the epoch ends.
            self._remaining[_AUDIO] = self._permute(_AUDIO, rem + list(range(old, new)))

    # ------------------------------------------------------------------ drawing
    def _permute(self, stream: int, items: list[int]) -> list[int]:
        rng = np.random.default_rng([self.seed, stream, self._shuffles[stream]])
        self._shuffles[stream] += 1
        return [items[i] for i in rng.permutation(len(items))]

    def _draw(self, stream: int, k: int) -> list[int]:
        size = self._eligible if stream == _AUDIO else len(self._vl)
        out: list[int] = []
        while len(out) < k:
            if not self._remaining[stream]:
                self._remaining[stream] = self._permute(stream, list(range(size)))
            take = min(k - len(out), len(self._remaining[stream]))
            out.extend(self._remaining[stream][:take])
            del self._remaining[stream][:take]
        pool = self._audio_order if stream == _AUDIO else self._vl
        return [pool[p] for p in out]

    def next_batch(self) -> list[int]:
        """The next batch: ``n_audio`` audio indices, then ``n_vl`` VL indices."""
        batch = self._draw(_AUDIO, self.n_audio) + self._draw(_VL, self.n_vl)
        self.batches_drawn += 1
        return batch

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            yield self.next_batch()

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state: position in both streams, curriculum, and an argument fingerprint."""
        return {"version": _STATE_VERSION, "fingerprint": dict(self._fingerprint),
                "exposure": self._exposure, "eligible": self._eligible,
                "remaining_audio": list(self._remaining[_AUDIO]), "remaining_vl": list(self._remaining[_VL]),
                "shuffles": list(self._shuffles), "batches_drawn": self.batches_drawn}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output; the sampler must have been built with the same arguments."""
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"state['version'] must be {_STATE_VERSION}, got {state.get('version')!r}")
        if dict(state["fingerprint"]) != self._fingerprint:
            raise ValueError(f"state was saved by a sampler built with other arguments: "
                             f"saved {dict(state['fingerprint'])}, this one {self._fingerprint}")
        eligible = int(state["eligible"])
        if not 0 <= eligible <= len(self._audio_order):
            raise ValueError(f"state['eligible'] must be in [0, {len(self._audio_order)}], got {eligible}")
        rem_a, rem_v = [int(p) for p in state["remaining_audio"]], [int(p) for p in state["remaining_vl"]]
        if any(not 0 <= p < eligible for p in rem_a) or any(not 0 <= p < len(self._vl) for p in rem_v):
            raise ValueError("state['remaining_audio'] / state['remaining_vl'] hold out-of-range positions")
        self._exposure = float(state["exposure"])
        self._eligible = eligible
        self._remaining = [rem_a, rem_v]
        self._shuffles = [int(s) for s in state["shuffles"]]
        self.batches_drawn = int(state["batches_drawn"])


def order_by_family(examples: Sequence[Example], family_order: Sequence[str],
                    rows: Sequence[int] | None = None) -> list[int]:
    """Indices (into ``examples``) of the audio-dependent examples (or of ``rows``: another modality's), easy ->
    hard by family.

    Examples with ``needs_audio`` are sorted by the position of their ``family`` in
    ``family_order``; the sort is stable (dataset order within a family) and families not in
    ``family_order`` come last, in dataset order. The result is a valid ``audio_order`` for a
    :class:`BalancedMixtureSampler` whose ``audio_indices`` are
    ``[i for i, e in enumerate(examples) if e.needs_audio]``.
    """
    if isinstance(family_order, str):
        raise ValueError(f"family_order must be a sequence of family names, got the string {family_order!r}")
    rank: dict[str, int] = {}
    for pos, fam in enumerate(family_order):
        rank.setdefault(fam, pos)  # a name listed twice keeps its first position
    last = len(rank) + len(family_order)
    audio = [i for i, e in enumerate(examples) if e.needs_audio] if rows is None else list(rows)
    return sorted(audio, key=lambda i: rank.get(examples[i].family, last))
