"""AVQA with 1 to 3 key frames: which frames, how they are tiled into the row's one image, where the tile is
written, and the errors for bad values and short videos (reader and data spec)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from safe.data.readers import DatasetFormatError, read_avqa
from safe.data.readers.frames import grid_shape
from safe.data.spec import SpecError, load_spec
from safe.data.spec_source import SpecSource
from tests.data.spec_fixtures import wav

# frame i of a video is a flat picture of this colour, so a tile's cells say which frames it holds
SHADES = [(250, 0, 0), (0, 250, 0), (0, 0, 250), (250, 250, 0), (0, 250, 250), (250, 0, 250)]
W, H = 48, 27  # a 16:9 frame


def write_videos(root: Path, frames_per_video: list[int]) -> Path:
    rows = []
    for i, n in enumerate(frames_per_video):
        video = f"vid{i}_000030"
        for f in range(n):
            (root / "frames" / video).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (W, H), SHADES[f]).save(root / "frames" / video / f"{f:04d}.jpg", quality=95)
        wav(root / "audio" / f"{video}.wav")
        rows.append({"id": i, "video_id": i, "video_name": video, "question_text": "what is making the sound",
                     "multi_choice": ["dog", "bell"], "answer": 0, "question_type": "Come From"})
    (root / "train_qa.json").write_text(json.dumps(rows))
    return root


def cells(path: str, rows: int, cols: int) -> list[tuple[int, ...]]:
    """The mean colour of each cell of a tile (row by row), rounded to the nearest 50."""
    im = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
    assert im.shape[:2] == (rows * H, cols * W)
    return [tuple(int(round(v / 50) * 50) for v in im[r * H:(r + 1) * H, c * W:(c + 1) * W].reshape(-1, 3).mean(0))
            for r in range(rows) for c in range(cols)]


def read(root: Path, **kw):
    return read_avqa(root / "train_qa.json", root / "frames", root / "audio", **kw)


def test_one_key_frame_is_the_first_frame_as_before(tmp_path):
    root = write_videos(tmp_path / "avqa", [6, 1])
    a, b = read(root).examples
    assert a.image == str(root / "frames" / "vid0_000030" / "0000.jpg") and "key_frames" not in a.meta
    assert b.image.endswith("0000.jpg")


@pytest.mark.parametrize("k, grid, picked", [(2, (2, 1), [0, 3]), (3, (3, 1), [0, 2, 4])])
def test_key_frames_spread_over_the_clip_tiled_near_square(tmp_path, k, grid, picked):
    root = write_videos(tmp_path / "avqa", [6])
    tiles = tmp_path / "tiles"
    (e,) = read(root, key_frames=k, tiles_dir=tiles).examples
    assert Path(e.image).parent == tiles and e.image.endswith(".png")
    assert [Path(f).name for f in e.meta["key_frames"]] == [f"{i:04d}.jpg" for i in picked]
    assert cells(e.image, *grid) == [SHADES[i] for i in picked]  # time order, row by row
    # the same frames give the same tile (written once); a changed frame gives a new one
    again = read(root, key_frames=k, tiles_dir=tiles).examples[0]
    assert again.image == e.image
    Image.new("RGB", (W, H), (0, 0, 0)).save(root / "frames" / "vid0_000030" / "0000.jpg")
    assert read(root, key_frames=k, tiles_dir=tiles).examples[0].image != e.image


def test_grid_shape_is_near_square():
    assert grid_shape(1, 16, 9) == (1, 1)
    assert grid_shape(2, 16, 9) == (2, 1) and grid_shape(3, 16, 9) == (3, 1)  # landscape: stacked
    assert grid_shape(2, 10, 10) == (1, 2) and grid_shape(3, 10, 10) == (2, 2)  # square: side by side / 2 x 2
    assert grid_shape(2, 9, 16) == (1, 2)  # portrait: side by side


def test_bad_key_frames_and_short_videos(tmp_path):
    root = write_videos(tmp_path / "avqa", [6, 2])
    for bad in (0, 4, 1.5, True, "2"):
        with pytest.raises(ValueError, match="key_frames must be an integer from 1 to 3"):
            read(root, key_frames=bad, tiles_dir=tmp_path)
    with pytest.raises(ValueError, match="key_frames=2: pass tiles_dir"):
        read(root, key_frames=2)
    with pytest.raises(DatasetFormatError, match=r"row 1.*no frame for 'vid1_000030' key frame 3: key_frames=3 "
                                                 r"needs 3 extracted frames, found 2"):
        read(root, key_frames=3, tiles_dir=tmp_path / "t")
    got = read(root, key_frames=3, tiles_dir=tmp_path / "t", skip_bad=True)
    assert len(got.examples) == 1 and got.skipped == 1


def test_the_data_spec_takes_key_frames_and_tiles_into_its_cache(tmp_path):
    root = write_videos(tmp_path / "avqa", [3, 3, 3])
    spec = {"train": [{"reader": "avqa", "root": str(root), "split": "train", "key_frames": 2}],
            "cache_dir": str(tmp_path / "cache")}
    rows = list(SpecSource(load_spec(spec, base_dir=tmp_path)).split("train"))
    assert len(rows) == 3 and all(Path(r.image).parent == tmp_path / "cache" / "key_frames" for r in rows)
    assert cells(rows[0].image, 2, 1) == [SHADES[0], SHADES[1]]
    for bad, msg in ((4, "at most 3 key frames, got 4"), (0, "expected an integer >= 1, got 0"),
                     ("two", "expected an integer >= 1")):
        with pytest.raises(SpecError, match=rf"train\[0\]\.key_frames: {msg}"):
            load_spec({**spec, "train": [{**spec["train"][0], "key_frames": bad}]}, base_dir=tmp_path)
