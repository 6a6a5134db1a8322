"""Stage 1 of the proposal: safety verification of a SAFE model, as a list of pass/fail checks.

The reference for every bit-exactness check is the *unwrapped* base: the adapter hooks are removed
for the reference run (:meth:`SAFEModel.hooks_detached`), so no second copy of the base is needed.
Every check restores what it changes (gate values, SAFE weights) in ``finally`` blocks.
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from safe.models.integrity import state_hash
from safe.models.safe_model import SAFEModel


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


@dataclass
class VerificationResult:
    """All checks of one verification run; ``passed`` is True only when every check passed."""

    checks: list[Check]
    parameter_report: dict

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def table(self) -> str:
        width = max(len(c.name) for c in self.checks)
        lines = [f"{'check':<{width}}  result  detail"]
        lines += [f"{c.name:<{width}}  {'PASS' if c.passed else 'FAIL':<6}  {c.detail}" for c in self.checks]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"passed": self.passed, "checks": [asdict(c) for c in self.checks],
                "parameters": dict(self.parameter_report)}


@contextlib.contextmanager
def _gates_at(model: SAFEModel, value: float):
    saved = {i: g.detach().clone() for i, g in model.gates().items()}
    model.set_gates(value)
    try:
        yield
    finally:
        with torch.no_grad():
            for i, g in model.gates().items():
                g.copy_(saved[i])


def _rows(x: torch.Tensor, n: int) -> torch.Tensor:
    return x.view(n, x.shape[0] // n, *x.shape[1:])


def verify_model(model: SAFEModel, vl_inputs: dict, audio_features: torch.Tensor, audio_mask: torch.Tensor,
                 *, max_new_tokens: int = 4, open_gate: float = 0.5, train_steps: int = 2) -> VerificationResult:
    """Run the safety checks on one batch. ``audio_mask`` must mix open and closed rows."""
    if audio_mask.all() or not audio_mask.any():
        raise ValueError("verification needs a batch with some rows using audio and some not (mixed audio_mask)")
    n, closed = audio_mask.shape[0], ~audio_mask
    gen_inputs = {k: v for k, v in vl_inputs.items() if k != "decoder_input_ids"}
    gen_kw = dict(max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, do_sample=False)
    checks: list[Check] = []

    def add(name, passed, detail):
        checks.append(Check(name, bool(passed), detail))

    with torch.no_grad(), _gates_at(model, open_gate):
        with model.hooks_detached() as base:
            ref_logits = base(**vl_inputs).logits
            ref_greedy = base.generate(**gen_inputs, **gen_kw)
            ref_beams = base.generate(**gen_inputs, **gen_kw, num_beams=3, num_return_sequences=2)
        calls = model.audio_encoder_calls
        logits = model(**vl_inputs, audio_features=audio_features, audio_mask=audio_mask).logits
        add("forward: closed rows bit-exact", torch.equal(logits[closed], ref_logits[closed]),
            f"{int(closed.sum())} closed rows, torch.equal on logits {tuple(logits.shape)}")
        delta = (logits[audio_mask].float() - ref_logits[audio_mask].float()).abs().max().item()
        add("forward: open rows use audio", delta > 0, f"max |logit change| {delta:.3g} at gate g={open_gate}")
        add("audio encoder runs on open rows only", model.audio_encoder_calls - calls == int(audio_mask.sum()),
            f"{model.audio_encoder_calls - calls} of {n} rows encoded")
        greedy = model.generate(**gen_inputs, **gen_kw, audio_features=audio_features, audio_mask=audio_mask)
        add("generate (greedy, KV cache): closed rows bit-exact",
            greedy.shape == ref_greedy.shape and torch.equal(greedy[closed], ref_greedy[closed]),
            f"{max_new_tokens} new tokens")
        beams = model.generate(**gen_inputs, **gen_kw, num_beams=3, num_return_sequences=2,
                               audio_features=audio_features, audio_mask=audio_mask)
        add("generate (beams x 2 returns): closed rows bit-exact",
            beams.shape == ref_beams.shape and torch.equal(_rows(beams, n)[closed], _rows(ref_beams, n)[closed]),
            "num_beams=3, num_return_sequences=2")
        calls = model.audio_encoder_calls
        with model.audio_disabled():
            off = model(**vl_inputs, audio_features=audio_features).logits
        add("audio_disabled(): whole batch is the base", torch.equal(off, ref_logits) and model.audio_encoder_calls == calls,
            "all rows bit-exact, encoder not run")
    with torch.no_grad(), _gates_at(model, 0.0):
        zero = model(**vl_inputs, audio_features=audio_features).logits
        add("gate g=0: every row is the base", torch.equal(zero, ref_logits), "audio attached to all rows")
    checks.extend(_training_checks(model, vl_inputs, audio_features, audio_mask, train_steps))
    return VerificationResult(checks, model.parameter_report())


def _training_checks(model, vl_inputs, audio_features, audio_mask, steps) -> list[Check]:
    out: list[Check] = []
    saved = {k: v.detach().clone() for k, v in model.safe_state_dict().items()}
    hashes = (state_hash(model.base_model), state_hash(model.audio_encoder))
    frozen = [p for p in (*model.base_model.parameters(), *model.audio_encoder.parameters())]
    was_training = model.training
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    gate_grads, stray = [], 0
    try:
        model.train()
        for step in range(steps):
            opt.zero_grad()
            logits = model(**vl_inputs, audio_features=audio_features, audio_mask=audio_mask).logits[audio_mask]
            target = logits.detach().float().argmin(-1)  # any target works: we test where gradients flow
            F.cross_entropy(logits.float().flatten(0, -2), target.flatten()).backward()
            if step == 0:
                gate_grads = [float(g.grad.abs()) if g.grad is not None else 0.0 for g in model.gates().values()]
            stray += sum(p.grad is not None for p in frozen)
            opt.step()
        out.append(Check("only SAFE parameters receive gradients",
                         stray == 0 and all(not p.requires_grad for p in frozen),
                         f"{len(frozen)} frozen tensors, {stray} with a gradient"))
        out.append(Check("gates receive gradient at step 0", all(g > 0 for g in gate_grads),
                         "|dL/dg| = " + ", ".join(f"{g:.2e}" for g in gate_grads)))
        after = (state_hash(model.base_model), state_hash(model.audio_encoder))
        out.append(Check("training leaves base + encoder byte-identical", after == hashes,
                         f"sha256 base {hashes[0][:12]}.. encoder {hashes[1][:12]}.."))
    finally:
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            own = model.safe_state_dict()
            for k, v in saved.items():
                own[k].copy_(v)
        model.train(was_training)
    return out


def verify_modalities(model: SAFEModel, vl_inputs: dict, inputs: dict[str, tuple[torch.Tensor, torch.Tensor]],
                      *, max_new_tokens: int = 4, open_gate: float = 0.5) -> VerificationResult:
    """The checks of a model carrying several modalities, on one batch. ``inputs``: modality name ->
    (features, mask); the masks must leave at least one row that uses no modality and, for each modality,
    at least one row that uses it alone. Checks, with every modality's gates open: rows using none are
    the base (forward, greedy); rows using one modality alone equal the model run with that modality's
    input only (what a model carrying only it gives); each encoder runs on its own rows only."""
    names = list(inputs)
    masks = {m: inputs[m][1] for m in names}
    none = ~torch.stack(list(masks.values())).any(0)
    alone = {m: masks[m] & ~torch.stack([masks[o] for o in names if o != m] or [torch.zeros_like(none)]).any(0)
             for m in names}
    if not none.any() or not all(a.any() for a in alone.values()):
        raise ValueError("verification of modalities needs rows using none and, per modality, rows using it alone")

    def kwargs(which):
        return {f"{m}_{k}": v for m in which for k, v in (("features", inputs[m][0]), ("mask", masks[m]))}

    gen_inputs = {k: v for k, v in vl_inputs.items() if k != "decoder_input_ids"}
    gen_kw = dict(max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, do_sample=False)
    saved = {m: {i: g.detach().clone() for i, g in model.gates(m).items()} for m in model.modality_names}
    checks: list[Check] = []
    try:
        model.set_gates(open_gate, "all")
        with torch.no_grad():
            with model.hooks_detached() as base:
                ref, ref_greedy = base(**vl_inputs).logits, base.generate(**gen_inputs, **gen_kw)
            calls = model.encoder_calls()
            logits = model(**vl_inputs, **kwargs(names)).logits
            ran = {m: model.encoder_calls()[m] - calls[m] for m in names}
            greedy = model.generate(**gen_inputs, **gen_kw, **kwargs(names))
            checks.append(Check("rows using no modality: forward bit-exact", torch.equal(logits[none], ref[none]),
                                f"{int(none.sum())} rows, modalities {names}"))
            checks.append(Check("rows using no modality: greedy bit-exact", torch.equal(greedy[none], ref_greedy[none]),
                                f"{max_new_tokens} new tokens"))
            for m in names:
                single = model(**vl_inputs, **kwargs([m])).logits
                checks.append(Check(f"rows using {m} alone: as with {m} only", torch.equal(logits[alone[m]], single[alone[m]]),
                                    f"{int(alone[m].sum())} rows; the other modalities never touch them"))
                checks.append(Check(f"{m} encoder runs on its rows only", ran[m] == int(masks[m].sum()),
                                    f"{ran[m]} of {int(none.numel())} rows encoded"))
    finally:
        with torch.no_grad():
            for m, gates in saved.items():
                for i, g in model.gates(m).items():
                    g.copy_(gates[i])
    return VerificationResult(checks, model.parameter_report())
