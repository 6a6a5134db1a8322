"""``safe eval`` (the evaluation protocol, into metrics.json and report.html) and
``safe report`` (report.html, plots and the generated docs tables from a run's metrics.json)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from safe.runs import RunDir, StageResult
from safe.stages.common import (
    DataOptions,
    RunOptions,
    StageError,
    check_run_data,
    from_run,
    load_options,
    run_record,
)


@dataclass
class EvalConfig(DataOptions):
    """Options of ``safe eval``."""

    checkpoint: str | None = None
    """SAFE + policy checkpoint (default <run-dir>/checkpoints/policy)."""
    split: str = "test"
    """Benchmark split to evaluate on."""
    scale_results: str | None = "shipped"
    """benchmarks/scale.py results the latency gate reads (the largest shape measured there): a JSON file, shipped
    (the results SAFE ships, docs/scale_results.json of the source tree) or none (the gate uses the run's own
    model, and says so)."""
    meteor: bool = False
    """Add METEOR to the caption metrics per benchmark (the caption toolkit's Java program: needs java on the
    PATH, ~15 s to start)."""


@dataclass
class EvalResult(StageResult):
    """The protocol's figures (``metrics.json`` key ``eval``), stage gates included."""

    KEY = "eval"

    @property
    def gates_passed(self) -> bool:
        return all(g["passed"] for g in self.metrics.get("stage_gates", []))

    def summary(self) -> str:
        ev = self.metrics
        r, g, rob = ev["retention"], ev["audio_gains"], ev["robustness"]
        lines = [f"evaluation on {ev['split']} ({ev['examples']} examples, {ev['seconds']:.0f} s)",
                 "  VL accuracy: " + ", ".join(f"{k} {v:.4f}" for k, v in r["vl_accuracy"].items()),
                 "  audio accuracy [95% CI]: " + ", ".join(
                     f"{k} {v['mean']:.3f} [{v['ci_low']:.3f}, {v['ci_high']:.3f}]" for k, v in g["audio_accuracy"].items()),
                 *_per_benchmark(r, g),
                 "  SNR sweep (audio accuracy, white noise / other clips as background): " + ", ".join(
                     f"{'clean' if p['snr_db'] is None else str(int(p['snr_db'])) + ' dB'} {p['audio_accuracy']:.3f}"
                     f" / {p.get('background_audio_accuracy', float('nan')):.3f}" for p in rob["snr_sweep"]),
                 f"  misaligned clips: audio accuracy {rob['misaligned']['audio_accuracy']:.3f} (aligned "
                 f"{rob['misaligned']['aligned_audio_accuracy']:.3f}); irrelevant audio (other rows' clips) on VL questions: "
                 f"policy false positives {rob['irrelevant']['false_positive_rate']:.4f}, answers changed with the gate forced open "
                 f"{rob['irrelevant']['answers_changed']} of {rob['irrelevant']['n']}"]
        if "ood_sounds" in rob:
            o = rob["ood_sounds"]
            lines.append(f"  held-out sound kinds: audio accuracy {o['audio_accuracy']:.3f} vs in-domain "
                         f"{o['in_domain_audio_accuracy']:.3f} (base {o['base_audio_accuracy']:.3f}, {o['n']} questions)")
        sh = ev["attribution"]["shapley"]
        lines.append(f"  Shapley (mean per question): image {sh['image_mean']:.3f}, audio {sh['audio_mean']:.3f}")
        e = ev["efficiency"]
        fl = e["flops_per_query"]
        lines.append(f"  FLOPs per query (audio encoder included; first {e['flops_rows']} rows, "
                     f"{e['flops_rows_using_audio']} using audio with the policy): base {fl['base']:.3g}, "
                     f"always-audio {fl['always_audio']:.3g}, policy {fl['policy']:.3g}")
        lines.append("\nStage gates (the proposal's targets, docs/design.md), measured:")
        lines += [f"  {'PASS' if g['passed'] else 'FAIL'}  {g['gate']:<60} target {g['target']:<34} measured "
                  f"{g['measured']}" for g in ev["stage_gates"]]
        return "\n".join(lines)


def _per_benchmark(r: dict, g: dict) -> list[str]:
    """One line per benchmark of the per-benchmark sections (none in runs from before them)."""
    lines = [f"  retention on {t} ({v['metric']}, {v['n']} rows): " + ", ".join(
        f"{k} {a:.4f}" for k, a in v["accuracy"].items()) + f"; {v['test']} p (gate open) "
        f"{v['paired_tests'].get('gate_open', {}).get('pvalue', float('nan')):.3f}"
        for t, v in r.get("per_task", {}).items()]
    lines += [f"  gains on {t} ({v['metric']}, {v['n']} rows): " + ", ".join(
        f"{k} {a['mean']:.3f}" for k, a in v["accuracy"].items()) + "; SAFE - base {mean:+.3f} [{ci_low:+.3f}, "
        "{ci_high:+.3f}]".format(**v["safe_minus_base"]) for t, v in g.get("per_task", {}).items()]
    lines += [f"  captions on {t} ({v['clips']} clips): CIDEr-D " + ", ".join(
        f"{k} {s['cider_d']['mean']:.3f}" for k, s in v["systems"].items()) + "; BLEU-4 " + ", ".join(
        f"{k} {s['bleu_4']:.3f}" for k, s in v["systems"].items()) for t, v in g.get("captions_per_task", {}).items()]
    return lines


def evaluate(cfg: EvalConfig) -> StageResult:
    """The evaluation protocol on the SAFE + policy checkpoint of ``cfg.run_dir``, reading the run's Stage A
    and Stage B results; then writes report.html. A run of another modality (``safe train --modality``) gets
    that modality's protocol (:mod:`safe.stages.modality_eval`)."""
    from safe.evaluation.protocol import run_eval
    from safe.stages.checkpoint import open_checkpoint
    from safe.stages.policy import PolicyResult
    from safe.stages.stage_a import StageAResult

    record = run_record(cfg.run_dir)
    if record is None and "depth" in RunDir(cfg.run_dir).metrics():
        raise StageError(f"{cfg.run_dir} is the depth track (safe demo --track depth): its figures are its own "
                         "(metrics.json key depth); safe eval evaluates a run of safe train (audio, or --modality "
                         "with safe policy train)")
    if (record or {}).get("modality", "audio") != "audio":
        from safe.stages.modality_eval import evaluate_modality

        result = evaluate_modality(cfg, record)
        report(ReportConfig(run_dir=cfg.run_dir))
        return result
    cfg = from_run(cfg)  # base, encoder and data as `safe train` recorded them, unless given (and then matching)
    run = RunDir(cfg.run_dir)
    ckpt = Path(cfg.checkpoint) if cfg.checkpoint else run.checkpoints / "policy"
    scale = _scale_results(cfg.scale_results)  # a missing file fails before the model loads
    data, model, fmt, frontend, cache = open_checkpoint(
        ckpt, data=cfg.data, base=cfg.base, audio=cfg.audio, load_options=load_options(cfg),
        missing=f"run `safe policy train --run-dir {cfg.run_dir}` first or pass --checkpoint")
    check_run_data(data, cfg.run_dir)
    if model.policy is None:
        raise StageError(f"{ckpt} has no policy attached: run `safe policy train --run-dir {run.path}` first")
    policy, stage_a = run.read(PolicyResult), run.read(StageAResult)
    ev = run_eval(model, fmt, frontend, data, cache, policy_metrics=policy.metrics if policy else None,
                  stage_a=stage_a.metrics if stage_a else None, split=cfg.split, scale_results=scale,
                  caption_meteor=cfg.meteor)
    result = EvalResult(ev)
    if hasattr(data, "summary"):  # a data spec: what each split held (rows, skips, tasks)
        result.metrics["data"] = data.summary()
    run.record(result)
    report(ReportConfig(run_dir=cfg.run_dir))
    return result


def _scale_results(value: str | None):
    """``--scale-results``: None for none, the shipped results (loaded), or a file that must exist."""
    if value is None or value.lower() == "none":
        return None
    if value == "shipped":
        from safe.evaluation.protocol import shipped_scale_results

        return shipped_scale_results()
    if not Path(value).is_file():
        raise StageError(f"--scale-results {value}: no such file (shipped: the results SAFE ships; none: no file)")
    return value


@dataclass
class ReportConfig(RunOptions):
    """Options of ``safe report``."""

    export_plots: str | None = None
    """Also write every plot of the report to this folder as PNG files (for papers and the README)."""
    docs: str | None = None
    """Also write the generated results tables (results.md) into this folder."""
    readme: str | None = None
    """With --docs: also replace the results block of this README (between its results markers)."""
    depth_run: str | None = None
    """The depth track's run directory (safe demo --track depth): its figures join the per-modality rows."""
    encoders_run: str | None = None
    """A run directory holding an encoder comparison (safe ablate --encoder-b, e.g. make ablations-encoders-quick):
    its encoder rows replace this run's in the Stage A ablations."""


@dataclass
class ReportResult(StageResult):
    """Where the report (and any exported plots / docs) went."""

    KEY = "report"

    def summary(self) -> str:
        m = self.metrics
        lines = [f"report: {m['path']}" + (f" (sections not run: {', '.join(m['missing'])})" if m["missing"] else "")]
        if m.get("plots"):
            lines.append(f"{len(m['plots'])} plots written: " + ", ".join(m["plots"]))
        if m.get("docs"):
            lines.append("docs written: " + ", ".join(m["docs"]))
        return "\n".join(lines)


def with_encoder_rows(metrics: dict, run_dir: str) -> dict:
    """``metrics`` whose Stage A ablations hold the encoder comparison rows of ``run_dir`` (each row carries its
    own steps and the run's split and seeds) instead of any of their own."""
    other = RunDir(run_dir).metrics().get("ablations") or {}
    rows = [{"split": other.get("split"), "train_rows": other.get("train_rows"), "eval_rows": other.get("eval_rows"),
             "run": str(run_dir), **r}
            for r in other.get("rows") or () if "encoders" in r]
    if not rows:
        raise StageError(f"--encoders-run {run_dir}: no encoder comparison in its metrics.json (run safe ablate "
                         "--encoder-b there first)")
    own = metrics.get("ablations") or {}
    kept = [r for r in own.get("rows") or () if "encoders" not in r]
    return {**metrics, "ablations": {**({"split": other.get("split"), "steps": other.get("steps"),
                                         "seeds": other.get("seeds")} if not own else own), "rows": kept + rows}}


def report(cfg: ReportConfig) -> ReportResult:
    """report.html from the run's metrics.json (every section that ran), plus plots / docs on request."""
    from safe.reporting.report import render_plots, report_sections, write_report

    run = RunDir(cfg.run_dir)
    metrics = run.metrics()
    if not metrics:
        raise StageError(f"{run.metrics_file} is missing or empty: run the pipeline (make demo) first")
    if cfg.depth_run:
        depth = RunDir(cfg.depth_run).metrics().get("depth")
        if not depth:
            raise StageError(f"--depth-run {cfg.depth_run}: no depth figures in its metrics.json "
                             "(run safe demo --track depth first)")
        metrics = {**metrics, "depth": depth}
    if cfg.encoders_run:
        metrics = with_encoder_rows(metrics, cfg.encoders_run)
    figures = render_plots(metrics)  # drawn once: embedded in the report, and the same bytes exported
    path = write_report(metrics, run.path / "report.html", figures=figures)
    out = {"path": str(path.resolve()), "missing": [k for k, v in report_sections(metrics).items() if not v]}
    if cfg.export_plots:
        from safe.reporting.report import export_plots

        out["plots"] = [str(p) for p in export_plots(metrics, cfg.export_plots, figures=figures)]
    if cfg.docs:
        from safe.reporting.docs import write_docs

        out["docs"] = [str(p) for p in write_docs(metrics, cfg.docs, readme=cfg.readme)]
    elif cfg.readme:
        raise StageError("--readme needs --docs (the README's table links to the generated results page)")
    return ReportResult(out)
