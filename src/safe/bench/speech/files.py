"""The speech track on disk, in the built-in benchmark's layout, so :class:`~safe.bench.files.BuiltinSource`
and every stage read it unchanged::

    out_dir/images/<split>_<index>.png
    out_dir/audio/<utterance id>.wav   22,050 Hz int16 mono, one file per distinct utterance
    out_dir/<split>.jsonl              one ``Example.to_dict()`` per line
    out_dir/benchmark.json             written last: its presence marks a complete track
"""
from __future__ import annotations

import hashlib
import json
import logging
import wave
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from safe.atomic import staged_file, write_atomic
from safe.bench.files import FORMAT_VERSION, BenchmarkMissingError, load_benchmark_info, load_split, sha256_file
from safe.bench.speech.track import (
    PROMPTS,
    QUESTION_FAMILIES,
    SAMPLE_RATE,
    TASK,
    TRACK_VERSION,
    SpeechConfig,
    make_row,
    split_plan,
)

logger = logging.getLogger(__name__)

#: Samples quieter than this (int16 units, about -50 dBFS) count as silence when a clip is trimmed.
SILENCE = 100
#: Silence kept on either side of the speech when trimming, in seconds.
MARGIN_SECONDS = 0.05


class ClipTooLongError(ValueError):
    """A spoken clip does not fit the encoder window; the message names the utterance and both lengths."""


def utterance_id(utterance: dict[str, Any]) -> str:
    """Stable short id of ``{"text", "voice", "rate", "pitch"}`` (the clip's file name)."""
    key = json.dumps({k: utterance[k] for k in ("text", "voice", "rate", "pitch")}, sort_keys=True)
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


def trim_silence(samples: np.ndarray, rate: int = SAMPLE_RATE) -> np.ndarray:
    """``samples`` without the leading and trailing silence, keeping :data:`MARGIN_SECONDS` on each side."""
    loud = np.nonzero(np.abs(samples.astype(np.int32)) > SILENCE)[0]
    if loud.size == 0:
        return samples
    margin = int(MARGIN_SECONDS * rate)
    return samples[max(0, loud[0] - margin): loud[-1] + 1 + margin]


def speak(utterance: dict[str, Any]) -> np.ndarray:
    """The utterance as trimmed 22,050 Hz int16 samples (eSpeak NG)."""
    from safe.bench.speech.espeak import Voice, synthesize

    voice = Voice(utterance["voice"], int(utterance["rate"]), int(utterance["pitch"]))
    return trim_silence(synthesize(utterance["text"], voice))


def _write_pcm16(path: Path, samples: np.ndarray, rate: int) -> None:
    with staged_file(path) as tmp, wave.open(str(tmp), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.asarray(samples, dtype="<i2").tobytes())


def _is_complete(out: Path, config: SpeechConfig) -> bool:
    try:
        info = load_benchmark_info(out)
        if (info.get("task") != TASK or info.get("config") != config.to_dict()
                or info.get("track_version") != TRACK_VERSION):
            return False
        for split in info["splits"]:
            load_split(out, split)
    except (BenchmarkMissingError, ValueError, KeyError):
        return False
    return True


def generate_speech_benchmark(out_dir: str | Path, config: SpeechConfig | None = None, progress: bool = True, *,
                              force: bool = False) -> Path:
    """Write the speech track for ``config`` under ``out_dir`` (reused when complete for the same config,
    unless ``force``); return the folder. ``benchmark.json`` is removed first and written last, each manifest
    renamed into place once complete. Raises :class:`ClipTooLongError` when a clip is longer than
    ``config.window_seconds``."""
    config = config if config is not None else SpeechConfig()
    out = Path(out_dir)
    if not force and _is_complete(out, config):
        logger.info("speech track at %s is complete for this config; reusing it", out)
        return out
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmark.json").unlink(missing_ok=True)
    (out / "images").mkdir(exist_ok=True)
    (out / "audio").mkdir(exist_ok=True)
    sizes = config.split_sizes()
    limit = config.window_seconds * SAMPLE_RATE
    clips: dict[str, float] = {}  # utterance id -> seconds, for clips written by this generation
    counts: dict[str, dict[str, int]] = {}
    voices: dict[str, Counter] = {}
    vocab: dict[str, set[str]] = defaultdict(set)
    digests: dict[str, str] = {}
    with tqdm(total=sum(sizes.values()), desc="speech track", unit="ex", disable=not progress) as bar:
        for split, n in sizes.items():
            plan = split_plan(config, split)
            fams: Counter[str] = Counter()
            voices[split] = Counter()
            with staged_file(out / f"{split}.jsonl") as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as f:
                for index in range(n):
                    ex, image, utterance = make_row(config, split, index, plan)
                    uid = utterance_id(utterance)
                    if uid not in clips:
                        samples = speak(utterance)
                        if len(samples) > limit:
                            raise ClipTooLongError(
                                f"utterance {utterance} lasts {len(samples) / SAMPLE_RATE:.2f} s, longer than the "
                                f"{config.window_seconds} s encoder window (SpeechConfig.window_seconds); raise the "
                                "window or the speaking rates")
                        _write_pcm16(out / "audio" / f"{uid}.wav", samples, SAMPLE_RATE)
                        clips[uid] = len(samples) / SAMPLE_RATE
                    image.save(out / ex.image, format="PNG")
                    d = ex.to_dict()
                    d["audio"] = f"audio/{uid}.wav"
                    f.write(json.dumps(d, sort_keys=True) + "\n")
                    fams[ex.family] += 1
                    voices[split][utterance["voice"]] += 1
                    vocab[ex.family].add(ex.answer)
                    bar.update(1)
            digests[split] = sha256_file(out / f"{split}.jsonl")
            counts[split] = {"total": n, "families": {k: fams[k] for k in QUESTION_FAMILIES if fams[k]}}
    seconds = np.array(list(clips.values()) or [0.0])
    info = {
        "format_version": FORMAT_VERSION, "track_version": TRACK_VERSION, "task": TASK, "config": config.to_dict(),
        "splits": list(sizes),
        "counts": counts, "families": dict(QUESTION_FAMILIES), "question_templates": dict(PROMPTS),
        "answer_vocab": {k: sorted(v) for k, v in vocab.items()},
        "answers": sorted(set().union(*vocab.values())) if vocab else [],
        "voices": {s: dict(sorted(c.items())) for s, c in voices.items()},
        "clips": {"distinct": len(clips), "sample_rate": SAMPLE_RATE, "mean_seconds": round(float(seconds.mean()), 3),
                  "max_seconds": round(float(seconds.max()), 3)},
        "manifest_sha256": digests,
    }
    write_atomic(out / "benchmark.json", json.dumps(info, indent=2) + "\n")
    logger.info("wrote the speech track to %s: %s, %d distinct clips", out, sizes, len(clips))
    return out
