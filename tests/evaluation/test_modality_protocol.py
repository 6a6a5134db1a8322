"""The evaluation protocol of another modality (safe eval on a `safe train --modality depth` run): its figures from
known answers on a small set, checked by hand: retention on the VL rows, gains on the modality's rows, the oracle
(the map used exactly where it turns a wrong answer right), the policy's use rates and false positives, the cost
per query priced by row kind, and the five stage gates."""
from types import SimpleNamespace

import pytest
import torch

from safe.data.modality_rows import WITH_MAP, WITHOUT_MAP
from safe.data.records import Example
from safe.evaluation.modality_protocol import summarise


def _ex(i: int, needs: bool) -> Example:
    return Example(id=str(i), task="t", family="nearest" if needs else "colour", question="q", answers=("yes",),
                   needs_audio=needs)


def _data(needs: list[bool]):
    return SimpleNamespace(examples=[_ex(i, n) for i, n in enumerate(needs)], needs_audio=torch.tensor(needs))


# rows 0-3 name a depth map, rows 4-7 are VL rows carrying another row's map
NEEDS = [True] * 4 + [False] * 8
Y, N = "yes", "no"
ANSWERS = {
    "base":        [N, Y, N, N] + [Y] * 8,             # the depth-blind base: one depth question right by luck
    "gate_closed": [N, Y, N, N] + [Y] * 8,
    "gate_open":   [Y, Y, Y, N] + [Y] * 7 + [N],       # depth fixes rows 0 and 2; the open gate moves one VL answer
    "policy":      [Y, Y, N, N] + [Y] * 8,
}
USED = torch.tensor([True, True, False, True] + [False] * 7 + [True])
COSTS = {WITH_MAP: {"without_audio": 1.0, "with_audio": 3.0}, WITHOUT_MAP: {"without_audio": 2.0, "with_audio": 2.5}}


def test_the_figures_of_a_known_set():
    ev = summarise("depth", _data(NEEDS), ANSWERS, USED, COSTS)
    r, g, p = ev["retention"], ev["gains"], ev["policy"]
    assert r["n"] == 8 and r["vl_accuracy"]["base"] == 1.0 and r["vl_accuracy"]["gate_open"] == 7 / 8
    assert r["answers_changed"] == {"gate_closed": 0, "gate_open": 1, "policy": 0}
    assert r["answers_identical_gate_closed"] == {"identical": 12, "n": 12}
    assert g["n"] == 4 and g["accuracy"]["base"]["mean"] == 0.25 and g["accuracy"]["safe"]["mean"] == 0.75
    assert g["accuracy"]["policy"]["mean"] == 0.5 and g["safe_minus_base"]["mean"] == 0.5
    assert g["accuracy"]["safe"]["ci_low"] <= 0.75 <= g["accuracy"]["safe"]["ci_high"]
    assert g["per_family"] == {"nearest": {"base": 0.25, "safe": 0.75, "policy": 0.5}}
    # the oracle uses depth on rows 0 and 2 only (row 11's open answer is worse, row 1 is right without it)
    assert p["oracle"] == {"use_rate": 2 / 12, "accuracy": 11 / 12}
    assert p["policy"]["use_rate"] == 4 / 12 and p["policy"]["use_rate_own_rows"] == 3 / 4
    assert p["policy"]["use_rate_vl_rows"] == 1 / 8 and p["policy"]["accuracy"] == 10 / 12
    assert p["always"] == {"use_rate": 1.0, "accuracy": 10 / 12} and p["never"] == {"use_rate": 0.0, "accuracy": 9 / 12}
    assert ev["irrelevance"] == {"n": 8, "false_positive_rate": 1 / 8, "answers_changed_gate_open": 1}
    ms = ev["efficiency"]["ms_per_query"]
    assert ms["never"] == pytest.approx((4 * 1.0 + 8 * 2.0) / 12)
    assert ms["always"] == pytest.approx((4 * 3.0 + 8 * 2.5) / 12)
    assert ms["policy"] == pytest.approx((3 * 3.0 + 1.0 + 2.5 + 7 * 2.0) / 12)
    assert ev["efficiency"]["ratio_to_base"]["never"] == 1.0


def test_the_stage_gates_pass_and_fail_on_their_figures():
    gates = {g["gate"]: g for g in summarise("depth", _data(NEEDS), ANSWERS, USED)["stage_gates"]}
    assert [g.split(" (")[0] for g in gates] == [
        "gate closed: answers identical to the base", "VL retention with the gate open", "depth gain",
        "depth policy use rate", "depth policy accuracy"]
    closed, retention, gain, use, acc = gates.values()
    assert closed["passed"] and closed["measured"] == "12 of 12"
    assert not retention["passed"] and retention["measured"] == "12.50 points"  # one of 8 VL answers lost
    assert gain["passed"] and gain["measured"] == "+50.0 points"
    assert not use["passed"]  # 0.333 against the oracle's 0.167
    assert acc["passed"]  # 10 of 12 against always-on's 10 of 12
    # a closed path that moved one answer fails its gate; a policy that matches the oracle passes the use-rate gate
    moved = {**ANSWERS, "gate_closed": [Y] + ANSWERS["gate_closed"][1:]}
    oracle_like = torch.tensor([True, False, True] + [False] * 9)
    gates = {g["gate"]: g for g in summarise("depth", _data(NEEDS), moved, oracle_like)["stage_gates"]}
    assert not gates["gate closed: answers identical to the base"]["passed"]
    assert gates["depth policy use rate"]["passed"]
    assert "efficiency" not in summarise("depth", _data(NEEDS), ANSWERS, USED)  # no measured costs given
