"""Several named modalities on one frozen base: rows using none are the base, a row using one modality
is exactly what the single-modality model gives, and each encoder runs only on its own rows."""
import copy

import pytest
import torch

from safe import SAFEConfig, SAFEModel
from safe.bench import presets as P
from safe.bench.vision import random_pixels, tiny_vision_encoder
from tests.models.bypass_modes import rows, run
from tests.models.helpers import build, inputs

AUDIO = torch.tensor([True, False, True, False])
DEPTH = torch.tensor([True, True, False, False])
ONLY_AUDIO, ONLY_DEPTH, BOTH, NONE = ~DEPTH & AUDIO, DEPTH & ~AUDIO, DEPTH & AUDIO, ~DEPTH & ~AUDIO
DEPTH_CFG = SAFEConfig(fusion_layers=[-1, 0], num_audio_tokens=3, lora_rank=4)


def perturb(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g).to(p.dtype) * 0.1)


def two_modalities(base_kind="llava", dtype=torch.float32):
    """(audio-only outputs per mode, the model after adding depth, base reference, inputs)."""
    model, ref, enc = build(base_kind, "whisper", dtype)
    x, audio = inputs(model, enc, dtype=dtype)
    model.set_gates(0.5)
    depth_enc = tiny_vision_encoder("vit").to(dtype)
    depth = random_pixels(depth_enc, 4, seed=3, dtype=dtype)
    return model, ref, x, audio, depth_enc, depth


@pytest.mark.parametrize("mode", ["forward", "greedy", "beams", "num_return_sequences"])
@pytest.mark.parametrize("base_kind", ["llava", "blip2-opt", "blip2-t5"])
def test_rows_of_each_modality_are_what_the_single_modality_model_gives(base_kind, mode):
    model, ref, x, audio, depth_enc, depth = two_modalities(base_kind)
    audio_only = run(model, mode, x, audio_features=audio, audio_mask=AUDIO)
    base = run(ref, mode, x)
    branch = model.add_modality("depth", depth_enc, DEPTH_CFG)
    perturb(branch, 7)
    model.set_gates(0.6, "depth")
    got = run(model, mode, x, audio_features=audio, audio_mask=AUDIO, depth_features=depth, depth_mask=DEPTH)
    r = lambda out: rows(out, AUDIO, mode)  # noqa: E731
    assert torch.equal(r(got)[NONE], r(base)[NONE])                # a row using no modality is the base
    assert torch.equal(r(got)[ONLY_AUDIO], r(audio_only)[ONLY_AUDIO])  # adding depth did not move audio rows
    if mode == "forward":  # the depth rows really are fused (so the two checks above can fail)
        assert (got[ONLY_DEPTH] - base[ONLY_DEPTH]).abs().max() > 1e-4
        assert (got[BOTH] - audio_only[BOTH]).abs().max() > 1e-4


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_depth_rows_equal_a_depth_only_model_loaded_from_its_own_checkpoint(tmp_path, dtype):
    base = P.tiny_base("llava", seed=0).to(dtype)
    depth_enc = tiny_vision_encoder("convnext").to(dtype)
    depth_only = SAFEModel(copy.deepcopy(base), depth_enc, DEPTH_CFG, modality="depth")
    perturb(depth_only, 5)
    depth_only.save_pretrained(tmp_path / "depth")
    model, ref, enc = build("llava", "whisper", dtype)
    x, audio = inputs(model, enc, dtype=dtype)
    model.set_gates(0.5)
    model.load_modality("depth", tmp_path / "depth", tiny_vision_encoder("convnext").to(dtype))
    depth = random_pixels(depth_enc, 4, seed=3, dtype=dtype)
    with torch.no_grad():
        got = model(**x, audio_features=audio, audio_mask=AUDIO, depth_features=depth, depth_mask=DEPTH).logits
        want = depth_only(**x, depth_features=depth, depth_mask=DEPTH).logits
        also = depth_only(**x, audio_features=depth, audio_mask=DEPTH).logits  # audio_* name the primary modality
    assert torch.equal(got[ONLY_DEPTH], want[ONLY_DEPTH]) and torch.equal(want, also)
    assert not torch.equal(got[ONLY_DEPTH], ref(**x).logits[ONLY_DEPTH])


def test_each_encoder_runs_only_on_its_rows():
    model, ref, x, audio, depth_enc, depth = two_modalities()
    model.add_modality("depth", depth_enc, DEPTH_CFG)
    model.set_gates(0.5, "all")
    batches = {"audio": [], "depth": []}
    model.modality("audio").encoder.model.register_forward_pre_hook(
        lambda m, a, k: batches["audio"].append(a[0].shape[0] if a else next(iter(k.values())).shape[0]),
        with_kwargs=True)
    depth_enc.register_forward_pre_hook(
        lambda m, a, k: batches["depth"].append(k["pixel_values"].shape[0] if "pixel_values" in k else a[0].shape[0]),
        with_kwargs=True)
    with torch.no_grad():
        model(**x, audio_features=audio, audio_mask=AUDIO, depth_features=depth, depth_mask=DEPTH)
        assert batches == {"audio": [2], "depth": [2]}
        model(**x, audio_features=audio, audio_mask=AUDIO, depth_features=depth, depth_mask=torch.zeros(4, dtype=torch.bool))
        model(**x, audio_features=audio, audio_mask=AUDIO)
        assert batches == {"audio": [2, 2, 2], "depth": [2]}  # no depth row: the depth encoder never ran
        with model.audio_disabled():
            assert torch.equal(model(**x, audio_features=audio, depth_features=depth).logits, ref(**x).logits)
    assert batches == {"audio": [2, 2, 2], "depth": [2]}
    assert model.encoder_calls() == {"audio": 6, "depth": 2}


def test_two_modality_checkpoint_round_trip_and_refusals(tmp_path):
    model, _, x, audio, depth_enc, depth = two_modalities()
    perturb(model.add_modality("depth", depth_enc, DEPTH_CFG), 9)
    model.set_gates(0.5, "all")
    with torch.no_grad():
        want = model(**x, audio_features=audio, audio_mask=AUDIO, depth_features=depth, depth_mask=DEPTH).logits
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"added modalities \['depth'\]; pass their encoders"):
        SAFEModel.from_pretrained(tmp_path, P.tiny_base("llava"), P.tiny_audio_encoder("whisper"))
    with pytest.raises(ValueError, match="modality 'depth' was made for encoder"):
        SAFEModel.from_pretrained(tmp_path, P.tiny_base("llava"), P.tiny_audio_encoder("whisper"),
                                  encoders={"depth": tiny_vision_encoder("siglip")})
    loaded = SAFEModel.from_pretrained(tmp_path, P.tiny_base("llava"), P.tiny_audio_encoder("whisper"),
                                       encoders={"depth": tiny_vision_encoder("vit")})
    with torch.no_grad():
        got = loaded(**x, audio_features=audio, audio_mask=AUDIO, depth_features=depth, depth_mask=DEPTH).logits
    assert torch.equal(got, want)
    assert set(loaded.parameter_report()) >= {"audio_encoder", "depth_encoder", "depth_projector", "depth_adapters"}


OLD_CODE_ATOL = 1e-5
"""How far the logits may be from those the single-modality code stored. Not zero: bit-exactness holds within
one process (the bypass), not across MKL code paths or CPUs; ``MKL_CBWR`` alone moves these logits by up to
1.6e-7 (measured on the fixture: ``safe.cli`` sets it at import, so a run that imports the CLI first computes
them on another path). A changed weight, config default or adapter formula moves them by far more."""


def test_audio_only_checkpoint_saved_before_modalities_loads_unchanged():
    """tests/models/data/audio_only_v1: saved by the single-modality SAFEModel (tiny LLaVA seed 0, Whisper
    seed 0), with the logits it gave on P.random_vl_inputs(seed 0) + P.random_audio(seed 1), gates 0.5.
    Bit-exact where bit-exactness is a property of the code (every saved tensor lands unchanged; gate-closed
    rows are the base's, same process); against the old code's stored logits, to OLD_CODE_ATOL."""
    import json
    from pathlib import Path

    from safetensors.torch import load_file

    folder = Path(__file__).parent / "data" / "audio_only_v1"
    enc = P.tiny_audio_encoder("whisper", seed=0)
    model = SAFEModel.from_pretrained(folder, P.tiny_base("llava", seed=0), enc)
    assert model.modality_names == ["audio"]
    saved_cfg, cfg = json.loads((folder / "safe_config.json").read_text())["config"], model.config.to_dict()
    assert {k: cfg[k] for k in saved_cfg} == saved_cfg  # (fields added since take their defaults)
    saved = load_file(str(folder / "safe_weights.safetensors"))
    loaded = {f"{name}.{k}": v for name, m in model.safe_modules().items() for k, v in m.state_dict().items()}
    assert sorted(loaded) == sorted(saved)
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)
    model.set_gates(0.5)
    x, audio = P.random_vl_inputs(model.base_model, 4, seed=0), P.random_audio(enc, 4, seed=1)
    with torch.no_grad():
        got = model(**x, audio_features=audio, audio_mask=AUDIO).logits
        base = P.tiny_base("llava", seed=0)(**x).logits
    assert torch.equal(got[~AUDIO], base[~AUDIO])  # gate-closed rows: the base's, bit for bit
    want = load_file(str(folder / "expected_logits.safetensors"))["logits"]
    torch.testing.assert_close(got, want, rtol=0, atol=OLD_CODE_ATOL)
    # the audio rows' tolerance is meaningful: the adapters move them far beyond it
    assert (want[AUDIO] - base[AUDIO]).abs().max() > 100 * OLD_CODE_ATOL


def test_modality_inputs_are_checked_by_name():
    model, _, x, audio, depth_enc, depth = two_modalities()
    with pytest.raises(ValueError, match="depth_features: this SAFE model has no such modality"):
        model(**x, depth_features=depth)
    model.add_modality("depth", depth_enc)
    with pytest.raises(ValueError, match="already exists"):
        model.add_modality("depth", depth_enc)
    with pytest.raises(ValueError, match="lower-case identifier"):
        model.add_modality("Depth map", depth_enc)
    with pytest.raises(ValueError, match=r"depth_mask must be a bool tensor of shape \(4,\)"):
        model(**x, depth_features=depth, depth_mask=torch.tensor([1, 0, 1, 0]))
    with pytest.raises(ValueError, match="depth_mask marks rows as using depth but no depth_features"):
        model(**x, depth_mask=DEPTH)
    with pytest.raises(ValueError, match="unsupported thermal encoder LlamaForCausalLM"):
        import transformers as tf
        model.add_modality("thermal", tf.LlamaForCausalLM(tf.LlamaConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=50)))


def test_a_new_modality_starts_closed_and_changes_nothing():
    model, ref, x, audio, depth_enc, depth = two_modalities()
    with torch.no_grad():
        before = model(**x, audio_features=audio, audio_mask=AUDIO).logits
        model.add_modality("depth", depth_enc)
        after = model(**x, audio_features=audio, audio_mask=AUDIO, depth_features=depth).logits
    assert torch.equal(before, after)


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    """The README's first Python block (audio) and its modality block run as written."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    audio = next(b for b in blocks if "SAFEModel(base, encoder" in b)
    modality = next(b for b in blocks if "add_modality" in b)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(audio.replace("    ...\n", "    pass\n"), "README-audio", "exec"), scope)
    exec(compile(modality, "README-modality", "exec"), scope)
    assert scope["out"].logits.shape[0] == 4 and scope["model"].modality_names == ["audio", "depth"]


def test_verify_modalities_passes_and_catches_a_leak():
    from safe.evaluation.safety import verify_modalities

    model, _, x, audio, depth_enc, depth = two_modalities()
    model.add_modality("depth", depth_enc, DEPTH_CFG)
    result = verify_modalities(model, x, {"audio": (audio, AUDIO), "depth": (depth, DEPTH)})
    assert result.passed, result.table()
    assert len(result.checks) == 6 and all(torch.equal(g, torch.tensor(0.5)) for g in model.gates().values())
    assert all(float(g.detach()) == 0.0 for g in model.gates("depth").values())  # gates restored
    # a broken injection that runs the depth adapter on every row must fail the per-modality checks
    depth_ctx = model._injector.audio

    def leaky(ctx, modality="audio"):
        if ctx is not None and modality == "depth":
            n = ctx.batch_size
            ctx = type(ctx)(ctx.tokens[:1].expand(n, *ctx.tokens.shape[1:]), torch.arange(n), n)
        return depth_ctx(ctx, modality)

    model._injector.audio = leaky
    failed = {c.name for c in verify_modalities(model, x, {"audio": (audio, AUDIO), "depth": (depth, DEPTH)}).checks
              if not c.passed}
    assert {"rows using no modality: forward bit-exact", "rows using audio alone: as with audio only"} <= failed
