"""Frozen means frozen; the gates can learn from step 0; the PEFT-style four-step identity test."""
import pytest
import torch
import torch.nn.functional as F

from safe.models.integrity import state_hash
from tests.models.helpers import MIXED, build, inputs


def loss_on_audio_rows(model, x, audio):
    logits = model(**x, audio_features=audio, audio_mask=MIXED).logits[MIXED]
    target = torch.arange(logits.shape[-1])[None, None].expand(*logits.shape[:2], -1)[..., 7]  # token 7 everywhere
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1))


@pytest.mark.parametrize("base_kind,audio_kind", [("llava", "whisper"), ("blip2-opt", "clap"), ("blip2-t5", "whisper")])
def test_training_touches_only_safe_parameters(base_kind, audio_kind):
    model, _, enc = build(base_kind, audio_kind)
    x, audio = inputs(model, enc)
    base_hash, enc_hash = state_hash(model.base_model), state_hash(model.audio_encoder)
    assert all(not p.requires_grad for p in model.base_model.parameters())
    assert all(not p.requires_grad for p in model.audio_encoder.parameters())
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    model.train()
    for step in range(3):
        opt.zero_grad()
        loss_on_audio_rows(model, x, audio).backward()
        if step == 0:  # at g = 0 only the gates get a signal: tanh'(0) = 1, everything else is scaled by tanh(0)
            for g in model.gates().values():
                assert g.grad is not None and g.grad.abs() > 0
        assert all(p.grad is None for p in model.base_model.parameters())
        assert all(p.grad is None for p in model.audio_encoder.parameters())
        opt.step()
    assert state_hash(model.base_model) == base_hash
    assert state_hash(model.audio_encoder) == enc_hash
    assert all(g.detach() != 0 for g in model.gates().values())
    assert not model.base_model.training and not model.audio_encoder.training


@pytest.mark.parametrize("ffn_rank", [0, 6], ids=["xattn", "xattn+dense"])
def test_four_step_identity(ffn_rank):
    """init equals base; training changes audio rows; disabled equals base; re-enabled returns."""
    model, ref, enc = build(ffn_rank=ffn_rank)
    x, audio = inputs(model, enc)
    with torch.no_grad():
        base_out = ref(**x).logits
        assert torch.equal(model(**x, audio_features=audio).logits, base_out)  # 1. init: gates at 0
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=5e-2)
    for _ in range(5):
        opt.zero_grad()
        loss_on_audio_rows(model, x, audio).backward()
        opt.step()
    with torch.no_grad():
        trained = model(**x, audio_features=audio, audio_mask=MIXED).logits
        assert not torch.equal(trained[MIXED], base_out[MIXED])          # 2. training changed audio rows
        assert torch.equal(trained[~MIXED], base_out[~MIXED])            #    but never the closed rows
        with model.audio_disabled():
            assert torch.equal(model(**x, audio_features=audio).logits, base_out)  # 3. disabled is base
        assert torch.equal(model(**x, audio_features=audio, audio_mask=MIXED).logits, trained)  # 4. re-enabled


def test_parameter_report_counts():
    model, _, _ = build()
    rep = model.parameter_report()
    assert rep["base_vl"]["trainable"] == 0 and rep["audio_encoder"]["trainable"] == 0
    assert rep["base_vl"]["parameters"] == sum(p.numel() for p in model.base_model.parameters())
    safe_n = sum(p.numel() for p in model.trainable_parameters())
    assert rep["total"]["trainable"] == rep["projector"]["trainable"] + rep["adapters"]["trainable"] == safe_n
    assert rep["total"]["parameters"] == sum(p.numel() for p in model.parameters())
    table = rep.table()
    for part in ("base_vl", "audio_encoder", "projector", "adapters", "frozen", "trainable"):
        assert part in table


@pytest.mark.parametrize("ffn_rank,rank_maps", [(0, "query"), (6, "query"), (0, "all")],
                         ids=["xattn", "xattn+dense", "xattn, rank on every map"])
def test_adapter_state_dict_keys(ffn_rank, rank_maps):
    model, _, _ = build(fusion_layers=[1], ffn_rank=ffn_rank, rank_maps=rank_maps)
    keys = set(model.safe_state_dict())
    expected = {"projector.norm.weight", "projector.norm.bias", "projector.fc1.weight", "projector.fc1.bias",
                "projector.fc2.weight", "projector.fc2.bias"}
    # rank_maps="query": the keys of checkpoints saved before the choice existed; "all": k / v / o are
    # down (0, no bias) / up (1, with the bias) products of rank lora_rank
    maps = (("k_proj.weight", "k_proj.bias", "v_proj.weight", "v_proj.bias", "o_proj.weight", "o_proj.bias")
            if rank_maps == "query" else
            tuple(f"{m}.{p}" for m in ("k_proj", "v_proj", "o_proj") for p in ("0.weight", "1.weight", "1.bias")))
    for part in ("norm.weight", "norm.bias", "q_down.weight", "q_up.weight", *maps, "null_key", "gate.value"):
        expected.add(f"adapters.1.{part}")
    if ffn_rank:  # the dense block; without it the keys are those of checkpoints saved before it existed
        expected |= {f"adapters.1.{part}" for part in ("ffn_norm.weight", "ffn_norm.bias", "ffn_down.weight",
                                                         "ffn_down.bias", "ffn_up.weight")}
        assert model.safe_state_dict()["adapters.1.ffn_down.weight"].shape == (6, model.hidden_size)
    if rank_maps == "all":
        assert model.safe_state_dict()["adapters.1.k_proj.0.weight"].shape == (4, model.hidden_size)
    assert keys == expected
