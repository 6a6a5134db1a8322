"""Training the vision side of the Gemma base (:mod:`safe.bench.gemma.base`) on the built-in scenes, resumably.

Only the projector (and the vision tower, when its rate is above 0) trains, after the projector's warm start
(:mod:`.warm`), with the question's keys and values computed once (:mod:`.prefix`); the Gemma language model
is frozen from construction and its tensors' SHA-256 are checked against the conversion's before training, after training and in the saved
checkpoint reloaded from disk. A resumable state (trainable weights, optimiser, step, history) is written
every ``checkpoint_every`` steps into a work folder beside the output; a killed build resumes there, taking
the same batches it would have taken. The finished checkpoint is written to a temporary folder renamed into
place, so an interrupted build never looks complete.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch

from safe.atomic import staged_dir
from safe.bench.gemma import base as gb
from safe.bench.gemma import lm as gemma_lm
from safe.bench.gemma import warm
from safe.bench.gemma.prefix import PrefixCachedLoss

STATE_FILE = "state.pt"


def monitor_rows(examples: Sequence, n: int, families: Sequence[str]) -> list:
    """The first ``n // len(families)`` rows of each family, in file order (a fixed, balanced probe)."""
    per = max(1, n // len(families))
    return [e for f in families for e in [x for x in examples if x.family == f][:per]]


def evaluate(model, fmt, examples: Sequence, batch_size: int = 32, progress: bool = False) -> dict[str, float]:
    """Exact-match accuracy per family (and ``all``) of greedy answers, through SAFE's own prompt format."""
    from safe.models.generation import accuracy_by_family, answer_questions

    model.eval()
    preds = answer_questions(model, fmt, fmt.encode(examples), fmt.pixels([e.image for e in examples]),
                             batch_size=batch_size, max_new_tokens=4, progress=progress)
    return accuracy_by_family(examples, preds)


def read_build(out_dir: str | Path) -> dict | None:
    f = Path(out_dir) / gb.BUILD_FILE
    return json.loads(f.read_text()) if f.is_file() else None


def _batches(n: int, batch_size: int, seed: int, step: int) -> list[int]:
    """The rows of step ``step``: epoch-wise permutations seeded by (seed, epoch), so a resumed run draws the
    very batches an uninterrupted one would."""
    start = step * batch_size
    out: list[int] = []
    while len(out) < batch_size:
        epoch, pos = divmod(start + len(out), n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch))
        out.extend(perm[pos: pos + batch_size - len(out)].tolist())
    return out


def _load() -> list[float] | None:
    """The machine's 1 / 5 / 15 minute load averages (how shared the CPU was), where the OS tells them."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _initialise(model, tok, fmt, enc, rows: Sequence, pixels: torch.Tensor, cfg: gb.GemmaBaseConfig,
                progress: bool) -> dict:
    """The projector's starting point: fitted to the words of each patch's cell (:mod:`.warm`) when
    ``cfg.warm_start_steps``, else its output scaled to the norm of Gemma's token embeddings. Deterministic
    (seeded), and saved with the first checkpoint, so a resumed build never fits again."""
    t = time.perf_counter()
    if cfg.warm_start_steps > 0:
        if progress:
            print(f"warm start: fitting the projector to Gemma's word embeddings of each cell ({len(rows)} pictures)",
                  flush=True)
        feats = warm.patch_features(model, pixels)
        fit = warm.fit_projector(model.model.multi_modal_projector, feats, warm.cell_targets(model, tok, rows),
                                 steps=cfg.warm_start_steps, seed=cfg.seed)
        return {"warm_start": {**fit, "steps": cfg.warm_start_steps, "seconds": round(time.perf_counter() - t, 1)}}
    target = gb.embedding_norm(model, [i for p in enc.prompts[:64] for i in p if i not in (fmt.image, fmt.bos)])
    return {"projector_scale": gb.scale_projector(model, pixels[:64], target), "embedding_norm": target}


def _save_state(path: Path, state: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def build_gemma_base(bench_dir: str | Path, out_dir: str | Path, *, lm_dir: str | Path, builtin_vl: str | Path,
                     cfg: gb.GemmaBaseConfig | None = None, force: bool = False, progress: bool = True) -> dict:
    """Train the vision side of the Gemma base on the VL-only rows of the built-in benchmark in ``bench_dir``
    and save the LLaVA checkpoint (weights, Gemma tokenizer with the prompt template, image processor, build
    record) to ``out_dir``; reuse a complete build of the same config and language model unless ``force``.
    Returns the build record (``"reused"`` True when found)."""
    from tqdm.auto import tqdm

    from safe.bench import files, questions

    cfg = cfg or gb.GemmaBaseConfig()
    out_dir, lm_dir = Path(out_dir), Path(lm_dir)
    conversion = gemma_lm.read_conversion(lm_dir)
    if conversion is None:
        raise FileNotFoundError(f"{lm_dir} is not a converted Gemma checkpoint (no {gemma_lm.CONVERSION_FILE})")
    old = read_build(out_dir)
    if not force and old and old.get("format_version") == gb.FORMAT_VERSION and old.get("config_hash") == cfg.digest() \
            and old.get("lm_sha256") == conversion["lm_sha256"] and (out_dir / "config.json").is_file():
        return {**old, "reused": True}
    t0, load_before = time.perf_counter(), _load()
    model, tok, image_processor = gb.assemble(lm_dir, builtin_vl, cfg.seed)
    text_model = model.model.language_model
    expected = conversion["tensors"]
    gemma_lm.check_digests(text_model, expected, "after loading")
    fmt = gb.prompt_format(model, tok, image_processor)
    train_rows = [e for e in files.load_split(bench_dir, "train") if not e.needs_audio]
    test_rows = [e for e in files.load_split(bench_dir, "test") if not e.needs_audio]
    monitor = monitor_rows(test_rows, cfg.monitor_rows, questions.VL_FAMILIES)
    enc = fmt.encode(train_rows)
    answers = [gb.answer_ids(tok, e.answers[0]) for e in train_rows]
    pixels = fmt.pixels([e.image for e in train_rows])  # 48 px pictures: all of them fit in memory
    tower, projector = model.model.vision_tower, model.model.multi_modal_projector
    if cfg.lr_tower <= 0:
        gemma_lm.frozen(tower.parameters())
    groups = [{"params": list(projector.parameters()), "lr": cfg.lr_projector}]
    if cfg.lr_tower > 0:
        groups.append({"params": list(tower.parameters()), "lr": cfg.lr_tower})
    opt = torch.optim.AdamW(groups, betas=(0.9, 0.98), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, cfg.warmup_steps))
                                              * 0.5 * (1 + math.cos(math.pi * min(1.0, s / max(1, cfg.steps)))))
    work = out_dir.parent / f".{out_dir.name}-work-{cfg.digest()}"
    work.mkdir(parents=True, exist_ok=True)
    state_path = work / STATE_FILE
    history: list[dict] = []
    step, trained_seconds = 0, 0.0
    if state_path.is_file() and not force:
        st = torch.load(state_path, weights_only=False)
        tower.load_state_dict(st["tower"])
        projector.load_state_dict(st["projector"])
        opt.load_state_dict(st["opt"])
        sched.load_state_dict(st["sched"])
        step, history, trained_seconds = st["step"], st["history"], st["seconds"]
        if progress:
            print(f"resuming the Gemma base's vision side at step {step} of {cfg.steps} ({work})", flush=True)
    else:
        history.append(_initialise(model, tok, fmt, enc, train_rows, pixels, cfg, progress))
    loss_fn = PrefixCachedLoss(model, enc.prompts, answers, image_token=fmt.image, pad=fmt.pad,
                               dtype=getattr(torch, cfg.train_dtype))

    def checkpoint():
        _save_state(state_path, {"step": step, "tower": tower.state_dict(), "projector": projector.state_dict(),
                                 "opt": opt.state_dict(), "sched": sched.state_dict(), "history": history,
                                 "seconds": trained_seconds})

    bar = tqdm(total=cfg.steps, initial=step, desc="Gemma base: vision side", disable=not progress)
    while step < cfg.steps:
        t1 = time.perf_counter()
        model.train()
        text_model.eval()  # no dropout in the frozen LM either way; eval keeps it explicit
        idx = _batches(len(train_rows), cfg.batch_size, cfg.seed, step)
        loss = loss_fn(idx, pixels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 1.0)
        opt.step()
        sched.step()
        step += 1
        trained_seconds += time.perf_counter() - t1
        history.append({"step": step, "loss": round(loss.item(), 4)})
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
            acc = evaluate(model, fmt, monitor)
            history.append({"step": step, "monitor_accuracy": acc})
            bar.write(f"step {step}: monitor accuracy {acc}")
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            checkpoint()
    bar.close()
    model.eval()
    gemma_lm.check_digests(text_model, expected, "after training the vision side")
    monitor_acc = evaluate(model, fmt, monitor, progress=progress)
    test_acc = evaluate(model, fmt, test_rows, progress=progress) if cfg.full_test else None
    with staged_dir(out_dir, "saving") as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        image_processor.save_pretrained(tmp)
        record = {"format_version": gb.FORMAT_VERSION, "config": asdict(cfg), "config_hash": cfg.digest(),
                  "lm_sha256": conversion["lm_sha256"], "gguf_sha256": conversion["gguf_sha256"],
                  "package": gemma_lm.PACKAGE, "image_token": gb.IMAGE_TOKEN, "steps": step,
                  "train_rows": len(train_rows), "monitor_rows": len(monitor), "monitor_accuracy": monitor_acc,
                  "trainable_parameters": sum(p.numel() for g in groups for p in g["params"]),
                  "test_rows": len(test_rows) if test_acc else 0, "test_accuracy": test_acc,
                  "train_seconds": round(trained_seconds, 1), "torch_threads": torch.get_num_threads(),
                  "cpus": os.cpu_count(), "load_before": load_before, "load_after": _load(),
                  "build_seconds": round(time.perf_counter() - t0, 1),
                  "history": history}
        saved = gb.load_saved_lm_digests(tmp)
        if gemma_lm.combined_digest(saved) != conversion["lm_sha256"]:
            raise AssertionError(f"{out_dir}: the saved Gemma tensors differ from the conversion's")
        (tmp / gb.BUILD_FILE).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    shutil.rmtree(work, ignore_errors=True)  # the build is complete: its resumable state is no longer needed
    record["seconds"] = round(time.perf_counter() - t0, 1)
    return {**record, "reused": False}
