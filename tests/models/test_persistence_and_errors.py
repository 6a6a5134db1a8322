import json

import pytest
import torch

from safe import SAFEConfig, SAFEModel
from safe.bench import presets as P
from safe.models.safe_model import CONFIG_NAME, WEIGHTS_NAME
from tests.models.helpers import MIXED, build, inputs


@pytest.mark.parametrize("rank_maps", ["query", "all"])
def test_save_load_round_trip_gives_identical_logits(tmp_path, rank_maps):
    model, _, enc = build("blip2-opt", "clap", rank_maps=rank_maps)
    x, audio = inputs(model, enc)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.1)
        want = model(**x, audio_features=audio, audio_mask=MIXED).logits
    model.save_pretrained(tmp_path)
    assert sorted(f.name for f in tmp_path.iterdir()) == sorted([CONFIG_NAME, WEIGHTS_NAME])
    loaded = SAFEModel.from_pretrained(tmp_path, P.tiny_base("blip2-opt"), P.tiny_audio_encoder("clap"))
    with torch.no_grad():
        assert torch.equal(loaded(**x, audio_features=audio, audio_mask=MIXED).logits, want)


def test_checkpoint_holds_no_base_weights(tmp_path):
    from safetensors.torch import load_file

    model, _, _ = build()
    model.save_pretrained(tmp_path)
    keys = set(load_file(str(tmp_path / WEIGHTS_NAME)))
    assert keys == set(model.safe_state_dict())
    assert not any(k.startswith(("base_model", "audio_encoder")) for k in keys)


def test_loading_onto_mismatched_base_fails_clearly(tmp_path):
    model, _, _ = build("llava", "whisper")
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="another base model.*architecture: checkpoint 'llava' vs given 'blip2-opt'"):
        SAFEModel.from_pretrained(tmp_path, P.tiny_base("blip2-opt"), P.tiny_audio_encoder("whisper"))
    meta = json.loads((tmp_path / CONFIG_NAME).read_text())
    meta["base_signature"]["hidden_size"] = 4096
    (tmp_path / CONFIG_NAME).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="hidden_size: checkpoint 4096 vs given 64"):
        SAFEModel.from_pretrained(tmp_path, P.tiny_base("llava"), P.tiny_audio_encoder("whisper"))


def test_missing_checkpoint_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=CONFIG_NAME):
        SAFEModel.from_pretrained(tmp_path, P.tiny_base("llava"), P.tiny_audio_encoder("whisper"))


def test_unsupported_base_and_encoder_name_the_supported_ones():
    import transformers as tf

    lm = tf.LlamaForCausalLM(tf.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                            num_attention_heads=2, vocab_size=50))
    with pytest.raises(ValueError, match="unsupported base model LlamaForCausalLM.*LlavaForConditionalGeneration.*Blip2"):
        SAFEModel(lm, P.tiny_audio_encoder("whisper"))
    with pytest.raises(ValueError, match="unsupported audio encoder LlamaForCausalLM.*Clap.*Whisper"):
        SAFEModel(P.tiny_base("llava"), lm)


def test_bad_config_and_inputs():
    with pytest.raises(ValueError, match="num_audio_tokens"):
        SAFEConfig(num_audio_tokens=0)
    with pytest.raises(ValueError, match="projector_mode"):
        SAFEConfig(projector_mode="attention")
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="ffn_rank must be an integer >= 0"):
            SAFEConfig(ffn_rank=bad)
    # a config saved before the dense block existed has no ffn_rank: it loads as "no dense block"
    old = {k: v for k, v in SAFEConfig(ffn_rank=8).to_dict().items() if k != "ffn_rank"}
    assert SAFEConfig.from_dict(old).ffn_rank == 0
    with pytest.raises(ValueError, match="out of range.*3 decoder layers"):
        SAFEModel(P.tiny_base("llava"), P.tiny_audio_encoder("whisper"), SAFEConfig(fusion_layers=[5]))
    model, _, enc = build()
    x, audio = inputs(model, enc)
    with pytest.raises(ValueError, match="audio_mask must be a bool tensor of shape"):
        model(**x, audio_features=audio, audio_mask=torch.tensor([1, 0, 1, 0]))
    with pytest.raises(ValueError, match="audio_features has 2 rows but the batch has 4"):
        model(**x, audio_features=audio[:2])
    with pytest.raises(ValueError, match="no audio_features"):
        model(**x, audio_mask=MIXED)


def test_pooled_projector_mode_runs():
    base, enc = P.tiny_base("llava"), P.tiny_audio_encoder("clap")
    model = SAFEModel(base, enc, SAFEConfig(projector_mode="pooled", num_audio_tokens=3))
    tokens = model.encode_audio(P.random_audio(enc, 2))
    assert tokens.shape == (2, 3, model.hidden_size)


def test_precomputed_audio_embeddings_match_features_and_skip_the_encoder():
    model, _, enc = build()
    x, audio = inputs(model, enc)
    model.set_gates(0.5)
    with torch.no_grad():
        want = model(**x, audio_features=audio, audio_mask=MIXED).logits
        emb = model.audio_encoder.encode(audio)
        calls = model.audio_encoder_calls
        got = model(**x, audio_embeddings=emb, audio_mask=MIXED).logits
    assert torch.equal(got, want) and model.audio_encoder_calls == calls
    with pytest.raises(ValueError, match="not both"):
        model(**x, audio_features=audio, audio_embeddings=emb)


def test_refused_load_leaves_no_hooks_on_the_base(tmp_path):
    model, _, _ = build("llava", "whisper")
    model.save_pretrained(tmp_path)
    other = P.tiny_base("blip2-opt")
    layers = other.language_model.model.decoder.layers
    before = [len(layer._forward_hooks) for layer in layers]
    with pytest.raises(ValueError, match="another base model"):
        SAFEModel.from_pretrained(tmp_path, other, P.tiny_audio_encoder("whisper"))
    assert [len(layer._forward_hooks) for layer in layers] == before
    model.remove_hooks()
    assert all(len(layer._forward_hooks) == 0 for layer in model.base_model.model.language_model.layers)
