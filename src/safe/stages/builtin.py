"""``safe data synth`` and ``safe base build``: the built-in benchmark and the built-in frozen base models
(both from :mod:`safe.bench`), the defaults every other stage falls back to."""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

from safe.runs import RunDir, StageResult
from safe.stages.common import base_path, cache_dir, data_source


@dataclass
class SynthStageConfig:
    """Options of ``safe data synth``."""

    out: str | None = None
    """Output folder (default $SAFE_CACHE/benchmark, SAFE_CACHE=.cache/safe)."""
    seed: int = 0
    """Generation seed (same seed -> byte-identical files)."""
    tiny: bool = field(default=False, metadata={"hidden": True})
    """A seconds-long miniature (for tests)."""
    snr_db: float | None = None
    """Add background noise at this SNR in dB (default clean)."""
    vl_share: float | None = None
    """Share of VL-only questions (default 0.65)."""
    force: bool = False
    """Regenerate even if a complete benchmark is there."""


@dataclass
class BenchmarkResult(StageResult):
    """Where the benchmark is and how many questions of each family each split holds."""

    KEY = "data"

    @property
    def path(self) -> Path:
        return Path(self.metrics["path"])

    def summary(self) -> str:
        lines = [f"benchmark at {self.path} ({self.metrics['seconds']:.1f} s)"]
        for split, n in self.metrics["counts"].items():
            families = ", ".join(f"{f} {c}" for f, c in n["families"].items())
            lines.append(f"  {split:<10}{n['total']:>7} examples ({families})")
        return "\n".join(lines)


def synth(cfg: SynthStageConfig) -> BenchmarkResult:
    """Generate (or reuse, byte-identical) the built-in audio-visual benchmark."""
    from safe.bench.files import generate_benchmark, load_benchmark_info
    from safe.bench.questions import SynthConfig

    out = Path(cfg.out) if cfg.out else cache_dir() / "benchmark"
    extra = {k: v for k, v in (("snr_db", cfg.snr_db), ("vl_share", cfg.vl_share)) if v is not None}
    synth_cfg = SynthConfig.tiny(seed=cfg.seed, **extra) if cfg.tiny else SynthConfig(seed=cfg.seed, **extra)
    t0 = time.perf_counter()
    generate_benchmark(out, synth_cfg, progress=True, force=cfg.force)
    info = load_benchmark_info(out)
    return BenchmarkResult({"path": str(out), "counts": info["counts"], "seconds": time.perf_counter() - t0})


@dataclass
class BaseBuildConfig:
    """Options of ``safe base build``."""

    data: str | None = None
    """Benchmark folder (default $SAFE_CACHE/benchmark; generated if missing)."""
    out: str | None = None
    """Output folder (default $SAFE_CACHE/base)."""
    tiny: bool = field(default=False, metadata={"hidden": True})
    """Seconds-long builds (for tests; no accuracy floor)."""
    seed: int = 0
    """Seed of both models."""
    force: bool = False
    """Train the models even if a matching build is there or SAFE ships one for this config and benchmark
    (about 5 minutes on 2 cores; otherwise the shipped build is copied in, in a second)."""
    run_dir: str | None = None
    """Also record the results under this run directory."""


@dataclass
class BaseResult(StageResult):
    """The built-in models' manifest (``metrics.json`` key ``base``) and their folder."""

    KEY = "base"

    @property
    def path(self) -> Path:
        return Path(self.metrics["path"])

    def summary(self) -> str:
        m = self.metrics
        acc = m["test_accuracy"]
        lines = ["built-in VL model, exact match on the test split (generate, greedy):",
                 f"  {'family':<18}{'accuracy':>9}"]
        lines += [f"  {fam:<18}{acc[fam]:>9.3f}" for fam in [f for f in acc if f != "all"] + ["all"]]
        lines.append(f"  VL-only accuracy {m['vl_accuracy']:.3f}; audio encoder tag exact match "
                     f"{m['audio_encoder'].get('tag_exact_match', float('nan')):.3f}")
        lines.append("  deaf-guesser check (the base cannot hear):")
        lines += [f"    {fam:<16}{c['accuracy']:.3f} <= {c['bound']:.3f} ({c['rule']}): "
                  f"{'PASS' if c['passed'] else 'FAIL'}" for fam, c in m["deaf_check"].items()]
        if m.get("reused") == "shipped":
            lines.append(f"  installed the build SAFE ships and checked it answers this benchmark's test split as "
                         f"shipped (it took {m['seconds']:.0f} s to build; safe base build --force trains it again)")
        elif m.get("installed_from") == "shipped":
            lines.append("  reused (installed from the build SAFE ships)")
        else:
            lines.append(f"  {'reused' if m.get('reused') else 'built'} ({m['seconds']:.0f} s to build)")
        lines.append(f"models at {self.path}/vl and {self.path}/audio_encoder")
        return "\n".join(lines)


def build_base(cfg: BaseBuildConfig) -> BaseResult:
    """Train (or reuse) the built-in VL model and audio encoder on the built-in benchmark, then freeze them."""
    from safe.bench.build import BuiltinConfig, build_builtin_models

    data = data_source(cfg.data, tiny=cfg.tiny, create=cfg.data is None)
    out = base_path(cfg.out, tiny=cfg.tiny)
    build = BuiltinConfig.tiny() if cfg.tiny else BuiltinConfig()
    build.vl = dataclasses.replace(build.vl, seed=cfg.seed)
    build.audio = dataclasses.replace(build.audio, seed=cfg.seed)
    manifest = build_builtin_models(data.root, out, build, force=cfg.force, progress=True)
    result = BaseResult({**manifest, "path": str(out)})
    if cfg.run_dir:
        RunDir(cfg.run_dir).record(result)
    return result
