"""The contract: rows whose gate is closed are bit-exact (torch.equal) to the unwrapped base."""
import pytest
import torch

from tests.models.bypass_modes import rows, run
from tests.models.helpers import MIXED, build, inputs

BASES = ["llava", "blip2-opt", "blip2-t5"]
ENCODERS = ["whisper", "clap"]
DTYPES = [torch.float32, torch.bfloat16]
MODES = ["forward", "greedy", "sample", "beams", "num_return_sequences"]


@pytest.mark.parametrize("overflow", [False, True], ids=["audio", "overflow"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("audio_kind", ENCODERS)
@pytest.mark.parametrize("base_kind", BASES)
def test_closed_rows_bit_exact(base_kind, audio_kind, dtype, mode, overflow):
    if overflow and mode == "sample":
        pytest.skip("sampling from NaN probabilities raises in torch.multinomial, for the base model too")
    model, ref, enc = build(base_kind, audio_kind, dtype)
    x, audio = inputs(model, enc, dtype=dtype, overflow=overflow)
    model.set_gates(0.5)  # open gates: the audio rows really are fused
    expected = run(ref, mode, x)
    got = run(model, mode, x, audio_features=audio, audio_mask=MIXED)
    assert got.shape == expected.shape
    closed = ~MIXED
    assert torch.equal(rows(got, MIXED, mode)[closed], rows(expected, MIXED, mode)[closed])
    if overflow:  # the overflowing audio did reach the open rows (so the test can fail)
        assert not torch.isfinite(model(**x, audio_features=audio, audio_mask=MIXED).logits[MIXED]).all()


@pytest.mark.parametrize("mode", ["forward", "greedy", "beams"])
@pytest.mark.parametrize("base_kind", BASES)
def test_closed_rows_bit_exact_with_dense_block(base_kind, mode):
    model, ref, enc = build(base_kind, "whisper", ffn_rank=6)
    x, audio = inputs(model, enc)
    model.set_gates(0.5)
    got = run(model, mode, x, audio_features=audio, audio_mask=MIXED)
    expected = run(ref, mode, x)
    assert torch.equal(rows(got, MIXED, mode)[~MIXED], rows(expected, MIXED, mode)[~MIXED])
    if mode == "forward":
        assert (got[MIXED] - expected[MIXED]).abs().max() > 1e-4
    model.set_gates(0.0)
    assert torch.equal(run(model, mode, x, audio_features=audio), expected)


@pytest.mark.parametrize("audio_kind", ENCODERS)
@pytest.mark.parametrize("base_kind", BASES)
def test_open_gate_changes_audio_rows(base_kind, audio_kind):
    model, ref, enc = build(base_kind, audio_kind)
    x, audio = inputs(model, enc)
    model.set_gates(0.5)
    got, expected = run(model, "forward", x, audio_features=audio, audio_mask=MIXED), run(ref, "forward", x)
    assert not torch.equal(got[MIXED], expected[MIXED])
    assert (got[MIXED] - expected[MIXED]).abs().max() > 1e-4


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("base_kind", BASES)
def test_gate_moved_away_and_back_is_base_for_every_row(base_kind, dtype):
    model, ref, enc = build(base_kind, "whisper", dtype)
    x, audio = inputs(model, enc, dtype=dtype, overflow=True)
    model.set_gates(0.7)
    moved = run(model, "forward", x, audio_features=audio)
    assert not torch.equal(moved, run(ref, "forward", x))
    model.set_gates(0.0)
    for mode in ("forward", "greedy", "beams"):
        # gate exactly 0 and no gradient: the adapter is skipped, not multiplied by 0 (NaN audio stays out)
        assert torch.equal(run(model, mode, x, audio_features=audio), run(ref, mode, x))


@pytest.mark.parametrize("base_kind", BASES)
def test_no_audio_and_disabled_are_base_and_skip_the_encoder(base_kind):
    model, ref, enc = build(base_kind, "clap")
    x, audio = inputs(model, enc)
    model.set_gates(0.5)
    expected = run(ref, "forward", x)
    assert torch.equal(run(model, "forward", x), expected)
    assert torch.equal(run(model, "forward", x, audio_features=audio, audio_mask=torch.zeros(4, dtype=torch.bool)), expected)
    with model.audio_disabled():
        assert torch.equal(run(model, "forward", x, audio_features=audio), expected)
        assert torch.equal(run(model, "greedy", x, audio_features=audio), run(ref, "greedy", x))
    assert model.audio_encoder_calls == 0
    run(model, "forward", x, audio_features=audio, audio_mask=MIXED)
    assert model.audio_encoder_calls == int(MIXED.sum())  # only the rows that use audio are encoded


def test_audio_disabled_restores_on_exception():
    model, ref, enc = build()
    x, audio = inputs(model, enc)
    model.set_gates(0.5)
    with pytest.raises(RuntimeError):
        with model.audio_disabled():
            raise RuntimeError("boom")
    assert not torch.equal(run(model, "forward", x, audio_features=audio)[MIXED], run(ref, "forward", x)[MIXED])


def test_context_cleared_when_base_raises():
    model, _, enc = build()
    x, audio = inputs(model, enc)
    bad = dict(x, pixel_values=x["pixel_values"][:, :, :8])  # wrong image size: the base raises
    with pytest.raises(Exception):  # noqa: B017 - whatever the base raises; the test is about the cleanup
        model(**bad, audio_features=audio)
    assert model._injector.context is None  # no stale audio left behind for the next call


def test_wrapping_keeps_base_state_dict_keys():
    from safe.bench import presets as P

    base = P.tiny_base("llava")
    keys = list(base.state_dict())
    build_model = __import__("safe").SAFEModel(base, P.tiny_audio_encoder("whisper"))
    assert list(build_model.base_model.state_dict()) == keys


@pytest.mark.gpu
@pytest.mark.parametrize("base_kind", BASES)
def test_closed_rows_bit_exact_bf16_cuda(base_kind):
    model, ref, enc = build(base_kind, "whisper", torch.bfloat16)
    model.cuda(), ref.cuda()
    x, audio = inputs(model, enc, dtype=torch.bfloat16, overflow=True)
    x = {k: v.cuda() for k, v in x.items()}
    model.set_gates(0.5)
    for mode in ("forward", "greedy", "beams"):
        got = run(model, mode, x, audio_features=audio.cuda(), audio_mask=MIXED.cuda())
        assert torch.equal(got[~MIXED.cuda()], run(ref, mode, x)[~MIXED.cuda()])
