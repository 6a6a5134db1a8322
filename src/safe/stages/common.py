"""What several stages share: the options naming a run, its data and its base models, how those resolve
to objects (the built-in benchmark and base models as defaults under ``$SAFE_CACHE``), and the run's own
record of what it was trained on (``run.json``), which later stages read instead of asking again."""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from safe.data.source import cache_dir

DType = Literal["float32", "bfloat16", "float16"]


class StageError(ValueError):
    """A stage cannot start with the options given; the message names the option and the value."""


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
    vggsound, builtin; see docs/data.md and `safe data check`), or a built-in benchmark folder (default: what the
    run was trained on, else $SAFE_CACHE/benchmark; SAFE_CACHE defaults to .cache/safe)."""
    base: str | None = None
    """Frozen base: a built-in models folder from `safe base build`, or a local checkpoint directory of any of the
    14 supported VLM families (docs/models.md; then --audio names the audio encoder). Default: the base the run
    was trained on, else $SAFE_CACHE/base."""
    audio: str | None = None
    """Audio encoder: a local checkpoint directory of any of the 7 supported encoders (Whisper, CLAP, AST,
    wav2vec 2.0, HuBERT, WavLM, Qwen2-Audio; required when --base is a checkpoint). Default: the encoder the run
    was trained with, else the built-in folder's own."""


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


RUN_FILE = "run.json"


def _absolute(path: str | os.PathLike | None) -> str | None:
    return None if path is None else str(Path(path).absolute())


def record_run(run_dir: str | os.PathLike, *, base: str | os.PathLike, audio: str | os.PathLike | None,
               data: str | os.PathLike | None, data_fingerprint: str, recipe: dict[str, Any], **extra: Any) -> Path:
    """Write ``<run_dir>/run.json``: what ``safe train`` trained this run on (the base, the audio encoder, the
    data and its fingerprint, the Stage A recipe, ``extra``), paths made absolute so the record holds from any
    working directory. Written through a temporary file and a rename."""
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    record = {"base": _absolute(base), "audio": _absolute(audio), "data": _absolute(data),
              "data_fingerprint": data_fingerprint, "recipe": recipe, **extra}
    with tempfile.NamedTemporaryFile("w", dir=run, suffix=".tmp", delete=False) as f:
        json.dump(record, f, indent=2, sort_keys=True)
    os.replace(f.name, run / RUN_FILE)
    return run / RUN_FILE


def run_record(run_dir: str | os.PathLike | None) -> dict[str, Any] | None:
    """The ``run.json`` of a run directory, or None (no run directory, or one trained before the record)."""
    if run_dir is None or not (Path(run_dir) / RUN_FILE).is_file():
        return None
    return json.loads((Path(run_dir) / RUN_FILE).read_text())


def audio_runs_only(run_dir: str | os.PathLike | None, command: str) -> None:
    """Refuse, naming the command, a run that trained another modality (``safe train --modality``): ``command``
    measures audio."""
    rec = run_record(run_dir)
    name = (rec or {}).get("modality", "audio")
    if name != "audio":
        raise StageError(f"{command} measures the audio path; {run_dir} trained {name} (safe train --modality "
                         f"{name}): its figures are Stage A's (metrics.json stage_a), its policy's (safe policy "
                         f"train --run-dir {run_dir}) and safe eval's")


def _same(given: str | None, recorded: str | None) -> bool:
    if given is None or recorded is None:
        return given is None and recorded is None
    return Path(given).resolve() == Path(recorded).resolve()


def from_run(cfg, run_dir: str | os.PathLike | None = None, *, data: bool = True):
    """``cfg`` (any options with ``base`` / ``audio``, and ``data`` when ``data``) with what the run directory
    recorded at ``safe train`` filled in where not given. A value given that differs from the record is a
    :class:`StageError` naming the flag, both values and the record: a run's SAFE weights fit only the base and
    encoder they were trained with. Without a record ``cfg`` comes back unchanged."""
    run_dir = cfg.run_dir if run_dir is None else run_dir
    rec = run_record(run_dir)
    if rec is None:
        return cfg
    where = Path(run_dir) / RUN_FILE
    changes = {}
    if cfg.base is None:
        changes["base"] = rec["base"]
    elif not _same(cfg.base, rec["base"]):
        raise StageError(f"--base {cfg.base}: the run was trained on {rec['base']} ({where}); leave --base out or "
                         "use another --run-dir")
    if cfg.audio is None:
        changes["audio"] = rec["audio"]
    elif not _same(cfg.audio, rec["audio"]):
        trained = rec["audio"] or "the built-in folder's own encoder"
        raise StageError(f"--audio {cfg.audio}: the run was trained with {trained} ({where}); leave --audio out or "
                         "use another --run-dir")
    if data and cfg.data is None and rec.get("data") is not None:
        changes["data"] = rec["data"]
    return replace(cfg, **changes) if changes else cfg


def check_run_data(source, run_dir: str | os.PathLike | None, flag: str = "--data") -> None:
    """Refuse data whose fingerprint is not the one the run was trained on (its ``run.json``), naming both."""
    rec = run_record(run_dir)
    if rec is None or not rec.get("data_fingerprint"):
        return
    got = source.fingerprint()
    if got != rec["data_fingerprint"]:
        raise StageError(f"{flag}: this data (fingerprint {got}) is not what the run was trained on ({rec['data']}, "
                         f"fingerprint {rec['data_fingerprint']}; {Path(run_dir) / RUN_FILE}); leave {flag} out "
                         "or use another --run-dir")


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
