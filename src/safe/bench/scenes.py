"""Scene drawing of the built-in benchmark: coloured shapes on a grid, placed with a little jitter.

Drawing has no anti-aliasing and placement draws only from the generator it is given, so the same
objects always give the same pixels.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import numpy as np
from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
#: Colour name -> RGB. Saturated and far apart so a 1M-parameter vision tower separates them.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 70),
    "blue": (40, 90, 235),
    "yellow": (240, 215, 40),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
BACKGROUND: tuple[int, int, int] = (24, 24, 24)
MAX_OBJECTS = 4


class Layout(Protocol):
    """The placement settings a scene needs (:class:`safe.bench.questions.SynthConfig` has them)."""

    grid: int
    jitter_px: int


def render_scene(objects: Iterable[dict[str, Any]], image_size: int = 48, grid: int = 3) -> Image.Image:
    """Draw objects (dicts with ``shape``, ``colour``, ``row``, ``col``, ``dx``, ``dy``) on a dark background.

    No anti-aliasing: edges are exact, so the same objects always give the same pixels.
    """
    cell = image_size // grid
    h = max(2, int(cell * 0.375))
    img = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(img)
    for o in objects:
        cx = o["col"] * cell + cell // 2 + o.get("dx", 0)
        cy = o["row"] * cell + cell // 2 + o.get("dy", 0)
        rgb = COLOURS[o["colour"]]
        if o["shape"] == "circle":
            draw.ellipse([cx - h, cy - h, cx + h, cy + h], fill=rgb)
        elif o["shape"] == "square":
            s = max(1, round(h * 0.85))  # a bit smaller: similar area to the circle
            draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=rgb)
        elif o["shape"] == "triangle":
            draw.polygon([(cx, cy - h), (cx - h, cy + h), (cx + h, cy + h)], fill=rgb)
        else:
            raise ValueError(f"unknown shape {o['shape']!r}; known: {list(SHAPES)}")
    return img


def choice(rng: np.random.Generator, items: Sequence[Any]) -> Any:
    """One item of ``items``, drawn with a single ``rng.integers`` call (the draw order fixes the bytes)."""
    return items[int(rng.integers(len(items)))]


def place_objects(rng: np.random.Generator, config: Layout, specs: list[tuple[str, str]],
                  cells: Sequence[tuple[int, int]] | None = None) -> list[dict[str, Any]]:
    """Put (shape, colour) objects into distinct random cells (from ``cells`` if given) with jitter."""
    if cells is None:
        cells = [(r, c) for r in range(config.grid) for c in range(config.grid)]
    picked = rng.choice(len(cells), size=len(specs), replace=False)
    j = config.jitter_px
    out = []
    for (shape, colour), k in zip(specs, picked):
        r, c = cells[int(k)]
        dx, dy = (int(v) for v in rng.integers(-j, j + 1, size=2))
        out.append({"shape": shape, "colour": colour, "row": r, "col": c, "dx": dx, "dy": dy})
    return out


def random_scene(rng: np.random.Generator, config: Layout, n: int | None = None) -> list[dict[str, Any]]:
    """``n`` (default: 1 to :data:`MAX_OBJECTS`, drawn) objects of random shape and colour in random cells."""
    if n is None:
        n = int(rng.integers(1, MAX_OBJECTS + 1))
    return place_objects(rng, config, [(choice(rng, SHAPES), choice(rng, COLOUR_NAMES)) for _ in range(n)])
