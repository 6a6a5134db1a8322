"""Model inputs prepared once: tokenised prompts/answers, pixel tensors and cached frozen-encoder
outputs, so a training step or an evaluation pass does no I/O and runs the audio encoder never (each
clip is encoded once, keyed by content hash and encoder fingerprint). Used by Stage A, the policy
stage and evaluation."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Sequence

import torch

from safe.data.records import Example
from safe.processing.prompts import Encoded


@dataclass
class PreparedSet:
    """Examples with everything a step needs, index-aligned.

    ``audio``: (n, T, D) frozen-encoder outputs of each example's clip; ``needs_audio``: (n,) bool."""

    examples: list[Example]
    enc: Encoded
    pixels: torch.Tensor
    audio: torch.Tensor
    needs_audio: torch.Tensor

    def __len__(self) -> int:
        return len(self.examples)

    def prompt_inputs(self, fmt, index: Sequence[int], device=None) -> dict[str, torch.Tensor]:
        """The VL inputs of rows ``index`` for ``generate``: ``fmt``'s prompt batch plus ``pixel_values``,
        on ``device`` (left where they are when None)."""
        index = list(index)
        batch = {**fmt.prompt_batch(self.enc, index), "pixel_values": self.pixels[index]}
        return batch if device is None else {k: v.to(device) for k, v in batch.items()}

    def subset(self, index: Sequence[int]) -> "PreparedSet":
        index = list(index)
        return PreparedSet([self.examples[i] for i in index],
                           self.enc.subset(index) if hasattr(self.enc, "subset") else  # per-example extras too
                           Encoded([self.enc.prompts[i] for i in index], [self.enc.answers[i] for i in index]),
                           self.pixels[index], self.audio[index], self.needs_audio[index])


def encoder_fingerprint(audio_encoder, frontend) -> str:
    """Identifies the frozen encoder and its feature settings (the embedding cache's namespace)."""
    from safe.models.integrity import state_hash

    feats = hashlib.sha256(json.dumps(frontend.config(), sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{state_hash(audio_encoder)[:24]}-{feats}"


def encode_clips(model, paths: Sequence[str], frontend, cache=None, batch_size: int = 256,
                 progress: bool = False) -> torch.Tensor:
    """Frozen-encoder outputs (n, T, D) of WAV files, through the content-hash cache when given."""
    from tqdm.auto import tqdm

    from safe.processing.audio import read_wav

    def compute(positions: list[int]) -> torch.Tensor:
        chunks = []
        for s in tqdm(range(0, len(positions), batch_size), desc="encoding audio", disable=not progress, leave=False):
            wavs = [read_wav(paths[i], target_rate=frontend.sampling_rate)[0] for i in positions[s:s + batch_size]]
            chunks.append(model.audio_encoder.encode(frontend(wavs)).float().cpu())
        return torch.cat(chunks)

    if cache is None:
        return compute(list(range(len(paths))))
    return cache.get_or_compute([cache.key_for_file(p) for p in paths], compute)


def prepare(examples: Sequence[Example], fmt, model, frontend, cache=None, progress: bool = False) -> PreparedSet:
    """Tokenise, load images and encode audio of ``examples`` with the model's own formats."""
    examples = list(examples)
    missing = [e.id for e in examples if e.image is None or e.audio is None]
    if missing:
        raise ValueError(f"{len(missing)} examples lack an image or audio clip (first: {missing[0]}); "
                         "Stage A needs both")
    return PreparedSet(examples, fmt.encode(examples), fmt.pixels([e.image for e in examples]),
                       encode_clips(model, [e.audio for e in examples], frontend, cache, progress=progress),
                       torch.tensor([e.needs_audio for e in examples], dtype=torch.bool))


def read_waveforms(examples: Sequence[Example], sampling_rate: int) -> list:
    """The mono waveform of each example's clip, resampled to ``sampling_rate``."""
    from safe.processing.audio import read_wav

    return [read_wav(e.audio, target_rate=sampling_rate)[0] for e in examples]
