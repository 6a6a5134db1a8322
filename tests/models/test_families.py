"""Every supported VLM family (tiny random configs of the real classes, prompts from their own
processors): closed rows bit-exact (torch.equal) to the unwrapped base in forward, greedy generate
with cache and beam search with num_return_sequences, in fp32 and bf16; open rows change; only SAFE
parameters get gradients; the policy's image embedding comes from the model's own image path.

CI runs one representative set (LLaVA-NeXT: tiling; Qwen2-VL: dynamic resolution with M-RoPE);
``-m slow`` runs every family."""
import copy
import functools

import numpy as np
import pytest
import torch
from PIL import Image

from safe import SAFEConfig, SAFEModel
from safe.bench import presets as P
from safe.bench.families import FAMILIES, family_inputs, tiny_family, tiny_processor

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models (tests/conftest.py)


REPRESENTATIVE = ("llava-next", "qwen2-vl")
PARAMS = [pytest.param(k, marks=() if k in REPRESENTATIVE else pytest.mark.slow) for k in FAMILIES]
MIXED = torch.tensor([True, False, True, False])
QUESTIONS = ["what colour ?", "which shape is left ?", "how many ?", "is there a dog ?"]


def _images():
    rng = np.random.default_rng(0)  # two sizes, so tiling / dynamic-resolution rows differ in image tokens
    sizes = [(32, 32), (48, 64), (64, 32), (32, 32)]
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


@functools.lru_cache(maxsize=2)
def _built(kind: str, dtype: torch.dtype):
    """(SAFE model, an untouched deep copy of the base, inputs, audio) shared by the tests of one family."""
    base = tiny_family(kind).to(dtype)
    ref = copy.deepcopy(base).requires_grad_(False)
    enc = P.tiny_audio_encoder("whisper").to(dtype)
    layers = [0, -1] if kind != "mllama" else [0, -1]  # Mllama's cross-attention layer is 1
    model = SAFEModel(base, enc, SAFEConfig(fusion_layers=layers, num_audio_tokens=4, lora_rank=4))
    model.set_gates(0.5)
    x = family_inputs(kind, base, QUESTIONS, _images(), tiny_processor(kind))
    x = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in x.items()}
    audio = P.random_audio(enc, 4, seed=1, dtype=dtype)
    return model, ref, x, audio


def _run(m, mode, x, **audio):
    with torch.no_grad():
        if mode == "forward":
            return m(**x, **audio).logits
        kw = dict(max_new_tokens=3, min_new_tokens=3, do_sample=False, use_cache=True)
        if mode == "beams":
            kw.update(num_beams=2, num_return_sequences=2)
        return m.generate(**x, **kw, **audio)


def _rows(out, mode):
    return out.view(4, 2 if mode == "beams" else 1, *out.shape[1:])


@pytest.mark.parametrize("mode", ["forward", "greedy", "beams"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("kind", PARAMS)
def test_closed_rows_bit_exact(kind, dtype, mode):
    model, ref, x, audio = _built(kind, dtype)
    expected = _run(ref, mode, x)
    got = _run(model, mode, x, audio_features=audio, audio_mask=MIXED)
    assert got.shape == expected.shape
    assert torch.equal(_rows(got, mode)[~MIXED], _rows(expected, mode)[~MIXED])
    if mode == "forward":  # the open rows really are fused
        assert (got[MIXED].float() - expected[MIXED].float()).abs().max() > 1e-3


@pytest.mark.parametrize("kind", PARAMS)
def test_only_safe_parameters_get_gradients(kind):
    model, _, x, audio = _built(kind, torch.float32)
    model.zero_grad(set_to_none=True)
    model(**x, audio_features=audio, audio_mask=MIXED).logits[MIXED].float().pow(2).mean().backward()
    own = {id(p) for p in model.trainable_parameters()}
    assert own and all(p.grad is not None for p in model.trainable_parameters() if p.requires_grad)
    assert all(p.grad is None for p in model.base_model.parameters())
    assert all(p.grad is None for p in model.audio_encoder.parameters())
    assert all(id(p) in own for p in model.parameters() if p.grad is not None)
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("kind", PARAMS)
def test_image_embedding_from_the_models_own_image_path(kind):
    from safe.policy.features import capture_image_embedding, probe_image

    model, _, x, _ = _built(kind, torch.float32)
    bb = model.backbone
    probe = probe_image(model.base_model, bb, x)
    assert probe.embedding.shape == (4, model.hidden_size) and torch.isfinite(probe.embedding).all()
    assert not torch.equal(probe.embedding[0], probe.embedding[1])  # different images, different embeddings
    with torch.no_grad(), capture_image_embedding(bb) as seen:
        model.base_model(**x)
    assert torch.equal(seen["image"].cpu(), probe.embedding)  # the probe equals the full prefill's value
    if bb.image_embedding == "placeholders":  # the mean of get_image_features' output for a one-image row
        ids = x["input_ids"]
        with torch.no_grad():
            emb = model.base_model.get_input_embeddings()(ids)
        assert (ids == bb.image_token_id).sum(1).gt(0).all()
        assert not torch.allclose(probe.embedding[0], emb[0, ids[0] == bb.image_token_id].float().mean(0))


def test_mllama_cross_attention_layer_is_refused():
    base = tiny_family("mllama")
    with pytest.raises(ValueError, match=r"decoder layer 1, a cross-attention layer"):
        SAFEModel(base, P.tiny_audio_encoder("whisper"), SAFEConfig(fusion_layers=[1]))
    SAFEModel(base, P.tiny_audio_encoder("whisper"), SAFEConfig(fusion_layers=[0, 2])).remove_hooks()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_closed_rows_bit_exact_under_each_attention_implementation(attn):
    base = tiny_family("llava-next", attn_implementation=attn)
    assert base.config.text_config._attn_implementation == attn
    ref = copy.deepcopy(base)
    model = SAFEModel(base, P.tiny_audio_encoder("whisper"), SAFEConfig(fusion_layers=[0, -1], num_audio_tokens=4))
    model.set_gates(0.5)
    x = family_inputs("llava-next", base, QUESTIONS, _images())
    audio = P.random_audio(model.audio_encoder.model, 4, seed=1)
    for mode in ("forward", "greedy"):
        got, expected = _run(model, mode, x, audio_features=audio, audio_mask=MIXED), _run(ref, mode, x)
        assert torch.equal(_rows(got, mode)[~MIXED], _rows(expected, mode)[~MIXED])


TILING = ("llava-next", "llava-onevision", "qwen2-vl", "qwen2.5-vl", "qwen3-vl", "idefics3", "smolvlm", "mistral3")


@pytest.mark.parametrize("kind", [p for p in PARAMS if p.values[0] in TILING])
def test_images_of_different_sizes_get_different_token_counts_in_one_batch(kind):
    model, _, x, _ = _built(kind, torch.float32)
    counts = (x["input_ids"] == model.backbone.image_token_id).sum(1).tolist()
    assert counts[0] == counts[3] and len(set(counts)) > 1, counts  # rows 0 and 3 share a size; 1 and 2 differ


@pytest.mark.parametrize("bias", [-10.0, 10.0], ids=["skip", "use"])
@pytest.mark.parametrize("kind", PARAMS)
def test_early_policy_generate_passes_the_family_inputs(kind, bias):
    """The policy's early path (probe the image, decide, one generate) with every input the processor made
    (image_sizes, image_grid_thw + mm_token_type_ids, masks ...): skipped rows are the base's own tokens,
    chosen rows are those of generate with audio on them."""
    from safe.policy.features import StateSpec
    from safe.policy.network import GateMLP
    from safe.policy.runtime import AudioPolicy

    model, ref, x, audio = _built(kind, torch.float32)
    h = model.hidden_size
    gate = GateMLP(StateSpec(h, h, confidence_dim=0).dim, 4)
    with torch.no_grad():
        gate.net[2].bias.fill_(bias)
    model.attach_policy(AudioPolicy(StateSpec(h, h, confidence_dim=0), "mlp", 4, net=gate))
    try:
        kw = dict(max_new_tokens=3, min_new_tokens=3, do_sample=False, use_cache=True)  # as _run's greedy
        out = model.generate(**x, **kw, audio_features=audio, audio_preview=torch.zeros(4, 34))
        assert out.used_audio.tolist() == [bias > 0] * 4
        want = (_run(model, "greedy", x, audio_features=audio, audio_mask=torch.ones(4, dtype=torch.bool))
                if bias > 0 else _run(ref, "greedy", x))
        assert torch.equal(out.sequences, want)
    finally:
        model.attach_policy(None)
