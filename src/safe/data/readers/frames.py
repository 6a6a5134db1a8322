"""Several key frames of a video as the one image a single-image VLM takes (AVQA's ``key_frames`` option).

Which frames: of the video's extracted frames ``<frames_dir>/<stem>/*.jpg`` in sorted order (``n`` of them),
the ``k`` at indices ``floor(i * n / k)`` for ``i = 0 .. k-1``: the starts of ``k`` equal stretches of the
clip, so the first frame is always one (``k = 1`` is the reader's single key frame) and the others spread over
the clip. A video with fewer than ``k`` frames (or only the single ``<stem>.jpg``) is a bad row: padding it
with repeats would hand the model a different kind of picture than the other rows get.

How they are combined: tiled, in time order (row by row, left to right), into one RGB image, each frame
resized to the first frame's size, on the grid (rows x columns, at least ``k`` cells, the unused cells
black) whose shape is closest to square for that frame size (:func:`grid_shape`): two landscape 16:9 frames
stack vertically, three stack in a column. Why tiling, and why near square: the base's image path takes
one image per row (the processor, the prepared pixels, the policy's image state, every backbone here), so a
tiled picture needs no change anywhere downstream; and the image processors resize it to their square
input (CLIP-style ones resize the short side then crop the centre square), so a strip of frames side by
side would lose its outer frames to the crop or be squeezed, while a near-square tile keeps every frame
whole at about the scale one frame gets. The tile is written once as PNG (lossless: the frames are not
re-compressed) under ``tiles_dir``, its name a hash of the frames' paths, sizes and mtimes, so a changed
frame gives a new tile, never a stale one.
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

from PIL import Image

from safe.atomic import staged_file
from safe.data.readers._common import _RowError, _within, inside

MAX_KEY_FRAMES = 3
"""The proposal evaluates AVQA with 1 to 3 key frames."""


def check_key_frames(key_frames: object) -> int:
    """``key_frames`` as an int in 1 .. :data:`MAX_KEY_FRAMES`, else ``ValueError`` naming it."""
    if isinstance(key_frames, bool) or not isinstance(key_frames, int) or not 1 <= key_frames <= MAX_KEY_FRAMES:
        raise ValueError(f"key_frames must be an integer from 1 to {MAX_KEY_FRAMES} (frames tiled into the row's "
                         f"image), got {key_frames!r}")
    return key_frames


def key_frame_paths(frames_dir: Path, stem: str, k: int) -> list[Path]:
    """The ``k`` key frames of video ``stem`` (module docstring); :class:`_RowError` when it has fewer."""
    sub = inside(frames_dir, stem)
    frames = sorted(q for q in sub.glob("*.jpg") if q.is_file() and _within(q, frames_dir)) if sub.is_dir() else []
    if len(frames) < k:
        single = inside(frames_dir, f"{stem}.jpg")
        found = f"{len(frames)} in {sub}" + (f" (and the single {single.name})" if single.is_file() else "")
        raise _RowError(f"no frame for {stem!r} key frame {len(frames) + 1}: key_frames={k} needs {k} extracted "
                        f"frames, found {found}")
    return [frames[i * len(frames) // k] for i in range(k)]


def grid_shape(k: int, width: int, height: int) -> tuple[int, int]:
    """``(rows, columns)`` for ``k`` frames of ``width`` x ``height``: at least ``k`` cells, the tile's aspect
    ratio closest to 1 (log scale), then the fewest empty cells, then fewer rows."""
    shapes = [(r, math.ceil(k / r)) for r in range(1, k + 1)]
    return min(shapes, key=lambda s: (round(abs(math.log(s[1] * width / (s[0] * height))), 6), s[0] * s[1] - k, s[0]))


def tile_frames(paths: list[Path], tiles_dir: Path) -> Path:
    """The tile of ``paths`` (module docstring), written under ``tiles_dir`` unless already there."""
    stamp = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths]
    out = Path(tiles_dir) / f"{hashlib.sha256(repr(stamp).encode()).hexdigest()[:24]}.png"
    if out.is_file():
        return out
    try:
        frames = [Image.open(p).convert("RGB") for p in paths]
    except Exception as err:  # noqa: BLE001 - PIL raises many types for a broken file
        raise _RowError(f"key frame unreadable ({type(err).__name__}: {err})") from None
    w, h = frames[0].size
    rows, cols = grid_shape(len(frames), w, h)
    tile = Image.new("RGB", (cols * w, rows * h), (0, 0, 0))
    for i, frame in enumerate(frames):
        tile.paste(frame if frame.size == (w, h) else frame.resize((w, h), Image.BICUBIC), ((i % cols) * w, (i // cols) * h))
    with staged_file(out) as tmp:
        tile.save(tmp, format="PNG")
    return out
