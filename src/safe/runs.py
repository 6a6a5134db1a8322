"""The run directory every pipeline command writes: ``metrics.json`` (one key per stage), logs, checkpoints,
and the typed results the stages hand to each other."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from safe.atomic import write_atomic

R = TypeVar("R", bound="StageResult")


@dataclass
class StageResult:
    """What one stage produced: its ``metrics`` (exactly what ``metrics.json`` holds under :attr:`KEY`).

    Subclasses name the stage's key and expose the figures the next stage needs as typed properties,
    so no caller digs in the dict by hand. ``to_dict()`` / ``from_dict()`` round-trip through
    ``metrics.json``."""

    KEY: ClassVar[str] = ""
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """False when the stage ran but its own check failed (the command then exits 1)."""
        return True

    def summary(self) -> str:
        """The human-readable lines the command prints."""
        return ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.metrics)

    @classmethod
    def from_dict(cls: type[R], data: dict[str, Any]) -> R:
        return cls(metrics=dict(data))


class RunDir:
    """``runs/<name>/`` with an atomically updated ``metrics.json``.

    Guarantees: nothing is created on disk until something is written (a command that fails on its
    arguments leaves no folder behind); each :meth:`record` rewrites ``metrics.json`` through a
    temporary file and a rename, so a crash leaves either the old or the new file, never a truncated
    one; stages recorded earlier are kept.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.json"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def metrics(self) -> dict[str, Any]:
        """The run's metrics.json ({} when absent); ``ValueError`` naming the file when it is not a JSON object."""
        if not self.metrics_file.is_file():
            return {}
        try:
            data = json.loads(self.metrics_file.read_text())
        except (UnicodeDecodeError, ValueError, RecursionError) as err:
            raise ValueError(f"{self.metrics_file}: not readable JSON ({type(err).__name__}: {err})"[:300]) from None
        if not isinstance(data, dict):
            raise ValueError(f"{self.metrics_file}: expected a JSON object of stage results, got a "
                             f"{type(data).__name__}")
        return data

    def record(self, stage: str | StageResult, values: dict[str, Any] | None = None) -> None:
        """Store ``values`` under ``stage``, or a :class:`StageResult` under its key."""
        if isinstance(stage, StageResult):
            stage, values = stage.KEY, stage.to_dict()
        data = self.metrics()
        data[stage] = values
        write_atomic(self.metrics_file, json.dumps(data, indent=2, sort_keys=True))

    def read(self, result_type: type[R]) -> R | None:
        """The recorded result of a stage, or None when that stage has not run in this directory."""
        data = self.metrics().get(result_type.KEY)
        return result_type.from_dict(data) if data else None
