"""The outcome table: what Stage B's policy learns from, with no model inside.

Running the VL model and SAFE once per training example and per action, and storing the result,
turns reinforcement learning over a 7B model into reinforcement learning over a table: an episode
is one row, the action is "consult audio or not", and the outcome of either action is looked up.
PPO then runs in seconds.

:class:`OutcomeTable` holds, per example ``i`` (``n`` rows):

================== =========== =================================================================
field              shape/dtype meaning
================== =========== =================================================================
``states``         (n, d) f32  the policy's input features (question / image embeddings, a
                               cheap audio preview, the base's confidence ...)
``correct_without`` (n,) f32  score of the base VL model's answer (gate closed, no audio), in [0, 1]
``correct_with``   (n,) f32    score of SAFE's answer with audio (gate open), in [0, 1]
``needs_audio``    (n,) bool   the question is audio-dependent (label from the dataset)
``is_vl``          (n,) bool   a VL-only retention question (the retention constraint's rows)
``cost_without_ms`` (n,) f32   measured latency of answering without audio, milliseconds
``cost_with_ms``   (n,) f32    measured latency of answering with audio, milliseconds
``confidence``     (n,) f32    the base's confidence in its VL-only answer (threshold baseline)
``entropy``        (n,) f32    the entropy of the base's VL-only answer (threshold baseline)
``tokens_without`` (n,) f32    language-model tokens of answering without audio (the tokens generated)
``tokens_with``    (n,) f32    the same with audio: the tokens generated plus the ``k`` audio tokens the
                               adapters attend to
================== =========== =================================================================

The two token columns are optional: a table written before they existed loads with zeros there, which
Stage B reads as "no token cost measured" (:func:`safe.policy.reward.token_scale`).

Scores are 1/0 correctness for short-answer questions (bools are accepted and stored as 1.0/0.0) and
a graded score such as token F1 for captions (the proposal's "QA accuracy (0/1) or normalized caption
metric"), so a caption that audio improves counts as improved.

A row cannot be both ``needs_audio`` and ``is_vl`` (a VL-only question does not need audio); a
row may be neither (an audio-visual question that the image alone answers).

:func:`evaluate_actions` scores any decision vector against the table (the PPO policy, its
distilled MLP and every baseline use it, so their numbers are comparable), :func:`cost_summary` says what
audio costs on it per row, and
:func:`make_synthetic_table` builds a table with a known optimal policy for tests and demos.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from os import PathLike
from pathlib import Path
from typing import Any

import torch

__all__ = ["OutcomeTable", "evaluate_actions", "oracle_gap", "cost_summary", "make_synthetic_table", "TABLE_FIELDS"]

_SCORE_FIELDS = ("correct_without", "correct_with")
_BOOL_FIELDS = ("needs_audio", "is_vl")
_FLOAT_FIELDS = ("cost_without_ms", "cost_with_ms", "confidence", "entropy")
_TOKEN_FIELDS = ("tokens_without", "tokens_with")
"""Optional columns (zeros when not given, and in tables saved before they existed)."""
TABLE_FIELDS = ("states",) + _SCORE_FIELDS + _BOOL_FIELDS + _FLOAT_FIELDS + _TOKEN_FIELDS
_FORMAT = "safe.policy.OutcomeTable/1"


def _as_tensor(name: str, value: Any) -> torch.Tensor:
    try:
        return torch.as_tensor(value).detach().cpu()
    except Exception as exc:  # numpy object arrays, ragged lists ...
        raise TypeError(f"{name} must be convertible to a tensor, got {type(value).__name__}: {exc}") from exc


def _as_bool(name: str, value: Any, n: int | None) -> torch.Tensor:
    t = _as_tensor(name, value)
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D (n,), got shape {tuple(t.shape)}")
    if n is not None and t.shape[0] != n:
        raise ValueError(f"{name} must have length n={n} (rows of states), got {t.shape[0]}")
    if t.dtype != torch.bool:
        # 0/1 integers or floats are accepted (they come out of numpy / pandas that way); any other
        # value means the column is not what the caller thinks it is.
        if t.is_complex() or not bool(((t == 0) | (t == 1)).all()):
            raise ValueError(f"{name} must be boolean (or 0/1), got values outside {{0, 1}}")
        t = t != 0
    return t.contiguous()


def _as_score(name: str, value: Any, n: int) -> torch.Tensor:
    t = _as_tensor(name, value)
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D (n,), got shape {tuple(t.shape)}")
    if t.shape[0] != n:
        raise ValueError(f"{name} must have length n={n} (rows of states), got {t.shape[0]}")
    if t.is_complex():
        raise ValueError(f"{name} must be real-valued, got dtype {t.dtype}")
    t = t.to(torch.float32)
    if not bool((torch.isfinite(t) & (t >= 0) & (t <= 1)).all()):
        raise ValueError(f"{name} must be a score in [0, 1] (or a bool), got values outside it")
    return t.contiguous()


def _as_float(name: str, value: Any, n: int, nonnegative: bool) -> torch.Tensor:
    t = _as_tensor(name, value)
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D (n,), got shape {tuple(t.shape)}")
    if t.shape[0] != n:
        raise ValueError(f"{name} must have length n={n} (rows of states), got {t.shape[0]}")
    if t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{name} must be real-valued, got dtype {t.dtype}")
    t = t.to(torch.float32)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite, got {int((~torch.isfinite(t)).sum())} non-finite value(s)")
    if nonnegative and bool((t < 0).any()):
        raise ValueError(f"{name} must be >= 0, got minimum {float(t.min())}")
    return t.contiguous()


@dataclass
class OutcomeTable:
    """Precomputed outcomes of both actions for ``n`` examples (see the module docstring).

    Construction converts every field to a CPU tensor (``states`` float32 (n, d); the four flags
    scores float32 (n,) in [0, 1]; the two flags bool (n,); costs, confidence and entropy float32 (n,)) and
    validates it: wrong shapes, lengths, scores outside [0, 1], non-0/1 flags, non-finite numbers, negative latencies, ``n == 0`` and rows flagged both
    ``needs_audio`` and ``is_vl`` raise ``ValueError`` naming the field. A valid table is
    therefore guaranteed aligned and finite.
    """

    states: torch.Tensor
    correct_without: torch.Tensor
    correct_with: torch.Tensor
    needs_audio: torch.Tensor
    is_vl: torch.Tensor
    cost_without_ms: torch.Tensor
    cost_with_ms: torch.Tensor
    confidence: torch.Tensor
    entropy: torch.Tensor
    tokens_without: torch.Tensor | None = None
    tokens_with: torch.Tensor | None = None

    def __post_init__(self) -> None:
        s = _as_tensor("states", self.states)
        if s.dim() != 2:
            raise ValueError(f"states must be 2-D (n, d), got shape {tuple(s.shape)}")
        if s.shape[0] == 0 or s.shape[1] == 0:
            raise ValueError(f"states must have at least one row and one feature, got shape {tuple(s.shape)}")
        if s.is_complex() or s.dtype == torch.bool:
            raise ValueError(f"states must be real-valued, got dtype {s.dtype}")
        s = s.to(torch.float32)
        if not bool(torch.isfinite(s).all()):
            raise ValueError("states must be finite, got NaN or inf")
        self.states = s.contiguous()
        n = s.shape[0]
        for name in _SCORE_FIELDS:
            setattr(self, name, _as_score(name, getattr(self, name), n))
        for name in _BOOL_FIELDS:
            setattr(self, name, _as_bool(name, getattr(self, name), n))
        for name in _FLOAT_FIELDS:
            setattr(self, name, _as_float(name, getattr(self, name), n, nonnegative=name.startswith("cost_")))
        for name in _TOKEN_FIELDS:
            value = getattr(self, name)
            setattr(self, name, torch.zeros(n) if value is None else _as_float(name, value, n, nonnegative=True))
        both = self.needs_audio & self.is_vl
        if bool(both.any()):
            raise ValueError(f"needs_audio and is_vl are both set on {int(both.sum())} row(s) "
                             f"(first index {int(both.nonzero()[0])}); a VL-only question cannot need audio")

    # ----------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.states.shape[0])

    @property
    def state_dim(self) -> int:
        """``d``, the width of :attr:`states`."""
        return int(self.states.shape[1])

    def oracle_use(self) -> torch.Tensor:
        """The oracle's decisions, bool (n,): audio exactly where it raises the score
        (``correct_with > correct_without``); see :func:`safe.policy.baselines.oracle`."""
        return self.correct_with > self.correct_without

    def subset(self, idx: Any) -> OutcomeTable:
        """The rows ``idx`` (int indices, a bool mask of length n, or a slice) as a new table.

        Index tensors are validated (range, mask length) and an empty selection is an error, since
        a table has at least one row.
        """
        n = len(self)
        if isinstance(idx, slice):
            sel: Any = idx
        else:
            t = _as_tensor("idx", idx)
            if t.dtype == torch.bool:
                if t.dim() != 1 or t.shape[0] != n:
                    raise ValueError(f"idx as a bool mask must have shape ({n},), got {tuple(t.shape)}")
            else:
                if t.is_floating_point() or t.is_complex():
                    raise ValueError(f"idx must hold integer indices or a bool mask, got dtype {t.dtype}")
                t = t.reshape(-1).long()
                if t.numel() and (int(t.min()) < -n or int(t.max()) >= n):
                    raise ValueError(f"idx must be in [-{n}, {n}), got range [{int(t.min())}, {int(t.max())}]")
            sel = t
        return OutcomeTable(**{f.name: getattr(self, f.name)[sel] for f in fields(self)})

    def to_dict(self) -> dict[str, torch.Tensor]:
        """Field name -> tensor (the table's own tensors, not copies)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def save(self, path: str | PathLike[str]) -> Path:
        """Write the table as one safetensors file (all fields, plus a format tag); returns the path."""
        from safetensors.torch import save_file

        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        save_file(self.to_dict(), str(p), metadata={"format": _FORMAT})
        return p

    @classmethod
    def load(cls, path: str | PathLike[str]) -> OutcomeTable:
        """Read a table written by :meth:`save` (re-validated on construction)."""
        from safetensors import safe_open

        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"path {str(p)!r} is not a file")
        with safe_open(str(p), framework="pt") as f:
            fmt = (f.metadata() or {}).get("format")
            if fmt != _FORMAT:
                raise ValueError(f"path {str(p)!r} is not an OutcomeTable file (format tag {fmt!r}, expected {_FORMAT!r})")
            keys = set(f.keys())
            missing = sorted(set(TABLE_FIELDS) - set(_TOKEN_FIELDS) - keys)
            if missing:
                raise ValueError(f"path {str(p)!r} is missing field(s) {missing}")
            return cls(**{k: f.get_tensor(k) for k in TABLE_FIELDS if k in keys})


# --------------------------------------------------------------------------------------------
# scoring
# --------------------------------------------------------------------------------------------
def _mean(x: torch.Tensor) -> float:
    """Mean of a bool/float vector as a Python float; NaN for an empty vector (not an error, so a
    table without VL rows still gets its other numbers)."""
    return float(x.float().mean()) if x.numel() else math.nan


def _score(table: OutcomeTable, use: torch.Tensor) -> dict[str, float]:
    correct = torch.where(use, table.correct_with, table.correct_without)
    cost = torch.where(use, table.cost_with_ms, table.cost_without_ms)
    base_cost = float(table.cost_without_ms.double().mean())
    mean_cost = float(cost.double().mean())
    return {
        "mean_tokens": float(torch.where(use, table.tokens_with, table.tokens_without).double().mean()),
        "accuracy": _mean(correct),
        "vl_accuracy": _mean(correct[table.is_vl]),
        "audio_accuracy": _mean(correct[table.needs_audio]),
        "use_rate": _mean(use),
        "mean_latency_ms": mean_cost,
        "latency_ratio_to_base": mean_cost / base_cost if base_cost > 0 else math.nan,
        "false_positive_rate": _mean(use[table.is_vl]),
    }


def _check_actions(table: OutcomeTable, use_audio: Any, name: str = "use_audio") -> torch.Tensor:
    return _as_bool(name, use_audio, len(table))


def evaluate_actions(table: OutcomeTable, use_audio: Any) -> dict[str, float]:
    """Score the decisions ``use_audio`` ((n,) bool, True = consult audio) on ``table``.

    Returns plain floats:

    * ``accuracy``: mean correctness of the action taken (``correct_with`` where audio is used,
      ``correct_without`` elsewhere);
    * ``vl_accuracy``: the same over ``is_vl`` rows (NaN if none) — the retention number;
    * ``audio_accuracy``: the same over ``needs_audio`` rows (NaN if none);
    * ``use_rate``: fraction of rows that consult audio;
    * ``mean_latency_ms``: mean measured latency of the action taken;
    * ``latency_ratio_to_base``: ``mean_latency_ms / mean(cost_without_ms)`` (1.0 = never-audio
      cost; NaN if the base cost is 0);
    * ``false_positive_rate``: fraction of ``is_vl`` rows that consult audio (NaN if none);
    * ``mean_tokens``: mean language-model tokens of the action taken (0 for a table without token counts);

    then the same eight numbers for the oracle (audio exactly where it raises the score, see :func:`safe.policy.baselines.oracle`) under ``oracle_<name>``, and the
    never-audio reference ``base_accuracy`` / ``base_vl_accuracy`` (the retention floor's anchor).
    """
    use = _check_actions(table, use_audio)
    out = _score(table, use)
    oracle_use = table.oracle_use()
    out.update({f"oracle_{k}": v for k, v in _score(table, oracle_use).items()})
    out["base_accuracy"] = _mean(table.correct_without)
    out["base_vl_accuracy"] = _mean(table.correct_without[table.is_vl])
    return out


def oracle_gap(table: OutcomeTable, use_audio: Any) -> dict[str, Any]:
    """Where the decisions ``use_audio`` spend audio that the oracle does not, and where they miss it.

    The oracle uses audio exactly where ``correct_with > correct_without``. Rows the decisions use
    but the oracle skips fall in three kinds:

    * ``vl``: rows marked ``is_vl`` (questions that do not need audio);
    * ``base_as_good``: other rows whose VL-only answer already scores at least as high as with audio,
      and above 0 (a short answer the base guessed right; a caption whose F1 audio does not raise). A
      state computed without hearing the clip cannot tell these from rows audio fixes;
    * ``audio_no_help``: other rows that score 0 both ways (audio does not fix them).

    ``missed`` counts rows the oracle uses and the decisions skip; ``missed_score`` is the score they
    would have gained, summed (rows of accuracy; divide by ``n`` for a rate). Each count is also given
    in percentage points of the ``n`` rows (``*_points``), and these add up exactly:
    ``gap_points = vl_points + base_as_good_points + audio_no_help_points - missed_points`` = 100 x
    (use rate - oracle use rate). Returns plain ints and floats.
    """
    use = _check_actions(table, use_audio)
    n = len(table)
    oracle_use = table.oracle_use()
    extra = use & ~oracle_use
    kinds = {
        "vl": extra & table.is_vl,
        "base_as_good": extra & ~table.is_vl & (table.correct_without > 0),
        "audio_no_help": extra & ~table.is_vl & (table.correct_without <= 0),
    }
    missed = ~use & oracle_use
    out: dict[str, Any] = {k: int(v.sum()) for k, v in kinds.items()}
    out["missed"] = int(missed.sum())
    out["missed_score"] = float((table.correct_with - table.correct_without)[missed].double().sum())
    for k in (*kinds, "missed"):
        out[f"{k}_points"] = 100.0 * out[k] / n if n else math.nan
    out["gap_points"] = 100.0 * (int(use.sum()) - int(oracle_use.sum())) / n if n else math.nan
    out["rows"] = n
    return out


def cost_summary(table: OutcomeTable) -> dict[str, float]:
    """What audio costs on ``table``, per row: runtime (ms) and language-model tokens without and with audio
    (means), audio's extra (``max(0, with - without)``) as a mean and its 5th / 95th percentiles, and
    ``runtime_rows_distinct``: how many distinct extra-runtime values the rows hold (1 = one price for all)."""
    out: dict[str, float] = {}
    for name, without, with_ in (("runtime_ms", table.cost_without_ms, table.cost_with_ms),
                                 ("tokens", table.tokens_without, table.tokens_with)):
        extra = (with_ - without).clamp_min(0).double()
        q = torch.quantile(extra, torch.tensor([0.05, 0.95], dtype=torch.float64)).tolist()
        out.update({f"{name}_without": float(without.double().mean()), f"{name}_with": float(with_.double().mean()),
                    f"{name}_extra": float(extra.mean()), f"{name}_extra_p5": q[0], f"{name}_extra_p95": q[1]})
    out["runtime_rows_distinct"] = int(torch.unique(table.cost_with_ms - table.cost_without_ms).numel())
    return out


# --------------------------------------------------------------------------------------------
# synthetic table
# --------------------------------------------------------------------------------------------
def make_synthetic_table(n: int = 3000, state_dim: int = 8, seed: int = 0, audio_fraction: float = 0.5,
                         base_vl_accuracy: float = 0.8, base_ms: float = 100.0, extra_ms: float = 40.0,
                         noise_ms: float = 5.0) -> OutcomeTable:
    """A table whose optimal decision is known: audio helps exactly on rows with ``states[:, 0] > t``.

    ``states`` is standard normal (n, state_dim); ``t`` is the normal quantile that makes the
    expected fraction of audio rows ``audio_fraction`` (``t = 0`` for 0.5). Audio rows
    (``needs_audio``) are answered wrongly without audio and rightly with it; the other rows are
    VL-only (``is_vl``), right with probability ``base_vl_accuracy`` and unaffected by audio. So the
    oracle uses audio exactly on ``x0 > t`` and always-audio has the same accuracy as the oracle.
    Latency: ``cost_without = base_ms + noise``, ``cost_with = cost_without + extra_ms + noise``
    (noise ``N(0, noise_ms)``, clamped so costs stay positive) — audio costs time on every row.
    ``confidence`` is ``sigmoid(-x0 + N(0,1))`` and ``entropy`` its binary entropy, weak signals of
    the audio need, for the threshold baselines. Deterministic given ``seed``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    if isinstance(state_dim, bool) or not isinstance(state_dim, int) or state_dim < 1:
        raise ValueError(f"state_dim must be an integer >= 1, got {state_dim!r}")
    if not 0.0 < audio_fraction < 1.0:
        raise ValueError(f"audio_fraction must be in (0, 1), got {audio_fraction!r}")
    if not 0.0 <= base_vl_accuracy <= 1.0:
        raise ValueError(f"base_vl_accuracy must be in [0, 1], got {base_vl_accuracy!r}")
    if base_ms <= 0 or extra_ms < 0 or noise_ms < 0:
        raise ValueError(f"need base_ms > 0, extra_ms >= 0, noise_ms >= 0, got {base_ms!r}, {extra_ms!r}, {noise_ms!r}")
    g = torch.Generator().manual_seed(int(seed))
    states = torch.randn(n, state_dim, generator=g)
    threshold = float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(1.0 - audio_fraction)))
    needs = states[:, 0] > threshold
    vl_right = torch.rand(n, generator=g) < base_vl_accuracy
    correct_without = (~needs & vl_right).float()
    correct_with = (needs | vl_right).float()
    cost_without = (base_ms + noise_ms * torch.randn(n, generator=g)).clamp_min(0.1 * base_ms)
    cost_with = cost_without + (extra_ms + noise_ms * torch.randn(n, generator=g)).clamp_min(0.0)
    confidence = torch.sigmoid(-states[:, 0] + torch.randn(n, generator=g))
    p = confidence.clamp(1e-6, 1 - 1e-6)
    entropy = -(p * p.log() + (1 - p) * (1 - p).log())
    return OutcomeTable(states=states, correct_without=correct_without, correct_with=correct_with,
                        needs_audio=needs, is_vl=~needs, cost_without_ms=cost_without,
                        cost_with_ms=cost_with, confidence=confidence, entropy=entropy)
