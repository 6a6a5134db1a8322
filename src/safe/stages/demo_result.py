"""What ``safe demo`` returns for every track (``metrics.json`` key ``timing``), and the result of a demo that a
go / no-go gate stopped; apart from :mod:`safe.stages.demo` so a track's own module can return them too."""
from __future__ import annotations

from dataclasses import dataclass

from safe.runs import RunDir, StageResult
from safe.stages.common import StageLog


@dataclass
class DemoResult(StageResult):
    """Whether every stage's own check passed, and where the report is (``metrics.json`` key ``timing``
    holds the times)."""

    KEY = "timing"
    passed: bool = True
    run_dir: str = ""

    @property
    def ok(self) -> bool:
        return self.passed

    def summary(self) -> str:
        if self.metrics.get("stopped_at_gate"):
            return (f"demo stopped after {self.metrics['seconds']:.0f} s at the {self.metrics['stopped_at_gate']}: "
                    f"{self.metrics['gate_message']}; metrics under {self.run_dir}")
        if self.metrics.get("stopped_after"):
            return (f"demo stopped after {self.metrics['stopped_after']} ({self.metrics['seconds']:.0f} s, as asked); "
                    f"metrics under {self.run_dir}")
        return f"demo finished in {self.metrics['seconds']:.0f} s; metrics and report under {self.run_dir}"


def stopped(run_dir: str, step: StageLog, failure, echo=print) -> DemoResult:
    """The demo's result when a go / no-go gate stopped it (``failure``: a
    :class:`~safe.evaluation.gates.GateFailed`): recorded, printed, not ok (the command exits 1)."""
    result = DemoResult({**step.timing, "seconds": step.elapsed(), "stopped_at_gate": failure.gate["gate"],
                         "gate_message": str(failure)}, False, run_dir)
    RunDir(run_dir).record(result)
    return result
