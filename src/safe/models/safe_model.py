"""``SAFEModel``: a frozen VL model plus frozen encoders of one or more modalities, joined by gated adapters."""
from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from safe.adapters.injection import AdapterInjector
from safe.models.backbones import Backbone, resolve_backbone
from safe.models.checkpoint import (
    CONFIG_NAME,
    FORMAT_VERSION,
    WEIGHTS_NAME,
    check_signature,
    config_of,
    load_parts,
    load_weights,
    read_checkpoint,
)
from safe.models.config import ParameterReport, SAFEConfig
from safe.models.encoders import as_features, wrap_encoder
from safe.models.modality import INPUT_SUFFIXES, ModalityBranch, check_modality_name

_BASE_INPUT_PREFIXES = ("input", "image", "video", "pixel", "audio_input", "vision")
"""Prefixes of base-model arguments ending in ``_features`` / ``_embeddings`` (not modalities)."""



class SAFEModel(nn.Module):
    """A frozen VL model and one or more frozen modality encoders, joined by projectors and gated adapters.

    The modality given to the constructor is the *primary* one (named ``modality``, ``"audio"`` by
    default; its parts are ``audio_encoder``, ``projector`` and ``adapters``, and the ``audio_*``
    arguments address it); :meth:`add_modality` / :meth:`load_modality` add more (``depth``, ...), each
    with its own encoder, projector, adapters and gates, fed by ``<name>_features`` / ``<name>_mask`` /
    ``<name>_embeddings``. Each row of a batch uses any subset of the modalities.

    Guarantees (tested on the real Hugging Face classes):
      * every row that uses no modality (masks False, no inputs, inside :meth:`audio_disabled`, or gate
        values of exactly 0 when no gradient is wanted) gets logits and generated tokens bit-exact to the
        unwrapped base on the same batch; adapter code never touches those rows;
      * at each fusion layer the modalities' adapters run in the order the modalities were added, each on
        its own rows only: a row that uses one modality gets exactly what a SAFE model carrying only that
        modality (same weights) gives, so adding a modality never moves another's rows;
      * each encoder runs only on the rows that use its modality, and not at all if none does;
      * with a policy attached (:meth:`attach_policy`) and no ``audio_mask``, :meth:`generate` lets the
        policy choose the audio rows per query (:mod:`safe.policy.runtime`): skipped rows are the base's
        own tokens and never reach the encoder; the output says which rows used audio;
      * base and encoder parameters have ``requires_grad=False`` and are never modified; SAFE's own
        weights are saved separately (:meth:`save_pretrained`); an audio-only checkpoint keeps its layout.
    """

    def __init__(self, base_model: nn.Module, audio_encoder: nn.Module, config: SAFEConfig | None = None, *,
                 modality: str = "audio") -> None:
        super().__init__()
        self.config = config or SAFEConfig()
        backbone: Backbone = resolve_backbone(base_model)
        # "audio" is SAFE's own (its forward takes audio_* by name), whatever the base's forward takes
        check_modality_name(modality, set() if modality == "audio" else _base_inputs(base_model))
        self.base_model = base_model
        self.base_model.requires_grad_(False)
        self.base_model.eval()
        self.backbone = backbone  # a plain dataclass (not a submodule): layer paths and state-feature sources
        self.backbone_name, self.hidden_size = backbone.name, backbone.hidden_size
        primary = ModalityBranch(modality, audio_encoder, self.config, backbone, self._device_of_base())
        # The primary modality's parts sit at the top level under their historical names, so an audio-only
        # model's parameter names and checkpoint keys are what they always were; the branch is only a view.
        self.audio_encoder, self.projector, self.adapters = primary.encoder, primary.projector, primary.adapters
        self.fusion_layers = primary.fusion_layers
        self.primary_modality = primary.name
        self._branches: dict[str, ModalityBranch] = {primary.name: primary}  # plain dict: not registered twice
        self.modalities = nn.ModuleDict()  # the added modalities' branches (registered)
        self.signature = {**backbone.signature, "audio_encoder": self.audio_encoder.kind,
                          "audio_dim": self.audio_encoder.output_dim}
        self.policy: nn.Module | None = None
        self.modality_policies = nn.ModuleDict()  # an added modality's own policy (each decides its own rows)
        self._injector = AdapterInjector(self.backbone.decoder_layers, self._adapter_layers())
        self._injector.attach()
        self._audio_off = False

    def _adapter_layers(self) -> dict[int, list]:
        layers: dict[int, list] = {}
        for name, branch in self._branches.items():  # insertion order: the order adapters compose in
            for i in branch.fusion_layers:
                layers.setdefault(i, []).append((name, branch.adapters[str(i)]))
        return dict(sorted(layers.items()))

    # ------------------------------------------------------------------------------------------
    # modalities
    @property
    def modality_names(self) -> list[str]:
        """The modalities this model carries, primary first, then in the order they were added."""
        return list(self._branches)

    def modality(self, name: str) -> ModalityBranch:
        if name not in self._branches:
            raise KeyError(f"this SAFE model has no modality {name!r}; it has {self.modality_names}")
        return self._branches[name]

    def add_modality(self, name: str, encoder, config: SAFEConfig | None = None) -> ModalityBranch:
        """Add modality ``name`` with its frozen ``encoder`` (a transformers audio or vision model, a
        protocol module, or a list of them for an ensemble) and fresh projector / adapters built from
        ``config`` (default the primary's). Rows that do not use it are unaffected, and its gates start
        at ``config.gate_init`` (0: the new modality changes nothing until trained)."""
        name = check_modality_name(name, _base_inputs(self.base_model))
        if name in self._branches or hasattr(self, f"{name}_projector"):
            raise ValueError(f"modality {name!r} already exists (this model has {self.modality_names})")
        if name == "audio":  # audio_features / audio_mask / audio_context address the primary modality
            raise ValueError(f"the name 'audio' is reserved for the primary modality (the audio_* arguments and "
                             f"audio_context address it; here it is {self.primary_modality!r}): name the added "
                             "modality otherwise, e.g. 'sound'")
        # on the base's device now (the model may have moved since it was built)
        branch = ModalityBranch(name, encoder, config or self.config, self.backbone, self._device_of_base())
        self.modalities[name] = branch
        self._branches[name] = branch
        # the same injector, re-hooked: contexts active around this call and audio_disabled() stay in force
        self._injector.set_adapters(self._adapter_layers())
        return branch

    def load_modality(self, name: str, path: str | os.PathLike, encoder) -> ModalityBranch:
        """Add modality ``name`` from a single-modality SAFE checkpoint saved for this base (any primary
        name): separately trained modalities compose without retraining."""
        meta, w_file = read_checkpoint(Path(path))
        if meta.get("modalities"):
            raise ValueError(f"{path} holds several modalities; load_modality takes a single-modality checkpoint")
        branch_encoder = wrap_encoder(encoder)
        check_signature(path, meta["base_signature"], {**resolve_backbone(self.base_model).signature,
                                                        "audio_encoder": branch_encoder.kind,
                                                        "audio_dim": branch_encoder.output_dim})
        branch = self.add_modality(name, branch_encoder, config_of(meta, "config", Path(path)))
        try:
            parts = {"projector": branch.projector, "adapters": branch.adapters}
            if meta.get("has_policy"):  # the checkpoint's own policy decides this modality's rows here too
                self.attach_policy(_policy_class().from_config(meta["policy"]), modality=name)
                parts["policy"] = self.modality_policies[name]
            state = load_weights(w_file)
            load_parts(parts, {k: v for k, v in state.items() if k.split(".", 1)[0] in parts}, w_file)
        except Exception:
            self.remove_modality(name)
            raise
        return branch

    def remove_modality(self, name: str) -> None:
        """Drop an added modality (the primary one cannot be removed)."""
        if name == self.primary_modality or name not in self.modalities:
            raise ValueError(f"cannot remove modality {name!r}: only added modalities ({list(self.modalities)}) can be")
        del self.modalities[name]
        del self._branches[name]
        if name in self.modality_policies:
            del self.modality_policies[name]
        # the same injector, re-hooked: contexts active around this call and audio_disabled() stay in force
        self._injector.set_adapters(self._adapter_layers())

    # ------------------------------------------------------------------------------------------
    # parts and modes
    def train(self, mode: bool = True):
        super().train(mode)
        self.base_model.eval()  # frozen parts stay in eval mode (no dropout drift)
        for branch in self._branches.values():
            branch.encoder.eval()
        return self

    def safe_modules(self) -> dict[str, nn.Module]:
        """SAFE's own (trainable) parts by name: ``projector`` / ``adapters`` of the primary modality,
        ``<name>_projector`` / ``<name>_adapters`` of each added one, and ``policy``."""
        parts = {"projector": self.projector, "adapters": self.adapters}
        for name, branch in self.modalities.items():
            parts[f"{name}_projector"], parts[f"{name}_adapters"] = branch.projector, branch.adapters
        if self.policy is not None:
            parts["policy"] = self.policy
        for name, policy in self.modality_policies.items():
            parts[f"{name}_policy"] = policy
        return parts

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.safe_modules().values() for p in m.parameters() if p.requires_grad]

    def attach_policy(self, policy: nn.Module | None, modality: str | None = None) -> None:
        """Attach a trained :class:`safe.policy.runtime.AudioPolicy` (None detaches). It is frozen, counted
        in :meth:`parameter_report` and saved with :meth:`save_pretrained`. ``modality``: an added modality
        whose rows this policy decides (:meth:`policy_of`; default the primary one, which ``generate`` consults).

        Checked by what it offers (``spec``, ``config()``, ``generate_with(model, **kwargs)``), not by
        class, so this package does not import ``safe.policy`` (the policy package builds on this one)."""
        if policy is not None:
            offers = [hasattr(policy, "spec")] + [callable(getattr(policy, m, None)) for m in ("config", "generate_with")]
            if not (isinstance(policy, nn.Module) and all(offers)):
                raise TypeError(f"policy must be a safe.policy.runtime.AudioPolicy, got {type(policy).__name__}")
            # the parts at the language model's width (a part of width 0 is not in the state; the pooled image
            # has the vision tower's width, checked with the other parts by the policy's check_deployable)
            have = {"question_dim": policy.spec.question_dim}
            if getattr(policy.spec, "image_kind", "projection") == "projection":
                have["image_dim"] = policy.spec.image_dim
            if any(v not in (0, self.hidden_size) for v in have.values()):
                raise ValueError(f"policy state {have} does not match this base (hidden size {self.hidden_size})")
            policy = policy.to(next(self.base_model.parameters()).device)
        name = modality or self.primary_modality
        if name == self.primary_modality:
            self.policy = policy
            return
        if name not in self.modalities:
            raise KeyError(f"this SAFE model has no added modality {name!r}; it has {self.modality_names}")
        if policy is not None:
            self.modality_policies[name] = policy
        elif name in self.modality_policies:
            del self.modality_policies[name]

    def policy_of(self, name: str) -> nn.Module | None:
        """The policy that decides modality ``name``'s rows (the primary's is :attr:`policy`), or None."""
        if name == self.primary_modality:
            return self.policy
        self.modality(name)  # KeyError naming the modalities for an unknown name
        return self.modality_policies[name] if name in self.modality_policies else None

    def gates(self, modality: str | None = None) -> dict[int, nn.Parameter]:
        """The gate parameters by layer of ``modality`` (default the primary one)."""
        return self.modality(modality or self.primary_modality).gates()

    @torch.no_grad()
    def set_gates(self, value: float, modality: str | None = None) -> None:
        """Set the gate parameter g of every adapter of ``modality`` (default the primary one; ``"all"``:
        every modality) to ``value`` (0 closes them)."""
        names = self.modality_names if modality == "all" else [modality or self.primary_modality]
        for name in names:
            for i, g in self.gates(name).items():
                g.fill_(value)
                self.modality(name).adapters[str(i)].gate.invalidate()

    @property
    def audio_encoder_calls(self) -> int:
        """Rows passed through the primary modality's encoder (efficiency accounting; assignable)."""
        return self._branches[self.primary_modality].encoder_calls

    @audio_encoder_calls.setter
    def audio_encoder_calls(self, value: int) -> None:
        self._branches[self.primary_modality].encoder_calls = value

    def encoder_calls(self) -> dict[str, int]:
        """Rows passed through each modality's encoder so far."""
        return {name: b.encoder_calls for name, b in self._branches.items()}

    def parameter_report(self) -> ParameterReport:
        """Counts per part, as the proposal reports them (docs/design.md)."""
        parts = {"base_vl": self.base_model, f"{self.primary_modality}_encoder": self.audio_encoder}
        parts.update({f"{name}_encoder": b.encoder for name, b in self.modalities.items()})
        parts.update(self.safe_modules())
        rep = ParameterReport()
        for name, module in parts.items():
            ps = list(module.parameters())
            rep[name] = {"parameters": sum(p.numel() for p in ps),
                         "trainable": sum(p.numel() for p in ps if p.requires_grad)}
        rep["total"] = {k: sum(v[k] for v in rep.values()) for k in ("parameters", "trainable")}
        return rep

    @contextlib.contextmanager
    def audio_disabled(self) -> Iterator[SAFEModel]:
        """Inside the block the whole model is the base model: no row uses any modality, no encoder runs."""
        previous = self._audio_off
        self._audio_off = True
        try:
            with self._injector.off():
                yield self
        finally:
            self._audio_off = previous

    def remove_hooks(self) -> None:
        """Detach the adapters from the base model for good (before reusing the base elsewhere or
        wrapping it again); the SAFE model no longer fuses any modality afterwards."""
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
    # modality inputs
    def encode_audio(self, audio_features: torch.Tensor) -> torch.Tensor:
        """Frozen encoder then projector: (n, ...) encoder input -> (n, k, hidden) audio tokens."""
        return self._branches[self.primary_modality].encode(audio_features)

    def encode(self, modality: str, features) -> torch.Tensor:
        """``modality``'s frozen encoder then projector: (n, ...) its input -> (n, k, hidden) tokens."""
        return self.modality(modality).encode(features)

    def modality_context(self, modality: str, features=None, mask=None, batch_size: int | None = None, *,
                         embeddings=None):
        """Context manager making ``modality``'s tokens of the rows in ``mask`` visible to its adapters.

        Its encoder runs only on those rows; with no such row (or inside :meth:`audio_disabled`) its
        adapters see nothing. ``embeddings``: the frozen encoder's outputs computed beforehand."""
        branch = self.modality(modality)
        if self._audio_off:
            branch.resolve_mask(features if embeddings is None else embeddings, mask, batch_size)  # still validate
            return self._injector.audio(None, modality)
        ctx = branch.context(features, mask, batch_size, embeddings=embeddings, device=self._device_of_base())
        return self._injector.audio(ctx, modality)

    def audio_context(self, audio_features=None, audio_mask=None, batch_size: int | None = None, *,
                      audio_embeddings=None):
        """Context manager making the audio of the rows in ``audio_mask`` visible to the adapters.

        The encoder runs only on those rows; with no such row (or inside :meth:`audio_disabled`) the
        adapters see nothing and the model is the base. ``audio_embeddings`` (n, T, D): the frozen
        encoder's outputs computed beforehand (e.g. from a cache) instead of ``audio_features``."""
        return self.modality_context(self.primary_modality, audio_features, audio_mask, batch_size,
                                     embeddings=audio_embeddings)

    def _device_of_base(self) -> torch.device:
        return next(self.base_model.parameters()).device

    def _split_inputs(self, kwargs: dict, audio: dict) -> dict[str, dict]:
        """Pop each modality's ``<name>_features`` / ``_mask`` / ``_embeddings`` from ``kwargs``; the
        ``audio_*`` arguments address the primary modality (no added modality may be named ``audio``)."""
        out = {name: {} for name in self._branches}
        for name in self._branches:
            for suffix in INPUT_SUFFIXES:
                key = f"{name}_{suffix}"
                if key in kwargs:
                    out[name][suffix] = kwargs.pop(key)
        # A misspelt or absent modality would otherwise reach the base, which may swallow unknown keyword
        # arguments silently: refuse it by name.
        stray = [k for k in kwargs if k.endswith(("_features", "_embeddings"))
                 and k.rsplit("_", 1)[0] not in _BASE_INPUT_PREFIXES]
        if stray:
            raise ValueError(f"{stray[0]}: this SAFE model has no such modality (it has {self.modality_names})")
        audio = {k: v for k, v in audio.items() if v is not None}
        if set(audio) == {"mask"} and not bool(torch.as_tensor(audio["mask"]).any()):
            audio = {}  # "no row uses audio" (e.g. a processor's output) says nothing either way
        primary = out[self.primary_modality]
        if audio and self.primary_modality != "audio":
            if primary:
                raise ValueError(f"pass the primary modality as audio_* or {self.primary_modality}_*, not both")
            primary.update(audio)
        elif audio:
            primary.update(audio)
        return out

    @contextlib.contextmanager
    def _contexts(self, inputs: dict[str, dict], batch_size: int | None):
        with contextlib.ExitStack() as stack:
            for name, given in inputs.items():
                if given or name == self.primary_modality:
                    stack.enter_context(self.modality_context(name, given.get("features"), given.get("mask"),
                                                              batch_size, embeddings=given.get("embeddings")))
            yield

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
        encoder outputs instead of features. Added modalities take ``<name>_features`` / ``<name>_mask``
        / ``<name>_embeddings`` the same way."""
        inputs = self._split_inputs(vl_inputs, {"features": audio_features, "mask": audio_mask,
                                                "embeddings": audio_embeddings})
        with self._contexts(inputs, self._batch_size(vl_inputs)):
            return self.base_model(*args, **vl_inputs)

    @torch.no_grad()
    def generate(self, *args, audio_features: torch.Tensor | None = None, audio_mask: torch.Tensor | None = None,
                 audio_embeddings: torch.Tensor | None = None, audio_preview: torch.Tensor | None = None, **kwargs):
        """The base model's ``generate`` (greedy, sampling, beams, ``num_return_sequences``) with
        audio (and any added modality, ``<name>_features`` / ``<name>_mask``) fused into its rows; other
        rows generate exactly what the base does.

        With a policy attached, audio given and ``audio_mask`` None, the policy picks the rows instead
        and a :class:`safe.policy.runtime.PolicyGenerateOutput` (``sequences``, ``used_audio``, ...) is
        returned; ``audio_preview`` (n, preview_dim) is then required."""
        if audio_features is not None and not callable(audio_features):
            audio_features = as_features(audio_features, "audio_features")
        inputs = self._split_inputs(kwargs, {"features": audio_features, "mask": audio_mask,
                                             "embeddings": audio_embeddings})
        primary = inputs[self.primary_modality]
        if self.policy is not None and primary.get("mask") is None and not self._audio_off and (
                primary.get("features") is not None or primary.get("embeddings") is not None):
            if args:
                raise ValueError("generate with a policy takes its inputs as keyword arguments (input_ids=...)")
            others = [n for n, given in inputs.items() if given and n != self.primary_modality]
            if others:
                raise ValueError(f"the attached policy chooses {self.primary_modality} rows only; pass "
                                 f"{self.primary_modality}_mask to use it together with {others}")
            return self.policy.generate_with(self, audio_preview=audio_preview, audio_features=primary.get("features"),
                                             audio_embeddings=primary.get("embeddings"), **kwargs)
        with self._contexts(inputs, self._batch_size(kwargs)):
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
        if self.primary_modality != "audio":
            meta["modality"] = self.primary_modality
        if self.modalities:  # absent for a single-modality model: its files are what they always were
            meta["modalities"] = {name: {"config": b.config.to_dict(), "signature": b.signature,
                                         **({"policy": self.modality_policies[name].config()}
                                            if name in self.modality_policies else {})}
                                  for name, b in self.modalities.items()}
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
    def from_pretrained(cls, path: str | os.PathLike, base_model: nn.Module, audio_encoder: nn.Module, *,
                        encoders: dict[str, nn.Module] | None = None) -> SAFEModel:
        """Rebuild SAFE on ``base_model`` / ``audio_encoder`` (the primary modality's encoder) and load
        its weights from ``path``; ``encoders``: the encoder of each added modality the checkpoint holds,
        by name. Refuses (``ValueError``) a checkpoint made for a base of another architecture, hidden
        size, layer count, or encoder kind / width, and one whose added modalities are not all given."""
        path = Path(path)
        meta, w_file = read_checkpoint(path)
        # Check compatibility before building, so a refused load leaves no hooks on the caller's base.
        encoder = wrap_encoder(audio_encoder)
        have = {**resolve_backbone(base_model).signature, "audio_encoder": encoder.kind, "audio_dim": encoder.output_dim}
        check_signature(path, meta["base_signature"], have)
        extra, encoders = meta.get("modalities") or {}, dict(encoders or {})
        if set(extra) != set(encoders):
            raise ValueError(f"SAFE checkpoint {path} holds the added modalities {sorted(extra)}; pass their "
                             f"encoders as encoders={{name: module}} (given: {sorted(encoders)})")
        wrapped = {name: wrap_encoder(encoders[name]) for name in extra}
        for name, spec in extra.items():
            got = {"encoder": wrapped[name].kind, "dim": wrapped[name].output_dim}
            got["dim"] = list(got["dim"]) if isinstance(got["dim"], (list, tuple)) else got["dim"]
            if got != spec["signature"]:
                raise ValueError(f"SAFE checkpoint {path}: modality {name!r} was made for encoder "
                                 f"{spec['signature']}, given {got}")
        config = config_of(meta, "config", path)
        extra_configs = {name: config_of(meta, name, path) for name in extra}
        model = cls(base_model, encoder, config, modality=meta.get("modality", "audio"))
        try:
            for name in extra:
                model.add_modality(name, wrapped[name], extra_configs[name])
                if extra[name].get("policy"):
                    model.attach_policy(_policy_class().from_config(extra[name]["policy"]), modality=name)
            if meta.get("has_policy"):
                model.attach_policy(_policy_class().from_config(meta["policy"]))
            load_parts(model.safe_modules(), load_weights(w_file), w_file)
        except Exception:
            model.remove_hooks()
            raise
        return model


def _base_inputs(base_model: nn.Module) -> set[str]:
    """The names of the base model's forward arguments (a modality must not take one as its own input)."""
    try:
        return set(inspect.signature(base_model.forward).parameters)
    except (TypeError, ValueError):  # a forward without an inspectable signature: rely on the fixed list
        return set()


POLICY_CLASS = "safe.policy.runtime:AudioPolicy"
"""The class a checkpoint's saved policy is rebuilt with (``from_config``). Named, not imported: the
policy package imports this one, so importing it back here would close a cycle; it is imported only
when a checkpoint that holds a policy is loaded."""


def _policy_class():
    module, _, name = POLICY_CLASS.partition(":")
    return getattr(importlib.import_module(module), name)
