"""Image files -> RGB images, with the size judged from the header before a pixel is decoded.

A few kilobytes of PNG can declare a 1 x 16,000,000 or 20,000 x 20,000 canvas, and some containers
lie about what they hold (an ICO whose directory says 16 x 16 may hold a 12,000 x 12,000 PNG, decoded
in full before its size is known). So :func:`read_image`:

* opens the file with only the decoders in ``formats`` (:data:`SERVE_FORMATS` for the server: PNG,
  JPEG, WebP, GIF, whose headers state the decoded size; :data:`FILE_FORMATS` for data files adds BMP
  and TIFF). Anything else, ICO included, is refused without being decoded;
* refuses a width over ``max_width`` or a height over ``max_height`` (each side on its own: a
  1 x 16,000,000 strip is as costly as a 4,000 x 4,000 square), from the header and from every
  decoder tile's extents;
* decodes, converts to RGB, and checks the decoded size is the declared one.

Every refusal is an :class:`ImageInputError` (a ``ValueError``) naming the input;
:class:`ImageTooLargeError` for a side over the limit.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from PIL import Image

MAX_SIDE = 4096
"""The server's default largest width and height: every model here resizes to a few hundred pixels."""
FILE_MAX_SIDE = 16384
"""Largest width and height of an image file read for data or ``safe predict`` (a camera photo fits;
Pillow's own bomb check refuses much past it anyway)."""
SERVE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF")
FILE_FORMATS = SERVE_FORMATS + ("BMP", "TIFF")


class ImageInputError(ValueError):
    """An image that cannot be used: not an image, a format not allowed, truncated, or too large."""


class ImageTooLargeError(ImageInputError):
    """An image whose header declares a side over the limit; ``size`` is its (width, height)."""

    def __init__(self, message: str, size: tuple[int, int]) -> None:
        super().__init__(message)
        self.size = size


def check_size(im: Image.Image, name: str, max_width: int, max_height: int) -> None:
    """Refuse ``im`` (opened, not loaded) when its header or any decoder tile exceeds the limits."""
    w, h = im.size
    for tile in getattr(im, "tile", None) or ():
        x0, y0, x1, y1 = tile[1]
        w, h = max(w, x1), max(h, y1)
    if w > max_width or h > max_height:
        raise ImageTooLargeError(f"{name}: a {w}x{h} image is larger than the {max_width}x{max_height} decoded "
                                 "here (width and height are limited separately); send it resized", (w, h))


def read_image(source: Any, name: str = "image", *, max_width: int = FILE_MAX_SIDE, max_height: int = FILE_MAX_SIDE,
               formats: tuple[str, ...] | None = FILE_FORMATS, mode: str | None = "RGB") -> Image.Image:
    """A path, ``bytes`` or binary file-like object -> an RGB image, under the module docstring's rules.
    ``mode=None`` keeps the decoded mode (16-bit or float maps stay as they are); the file is closed."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    elif isinstance(source, (str, os.PathLike)) and not Path(source).is_file():
        raise ImageInputError(f"{name}: no such image file {str(source)!r}")
    try:
        with Image.open(source, formats=list(formats) if formats else None) as im:
            check_size(im, name, max_width, max_height)
            declared = im.size
            im.load()
            if im.size != declared:  # a decoder that found more than the header said
                raise ImageTooLargeError(f"{name}: the image decodes to {im.size[0]}x{im.size[1]}, not the "
                                         f"{declared[0]}x{declared[1]} its header declares", im.size)
            return im.convert(mode) if mode else im
    except ImageInputError:
        raise
    except Image.DecompressionBombError as err:  # Pillow's own header check fired first (a gigantic canvas)
        raise ImageTooLargeError(f"{name}: the image is larger than the {max_width}x{max_height} decoded here "
                                 f"({' '.join(str(err).split()[:3])}); send it resized", (0, 0)) from None
    except Image.UnidentifiedImageError:
        allowed = f" (allowed: {', '.join(formats)})" if formats else ""
        raise ImageInputError(f"{name}: cannot decode the image: not an image in a format read here{allowed}") \
            from None
    except Exception as err:  # noqa: BLE001 - PIL raises many types (OSError, SyntaxError, DecompressionBomb...)
        raise ImageInputError(f"{name}: cannot decode the image ({type(err).__name__}: {err})") from None


__all__ = ["FILE_FORMATS", "FILE_MAX_SIDE", "ImageInputError", "ImageTooLargeError", "MAX_SIDE", "SERVE_FORMATS", "check_size",
           "read_image"]
