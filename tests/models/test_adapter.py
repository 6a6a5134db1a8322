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


def _effective(m: torch.nn.Module) -> torch.Tensor:
    """The weight matrix of a map, a full Linear or a down/up product."""
    if isinstance(m, torch.nn.Linear):
        return m.weight.detach()
    return m[1].weight.detach() @ m[0].weight.detach()


@pytest.mark.parametrize("rank", [2, 3, 5])
def test_rank_reaches_every_attention_map(rank):
    """With rank_maps="all" the rank r bounds the query, key, value and output maps alike (each map's matrix
    has rank exactly r), so an ablation over r changes the whole attention, not only the query."""
    torch.manual_seed(0)
    a = GatedCrossAttention(16, rank=rank, num_heads=2, attn_dim=8, rank_maps="all")
    maps = {"q": a.q_up.weight.detach() @ a.q_down.weight.detach(), "k": _effective(a.k_proj),
            "v": _effective(a.v_proj), "o": _effective(a.o_proj)}
    assert {k: int(torch.linalg.matrix_rank(w)) for k, w in maps.items()} == dict.fromkeys(maps, rank)
    # and the adapter's size follows r in every map: (16 + 8) per rank for q, k, v and o each
    smaller = GatedCrossAttention(16, rank=rank - 1, num_heads=2, attn_dim=8, rank_maps="all")
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(a) - n(smaller) == 4 * (16 + 8)


def test_query_scope_keeps_the_full_width_maps():
    a = GatedCrossAttention(16, rank=2, num_heads=2, attn_dim=8)
    assert a.rank_maps == "query"
    assert [int(torch.linalg.matrix_rank(_effective(m))) for m in (a.k_proj, a.v_proj, a.o_proj)] == [8, 8, 8]
    assert {k for k in a.state_dict() if k.startswith(("k_proj", "v_proj", "o_proj"))} == {
        f"{m}.{p}" for m in ("k_proj", "v_proj", "o_proj") for p in ("weight", "bias")}


def test_low_rank_adapter_is_still_nothing_at_gate_zero():
    a = GatedCrossAttention(16, rank=2, num_heads=2, rank_maps="all", ffn_rank=3)
    hidden, audio = torch.randn(2, 5, 16), torch.randn(2, 3, 16)
    with torch.no_grad():
        assert torch.equal(a(hidden, audio), torch.zeros_like(hidden))


def test_bad_rank_maps_is_named():
    with pytest.raises(ValueError, match="rank_maps must be one of"):
        GatedCrossAttention(16, rank_maps="keys")
