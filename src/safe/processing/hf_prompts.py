"""Batches for any supported checkpoint (LLaVA, BLIP-2 with OPT or T5), from its own tokenizer and
image processor, with the same interface as the built-in :class:`~safe.processing.prompts.PromptFormat`.

Prompts are a template with the question filled in: the one given (``--template``), else the checkpoint's
own chat template rendered for one user turn (:func:`chat_prompt_template`), else a per-architecture
default (:data:`DEFAULT_TEMPLATES`). ``<image>`` in the template becomes the model's
image placeholder token repeated as many times as the model expects (``image_seq_length`` for LLaVA,
``num_query_tokens`` for BLIP-2). Decoder-only models get ``prompt + answer + eos`` left-padded with
``position_ids`` as ``generate`` computes them; T5 gets the prompt in the encoder and
``[start] + answer + eos`` in the decoder, with labels shifted so every loss uses one convention
(``logits[:, t]`` predicts ``labels[:, t + 1]``).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from safe.processing.prompts import Encoded, decode_new_tokens, open_image

DEFAULT_TEMPLATES = {
    "llava": "USER: <image>\n{question} ASSISTANT:",
    "blip2-opt": "<image>Question: {question} Answer:",
    "blip2-t5": "<image>Question: {question} Answer:",
}


def model_layout(base_model) -> dict[str, Any]:
    """What a prompt format needs to know of a LLaVA / BLIP-2 model, as plain JSON values: the
    architecture, the image placeholder id and count, and the text model's special tokens."""
    from safe.models.backbones import image_token_layout, resolve_backbone

    image, n_image = image_token_layout(base_model)
    text_cfg = base_model.config.text_config
    return {"arch": resolve_backbone(base_model).name, "image_token_id": image, "num_image_tokens": n_image,
            "encoder_decoder": bool(getattr(text_cfg, "is_encoder_decoder", False)),
            "eos_token_id": text_cfg.eos_token_id, "pad_token_id": text_cfg.pad_token_id,
            "decoder_start_token_id": getattr(text_cfg, "decoder_start_token_id", None)}


_QUESTION = "\u2063SAFE_QUESTION\u2063"  # a marker no chat template writes itself


def chat_prompt_template(tokenizer, image_token_id: int) -> str | None:
    """The checkpoint's own chat template, rendered for one user turn holding an image and a question, as a
    prompt template (``<image>`` and ``{question}`` placeholders); None when the tokenizer has no chat
    template or the rendered prompt shows no image placeholder. A leading BOS text is dropped (the format
    adds the BOS id itself), so a chat template and its hand-written equivalent give the same ids."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    turn = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": _QUESTION}]}]
    try:
        text = tokenizer.apply_chat_template(turn, tokenize=False, add_generation_prompt=True)
    except Exception:  # templates written for plain-string content (any error of the template's own code)
        text = tokenizer.apply_chat_template([{"role": "user", "content": "<image>\n" + _QUESTION}], tokenize=False,
                                             add_generation_prompt=True)
    image_text = tokenizer.convert_ids_to_tokens(image_token_id)
    if "<image>" not in text and isinstance(image_text, str) and image_text in text:
        text = text.replace(image_text, "<image>", 1)
    if "<image>" not in text or _QUESTION not in text:
        return None
    bos = getattr(tokenizer, "bos_token", None)
    if bos and text.startswith(bos):
        text = text[len(bos):]
    return text.replace("{", "{{").replace("}", "}}").replace(_QUESTION, "{question}")


def _adds_bos(tokenizer) -> bool:
    """Whether the tokenizer itself puts its BOS token first when asked for special tokens."""
    bos = getattr(tokenizer, "bos_token_id", None)
    return bos is not None and tokenizer("a")["input_ids"][:1] == [bos]


class ProcessorFormat:
    """Prompt / training batches for a local LLaVA or BLIP-2 checkpoint directory, through its own
    tokenizer and image processor. Built from the directory and the loaded model, or with
    :meth:`from_parts` from a tokenizer, an image processor and a saved :func:`model_layout`."""

    def __init__(self, checkpoint: str | Path | None, base_model=None, template: str | None = None, *,
                 tokenizer=None, image_processor=None, layout: dict[str, Any] | None = None) -> None:
        if tokenizer is None or image_processor is None:
            from transformers import AutoImageProcessor, AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(checkpoint), local_files_only=True)
            image_processor = AutoImageProcessor.from_pretrained(str(checkpoint), local_files_only=True)
        self.layout = dict(layout) if layout is not None else model_layout(base_model)
        self.arch = self.layout["arch"]
        self.template = (template or chat_prompt_template(tokenizer, int(self.layout["image_token_id"]))
                         or DEFAULT_TEMPLATES[self.arch])
        if "{question}" not in self.template or "<image>" not in self.template:
            raise ValueError(f"prompt template must contain '{{question}}' and '<image>', got {self.template!r}")
        self.tok, self.images = tokenizer, image_processor
        self.image, self.n_image = int(self.layout["image_token_id"]), int(self.layout["num_image_tokens"])
        self.encoder_decoder = bool(self.layout["encoder_decoder"])
        self.eos = self.tok.eos_token_id if self.tok.eos_token_id is not None else self.layout["eos_token_id"]
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.layout["pad_token_id"]
        self.pad = pad if pad is not None else self.eos
        self.start = self.layout["decoder_start_token_id"]
        # Gemma's tokenizer reports add_bos_token=False yet its post-processor adds <bos>: ask the tokenizer
        self.bos = self.tok.bos_token_id if (getattr(self.tok, "add_bos_token", True) or _adds_bos(self.tok)) else None

    @classmethod
    def from_parts(cls, tokenizer, image_processor, layout: dict[str, Any], template: str | None = None):
        return cls(None, None, template, tokenizer=tokenizer, image_processor=image_processor, layout=layout)

    def _ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"] if text else []

    def encode(self, examples: Sequence) -> Encoded:
        prompts, answers = [], []
        for e in examples:
            before, after = self.template.format(question=e.question).split("<image>", 1)
            ids = ([self.bos] if self.bos is not None and not self.encoder_decoder else [])
            ids += self._ids(before) + [self.image] * self.n_image + self._ids(after)
            prompts.append(ids)
            answers.append(self._ids(" " + e.answer) + [self.eos])
        return Encoded(prompts, answers)

    def pixels(self, paths: Sequence) -> torch.Tensor:
        """Images (paths, PIL images or uint8 arrays) -> pixel values from the checkpoint's image processor."""
        images = [open_image(p, f"image[{i}]") for i, p in enumerate(paths)]
        return self.images(images=images, return_tensors="pt")["pixel_values"]

    def _pad(self, seqs: list[list[int]], left: bool) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(seqs):
            sl = slice(width - len(s), width) if left else slice(0, len(s))
            ids[i, sl], mask[i, sl] = torch.tensor(s), 1
        return ids, mask

    def prompt_batch(self, enc: Encoded, index: Sequence[int]) -> dict[str, torch.Tensor]:
        ids, mask = self._pad([enc.prompts[i] for i in index], left=True)
        return {"input_ids": ids, "attention_mask": mask}

    def train_batch(self, enc: Encoded, index: Sequence[int]) -> dict[str, torch.Tensor]:
        if self.encoder_decoder:
            batch = self.prompt_batch(enc, index)
            dec, dec_mask = self._pad([[self.start, *enc.answers[i]] for i in index], left=False)
            labels = dec.clone()
            labels[dec_mask == 0] = -100
            labels[:, 0] = -100
            return {**batch, "decoder_input_ids": dec, "decoder_attention_mask": dec_mask, "labels": labels}
        seqs = [enc.prompts[i] + enc.answers[i] for i in index]
        ids, mask = self._pad(seqs, left=True)
        labels = torch.full_like(ids, -100)
        for row, i in enumerate(index):
            n = len(enc.answers[i])
            labels[row, ids.shape[1] - n:] = torch.tensor(enc.answers[i])
        batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        if self.arch == "llava":  # LLaVA takes explicit positions; OPT derives them from the mask, as generate does
            batch["position_ids"] = (mask.cumsum(1) - 1).clamp(min=0)
        return batch

    def decode(self, generated: torch.Tensor, prompt_len: int) -> list[str]:
        new = generated[:, 1:] if self.encoder_decoder else generated[:, prompt_len:]
        return decode_new_tokens(self.tok, self.eos, new)
