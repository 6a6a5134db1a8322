"""``safe train``: Stage A (projector + gated adapters) into a run directory, every setting a flag
(``--stage_a.steps``, ``--stage_a.safe.lora_rank``) over a recipe (``--config``, default the built-in one)."""
from __future__ import annotations

import hashlib
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

from safe.data.source import DataSource
from safe.models.integrity import state_hash
from safe.runs import RunDir, StageResult
from safe.stages.common import DataOptions, DType, StageError, base_path, data_source, load_options, record_run
from safe.stages.options import given_flags
from safe.training.config import StageAConfig

#: The recipe ``safe train``, ``safe ablate`` and ``safe demo`` start from (a file of safe.training's recipes).
BUILTIN_RECIPE = "stage_a_builtin.yaml"


@dataclass
class TrainConfig(DataOptions):
    """Options of ``safe train``: the run, its data and base models, and the Stage A settings (a ``--config``
    recipe holds the same settings as YAML, ``stage_a:`` and its keys)."""

    DEFAULT_CONFIG: ClassVar[str] = BUILTIN_RECIPE

    stage_a: StageAConfig = field(default_factory=StageAConfig, metadata={"group": True})
    """Stage A"""
    dtype: DType = "float32"
    """Dtype of the frozen parts."""
    template: str | None = None
    """Prompt template with {question} and <image> (checkpoints; default per architecture)."""
    fresh: bool = False
    """Ignore checkpoints in the run directory (default: resume)."""
    tiny: bool = field(default=False, metadata={"hidden": True})
    """Tiny benchmark and models (for tests)."""
    continue_on_gate_failure: bool = False
    """Train even when the run's recorded Stage 1 verification failed (default: stop, naming the gate)."""
    modality: str = "audio"
    """The modality Stage A trains: audio (the rows' clips), or one whose maps a data spec's source names
    (modalities: {NAME: COLUMN}, e.g. depth): its rows are those naming a map, the VL-only rows its retention
    rows with an unrelated map (docs/data.md)."""
    modality_encoder: str | None = None
    """The frozen encoder of --modality when it is not audio: a folder holding a transformers vision model and
    its image processor (ViT, Dinov2, SigLIP / CLIP vision, ConvNext; default for depth: the depth encoder SAFE
    ships)."""


@dataclass
class StageAResult(StageResult):
    """Stage A's figures (``metrics.json`` key ``stage_a``) and where its SAFE weights are."""

    KEY = "stage_a"

    @property
    def checkpoint(self) -> Path:
        return Path(self.metrics["checkpoint"])

    @property
    def ok(self) -> bool:
        """The frozen base and encoder are byte-identical after training."""
        return bool(self.metrics.get("frozen_byte_identical"))

    def summary(self) -> str:
        m = self.metrics
        a = m.get("modality", "audio")  # a run of another modality names its figures after it
        what = "clip, VL rows with unrelated audio" if a == "audio" else f"{a} map, VL rows with an unrelated one"
        lines = [f"Stage A summary (test split; gate open = each row with its own {what})"]
        rows = [
            ("VL accuracy, base", m["vl_accuracy_base"]),
            ("VL accuracy, SAFE gate closed", m["vl_accuracy_gate_closed"]),
            ("VL accuracy, SAFE gate open", m["vl_accuracy_gate_open"]),
            ("VL retention ratio (gate open / base)", m["vl_retention_ratio_gate_open"]),
            ("answers identical to base, gate closed", m["answers_identical_gate_closed"]),
            (f"{a}-dependent accuracy, base", m[f"{a}_accuracy_base"]),
            (f"{a}-dependent accuracy, SAFE", m[f"{a}_accuracy"]),
        ]
        if "caption_cider_d" in m:
            rows += [("caption CIDEr-D, base", m["caption_cider_d_base"]),
                     ("caption CIDEr-D, SAFE", m["caption_cider_d"]),
                     ("caption BLEU-2, base", m["caption_bleu2_base"]), ("caption BLEU-2, SAFE", m["caption_bleu2"])]
        lines += [f"  {name:<42}{v:>8.3f}" for name, v in rows]
        lines.append(f"  {'VL answers changed with gate open':<42}{m['vl_answers_changed_gate_open']:>8d} of "
                     f"{m['vl_examples']}")
        lines.append(f"  {'base + encoder byte-identical (sha256)':<42}{'yes' if m['frozen_byte_identical'] else 'NO':>8}")
        lines.append("  per family (base -> SAFE gate open):")
        lines += [f"    {fam:<18}{v['base']:>7.3f} -> {v['open']:.3f}" for fam, v in m["per_family"].items()]
        for split, r in (m.get("modality_rows") or {}).items():
            lines.append(f"  {split}: {r['with_map']} rows with a {a} map, {r['paired']} VL rows given an unrelated "
                         f"one, {r['dropped_audio']} audio rows left out")
        lines.append(f"  Stage A took {m['seconds']:.0f} s ({m['train_seconds']:.0f} s training, {m['steps']} steps)")
        lines.append(f"SAFE weights: {m['checkpoint']}")
        return "\n".join(lines)


def train(cfg: TrainConfig) -> StageAResult:
    """Stage A: train into ``cfg.run_dir`` (resuming a killed run unless ``fresh``), evaluate on the test
    split, record ``stage_a``. With no ``--base`` the built-in models are built first when missing."""
    from safe.models.loading import parse_dtype
    from safe.stages.builtin import BaseBuildConfig, build_base
    from safe.training.config import load_stage_a_config

    opts = load_options(cfg)  # a bad loading flag fails before anything is built
    recipe = cfg.stage_a
    if cfg.tiny and "stage_a.safe.fusion_layers" not in given_flags(cfg):
        recipe = load_stage_a_config(base=recipe, overrides=["safe.fusion_layers=[0, -1]"])  # the tiny LM: 2 layers
    dtype = parse_dtype(cfg.dtype)
    data = data_source(cfg.data, tiny=cfg.tiny, create=cfg.data is None)
    share = getattr(data, "audio_share", None)  # a data spec's share wins over the recipe's, a flag over both
    if share is not None and "stage_a.audio_share" not in given_flags(cfg):
        recipe = load_stage_a_config(base=recipe, overrides=[f"audio_share={share}"])
    base = base_path(cfg.base, tiny=cfg.tiny)
    encoder = modality_encoder(cfg)
    if encoder is not None and cfg.base is None and not (base / "manifest.json").is_file():
        from safe.bench.build import SHIPPED_DIR

        base = SHIPPED_DIR  # another modality needs only the VL model: the built-in one SAFE ships
    elif cfg.base is None and not (base / "manifest.json").is_file():
        if not hasattr(data, "root"):
            raise StageError(f"--base: no built-in models at {base}; with a data spec pass --base and --audio "
                             "(a local checkpoint of a supported VLM family and of a supported audio encoder)")
        build_base(BaseBuildConfig(data=str(data.root), out=str(base), tiny=cfg.tiny, run_dir=None))
    run = RunDir(cfg.run_dir)
    from safe.evaluation.gates import stage1_gate
    from safe.stages.common import check_gate
    from safe.stages.verify import VerifyResult

    verified = run.read(VerifyResult)
    if verified is not None:  # the Stage 1 go / no-go gate: no Stage A on a base that failed verification
        check_gate(run.path, stage1_gate(verified.metrics), cfg.continue_on_gate_failure)
    metrics = run_stage_a(data, base, recipe, run.path, audio=cfg.audio, dtype=dtype, template=cfg.template,
                          fresh=cfg.fresh, load_options=opts, modality=cfg.modality, modality_encoder=encoder)
    if metrics.get("main_process", True):
        result = StageAResult({k: v for k, v in metrics.items() if k != "samples"})
        run.record(result)
        record_run(run.path, base=base, audio=cfg.audio, data=cfg.data if cfg.data is not None else data.root,
                   data_fingerprint=data.fingerprint(), recipe=recipe.to_dict(), dtype=cfg.dtype,
                   template=cfg.template,
                   **({"modality": cfg.modality, "modality_encoder": str(encoder)} if encoder is not None else {}))
    from accelerate import PartialState

    # Several processes: the others wait for the main one's record and print it.
    PartialState(cpu=not torch.cuda.is_available()).wait_for_everyone()
    return result if metrics.get("main_process", True) else run.read(StageAResult)


def modality_encoder(cfg: TrainConfig) -> Path | None:
    """The encoder folder of ``--modality`` (None for audio); StageError naming the flag for a bad name or a
    missing encoder."""
    from safe.models.modality import check_modality_name

    if cfg.modality == "audio":
        if cfg.modality_encoder is not None:
            raise StageError("--modality-encoder is for --modality other than audio; the audio encoder is --audio")
        return None
    try:
        check_modality_name(cfg.modality)
    except ValueError as err:
        raise StageError(f"--modality: {err}") from None
    if cfg.audio is not None:
        raise StageError(f"--audio names an audio encoder; --modality {cfg.modality} trains without one (its "
                         "encoder is --modality-encoder)")
    if cfg.modality_encoder is None:
        if cfg.modality != "depth":
            raise StageError(f"--modality {cfg.modality}: give its frozen encoder with --modality-encoder DIR (a "
                             "transformers vision model with its image processor)")
        from safe.bench.depth import SHIPPED_DEPTH_ENCODER

        return SHIPPED_DEPTH_ENCODER
    path = Path(cfg.modality_encoder)
    if not (path / "config.json").is_file() or not (path / "preprocessor_config.json").is_file():
        raise StageError(f"--modality-encoder: {path} is not an encoder folder (a transformers vision model's "
                         "config.json and weights, with its image processor's preprocessor_config.json)")
    return path


def text_retention_file(path: str | None, data: DataSource) -> Path | None:
    """Where ``stage_a.text_retention`` points: an absolute path, a path from the working directory, or one in the
    data folder (a data source's ``root``); StageError naming the setting when none exists."""
    if path is None:
        return None
    p = Path(path).expanduser()
    tried = [p] if p.is_absolute() else [p, *([Path(data.root) / p] if hasattr(data, "root") else [])]
    for c in tried:
        if c.is_file():
            return c
    raise StageError(f"stage_a.text_retention: no file {path!r} (looked at {', '.join(str(c) for c in tried)})")


def run_stage_a(data: DataSource, base_dir: str | Path, cfg: StageAConfig, run_dir: str | Path, *,
                audio: str | Path | None = None, dtype=torch.float32, template: str | None = None,
                fresh: bool = False, stop_after: int | None = None, eval_split: str = "test",
                max_train: int | None = None, max_eval: int | None = None, progress: bool = True,
                load_options: dict | None = None, modality: str = "audio",
                modality_encoder: str | Path | None = None) -> dict:
    """Train Stage A on ``data``'s ``train`` and ``retention`` splits into ``run_dir`` (resuming a killed
    run unless ``fresh``) and evaluate on its ``eval_split``. ``base_dir``/``audio``: see
    :func:`load_safe`. ``modality`` other than audio: train that modality from the data's maps
    (:mod:`safe.data.modality_rows`) with the frozen encoder folder ``modality_encoder``; the metrics then name
    it (``depth_accuracy`` ...). Returns the ``stage_a`` metrics."""
    from accelerate import PartialState

    from safe.data.embedding_cache import AudioEmbeddingCache
    from safe.data.prepared import encoder_fingerprint, prepare
    from safe.inference.loading import load_safe
    from safe.training.evaluate import evaluate_stage_a
    from safe.training.stage_a import StageATrainer
    from safe.training.text_retention import load_prompts

    run_dir = Path(run_dir)
    t0 = time.perf_counter()
    if modality == "audio":
        model, fmt, frontend = load_safe(base_dir, cfg, audio, dtype=dtype, template=template, **(load_options or {}))
    else:
        from safe.inference.loading import load_modality_safe

        model, fmt, frontend = load_modality_safe(base_dir, cfg, modality, modality_encoder, dtype=dtype,
                                                  template=template, **(load_options or {}))
    hashes = {"base_vl": state_hash(model.base_model), f"{modality}_encoder": state_hash(model.audio_encoder)}
    # cpu= as the trainer's Accelerator (accelerate needs it to join several CPU processes). Under
    # `accelerate launch`, the main process cleans the run and fills the cache; the others follow.
    state = PartialState(cpu=not torch.cuda.is_available())
    if fresh and state.is_main_process:  # only once the models loaded: a typo in --base must not wipe a good run
        for sub in ("checkpoints", "logs/stage_a"):
            if (run_dir / sub).exists():
                shutil.rmtree(run_dir / sub)
    train = data.split("train")[:max_train]
    retention = data.split("retention")
    test = data.split(eval_split)[:max_eval]
    rows = {}
    with state.main_process_first():
        if modality == "audio":
            cache = AudioEmbeddingCache(data.cache_dir, encoder_fingerprint(model.audio_encoder, frontend))
            train_set, retention_set, test_set = (prepare(split, fmt, model, frontend, cache, progress=progress)
                                                  for split in (train, retention, test))
        else:
            from safe.data.modality_rows import map_pool, modality_encoder_id, prepare_modality

            cache = AudioEmbeddingCache(data.cache_dir, modality_encoder_id(model, frontend))
            pool = map_pool(train, modality)
            (train_set, rows["train"]), (retention_set, rows["retention"]), (test_set, rows[eval_split]) = (
                prepare_modality(split, fmt, model, frontend, modality, cache, pool=pool, progress=progress)
                for split in (train, retention, test))
    prep_seconds = time.perf_counter() - t0
    text_file = text_retention_file(cfg.text_retention, data)
    text_prompts = load_prompts(text_file) if text_file is not None else None
    fingerprint = {**hashes, "benchmark": data.fingerprint(),
                   "max_train": max_train}
    if text_prompts is not None:  # another prompt set is another run: a checkpoint of the old one is refused
        fingerprint["text_retention"] = hashlib.sha256("\n".join(text_prompts).encode()).hexdigest()
    trainer = StageATrainer(model, fmt, train_set, retention_set, cfg, run_dir, progress=progress,
                            fingerprint=fingerprint, text_prompts=text_prompts)
    fit = trainer.fit(resume=True, stop_after=stop_after)
    if fit.get("interrupted"):
        return fit
    if not state.is_main_process:  # the main process evaluates and writes; the others are done
        return {"steps": fit["steps"], "main_process": False}
    from safe.processing.processor import SAFEProcessor  # beside the weights: the checkpoint is complete for inference

    if modality == "audio":
        processor = SAFEProcessor.from_components(fmt, frontend, model.base_model, base=base_dir, audio=audio)
    else:  # the modality's front end and encoder folder, so `safe predict --run-dir` finds both
        from safe.processing.features import BuiltinFrontEnd

        processor = SAFEProcessor.from_components(fmt, BuiltinFrontEnd(), model.base_model, base=base_dir,
                                                  modalities={modality: frontend})
        processor.sources[modality] = str(Path(modality_encoder).resolve())
    processor.save_pretrained(run_dir / "checkpoints" / "final")
    t1 = time.perf_counter()
    result = evaluate_stage_a(model, fmt, test_set, progress=progress)
    after = {"base_vl": state_hash(model.base_model), f"{modality}_encoder": state_hash(model.audio_encoder)}
    if modality != "audio":  # the figures name the modality they measure (as the depth track's do)
        result = {k.replace("audio_", f"{modality}_"): v for k, v in result.items()}
        result.update(modality=modality, modality_encoder=str(modality_encoder),
                      modality_rows={k: v.to_dict() for k, v in rows.items()})
    return {
        **result,
        "eval_split": eval_split,
        "frozen_hashes_before": hashes, "frozen_hashes_after": after,
        "frozen_byte_identical": hashes == after,
        "train_seconds": fit["seconds"], "prepare_seconds": round(prep_seconds, 2),
        "eval_seconds": round(time.perf_counter() - t1, 2),
        "seconds": round(time.perf_counter() - t0, 2),
        "steps": fit["steps"], "lambda_retention_final": fit["lambda_retention"], "curriculum": fit["curriculum"],
        "base_retention_accuracy": fit["base_retention_accuracy"],
        "retention_buffer": {**(data.retention_source() if hasattr(data, "retention_source") else
                                {"source": f"the {data.name} source's retention split", "rows": len(retention)}),
                             "rows_per_measurement": len(trainer.retention)},
        **({"text_retention": {"file": str(text_file), "prompts": len(text_prompts),
                               "rows_per_step": cfg.text_retention_rows * cfg.grad_accum,
                               "reference": "the base's own greedy answer"}} if text_prompts else {}),
        "embedding_cache": {"hits": cache.hits, "misses": cache.misses},
        "history": fit["history"], "config": cfg.to_dict(),
        "parameters": dict(model.parameter_report()),
        "checkpoint": str(run_dir / "checkpoints" / "final"),
        **({"data": data.summary()} if hasattr(data, "summary") else {}),  # a data spec: rows, skips, tasks per split
    }
