"""The run directory every pipeline command writes: ``metrics.json`` (one key per stage), logs, checkpoints."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


class RunDir:
    """``runs/<name>/`` with an atomically updated ``metrics.json``.

    Guarantees: each :meth:`record` rewrites ``metrics.json`` through a temporary file and a rename,
    so a crash leaves either the old or the new file, never a truncated one; stages recorded earlier
    are kept.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "checkpoints").mkdir(exist_ok=True)
        (self.path / "logs").mkdir(exist_ok=True)

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.json"

    def metrics(self) -> dict[str, Any]:
        return json.loads(self.metrics_file.read_text()) if self.metrics_file.is_file() else {}

    def record(self, stage: str, values: dict[str, Any]) -> None:
        data = self.metrics()
        data[stage] = values
        with tempfile.NamedTemporaryFile("w", dir=self.path, suffix=".tmp", delete=False) as f:
            json.dump(data, f, indent=2, sort_keys=True)
            tmp = f.name
        os.replace(tmp, self.metrics_file)
