"""Turning records into model inputs for the built-in LLaVA: word-level tokenizer, images, batches.

Prompt layout (question *before* the image: under causal attention image tokens placed first could
never see the question, and colour / position questions stall near chance — docs/design.md, "The built-in default"):

    [pad ...] <bos> question words <image> x N <sep> answer words <eos>

Batches are left-padded (as generation needs) and carry ``position_ids = cumsum(mask) - 1`` so training
and ``generate`` agree on positions.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from safe.processing.images import ImageInputError, read_image

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>", "<image>", "<sep>")
# CLIP's normalisation constants; the saved CLIPImageProcessor uses the same ones.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def words_of(texts: Iterable[str]) -> list[str]:
    """Sorted word vocabulary of ``texts`` under the tokenizer's pre-tokenisation (whitespace + punctuation)."""
    from tokenizers.pre_tokenizers import Whitespace

    pre = Whitespace()
    return sorted({w for t in texts for w, _ in pre.pre_tokenize_str(t.lower())})


def build_tokenizer(words: Sequence[str]):
    """A real ``PreTrainedTokenizerFast`` (word level) over ``words`` plus :data:`SPECIAL_TOKENS`."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>", extra_special_tokens={"image_token": "<image>", "sep_token": "<sep>"},
                                   padding_side="left")


def image_processor(image_size: int):
    """The ``CLIPImageProcessor`` saved with the built-in model (no resize/crop: images are already square)."""
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(do_resize=False, do_center_crop=False, do_rescale=True, rescale_factor=1 / 255,
                              do_normalize=True, image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD),
                              do_convert_rgb=True, size={"height": image_size, "width": image_size},
                              crop_size={"height": image_size, "width": image_size})


def open_image(image, name: str = "image", size: int | None = None) -> Image.Image:
    """A path, PIL image or (H, W[, 3]) uint8 array -> an RGB PIL image, resized (bilinear) to
    ``size`` x ``size`` when given and different. Errors (``ValueError``) name the input."""
    try:
        if isinstance(image, Image.Image):
            im = image
        elif isinstance(image, np.ndarray):
            im = Image.fromarray(image)
        else:  # a file: its size judged from the header before decoding (safe.processing.images)
            where = name if not isinstance(image, (str, Path)) or str(image) in name else f"{name} ({image})"
            im = read_image(image, where)
    except ImageInputError:
        raise
    except (OSError, TypeError, ValueError) as err:
        raise ValueError(f"{name}: cannot read the image {image if isinstance(image, (str, Path)) else ''}: "
                         f"{err}") from err
    im = im.convert("RGB")
    if size is not None and im.size != (size, size):
        im = im.resize((size, size), Image.BILINEAR)
    return im


def load_pixels(paths: Sequence, size: int | None = None) -> torch.Tensor:
    """Images (paths, PIL images or uint8 arrays) -> (n, 3, H, W) float32, normalised exactly as
    :func:`image_processor` does; resized to ``size`` x ``size`` first where given and different (as
    :func:`open_image`)."""
    arr = np.stack([np.asarray(open_image(p, f"image[{i}]", size), dtype=np.float32)
                    for i, p in enumerate(paths)]) / 255.0
    arr = (arr - np.asarray(CLIP_MEAN, np.float32)) / np.asarray(CLIP_STD, np.float32)
    return torch.from_numpy(arr.transpose(0, 3, 1, 2).copy())


@dataclass
class Encoded:
    """Pre-tokenised examples: prompt ids (without padding) and answer ids (ending in <eos>)."""

    prompts: list[list[int]]
    answers: list[list[int]]


class PromptFormat:
    """Builds prompt / training batches for a LLaVA whose vision tower yields ``num_image_tokens`` tokens."""

    def __init__(self, tokenizer, num_image_tokens: int, image_size: int | None = None) -> None:
        self.tok = tokenizer
        self.n_image = num_image_tokens
        self.image_size = image_size  # training images of another size are resized to it (None: taken as they are)
        ids = tokenizer.convert_tokens_to_ids
        self.pad, self.bos, self.eos = ids("<pad>"), ids("<bos>"), ids("<eos>")
        self.image, self.sep = ids("<image>"), ids("<sep>")

    def pixels(self, paths: Sequence[str]) -> torch.Tensor:
        """Images -> pixel values as the saved image processor makes them (at the model's size, when known)."""
        return load_pixels(paths, self.image_size)

    def encode(self, examples: Sequence) -> Encoded:
        """``examples``: objects with ``question`` and ``answer`` strings (e.g. ``safe.data.records.Example``)."""
        q = self.tok([e.question for e in examples], add_special_tokens=False)["input_ids"]
        a = self.tok([e.answer for e in examples], add_special_tokens=False)["input_ids"]
        prompts = [[self.bos, *qi, *([self.image] * self.n_image), self.sep] for qi in q]
        return Encoded(prompts, [[*ai, self.eos] for ai in a])

    def _left_pad(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, width - len(s):] = torch.tensor(s)
            mask[i, width - len(s):] = 1
        return ids, mask

    def prompt_batch(self, enc: Encoded, index: Sequence[int]) -> dict[str, torch.Tensor]:
        """Left-padded prompts for ``generate`` (``input_ids``, ``attention_mask``)."""
        ids, mask = self._left_pad([enc.prompts[i] for i in index])
        return {"input_ids": ids, "attention_mask": mask}

    def train_batch(self, enc: Encoded, index: Sequence[int]) -> dict[str, torch.Tensor]:
        """Prompt + answer, left-padded; ``labels`` are -100 except on the answer tokens and <eos>;
        ``position_ids`` as ``generate`` computes them for left padding."""
        seqs = [enc.prompts[i] + enc.answers[i] for i in index]
        ids, mask = self._left_pad(seqs)
        labels = torch.full_like(ids, -100)
        width = ids.shape[1]
        for row, i in enumerate(index):
            n = len(enc.answers[i])
            labels[row, width - n:] = torch.tensor(enc.answers[i])
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels, "position_ids": positions}

    def decode(self, generated: torch.Tensor, prompt_len: int) -> list[str]:
        """Answers from ``generate`` output (prompt + new tokens), cut at <eos>."""
        return decode_new_tokens(self.tok, self.eos, generated[:, prompt_len:])


def decode_new_tokens(tokenizer, eos: int, new: torch.Tensor) -> list[str]:
    """One answer per row of generated token ids ``new`` (the prompt already cut off): each row cut at its
    first ``eos``, decoded without special tokens, stripped. Every prompt format decodes this way."""
    out = []
    for row in new.tolist():
        if eos in row:
            row = row[: row.index(eos)]
        out.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    return out


def load_vl_model(path: str | Path, dtype: torch.dtype = torch.float32, **load_options):
    """(model, tokenizer, :class:`PromptFormat`) of a word-level VL checkpoint directory (the
    ``vl/`` folder of ``safe base build``): a saved ``LlavaForConditionalGeneration`` with this
    module's word-level tokenizer, loaded like any local LLaVA checkpoint
    (:func:`safe.models.loading.load_base`, which takes ``load_options``)."""
    from transformers import AutoTokenizer

    from safe.models.loading import load_base

    model = load_base(str(path), dtype, **load_options)
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    return model, tokenizer, PromptFormat(tokenizer, model.config.image_seq_length)
