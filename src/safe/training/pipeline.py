"""Stage A end to end on the built-in benchmark and models: prepare -> train -> evaluate -> record."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch

from safe.data import synth
from safe.models.builtin_vl import load_vl_model
from safe.models.integrity import state_hash
from safe.models.safe_model import SAFEModel
from safe.training.config import StageAConfig


def is_builtin_dir(path: str | Path) -> bool:
    """A ``safe base build`` output folder (manifest + vl/ + audio_encoder/)."""
    p = Path(path)
    return (p / "manifest.json").is_file() and (p / "vl").is_dir() and (p / "audio_encoder").is_dir()


def load_frozen(base: str | Path, audio: str | Path | None = None, *, dtype=torch.float32,
                template: str | None = None):
    """(frozen VL model, frozen audio encoder, prompt format, audio front end).

    ``base``: a built-in folder from ``safe base build`` (its own audio encoder is used unless
    ``audio`` is given), or a local LLaVA / BLIP-2 checkpoint directory with its tokenizer and image
    processor, in which case ``audio`` must name a local CLAP / Whisper checkpoint with its feature
    extractor."""
    from safe.models.loading import load_audio_encoder, load_base
    from safe.processing.features import BuiltinFrontEnd, FeatureFrontEnd
    from safe.processing.hf_prompts import ProcessorFormat

    if is_builtin_dir(base):
        base = Path(base)
        vl, _, fmt = load_vl_model(base / "vl", dtype=dtype)
        encoder = load_audio_encoder(str(audio or base / "audio_encoder"), dtype)
        frontend = BuiltinFrontEnd() if audio is None else FeatureFrontEnd(audio)
        return vl, encoder, fmt, frontend
    if not (Path(base) / "config.json").is_file():
        raise FileNotFoundError(f"--base {base} is neither a built-in models folder (manifest.json, vl/, "
                                "audio_encoder/ from `safe base build`) nor a checkpoint directory (config.json)")
    if audio is None:
        raise ValueError(f"--audio must name a local CLAP / Whisper checkpoint when --base is a checkpoint ({base})")
    vl, encoder = load_base(str(base), dtype), load_audio_encoder(str(audio), dtype)
    return vl, encoder, ProcessorFormat(base, vl, template), FeatureFrontEnd(audio)


def load_safe(base: str | Path, cfg: StageAConfig, audio: str | Path | None = None, *, dtype=torch.float32,
              template: str | None = None):
    """(SAFE model, prompt format, audio front end) with SAFE parts initialised from ``cfg.seed``;
    ``base`` / ``audio``: see :func:`load_frozen`."""
    vl, encoder, fmt, frontend = load_frozen(base, audio, dtype=dtype, template=template)
    torch.manual_seed(cfg.seed)
    return SAFEModel(vl, encoder, cfg.safe_config()), fmt, frontend


def load_trained(base: str | Path, checkpoint: str | Path, audio: str | Path | None = None, *,
                 dtype=torch.float32, template: str | None = None):
    """(SAFE model loaded from a ``save_pretrained`` folder, prompt format, audio front end), in eval mode."""
    checkpoint = Path(checkpoint)
    if not (checkpoint / "safe_config.json").is_file():
        raise FileNotFoundError(f"{checkpoint} is not a SAFE checkpoint (no safe_config.json); "
                                "train Stage A first (safe train) or pass --checkpoint")
    vl, encoder, fmt, frontend = load_frozen(base, audio, dtype=dtype, template=template)
    return SAFEModel.from_pretrained(checkpoint, vl, encoder).eval(), fmt, frontend


def run_stage_a(bench_dir: str | Path, base_dir: str | Path, cfg: StageAConfig, run_dir: str | Path, *,
                audio: str | Path | None = None, dtype=torch.float32, template: str | None = None,
                fresh: bool = False, stop_after: int | None = None, eval_split: str = "test",
                max_train: int | None = None, max_eval: int | None = None, progress: bool = True) -> dict:
    """Train Stage A into ``run_dir`` (resuming a killed run unless ``fresh``) and evaluate on
    ``eval_split``. ``base_dir``/``audio``: see :func:`load_safe`. Returns the ``stage_a`` metrics."""
    from safe.data.embedding_cache import AudioEmbeddingCache
    from safe.evaluation.stage_a import evaluate_stage_a
    from safe.training.data import encoder_fingerprint, prepare
    from safe.training.stage_a import StageATrainer

    run_dir = Path(run_dir)
    t0 = time.perf_counter()
    model, fmt, frontend = load_safe(base_dir, cfg, audio, dtype=dtype, template=template)
    hashes = {"base_vl": state_hash(model.base_model), "audio_encoder": state_hash(model.audio_encoder)}
    if fresh:  # only once the models loaded: a typo in --base must not wipe a good run
        for sub in ("checkpoints", "logs/stage_a"):
            if (run_dir / sub).exists():
                shutil.rmtree(run_dir / sub)
    cache = AudioEmbeddingCache(Path(bench_dir) / ".embedding_cache", encoder_fingerprint(model.audio_encoder, frontend))
    train = synth.load_split(bench_dir, "train")[:max_train]
    retention = synth.load_split(bench_dir, "retention")
    test = synth.load_split(bench_dir, eval_split)[:max_eval]
    train_set = prepare(train, fmt, model, frontend, cache, progress=progress)
    retention_set = prepare(retention, fmt, model, frontend, cache, progress=progress)
    test_set = prepare(test, fmt, model, frontend, cache, progress=progress)
    prep_seconds = time.perf_counter() - t0
    fingerprint = {**hashes, "benchmark": synth.benchmark_fingerprint(bench_dir),
                   "max_train": max_train}
    trainer = StageATrainer(model, fmt, train_set, retention_set, cfg, run_dir, progress=progress,
                            fingerprint=fingerprint)
    fit = trainer.fit(resume=True, stop_after=stop_after)
    if fit.get("interrupted"):
        return fit
    from safe.processing.processor import SAFEProcessor  # the checkpoint is complete for inference

    SAFEProcessor.from_components(fmt, frontend, model.base_model, base=base_dir, audio=audio).save_pretrained(
        run_dir / "checkpoints" / "final")
    t1 = time.perf_counter()
    result = evaluate_stage_a(model, fmt, test_set, progress=progress)
    after = {"base_vl": state_hash(model.base_model), "audio_encoder": state_hash(model.audio_encoder)}
    return {
        **result,
        "eval_split": eval_split,
        "frozen_hashes_before": hashes, "frozen_hashes_after": after,
        "frozen_byte_identical": hashes == after,
        "train_seconds": fit["seconds"], "prepare_seconds": round(prep_seconds, 2),
        "eval_seconds": round(time.perf_counter() - t1, 2),
        "seconds": round(time.perf_counter() - t0, 2),
        "steps": fit["steps"], "lambda_retention_final": fit["lambda_retention"],
        "base_retention_accuracy": fit["base_retention_accuracy"],
        "embedding_cache": {"hits": cache.hits, "misses": cache.misses},
        "history": fit["history"], "config": cfg.to_dict(),
        "parameters": dict(model.parameter_report()),
        "checkpoint": str(run_dir / "checkpoints" / "final"),
    }
