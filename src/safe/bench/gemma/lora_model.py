"""The usual way of adding audio to a VL model, built to be compared with SAFE: the frozen audio encoder's output
through a trained projector becomes ``num_tokens`` *prefix* embeddings inserted into the language model's input
(right after ``<bos>``), and LoRA adapters on the language model's attention projections (through PEFT) are
trained with the projector, end to end, on the audio rows. There is no gate: the LoRA weights are part of the
language model on every input, with or without audio, which is what changes its text and VL answers.

The projector is SAFE's own :class:`~safe.models.projector.AudioProjector` (the same pooling to ``num_tokens``
tokens and the same MLP), scaled at initialisation to the norm of the language model's input embeddings (Gemma
multiplies its embeddings by sqrt(width), about 26 at 640), so the two methods differ in how the audio enters
the language model and nothing else.
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from safe.models.projector import AudioProjector

IGNORE = -100


@dataclass
class LoraBaselineConfig:
    """The baseline's architecture and schedule (``steps`` x ``batch_size`` is the budget matched to SAFE's)."""

    steps: int = 40
    batch_size: int = 8
    lora_rank: int = 8
    lora_alpha: int = 16
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    """The language model's linear layers LoRA adapts (the attention projections, PEFT's usual choice)."""
    num_audio_tokens: int = 10
    lr_projector: float = 2e-3
    lr_lora: float = 2e-4
    warmup_steps: int = 4
    seed: int = 0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["target_modules"] = list(self.target_modules)
        return d


def lora_layers(module: nn.Module) -> list[nn.Module]:
    """PEFT's LoRA-wrapped layers inside ``module``."""
    from peft.tuners.lora import LoraLayer

    return [m for m in module.modules() if isinstance(m, LoraLayer)]


class AudioPrefixLoRA(nn.Module):
    """A LLaVA-class VL model with an audio prefix and LoRA on its language model.

    Guarantees: the VL model's own tensors are not modified (PEFT wraps each adapted linear layer and adds its
    low-rank update beside it); only the projector and the LoRA matrices require gradients; with
    :meth:`adapters_disabled` the model is the original VL model again (PEFT initialises LoRA's B to zero, so
    before training it is the original model either way)."""

    def __init__(self, vl: nn.Module, audio_dim: int, cfg: LoraBaselineConfig, embed_norm: float | None = None):
        from peft import LoraConfig, inject_adapter_in_model

        super().__init__()
        self.vl, self.cfg = vl, cfg
        vl.requires_grad_(False)
        torch.manual_seed(cfg.seed)
        width = vl.config.text_config.hidden_size
        self.projector = AudioProjector(audio_dim, width, cfg.num_audio_tokens)
        lm = vl.model.language_model
        inject_adapter_in_model(LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                                           target_modules=list(cfg.target_modules)), lm)
        self.embed_norm = embed_norm

    @torch.no_grad()
    def scale_projector(self, features: torch.Tensor, target: float) -> float:
        """Scale the projector's last layer so its mean token norm on ``features`` is ``target``."""
        got = float(self.projector(features).norm(dim=-1).mean())
        factor = target / got
        self.projector.fc2.weight.mul_(factor)
        self.projector.fc2.bias.mul_(factor)
        return factor

    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def parameter_counts(self) -> dict[str, int]:
        lora = sum(p.numel() for n, p in self.vl.named_parameters() if "lora_" in n)
        proj = sum(p.numel() for p in self.projector.parameters())
        return {"projector": proj, "lora": lora, "trainable": proj + lora}

    @contextlib.contextmanager
    def adapters_disabled(self):
        """The original VL model (LoRA off) inside the block."""
        layers = lora_layers(self.vl)
        for m in layers:
            m.enable_adapters(False)
        try:
            yield self.vl
        finally:
            for m in layers:
                m.enable_adapters(True)

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, audio: torch.Tensor | None,
              labels: torch.Tensor | None = None):
        """(inputs_embeds, attention_mask, position_ids, labels) with the audio prefix after each row's first
        token (``<bos>``; rows are left-padded). ``audio`` None: the text embeddings alone."""
        emb = self.vl.get_input_embeddings()(input_ids)
        if audio is None:
            return emb, attention_mask, (attention_mask.cumsum(1) - 1).clamp(min=0), labels
        prefix = self.projector(audio).to(emb.dtype)
        k = prefix.shape[1]
        rows, masks, labs = [], [], []
        for i in range(input_ids.shape[0]):
            first = int((attention_mask[i] == 0).sum())  # left padding: the first real token (<bos>)
            cut = first + 1
            rows.append(torch.cat([emb[i, :cut], prefix[i], emb[i, cut:]]))
            masks.append(torch.cat([attention_mask[i, :cut], attention_mask.new_ones(k), attention_mask[i, cut:]]))
            if labels is not None:
                labs.append(torch.cat([labels[i, :cut], labels.new_full((k,), IGNORE), labels[i, cut:]]))
        mask = torch.stack(masks)
        return (torch.stack(rows), mask, (mask.cumsum(1) - 1).clamp(min=0),
                torch.stack(labs) if labels is not None else None)

    def loss(self, batch: dict, pixels: torch.Tensor, audio: torch.Tensor | None) -> torch.Tensor:
        """Cross-entropy on the answer tokens of ``batch`` (``fmt.train_batch``: left-padded prompt + answer,
        labels on the answer), logits computed at the answer positions only (Gemma's 262,144-word head)."""
        emb, mask, pos, labels = self.embed(batch["input_ids"], batch["attention_mask"], audio, batch["labels"])
        keep = int((labels != IGNORE).sum(1).max()) + 1
        logits = self.vl(inputs_embeds=emb, attention_mask=mask, position_ids=pos, pixel_values=pixels,
                         logits_to_keep=keep).logits[:, :-1]
        target = labels[:, -(keep - 1):]
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1), ignore_index=IGNORE)

    @torch.no_grad()
    def generate(self, batch: dict, pixels: torch.Tensor | None, audio: torch.Tensor | None,
                 max_new_tokens: int) -> torch.Tensor:
        """Greedy new tokens (only those) for a left-padded prompt batch, with the audio prefix when given."""
        emb, mask, _, _ = self.embed(batch["input_ids"], batch["attention_mask"], audio)
        extra = {"pixel_values": pixels} if pixels is not None else {}
        return self.vl.generate(inputs_embeds=emb, attention_mask=mask, max_new_tokens=max_new_tokens,
                                do_sample=False, **extra)


def lr_lambda(steps: int, warmup: int):
    """Linear warm-up, then cosine decay to zero (as SAFE's Stage A schedules its rates)."""
    import math

    def f(s: int) -> float:
        if s < warmup:
            return (s + 1) / max(1, warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (s - warmup) / max(1, steps - warmup))))
    return f
