"""``safe demo --track gemma``: every stage on a real frozen language model — the Gemma VL base (a LLaVA whose
language model is the pretrained Gemma 3 270M, frozen; ``make gemma-base`` builds it into
``$SAFE_CACHE/gemma/vl``) with the real Whisper tiny.en encoder, the speech track's spoken questions and facts
(fewer rows: :class:`~safe.bench.gemma.track.GemmaTrackConfig`), Stage 1 verification, Stage A, Stages B/C,
``safe eval``, the track's own figures under ``gemma`` (the text retention set and the VL questions with the
gate closed and open, the language model's SHA-256 at every stage boundary) and the report, into its own run
directory. A killed run starts again at the first stage it had not recorded (Stage A at its last checkpoint)."""
from __future__ import annotations

import os
import time
from pathlib import Path

from safe.runs import RunDir, StageResult
from safe.stages.common import StageError

#: Run directory and recipe of the track when ``safe demo``'s defaults are left as they are.
RUN_DIR = "runs/demo-gemma"
RECIPE = "stage_a_gemma.yaml"  # a shipped recipe (safe.training's recipes/)
TEXT_RETENTION_FILE = "text_retention.jsonl"  # in the track's data folder; the recipe's stage_a.text_retention
#: The share of answers that must stay identical with the gate open (text and VL), the gain over the deaf base
#: and the policy's distances the track is held to.
TARGETS = {"open_identical": 0.995, "audio_gain": 0.30, "use_rate_vs_oracle": 0.05, "accuracy_vs_always": 0.01,
           "minutes": 60}


class GemmaResult(StageResult):
    """The Gemma track's own figures (``metrics.json`` key ``gemma``): ``text`` and ``vl`` (gate closed and
    open against the base: :func:`safe.bench.gemma.track.summarise`), ``lm_sha256`` (the expected digest and
    the one found at every stage boundary) and the track's config. ``ok``: every closed answer identical, the
    closed logits bit-exact and every digest the expected one."""

    KEY = "gemma"

    @property
    def ok(self) -> bool:
        m = self.metrics
        sets = [m[k] for k in ("text", "vl") if k in m]
        return bool(sets) and all(s["closed_changed"] == 0 and s["closed_first_token_logits_equal"]
                                  and s["closed_mixed_batch_logits_equal"] for s in sets) \
            and bool(m.get("lm_sha256", {}).get("all_equal"))

    def summary(self) -> str:
        m = self.metrics
        lines = ["gemma track: answers identical to the base (reference: the base's own greedy answer)"]
        for key, name in (("text", "text-only prompts"), ("vl", "VL questions")):
            s = m[key]
            lines.append(f"  {name:<18} ({s['n']:>3}): gate closed {s['closed_identical']:.3f} (logits bit-exact: "
                         f"{'yes' if s['closed_first_token_logits_equal'] and s['closed_mixed_batch_logits_equal'] else 'NO'}); "
                         f"gate open {s['open_identical']:.3f} ({s['open_changed']} changed), mean KL "
                         f"{s['open_mean_kl']:.2e}")
            if "scored" in s:
                sc = s["scored"]
                lines.append(f"  {'':<18} scored rows {sc['n']}: base {sc['base_accuracy']:.3f}, gate open "
                             f"{sc['open_accuracy']:.3f}, McNemar p {sc['mcnemar']['pvalue']:.3f}")
        d = m["lm_sha256"]
        lines.append(f"  Gemma's tensors at every stage boundary: {'all' if d['all_equal'] else 'NOT all'} "
                     f"SHA-256 {d['expected'][:16]}...")
        return "\n".join(lines)


def gemma_base_dir() -> Path:
    """The Gemma VL base under ``$SAFE_CACHE`` (``make gemma-base``); StageError naming the command when missing."""
    from safe.bench.gemma.base import BUILD_FILE
    from safe.stages.common import cache_dir

    vl = cache_dir() / "gemma" / "vl"
    if not (vl / BUILD_FILE).is_file():
        raise StageError(f"no Gemma VL base at {vl}: run `make gemma-base` first (python -m safe.bench.gemma)")
    return vl


def gemma_figures(run_dir: str, data: str, base: str, audio: str, track, digests: dict,
                  checkpoint: str = "policy", progress: bool = True) -> GemmaResult:
    """The text retention set and the VL questions, gate closed and open, on the run's SAFE checkpoint
    (``checkpoint`` under its checkpoints/), with the language model's digest checked before and after;
    ``digests``: the digests found at the stage boundaries so far (recorded with these)."""
    import torch

    from safe.bench.gemma import track as gt
    from safe.bench.gemma.track_text import text_prompts
    from safe.data.embedding_cache import AudioEmbeddingCache
    from safe.data.prepared import encoder_fingerprint, prepare
    from safe.inference.loading import load_trained
    from safe.stages.common import data_source

    run = RunDir(run_dir)
    t0 = time.perf_counter()
    source = data_source(data)
    model, fmt, frontend = load_trained(base, run.checkpoints / checkpoint, audio)
    text_model = model.base_model.model.language_model
    found = dict(digests, measurement_before=gt.lm_sha256(text_model))
    cache = AudioEmbeddingCache(source.cache_dir, encoder_fingerprint(model.audio_encoder, frontend))
    prepared = prepare(source.split("test"), fmt, model, frontend, cache, progress=progress)
    vl = gt.vl_retention(model, fmt, prepared, track.batch_size, progress=progress)
    spoken = [i for i, e in enumerate(prepared.examples) if e.needs_audio]
    clips = prepared.subset(spoken).audio  # the test split's spoken questions and facts: unrelated to any prompt
    text = gt.text_retention(model, fmt.tok, text_prompts(track.text_prompts), clips, track.batch_size,
                             progress=progress)
    found["measurement_after"] = gt.lm_sha256(text_model)
    expected = digests["expected"]
    out = {"text": text, "vl": vl, "track": track.to_dict(), "checkpoint": str(run.checkpoints / checkpoint),
           "lm_sha256": {**found, "all_equal": all(v == expected for v in found.values())},
           "torch_threads": torch.get_num_threads(), "seconds": round(time.perf_counter() - t0, 1)}
    result = GemmaResult(out)
    run.record(result)
    return result


def demo_gemma(cfg, echo=print, track=None, base: str | None = None, audio: str | None = None,
               stage_a: dict | None = None, verify_first: bool = True, until: str | None = None):
    """The Gemma track into ``cfg.run_dir`` (a :class:`~safe.stages.demo.DemoConfig`); ``track``: its sizes (default
    :class:`~safe.bench.gemma.track.GemmaTrackConfig`); ``base`` / ``audio``: the Gemma VL base and the encoder
    (default: :func:`gemma_base_dir` and the converted Whisper tiny.en); ``stage_a``: recipe settings over
    ``cfg.recipe``'s (``{"steps": 60}``); ``verify_first`` False skips the Stage 1 verification (and so its gate:
    for a measurement on a machine too busy for it; the record says so); ``until="figures"`` stops after the track's own
    figures (a Stage A variant measured without Stages B/C). Returns the demo's result (``timing``: the seconds spent
    on the run directory since its last fresh start, killed invocations included up to their last stage)."""
    import hashlib
    import json

    from safe.bench.gemma import track as gt
    from safe.bench.gemma.base import BUILD_FILE
    from safe.bench.gemma.track_text import training_prompts
    from safe.bench.speech.files import generate_speech_benchmark
    from safe.evaluation.gates import GateFailed
    from safe.policy.stage import PolicyStageConfig
    from safe.stages.common import StageLog, cache_dir
    from safe.stages.demo_result import DemoResult, stopped
    from safe.stages.evaluate import EvalConfig, ReportConfig, evaluate, report
    from safe.stages.options import make_config
    from safe.stages.policy import PolicyResult, PolicyTrainConfig, train_policy
    from safe.stages.speech import whisper_dirs
    from safe.stages.stage_a import StageAResult, TrainConfig, train
    from safe.stages.verify import VerifyConfig, VerifyResult, verify
    from safe.training.text_retention import write_prompts

    track = track or gt.GemmaTrackConfig()
    run = RunDir(cfg.run_dir)
    step = StageLog(echo)
    previous = {} if cfg.fresh else run.metrics().get("timing", {})
    spent = float(previous.get("seconds", 0.0))
    # each stage's mark: seconds since the run directory's last fresh start; a stage that a resumed invocation
    # keeps keeps the mark (and load average) of the invocation that ran it
    resuming = not cfg.fresh  # a stage already recorded is kept while every stage before it was kept too
    marks = {k: v for k, v in previous.items() if k.endswith("_done_seconds")}
    load: dict[str, float] = dict(previous.get("load_average") or {})

    def mark(name: str) -> None:  # recorded at once: a killed run keeps the time it spent up to here
        step.mark(name)
        if not (resuming and name in marks):
            marks[name] = round(spent + step.elapsed(), 1)
            load[name] = round(os.getloadavg()[0], 2)  # the machine is shared: its load says what the times mean
        run.record("timing", {**marks, "seconds": round(spent + step.elapsed(), 1), "partial": True,
                              "load_average": load})
    echo("== 1. the Gemma VL base (make gemma-base) and the real Whisper tiny.en encoder ==")
    base = Path(base) if base else gemma_base_dir()
    expected = json.loads((base / BUILD_FILE).read_text())["lm_sha256"]
    audio = audio or whisper_dirs(track.speech.window_seconds)[0]
    echo(f"base {base} (Gemma 3 270M, SHA-256 {expected[:16]}...); encoder {audio}")
    echo("\n== 2. spoken questions and facts in eSpeak NG voices (the speech track's design, fewer rows) ==")
    # the default sizes in speech-gemma, others beside it (so a shorter run does not overwrite the track's data)
    name = "speech-gemma" if track.speech == gt.GemmaTrackConfig().speech else \
        "speech-gemma-" + hashlib.sha256(json.dumps(track.speech.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
    data = generate_speech_benchmark(cache_dir() / name, track.speech, progress=True)
    # Stage A's text-only retention prompts (the recipe's text_retention, read from the data folder): none of the
    # text retention set the track measures on
    write_prompts(Path(data) / TEXT_RETENTION_FILE, [p.text for p in training_prompts()])
    mark("data_done_seconds")
    paths = dict(run_dir=cfg.run_dir, data=str(data), base=str(base), audio=str(audio))
    go_on = cfg.continue_on_gate_failure
    digests = {"expected": expected, "before": gt.saved_lm_sha256(base)}
    def boundary(name: str) -> None:
        """The saved base's digest after a stage, added to the recorded figures (when recorded already)."""
        digests[name] = gt.saved_lm_sha256(base)
        recorded = run.read(GemmaResult)
        if recorded is not None and recorded.metrics:
            found = {**recorded.metrics["lm_sha256"], **digests}
            found["all_equal"] = all(v == expected for k, v in found.items() if k != "all_equal")
            run.record(GemmaResult({**recorded.metrics, "lm_sha256": found}))


    def kept(result_type, folder: str | None = None) -> bool:
        nonlocal resuming
        recorded = run.read(result_type)
        resuming = resuming and recorded is not None and bool(recorded.metrics) and (
            folder is None or (run.checkpoints / folder / "safe_config.json").is_file())
        if resuming:
            echo(f"(kept from the run directory: {result_type.KEY}; --fresh runs it again)")
        return resuming

    try:  # the Stage 1 and Stage 2 go / no-go gates stop the run (unless --continue-on-gate-failure)
        echo("\n== 3. Stage 1 safety verification: the Gemma VL base x the real Whisper encoder ==")
        if not verify_first:
            run.record("verify_skipped", {"reason": "python -m safe.stages.gemma --skip-verify"})
            echo("skipped (--skip-verify): Stage A runs without the Stage 1 gate")
        elif not kept(VerifyResult):
            run.record(VerifyResult())  # this run's verification only
            step(verify(VerifyConfig(base=str(base), audio=str(audio), run_dir=cfg.run_dir)))
        mark("verify_done_seconds")
        echo(f"\n== 4. Stage A: projector + gated adapters ({cfg.recipe}) ==")
        if not kept(StageAResult, "final"):
            over = {f"stage_a.{k}": v for k, v in (stage_a or {}).items()}
            step(train(make_config(TrainConfig, cfg.recipe, {**paths, **over, "fresh": cfg.fresh,
                                                              "continue_on_gate_failure": go_on})))
        mark("stage_a_done_seconds")
        boundary("after_stage_a")
        # on Stage A's weights (the policy changes none of them; the measurement forces every row's gate)
        echo("\n== 5. The track's own figures: text retention set, VL questions, Gemma's SHA-256 ==")
        if not kept(GemmaResult):
            step(gemma_figures(cfg.run_dir, str(data), str(base), str(audio), track, digests, checkpoint="final"))
        mark("gemma_done_seconds")
        if until == "figures":
            echo("stopped after the track's own figures (--until figures)")
            result = DemoResult({**marks, "seconds": round(spent + step.elapsed(), 1), "stopped_after": "figures",
                                 "load_average": load}, step.ok, cfg.run_dir)
            run.record(result)
            return result
        echo("\n== 6. Stages B and C: policy, baselines, distilled gate ==")
        if not kept(PolicyResult, "policy"):
            policy = PolicyStageConfig(seeds=cfg.seeds, state=cfg.state, train_rows=track.policy_train_rows,
                                       latency_batches=list(track.latency_batches), **track.policy)
            step(train_policy(PolicyTrainConfig(**paths, policy=policy, continue_on_gate_failure=go_on)))
        mark("policy_done_seconds")
        boundary("after_policy")
    except GateFailed as failure:
        return stopped(cfg.run_dir, step, failure, echo)
    echo("\n== 7. Evaluation protocol ==")
    from safe.stages.evaluate import EvalResult

    if not kept(EvalResult):
        step(evaluate(EvalConfig(**paths)))
    mark("eval_done_seconds")
    boundary("after_eval")
    timing = {**marks, "seconds": round(spent + step.elapsed(), 1), "this_invocation_seconds": step.elapsed(),
              "load_average": load}
    result = DemoResult(timing, step.ok, cfg.run_dir)
    run.record(result)
    echo(report(ReportConfig(run_dir=cfg.run_dir)).summary())
    return result



def main(argv=None) -> int:
    """``python -m safe.stages.gemma``: the track at other sizes than ``safe demo --track gemma``'s (a shorter
    measurement on a busy machine); prints each stage's summary like the demo."""
    import argparse
    import sys
    from types import SimpleNamespace

    from safe.bench.gemma.track import GemmaTrackConfig
    from safe.bench.speech.track import SpeechConfig
    from safe.policy.stage import PolicyStageConfig

    d, sp = GemmaTrackConfig(), GemmaTrackConfig().speech
    p = argparse.ArgumentParser(prog="python -m safe.stages.gemma", description=main.__doc__.split("\n")[0])
    p.add_argument("--run-dir", default=RUN_DIR)
    p.add_argument("--steps", type=int, default=None, help="Stage A steps (default: the recipe's)")
    for name in ("train", "val", "test", "retention", "ood_test"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(sp, f"n_{name}"),
                       help=f"rows of the track's {name} split")
    p.add_argument("--text-prompts", type=int, default=d.text_prompts)
    p.add_argument("--policy-train-rows", type=int, default=d.policy_train_rows)
    p.add_argument("--latency-batches", type=int, nargs="+", default=list(d.latency_batches))
    p.add_argument("--seeds", type=int, default=PolicyStageConfig.seeds)
    p.add_argument("--fresh", action="store_true")
    p.add_argument("--skip-verify", action="store_true", help="no Stage 1 verification (nor its gate) first")
    p.add_argument("--until", choices=("figures",), default=None,
                   help="stop after the track's own figures (Stage A and the retention sets; no Stages B/C, no eval)")
    a = p.parse_args(argv)
    speech = SpeechConfig(n_train=a.train, n_val=a.val, n_test=a.test, n_retention=a.retention, n_ood_test=a.ood_test)
    track = GemmaTrackConfig(speech=speech, text_prompts=a.text_prompts, policy_train_rows=a.policy_train_rows,
                             latency_batches=tuple(a.latency_batches))
    # safe demo's options as demo_gemma reads them (not DemoConfig itself: safe.stages.demo imports this module)
    cfg = SimpleNamespace(run_dir=a.run_dir, recipe=RECIPE, fresh=a.fresh, seeds=a.seeds, continue_on_gate_failure=False,
                          state=PolicyStageConfig.state)
    try:
        result = demo_gemma(cfg, track=track, stage_a={"steps": a.steps} if a.steps else None,
                            verify_first=not a.skip_verify, until=a.until)
    except StageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(result.summary())
    return 0 if result.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
