"""``SAFEModel``: a frozen VL model plus a frozen audio encoder, joined by gated adapters."""
from __future__ import annotations

import contextlib
import importlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from torch import nn

from safe.adapters.cross_attention import GatedCrossAttention
from safe.adapters.injection import AdapterInjector, AudioContext
from safe.models.audio_encoders import AudioEncoder, as_feature_tensor
from safe.models.backbones import Backbone, resolve_backbone
from safe.models.projector import PROJECTOR_MODES, AudioProjector

CONFIG_NAME = "safe_config.json"
WEIGHTS_NAME = "safe_weights.safetensors"
FORMAT_VERSION = 1


@dataclass
class SAFEConfig:
    """What SAFE adds to a frozen base. Every field is validated on construction."""

    fusion_layers: list[int] = field(default_factory=lambda: [-1])
    """Decoder layers after which an adapter runs (negative counts from the end)."""
    num_audio_tokens: int = 8
    """k: audio tokens the projector emits (proposal: 4, 8, 12)."""
    lora_rank: int = 8
    """Rank of the low-rank query map in each cross-attention adapter."""
    num_heads: int = 4
    """Attention heads per adapter."""
    attn_dim: int | None = None
    """Adapter attention width; default min(LLM hidden size, 256)."""
    null_key: bool = True
    """Learned null key with a zero value, so a head can attend to nothing."""
    projector_mode: str = "sequence"
    """``sequence`` (pool the encoder sequence to k tokens) or ``pooled`` (one clip embedding -> k)."""
    projector_hidden: int | None = None
    """Projector MLP width; default the LLM hidden size."""
    ffn_rank: int = 0
    """Width of each adapter's low-rank dense block after its cross-attention (0: none, the layout of
    checkpoints saved before the field existed)."""
    gate_init: float = 0.0
    """Initial gate value g (tanh(g) scales the adapter). 0 makes a fresh model exactly the base."""

    def __post_init__(self) -> None:
        if isinstance(self.fusion_layers, int):
            self.fusion_layers = [self.fusion_layers]
        self.fusion_layers = list(self.fusion_layers)
        if not self.fusion_layers:
            raise ValueError("fusion_layers must name at least one decoder layer, got []")
        for name in ("num_audio_tokens", "lora_rank", "num_heads"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if isinstance(self.ffn_rank, bool) or not isinstance(self.ffn_rank, int) or self.ffn_rank < 0:
            raise ValueError(f"ffn_rank must be an integer >= 0 (0: no dense block), got {self.ffn_rank!r}")
        if self.projector_mode not in PROJECTOR_MODES:
            raise ValueError(f"projector_mode must be one of {PROJECTOR_MODES}, got {self.projector_mode!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SAFEConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown SAFEConfig field(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)


class ParameterReport(dict):
    """Frozen / trainable parameter counts per part (a dict), with :meth:`table` for printing."""

    def table(self) -> str:
        total = self["total"]["parameters"]
        rows = [f"{'part':<16}{'parameters':>14}{'trainable':>14}{'% of total':>12}"]
        for part, c in self.items():
            if part == "total":
                continue
            rows.append(f"{part:<16}{c['parameters']:>14,}{c['trainable']:>14,}{100 * c['parameters'] / total:>11.2f}%")
        t = self["total"]
        rows.append(f"{'total':<16}{t['parameters']:>14,}{t['trainable']:>14,}{100.0:>11.2f}%")
        rows.append(f"frozen {t['parameters'] - t['trainable']:,} ({100 * (1 - t['trainable'] / total):.2f}%), "
                    f"trainable {t['trainable']:,} ({100 * t['trainable'] / total:.2f}%)")
        return "\n".join(rows)

    def __str__(self) -> str:
        return self.table()


class SAFEModel(nn.Module):
    """A frozen VL model and a frozen audio encoder, joined by a projector and gated adapters.

    Guarantees (tested on the real Hugging Face classes):
      * every row whose gate is closed (``audio_mask`` False, no audio, inside :meth:`audio_disabled`,
        or a gate value of exactly 0 when no gradient is wanted) gets logits and generated tokens
        bit-exact to the unwrapped base on the same batch; adapter code never touches those rows;
      * the audio encoder runs only on rows that use audio, and not at all if none does;
      * with a policy attached (:meth:`attach_policy`) and no ``audio_mask``, :meth:`generate` lets the
        policy choose the rows per query (:mod:`safe.policy.runtime`): skipped rows are the base's
        own tokens and never reach the encoder; the output says which rows used audio;
      * base and encoder parameters have ``requires_grad=False`` and are never modified; SAFE's own
        weights are saved separately (:meth:`save_pretrained`).
    """

    def __init__(self, base_model: nn.Module, audio_encoder: nn.Module, config: SAFEConfig | None = None) -> None:
        super().__init__()
        self.config = config or SAFEConfig()
        backbone: Backbone = resolve_backbone(base_model)
        self.audio_encoder = audio_encoder if isinstance(audio_encoder, AudioEncoder) else AudioEncoder(audio_encoder)
        self.base_model = base_model
        self.base_model.requires_grad_(False)
        self.base_model.eval()
        self.backbone = backbone  # a plain dataclass (not a submodule): layer paths and state-feature sources
        self.backbone_name, self.hidden_size = backbone.name, backbone.hidden_size
        self.signature = {**backbone.signature, "audio_encoder": self.audio_encoder.kind,
                          "audio_dim": self.audio_encoder.output_dim}
        n = backbone.num_layers
        layers = []
        for i in self.config.fusion_layers:
            if not -n <= i < n:
                raise ValueError(f"fusion_layers entry {i} is out of range for a base with {n} decoder layers")
            if i % n in backbone.cross_attention_layers:
                # transformers skips a cross-attention layer on a batch without images, so an adapter after it
                # would silently do nothing there (measured on Mllama): refuse rather than train an inert adapter.
                raise ValueError(f"fusion_layers entry {i} names decoder layer {i % n}, a cross-attention layer of "
                                 f"this {backbone.name} base ({list(backbone.cross_attention_layers)}), which "
                                 "transformers skips on batches without images; choose a self-attention layer")
            layers.append(i % n)
        self.fusion_layers = sorted(set(layers))
        device = next(base_model.parameters()).device
        c = self.config
        self.projector = AudioProjector(self.audio_encoder.output_dim, self.hidden_size, c.num_audio_tokens,
                                        mode=c.projector_mode, hidden_dim=c.projector_hidden).to(device)
        self.adapters = nn.ModuleDict({
            str(i): GatedCrossAttention(self.hidden_size, rank=c.lora_rank, num_heads=c.num_heads, attn_dim=c.attn_dim,
                                        null_key=c.null_key, gate_init=c.gate_init, ffn_rank=c.ffn_rank)
            for i in self.fusion_layers})
        for i in self.fusion_layers:  # each adapter on its layer's device (a base spread by device_map="auto")
            layer_param = next(backbone.decoder_layers[i].parameters(), None)
            self.adapters[str(i)].to(device if layer_param is None else layer_param.device)
        self.policy: nn.Module | None = None
        self._injector = AdapterInjector(backbone.decoder_layers, {i: self.adapters[str(i)] for i in self.fusion_layers})
        self._injector.attach()
        self._audio_off = False
        self.audio_encoder_calls = 0  # rows passed through the audio encoder (efficiency accounting)

    # ------------------------------------------------------------------------------------------
    # parts and modes
    def train(self, mode: bool = True):
        super().train(mode)
        self.base_model.eval()  # frozen parts stay in eval mode (no dropout drift)
        self.audio_encoder.eval()
        return self

    def safe_modules(self) -> dict[str, nn.Module]:
        """SAFE's own (trainable) parts by name."""
        parts = {"projector": self.projector, "adapters": self.adapters}
        if self.policy is not None:
            parts["policy"] = self.policy
        return parts

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.safe_modules().values() for p in m.parameters() if p.requires_grad]

    def attach_policy(self, policy: nn.Module | None) -> None:
        """Attach a trained :class:`safe.policy.runtime.AudioPolicy` (None detaches). It is frozen, counted
        in :meth:`parameter_report` and saved with :meth:`save_pretrained`.

        Checked by what it offers (``spec``, ``config()``, ``generate_with(model, **kwargs)``), not by
        class, so this package does not import ``safe.policy`` (the policy package builds on this one)."""
        if policy is not None:
            offers = [hasattr(policy, "spec")] + [callable(getattr(policy, m, None)) for m in ("config", "generate_with")]
            if not (isinstance(policy, nn.Module) and all(offers)):
                raise TypeError(f"policy must be a safe.policy.runtime.AudioPolicy, got {type(policy).__name__}")
            want = {"question_dim": self.hidden_size, "image_dim": self.hidden_size}
            have = {"question_dim": policy.spec.question_dim, "image_dim": policy.spec.image_dim}
            if want != have:
                raise ValueError(f"policy state {have} does not match this base (hidden size {self.hidden_size})")
            policy = policy.to(next(self.base_model.parameters()).device)
        self.policy = policy

    def gates(self) -> dict[int, nn.Parameter]:
        return {i: self.adapters[str(i)].gate.value for i in self.fusion_layers}

    @torch.no_grad()
    def set_gates(self, value: float) -> None:
        """Set every adapter's gate parameter g to ``value`` (0 closes all gates)."""
        for g in self.gates().values():
            g.fill_(value)

    def parameter_report(self) -> ParameterReport:
        """Counts per part, as the proposal reports them (docs/design.md)."""
        parts = {"base_vl": self.base_model, "audio_encoder": self.audio_encoder, **self.safe_modules()}
        rep = ParameterReport()
        for name, module in parts.items():
            ps = list(module.parameters())
            rep[name] = {"parameters": sum(p.numel() for p in ps),
                         "trainable": sum(p.numel() for p in ps if p.requires_grad)}
        rep["total"] = {k: sum(v[k] for v in rep.values()) for k in ("parameters", "trainable")}
        return rep

    @contextlib.contextmanager
    def audio_disabled(self) -> Iterator[SAFEModel]:
        """Inside the block the whole model is the base model: no row uses audio."""
        previous = self._audio_off
        self._audio_off = True
        try:
            yield self
        finally:
            self._audio_off = previous

    def remove_hooks(self) -> None:
        """Detach the adapters from the base model for good (before reusing the base elsewhere or
        wrapping it again); the SAFE model no longer fuses audio afterwards."""
        self._injector.detach()

    @contextlib.contextmanager
    def hooks_detached(self) -> Iterator[nn.Module]:
        """Inside the block the adapter hooks are removed: ``base_model`` is the unwrapped model.
        Used by verification to compare against the base without a second copy in memory."""
        self._injector.detach()
        try:
            yield self.base_model
        finally:
            self._injector.attach()

    # ------------------------------------------------------------------------------------------
    # audio
    def _resolve_mask(self, audio, audio_mask, batch_size: int | None) -> torch.Tensor | None:
        if audio is None:
            if audio_mask is not None and bool(torch.as_tensor(audio_mask).any()):
                raise ValueError("audio_mask marks rows as using audio but no audio_features were given")
            return None
        if batch_size is not None and audio.shape[0] != batch_size:
            raise ValueError(f"audio_features has {audio.shape[0]} rows but the batch has {batch_size}")
        n = audio.shape[0]
        if audio_mask is None:
            return torch.ones(n, dtype=torch.bool, device=audio.device)
        mask = torch.as_tensor(audio_mask, device=audio.device)
        if mask.dtype != torch.bool or mask.shape != (n,):
            raise ValueError(f"audio_mask must be a bool tensor of shape ({n},), got {mask.dtype} {tuple(mask.shape)}")
        return mask

    def encode_audio(self, audio_features: torch.Tensor) -> torch.Tensor:
        """Frozen encoder then projector: (n, ...) encoder input -> (n, k, hidden) audio tokens."""
        audio_features = as_feature_tensor(audio_features)
        self.audio_encoder_calls += audio_features.shape[0]
        return self.projector(self.audio_encoder.encode(audio_features))

    def audio_context(self, audio_features=None, audio_mask=None, batch_size: int | None = None, *,
                      audio_embeddings=None):
        """Context manager making the audio of the rows in ``audio_mask`` visible to the adapters.

        The encoder runs only on those rows; with no such row (or inside :meth:`audio_disabled`) the
        adapters see nothing and the model is the base. ``audio_embeddings`` (n, T, D): the frozen
        encoder's outputs computed beforehand (e.g. from a cache) instead of ``audio_features``."""
        if audio_features is not None and audio_embeddings is not None:
            raise ValueError("pass audio_features or audio_embeddings, not both")
        if audio_features is not None:  # numpy features (e.g. from a feature extractor) work as tensors do
            audio_features = as_feature_tensor(audio_features)
        if audio_embeddings is not None:
            audio_embeddings = as_feature_tensor(audio_embeddings, "audio_embeddings")
        audio = audio_features if audio_embeddings is None else audio_embeddings
        mask = self._resolve_mask(audio, audio_mask, batch_size)
        if self._audio_off or mask is None or not bool(mask.any()):
            return self._injector.audio(None)
        rows = mask.nonzero().squeeze(1).to(next(self.base_model.parameters()).device)
        if audio_embeddings is None:
            tokens = self.encode_audio(audio_features[mask])
        else:
            tokens = self.projector(audio_embeddings[mask])
        return self._injector.audio(AudioContext(tokens, rows, int(mask.shape[0])))

    @staticmethod
    def _batch_size(kwargs: dict) -> int | None:
        for key in ("input_ids", "inputs_embeds", "pixel_values"):
            if kwargs.get(key) is not None:
                return int(kwargs[key].shape[0])
        return None

    # ------------------------------------------------------------------------------------------
    # forward / generate
    def forward(self, *args, audio_features: torch.Tensor | None = None, audio_mask: torch.Tensor | None = None,
                audio_embeddings: torch.Tensor | None = None, **vl_inputs):
        """The base model's forward (same arguments, same output type) with audio fused into rows of
        ``audio_mask``. ``audio_features``: the encoder's input tensor, batch-first; ``audio_mask``:
        bool (batch,), None = all rows when features are given; ``audio_embeddings``: precomputed
        encoder outputs instead of features."""
        with self.audio_context(audio_features, audio_mask, self._batch_size(vl_inputs),
                                audio_embeddings=audio_embeddings):
            return self.base_model(*args, **vl_inputs)

    @torch.no_grad()
    def generate(self, *args, audio_features: torch.Tensor | None = None, audio_mask: torch.Tensor | None = None,
                 audio_embeddings: torch.Tensor | None = None, audio_preview: torch.Tensor | None = None, **kwargs):
        """The base model's ``generate`` (greedy, sampling, beams, ``num_return_sequences``) with
        audio fused into the rows of ``audio_mask``; other rows generate exactly what the base does.

        With a policy attached, audio given and ``audio_mask`` None, the policy picks the rows instead
        and a :class:`safe.policy.runtime.PolicyGenerateOutput` (``sequences``, ``used_audio``, ...) is
        returned; ``audio_preview`` (n, preview_dim) is then required."""
        if audio_features is not None and not callable(audio_features):
            audio_features = as_feature_tensor(audio_features)
        if self.policy is not None and audio_mask is None and not self._audio_off and (
                audio_features is not None or audio_embeddings is not None):
            if args:
                raise ValueError("generate with a policy takes its inputs as keyword arguments (input_ids=...)")
            return self.policy.generate_with(self, audio_preview=audio_preview, audio_features=audio_features,
                                             audio_embeddings=audio_embeddings, **kwargs)
        with self.audio_context(audio_features, audio_mask, self._batch_size(kwargs),
                                audio_embeddings=audio_embeddings):
            return self.base_model.generate(*args, **kwargs)

    # ------------------------------------------------------------------------------------------
    # persistence (SAFE's own weights only)
    def safe_state_dict(self) -> dict[str, torch.Tensor]:
        return {f"{name}.{k}": v for name, m in self.safe_modules().items() for k, v in m.state_dict().items()}

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Write SAFE's weights (safetensors) and config (JSON) to ``path``; the base is not saved.
        Files are written to temporaries and renamed, so a crash never leaves a half-written pair."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        meta = {"format_version": FORMAT_VERSION, "config": self.config.to_dict(), "base_signature": self.signature,
                "has_policy": self.policy is not None,
                "policy": self.policy.config() if self.policy is not None else None}
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.safe_state_dict().items()}
        with tempfile.NamedTemporaryFile(dir=path, suffix=".tmp", delete=False) as f:
            tmp_w = f.name
        save_file(tensors, tmp_w, metadata={"format": "pt"})
        with tempfile.NamedTemporaryFile("w", dir=path, suffix=".tmp", delete=False) as f:
            json.dump(meta, f, indent=2)
            tmp_c = f.name
        os.replace(tmp_w, path / WEIGHTS_NAME)
        os.replace(tmp_c, path / CONFIG_NAME)
        return path

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, base_model: nn.Module, audio_encoder: nn.Module) -> SAFEModel:
        """Rebuild SAFE on ``base_model`` / ``audio_encoder`` and load its weights from ``path``.
        Refuses (``ValueError``) a checkpoint made for a base of another architecture, hidden size,
        layer count, or audio encoder width."""
        from safetensors.torch import load_file

        path = Path(path)
        cfg_file, w_file = path / CONFIG_NAME, path / WEIGHTS_NAME
        for f in (cfg_file, w_file):
            if not f.is_file():
                raise FileNotFoundError(f"not a SAFE checkpoint: {f} is missing")
        try:
            meta = json.loads(cfg_file.read_text())
        except (UnicodeDecodeError, ValueError, RecursionError) as err:
            raise ValueError(f"{cfg_file}: not a readable JSON file ({type(err).__name__}: {err})") from None
        lacking = [k for k in ("format_version", "base_signature", "config") if not isinstance(meta, dict) or k not in meta]
        if lacking:
            raise ValueError(f"{cfg_file}: not a SAFE config (missing {', '.join(lacking)})")
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{cfg_file}: format_version {meta.get('format_version')!r}, expected {FORMAT_VERSION}")
        # Check compatibility before building, so a refused load leaves no hooks on the caller's base.
        encoder = audio_encoder if isinstance(audio_encoder, AudioEncoder) else AudioEncoder(audio_encoder)
        have = {**resolve_backbone(base_model).signature, "audio_encoder": encoder.kind, "audio_dim": encoder.output_dim}
        want = meta["base_signature"]
        diff = {k: (want.get(k), have.get(k)) for k in set(want) | set(have) if want.get(k) != have.get(k)}
        if diff:
            detail = ", ".join(f"{k}: checkpoint {a!r} vs given {b!r}" for k, (a, b) in sorted(diff.items()))
            raise ValueError(f"SAFE checkpoint {path} was made for another base model ({detail})")
        try:
            config = SAFEConfig.from_dict(meta["config"])
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ValueError(f"{cfg_file}: its 'config' is not a SAFE config ({type(err).__name__}: {err})") from None
        model = cls(base_model, encoder, config)
        try:
            if meta.get("has_policy"):
                model.attach_policy(_policy_class().from_config(meta["policy"]))
            try:
                state = load_file(str(w_file))
            except Exception as err:  # noqa: BLE001 - safetensors raises its own error type for a bad file
                raise ValueError(f"{w_file}: not a readable safetensors file (truncated or not weights: "
                                 f"{' '.join(str(err).split())[:200]})") from None
            own = model.safe_state_dict()
            missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
            if missing or unexpected:
                raise ValueError(f"{w_file}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
            with torch.no_grad():
                for name, module in model.safe_modules().items():
                    prefix = name + "."
                    module.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
        except Exception:
            model.remove_hooks()
            raise
        return model


POLICY_CLASS = "safe.policy.runtime:AudioPolicy"
"""The class a checkpoint's saved policy is rebuilt with (``from_config``). Named, not imported: the
policy package imports this one, so importing it back here would close a cycle; it is imported only
when a checkpoint that holds a policy is loaded."""


def _policy_class():
    module, _, name = POLICY_CLASS.partition(":")
    return getattr(importlib.import_module(module), name)
