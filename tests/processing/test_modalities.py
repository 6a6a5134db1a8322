"""SAFEProcessor with a modality beside audio: depth maps in any form -> the depth encoder's pixel_values
through its own image processor, per-row masks, and a save / load round trip."""
import numpy as np
import pytest
import torch
from PIL import Image

from safe.bench.build import SHIPPED_DIR
from safe.bench.depth import depth_pixels, load_depth_processor
from safe.bench.depth_model import load_depth_encoder
from safe.processing.features import BuiltinFrontEnd
from safe.processing.processor import SAFEProcessor
from safe.processing.prompts import load_vl_model


@pytest.fixture(scope="module")
def processor():
    _, _, fmt = load_vl_model(SHIPPED_DIR / "vl")
    return SAFEProcessor(fmt, BuiltinFrontEnd(), image_size=48, modalities={"depth": load_depth_processor()})


def test_depth_maps_become_the_encoders_input_with_a_mask(processor, tmp_path):
    maps = [np.full((48, 48), 2.0, np.float32), None, np.linspace(1, 6, 48 * 48, dtype=np.float32).reshape(48, 48)]
    np.save(tmp_path / "d.npy", maps[2])
    out = processor(text=["which shape is nearest?"] * 3, images=[Image.new("RGB", (48, 48))] * 3,
                    depth=[maps[0], None, str(tmp_path / "d.npy")])
    assert out["depth_mask"].tolist() == [True, False, True]
    assert out["depth_features"].shape == (3, 1, 48, 48) and not out["depth_features"][1].any()
    for i in (0, 2):
        assert torch.allclose(out["depth_features"][i], torch.from_numpy(depth_pixels(maps[i])), atol=1e-6)
    assert "audio_features" not in out and not out["audio_mask"].any()
    processor.save_pretrained(tmp_path / "p")
    again = SAFEProcessor.from_pretrained(tmp_path / "p")
    out2 = again(text=["which shape is nearest?"] * 3, images=[Image.new("RGB", (48, 48))] * 3,
                 depth=[maps[0], None, str(tmp_path / "d.npy")])
    assert all(torch.equal(out[k], out2[k]) for k in out)
    assert list(again.modalities) == ["depth"]
    # the processor's output goes straight into a model carrying depth
    from safe import SAFEModel

    model = SAFEModel(load_vl_model(SHIPPED_DIR / "vl")[0], load_depth_encoder(), modality="depth")
    with torch.no_grad():
        model(**out)


def test_bad_modality_inputs_are_named(processor):
    with pytest.raises(ValueError, match="thermal: this processor has no such modality"):
        processor(text="q", thermal="x.npy")
    with pytest.raises(ValueError, match=r"depth\[0\]: expected a 2-D map"):
        processor(text="q", depth=np.zeros((2, 2, 2, 2)))
    with pytest.raises(ValueError, match=r"depth\[0\]: cannot read the map"):
        processor(text="q", depth="/nonexistent/d.png")


def _png_header_only(path, width, height):
    """A PNG whose header declares width x height, with no pixel data (a few dozen bytes)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IEND", b""))
    return path


def test_map_files_keep_16_bit_and_1_bit_values(tmp_path):
    from safe.processing.modalities import read_map

    deep = np.arange(48 * 48, dtype=np.uint16).reshape(48, 48) * 20  # past 255: a 16-bit depth map
    Image.fromarray(deep).save(tmp_path / "d16.png")
    got = read_map(tmp_path / "d16.png", "depth[0]")
    assert got.shape == (48, 48, 1) and np.array_equal(got[..., 0].astype(np.int64), deep.astype(np.int64))
    mask = np.zeros((8, 8), bool)
    mask[2:5, 3:6] = True
    Image.fromarray(mask).convert("1").save(tmp_path / "m1.png")
    for item in (tmp_path / "m1.png", Image.open(tmp_path / "m1.png")):
        got = read_map(item, "depth[0]")
        assert got.dtype == np.uint8 and np.array_equal(got[..., 0] > 0, mask)


def test_map_files_obey_the_image_limits_naming_the_input(tmp_path):
    from safe.processing.images import ImageInputError, ImageTooLargeError
    from safe.processing.modalities import read_map

    with pytest.raises(ImageTooLargeError, match=r"^depth\[1\]: cannot read the map .*wide.png: a 16385x1 image"):
        read_map(_png_header_only(tmp_path / "wide.png", 16385, 1), "depth[1]")
    with pytest.raises(ImageTooLargeError, match=r"^depth\[1\]: cannot read the map .*bomb.png: .*larger than"):
        read_map(_png_header_only(tmp_path / "bomb.png", 60000, 60000), "depth[1]")  # Pillow's bomb check
    Image.new("L", (16, 16)).save(tmp_path / "m.ico")
    with pytest.raises(ImageInputError, match=r"^depth\[2\]: cannot read the map .*m.ico: .*allowed: PNG"):
        read_map(tmp_path / "m.ico", "depth[2]")
