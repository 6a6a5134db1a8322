"""Stage C: distil the PPO policy into a 2-layer MLP gate (the proposal's Stage C, docs/design.md).

The student (:class:`~safe.policy.network.GateMLP`) learns ``state -> teacher's deterministic
action`` by binary cross-entropy on a training part of the table; the report says how faithfully
(agreement on a held-out part) and at what cost (parameters, measured time per row), and scores
both gates on the held-out rows with :func:`~safe.policy.table.evaluate_actions`.
"""
from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from safe.policy.network import GateMLP, PolicyNetwork
from safe.policy.table import OutcomeTable, evaluate_actions
from safe.validation import int_arg, real_arg

__all__ = ["distill", "teacher_decisions", "time_per_row"]

Teacher = PolicyNetwork | Callable[[torch.Tensor], torch.Tensor]


def teacher_decisions(teacher: Teacher, states: torch.Tensor) -> torch.Tensor:
    """The teacher's deterministic decisions on ``states`` (n, d) as bool (n,).

    ``teacher`` is a :class:`PolicyNetwork` (its most likely action) or any callable returning a
    bool / 0-1 vector of length n (a heuristic gate, or a test's known rule).
    """
    if isinstance(teacher, PolicyNetwork):
        return teacher.decide(states)
    if not callable(teacher):
        raise TypeError(f"teacher must be a PolicyNetwork or a callable, got {type(teacher).__name__}")
    with torch.no_grad():
        out = torch.as_tensor(teacher(states)).reshape(-1)
    if out.shape[0] != states.shape[0]:
        raise ValueError(f"teacher returned {out.shape[0]} decisions for {states.shape[0]} states")
    if out.dtype != torch.bool:
        if not bool(((out == 0) | (out == 1)).all()):
            raise ValueError("teacher must return bool or 0/1 decisions")
        out = out != 0
    return out


def time_per_row(fn: Callable[[torch.Tensor], Any], states: torch.Tensor, repeats: int = 20) -> float:
    """Median over ``repeats`` of (wall time of ``fn(states)`` / rows), in seconds, single-threaded.

    Timed with ``time.perf_counter`` on the whole batch (per-row calls would measure Python
    overhead, not the gate), under ``torch.no_grad`` and with ``torch.set_num_threads(1)`` for the
    duration (restored afterwards), so numbers from machines with different core counts compare.
    One untimed warm-up call first.
    """
    repeats = int_arg("repeats", repeats, 1)
    n = states.shape[0]
    if n == 0:
        raise ValueError("states must have at least one row")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            fn(states)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn(states)
                times.append((time.perf_counter() - t0) / n)
    finally:
        torch.set_num_threads(threads)
    return statistics.median(times)


def distill(policy: Teacher, table: OutcomeTable, hidden: int = 32, epochs: int = 100, lr: float = 1e-2,
            seed: int = 0, holdout: float = 0.2, batch_size: int = 256, weight_decay: float = 0.0
            ) -> tuple[GateMLP, dict[str, Any]]:
    """Train a :class:`GateMLP` to copy ``policy``'s deterministic decisions; returns ``(gate, report)``.

    The table's rows are split at random (``seed``) into a held-out part (fraction ``holdout``, at
    least one row) and a training part; the student (input standardisation from the training
    states) is trained with Adam on BCE against the teacher's hard decisions for ``epochs`` passes
    over shuffled minibatches of ``batch_size``. Deterministic given ``seed``; the global RNG is
    left as it was.

    ``report`` (floats unless said):

    * ``agreement`` — fraction of held-out rows where student and teacher decide alike (the
      faithfulness number); ``agreement_train`` — the same on the training rows;
    * ``student`` / ``teacher`` — :func:`evaluate_actions` dicts of each gate on the held-out rows
      (accuracy, use rate, latency, ...), so the cost of distillation is read off directly;
    * ``student_params`` / ``teacher_params`` (int; teacher None for a plain callable);
    * ``student_s_per_row`` / ``teacher_s_per_row`` — measured time per row of a forward pass
      over the held-out batch (:func:`time_per_row`);
    * ``n_train`` / ``n_holdout`` (int), ``teacher_use_rate_train``, ``final_bce``.
    """
    if not isinstance(table, OutcomeTable):
        raise TypeError(f"table must be an OutcomeTable, got {type(table).__name__}")
    epochs = int_arg("epochs", epochs, 1)
    batch_size = int_arg("batch_size", batch_size, 1)
    seed = int_arg("seed", seed, 0)
    lr = real_arg("lr", lr, 0.0, lo_open=True)
    holdout = real_arg("holdout", holdout, 0.0, 1.0, lo_open=True, hi_open=True)
    weight_decay = real_arg("weight_decay", weight_decay, 0.0)
    n = len(table)
    if n < 2:
        raise ValueError(f"table must have at least 2 rows (train + held-out), got {n}")
    n_hold = min(n - 1, max(1, int(round(holdout * n))))

    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen)
    hold_idx, train_idx = perm[:n_hold], perm[n_hold:]
    was_training = isinstance(policy, PolicyNetwork) and policy.training
    if isinstance(policy, PolicyNetwork):
        policy.eval()
    try:
        labels = teacher_decisions(policy, table.states)
    finally:
        if was_training:
            policy.train()
    x_train, y_train = table.states[train_idx], labels[train_idx].float()
    x_hold, y_hold = table.states[hold_idx], labels[hold_idx]

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        student = GateMLP(table.state_dim, hidden)
    student.set_input_normalization(x_train.mean(0), x_train.std(0, unbiased=False))
    opt = torch.optim.Adam(student.parameters(), lr=lr, weight_decay=weight_decay, foreach=True)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    student.train()
    last = math.nan
    m = x_train.shape[0]
    for _ in range(epochs):
        order = torch.randperm(m, generator=gen)
        total, count = 0.0, 0
        for start in range(0, m, batch_size):
            mb = order[start:start + batch_size]
            loss = loss_fn(student(x_train[mb]), y_train[mb])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * mb.numel()
            count += mb.numel()
        last = total / count
    student.eval()

    hold_table = table.subset(hold_idx)
    s_hold = student.decide(x_hold)
    s_train = student.decide(x_train)
    report: dict[str, Any] = {
        "agreement": float((s_hold == y_hold).float().mean()),
        "agreement_train": float((s_train == y_train.bool()).float().mean()),
        "student": evaluate_actions(hold_table, s_hold),
        "teacher": evaluate_actions(hold_table, y_hold),
        "student_params": student.num_parameters(),
        "teacher_params": policy.num_parameters() if isinstance(policy, PolicyNetwork) else None,
        "student_s_per_row": time_per_row(student.decide, x_hold),
        "teacher_s_per_row": time_per_row(lambda s: teacher_decisions(policy, s), x_hold),
        "n_train": int(m),
        "n_holdout": int(n_hold),
        "teacher_use_rate_train": float(y_train.mean()),
        "final_bce": last,
    }
    return student, report
