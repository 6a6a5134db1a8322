"""``SAFEProcessor``: questions, images and audio in any form -> the inputs ``SAFEModel`` takes.

It joins three parts, as a transformers processor does:

* the prompt format: the built-in word-level tokenizer and image normalisation
  (:class:`~safe.processing.prompts.PromptFormat`), or a checkpoint's own tokenizer and image processor
  with a prompt template (:class:`~safe.processing.hf_prompts.ProcessorFormat`);
* the audio front end: the encoder's feature extractor (built-in log-mel or the checkpoint's own),
  fed by :func:`~safe.processing.audio.load_audio` (decode, downmix, rescale, resample, length rule);
* the policy's cheap audio preview (:func:`~safe.processing.features.audio_preview`).

``save_pretrained(dir)`` writes the tokenizer and image processor at ``dir`` (as a Hugging Face
checkpoint holds them), the feature extractor under ``dir/audio_feature_extractor/`` (its config file has
the image processor's name), and ``safe_processor.json``: the format kind, template, token layout, the
length rule, and where the base model and audio encoder were loaded from, so a SAFE checkpoint
directory is complete for inference (``safe.pipeline``).
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from safe.atomic import write_atomic
from safe.processing.audio import LONG_AUDIO_RULES, load_audio
from safe.processing.features import BuiltinFrontEnd, FeatureFrontEnd, audio_preview
from safe.processing.hf_prompts import ProcessorFormat
from safe.processing.modalities import ImageModalityFrontEnd
from safe.processing.prompts import PromptFormat, image_processor, open_image
from safe.processing.vlm_prompts import VLMProcessorFormat

PROCESSOR_FILE = "safe_processor.json"
AUDIO_SUBDIR = "audio_feature_extractor"
MODALITY_SUFFIX = "_processor"
"""Each other modality's image processor is saved under ``<name>_processor/``."""
FORMAT_VERSION = 1
STAND_IN_RGB = (0, 0, 0)
"""The colour of the stand-in image a row without an image gets in a batch whose other rows have one."""
_DEFAULT = object()


@dataclass
class _Row:
    question: str
    answer: str = ""


def _rows(value: Any, n: int, what: str) -> list:
    """``value`` for each of ``n`` rows: a list / tuple as it is (length checked), anything else for one row."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{what}: {len(value)} given for {n} questions")
        return list(value)
    if value is None:
        return [None] * n
    if n != 1:
        raise ValueError(f"{what}: one value given for {n} questions; pass a list with one entry per question")
    return [value]


class SAFEProcessor:
    """Prompt format + audio front end + preview, with ``save_pretrained`` / ``from_pretrained``.

    Guarantees: the token ids, pixel values and features are those the training code makes from the
    same question, image and 16 kHz clip (it calls the same formats); audio goes through
    :func:`~safe.processing.audio.load_audio`, so bad audio raises
    :class:`~safe.processing.audio.AudioInputError` naming the file or ``audio[i]``; a processor saved
    and loaded again gives identical inputs."""

    def __init__(self, prompt_format, front_end, *, image_size: int | None = None, sources: dict | None = None,
                 max_seconds: Any = _DEFAULT, long_audio: str = "truncate", modalities: dict | None = None) -> None:
        if not isinstance(prompt_format, (PromptFormat, ProcessorFormat, VLMProcessorFormat)):
            raise TypeError("prompt_format must be a PromptFormat, ProcessorFormat or VLMProcessorFormat, got "
                            f"{type(prompt_format).__name__}")
        if long_audio not in LONG_AUDIO_RULES:
            raise ValueError(f"long_audio must be one of {LONG_AUDIO_RULES}, got {long_audio!r}")
        self.prompt_format, self.front_end = prompt_format, front_end
        self.kind = ("builtin" if isinstance(prompt_format, PromptFormat)
                     else "vlm" if isinstance(prompt_format, VLMProcessorFormat) else "checkpoint")
        self.image_size = image_size
        self.sources = {"base": None, "audio": None, **(sources or {})}
        self.sampling_rate = int(front_end.sampling_rate)
        self.max_seconds = front_end.window_seconds if max_seconds is _DEFAULT else max_seconds
        self.long_audio = long_audio
        # Front ends of the image-like modalities beside audio (depth, ...), by modality name.
        self.modalities: dict[str, ImageModalityFrontEnd] = dict(modalities or {})
        # The policy's preview of the given clips (list of waveforms -> (clips, width)): the statistics unless
        # the pipeline's policy reads another preview (it sets this to safe.policy.preview.policy_preview).
        self.preview = audio_preview
        bad = [m for m in self.modalities if not m.isidentifier() or m in ("text", "images", "audio")]
        if bad:
            raise ValueError(f"modality names must be identifiers other than text / images / audio, got {bad}")

    @property
    def tokenizer(self):
        return self.prompt_format.tok

    @property
    def image_token_id(self) -> int:
        return int(self.prompt_format.image)

    @classmethod
    def from_components(cls, prompt_format, front_end, base_model, *, base: str | os.PathLike | None = None,
                        audio: str | os.PathLike | None = None, **kwargs) -> SAFEProcessor:
        """From the format and front end :func:`safe.inference.loading.load_frozen` returns; ``base`` /
        ``audio``: the paths they were loaded from (recorded, absolute, for ``safe.pipeline``)."""
        size = None
        if isinstance(prompt_format, PromptFormat):
            size = int(base_model.config.vision_config.image_size)
        sources = {k: (str(Path(v).resolve()) if v is not None else None) for k, v in (("base", base), ("audio", audio))}
        return cls(prompt_format, front_end, image_size=size, sources=sources, **kwargs)

    # ----------------------------------------------------------------------------------------------
    def load_audio(self, source: Any, sampling_rate: int | None = None, name: str | None = None) -> np.ndarray:
        """One clip -> mono float32 at the encoder's rate under this processor's length rule."""
        return load_audio(source, sampling_rate, self.sampling_rate, name, max_seconds=self.max_seconds,
                          long_audio=self.long_audio)

    def _image(self, image: Any, i: int):
        return open_image(image, str(image) if isinstance(image, (str, Path)) else f"image[{i}]", self.image_size)

    def __call__(self, text: str | Sequence[str] | None = None, images: Any = None, audio: Any = None,
                 sampling_rate: int | Sequence[int | None] | None = None, return_tensors: str = "pt",
                 **modality_inputs: Any) -> dict:
        """Inputs for ``SAFEModel.forward`` / ``generate``.

        ``text``: a question or a list of them (one row each). ``images``: one per row (a path, PIL
        image or uint8 array), a list with ``None`` for rows without an image, or None. A row without an
        image in a batch where other rows have one gets a stand-in: a black image of the first image's size
        (:data:`STAND_IN_RGB`); a batch without any image gets text-only prompts. ``audio``: one per row (path, bytes, file-like, array
        or tensor), ``None`` for rows without audio; ``sampling_rate``: the rate of array inputs (one
        for all rows or one per row). Returns ``input_ids``, ``attention_mask``, ``pixel_values`` (with
        images), ``audio_mask`` (bool (n,), True where a row has audio) and, when any row has audio,
        ``audio_features`` (zeros on rows without audio, never read there) and ``audio_preview``."""
        if return_tensors != "pt":
            raise ValueError(f"only return_tensors='pt' is supported, got {return_tensors!r}")
        if text is None:
            raise ValueError("text: a question (or a list of questions) is required")
        texts = [text] if isinstance(text, str) else list(text)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError("text must be a string or a non-empty list of strings")
        n = len(texts)
        unknown = sorted(set(modality_inputs) - set(self.modalities))
        if unknown:
            raise ValueError(f"{unknown[0]}: this processor has no such modality (it has audio"
                             f"{''.join(', ' + m for m in self.modalities)})")
        imgs, clips = _rows(images, n, "images"), _rows(audio, n, "audio")
        rates = list(sampling_rate) if isinstance(sampling_rate, (list, tuple)) else [sampling_rate] * n
        if len(rates) != n:
            raise ValueError(f"sampling_rate: {len(rates)} rates given for {n} questions")
        with_image = [im is not None for im in imgs]
        if any(with_image) and not all(with_image):
            # Stand-in rule: one image per row keeps the batch rectangular for every backbone and the policy's
            # image state; the base model sees the same stand-in, so closed rows stay bit-exact on the batch.
            first = self._image(imgs[with_image.index(True)], with_image.index(True))
            imgs = [im if im is not None else Image.new("RGB", first.size, STAND_IN_RGB) for im in imgs]
            with_image = [True] * n
        if not any(with_image) and self.kind != "builtin" and self.prompt_format.arch.startswith(("blip2", "paligemma")):
            name = "BLIP-2" if self.prompt_format.arch.startswith("blip2") else "PaliGemma"
            raise ValueError(f"images: a {name} model needs an image on every row (its processor / generate take "
                             "pixel_values)")
        if self.kind == "vlm":  # the checkpoint's processor expands each image's placeholders itself
            out: dict[str, Any] = self.prompt_format.batch(
                texts, [self._image(im, i) for i, im in enumerate(imgs)] if any(with_image) else None)
            return self._with_modalities(self._with_audio(out, clips, rates, n), modality_inputs, n)
        enc = self.prompt_format.encode([_Row(t) for t in texts])
        if not any(with_image):  # a text-only prompt: no image placeholders, no pixel values
            enc.prompts = [[t for t in p if t != self.image_token_id] for p in enc.prompts]
        out = dict(self.prompt_format.prompt_batch(enc, list(range(n))))
        if any(with_image):
            out["pixel_values"] = self.prompt_format.pixels([self._image(im, i) for i, im in enumerate(imgs)])
        return self._with_modalities(self._with_audio(out, clips, rates, n), modality_inputs, n)

    def _with_modalities(self, out: dict[str, Any], given: dict[str, Any], n: int) -> dict[str, Any]:
        for name, value in given.items():
            maps = _rows(value, n, name)
            has = torch.tensor([m is not None for m in maps], dtype=torch.bool)
            out[f"{name}_mask"] = has
            if bool(has.any()):
                feats = self.modalities[name]([m for m in maps if m is not None], name)
                full = feats.new_zeros((n, *feats.shape[1:]))
                full[has] = feats
                out[f"{name}_features"] = full
        return out

    def _with_audio(self, out: dict[str, Any], clips: list, rates: list, n: int) -> dict[str, Any]:
        waves = []
        for i, (clip, rate) in enumerate(zip(clips, rates)):
            if clip is None:
                waves.append(None)
                continue
            name = str(clip) if isinstance(clip, (str, os.PathLike)) else f"audio[{i}]"
            waves.append(self.load_audio(clip, rate, name))
        has = torch.tensor([w is not None for w in waves], dtype=torch.bool)
        out["audio_mask"] = has
        if bool(has.any()):
            given = [w for w in waves if w is not None]
            feats = torch.as_tensor(self.front_end(given))
            full = feats.new_zeros((n, *feats.shape[1:]))
            full[has] = feats
            got = self.preview(given)
            preview = got.new_zeros((n, *got.shape[1:]))
            preview[has] = got
            out["audio_features"], out["audio_preview"] = full, preview
        return out

    def decode(self, sequences: torch.Tensor, prompt_length: int) -> list[str]:
        """Answers from ``generate`` output (prompt + new tokens), cut at the end-of-sequence token."""
        return self.prompt_format.decode(sequences, prompt_length)

    # ----------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        fmt = self.prompt_format
        d: dict[str, Any] = {"format_version": FORMAT_VERSION, "kind": self.kind, "image_size": self.image_size,
                             "audio_front_end": "builtin" if isinstance(self.front_end, BuiltinFrontEnd) else "extractor",
                             "sampling_rate": self.sampling_rate, "max_seconds": self.max_seconds,
                             "long_audio": self.long_audio, "sources": self.sources}
        if self.modalities:  # absent for an audio-only processor: its file is what it always was
            d["modalities"] = sorted(self.modalities)
        if self.kind == "builtin":
            d["num_image_tokens"] = int(fmt.n_image)
        elif self.kind == "vlm":
            d["template"], d["layout"] = fmt.template, fmt.layout
        else:
            d["template"], d["layout"] = fmt.template, fmt.layout
        return d

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Tokenizer, image processor, feature extractor and ``safe_processor.json`` into ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if self.kind == "vlm":  # processor, tokenizer and image processor as the checkpoint holds them
            self.prompt_format.save_pretrained(path)
        else:
            self.tokenizer.save_pretrained(str(path))
            images = image_processor(self.image_size) if self.kind == "builtin" else self.prompt_format.images
            images.save_pretrained(str(path))
        self.front_end.extractor.save_pretrained(str(path / AUDIO_SUBDIR))
        for name, front in self.modalities.items():
            front.save_pretrained(path / f"{name}{MODALITY_SUFFIX}")
        write_atomic(path / PROCESSOR_FILE, json.dumps(self.to_dict(), indent=2))
        return path

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **overrides: Any) -> SAFEProcessor:
        """Load what :meth:`save_pretrained` wrote (no download); ``path`` may also be a run directory
        (its ``checkpoints/policy``, else ``checkpoints/final``). ``overrides``: ``max_seconds`` /
        ``long_audio`` instead of the saved ones."""
        from transformers import AutoImageProcessor, AutoTokenizer

        path = Path(path)
        if not (path / PROCESSOR_FILE).is_file():
            path = next((path / "checkpoints" / s for s in ("policy", "final")
                         if (path / "checkpoints" / s / PROCESSOR_FILE).is_file()), path)
        f = path / PROCESSOR_FILE
        if not f.is_file():
            raise FileNotFoundError(f"{path} holds no SAFE processor ({PROCESSOR_FILE} is missing)")
        d = json.loads(f.read_text())
        if d.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{f}: format_version {d.get('format_version')!r}, expected {FORMAT_VERSION}")
        if d["kind"] == "vlm":
            from safe.processing.vlm_prompts import load_processor

            fmt = VLMProcessorFormat.from_parts(load_processor(path), d["layout"], d["template"])
        elif d["kind"] == "builtin":
            fmt = PromptFormat(AutoTokenizer.from_pretrained(str(path), local_files_only=True), int(d["num_image_tokens"]))
        else:
            tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            images = AutoImageProcessor.from_pretrained(str(path), local_files_only=True)
            fmt = ProcessorFormat.from_parts(tok, images, d["layout"], d["template"])
        front = BuiltinFrontEnd() if d["audio_front_end"] == "builtin" else FeatureFrontEnd(path / AUDIO_SUBDIR)
        kwargs = {"max_seconds": d["max_seconds"], "long_audio": d["long_audio"], **overrides}
        kwargs.setdefault("modalities", {m: ImageModalityFrontEnd.from_pretrained(path / f"{m}{MODALITY_SUFFIX}")
                                         for m in d.get("modalities", [])})
        return cls(fmt, front, image_size=d["image_size"], sources=d.get("sources"), **kwargs)


__all__ = ["AUDIO_SUBDIR", "PROCESSOR_FILE", "SAFEProcessor"]
