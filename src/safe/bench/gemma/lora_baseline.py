"""SAFE next to the usual way of adding audio, on the same frozen VL base, the same audio data and the same
budget (``python -m safe.bench.gemma.lora_baseline``, ``make gemma-lora``).

The usual way (:mod:`safe.bench.gemma.lora_model`): the audio encoder's output through a trained projector as
prefix tokens, and LoRA on the language model through PEFT, trained end to end on the audio rows of the speech
track's training split. SAFE: Stage A (projector + gated adapters, the speech recipe) on the same split, for
the same steps x batch. Both start from the same base and the same frozen Whisper encoder; both are then asked:

* the text retention prompts (no image, no audio: a text-only user of the language model) and the VL test
  questions (typed, with their picture), with no audio and with an unrelated clip: how many greedy answers
  differ from the base's own;
* the spoken questions and spoken facts of the test split: exact-match accuracy (the deaf base's beside);
* whether the logits of a batch without audio are the base's (``torch.equal``), and by how much they move.

Every figure goes into one JSON record (``lora_baseline.json``), from which :mod:`safe.bench.gemma.lora_docs`
writes the docs section.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from safe.bench.gemma.lora_model import AudioPrefixLoRA, LoraBaselineConfig, lr_lambda

RECORD = "lora_baseline.json"
FORMAT_VERSION = 1
SAFE_RECIPE = "stage_a_speech.yaml"
#: SAFE's recipe on Gemma 3 270M: the speech recipe, its adapters spread over Gemma's 18 layers, the data order
#: without the base-loss pass over every audio row, and no retention probes (their generation costs a real LM
#: more than the steps). ``steps`` / ``batch_size`` come from the shared budget.
SAFE_OVERRIDES = ("safe.fusion_layers=[2, 7, 12, 17]", "curriculum.order=none", "retention_every=0",
                  "checkpoint_every=10")
TEXT_NEW_TOKENS = 8
ANSWER_NEW_TOKENS = 6

# A small text-only set of what a 270M base answers (facts, completions, arithmetic); the reference is the
# base's own greedy answer, whatever it is.
_FACTS = ["What colour is the sky on a clear day?", "What is the capital of France?", "What is the capital of Japan?",
          "How many legs does a spider have?", "What do bees make?", "What is the largest planet in the solar system?",
          "What is frozen water called?", "Which animal is known as the king of the jungle?",
          "How many days are in a week?", "What colour are bananas when they are ripe?",
          "What is the opposite of hot?", "Which ocean is the largest?", "What language is spoken in Spain?",
          "How many continents are there?", "What gas do plants take in from the air?",
          "Who wrote Romeo and Juliet?", "What is the boiling point of water in Celsius?",
          "What is the chemical symbol for gold?", "How many hours are in a day?", "What do cows drink?"]
_SUMS = [(2, 3), (7, 5), (10, 4), (6, 6), (9, 8), (12, 7), (3, 14), (20, 5)]
_COMPLETIONS = ["The cat sat on the", "Once upon a time, there was a", "The sun rises in the",
                "Water is made of hydrogen and", "A week has seven", "The first month of the year is",
                "Roses are red, violets are", "The quick brown fox jumps over the", "One, two, three, four,",
                "Monday, Tuesday,", "The capital of Italy is", "Paris is a city in"]


def builtin_text_prompts() -> list[str]:
    """This module's own text-only prompts (used until the Gemma track's retention set is available)."""
    return ([f"Question: {q}\nAnswer:" for q in _FACTS]
            + [f"Question: What is {a} plus {b}?\nAnswer:" for a, b in _SUMS] + list(_COMPLETIONS))


def text_prompts(limit: int | None = None) -> tuple[list[str], str]:
    """(prompts, where they come from): the Gemma track's text retention set when this checkout has it, else
    :func:`builtin_text_prompts`."""
    try:
        from safe.bench.gemma.track_text import text_prompts as track_set  # the Gemma track's set, when present
    except ImportError:
        return builtin_text_prompts()[:limit], "safe.bench.gemma.lora_baseline.builtin_text_prompts"
    # a total below the set's written prompts takes a third from each kind (facts, completions, arithmetic)
    return [p.text for p in (track_set(limit) if limit else track_set())], "safe.bench.gemma.track_text.text_prompts"


@dataclass
class CompareConfig:
    """What is compared, on what (hashed into nothing: every setting is written into the record)."""

    lora: LoraBaselineConfig = field(default_factory=LoraBaselineConfig)
    safe_overrides: tuple[str, ...] = SAFE_OVERRIDES
    max_train: int | None = None
    """Training rows read from the split (None: all)."""
    n_vl: int = 48
    """Typed VL test questions answered (the first of the split)."""
    n_audio: int = 48
    """Spoken test rows answered."""
    n_text: int | None = None
    """Text retention prompts (None: all)."""
    eval_batch: int = 16
    safe_run: str | None = None
    """A Stage A run directory on the same base, encoder and data (e.g. the Gemma track's ``runs/demo-gemma``):
    SAFE's side is its ``checkpoints/final``, with its recipe, steps and training time, instead of a Stage A
    trained here (None)."""


def _load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def encode_text(fmt, prompts: Sequence[str]):
    """Text-only prompts as SAFE's ``Encoded`` (``<bos>`` + the text, no image), for ``fmt.prompt_batch``."""
    from safe.processing.prompts import Encoded

    head = [fmt.bos] if fmt.bos is not None else []
    return Encoded([head + fmt._ids(p) for p in prompts], [[] for _ in prompts])


@torch.no_grad()
def answer(model, fmt, enc, index: Sequence[int], *, pixels=None, audio=None, new_tokens: int, batch: int,
           prefix: AudioPrefixLoRA | None = None) -> list[str]:
    """Greedy answers of ``model`` (a VL model or SAFE) to ``enc``'s rows ``index``; ``pixels`` / ``audio``:
    row stores (or None). With ``prefix`` the answers are the LoRA baseline's, the audio as its prefix."""
    out: list[str] = []
    index = list(index)
    for s in range(0, len(index), batch):
        idx = index[s:s + batch]
        b = fmt.prompt_batch(enc, idx)
        px = pixels[idx] if pixels is not None else None
        au = audio[idx] if audio is not None else None
        if prefix is not None:
            # generate from inputs_embeds alone returns the new tokens only
            out.extend(fmt.decode(prefix.generate(b, px, au, new_tokens), 0))
            continue
        more = {"pixel_values": px} if px is not None else {}
        if au is not None:
            more["audio_embeddings"] = au
        gen = model.generate(**b, **more, max_new_tokens=new_tokens, do_sample=False)
        out.extend(fmt.decode(gen, b["input_ids"].shape[1]))
    return out


def _changed(a: Sequence[str], b: Sequence[str]) -> int:
    return sum(x != y for x, y in zip(a, b))


def _accuracy(examples, preds) -> float:
    from safe.evaluation.metrics import exact_match

    return sum(exact_match(p, e.answers) == 1.0 for p, e in zip(preds, examples)) / max(1, len(examples))


@dataclass
class EvalSets:
    """The rows every model answers: typed VL questions, spoken rows and text prompts, and the clips that are
    unrelated to each (VL rows carry another row's words in the speech track; text prompts borrow spoken rows')."""

    data: object  # PreparedSet of the test rows (VL and spoken)
    vl: list[int]
    spoken: list[int]
    text: object  # Encoded
    prompts: list[str]
    text_source: str

    def text_clips(self):
        """Unrelated clips for the text prompts: the spoken rows' clips, in turn."""
        n = len(self.text.prompts)
        rows = [self.spoken[i % len(self.spoken)] for i in range(n)]
        return _Rows(self.data.audio, rows)


class _Rows:
    """``store[idx]`` through an index map (so text prompt i reads clip ``rows[i]``)."""

    def __init__(self, store, rows):
        self.store, self.rows = store, rows

    def __getitem__(self, idx):
        return self.store[[self.rows[i] for i in idx]]


def evaluate_base(vl, fmt, sets: EvalSets, cfg: CompareConfig) -> dict:
    d, t = sets.data, sets.text
    vl.eval()
    return {"vl": answer(vl, fmt, d.enc, sets.vl, pixels=d.pixels, new_tokens=ANSWER_NEW_TOKENS, batch=cfg.eval_batch),
            "spoken": answer(vl, fmt, d.enc, sets.spoken, pixels=d.pixels, new_tokens=ANSWER_NEW_TOKENS,
                             batch=cfg.eval_batch),
            "text": answer(vl, fmt, t, range(len(t.prompts)), new_tokens=TEXT_NEW_TOKENS, batch=cfg.eval_batch)}


def _figures(name: str, base: dict, got: dict, sets: EvalSets, logits: dict) -> dict:
    d = sets.data
    spoken_rows = [d.examples[i] for i in sets.spoken]
    vl_rows = [d.examples[i] for i in sets.vl]
    n_vl, n_text = len(sets.vl), len(sets.text.prompts)
    return {
        "method": name,
        "text_changed_no_audio": _changed(got["text"], base["text"]),
        "text_changed_unrelated_audio": _changed(got["text_open"], base["text"]),
        "vl_changed_no_audio": _changed(got["vl"], base["vl"]),
        "vl_changed_unrelated_audio": _changed(got["vl_open"], base["vl"]),
        "text_prompts": n_text, "vl_questions": n_vl,
        "vl_accuracy_no_audio": _accuracy(vl_rows, got["vl"]),
        "vl_accuracy_unrelated_audio": _accuracy(vl_rows, got["vl_open"]),
        "spoken_accuracy": _accuracy(spoken_rows, got["spoken"]),
        **logits,
        "text_samples": [{"prompt": p, "base": b, name: g}
                         for p, b, g in list(zip(sets.prompts, base["text"], got["text"]))[:8]],
    }


def logits_check(run, reference: torch.Tensor) -> dict:
    """``torch.equal`` of a batch's logits without audio against the base's, and the largest difference."""
    with torch.no_grad():
        got = run()
    return {"logits_equal_no_audio": bool(torch.equal(got, reference)),
            "logits_max_abs_diff_no_audio": float((got - reference).abs().max())}


def trained_safe_run(run_dir: str | Path, vl_dir, audio_dir, data_dir) -> dict:
    """What a finished Stage A run directory says about itself (its ``run.json`` and Stage A figures), checked
    against the base, encoder and data of this comparison: ValueError naming the disagreement."""
    run = Path(run_dir)
    meta_file, metrics_file = run / "run.json", run / "metrics.json"
    final = run / "checkpoints" / "final"
    if not meta_file.is_file() or not (final / "safe_config.json").is_file():
        raise ValueError(f"--safe-run {run}: not a finished Stage A run (needs run.json and checkpoints/final)")
    meta = json.loads(meta_file.read_text())
    for key, mine in (("base", vl_dir), ("audio", audio_dir), ("data", data_dir)):
        if Path(meta[key]).resolve() != Path(mine).resolve():
            raise ValueError(f"--safe-run {run} was trained with {key} {meta[key]}, this comparison uses {mine}")
    stage_a = json.loads(metrics_file.read_text()).get("stage_a", {}) if metrics_file.is_file() else {}
    if "train_seconds" not in stage_a:
        raise ValueError(f"--safe-run {run}: its metrics.json has no Stage A figures (train_seconds, steps)")
    return {"checkpoint": str(final), "recipe": meta.get("recipe", {}), "steps": stage_a["steps"],
            "seconds": stage_a["train_seconds"]}


def run_safe(model, fmt, train_set, retention_set, sets: EvalSets, base: dict, ref_logits, logit_rows, cfg: CompareConfig,
             recipe, run_dir: Path, progress: bool, trained: dict | None = None) -> dict:
    """Train SAFE's Stage A (resuming a killed run), or take ``trained`` (:func:`trained_safe_run`: ``model``
    is then that run's checkpoint), and answer every set with it."""
    from safe.training.stage_a import StageATrainer

    t0 = time.perf_counter()
    if trained is None:
        trainer = StageATrainer(model, fmt, train_set, retention_set, recipe, run_dir, progress=progress)
        fit = trainer.fit(resume=True)
    else:
        fit = trained
    train_s = time.perf_counter() - t0
    model.eval()
    d, t = sets.data, sets.text
    common = dict(new_tokens=ANSWER_NEW_TOKENS, batch=cfg.eval_batch)
    with model.audio_disabled():
        got = {"vl": answer(model, fmt, d.enc, sets.vl, pixels=d.pixels, **common),
               "text": answer(model, fmt, t, range(len(t.prompts)), new_tokens=TEXT_NEW_TOKENS, batch=cfg.eval_batch)}
    got["vl_open"] = answer(model, fmt, d.enc, sets.vl, pixels=d.pixels, audio=d.audio, **common)
    got["text_open"] = answer(model, fmt, t, range(len(t.prompts)), audio=sets.text_clips(),
                              new_tokens=TEXT_NEW_TOKENS, batch=cfg.eval_batch)
    got["spoken"] = answer(model, fmt, d.enc, sets.spoken, pixels=d.pixels, audio=d.audio, **common)
    logits = logits_check(lambda: model(**d.prompt_inputs(fmt, logit_rows)).logits, ref_logits)
    params = {"trainable": sum(p.numel() for p in model.trainable_parameters()),
              "projector": sum(p.numel() for p in model.projector.parameters())}
    params["adapters"] = params["trainable"] - params["projector"]
    return {**_figures("safe", base, got, sets, logits), "parameters": params,
            "train_seconds": round(fit.get("seconds", train_s), 1), "steps": fit["steps"],
            "answers": got}


def train_lora(prefix: AudioPrefixLoRA, fmt, train_set, lcfg: LoraBaselineConfig, progress: bool) -> dict:
    """The baseline's training: ``steps`` batches of ``batch_size`` audio rows, AdamW, warm-up + cosine."""
    from tqdm.auto import tqdm

    rows = [i for i, n in enumerate(train_set.needs_audio.tolist()) if n]
    if not rows:
        raise ValueError("the LoRA baseline trains on audio rows; the training split has none")
    opt = torch.optim.AdamW([{"params": list(prefix.projector.parameters()), "lr": lcfg.lr_projector},
                             {"params": [p for n, p in prefix.vl.named_parameters() if "lora_" in n],
                              "lr": lcfg.lr_lora}], weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(lcfg.steps, lcfg.warmup_steps))
    g = torch.Generator().manual_seed(lcfg.seed)
    order: list[int] = []
    history = []
    t0 = time.perf_counter()
    prefix.train()
    for step in tqdm(range(lcfg.steps), desc="LoRA baseline", disable=not progress):
        while len(order) < lcfg.batch_size:
            order += [rows[i] for i in torch.randperm(len(rows), generator=g).tolist()]
        idx, order = order[:lcfg.batch_size], order[lcfg.batch_size:]
        batch = fmt.train_batch(train_set.enc, idx)
        loss = prefix.loss(batch, train_set.pixels[idx], train_set.audio[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(prefix.trainable(), 1.0)
        opt.step()
        sched.step()
        history.append({"step": step + 1, "loss": round(loss.item(), 4)})
    prefix.eval()
    return {"seconds": round(time.perf_counter() - t0, 1), "history": history}


def run_lora(vl, fmt, train_set, sets: EvalSets, base: dict, ref_logits, logit_rows, cfg: CompareConfig,
             progress: bool) -> dict:
    """Build the baseline on ``vl``, train it and answer every set with it."""
    from safe.bench.gemma.base import embedding_norm

    d, t = sets.data, sets.text
    audio_dim = train_set.audio[[0]].shape[-1]
    prefix = AudioPrefixLoRA(vl, audio_dim, cfg.lora)
    probe = [i for i in range(min(64, len(train_set)))]
    target = embedding_norm(vl, [i for i in train_set.enc.prompts[0] if i not in (fmt.image, fmt.bos)])
    scale = prefix.scale_projector(train_set.audio[probe], target)
    fit = train_lora(prefix, fmt, train_set, cfg.lora, progress)
    common = dict(new_tokens=ANSWER_NEW_TOKENS, batch=cfg.eval_batch)
    got = {"vl": answer(vl, fmt, d.enc, sets.vl, pixels=d.pixels, **common),
           "text": answer(vl, fmt, t, range(len(t.prompts)), new_tokens=TEXT_NEW_TOKENS, batch=cfg.eval_batch),
           "vl_open": answer(None, fmt, d.enc, sets.vl, pixels=d.pixels, audio=d.audio, prefix=prefix, **common),
           "text_open": answer(None, fmt, t, range(len(t.prompts)), audio=sets.text_clips(), prefix=prefix,
                               new_tokens=TEXT_NEW_TOKENS, batch=cfg.eval_batch),
           "spoken": answer(None, fmt, d.enc, sets.spoken, pixels=d.pixels, audio=d.audio, prefix=prefix, **common)}
    logits = logits_check(lambda: vl(**d.prompt_inputs(fmt, logit_rows)).logits, ref_logits)
    return {**_figures("lora", base, got, sets, logits), "parameters": prefix.parameter_counts(),
            "projector_scale": scale, "train_seconds": fit["seconds"], "steps": cfg.lora.steps,
            "history": fit["history"], "answers": got}


def _pick(examples, n_vl: int, n_audio: int) -> list[int]:
    vl = [i for i, e in enumerate(examples) if not e.needs_audio][:n_vl]
    spoken = [i for i, e in enumerate(examples) if e.needs_audio and not e.is_caption][:n_audio]
    return vl + spoken


def compare(vl_dir: str | Path, audio_dir: str | Path, data_dir: str | Path, out_dir: str | Path,
            cfg: CompareConfig | None = None, *, progress: bool = True) -> dict:
    """Train SAFE and the LoRA baseline on ``data_dir``'s training split (a speech-track folder) over the VL
    base ``vl_dir`` and the audio encoder ``audio_dir``, answer the same sets with the base and both, and write
    the record ``out_dir/lora_baseline.json`` (returned). SAFE's Stage A resumes after a kill
    (``out_dir/safe_run``); the embedding cache is ``out_dir/embeddings``."""
    import gc

    from safe.atomic import write_atomic
    from safe.bench.files import BuiltinSource
    from safe.data.embedding_cache import AudioEmbeddingCache
    from safe.data.prepared import encoder_fingerprint, prepare
    from safe.inference.loading import load_frozen, load_safe, load_trained
    from safe.models.integrity import state_hash
    from safe.training.config import load_stage_a_config

    cfg = cfg or CompareConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0, load_start = time.perf_counter(), _load_avg()
    lc = cfg.lora
    recipe = load_stage_a_config(SAFE_RECIPE, recipe_overrides(cfg))
    trained = trained_safe_run(cfg.safe_run, vl_dir, audio_dir, data_dir) if cfg.safe_run else None
    if trained is None:
        model, fmt, frontend = load_safe(vl_dir, recipe, audio_dir)
    else:
        model, fmt, frontend = load_trained(vl_dir, trained["checkpoint"], audio_dir)
    source = BuiltinSource(data_dir)
    cache = AudioEmbeddingCache(out / "embeddings", encoder_fingerprint(model.audio_encoder, frontend))
    test = source.split("test")
    chosen = _pick(test, cfg.n_vl, cfg.n_audio)
    train_set = prepare(source.split("train")[:cfg.max_train], fmt, model, frontend, cache, progress=progress)
    retention_set = prepare(source.split("retention"), fmt, model, frontend, cache, progress=progress)
    data = prepare([test[i] for i in chosen], fmt, model, frontend, cache, progress=progress)
    prompts, text_source = text_prompts(cfg.n_text)
    sets = EvalSets(data, [i for i, e in enumerate(data.examples) if not e.needs_audio],
                    [i for i, e in enumerate(data.examples) if e.needs_audio], encode_text(fmt, prompts), prompts,
                    text_source)
    logit_rows = sets.vl[:4]
    frozen_before = state_hash(model.base_model)
    with model.hooks_detached() as vl:
        base = evaluate_base(vl, fmt, sets, cfg)
        with torch.no_grad():
            ref_logits = vl(**data.prompt_inputs(fmt, logit_rows)).logits
    safe = run_safe(model, fmt, train_set, retention_set, sets, base, ref_logits, logit_rows, cfg, recipe,
                    out / "safe_run", progress, trained)
    safe["base_byte_identical"] = state_hash(model.base_model) == frozen_before
    del model
    gc.collect()
    vl, encoder, _, _ = load_frozen(vl_dir, audio_dir)
    del encoder
    lora = run_lora(vl, fmt, train_set, sets, base, ref_logits, logit_rows, cfg, progress)
    spoken_rows = [data.examples[i] for i in sets.spoken]
    record = {
        "format_version": FORMAT_VERSION, "vl_base": str(vl_dir), "audio_encoder": str(audio_dir),
        "data": str(data_dir), "train_rows": len(train_set),
        "train_audio_rows": int(train_set.needs_audio.sum()), "config": {
            "lora": lc.to_dict(),
            **({"safe_recipe": SAFE_RECIPE, "safe_overrides": list(recipe_overrides(cfg))} if trained is None else
               {"safe_run": str(cfg.safe_run), "safe_recipe": trained["recipe"]}),
            "n_vl": len(sets.vl), "n_spoken": len(sets.spoken), "n_text": len(prompts)},
        "text_source": text_source,
        "base": {"spoken_accuracy": _accuracy(spoken_rows, base["spoken"]),
                 "vl_accuracy": _accuracy([data.examples[i] for i in sets.vl], base["vl"]), "answers": base},
        "vl_base_build": _build_summary(vl_dir),
        "safe": safe, "lora": lora, "torch_threads": torch.get_num_threads(),
        "load_average_start": load_start, "load_average_end": _load_avg(), "cpu_count": os.cpu_count(),
        "seconds": round(time.perf_counter() - t0, 1), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    write_atomic(out / RECORD, json.dumps(record, indent=1, sort_keys=True) + "\n")
    return record


def _build_summary(vl_dir) -> dict | None:
    """The Gemma base's own build record (its vision side's steps and accuracy), when the folder has one."""
    f = Path(vl_dir) / "safe_gemma_build.json"
    if not f.is_file():
        return None
    b = json.loads(f.read_text())
    return {k: b.get(k) for k in ("steps", "monitor_accuracy", "lm_sha256", "config_hash")}


def recipe_overrides(cfg: CompareConfig) -> list[str]:
    lc = cfg.lora
    return [*cfg.safe_overrides, f"steps={lc.steps}", f"batch_size={lc.batch_size}", f"warmup_steps={lc.warmup_steps}",
            f"seed={lc.seed}"]


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    from safe.bench.gemma.__main__ import cache_root

    root = cache_root()
    d = LoraBaselineConfig()
    p = argparse.ArgumentParser(prog="python -m safe.bench.gemma.lora_baseline", description=__doc__.split("\n\n")[0])
    p.add_argument("--base", default=str(root / "gemma" / "vl"), help="the VL base (default $SAFE_CACHE/gemma/vl)")
    p.add_argument("--audio", default=str(root / "whisper-tiny.en" / "window-2s"), help="the audio encoder folder")
    p.add_argument("--data", default=str(root / "speech"), help="the speech track's data folder")
    p.add_argument("--out", default="runs/gemma-lora", help="output folder (record, SAFE's run, embeddings)")
    p.add_argument("--steps", type=int, default=d.steps, help="optimiser steps of each method (the shared budget)")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lora-rank", type=int, default=d.lora_rank)
    p.add_argument("--max-train", type=int, default=None, help="training rows read (default all)")
    p.add_argument("--n-vl", type=int, default=48)
    p.add_argument("--n-audio", type=int, default=48)
    p.add_argument("--n-text", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--safe-run", default=None,
                   help="a finished Stage A run on the same base, encoder and data (e.g. runs/demo-gemma): SAFE's "
                        "side is its checkpoints/final instead of a Stage A trained here")
    p.add_argument("--docs", nargs="*", default=None, help="after the run, rewrite the section in these files")
    a = p.parse_args(argv)
    if a.steps < 1 or a.batch_size < 1 or a.lora_rank < 1:
        p.error("--steps, --batch-size and --lora-rank must be >= 1")
    for flag, path in (("--base", a.base), ("--audio", a.audio), ("--data", a.data)):
        if not Path(path).is_dir():
            print(f"error: {flag} {path}: no such folder", file=sys.stderr)
            return 2
    if a.threads:
        torch.set_num_threads(a.threads)
    lora = LoraBaselineConfig(steps=a.steps, batch_size=a.batch_size, lora_rank=a.lora_rank,
                              lora_alpha=2 * a.lora_rank, warmup_steps=min(d.warmup_steps, a.steps - 1))
    cfg = CompareConfig(lora=lora, max_train=a.max_train, n_vl=a.n_vl, n_audio=a.n_audio, n_text=a.n_text,
                        safe_run=a.safe_run)
    record = compare(a.base, a.audio, a.data, a.out, cfg)
    from safe.bench.gemma import lora_docs

    print(lora_docs.block(record, str(Path(a.out) / RECORD)))
    if a.docs is not None:
        lora_docs.write(Path(a.out) / RECORD, a.docs or ["docs/gemma.md"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
