"""What several stages share: the options naming a run, its data and its base models, and how those
resolve to objects (the built-in benchmark and base models as defaults under ``$SAFE_CACHE``)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

DType = Literal["float32", "bfloat16", "float16"]


class StageError(ValueError):
    """A stage cannot start with the options given; the message names the option and the value."""


def cache_dir() -> Path:
    """``$SAFE_CACHE`` (default ``.cache/safe``): the built-in benchmark and base models live here."""
    return Path(os.environ.get("SAFE_CACHE", ".cache/safe"))


def config_path(path: str) -> str:
    """A recipe path as given, else relative to the source checkout (``safe`` run outside the repo root)."""
    if Path(path).exists():
        return path
    repo = Path(__file__).resolve().parents[3] / path
    return str(repo) if repo.exists() else path


def check_device(device: str) -> None:
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise StageError(f"--device {device!r} is not a torch device ({err})") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise StageError(f"--device {device!r}: this torch build or machine has no CUDA device")


@dataclass
class RunOptions:
    """The run directory a stage reads and writes."""

    run_dir: str = "runs/demo"
    """Run directory: checkpoints/, logs/, metrics.json and report.html."""


@dataclass
class LoadOptions:
    """How a stage loads the frozen base (:func:`load_options` turns these into ``load_frozen``'s keywords)."""

    attn_implementation: str | None = None
    """Attention implementation of the base (sdpa or eager; default: the class default)."""
    device_map: str | None = None
    """Spread a base checkpoint over the visible devices (auto, balanced or sequential) instead of one device."""


@dataclass
class DataOptions(RunOptions, LoadOptions):
    """A run plus its data and frozen base models."""

    data: str | None = None
    """Data spec YAML file naming each split's datasets (readers vqav2, gqa, avqa, music_avqa, audiocaps, clotho,
    vggsound, builtin; see docs/data.md and `safe data check`), or a built-in benchmark folder (default
    $SAFE_CACHE/benchmark, SAFE_CACHE=.cache/safe)."""
    base: str | None = None
    """Built-in base models folder from `safe base build` (default $SAFE_CACHE/base), or a local LLaVA / BLIP-2
    checkpoint directory (then --audio names the audio encoder)."""
    audio: str | None = None
    """Local CLAP / Whisper checkpoint directory (required when --base is a checkpoint; default: the built-in
    folder's own encoder)."""


def load_options(cfg: LoadOptions) -> dict:
    """``cfg``'s loading options (``--attn-implementation``, ``--device-map``) as keywords for
    :func:`safe.inference.loading.load_frozen`: only those given; a bad value is a :class:`StageError` naming
    the flag."""
    from safe.models.loading import ATTN_IMPLEMENTATIONS, DEVICE_MAPS

    if cfg.attn_implementation not in (None, *ATTN_IMPLEMENTATIONS):
        raise StageError(f"--attn-implementation must be {' or '.join(ATTN_IMPLEMENTATIONS)}, "
                         f"got {cfg.attn_implementation!r}")
    if cfg.device_map not in (None, *DEVICE_MAPS):
        raise StageError(f"--device-map must be {', '.join(DEVICE_MAPS[:-1])} or {DEVICE_MAPS[-1]}, "
                         f"got {cfg.device_map!r}")
    return {k: v for k, v in (("attn_implementation", cfg.attn_implementation), ("device_map", cfg.device_map))
            if v is not None}


def data_source(data: str | None, *, tiny: bool = False, create: bool = False):
    """The :class:`~safe.data.source.DataSource` of ``--data``: a data spec file (``.yaml`` / ``.yml``, or any
    file) is a :class:`~safe.data.spec_source.SpecSource`; a folder given is used as it is (it must be a
    complete built-in benchmark); the default location is generated when ``create`` and missing."""
    from safe.bench.files import BuiltinSource, generate_benchmark, load_benchmark_info
    from safe.bench.questions import SynthConfig

    if data is not None and (is_spec(data) or Path(data).is_file()):
        from safe.data.spec_source import SpecSource

        return SpecSource(data)  # SpecError (a ValueError) names the field and value
    if data is not None:
        load_benchmark_info(data)  # raises BenchmarkMissingError naming what is wrong
        return BuiltinSource(Path(data))
    path = cache_dir() / ("benchmark-tiny" if tiny else "benchmark")
    if create:
        generate_benchmark(path, SynthConfig.tiny() if tiny else SynthConfig(), progress=True)
    else:
        load_benchmark_info(path)
    return BuiltinSource(path)


def is_spec(data: str | None) -> bool:
    """Whether ``--data`` names a data spec file rather than a built-in benchmark folder."""
    from safe.data.spec import is_spec_file

    return data is not None and is_spec_file(data)


def base_path(base: str | None, *, tiny: bool = False) -> Path:
    """``--base`` as a path; the built-in default folder when not given."""
    return Path(base) if base else cache_dir() / ("base-tiny" if tiny else "base")


class StageLog:
    """What a demo keeps while it runs its stages in turn: each result's summary is printed through
    ``echo``, ``ok`` stays True only while every result's own check passed, and ``timing`` holds the
    seconds since the start at each mark (the ``timing`` figures of ``metrics.json``)."""

    def __init__(self, echo=print) -> None:
        import time

        self.echo, self._clock = echo, time.perf_counter
        self.t0, self.ok = self._clock(), True
        self.timing: dict[str, float] = {}

    def elapsed(self) -> float:
        return round(self._clock() - self.t0, 1)

    def mark(self, name: str) -> None:
        self.timing[name] = self.elapsed()

    def __call__(self, result, mark: str | None = None):
        """Record ``result`` (a :class:`~safe.runs.StageResult`) and return it."""
        self.ok &= result.ok
        self.echo(result.summary())
        if mark:
            self.mark(mark)
        return result



def check_gate(run_dir, gate: dict, continue_anyway: bool) -> bool:
    """Record ``gate`` under ``metrics.json``'s ``gates`` (by its name) in ``run_dir`` and return whether it
    passed; a failed gate raises :class:`~safe.evaluation.gates.GateFailed` (naming it) unless
    ``continue_anyway`` (``--continue-on-gate-failure``), when the record says the run went on anyway."""
    from safe.evaluation.gates import require
    from safe.runs import RunDir

    run = RunDir(run_dir)
    gates = dict(run.metrics().get("gates") or {})
    gates[gate["gate"]] = {**gate, "continued_anyway": bool(continue_anyway and not gate["passed"])}
    run.record("gates", gates)
    return require(gate, continue_anyway)
