"""Frozen audio encoders behind one interface: ``encode(input_features) -> (batch, tokens, dim)``."""
from __future__ import annotations

import torch
from torch import nn

SUPPORTED_AUDIO_ENCODERS = ("ClapModel", "ClapAudioModel", "ClapAudioModelWithProjection",
                            "WhisperModel", "WhisperForConditionalGeneration", "WhisperEncoder",
                            "ASTModel", "ASTForAudioClassification",
                            "Wav2Vec2Model", "Wav2Vec2ForCTC", "HubertModel", "HubertForCTC", "WavLMModel", "WavLMForCTC",
                            "Qwen2AudioEncoder")
_WAVEFORM = {"Wav2Vec2Model": "wav2vec2", "HubertModel": "hubert", "WavLMModel": "wavlm"}
"""Encoders reading the raw waveform (``input_values`` (n, samples)); their ``*ForCTC`` heads are dropped."""


def as_feature_tensor(x, name: str = "audio_features") -> torch.Tensor:
    """Encoder input features as a tensor: a tensor as it is, a numpy array (or anything numpy reads as
    numbers) converted; anything else is a ``TypeError`` naming ``name``."""
    if isinstance(x, torch.Tensor):
        return x
    import numpy as np

    arr = np.asarray(x) if not isinstance(x, (str, bytes)) else np.asarray(None)
    if arr.dtype.kind not in "iuf" or arr.ndim == 0:
        raise TypeError(f"{name} must be a tensor or numeric array of the encoder's input features "
                        f"(batch first), got {type(x).__name__}")
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32 if arr.dtype.kind == "f" else None))


class AudioEncoder(nn.Module):
    """A frozen audio encoder. Guarantees: parameters never require grad and ``encode`` runs under
    ``torch.no_grad``; output is batch-first ``(batch, tokens, output_dim)``.

    ``kind`` is ``"clap"`` (the HTSAT audio tower's final feature map, flattened over frequency x
    time), ``"whisper"`` / ``"qwen2-audio"`` (the encoder's last hidden states over log-mel features),
    ``"ast"`` (the Audio Spectrogram Transformer's last hidden states over its filter-bank features), or
    ``"wav2vec2"`` / ``"hubert"`` / ``"wavlm"`` (last hidden states over the raw waveform). Each reads
    what its own feature extractor makes (:class:`safe.processing.features.FeatureFrontEnd`). The
    built-in encoder is a small Whisper-architecture model, so it goes through the same path.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        cls = type(model).__name__
        if cls == "ClapModel":
            self.kind, self.model, self.output_dim = "clap", model.audio_model, model.config.audio_config.hidden_size
        elif cls == "ClapAudioModel":
            self.kind, self.model, self.output_dim = "clap", model, model.config.hidden_size
        elif cls == "ClapAudioModelWithProjection":
            self.kind, self.model, self.output_dim = "clap", model.audio_model, model.config.hidden_size
        elif cls in ("WhisperModel", "WhisperForConditionalGeneration"):
            self.kind, self.model, self.output_dim = "whisper", model.get_encoder(), model.config.d_model
        elif cls == "WhisperEncoder":
            self.kind, self.model, self.output_dim = "whisper", model, model.config.d_model
        elif cls == "Qwen2AudioEncoder":
            self.kind, self.model, self.output_dim = "qwen2-audio", model, model.config.d_model
        elif cls in ("ASTModel", "ASTForAudioClassification"):
            inner = model if cls == "ASTModel" else model.audio_spectrogram_transformer
            self.kind, self.model, self.output_dim = "ast", inner, model.config.hidden_size
        elif cls.replace("ForCTC", "Model") in _WAVEFORM:
            inner = model if cls in _WAVEFORM else getattr(model, _WAVEFORM[cls.replace("ForCTC", "Model")])
            self.kind, self.model, self.output_dim = _WAVEFORM[cls.replace("ForCTC", "Model")], inner, model.config.hidden_size
        else:
            raise ValueError(f"unsupported audio encoder {cls}; SAFE supports: {', '.join(SUPPORTED_AUDIO_ENCODERS)}")
        # Freeze everything the user passed (e.g. Whisper's unused decoder too), but register only the
        # part that runs, so state_dict / hashing / .to() see each tensor once.
        model.requires_grad_(False)
        model.eval()

    def train(self, mode: bool = True):  # frozen: dropout and friends stay in eval mode
        return super().train(False)

    @torch.no_grad()
    def encode(self, input_features: torch.Tensor) -> torch.Tensor:
        """``input_features``: the encoder's own input (CLAP (n, 1, frames, mels) or (n, frames, mels);
        Whisper / Qwen2-Audio (n, mels, frames); AST (n, frames, mels); wav2vec2 / HuBERT / WavLM
        (n, samples)) -> (n, tokens, output_dim)."""
        param = next(self.model.parameters())
        x = as_feature_tensor(input_features, "input_features").to(device=param.device, dtype=param.dtype)
        if self.kind == "clap":
            if x.dim() == 3:
                x = x.unsqueeze(1)
            if x.shape[1] != 1 and not getattr(self.model.config, "enable_fusion", False):
                raise ValueError(f"CLAP input_features have {x.shape[1]} channels (the feature extractor's 'fusion' "
                                 "truncation) but this CLAP model has no fusion; use truncation='rand_trunc'")
            out = self.model(input_features=x).last_hidden_state  # (n, C, F, T)
            return out.flatten(2).transpose(1, 2)
        if self.kind == "ast" or self.kind in _WAVEFORM.values():
            return self.model(input_values=x).last_hidden_state
        return self.model(x).last_hidden_state
