"""Batches for the VLM families whose image-token count depends on the image (LLaVA-NeXT / OneVision,
Qwen2/2.5/3-VL, Idefics3 / SmolVLM, Gemma 3, PaliGemma, Mllama, InternVL, Mistral3), through the
checkpoint's own processor (``AutoProcessor``) and chat template.

The processor does what only it knows: it resizes / tiles each image, expands the image placeholder to
as many tokens as that image needs (so images of different sizes mix in one batch), and returns the
family's extra inputs (``image_sizes``, ``image_grid_thw`` and ``mm_token_type_ids`` for Qwen's
multimodal rotary positions, ``pixel_attention_mask``, ``token_type_ids``, Mllama's
``cross_attention_mask`` / aspect-ratio ids, ...). Generation then runs with the model's own position
handling (Qwen's ``rope_deltas`` are computed by its ``generate`` from those inputs).

The prompt is the checkpoint's chat template rendered for one user turn holding an image and the
question, or a ``--template`` with ``<image>`` (replaced by the image text the chat template writes, e.g.
Qwen's ``<|vision_start|><|image_pad|><|vision_end|>``) and ``{question}``.
"""
from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from safe.processing.prompts import Encoded, decode_new_tokens

_QUESTION = "\u2063SAFE_QUESTION\u2063"  # a marker no chat template writes itself
ROW_PACKED = ("qwen2-vl", "qwen2.5-vl", "qwen3-vl", "internvl")
"""Families whose ``pixel_values`` pack every image of a batch into one sequence (no row per image): a
prepared set keeps one block per row and concatenates a batch's blocks (:class:`~safe.data.rows.PackedImageRows`)."""


@dataclass
class VisionEncoded(Encoded):
    """:class:`~safe.processing.prompts.Encoded` plus, per example, the extras its processor returned with
    its prompt (``image_sizes``, ``token_type_ids``, Mllama's masks ...; batch dimension 1)."""

    extras: list[dict[str, torch.Tensor]] = field(default_factory=list)

    def subset(self, index: Sequence[int]) -> VisionEncoded:
        index = list(index)
        return VisionEncoded([self.prompts[i] for i in index], [self.answers[i] for i in index],
                             [self.extras[i] for i in index])


def load_processor(checkpoint: str | Path):
    """The checkpoint's own ``AutoProcessor`` (no download). Where that fails on a processor class with a video
    processor (Qwen2/2.5/3-VL, LLaVA-OneVision, InternVL, SmolVLM) because torchvision is missing or the
    checkpoint has no video processor config (one saved without it), the class is loaded
    without it (:mod:`safe.processing.image_only`, with a logged warning; images work, videos do not). A processor
    that still cannot be built raises ``ImportError`` naming the package, instead of transformers' error
    deep inside its video-processor lookup."""
    from transformers import AutoProcessor
    from transformers.utils import VIDEO_PROCESSOR_NAME

    from safe.processing.image_only import load_image_only

    try:
        return AutoProcessor.from_pretrained(str(checkpoint), local_files_only=True)
    except (ImportError, AttributeError, OSError, ValueError) as err:  # ValueError: "requires torchvision"
        if importlib.util.find_spec("torchvision") is not None and (Path(checkpoint) / VIDEO_PROCESSOR_NAME).is_file():
            raise  # the video processor could be built: whatever failed is not what the fallback works around
        fallback = load_image_only(checkpoint)
        if fallback is not None:
            return fallback
        if isinstance(err, (OSError, ValueError)):  # a missing / unreadable file or a bad config: as it was
            raise
        raise ImportError(f"{checkpoint}: the checkpoint's processor could not be built ({err}). Mistral 3's "
                          "(Pixtral) processor needs torchvision (the build matching your torch), SmolVLM's needs "
                          "num2words") from err


def take_rows(batch: dict[str, Any], rows: torch.Tensor, n: int, packed_image_token: int | None = None) -> dict[str, Any]:
    """Rows ``rows`` (indices or a bool mask) of an ``n``-row batch of model inputs: every tensor with ``n``
    rows is indexed, the rest is kept. ``packed_image_token``: the image token id of a family whose
    ``pixel_values`` pack the batch's image patches into one sequence (:data:`ROW_PACKED`); each row's
    block there is proportional to its image-token count (one ratio for every image of a checkpoint: Qwen's
    merge size squared patches per token, InternVL's one crop per ``image_seq_length`` tokens), and the
    chosen rows' blocks are concatenated in order, as the processor would pack those rows alone."""
    rows = rows.nonzero().squeeze(1) if rows.dtype == torch.bool else rows
    out = {k: (v[rows.to(v.device)] if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == n else v)
           for k, v in batch.items()}
    pv = batch.get("pixel_values")
    if packed_image_token is not None and isinstance(pv, torch.Tensor):
        tokens = (batch["input_ids"] == packed_image_token).sum(1).tolist()
        total = sum(tokens)
        if total == 0 or any(t * pv.shape[0] % total for t in tokens):
            raise ValueError(f"pixel_values has {pv.shape[0]} packed rows, which do not divide over the rows' "
                             f"image tokens {tokens}")
        blocks = pv.split([t * pv.shape[0] // total for t in tokens])
        out["pixel_values"] = torch.cat([blocks[r] for r in rows.tolist()])
    return out


def vlm_layout(base_model) -> dict[str, Any]:
    """What the format needs of the model, as plain JSON values (saved with the processor)."""
    from safe.models.backbones import resolve_backbone

    text_cfg = base_model.config.text_config
    return {"arch": resolve_backbone(base_model).name, "image_token_id": resolve_backbone(base_model).image_token_id,
            "encoder_decoder": False, "eos_token_id": text_cfg.eos_token_id, "pad_token_id": text_cfg.pad_token_id}


def _render(processor, content: list[dict]) -> str:
    turn = [{"role": "user", "content": content}]
    return processor.apply_chat_template(turn, add_generation_prompt=True, tokenize=False)


def _image_text(processor) -> str:
    """The text the chat template writes for one image: the difference between a turn with and without it."""
    with_image = _render(processor, [{"type": "image"}, {"type": "text", "text": _QUESTION}])
    without = _render(processor, [{"type": "text", "text": _QUESTION}])
    p = 0
    while p < min(len(with_image), len(without)) and with_image[p] == without[p]:
        p += 1
    s = 0
    while s < min(len(with_image), len(without)) - p and with_image[-1 - s] == without[-1 - s]:
        s += 1
    return with_image[p:len(with_image) - s]


class VLMProcessorFormat:
    """Prompt / training batches for a checkpoint of the per-image-token-count families, built by the
    checkpoint's own processor. Guarantees: the image-token count of every row is the processor's (never
    a constant); rows are left-padded; a batch without images gets text-only prompts (no placeholder);
    a format saved (:meth:`save_pretrained`) and loaded again gives identical batches."""

    def __init__(self, checkpoint: str | Path | None, base_model=None, template: str | None = None, *,
                 processor=None, layout: dict[str, Any] | None = None) -> None:
        if processor is None:
            processor = load_processor(checkpoint)
        self.processor, self.tok = processor, processor.tokenizer
        self.layout = dict(layout) if layout is not None else vlm_layout(base_model)
        self.arch, self.image = self.layout["arch"], int(self.layout["image_token_id"])
        self.encoder_decoder = False
        self.eos = self.tok.eos_token_id if self.tok.eos_token_id is not None else self.layout["eos_token_id"]
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.layout["pad_token_id"]
        self.pad = pad if pad is not None else self.eos
        has_chat = bool(getattr(processor, "chat_template", None))
        self.image_text = _image_text(processor) if has_chat else str(getattr(processor, "image_token", "<image>"))
        if template is None:
            if has_chat:
                rendered = _render(processor, [{"type": "image"}, {"type": "text", "text": _QUESTION}])
                bos = getattr(self.tok, "bos_token", None)
                if bos and rendered.startswith(bos):  # the processor's tokenizer adds BOS itself
                    rendered = rendered[len(bos):]
                template = (rendered.replace("{", "{{").replace("}", "}}").replace(self.image_text, "<image>", 1)
                            .replace(_QUESTION, "{question}"))
            else:
                template = "USER: <image>\n{question} ASSISTANT:"
        if "{question}" not in template or "<image>" not in template:
            raise ValueError(f"prompt template must contain '{{question}}' and '<image>', got {template!r}")
        self.template = template

    @classmethod
    def from_parts(cls, processor, layout: dict[str, Any], template: str | None = None) -> VLMProcessorFormat:
        return cls(None, None, template, processor=processor, layout=layout)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        self.processor.save_pretrained(str(path))

    def prompt(self, question: str, with_image: bool = True) -> str:
        text = self.template.format(question=question)
        return text.replace("<image>", self.image_text if with_image else "", 1)

    def batch(self, questions: Sequence[str], images: Sequence | None,
              answers: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """The model inputs for ``questions`` (one image per row, PIL images, or None for a text-only
        batch). With ``answers``: ``prompt + answer + eos`` and ``labels`` (-100 except the answer and
        eos), every per-token extra extended over the answer as the processor marks text."""
        texts = [self.prompt(q, images is not None) for q in questions]
        kwargs: dict[str, Any] = {"text": texts, "padding": True, "return_tensors": "pt"}
        if images is not None:
            kwargs["images"] = [[im] for im in images]
        self.tok.padding_side = "left"
        out = {k: v for k, v in self.processor(**kwargs).items() if isinstance(v, torch.Tensor) and k != "labels"}
        if answers is None:
            return out
        return self._with_answers(out, [self.tok(" " + a, add_special_tokens=False)["input_ids"] + [self.eos]
                                        for a in answers])

    def _with_answers(self, out: dict[str, torch.Tensor], answers: list[list[int]]) -> dict[str, torch.Tensor]:
        ids, mask = out["input_ids"], out["attention_mask"]
        n, width = ids.shape[0], ids.shape[1] + max(len(a) for a in answers)
        per_token = [k for k, v in out.items() if k not in ("input_ids", "attention_mask") and v.dim() >= 2
                     and v.shape[:2] == ids.shape]
        new = {"input_ids": torch.full((n, width), self.pad, dtype=ids.dtype),
               "attention_mask": torch.zeros((n, width), dtype=mask.dtype),
               "labels": torch.full((n, width), -100, dtype=torch.long)}
        for k in per_token:
            new[k] = out[k].new_zeros((n, width, *out[k].shape[2:]))
        for r, ans in enumerate(answers):
            keep = mask[r].bool()
            seq = torch.cat([ids[r][keep], torch.tensor(ans, dtype=ids.dtype)])
            start = width - seq.numel()
            new["input_ids"][r, start:], new["attention_mask"][r, start:] = seq, 1
            new["labels"][r, width - len(ans):] = torch.tensor(ans)
            for k in per_token:
                prompt_part = out[k][r][keep]
                # answer tokens are text: they carry what the last prompt token carries (0 for token types,
                # Mllama's "sees the image" cross-attention row); PaliGemma marks its suffix with type 1
                tail = (torch.ones_like(prompt_part[-1:]) if self.arch == "paligemma" and k == "token_type_ids"
                        else prompt_part[-1:]).expand(len(ans), *prompt_part.shape[1:])
                new[k][r, start:] = torch.cat([prompt_part, tail])
        new.update({k: v for k, v in out.items() if k not in new})
        if not self.arch.startswith("qwen"):  # Qwen computes its M-RoPE positions from the mask itself
            new["position_ids"] = (new["attention_mask"].cumsum(1) - 1).clamp(min=0)
        return new

    # -- the prepared-data interface of the other formats (encode / pixels / prompt_batch / train_batch) --
    def encode(self, examples: Sequence) -> VisionEncoded:
        """Each example's prompt ids as its processor makes them with its own image (``example.image``, a
        path or PIL image; None: text only), answer ids, and the per-row / per-token extras of that call."""
        from safe.processing.prompts import open_image

        prompts, answers, extras = [], [], []
        for i, e in enumerate(examples):
            image = getattr(e, "image", None)
            out = self.batch([e.question], None if image is None else [open_image(image, f"examples[{i}].image")])
            prompts.append(out.pop("input_ids")[0].tolist())
            out.pop("attention_mask")
            out.pop("pixel_values", None)  # pixels() makes these for the whole set
            extras.append(out)
            answers.append(self.tok(" " + e.answer, add_special_tokens=False)["input_ids"] + [self.eos])
        return VisionEncoded(prompts, answers, extras)

    @property
    def packs_pixels(self) -> bool:
        """True for the families whose processor packs a batch's image patches into one sequence (Qwen-VL,
        InternVL): their prepared sets keep one block per row (:meth:`pixel_blocks`)."""
        return self.arch in ROW_PACKED

    def pixel_blocks(self, paths: Sequence) -> list[torch.Tensor]:
        """Each image's own pixel block, as the processor makes it for that image alone: Qwen-VL's
        ``(grid_t * grid_h * grid_w, patch_dim)`` patches, InternVL's ``(crops, 3, H, W)``. Concatenated in
        batch order they are the ``pixel_values`` the processor gives for those images together (its image
        processor treats every image on its own and concatenates); each block's ``image_grid_thw`` row is
        in the example's extras from :meth:`encode`, made from the same image by the same processor. The
        processor itself is called (on just the image text), not its image processor: its own image
        defaults apply (InternVL's processor crops to patches whatever its image processor's config says)."""
        from safe.processing.prompts import open_image

        self.tok.padding_side = "left"
        return [self.processor(text=[self.image_text], images=[[open_image(p, f"image[{i}]")]],
                               return_tensors="pt")["pixel_values"] for i, p in enumerate(paths)]

    def pixels(self, paths: Sequence) -> torch.Tensor:
        """Pixel values, one row per image (padded to the set's most tiles / crops, which the models drop
        again from ``image_sizes`` / their padding masks). For the families that pack the image patches of
        a batch into one sequence (Qwen-VL, InternVL) the blocks of :meth:`pixel_blocks`, concatenated."""
        from safe.processing.prompts import open_image

        if self.packs_pixels:
            return torch.cat(self.pixel_blocks(paths))
        images = [[open_image(p, f"image[{i}]")] for i, p in enumerate(paths)]
        pv = self.processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
        target = self._row_shape()
        if target is None or tuple(pv.shape[1:]) == target:
            return pv
        # one row shape for every call (row stores stack rows decoded in different calls): zero padding,
        # which the models drop again (image_sizes / their padding masks / all-zero crops)
        out = pv.new_zeros((pv.shape[0], *target))
        out[(slice(None), *(slice(0, d) for d in pv.shape[1:]))] = pv
        return out

    def _row_shape(self) -> tuple[int, ...] | None:
        """The largest per-image pixel shape the image processor makes (tiles / crops / size), found by
        processing a blank image at each largest size it allows; None where every image has one shape."""
        if hasattr(self, "_target"):
            return self._target
        from PIL import Image

        ip = self.processor.image_processor
        sizes: list = []
        if self.arch in ("llava-next", "llava-onevision"):
            sizes = [tuple(s) for s in (getattr(ip, "image_grid_pinpoints", None) or [])]
        elif self.arch in ("idefics3", "smolvlm", "mistral3"):
            edge = (getattr(ip, "size", None) or {}).get("longest_edge")
            sizes = [(edge, edge)] if edge else []
        shapes = [tuple(ip(images=[[Image.new("RGB", (w, h))]], return_tensors="pt")["pixel_values"].shape[1:])
                  for h, w in sizes]
        self._target = tuple(max(d) for d in zip(*shapes)) if shapes else None
        return self._target

    def _collate(self, enc: VisionEncoded, index: Sequence[int], seqs: list[list[int]],
                 answers: list[list[int]] | None) -> dict[str, torch.Tensor]:
        width = max(len(x) for x in seqs)
        n = len(index)
        ids = torch.full((n, width), self.pad, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        out: dict[str, torch.Tensor] = {}
        for r, (i, seq) in enumerate(zip(index, seqs)):
            start = width - len(seq)
            ids[r, start:], mask[r, start:] = torch.tensor(seq), 1
            n_prompt = len(enc.prompts[i])
            for k, v in enc.extras[i].items():
                v = v[0]
                if v.shape[:1] == (n_prompt,):  # per token: left-padded; answer tokens carry the last value
                    extra = len(seq) - n_prompt
                    tail = (torch.ones_like(v[-1:]) if self.arch == "paligemma" and k == "token_type_ids"
                            else v[-1:]).expand(extra, *v.shape[1:])
                    v = torch.cat([v, tail])
                    if k not in out:
                        out[k] = v.new_zeros((n, width, *v.shape[1:]))
                    out[k][r, start:] = v
                else:  # per row (image_sizes, aspect ratios)
                    out.setdefault(k, v.new_zeros((n, *v.shape)))[r] = v
        batch = {"input_ids": ids, "attention_mask": mask, **out}
        if answers is not None:
            labels = torch.full_like(ids, -100)
            for r, ans in enumerate(answers):
                labels[r, width - len(ans):] = torch.tensor(ans)
            batch["labels"] = labels
            if not self.arch.startswith("qwen"):
                batch["position_ids"] = (mask.cumsum(1) - 1).clamp(min=0)
        return batch

    def prompt_batch(self, enc: VisionEncoded, index: Sequence[int]) -> dict[str, torch.Tensor]:
        index = list(index)
        return self._collate(enc, index, [enc.prompts[i] for i in index], None)

    def train_batch(self, enc: VisionEncoded, index: Sequence[int]) -> dict[str, torch.Tensor]:
        index = list(index)
        return self._collate(enc, index, [enc.prompts[i] + enc.answers[i] for i in index],
                             [enc.answers[i] for i in index])

    def decode(self, generated: torch.Tensor, prompt_len: int) -> list[str]:
        return decode_new_tokens(self.tok, self.eos, generated[:, prompt_len:])


__all__ = ["ROW_PACKED", "VLMProcessorFormat", "VisionEncoded", "load_processor", "take_rows", "vlm_layout"]
