"""The speech track's own figures, beside the evaluation protocol's: accuracy per voice (held-out voices
included), what the cut encoder window keeps of the full one, and the audio encoder's share of the cost."""
from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from safe.data.records import Example


def per_voice_accuracy(model, fmt, prepared, progress: bool = False) -> dict[str, dict]:
    """Exact-match accuracy on the audio-dependent rows of ``prepared`` per speaking voice: SAFE with each
    row's own clip (gate open) and the deaf base (the same model with its hooks detached)."""
    from safe.evaluation.metrics import exact_match
    from safe.models.generation import answer_questions

    rows = [i for i, e in enumerate(prepared.examples) if e.needs_audio]
    model.eval()
    with model.hooks_detached() as base:
        deaf = answer_questions(base, fmt, prepared.enc, prepared.pixels, index=rows, progress=progress)
    # audio_mask: every row hears its clip, whether or not a policy is attached (its choice is measured by eval)
    heard = answer_questions(model, fmt, prepared.enc, prepared.pixels, index=rows, progress=progress,
                             extra=lambda idx: {"audio_embeddings": prepared.audio[idx],
                                                "audio_mask": torch.ones(len(idx), dtype=torch.bool)})
    by_voice: dict[str, dict[str, list[float]]] = defaultdict(lambda: {"safe": [], "base": []})
    for i, d, h in zip(rows, deaf, heard):
        e = prepared.examples[i]
        voice = e.meta["utterance"]["voice"]
        by_voice[voice]["safe"].append(exact_match(h, e.answers))
        by_voice[voice]["base"].append(exact_match(d, e.answers))
    return {v: {"n": len(s["safe"]), "safe": float(np.mean(s["safe"])), "base": float(np.mean(s["base"]))}
            for v, s in sorted(by_voice.items())}


def probe_sample(examples: Sequence[Example], texts: int = 8, voices: int = 6) -> list[Example]:
    """Rows whose clips form a grid of ``texts`` utterance texts x ``voices`` voices (one row per cell, the
    first found), for :func:`window_probe`; cells missing from ``examples`` are left out."""
    cells: dict[tuple[str, str], Example] = {}
    text_order: list[str] = []
    voice_order: list[str] = []
    for e in examples:
        u = e.meta["utterance"]
        if u["text"] not in text_order:
            text_order.append(u["text"])
        if u["voice"] not in voice_order:
            voice_order.append(u["voice"])
        cells.setdefault((u["text"], u["voice"]), e)
    keep_t = [t for t in text_order if sum((t, v) in cells for v in voice_order) >= min(voices, len(voice_order))][:texts]
    keep_v = voice_order[:voices]
    return [cells[(t, v)] for t in keep_t for v in keep_v if (t, v) in cells]


def _pooled(encoder_dir: str | Path, paths: Sequence[str], segments: int) -> tuple[torch.Tensor, float]:
    """(clips, segments * d) features pooled as the projector pools them, and encoder seconds per clip."""
    from transformers import WhisperFeatureExtractor

    from safe.models.audio_encoders import AudioEncoder
    from safe.models.loading import load_audio_encoder
    from safe.processing.audio import read_wav

    fe = WhisperFeatureExtractor.from_pretrained(str(encoder_dir), local_files_only=True)
    enc = AudioEncoder(load_audio_encoder(encoder_dir))
    wavs = [read_wav(p, target_rate=fe.sampling_rate)[0] for p in paths]
    feats = fe(wavs, sampling_rate=fe.sampling_rate, return_tensors="pt")["input_features"]
    t0 = time.perf_counter()
    out = torch.cat([enc.encode(feats[i:i + 8]) for i in range(0, len(feats), 8)])
    seconds = (time.perf_counter() - t0) / max(1, len(paths))
    return out, seconds


def window_probe(full_dir: str | Path, cut_dir: str | Path, examples: Sequence[Example], segments: int = 10) -> dict:
    """Does the cut window keep what the full 30-s window hears? On the clips of ``examples`` (a text x voice
    grid from :func:`probe_sample`): leave-one-voice-out nearest-neighbour identification of the spoken text
    from the encoder output of the clip's first ``cut`` seconds, pooled to ``segments`` as SAFE's projector
    does (cosine), with each window; the cosine similarity of the two windows' frames; encoder seconds per clip."""
    paths = [e.audio for e in examples]
    texts = [e.meta["utterance"]["text"] for e in examples]
    voices = [e.meta["utterance"]["voice"] for e in examples]
    cut, cut_s = _pooled(cut_dir, paths, segments)
    full, full_s = _pooled(full_dir, paths, segments)
    frames = cut.shape[1]
    sim = torch.nn.functional.cosine_similarity(full[:, :frames], cut, dim=-1).mean().item()
    out = {"clips": len(paths), "texts": len(set(texts)), "voices": len(set(voices)), "cut_frames": frames,
           "full_frames": full.shape[1], "frame_cosine": round(sim, 4),
           "encoder_seconds_per_clip": {"full": round(full_s, 4), "cut": round(cut_s, 4)}}
    for name, x in (("full", full[:, :frames]), ("cut", cut)):
        # The full window's frames past the clip's window are padding for every clip; comparing the same
        # frames keeps the two probes on equal footing.
        pooled = torch.nn.functional.adaptive_avg_pool1d(x.transpose(1, 2), segments).flatten(1)
        pooled = torch.nn.functional.normalize(pooled - pooled.mean(0), dim=1)
        sims = pooled @ pooled.T
        right = []
        for i in range(len(paths)):
            others = [j for j in range(len(paths)) if voices[j] != voices[i]]
            j = max(others, key=lambda k: float(sims[i, k])) if others else i
            right.append(texts[j] == texts[i])
        out[f"text_id_accuracy_{name}"] = float(np.mean(right))
    return out


def encoder_cost(encoder_dir: str | Path, paths: Sequence[str], batch: int = 16, repeats: int = 5) -> dict:
    """Front end + encoder per clip at ``batch`` (median milliseconds on one thread) and encoder FLOPs per clip."""
    from transformers import WhisperFeatureExtractor

    from safe.evaluation.efficiency import count_flops, latency_stats, time_calls
    from safe.models.audio_encoders import AudioEncoder
    from safe.models.loading import load_audio_encoder
    from safe.processing.audio import read_wav

    fe = WhisperFeatureExtractor.from_pretrained(str(encoder_dir), local_files_only=True)
    enc = AudioEncoder(load_audio_encoder(encoder_dir))
    wavs = [read_wav(p, target_rate=fe.sampling_rate)[0] for p in list(paths)[:batch]]

    def run():
        return enc.encode(fe(wavs, sampling_rate=fe.sampling_rate, return_tensors="pt")["input_features"])

    ms = latency_stats(time_calls(run, repeats=repeats, warmup=1))["median"] / len(wavs)
    feats = fe(wavs, sampling_rate=fe.sampling_rate, return_tensors="pt")["input_features"]
    return {"ms_per_clip": round(ms, 3), "flops_per_clip": count_flops(lambda: enc.encode(feats)) / len(wavs),
            "batch": len(wavs), "window_seconds": feats.shape[-1] / 100}
