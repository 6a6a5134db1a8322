"""The speech track's own stage pieces for ``safe demo --track speech`` (:func:`safe.stages.demo.demo_speech`):
the real Whisper tiny.en encoder converted once into ``$SAFE_CACHE`` and the track's own figures (per voice,
the window check, the encoder's share of the cost)."""
from __future__ import annotations

import time
from pathlib import Path

from safe.runs import RunDir, StageResult

#: Run directory and recipe of the track when ``safe demo``'s defaults are left as they are.
RUN_DIR = "runs/demo-speech"
RECIPE = "stage_a_speech.yaml"  # a shipped recipe (safe.training's recipes/)


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
    from safe.inference.loading import load_trained
    from safe.stages.common import data_source

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
