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
