"""The adapter module itself: what the dense block adds, and that the gate still switches it all off."""
import pytest
import torch

from safe.adapters.cross_attention import GatedCrossAttention


def _adapter(ffn_rank):
    torch.manual_seed(0)
    a = GatedCrossAttention(16, rank=4, num_heads=2, null_key=False, gate_init=0.5, ffn_rank=ffn_rank)
    return a.eval()


def test_attention_alone_adds_the_same_vector_at_every_position():
    """With one audio token and no null key the softmax has one entry, so cross-attention returns the
    same value at every position whatever the hidden state: it cannot say different words in turn.
    The dense block reads the current hidden state and can."""
    hidden = torch.randn(2, 5, 16)
    audio = torch.randn(2, 1, 16)
    with torch.no_grad():
        plain = _adapter(0)(hidden, audio)
        dense = _adapter(3)(hidden, audio)
    assert torch.equal(plain, plain[:, :1].expand_as(plain))
    spread = (dense - dense[:, :1]).abs().amax(dim=(0, 2))
    assert bool((spread[1:] > 1e-3).all())


def test_dense_block_is_under_the_gate():
    a = _adapter(3)
    hidden, audio = torch.randn(2, 5, 16), torch.randn(2, 3, 16)
    with torch.no_grad():
        a.gate.value.fill_(0.0)
        assert torch.equal(a(hidden, audio), torch.zeros_like(hidden))
        a.gate.value.fill_(0.5)
        assert a(hidden, audio).abs().max() > 1e-3


def test_bad_ffn_rank_is_named():
    with pytest.raises(ValueError, match="ffn_rank must be an integer >= 0"):
        GatedCrossAttention(16, ffn_rank=-2)
