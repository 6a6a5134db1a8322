"""The go / no-go gates between stages: Stage 1 (safety verification) must pass before Stage A trains, and
Stage 2 (the pilot: audio gain and VL loss after Stage A) must pass before Stage B trains.

Each gate is a plain dict ``{"gate", "target", "measured", "passed"}`` (the form of the evaluation's
``stage_gates``), so a run records why it stopped in ``metrics.json``. :func:`require` turns a failed gate
into :class:`GateFailed`, unless the caller asked to continue anyway (``--continue-on-gate-failure``).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

STAGE2_MIN_AUDIO_GAIN = 0.03
"""Stage 2: audio-dependent accuracy must rise by at least 3 points over the base."""
STAGE2_MAX_VL_LOSS = 0.005
"""Stage 2: VL accuracy (gate open, unrelated audio attached) may fall by less than 0.5 points."""

USE_RATE_TOLERANCE = 0.05
"""The per-modality policy target: the policy's use rate within 5 points of its modality's oracle (test split)."""
ACCURACY_TOLERANCE = 0.01
"""The per-modality policy target: the policy's accuracy within 1 point of always running its modality."""

CONTINUE_FLAG = "--continue-on-gate-failure"


class GateFailed(ValueError):
    """A stage gate failed and the run stopped before the next stage; the message names the gate, what it
    measured and the flag that continues anyway. (A ``ValueError``: the CLI prints it as one line and exits 2.)"""

    def __init__(self, gate: Mapping[str, Any]) -> None:
        self.gate = dict(gate)
        super().__init__(f"{gate['gate']} failed (target {gate['target']}, measured {gate['measured']}); "
                         f"the run stops here; pass {CONTINUE_FLAG} to go on anyway")


def stage1_gate(verify: Mapping[str, Any] | None) -> dict[str, Any]:
    """Stage 1 from a ``verify`` record (``{"passed", "models": {pair: {"passed", "checks"}}}``): every
    verified pair passed every check (bit-exact bypass, frozen weights, only SAFE's parameters train)."""
    models = dict((verify or {}).get("models") or {})
    failed = sorted(name for name, m in models.items() if not m.get("passed"))
    checks = sum(len(m.get("checks", ())) for m in models.values())
    passed = bool(models) and not failed and bool((verify or {}).get("passed"))
    measured = (f"{len(models)} model pair(s), {checks} checks, all passed" if passed else
                "no verification recorded" if not models else
                f"{len(failed)} of {len(models)} pair(s) failed: {', '.join(failed[:3])}")
    return {"gate": "Stage 1 gate: safety verification", "target": "every check passes (bit-exact bypass, "
            "frozen weights, only SAFE's parameters train)", "measured": measured, "passed": passed}


def stage2_gate(stage_a: Mapping[str, Any], modality: str = "audio") -> dict[str, Any]:
    """Stage 2 from Stage A's test-split figures: audio-dependent accuracy gain over the base >= 3 points and
    VL accuracy with the gate open (unrelated audio attached) less than 0.5 points below the base's. The
    gate-open figure is the strict one: with the gate closed SAFE is the base, so its loss is 0 by construction.
    ``modality``: the same for a run of another modality (its figures ``<modality>_accuracy``, ...)."""
    m = modality
    gain = float(stage_a[f"{m}_accuracy"]) - float(stage_a[f"{m}_accuracy_base"])
    loss = float(stage_a["vl_accuracy_base"]) - float(stage_a["vl_accuracy_gate_open"])
    passed = gain >= STAGE2_MIN_AUDIO_GAIN - 1e-12 and loss < STAGE2_MAX_VL_LOSS
    return {"gate": f"Stage 2 gate: {m} gain with VL retained",
            "target": f">= {100 * STAGE2_MIN_AUDIO_GAIN:g} points {m} gain, < {100 * STAGE2_MAX_VL_LOSS:g} "
                      "points VL loss (gate open)",
            "measured": f"{m} gain {100 * gain:+.1f} points, VL loss {100 * loss:.2f} points",
            "passed": passed, "audio_gain": round(gain, 6), "vl_loss": round(loss, 6)}


def require(gate: Mapping[str, Any], continue_anyway: bool) -> bool:
    """Whether ``gate`` passed; a failed gate raises :class:`GateFailed` unless ``continue_anyway``."""
    if gate["passed"]:
        return True
    if not continue_anyway:
        raise GateFailed(gate)
    return False
