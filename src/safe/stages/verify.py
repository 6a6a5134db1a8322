"""``safe verify``: Stage 1 safety verification (bit-exact bypass, frozen weights, parameter table) of one
base x encoder pair, or of every tiny preset pair; with ``--certificate``, of a trained run's own model,
written as a deployment certificate that ``safe serve --certificate`` checks (:mod:`safe.models.certificate`)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from safe.runs import RunDir, StageResult
from safe.stages.common import DType, LoadOptions, StageError, check_device, load_options


@dataclass
class VerifyConfig(LoadOptions):
    """Options of ``safe verify``."""

    base: str | None = None
    """Tiny preset (llava, blip2-opt, blip2-t5, llava-next, llava-onevision, qwen2-vl, qwen2.5-vl, qwen3-vl,
    idefics3, smolvlm, gemma3, paligemma, mllama, internvl, mistral3) or a local checkpoint directory of a
    supported family (with its processor). Default: with --run-dir of a trained run, the base it was trained on;
    else llava."""
    audio: str | None = None
    """Tiny preset (whisper, clap, ast, wav2vec2, hubert, wavlm, qwen2-audio) or a local checkpoint directory
    of a supported audio encoder. Default: with --run-dir of a trained run, its encoder; else whisper."""
    all_presets: bool = False
    """Verify every tiny base x encoder preset pair (every family x every encoder)."""
    dtype: DType = "float32"
    """Dtype of the frozen parts."""
    device: str = "cpu"
    """Torch device, e.g. cpu or cuda:0."""
    fusion_layers: list[int] = field(default_factory=lambda: [0, -1])
    """Decoder layers to fuse after (negative counts from the end)."""
    batch: int = 4
    """Verification batch size (>= 2; half the rows use audio)."""
    modalities: bool = False
    """Also verify, per base, a two-modality model: the (first) audio encoder plus a tiny ViT depth encoder
    (rows using neither are the base; rows using one alone are as with it only; each encoder runs on its rows)."""
    run_dir: str | None = None
    """Also record the results under this run directory (merged with earlier verify calls of the run)."""
    certificate: str | None = None
    """Verify the trained model of --run-dir (its base, encoder and SAFE weights, instead of --base x --audio) and
    write a deployment certificate (JSON: the checks, SHA-256 of each part's weights, library versions) to this
    file, for safe serve --certificate."""

    def __post_init__(self) -> None:
        self._fill_from_run()
        if self.certificate is not None and not self.run_dir:
            raise StageError("--certificate needs --run-dir: the trained run whose model is verified and certified")
        load_options(self)  # a bad loading flag fails before anything is built
        if isinstance(self.batch, bool) or not isinstance(self.batch, int) or self.batch < 2:
            raise StageError(f"--batch must be an integer >= 2 (a mix of audio and no-audio rows), got {self.batch!r}")
        if self.modalities and self.batch < 4:
            raise StageError(f"--modalities needs --batch >= 4 (rows using audio, depth, both and neither), got {self.batch}")
        if not self.fusion_layers or not all(isinstance(v, int) and not isinstance(v, bool) for v in self.fusion_layers):
            raise StageError(f"--fusion-layers must be a non-empty list of integers, got {self.fusion_layers!r}")


    def _fill_from_run(self) -> None:
        """Neither --base nor --audio given: the pair a trained --run-dir recorded (a built-in models folder as
        its vl/ and audio_encoder/), else the llava x whisper presets."""
        from pathlib import Path

        from safe.inference.loading import is_builtin_dir
        from safe.stages.common import run_record

        rec = run_record(self.run_dir) if self.base is None and self.audio is None and not self.all_presets else None
        if rec is not None and is_builtin_dir(rec["base"]):
            self.base = str(Path(rec["base"]) / "vl")
            self.audio = rec["audio"] or str(Path(rec["base"]) / "audio_encoder")
        elif rec is not None:
            self.base, self.audio = rec["base"], rec["audio"]
        self.base = self.base or "llava"
        self.audio = self.audio or "whisper"


@dataclass
class VerifyResult(StageResult):
    """Every pair's checks (``metrics.json`` key ``verify``: ``passed`` and ``models``)."""

    KEY = "verify"
    tables: list[str] = field(default_factory=list)
    certificate: str | None = None

    @property
    def ok(self) -> bool:
        return bool(self.metrics.get("passed"))

    def summary(self) -> str:
        n = len(self.metrics.get("models", {}))
        lines = [*self.tables, f"verification {'PASSED' if self.ok else 'FAILED'} for {n} model pair(s)"]
        if self.certificate:
            lines.append(f"deployment certificate written to {self.certificate}" if self.ok
                         else f"no certificate written to {self.certificate}: the verification failed")
        return "\n".join(lines)


def verify(cfg: VerifyConfig) -> VerifyResult:
    """Run :func:`safe.evaluation.safety.verify_model` on each pair; with ``run_dir``, merge the pairs into
    that run's ``verify`` record (a demo verifies its built-in pair and the presets in two calls)."""
    import torch

    from safe.bench import presets
    from safe.models.loading import parse_dtype

    dtype = parse_dtype(cfg.dtype)
    check_device(cfg.device)
    bases = list(presets.BASE_PRESETS) if cfg.all_presets else [] if cfg.certificate else [cfg.base]
    encoders = list(presets.AUDIO_PRESETS) if cfg.all_presets else [cfg.audio]
    load = load_options(cfg)
    models, tables = {}, []
    threads = torch.get_num_threads()
    if cfg.all_presets:  # tiny models: one thread is ~20x faster than two on a busy machine (measured)
        torch.set_num_threads(1)
    try:
        for base_spec in bases:  # one base per family, reused (unhooked) by every encoder
            models.update(_verify_base(cfg, base_spec, encoders, dtype, load, tables))
    finally:
        torch.set_num_threads(threads)
    certified = _verify_run(cfg, dtype, models, tables) if cfg.certificate else None
    out = VerifyResult({"passed": all(m["passed"] for m in models.values()), "models": models}, tables,
                       cfg.certificate)
    if certified is not None and out.ok:
        from safe.models.certificate import write_certificate

        model, source = certified
        checks = [{"model": name, **c} for name, m in models.items() for c in m["checks"]]
        write_certificate(cfg.certificate, model, checks, passed=True, source=source)
    if cfg.run_dir:
        run = RunDir(cfg.run_dir)
        earlier = run.read(VerifyResult)
        merged = {**(earlier.metrics.get("models", {}) if earlier else {}), **models}
        run.record(VerifyResult({"passed": all(m["passed"] for m in merged.values()), "models": merged}))
    return out


def _verify_run(cfg: VerifyConfig, dtype, models: dict, tables: list[str]):
    """Verify the trained model of ``cfg.run_dir`` (as ``safe serve`` loads it) on random inputs, adding its
    entry to ``models`` / ``tables``; returns ``(model, source)`` for the certificate."""
    import torch

    from safe.bench import presets
    from safe.evaluation.safety import Check, verify_model
    from safe.inference.pipeline import find_checkpoint, pipeline
    from safe.models.certificate import fingerprints

    t0 = time.perf_counter()
    ckpt = find_checkpoint(cfg.run_dir)
    p = pipeline(ckpt, dtype=dtype, device=cfg.device)
    model = p.model.eval()
    before = fingerprints(model)
    fmt = p.processor.prompt_format if p.processor.kind == "vlm" else None  # a family's own processor
    vl = {k: v.to(cfg.device) for k, v in presets.random_vl_inputs(model.base_model, cfg.batch, dtype=dtype,
                                                                   prompt_format=fmt).items()}
    audio = presets.random_audio(model.audio_encoder.model, cfg.batch, dtype=dtype).to(cfg.device)
    mask = (torch.arange(cfg.batch) % 2 == 0).to(cfg.device)
    result = verify_model(model, vl, audio, mask)
    result.checks.append(Check("verification leaves every served weight byte-identical", fingerprints(model) == before,
                               "sha256 of base, encoder and SAFE parts before and after"))
    entry = result.to_dict()
    name = f"run {cfg.run_dir}"
    tables.append(f"== safe verify: {name} ({ckpt}, {cfg.dtype}, {cfg.device}) ==\n{result.table()}\n")
    models[name] = {**entry, "seconds": round(time.perf_counter() - t0, 3)}
    source = {"run_dir": str(cfg.run_dir), "checkpoint": str(ckpt), "processor_sources": p.processor.sources,
              "dtype": cfg.dtype, "device": cfg.device}
    return model, source


def _checkpoint_format(base_spec: str, base):
    """The checkpoint's own processor format for a base directory of a per-image-token-count family
    (its prompts decide the image-token counts); None for presets and fixed-count families."""
    from pathlib import Path

    from safe.bench import presets
    from safe.models.backbones import FIXED_IMAGE_TOKEN_FAMILIES, resolve_backbone
    from safe.processing.vlm_prompts import VLMProcessorFormat

    if base_spec in presets.BASE_PRESETS or not Path(base_spec).exists():
        return None
    if resolve_backbone(base).name in FIXED_IMAGE_TOKEN_FAMILIES:
        return None
    return VLMProcessorFormat(base_spec, base)


def _verify_base(cfg: VerifyConfig, base_spec: str, encoders, dtype, load: dict, tables: list) -> dict:
    """Every encoder of ``encoders`` on one base (loaded once, unhooked after each pair)."""
    import torch

    from safe.bench import presets
    from safe.evaluation.safety import verify_model
    from safe.models.safe_model import SAFEConfig, SAFEModel

    models = {}
    t_base = time.perf_counter()
    base = presets.load_base_or_preset(base_spec, dtype, cfg.device, **load)
    device = next(base.parameters()).device
    vl = {k: v.to(device) for k, v in presets.random_vl_inputs(
        base, cfg.batch, dtype=dtype, prompt_format=_checkpoint_format(base_spec, base)).items()}
    base_seconds = time.perf_counter() - t_base
    for audio_spec in encoders:
        t0 = time.perf_counter()
        encoder = presets.load_audio_encoder_or_preset(audio_spec, dtype, str(device))
        model = SAFEModel(base, encoder, SAFEConfig(fusion_layers=list(cfg.fusion_layers)))
        try:
            audio = presets.random_audio(model.audio_encoder.model, cfg.batch, dtype=dtype).to(device)
            mask = (torch.arange(cfg.batch) % 2 == 0).to(device)
            result = verify_model(model, vl, audio, mask)
        finally:
            model.remove_hooks()
        name = f"{base_spec} x {audio_spec}"
        tables.append(f"== safe verify: {name} ({cfg.dtype}, {device}) ==\n{result.table()}\n\n"
                      f"{result.parameter_report.table()}\n")
        models[name] = {**result.to_dict(), "seconds": round(time.perf_counter() - t0 + base_seconds, 3)}
        base_seconds = 0.0
    if cfg.modalities:
        models.update(_verify_modalities(cfg, base_spec, base, encoders[0], vl, dtype, tables))
    return models


def _verify_modalities(cfg: VerifyConfig, base_spec: str, base, audio_spec: str, vl: dict, dtype, tables: list) -> dict:
    """``base`` with two modalities, audio (``audio_spec``) and depth (a tiny ViT preset), on one batch whose
    rows use audio, depth, both and neither."""
    import torch

    from safe.bench import presets
    from safe.bench.vision import random_pixels, tiny_vision_encoder
    from safe.evaluation.safety import verify_modalities
    from safe.models.safe_model import SAFEConfig, SAFEModel

    t0 = time.perf_counter()
    device = next(base.parameters()).device
    encoder = presets.load_audio_encoder_or_preset(audio_spec, dtype, str(device))
    model = SAFEModel(base, encoder, SAFEConfig(fusion_layers=list(cfg.fusion_layers)))
    try:
        depth_encoder = tiny_vision_encoder("vit").to(device=device, dtype=dtype)
        model.add_modality("depth", depth_encoder)
        rows = torch.arange(cfg.batch, device=device) % 4  # 0: audio, 1: depth, 2: both, 3: neither
        audio_mask, depth_mask = (rows == 0) | (rows == 2), (rows == 1) | (rows == 2)
        inputs = {"audio": (presets.random_audio(model.audio_encoder.model, cfg.batch, dtype=dtype).to(device), audio_mask),
                  "depth": (random_pixels(depth_encoder, cfg.batch, dtype=dtype).to(device), depth_mask)}
        result = verify_modalities(model, vl, inputs)
    finally:
        model.remove_hooks()
    name = f"{base_spec} x {audio_spec} + depth (vit)"
    tables.append(f"== safe verify: {name} ({cfg.dtype}, {device}) ==\n{result.table()}\n")
    return {name: {**result.to_dict(), "seconds": round(time.perf_counter() - t0, 3)}}
