"""Batches for any supported checkpoint (LLaVA, BLIP-2 with OPT or T5), from its own tokenizer and
image processor, with the same interface as the built-in :class:`~safe.data.vl_batches.PromptFormat`.

Prompts are ``template`` with the question filled in; ``<image>`` in the template becomes the model's
image placeholder token repeated as many times as the model expects (``image_seq_length`` for LLaVA,
``num_query_tokens`` for BLIP-2). Decoder-only models get ``prompt + answer + eos`` left-padded with
``position_ids`` as ``generate`` computes them; T5 gets the prompt in the encoder and
``[start] + answer + eos`` in the decoder, with labels shifted so every loss uses one convention
(``logits[:, t]`` predicts ``labels[:, t + 1]``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from PIL import Image

from safe.data.records import Example
from safe.data.vl_batches import Encoded

DEFAULT_TEMPLATES = {
    "llava": "USER: <image>\n{question} ASSISTANT:",
    "blip2-opt": "<image>Question: {question} Answer:",
    "blip2-t5": "<image>Question: {question} Answer:",
}


class ProcessorFormat:
    """Prompt / training batches for a local LLaVA or BLIP-2 checkpoint directory."""

    def __init__(self, checkpoint: str | Path, base_model, template: str | None = None) -> None:
        from transformers import AutoImageProcessor, AutoTokenizer

        from safe.models.backbones import image_token_layout, resolve_backbone

        self.arch = resolve_backbone(base_model).name
        self.template = template or DEFAULT_TEMPLATES[self.arch]
        if "{question}" not in self.template or "<image>" not in self.template:
            raise ValueError(f"prompt template must contain '{{question}}' and '<image>', got {self.template!r}")
        self.tok = AutoTokenizer.from_pretrained(str(checkpoint), local_files_only=True)
        self.images = AutoImageProcessor.from_pretrained(str(checkpoint), local_files_only=True)
        self.image, self.n_image = image_token_layout(base_model)
        text_cfg = base_model.config.text_config
        self.encoder_decoder = bool(getattr(text_cfg, "is_encoder_decoder", False))
        self.eos = self.tok.eos_token_id if self.tok.eos_token_id is not None else text_cfg.eos_token_id
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else text_cfg.pad_token_id
        self.pad = pad if pad is not None else self.eos
        self.start = getattr(text_cfg, "decoder_start_token_id", None)
        self.bos = self.tok.bos_token_id if getattr(self.tok, "add_bos_token", True) else None

    def _ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"] if text else []

    def encode(self, examples: Sequence[Example]) -> Encoded:
        prompts, answers = [], []
        for e in examples:
            before, after = self.template.format(question=e.question).split("<image>", 1)
            ids = ([self.bos] if self.bos is not None and not self.encoder_decoder else [])
            ids += self._ids(before) + [self.image] * self.n_image + self._ids(after)
            prompts.append(ids)
            answers.append(self._ids(" " + e.answer) + [self.eos])
        return Encoded(prompts, answers)

    def pixels(self, paths: Sequence[str]) -> torch.Tensor:
        images = [Image.open(p).convert("RGB") for p in paths]
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
        out = []
        for row in new.tolist():
            if self.eos in row:
                row = row[: row.index(self.eos)]
            out.append(self.tok.decode(row, skip_special_tokens=True).strip())
        return out


class FeatureFrontEnd:
    """Waveforms -> the audio encoder's ``input_features`` with the checkpoint's own feature extractor."""

    def __init__(self, checkpoint: str | Path) -> None:
        from transformers import AutoFeatureExtractor

        self.extractor = AutoFeatureExtractor.from_pretrained(str(checkpoint), local_files_only=True)
        self.sampling_rate = int(self.extractor.sampling_rate)

    def config(self) -> dict:
        """The extractor's settings (part of the embedding cache's namespace)."""
        return self.extractor.to_dict()

    def __call__(self, waveforms) -> torch.Tensor:
        return self.extractor(list(waveforms), sampling_rate=self.sampling_rate, return_tensors="pt")["input_features"]
