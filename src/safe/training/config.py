"""Stage A configuration: dataclasses loaded from YAML, every field validated with an error that
names the field and the value. The recipes SAFE ships (``recipes/*.yaml``, installed with the package) are
found by file name through :mod:`importlib.resources`, so they work outside the source checkout."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safe.data.yaml_bounded import load_yaml
from safe.models.safe_model import SAFEConfig

MIXED_PRECISION = ("no", "bf16", "fp16")
RETENTION_TAU = 0.003
"""The retention tolerance: VL accuracy may fall at most this far below the base's (0.3 points). Stage A's dual
ascent floor and Stage B's Lagrangian floor both default to it."""


class ConfigError(ValueError):
    """A config file or override has an unknown field or a bad value; the message names it."""


CURRICULUM_ORDERS = ("base_loss", "family", "none")


@dataclass
class CurriculumConfig:
    """Gradual audio exposure: the fraction of the audio-dependent pool available, easy -> hard (25% -> 100%
    by default), the order measured before training."""

    start: float = 0.25
    """Fraction of the audio pool available at step 0."""
    end: float = 1.0
    """Fraction available once the ramp is over."""
    ramp_fraction: float = 0.5
    """Share of the schedule over which exposure rises linearly from start to end."""
    order: str = "base_loss"
    """How the audio rows are ordered easy -> hard: base_loss (measured: each row's answer cross-entropy under
    the frozen base, per answer token, before training; works on any reader's rows), family (by family_order),
    or none (data order)."""
    family_order: list[str] = field(default_factory=list)
    """With order: family, the families from easiest to hardest; unknown families come last."""


@dataclass
class StageAConfig:
    """Stage A: supervised warm-start of projector + adapters (the proposal's Stage A, docs/design.md)."""

    steps: int = 500
    """Optimiser steps."""
    batch_size: int = 32
    """Examples per optimiser step (split over gradient-accumulation micro-batches)."""
    grad_accum: int = 1
    """Micro-batches per optimiser step."""
    audio_share: float = 0.5
    """Share of audio-dependent examples in every batch (the rest: VL-only with unrelated audio)."""
    lr_projector: float = 1e-4
    """AdamW learning rate of the projector (proposal default)."""
    lr_adapters: float = 5e-5
    """AdamW learning rate of the cross-attention adapters (proposal default)."""
    lr_gates: float | None = None
    """Learning rate of the gate scalars; default lr_adapters."""
    weight_decay: float = 0.01
    """AdamW weight decay (not applied to gates, norms and biases)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    warmup_steps: int = 25
    """Linear warm-up before the cosine decay."""
    grad_clip: float = 1.0
    """Gradient-norm clipping."""
    lambda_retention: float = 1.0
    """Initial weight of the retention KL (raised by dual ascent below the floor)."""
    lambda_fisher: float = 0.0
    """Weight of the Fisher (EWC) penalty on the trainable parameters (0: off)."""
    fisher_warmup: int = 100
    """Step of the first diagonal-Fisher estimate: at initialisation only the gates have a gradient, so the
    estimate waits until they have opened."""
    fisher_every: int = 100
    """Refresh the Fisher estimate every N steps after the first (0: estimate once)."""
    fisher_examples: int = 64
    """Retention rows per Fisher estimate (one backward pass each: the per-row squared gradients)."""
    fisher_decay: float = 0.5
    """Weight of the previous estimate when refreshing (exponential moving average; 0: replace it)."""
    retention_every: int = 100
    """Measure VL accuracy (gate open) on the retention buffer every N steps (0: never)."""
    retention_tau: float = RETENTION_TAU
    """The floor is base accuracy minus tau (proposal: 0.3 points)."""
    dual_lr: float = 20.0
    """Dual-ascent step: lambda += dual_lr * (floor - accuracy)."""
    retention_examples: int = 300
    """Examples of the retention buffer used per measurement."""
    text_retention: str | None = None
    """A JSON Lines file of text-only prompts (``{"prompt": ...}`` per line, no image; a relative path is read from
    the data folder): each step also pulls SAFE's answer distribution (gate open, an unrelated clip) onto the base's
    own greedy answer on ``text_retention_rows`` of them, with the retention KL's weight. Null: VL rows only."""
    text_retention_rows: int = 4
    """Text-only prompts per micro-batch (with text_retention)."""
    text_retention_weight: float = 1.0
    """Their KL's weight relative to the VL rows' (both multiplied by the dual-ascent lambda)."""
    text_answer_tokens: int = 8
    """Longest reference answer the base generates for a text-only prompt (tokens; the stop token ends it)."""
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    """Audio exposure schedule."""
    answer_logits_only: bool = False
    """Compute the language model head only at the answer positions (``logits_to_keep``; decoder-only bases whose
    prompts are left-padded, so every answer ends the row). The losses are the same; a large vocabulary's head
    over every position can cost more than the layers (Gemma 3: 262,144 words). Off: every position's logits."""
    mixed_precision: str = "no"
    """``no``, ``bf16`` or ``fp16`` (Accelerate autocast where the device has it)."""
    checkpoint_every: int = 100
    """Write a resumable checkpoint every N steps (0: only at the end)."""
    log_every: int = 10
    """TensorBoard scalars every N steps."""
    seed: int = 0
    """Seed of initialisation and data order."""
    safe: dict[str, Any] = field(default_factory=dict, metadata={"fields": SAFEConfig})
    """SAFE's architecture (SAFEConfig fields: fusion_layers, num_audio_tokens, lora_rank, ...)."""

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        if isinstance(self.curriculum, dict):
            self.curriculum = _build(CurriculumConfig, self.curriculum, "curriculum.")
        positive = ("steps", "batch_size", "grad_accum", "retention_examples", "fisher_examples",
                    "text_retention_rows", "text_answer_tokens")
        for name in positive:
            _check(isinstance(getattr(self, name), int) and getattr(self, name) >= 1, name, getattr(self, name),
                   "a positive integer")
        for name in ("warmup_steps", "fisher_warmup", "fisher_every", "retention_every", "checkpoint_every", "log_every", "seed"):
            _check(isinstance(getattr(self, name), int) and getattr(self, name) >= 0, name, getattr(self, name),
                   "an integer >= 0")
        for name in ("lr_projector", "lr_adapters", "grad_clip", "dual_lr"):
            _check(_num(getattr(self, name)) and getattr(self, name) > 0, name, getattr(self, name), "a number > 0")
        _check(self.lr_gates is None or (_num(self.lr_gates) and self.lr_gates > 0), "lr_gates", self.lr_gates,
               "a number > 0 or null")
        _check(self.text_retention is None or (isinstance(self.text_retention, str) and self.text_retention.strip() != ""),
               "text_retention", self.text_retention, "a file path or null")
        for name in ("weight_decay", "lambda_retention", "lambda_fisher", "retention_tau", "text_retention_weight"):
            _check(_num(getattr(self, name)) and getattr(self, name) >= 0, name, getattr(self, name), "a number >= 0")
        _check(_num(self.fisher_decay) and 0 <= self.fisher_decay < 1, "fisher_decay", self.fisher_decay,
               "a number in [0, 1)")
        _check(_num(self.audio_share) and 0 < self.audio_share < 1, "audio_share", self.audio_share,
               "a number strictly between 0 and 1")
        _check(self.warmup_steps < self.steps, "warmup_steps", self.warmup_steps, f"fewer than steps={self.steps}")
        _check(self.batch_size % self.grad_accum == 0, "batch_size", self.batch_size,
               f"divisible by grad_accum={self.grad_accum}")
        _check(self.mixed_precision in MIXED_PRECISION, "mixed_precision", self.mixed_precision,
               f"one of {MIXED_PRECISION}")
        _check(len(self.betas) == 2 and all(_num(b) and 0 <= b < 1 for b in self.betas), "betas", self.betas,
               "two numbers in [0, 1)")
        c = self.curriculum
        for name in ("start", "end"):
            _check(_num(getattr(c, name)) and 0 < getattr(c, name) <= 1, f"curriculum.{name}", getattr(c, name),
                   "a number in (0, 1]")
        _check(c.start <= c.end, "curriculum.start", c.start, f"<= curriculum.end={c.end}")
        _check(c.order in CURRICULUM_ORDERS, "curriculum.order", c.order, f"one of {CURRICULUM_ORDERS}")
        _check(_num(c.ramp_fraction) and 0 <= c.ramp_fraction <= 1, "curriculum.ramp_fraction", c.ramp_fraction,
               "a number in [0, 1]")
        try:
            SAFEConfig.from_dict(self.safe)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"safe: {err}") from err

    def safe_config(self) -> SAFEConfig:
        return SAFEConfig.from_dict(self.safe)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check(ok: bool, name: str, value: Any, want: str) -> None:
    if not ok:
        raise ConfigError(f"{name}: expected {want}, got {value!r}")


def _build(cls, data: dict[str, Any], prefix: str = ""):
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown field(s) {', '.join(prefix + u for u in unknown)}; known: {sorted(known)}")
    return cls(**data)


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` (dotted keys for nesting; the value is parsed as YAML)."""
    import yaml

    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    key, value = text.split("=", 1)
    parsed = yaml.safe_load(value)
    if isinstance(parsed, str):
        try:  # YAML 1.1 reads "2e-3" as a string; on the command line it is a number
            parsed = float(parsed)
        except ValueError:
            pass
    return key.strip(), parsed


RECIPES = "recipes"  # the folder of shipped recipes inside this package


def shipped_recipes() -> list[str]:
    """File names of the recipes SAFE installs (``stage_a_builtin.yaml``, ...)."""
    from importlib.resources import files

    return sorted(r.name for r in (files(__package__) / RECIPES).iterdir() if r.name.endswith(".yaml"))


def read_recipe(path: str | Path) -> dict[str, Any]:
    """The top-level mapping of a YAML recipe: ``path`` as given, else, for a bare file name or
    ``configs/NAME`` (the source tree's folder, so ``configs/stage_a.yaml`` resolves anywhere), the shipped
    recipe of that name. Any other missing path is an error, never a shipped recipe standing in for a
    mistyped one. :class:`ConfigError` names the file."""
    from importlib.resources import files

    import yaml

    p = Path(path)
    if p.is_file():
        text = p.read_text()
    else:
        shipped = files(__package__) / RECIPES / p.name
        by_name = len(p.parts) == 1 or (len(p.parts) == 2 and p.parts[0] == "configs")
        if not by_name:
            raise ConfigError(f"config file not found: {path}")
        if not shipped.is_file():
            raise ConfigError(f"config file not found: {path} (and no shipped recipe of that name; shipped: "
                              f"{', '.join(shipped_recipes())})")
        text = shipped.read_text()
    try:
        raw = load_yaml(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return raw


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``data`` (a recipe mapping, changed in place and returned) with ``key=value`` overrides set."""
    for item in overrides:
        key, value = parse_override(item)
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return data


def load_stage_a_config(path: str | Path | None = None, overrides: list[str] | None = None,
                        base: StageAConfig | None = None) -> StageAConfig:
    """A :class:`StageAConfig` from a YAML recipe (the keys under ``stage_a:``, or the whole file; see
    :func:`read_recipe`), or from ``base``, with ``key=value`` overrides applied (the ablation grid's entries)."""
    if base is not None:
        data = base.to_dict()
    elif path is not None:
        raw = read_recipe(path)
        data = raw.get("stage_a", raw)
    else:
        data = {}
    apply_overrides(data, overrides or [])
    try:
        return _build(StageAConfig, data)
    except TypeError as err:
        raise ConfigError(str(err)) from err
