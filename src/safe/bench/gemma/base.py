"""A LLaVA-class VL model whose language model is the real Gemma 3 270M, frozen from the first step.

No package on the registry ships a pretrained image encoder, so the vision side is trained here, through the
frozen Gemma, on the built-in scenes (LLaVA's first stage): the built-in base's vision tower (a 2-layer CLIP
tower trained on these scenes with a per-patch shape / colour loss; frozen unless ``lr_tower``) and a LLaVA
projector (64 -> 640 -> 640), warm-started by :mod:`.warm`. Only those two can train; every Gemma tensor keeps ``requires_grad=False`` from construction on, and its
SHA-256 is checked against the conversion's after training and in the saved checkpoint.

Prompt (the checkpoint's own chat template, so every SAFE stage builds it without a ``--template``)::

    <bos>Question: {question}\\n<start_of_image> x 9\\nAnswer: {answer}\\n

The question comes before the image (under causal attention image tokens placed first could never see it).
**The image token.** Gemma's tokenizer has ``<start_of_image>`` (id 255999) but no image soft token of its own
(``<image_soft_token>`` maps to ``<unk>``). Adding a token would add an embedding row; instead the placeholder
is Gemma's own ``<start_of_image>``: LLaVA overwrites the embedding at every placeholder position with the
projected image features, so that row is never read and no embedding row changes. (A question typing the
literal text ``<start_of_image>`` is therefore read as an image placeholder, as in Gemma 3's own processor.)
**The end of an answer.** The pretrained Gemma ends a short answer with a line break (" Blue\\n"), not
``<eos>``: the vision side is trained on "{answer}\\n" and the generation config stops at either (ids 107, 1).
Without the warm start, the projector's output is scaled at initialisation to the mean norm of Gemma's
(scaled) token embeddings (about 26; Gemma multiplies its embeddings by sqrt(640)): at the default scale
(about 1) the image tokens are nearly invisible to the language model and training starts far slower.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from safe.bench.gemma import lm as gemma_lm

IMAGE_TOKEN = "<start_of_image>"
# transformers renders chat templates with trim_blocks: line breaks are written as expressions
CHAT_TEMPLATE = (
    "{%- for message in messages -%}{%- if message['content'] is string -%}{{ 'Question: ' + message['content'] }}"
    "{%- else -%}{%- for c in message['content'] if c['type'] == 'text' -%}{{ 'Question: ' + c['text'] }}{%- endfor -%}"
    "{{ '\\n' }}{%- for c in message['content'] if c['type'] == 'image' -%}{{ '" + IMAGE_TOKEN + "' }}{%- endfor -%}"
    "{%- endif -%}{%- endfor -%}{{ '\\nAnswer:' }}")
BUILD_FILE = "safe_gemma_build.json"
FORMAT_VERSION = 1


@dataclass
class GemmaBaseConfig:
    """The vision side's schedule (hashed into the build record)."""

    seed: int = 0
    steps: int = 700
    """Optimiser steps over the built-in VL-only train rows. Each step runs the image tokens, the rest of the
    prompt and the answer forward and backward through all 18 Gemma layers (the question's keys and values
    are computed once, :mod:`.prefix`): about 1.5 s at batch 32 on two cores."""
    batch_size: int = 32
    lr_projector: float = 2e-3
    """Peak AdamW rate of the projector (cosine decay after a warm-up)."""
    lr_tower: float = 0.0
    """Peak rate of the vision tower (0: the tower stays frozen, projector only)."""
    warmup_steps: int = 10
    train_dtype: str = "bfloat16"
    """The dtype of the frozen Gemma *copy* the training steps run through (:mod:`.prefix`); the saved, checked
    Gemma stays float32. bfloat16 halves a step on CPUs with bfloat16 instructions (AVX512-BF16, AMX); on a CPU
    without them (AVX2 only) a bfloat16 matrix product was measured 66 times slower than float32, and a step took
    150 s instead of about 2. ``python -m safe.bench.gemma`` picks by measurement (:func:`fast_dtype`)."""
    warm_start_steps: int = 300
    """Minibatch steps of the projector's fit to Gemma's word embeddings of each cell (:mod:`.warm`) before
    any Gemma forward; 0 starts from a fresh projector scaled to the embeddings' norm instead."""
    checkpoint_every: int = 25
    """Steps between resumable checkpoints of the trainable parts and the optimiser."""
    eval_every: int = 100
    """Steps between accuracy probes on the monitor rows (0: only at the end)."""
    monitor_rows: int = 96
    """Test rows (balanced over the VL families) probed during training and scored at the end."""
    full_test: bool = True
    """Also score every VL row of the test split at the end (780 rows of the built-in benchmark)."""

    def digest(self) -> str:
        import hashlib

        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def fast_dtype(requested: str = "auto") -> str:
    """``requested`` unless it is ``auto``; then ``bfloat16`` when a bfloat16 matrix product on this CPU is faster
    than a float32 one (timed here, a few milliseconds), else ``float32``. The choice changes the build (the record
    names it), so two machines that choose differently build different, equally checked, bases."""
    import time

    import torch

    if requested != "auto":
        return requested
    best = {}
    for dt in (torch.float32, torch.bfloat16):
        a, b = torch.randn(128, 256, dtype=dt), torch.randn(256, 256, dtype=dt)
        a @ b  # the first call sets up the kernel
        times = []
        for _ in range(3):
            t = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t)
        best[dt] = min(times)
    return "bfloat16" if best[torch.bfloat16] < best[torch.float32] else "float32"


def prompt_tokenizer(lm_dir: str | Path):
    """Gemma's tokenizer with this base's chat template (the prompt above)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(lm_dir), local_files_only=True)
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "left"
    return tok


def assemble(lm_dir: str | Path, builtin_vl: str | Path, seed: int = 0):
    """(``LlavaForConditionalGeneration``, tokenizer, image processor): Gemma from ``lm_dir`` (a
    :func:`~safe.bench.gemma.lm.convert` folder) loaded ``strict`` and frozen, the built-in base's vision tower
    (``builtin_vl``, its ``vl/`` folder) and a fresh projector."""
    import transformers as tf
    from safetensors.torch import load_file

    lm_dir, builtin_vl = Path(lm_dir), Path(builtin_vl)
    text = tf.AutoConfig.from_pretrained(str(lm_dir), local_files_only=True)
    old = tf.AutoConfig.from_pretrained(str(builtin_vl), local_files_only=True)
    tok = prompt_tokenizer(lm_dir)
    n_image = (old.vision_config.image_size // old.vision_config.patch_size) ** 2
    config = tf.LlavaConfig(vision_config=old.vision_config.to_dict(), text_config=text.to_dict(),
                            image_token_id=tok.convert_tokens_to_ids(IMAGE_TOKEN), image_seq_length=n_image,
                            vision_feature_select_strategy="default", vision_feature_layer=-1,
                            projector_hidden_act="gelu", pad_token_id=text.pad_token_id,
                            tie_word_embeddings=text.tie_word_embeddings)
    torch.manual_seed(seed)
    model = tf.LlavaForConditionalGeneration(config)
    gemma_lm.frozen(model.model.language_model.parameters())
    gemma_lm.frozen(model.lm_head.parameters())
    state = load_file(str(lm_dir / "model.safetensors"))
    model.model.language_model.load_state_dict({k[len("model."):]: v for k, v in state.items()
                                                if k.startswith("model.")}, strict=True)
    if config.text_config.tie_word_embeddings:
        model.lm_head.weight = model.model.language_model.embed_tokens.weight
    else:
        model.lm_head.load_state_dict({"weight": state["lm_head.weight"]}, strict=True)
    vision = load_file(str(builtin_vl / "model.safetensors"))
    # saved names: "vision_tower.<...>" (with or without a leading "model.")
    model.model.vision_tower.load_state_dict({k.split("vision_tower.", 1)[1]: v for k, v in vision.items()
                                              if "vision_tower." in k}, strict=True)
    model.generation_config.pad_token_id = text.pad_token_id
    model.generation_config.bos_token_id = text.bos_token_id
    model.generation_config.eos_token_id = [newline_id(tok), text.eos_token_id]
    image_processor = tf.AutoImageProcessor.from_pretrained(str(builtin_vl), local_files_only=True)
    return model, tok, image_processor


def prompt_format(model, tok, image_processor):
    """SAFE's own :class:`~safe.processing.hf_prompts.ProcessorFormat` over the parts (the one every stage uses)."""
    from safe.processing.hf_prompts import ProcessorFormat, model_layout

    return ProcessorFormat.from_parts(tok, image_processor, model_layout(model))


@torch.no_grad()
def embedding_norm(model, ids: Sequence[int]) -> float:
    """Mean norm of Gemma's scaled input embeddings of ``ids`` (what its layers see for text)."""
    emb = model.model.language_model.embed_tokens(torch.tensor([list(ids)]))
    return float(emb.norm(dim=-1).mean())


@torch.no_grad()
def scale_projector(model, pixels: torch.Tensor, target: float) -> float:
    """Scale the projector's last layer so its mean output norm on ``pixels`` is ``target``; returns the factor."""
    feats = model.model.get_image_features(pixel_values=pixels)
    feats = getattr(feats, "pooler_output", feats)
    feats = torch.cat([f.reshape(-1, f.shape[-1]) for f in feats]) if isinstance(feats, (list, tuple)) else feats
    factor = target / float(feats.reshape(-1, feats.shape[-1]).norm(dim=-1).mean())
    last = model.model.multi_modal_projector.linear_2
    last.weight.mul_(factor)
    last.bias.mul_(factor)
    return factor


def newline_id(tok) -> int:
    """The line-break token (Gemma: 107), which ends an answer."""
    return int(tok.convert_tokens_to_ids("\n"))


def answer_ids(tok, answer: str) -> list[int]:
    """" {answer}\n" as the base is trained to answer."""
    return tok(" " + answer, add_special_tokens=False)["input_ids"] + [newline_id(tok)]


def train_batch(fmt, tok, prompts: list[list[int]], answers: list[list[int]]):
    """Left-padded prompt + answer ids, mask, positions, and the answer length to score."""
    seqs = [p + a for p, a in zip(prompts, answers)]
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), fmt.pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):], mask[i, width - len(s):] = torch.tensor(s), 1
    k = max(map(len, answers))
    target = ids[:, -k:].clone()
    for i, a in enumerate(answers):
        target[i, : k - len(a)] = -100
    return {"input_ids": ids, "attention_mask": mask, "position_ids": (mask.cumsum(1) - 1).clamp(min=0)}, target


def answer_loss(model, batch: dict, pixels: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on the answer tokens only, with logits computed at those positions alone (Gemma's
    262,144-word head over every position would cost more than the layers)."""
    k = target.shape[1]
    logits = model(**batch, pixel_values=pixels, logits_to_keep=k + 1).logits[:, :-1]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1), ignore_index=-100)


def load_saved_lm_digests(folder: str | Path) -> dict[str, str]:
    """Tensor digests of the Gemma language model of a saved LLaVA checkpoint, as loaded from disk."""
    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(str(folder), dtype=torch.float32, local_files_only=True)
    return gemma_lm.lm_digests(model.model.language_model)
