"""Front ends of image-like modalities (depth, thermal, ...): one map per row -> the encoder's ``pixel_values``
through the encoder's own transformers image processor.

A map may be a path (an image file, or a ``.npy`` array), a PIL image, or an array ``(H, W)`` / ``(H, W, C)``
(float maps such as depth in metres are passed as they are; the image processor's rescale and normalise
settings say how they become the encoder's input). Errors (``ValueError``) name the input.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from safe.processing.features import PREVIEW_DIM
from safe.processing.images import ImageInputError, ImageTooLargeError, read_image

_KEPT_MODES = ("L", "LA", "RGB", "RGBA", "I", "F", "I;16", "I;16L", "I;16B", "I;16N")
"""Decoded image modes kept as they are (8-bit, 16-bit, 32-bit integer and float maps); others (1-bit,
palette, CMYK, ...) are converted to 8-bit grey or RGB first."""


def _image_file_map(path: Path, name: str) -> np.ndarray:
    """An image file as an array, under :func:`safe.processing.images.read_image`'s format allowlist and side
    limits (the file is closed before returning)."""
    im = read_image(path, name, mode=None)
    if im.mode not in _KEPT_MODES:
        im = im.convert("L" if im.mode == "1" else "RGB")  # a 1-bit map -> 0 / 255 grey, a palette -> colours
    return np.asarray(im)


def read_map(item: Any, name: str) -> np.ndarray:
    """One map as an ``(H, W, C)`` array (channels last). An image file is read with the image inputs'
    allowed formats (:data:`~safe.processing.images.FILE_FORMATS`) and side limit
    (:data:`~safe.processing.images.FILE_MAX_SIDE`); 16-bit and float images keep their values."""
    try:
        if isinstance(item, (str, os.PathLike)):
            path = Path(item)
            arr = np.load(path) if path.suffix == ".npy" else _image_file_map(path, name)
        elif isinstance(item, Image.Image):
            arr = np.asarray(item.convert("L") if item.mode == "1" else item)
        elif isinstance(item, torch.Tensor):
            arr = item.detach().cpu().numpy()
        else:
            arr = np.asarray(item)
    except ImageInputError as err:  # one error naming the input, as for any other unreadable map
        reason = str(err).removeprefix(f"{name}: ")
        message = f"{name}: cannot read the map {item}: {reason}"
        raise (ImageTooLargeError(message, err.size) if isinstance(err, ImageTooLargeError)
               else ImageInputError(message)) from None
    except (OSError, ValueError, TypeError) as err:
        raise ValueError(f"{name}: cannot read the map {item if isinstance(item, (str, os.PathLike)) else ''}: "
                         f"{err}") from err
    if arr.dtype.kind not in "iuf" or arr.ndim not in (2, 3) or 0 in arr.shape:
        raise ValueError(f"{name}: expected a 2-D map or an (H, W, C) array of numbers, got "
                         f"{arr.dtype} of shape {arr.shape}")
    return arr[..., None] if arr.ndim == 2 else arr


class ImageModalityFrontEnd:
    """A transformers image processor used for one image-like modality.

    Guarantees: the output is exactly what ``image_processor(maps, input_data_format="channels_last")``
    makes, stacked as ``(n, C, H, W)`` float32; ``save_pretrained`` / ``from_pretrained`` round-trip it."""

    def __init__(self, image_processor) -> None:
        self.image_processor = image_processor

    def __call__(self, maps: Sequence[Any], name: str = "map") -> torch.Tensor:
        arrays = [read_map(m, f"{name}[{i}]") for i, m in enumerate(maps)]
        out = self.image_processor(arrays, return_tensors="pt", input_data_format="channels_last")["pixel_values"]
        return torch.as_tensor(out, dtype=torch.float32)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        self.image_processor.save_pretrained(str(path))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> ImageModalityFrontEnd:
        from transformers import AutoImageProcessor

        return cls(AutoImageProcessor.from_pretrained(str(path), local_files_only=True))


def map_preview(pixel_values: torch.Tensor, grid: int) -> torch.Tensor:
    """The policy's cheap preview of an image-like modality, read off its front end's output without the
    encoder: (n, PREVIEW_DIM) float32, each of the ``grid`` x ``grid`` cells' largest value of the first
    channel mapped from the encoder's input range [-1, 1] to [0, 1] (for depth: the nearness of the cell's
    nearest point), row by row, then zeros. ``pixel_values``: (n, C, H, W) with H and W multiples of ``grid``
    (one cell per encoder patch when ``grid`` is the patch grid); other shapes raise ``ValueError``."""
    if isinstance(grid, bool) or not isinstance(grid, int) or grid < 1 or grid * grid > PREVIEW_DIM:
        raise ValueError(f"grid must be an integer in [1, {int(PREVIEW_DIM ** 0.5)}], got {grid!r}")
    if pixel_values.dim() != 4 or pixel_values.shape[2] % grid or pixel_values.shape[3] % grid:
        raise ValueError(f"pixel_values must be (n, C, H, W) with H and W multiples of grid={grid}, "
                         f"got shape {tuple(pixel_values.shape)}")
    n, _, h, w = pixel_values.shape
    x = pixel_values[:, 0].float().cpu().reshape(n, grid, h // grid, grid, w // grid)
    cells = x.amax(dim=(2, 4)).reshape(n, grid * grid)
    out = torch.zeros(n, PREVIEW_DIM)
    out[:, : grid * grid] = ((cells + 1.0) / 2.0).clamp(0.0, 1.0)
    return out
