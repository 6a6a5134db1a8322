"""The adapters' output scale (``SAFEConfig.output_scale``): a constant that multiplies the whole gated delta, so
a closed gate is still the base and a measured scale survives save / load."""
import pytest
import torch

from safe import SAFEConfig, SAFEModel
from safe.adapters.cross_attention import GatedCrossAttention
from safe.models.calibration import calibrate_output_scale, hidden_rms
from tests.models.helpers import MIXED, build, inputs


@pytest.mark.parametrize("ffn_rank", [0, 3])
def test_the_scale_multiplies_the_adapters_whole_output(ffn_rank):
    torch.manual_seed(0)
    one = GatedCrossAttention(16, rank=4, num_heads=2, gate_init=0.5, ffn_rank=ffn_rank).eval()
    torch.manual_seed(0)
    five = GatedCrossAttention(16, rank=4, num_heads=2, gate_init=0.5, ffn_rank=ffn_rank, output_scale=5.0).eval()
    hidden, audio = torch.randn(2, 5, 16) * 40, torch.randn(2, 3, 16)
    with torch.no_grad():
        if not ffn_rank:  # attention alone: exactly five times the delta
            torch.testing.assert_close(five(hidden, audio), 5 * one(hidden, audio))
        else:  # the dense block reads the fused state h + 5x: not a plain multiple, but larger
            assert five(hidden, audio).abs().mean() > 3 * one(hidden, audio).abs().mean()
        five.gate.value.fill_(0.0)
        assert torch.equal(five(hidden, audio), torch.zeros_like(hidden))


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), True, "large"])
def test_a_bad_scale_is_named(bad):
    with pytest.raises(ValueError, match="output_scale"):
        SAFEConfig(output_scale=bad)


def test_a_scale_list_needs_one_value_per_fusion_layer():
    with pytest.raises(ValueError, match="one value per fusion layer"):
        SAFEConfig(fusion_layers=[0, 1], output_scale=[2.0])


def test_hidden_rms_is_measured_set_and_saved(tmp_path):
    model, ref, enc = build(output_scale="hidden_rms", gate_init=0.3)
    x, audio = inputs(model, enc)
    n = model.backbone.num_layers
    before = {i: model.adapters[str(i)].output_scale for i in model.fusion_layers}
    assert set(before.values()) == {1.0}  # not measured yet: unit scale
    found = calibrate_output_scale(model, x)
    layers = [i % n for i in model.config.fusion_layers]
    rms = hidden_rms(model, x, sorted(set(layers)))
    assert found == {"audio": [rms[i] for i in layers]} and model.config.output_scale == found["audio"]
    for i in layers:  # the base's own hidden states, measured by hand
        assert model.adapters[str(i)].output_scale == pytest.approx(rms[i]) and rms[i] > 0
    with torch.no_grad():
        # gate open on half the rows: the closed rows are the base's, bit-exact, whatever the scale
        out = model(**x, audio_features=audio, audio_mask=MIXED).logits
        base = ref(**x).logits
        assert torch.equal(out[~MIXED], base[~MIXED])
        assert not torch.allclose(out[MIXED], base[MIXED])
    model.save_pretrained(tmp_path / "ckpt")
    fresh, _, _ = build(gate_init=0.3, seed=0)
    loaded = SAFEModel.from_pretrained(tmp_path / "ckpt", fresh.base_model, enc)
    assert [loaded.adapters[str(i)].output_scale for i in layers] == found["audio"]
    with torch.no_grad():
        assert torch.equal(loaded(**x, audio_features=audio, audio_mask=MIXED).logits, out)


def test_nothing_to_calibrate_leaves_the_model_as_it_was():
    model, _, enc = build()
    x, _ = inputs(model, enc)
    assert calibrate_output_scale(model, x) == {} and model.config.output_scale == 1.0
