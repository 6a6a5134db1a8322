"""Guards around named modalities: names that would collide with the base's inputs or the module's own
attributes, malformed checkpoint configs, contexts that survive adding / removing a modality, and a gate
written through ``.data``."""
import json

import pytest
import torch

from safe import SAFEConfig, SAFEModel
from safe.adapters.gate import TanhGate
from safe.bench import presets as P
from safe.bench.vision import random_pixels, tiny_vision_encoder
from safe.models.checkpoint import CONFIG_NAME, CheckpointError
from tests.models.helpers import build, inputs

CFG = SAFEConfig(fusion_layers=[-1, 0], num_audio_tokens=3, lora_rank=4)
MASK = torch.tensor([True, False, True, False])


@pytest.fixture(scope="module")
def depth_primary():
    return SAFEModel(P.tiny_base("llava", seed=0), tiny_vision_encoder("vit"), CFG, modality="depth")


def test_an_added_modality_cannot_be_named_audio(depth_primary):
    # audio_features / audio_mask / audio_context address the primary modality: an added "audio" would be
    # unreachable and its inputs would silently go to the depth encoder
    with pytest.raises(ValueError, match="'audio' is reserved for the primary modality .*'depth'"):
        depth_primary.add_modality("audio", P.tiny_audio_encoder("whisper"), CFG)
    assert depth_primary.modality_names == ["depth"]


@pytest.mark.parametrize("name", ["input", "image", "pixel", "inputs", "attention", "train", "to", "keys",
                                  "Depth", "de__pth", "2d", ""])
def test_colliding_or_malformed_modality_names_are_refused_naming_the_rule(depth_primary, name):
    with pytest.raises(ValueError, match=r"invalid modality name .*lower-case identifier .*torch.nn.Module .*"
                                         r"prefix of a base-model input"):
        depth_primary.add_modality(name, tiny_vision_encoder("vit"), CFG)
    assert depth_primary.modality_names == ["depth"]


def test_a_name_whose_inputs_the_base_takes_is_refused():
    from safe.models.modality import check_modality_name

    # e.g. a base whose forward takes speaker_embeddings: a modality "speaker" would swallow them
    with pytest.raises(ValueError, match="invalid modality name 'speaker'.*prefix of a base-model input"):
        check_modality_name("speaker", {"input_ids", "speaker_embeddings"})
    assert check_modality_name("speaker", {"input_ids"}) == "speaker"


def test_the_primary_modality_name_follows_the_same_rule():
    with pytest.raises(ValueError, match="invalid modality name 'pixel'"):
        SAFEModel(P.tiny_base("llava", seed=0), tiny_vision_encoder("vit"), CFG, modality="pixel")


@pytest.fixture(scope="module")
def two_modality_checkpoint(tmp_path_factory):
    model, _, _ = build("llava", "whisper")
    model.add_modality("depth", tiny_vision_encoder("vit"), CFG)
    return model.save_pretrained(tmp_path_factory.mktemp("ck"))


@pytest.mark.parametrize("edit, complaint", [
    (lambda m: m.__setitem__("modalities", ["depth"]), r"'modalities' must be an object .* got list"),
    (lambda m: m["modalities"]["depth"].pop("signature"), r"'modalities.depth' lacks 'signature'"),
    (lambda m: m["modalities"]["depth"].pop("config"), r"'modalities.depth' lacks 'config'"),
    (lambda m: m["modalities"].__setitem__("depth", "vit"), r"'modalities.depth' must be an object"),
    (lambda m: m["modalities"]["depth"]["signature"].pop("dim"), r"'modalities.depth'.signature lacks 'dim'"),
    (lambda m: m.__setitem__("modality", 3), r"'modality' must be the primary modality's name"),
], ids=["list", "no-signature", "no-config", "not-object", "no-dim", "modality-int"])
def test_a_malformed_modalities_block_is_a_checkpoint_error_naming_the_key(two_modality_checkpoint, tmp_path,
                                                                         edit, complaint):
    meta = json.loads((two_modality_checkpoint / CONFIG_NAME).read_text())
    edit(meta)
    for f in two_modality_checkpoint.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    (tmp_path / CONFIG_NAME).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=rf"safe_config.json: {complaint}"):
        SAFEModel.from_pretrained(tmp_path, P.tiny_base("llava", seed=0), P.tiny_audio_encoder("whisper", seed=0),
                                  encoders={"depth": tiny_vision_encoder("vit")})
    base = P.tiny_base("llava", seed=0)
    with pytest.raises(CheckpointError, match="safe_config.json"):
        SAFEModel(base, P.tiny_audio_encoder("whisper", seed=0), CFG).load_modality(
            "thermal", tmp_path, tiny_vision_encoder("vit"))


def test_active_contexts_and_disabled_survive_adding_and_removing_a_modality():
    model, ref, enc = build("llava", "whisper")
    x, audio = inputs(model, enc)
    model.set_gates(0.5)
    with torch.no_grad():
        want, base = model(**x, audio_features=audio, audio_mask=MASK).logits, ref(**x).logits
        with model.audio_context(audio, MASK):
            model.add_modality("thermal", tiny_vision_encoder("vit"), CFG)
            assert torch.equal(model.base_model(**x).logits, want)  # audio still fused after the add
            model.remove_modality("thermal")
            assert torch.equal(model.base_model(**x).logits, want)  # ... and after the remove
        with model.audio_disabled():
            model.add_modality("thermal", tiny_vision_encoder("vit"), CFG)
            model.set_gates(0.5, "all")
            thermal = random_pixels(model.modality("thermal").encoder.model, 4, seed=3)
            got = model(**x, audio_features=audio, thermal_features=thermal).logits
            assert torch.equal(got, base)  # still disabled: the whole model is the base
        assert not torch.equal(model(**x, audio_features=audio, audio_mask=MASK).logits, base)


def test_gate_is_zero_sees_writes_through_data_both_ways():
    g = TanhGate(0.0)
    assert g.is_zero
    g.value.data.fill_(0.5)  # bumps no version counter
    assert not g.is_zero
    g = TanhGate(0.5)
    assert not g.is_zero
    g.value.data.zero_()
    assert g.is_zero


def test_a_zero_gate_is_the_base_even_when_is_zero_cannot_tell(monkeypatch):
    """On an accelerator a write through ``.data`` is invisible to ``is_zero`` (reading it would cost a
    synchronisation per layer): the fused rows must still be the base, NaN-producing audio included."""
    model, ref, enc = build("llava", "whisper")
    x, audio = inputs(model, enc, overflow=True)
    model.set_gates(0.7)
    for g in model.gates().values():
        g.data.zero_()
    monkeypatch.setattr(TanhGate, "is_zero", property(lambda self: False))  # as a stale cache would say
    with torch.no_grad():
        assert torch.equal(model(**x, audio_features=audio).logits, ref(**x).logits)
