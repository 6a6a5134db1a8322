"""The audio preview part of the policy's state (:data:`safe.policy.features.PREVIEW_KINDS`): the waveform
statistics of :func:`safe.processing.features.audio_preview`, or :func:`preview_embedding`, the frozen audio
encoder's convolution stem and first layer on the clip's first quarter second. :func:`policy_preview` computes
whichever one a :class:`~safe.policy.features.StateSpec` reads, for the training tables and every deployed
path alike."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from safe.policy.features import StateSpec

PREVIEW_SECONDS = 0.25
"""The window of each clip the embedding preview reads: its first quarter second."""


def _window_features(frontend, waveforms, seconds: float) -> torch.Tensor:
    """Log-mel features of the first ``seconds`` of each clip only, (n, mels, frames of the window): the front
    end's own Whisper extractor, every clip padded to the window instead of the full chunk (so the short-time
    Fourier transform covers the window, not the whole clip). Padded to the window, not to the batch's
    longest clip: a clip's preview must not depend on the batch it came in (training tables and the deployed
    path batch rows differently)."""
    import numpy as np

    extractor = getattr(frontend, "_preview_extractor", None) or frontend.extractor
    frontend._preview_extractor = extractor  # the built-in front end builds a new one per access
    if type(extractor).__name__ != "WhisperFeatureExtractor":
        raise ValueError(f"the embedding preview reads log-mel features of a Whisper front end, not "
                         f"{type(extractor).__name__}; use the statistics preview (preview_kind 'stats')")
    sr = int(extractor.sampling_rate)
    n = max(int(round(seconds * sr)), int(extractor.hop_length) * 4)
    clips = [np.asarray(w, dtype=np.float32).reshape(-1)[:n] for w in waveforms]
    clips = [c if c.size else np.zeros(1, np.float32) for c in clips]
    out = extractor(clips, sampling_rate=sr, return_tensors="pt", padding="max_length", max_length=n,
                    truncation=False)
    return out["input_features"].float()


@torch.no_grad()
def preview_embedding(encoder, frontend, waveforms, seconds: float = PREVIEW_SECONDS, layers: int = 1) -> torch.Tensor:
    """The frozen audio encoder's first ``layers`` layer(s) on the first ``seconds`` of each clip, mean-pooled
    over positions: (n, encoder width) float32 on the CPU. The window's log-mel features go through the
    encoder's own convolution stem (which halves the frame rate), positions and first layer(s), nothing
    after; a cheap look at the clip in the encoder's own feature space. Whisper-kind encoders only (the
    built-in encoder is one); others raise ``ValueError``."""
    enc = getattr(encoder, "model", encoder)  # an AudioEncoder wrapper or the WhisperEncoder itself
    if getattr(encoder, "kind", "whisper") not in ("whisper",) or not hasattr(enc, "conv1"):
        raise ValueError(f"the embedding preview needs a Whisper-kind audio encoder, got "
                         f"{getattr(encoder, 'kind', type(encoder).__name__)}; use the statistics preview")
    if len(waveforms) == 0:
        return torch.zeros(0, enc.config.d_model)
    param = next(enc.parameters())
    x = _window_features(frontend, waveforms, seconds).to(device=param.device, dtype=param.dtype)
    h = torch.nn.functional.gelu(enc.conv2(torch.nn.functional.gelu(enc.conv1(x)))).permute(0, 2, 1)
    t = min(h.shape[1], enc.embed_positions.num_embeddings)
    h = h[:, :t] + enc.embed_positions.weight[:t]
    for layer in enc.layers[:layers]:
        out = layer(h, None)
        h = out[0] if isinstance(out, tuple) else out
    return h.mean(1).float().cpu()


def policy_preview(spec: StateSpec, waveforms, encoder, frontend) -> torch.Tensor:
    """The preview part ``spec`` reads for each clip, (n, spec.preview_dim) float32 on the CPU: the waveform
    statistics, :func:`preview_embedding` (``encoder`` / ``frontend``: the SAFE model's audio encoder and its
    front end), or (n, 0) for a state without a preview. What the training tables and every deployed path
    (pipeline, ``safe predict``, ``safe serve``) compute, so a policy sees the preview it was trained on."""
    from safe.processing.features import audio_preview

    waveforms = list(waveforms)
    if spec.preview_dim == 0:
        return torch.zeros(len(waveforms), 0)
    if spec.preview_kind == "stats":
        return audio_preview(waveforms) if waveforms else torch.zeros(0, spec.preview_dim)
    return preview_embedding(encoder, frontend, waveforms)
