"""Encoders beyond audio: transformers vision classes with their image processors, a custom protocol
module, and ensembles of two encoders on one modality."""
import numpy as np
import pytest
import torch
from torch import nn

from safe import SAFEConfig, SAFEModel
from safe.bench import presets as P
from safe.bench.vision import VISION_PRESETS, random_pixels, tiny_vision_encoder
from safe.models.encoders import EncoderEnsemble, wrap_encoder
from tests.models.bypass_modes import rows, run

MASK = torch.tensor([True, False, True, False])
CFG = SAFEConfig(fusion_layers=[0, -1], num_audio_tokens=3, lora_rank=4)


@pytest.mark.parametrize("kind", VISION_PRESETS)
def test_vision_encoder_as_a_modality_keeps_closed_rows_exact(kind):
    base = P.tiny_base("llava")
    ref = P.tiny_base("llava")
    enc = tiny_vision_encoder(kind)
    model = SAFEModel(base, enc, CFG, modality="depth")
    assert all(not p.requires_grad for p in enc.parameters())
    x = P.random_vl_inputs(base, 4)
    pixels = random_pixels(enc, 4, seed=2)
    model.set_gates(0.5)
    for mode in ("forward", "greedy"):
        got, want = run(model, mode, x, depth_features=pixels, depth_mask=MASK), run(ref, mode, x)
        assert torch.equal(rows(got, MASK, mode)[~MASK], rows(want, MASK, mode)[~MASK])
    assert (got := run(model, "forward", x, depth_features=pixels, depth_mask=MASK))[MASK].sub(
        run(ref, "forward", x)[MASK]).abs().max() > 1e-4
    assert model.audio_encoder_calls == 6  # two open rows per call, three calls


@pytest.mark.parametrize("kind,processor", [("vit", "ViTImageProcessor"), ("convnext", "ConvNextImageProcessor")])
def test_a_depth_map_goes_through_the_encoders_own_image_processor(kind, processor):
    import transformers as tf

    enc = tiny_vision_encoder(kind)
    proc = getattr(tf, processor)(size={"height": 32, "width": 32} if kind == "vit" else {"shortest_edge": 32},
                                  image_mean=[0.5], image_std=[0.5], do_rescale=False,
                                  **({"crop_pct": 1.0} if kind == "convnext" else {}))
    depth_maps = [np.random.default_rng(i).random((40, 40, 1)).astype(np.float32) for i in range(2)]
    pixels = proc(depth_maps, return_tensors="pt", input_data_format="channels_last")["pixel_values"]
    assert pixels.shape == (2, 1, 32, 32)
    tokens = wrap_encoder(enc).encode(pixels)
    assert tokens.shape[0] == 2 and tokens.shape[2] == wrap_encoder(enc).output_dim


class MeanPatches(nn.Module):
    """A custom encoder following the protocol: (n, 1, H, W) -> (n, 16, 8)."""

    output_dim = 8
    encoder_kind = "mean-patches"

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 8)

    def forward(self, x):
        patches = nn.functional.avg_pool2d(x, 8).flatten(1).unsqueeze(-1)  # (n, 16, 1)
        return self.proj(patches.expand(-1, -1, 4))


def test_custom_encoder_protocol():
    base, ref = P.tiny_base("llava"), P.tiny_base("llava")
    model = SAFEModel(base, MeanPatches(), CFG, modality="thermal")
    model.set_gates(0.5)
    x = P.random_vl_inputs(base, 4)
    maps = torch.randn(4, 1, 32, 32)
    got = run(model, "forward", x, thermal_features=maps, thermal_mask=MASK)
    assert torch.equal(got[~MASK], run(ref, "forward", x)[~MASK])
    assert model.signature["audio_encoder"] == "mean-patches" and model.modality_names == ["thermal"]

    class Broken(MeanPatches):
        def forward(self, x):
            return super().forward(x)[:, :, :4]

    with pytest.raises(ValueError, match=r"custom encoder mean-patches must return \(batch=4, tokens, output_dim=8\)"):
        wrap_encoder(Broken()).encode(maps)
    with pytest.raises(ValueError, match="positive integer attribute output_dim"):
        wrap_encoder(type("NoDim", (nn.Linear,), {"output_dim": "wide"})(2, 2))


def test_ensemble_of_whisper_and_clap(tmp_path):
    whisper, clap = P.tiny_audio_encoder("whisper"), P.tiny_audio_encoder("clap")
    base, ref = P.tiny_base("llava"), P.tiny_base("llava")
    model = SAFEModel(base, [whisper, clap], CFG)
    assert isinstance(model.audio_encoder, EncoderEnsemble) and model.audio_encoder.kind == "whisper+clap"
    feats = (P.random_audio(whisper, 4, seed=1), P.random_audio(clap, 4, seed=2))
    tokens = model.encode_audio(feats)
    assert tokens.shape == (4, 6, model.hidden_size)  # k tokens per member, concatenated
    model.set_gates(0.5)
    x = P.random_vl_inputs(base, 4)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.1)
    for mode in ("forward", "beams"):
        got = run(model, mode, x, audio_features=feats, audio_mask=MASK)
        assert torch.equal(rows(got, MASK, mode)[~MASK], rows(run(ref, mode, x), MASK, mode)[~MASK])
    want = run(model, "forward", x, audio_features=feats, audio_mask=MASK)
    # each member's projector matters: changing the CLAP input moves the open rows only
    moved = run(model, "forward", x, audio_features=(feats[0], feats[1] + 1), audio_mask=MASK)
    assert not torch.equal(moved[MASK], want[MASK]) and torch.equal(moved[~MASK], want[~MASK])
    model.save_pretrained(tmp_path)
    loaded = SAFEModel.from_pretrained(tmp_path, P.tiny_base("llava"), [P.tiny_audio_encoder("whisper"),
                                                                       P.tiny_audio_encoder("clap")])
    assert torch.equal(run(loaded, "forward", x, audio_features=feats, audio_mask=MASK), want)
    with pytest.raises(ValueError, match="made for another base model"):
        SAFEModel.from_pretrained(tmp_path, P.tiny_base("llava"), P.tiny_audio_encoder("whisper"))
    with pytest.raises(ValueError, match="must be a tuple of 2 tensors"):
        model(**x, audio_features=feats[0])
