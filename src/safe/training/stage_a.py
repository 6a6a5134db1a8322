"""Stage A: supervised warm-start of the projector and the gated adapters (the proposal's Stage A, docs/design.md).

    L = L_audio + lambda_ret * L_ret + lambda_fisher * L_fisher

``L_audio``: answer cross-entropy on audio-dependent rows, gate open. ``L_ret``: KL(base || adapted) on
VL-only rows *with the gate open and unrelated audio attached* (with the gate closed it is zero by
construction), plus, with ``text_retention``, the same KL on text-only prompts against the base's own
greedy answer (:mod:`safe.training.text_retention`). ``L_fisher``: EWC on the trainable parameters, anchored
at their zero-gate start, with the diagonal Fisher of SAFE's outputs on the retention buffer under the base's own output distribution, first
estimated after ``fisher_warmup`` steps (the gates open first) and refreshed every ``fisher_every``.
``lambda_ret`` rises by dual ascent while VL accuracy (gate open) on the retention buffer is below
the base's minus tau. Runs on Hugging Face Accelerate; checkpoints resume bit-exactly on CPU.
"""
from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from safe.data.prepared import PreparedSet
from safe.models.encoders import features_to
from safe.models.generation import accuracy_by_family, answer_questions
from safe.models.safe_model import SAFEModel
from safe.processing.prompts import PromptFormat
from safe.processing.vlm_prompts import ROW_PACKED, take_rows
from safe.training.config import StageAConfig

STATE_FILE = "trainer_state.pt"
LATEST = "latest"
CALIBRATION_ROWS = 16
"""Training rows the adapters' output scale is measured on (``SAFEConfig.output_scale="hidden_rms"``)."""


class ResumeMismatch(ValueError):
    """The run directory holds a checkpoint from a different configuration."""


class UnsafeCheckpoint(ResumeMismatch):
    """A resume state file holds more than tensors and plain containers (a pickled object).

    Guarantees: such a file is never unpickled (``torch.load(..., weights_only=True)`` stops at the
    first global it does not allow), so a crafted checkpoint cannot run code on resume.
    """


def keep_answer_logits(batch: dict, labels: torch.Tensor) -> torch.Tensor:
    """Ask the head for the last positions only, from the first column holding an answer token on: left padding
    puts every answer at the end of its row. Sets ``batch["logits_to_keep"]`` and returns the labels cut alike."""
    k = labels.shape[1] - int((labels != -100).any(0).nonzero()[0]) + 1
    batch["logits_to_keep"] = k
    return labels[:, -k:]


def _rng_state() -> dict:
    """The three generators' states as tensors and plain values only (a weights_only load accepts them)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "numpy": {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                      "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "python": random.getstate()}


def _set_rng_state(rng: dict) -> None:
    torch.set_rng_state(rng["torch"])
    n = rng["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    random.setstate(rng["python"])


def load_resume_state(file: Path) -> dict:
    """The trainer state saved by :meth:`StageATrainer._checkpoint`, loaded without unpickling.

    Raises :class:`UnsafeCheckpoint` naming ``file`` when it holds anything but tensors and plain
    containers (a pickled payload, or a state written by a SAFE before this check, which kept numpy arrays).
    """
    try:
        return torch.load(file, weights_only=True)
    except pickle.UnpicklingError as e:  # what torch raises for a global outside the weights-only allowlist
        # torch's message also suggests weights_only=False; keep only its line naming the refused global.
        lines = [ln.strip() for ln in str(e).splitlines() if "GLOBAL" in ln or "global" in ln]
        what = f" ({lines[0]})" if lines else ""
        raise UnsafeCheckpoint(
            f"{file} holds objects other than tensors and plain containers{what}; it is not loaded, since "
            f"unpickling it could run code. Start a fresh run directory or pass --fresh "
            f"(make demo DEMO_ARGS=--fresh)") from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:  # a truncated or garbage file
        raise ValueError(f"{file}: the saved training state cannot be read ({' '.join(str(e).split())[:200]}); "
                         "start a fresh run directory or pass --fresh") from None


def param_groups(model: SAFEModel, cfg: StageAConfig) -> list[dict]:
    """Projector / adapter matrices / no-decay (norms, biases, null keys) / gates, each with its lr."""
    gates = {id(g) for g in model.gates().values()}
    groups = {"projector": [], "projector_no_decay": [], "adapters": [], "adapters_no_decay": [], "gates": []}
    for part, module in (("projector", model.projector), ("adapters", model.adapters)):
        for p in module.parameters():
            if not p.requires_grad:
                continue
            if id(p) in gates:
                groups["gates"].append(p)
            elif p.dim() < 2:
                groups[f"{part}_no_decay"].append(p)
            else:
                groups[part].append(p)
    lr_gate = cfg.lr_gates or cfg.lr_adapters
    spec = {"projector": (cfg.lr_projector, cfg.weight_decay), "projector_no_decay": (cfg.lr_projector, 0.0),
            "adapters": (cfg.lr_adapters, cfg.weight_decay), "adapters_no_decay": (cfg.lr_adapters, 0.0),
            "gates": (lr_gate, 0.0)}
    return [{"params": ps, "lr": spec[k][0], "weight_decay": spec[k][1], "name": k} for k, ps in groups.items() if ps]


class StageATrainer:
    """Runs Stage A on prepared data and writes checkpoints, TensorBoard logs and metrics.

    Guarantees: only SAFE's parameters are optimised; a run killed at any point and started again
    with the same config and run directory resumes from the last checkpoint and ends with SAFE
    weights bit-identical to an uninterrupted run (on CPU); checkpoints are written to a temporary
    folder and renamed, so a crash never leaves a half-written one.
    """

    def __init__(self, model: SAFEModel, fmt: PromptFormat, train: PreparedSet, retention: PreparedSet,
                 cfg: StageAConfig, run_dir: str | Path, *, progress: bool = True,
                 fingerprint: dict | None = None, text_prompts: Sequence[str] | None = None) -> None:
        from accelerate import Accelerator

        from safe.data.mixture import BalancedMixtureSampler
        from safe.training.curriculum import base_losses, curriculum_order
        from safe.training.losses import DiagonalFisher
        from safe.training.schedules import DualAscent, make_lr_lambda

        self.cfg, self.fmt, self.train_set, self.progress = cfg, fmt, train, progress
        # What the run trains on (base / encoder hashes, data): a checkpoint made on anything else is refused.
        self.fingerprint = fingerprint or {}
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        self.accelerator = Accelerator(mixed_precision=cfg.mixed_precision, cpu=not torch.cuda.is_available())
        self.model = model
        # adapters at the residual stream's scale (SAFEConfig.output_scale="hidden_rms"), measured before any
        # step; a resumed run measures again on the same rows and gets the same scales
        self.output_scales = self._calibrate_output_scale()
        self.retention = retention.subset(range(min(cfg.retention_examples, len(retention))))
        audio_idx = [i for i, n in enumerate(train.needs_audio.tolist()) if n]
        vl_idx = [i for i, n in enumerate(train.needs_audio.tolist()) if not n]
        if not audio_idx or not vl_idx:
            raise ValueError(f"Stage A needs audio-dependent and VL-only training examples; got {len(audio_idx)} "
                             f"and {len(vl_idx)}")
        self.optimizer = torch.optim.AdamW(param_groups(model, cfg), betas=cfg.betas)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, make_lr_lambda(cfg.steps, cfg.warmup_steps))
        self.model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        order, self.curriculum = curriculum_order(
            cfg.curriculum.order, audio_idx, train.examples, family_order=cfg.curriculum.family_order,
            losses=lambda rows: base_losses(self._unwrapped.base_model, self._base_inputs, rows,
                                            autocast=self.accelerator.autocast),
            folder=self.ckpt_dir, key_extra=json.dumps(self.fingerprint, sort_keys=True, default=str))
        self.sampler = BalancedMixtureSampler(audio_idx, vl_idx, cfg.batch_size, audio_share=cfg.audio_share,
                                              seed=cfg.seed, audio_order=order)
        self.named_trainable = {n: p for n, p in self._unwrapped.named_parameters() if p.requires_grad}
        self.fisher = DiagonalFisher(self.named_trainable)
        self.dual = DualAscent(cfg.lambda_retention, cfg.dual_lr, floor=0.0)
        self.text = self._text_retention(text_prompts)
        self.step = 0
        self.history: list[dict] = []
        self.base_retention_accuracy: float | None = None

    def _calibrate_output_scale(self) -> dict[str, list[float]]:
        import inspect

        from safe.models.calibration import calibrate_output_scale, needs_calibration

        if not needs_calibration(self.model):
            return {}  # nothing to measure: no batch built
        rows = list(range(min(CALIBRATION_ROWS, len(self.train_set))))
        batch, _ = self._base_inputs(rows)
        if "logits_to_keep" in inspect.signature(self.model.base_model.forward).parameters:
            batch["logits_to_keep"] = 1  # the head over every position would cost more than the layers
        return calibrate_output_scale(self.model, batch)

    def _text_retention(self, prompts: Sequence[str] | None):
        """The text-only retention rows (:mod:`safe.training.text_retention`), or None without a prompt file."""
        from safe.training.text_retention import TextRetention

        if self.cfg.text_retention is None:
            return None
        if not prompts:
            raise ValueError(f"text_retention={self.cfg.text_retention!r}: the trainer was given no prompts")
        base = self._unwrapped.base_model
        tok = getattr(self.fmt, "tok", None)
        if tok is None:
            raise ValueError("text_retention: the prompt format has no tokenizer (text-only rows need one)")
        return TextRetention(prompts, tok, base, max_answer_tokens=self.cfg.text_answer_tokens,
                             cache_dir=self.ckpt_dir, base_hash=self._base_hash(base), device=self.accelerator.device,
                             progress=self.progress)

    def _base_hash(self, base) -> str:
        from safe.models.integrity import state_hash

        return str(self.fingerprint.get("base_vl") or state_hash(base))

    def _text_loss(self, micro: int) -> torch.Tensor:
        """The retention KL of this step's text-only rows: SAFE with the gate open and unrelated clips (drawn
        from the training split) against the frozen base, at the base's answer tokens."""
        from safe.training.losses import retention_kl

        cfg, acc = self.cfg, self.accelerator
        rows = self.text.draw(cfg.text_retention_rows, seed=cfg.seed, step=self.step, micro=micro,
                              process=acc.process_index)
        clips = random.Random(f"text-clips/{cfg.seed}/{self.step}/{micro}/{acc.process_index}").sample(
            range(len(self.train_set)), min(len(rows), len(self.train_set)))
        clips = (clips * len(rows))[:len(rows)]
        batch, labels = self.text.batch(rows)
        if cfg.answer_logits_only:
            labels = keep_answer_logits(batch, labels)
        emb = features_to(self.train_set.audio[clips], acc.device)
        with acc.autocast():
            logits = self.model(**batch, audio_embeddings=emb).logits  # gate open on every row
            with torch.no_grad():
                base = self._unwrapped.base_model(**batch).logits
        return retention_kl(logits, base, labels)

    @property
    def _unwrapped(self) -> SAFEModel:
        return self.accelerator.unwrap_model(self.model)

    @property
    def _packed_image_token(self) -> int | None:
        """The image token of a family whose pixel_values pack a batch's patches (Qwen-VL, InternVL), else None."""
        bb = self._unwrapped.backbone
        return bb.image_token_id if bb.name in ROW_PACKED else None

    # ------------------------------------------------------------------------------------------
    def _inputs(self, data: PreparedSet, idx: Sequence[int]) -> tuple[dict, torch.Tensor, torch.Tensor]:
        dev = self.accelerator.device
        batch = {k: v.to(dev) for k, v in self.fmt.train_batch(data.enc, idx).items()}
        labels = batch.pop("labels")
        batch["pixel_values"] = data.pixels[idx].to(dev)
        return batch, labels, data.needs_audio[idx].to(dev)

    def _base_inputs(self, idx: Sequence[int]) -> tuple[dict, torch.Tensor]:
        """Training rows ``idx`` as the base model takes them (no audio), and their labels."""
        batch, labels, _ = self._inputs(self.train_set, idx)
        return batch, labels

    def _answer_tokens(self, rows: Sequence[int], audio: bool) -> int:
        """Answer tokens (the positions both losses average over) of the audio or VL rows among ``rows``."""
        needs, answers = self.train_set.needs_audio, self.train_set.enc.answers
        return sum(len(answers[i]) for i in rows if bool(needs[i]) == audio)

    def _losses(self, idx: Sequence[int], whole: Sequence[int] | None = None,
                micro: int = 0) -> dict[str, torch.Tensor]:
        """The losses of rows ``idx``. ``whole``: the rows of this micro-batch over all processes; each
        process then scales its token means by (its tokens / all tokens) * processes, so the gradient
        the processes average is the single-process mean over ``whole`` (and so are the logged values)."""
        from safe.training.losses import answer_cross_entropy, retention_kl

        batch, labels, needs = self._inputs(self.train_set, idx)
        if self.cfg.answer_logits_only and "decoder_input_ids" not in batch:
            labels = keep_answer_logits(batch, labels)
        emb = features_to(self.train_set.audio[idx], self.accelerator.device)  # a tuple for an ensemble
        with self.accelerator.autocast():
            logits = self.model(**batch, audio_embeddings=emb).logits  # gate open on every row
        vl = ~needs
        zero = logits.new_zeros(())

        def share(audio: bool) -> float:
            if whole is None:
                return 1.0
            total = self._answer_tokens(whole, audio)
            return self._answer_tokens(idx, audio) / total * self.accelerator.num_processes if total else 0.0

        out = {"audio": answer_cross_entropy(logits[needs], labels[needs]) * share(True) if needs.any() else zero}
        if vl.any():
            with torch.no_grad(), self.accelerator.autocast():
                base = self._unwrapped.base_model(**take_rows(batch, vl, len(vl), self._packed_image_token)).logits
            out["retention"] = retention_kl(logits[vl], base, labels[vl]) * share(False)
        else:
            out["retention"] = zero
        out["fisher"] = self.fisher.penalty(self.named_trainable) if self.cfg.lambda_fisher > 0 else zero
        retention = out["retention"]
        if self.text is not None:
            out["text_retention"] = self._text_loss(micro)
            retention = retention + self.cfg.text_retention_weight * out["text_retention"]
        out["total"] = out["audio"] + self.dual.value * retention + self.cfg.lambda_fisher * out["fisher"]
        return out

    def _fisher_due(self) -> bool:
        """Whether the step just taken is the first Fisher estimate (after the warm-up) or a refresh."""
        cfg = self.cfg
        if cfg.lambda_fisher <= 0 or self.step < max(cfg.fisher_warmup, 1):
            return False
        since = self.step - max(cfg.fisher_warmup, 1)
        return since == 0 or (cfg.fisher_every > 0 and since % cfg.fisher_every == 0)

    def _estimate_fisher(self) -> None:
        """Diagonal Fisher of SAFE's outputs on the retention buffer's VL rows (gate open, unrelated audio
        attached), under the base's own output distribution: each row's answer tokens are drawn from the
        frozen base's predictive distribution and the squared gradient of their log-likelihood is taken row
        by row. The draws come from a generator seeded by (seed, step), so a resumed run draws the same."""
        from safe.training.losses import answer_cross_entropy, answer_positions, sample_answer_labels

        n = len(self.retention)
        gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + self.step)
        dev = self.accelerator.device
        for j in range(self.cfg.fisher_examples):
            idx = [(self.step + j) % n]
            batch, labels, _ = self._inputs(self.retention, idx)
            with torch.no_grad(), self.accelerator.autocast():
                base = self._unwrapped.base_model(**batch).logits
            sampled = sample_answer_labels(base, labels, gen)
            self.optimizer.zero_grad(set_to_none=True)
            with self.accelerator.autocast():
                logits = self.model(**batch, audio_embeddings=features_to(self.retention.audio[idx], dev)).logits
            # the row's log-likelihood (summed over its answer tokens), not the per-token mean
            nll = answer_cross_entropy(logits, sampled) * int(answer_positions(sampled).sum())
            nll.backward()
            self.fisher.accumulate(self.named_trainable)
        self.fisher.finalize(decay=self.cfg.fisher_decay)
        self.optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def retention_accuracy(self, gate_open: bool = True) -> float:
        """VL accuracy on the retention buffer (generate, greedy); gate open with its unrelated audio."""
        model, data = self._unwrapped, self.retention
        was = model.training
        model.eval()
        try:
            if gate_open:
                preds = answer_questions(model, self.fmt, data.enc, data.pixels,
                                         extra=lambda idx: {"audio_embeddings": data.audio[idx]})
            else:
                with model.audio_disabled():
                    preds = answer_questions(model, self.fmt, data.enc, data.pixels)
        finally:
            model.train(was)
        return accuracy_by_family(data.examples, preds)["all"]

    # ------------------------------------------------------------------------------------------
    def _checkpoint(self) -> Path:
        name = f"step_{self.step:06d}"
        final, tmp = self.ckpt_dir / name, self.ckpt_dir / f".tmp-{name}"
        if (final / STATE_FILE).is_file():  # already saved (a finished run re-entered): never delete a good one
            return final
        if tmp.exists():
            shutil.rmtree(tmp)
        self._unwrapped.save_pretrained(tmp / "safe")
        torch.save({
            "step": self.step, "config": self.cfg.to_dict(), "fingerprint": self.fingerprint,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "sampler": self.sampler.state_dict(),
            "dual": self.dual.state_dict(), "fisher": self.fisher.state_dict(), "history": self.history,
            "base_retention_accuracy": self.base_retention_accuracy,
            "rng": _rng_state(),  # tensors and plain values only: the resume loads with weights_only=True
        }, tmp / STATE_FILE)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        latest_tmp = self.ckpt_dir / f".{LATEST}.tmp"
        latest_tmp.write_text(name)
        os.replace(latest_tmp, self.ckpt_dir / LATEST)
        for old in sorted(self.ckpt_dir.glob("step_*"))[:-2]:  # keep the two newest
            shutil.rmtree(old, ignore_errors=True)
        return final

    def latest_checkpoint(self) -> Path | None:
        """The checkpoint named by ``latest``, else the newest complete ``step_*`` folder, else None."""
        f = self.ckpt_dir / LATEST
        if f.is_file():
            path = self.ckpt_dir / f.read_text().strip()
            if (path / STATE_FILE).is_file():
                return path
        complete = [p for p in sorted(self.ckpt_dir.glob("step_*")) if (p / STATE_FILE).is_file()]
        return complete[-1] if complete else None

    def resume(self, path: Path) -> None:
        from safetensors.torch import load_file

        state = load_resume_state(path / STATE_FILE)
        now = self.cfg.to_dict()
        # a setting added since the checkpoint was written counts at its default (older runs still resume)
        added = {k: v for k, v in StageAConfig().to_dict().items() if k not in state["config"]}
        saved = {**added, **state["config"]}
        if saved != now:
            diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
            raise ResumeMismatch(f"{path} was written with a different config (fields {diff}); "
                                 f"start a fresh run directory or pass --fresh (make demo DEMO_ARGS=--fresh)")
        if state.get("fingerprint", {}) != self.fingerprint:
            old, new = state.get("fingerprint", {}), self.fingerprint
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise ResumeMismatch(f"{path} was trained on other base models or data ({diff} differ); start a fresh "
                                 f"run directory or pass --fresh (make demo DEMO_ARGS=--fresh)")
        weights = load_file(str(path / "safe" / "safe_weights.safetensors"))
        own = self._unwrapped.safe_state_dict()
        bad = sorted(k for k in set(own) | set(weights)
                     if k not in own or k not in weights or own[k].shape != weights[k].shape)
        if bad:
            raise ResumeMismatch(f"{path}: SAFE weights do not fit this model (keys {bad[:4]}); pass --fresh")
        with torch.no_grad():
            for k, v in weights.items():
                own[k].copy_(v)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        self.dual.load_state_dict(state["dual"])
        self.fisher.load_state_dict(state["fisher"])
        self.history = state["history"]
        self.base_retention_accuracy = state["base_retention_accuracy"]
        self.step = state["step"]
        _set_rng_state(state["rng"])

    # ------------------------------------------------------------------------------------------
    def fit(self, *, resume: bool = True, stop_after: int | None = None) -> dict:
        """Train to ``cfg.steps`` (resuming from the latest checkpoint when ``resume``). ``stop_after``
        ends the process-local run early after that step, as a crash would (for tests)."""
        from torch.utils.tensorboard import SummaryWriter
        from tqdm.auto import tqdm

        from safe.training.schedules import audio_exposure

        cfg, acc = self.cfg, self.accelerator
        latest = self.latest_checkpoint() if resume else None
        if latest is not None:
            self.resume(latest)
        if self.base_retention_accuracy is None and cfg.retention_every:
            self.base_retention_accuracy = self.retention_accuracy(gate_open=False)
        if self.base_retention_accuracy is not None:
            self.dual.floor = self.base_retention_accuracy - cfg.retention_tau
        writer = SummaryWriter(str(self.run_dir / "logs" / "stage_a")) if acc.is_main_process else None
        t0 = time.perf_counter()
        self.model.train()
        micro = cfg.batch_size // cfg.grad_accum
        bar = tqdm(total=cfg.steps, initial=self.step, desc="Stage A", disable=not self.progress or not acc.is_main_process)
        try:
            while self.step < cfg.steps:
                c = cfg.curriculum
                exposure = audio_exposure(self.step, cfg.steps, c.start, c.end, c.ramp_fraction)
                self.sampler.set_exposure(exposure)
                full = self.sampler.next_batch()  # the same global batch on every process (same seed)
                world = acc.num_processes
                shards = [full[r::world] for r in range(world)]  # each process fetches only its own rows
                logs: dict[str, float] = {}
                for m in range(cfg.grad_accum):
                    parts = [sh[m * micro // world:(m + 1) * micro // world] or sh for sh in shards]
                    whole = [i for p in parts for i in p] if world > 1 else None
                    losses = self._losses(parts[acc.process_index], whole, micro=m)
                    acc.backward(losses["total"] / cfg.grad_accum)
                    if world > 1:  # log the global mean: each process holds its scaled share of it
                        losses = {k: acc.reduce(v.detach().clone(), "mean") for k, v in losses.items()}
                    for k, v in losses.items():
                        logs[k] = logs.get(k, 0.0) + float(v.detach()) / cfg.grad_accum
                grad_norm = acc.clip_grad_norm_(self._unwrapped.trainable_parameters(), cfg.grad_clip)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                if self._fisher_due():
                    self._estimate_fisher()
                record = {"step": self.step, **{f"loss_{k}": round(v, 6) for k, v in logs.items()},
                          "lambda_retention": self.dual.value, "audio_exposure": exposure,
                          "grad_norm": float(grad_norm)}
                if cfg.retention_every and self.step % cfg.retention_every == 0:
                    vl_acc = self.retention_accuracy(gate_open=True)
                    record["retention_vl_accuracy"] = vl_acc
                    record["lambda_retention"] = self.dual.update(vl_acc)
                self.history.append(record)
                if writer is not None and (self.step % cfg.log_every == 0 or "retention_vl_accuracy" in record):
                    for k, v in record.items():
                        if k != "step":
                            writer.add_scalar(f"stage_a/{k}", v, self.step)
                    for i, g in self._unwrapped.gates().items():
                        writer.add_scalar(f"stage_a/gate_layer{i}", float(torch.tanh(g.detach())), self.step)
                bar.update(1)
                bar.set_postfix(audio=f"{logs['audio']:.3f}", ret=f"{logs['retention']:.4f}",
                                lam=f"{self.dual.value:.2f}")
                if acc.is_main_process and cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    self._checkpoint()
                if stop_after is not None and self.step >= stop_after:
                    return {"interrupted": True, "step": self.step}
        finally:
            bar.close()
            if writer is not None:
                writer.close()
        if acc.is_main_process:
            self._checkpoint()
            self._unwrapped.save_pretrained(self.ckpt_dir / "final")
        return {"steps": self.step, "seconds": round(time.perf_counter() - t0, 2), "history": self.history,
                "curriculum": self.curriculum,
                "base_retention_accuracy": self.base_retention_accuracy, "lambda_retention": self.dual.value}
