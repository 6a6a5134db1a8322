"""Tests for safe.training.losses against numbers worked out by hand.

Two-token vocabularies make the softmax easy: logits (0, ln 3) give p = (1/4, 3/4), logits (0, 0)
give (1/2, 1/2), logits (0, ln 4) / (ln 4, 0) give (1/5, 4/5) / (4/5, 1/5).
"""
from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from safe.training.losses import (
    DiagonalFisher,
    answer_cross_entropy,
    answer_positions,
    named_trainable_parameters,
    retention_kl,
    sample_answer_labels,
)

LN3, LN4 = math.log(3.0), math.log(4.0)


def two_rows():
    """Batch of 2 rows, T = 4, V = 2.

    row 0: labels [-100, -100, 1, 0]  -> scored shifted positions 1 (target 1) and 2 (target 0)
    row 1: labels [-100, 1, -100, -100] -> scored shifted position 0 (target 1)
    Unscored positions get huge logits that would dominate any mean if the mask leaked.
    """
    labels = torch.tensor([[-100, -100, 1, 0], [-100, 1, -100, -100]])
    logits = torch.full((2, 4, 2), 0.0)
    logits[:, :, 0] = 1e4  # garbage everywhere first
    logits[0, 1] = torch.tensor([0.0, LN3])   # p = (1/4, 3/4), target 1 -> -ln(3/4)
    logits[0, 2] = torch.tensor([0.0, LN3])   # target 0 -> -ln(1/4) = ln 4
    logits[1, 0] = torch.tensor([0.0, 0.0])   # p = (1/2, 1/2), target 1 -> ln 2
    return logits, labels


def test_answer_positions_is_the_shifted_mask():
    labels = torch.tensor([[5, -100, 7, -100, 9], [-100, -100, -100, -100, -100]])
    expected = torch.tensor([[False, True, False, True], [False, False, False, False]])
    assert torch.equal(answer_positions(labels), expected)


def test_cross_entropy_mean_and_per_row_by_hand():
    logits, labels = two_rows()
    a, b, c = math.log(4 / 3), LN4, math.log(2.0)
    assert answer_cross_entropy(logits, labels).item() == pytest.approx((a + b + c) / 3, rel=1e-6)
    per_row = answer_cross_entropy(logits, labels, reduction="none")
    assert per_row.shape == (2,)
    assert per_row.tolist() == pytest.approx([(a + b) / 2, c], rel=1e-6)


def test_cross_entropy_bf16_is_computed_in_float32():
    logits, labels = two_rows()
    out = answer_cross_entropy(logits.to(torch.bfloat16), labels)
    assert out.dtype == torch.float32
    # bf16 rounds ln 3 = 1.0986 to 1.09375: CE moves by < 1e-2, not by the 1e4 garbage
    assert out.item() == pytest.approx((math.log(4 / 3) + LN4 + math.log(2.0)) / 3, abs=1e-2)


def test_cross_entropy_without_answer_tokens_is_zero_and_backpropagates():
    logits = torch.randn(2, 3, 5, requires_grad=True)
    labels = torch.full((2, 3), -100)
    loss = answer_cross_entropy(logits, labels)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))
    assert answer_cross_entropy(logits, labels, reduction="none").tolist() == [0.0, 0.0]


def test_cross_entropy_matches_hugging_face_convention():
    torch.manual_seed(0)
    logits = torch.randn(3, 6, 11)
    labels = torch.randint(0, 11, (3, 6))
    labels[:, :3] = -100
    ref = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1),
                                            ignore_index=-100)
    assert answer_cross_entropy(logits, labels).item() == pytest.approx(ref.item(), rel=1e-6)


def test_kl_by_hand():
    labels = torch.tensor([[-100, 1, 1], [-100, 0, -100]])
    base = torch.zeros(2, 3, 2)
    adapted = torch.zeros(2, 3, 2)
    base[:, :, 1] = 50.0       # garbage at unscored positions
    adapted[:, :, 0] = -50.0
    base[0, 0] = torch.tensor([0.0, LN3])     # p = (1/4, 3/4)
    adapted[0, 0] = torch.tensor([0.0, 0.0])  # q = (1/2, 1/2)
    base[0, 1] = torch.tensor([0.0, 0.0])     # p = (1/2, 1/2)
    adapted[0, 1] = torch.tensor([0.0, 0.0])  # q = p -> 0
    base[1, 0] = torch.tensor([0.0, LN4])     # p = (1/5, 4/5)
    adapted[1, 0] = torch.tensor([LN4, 0.0])  # q = (4/5, 1/5)
    k1 = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    k3 = 0.2 * math.log(0.2 / 0.8) + 0.8 * math.log(0.8 / 0.2)   # = 0.6 ln 4
    assert k3 == pytest.approx(0.6 * LN4)
    assert retention_kl(adapted, base, labels).item() == pytest.approx((k1 + 0 + k3) / 3, rel=1e-6)
    assert retention_kl(adapted, base, labels, reduction="none").tolist() == pytest.approx([k1 / 2, k3], rel=1e-6)
    # direction matters: KL(q || p) at the first position is a different number
    k1_rev = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    swapped = retention_kl(base, adapted, labels, reduction="none")[0].item()
    assert swapped == pytest.approx((k1_rev + 0) / 2, rel=1e-6)
    assert abs(k1 - k1_rev) > 1e-2


def test_kl_is_exactly_zero_for_equal_logits_and_has_zero_gradient():
    torch.manual_seed(1)
    base = torch.randn(3, 7, 13) * 30
    labels = torch.randint(0, 13, (3, 7))
    labels[:, :2] = -100
    adapted = base.clone().requires_grad_(True)
    kl = retention_kl(adapted, base, labels)
    assert kl.item() == 0.0
    kl.backward()
    assert adapted.grad.abs().max().item() < 1e-7


def test_kl_gradient_is_q_minus_p_over_positions_and_base_gets_none():
    labels = torch.tensor([[-100, 1]])  # one scored position
    adapted = torch.tensor([[[0.0, 0.0], [9.0, 9.0]]], requires_grad=True)   # q = (1/2, 1/2)
    base = torch.tensor([[[0.0, LN3], [0.0, 0.0]]], requires_grad=True)      # p = (1/4, 3/4)
    retention_kl(adapted, base, labels).backward()
    assert adapted.grad[0, 0].tolist() == pytest.approx([0.25, -0.25], abs=1e-6)
    assert adapted.grad[0, 1].tolist() == [0.0, 0.0]
    assert base.grad is None


def test_kl_bf16_in_float32_and_masked_vocab():
    labels = torch.tensor([[-100, 0]])
    base = torch.tensor([[[0.0, LN3, -math.inf], [0.0, 0.0, 0.0]]])
    adapted = torch.tensor([[[0.0, 0.0, -math.inf], [0.0, 0.0, 0.0]]])
    k1 = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    out = retention_kl(adapted, base, labels)
    assert math.isfinite(out.item()) and out.item() == pytest.approx(k1, rel=1e-6)
    out16 = retention_kl(adapted.bfloat16(), base.bfloat16(), labels)
    assert out16.dtype == torch.float32 and out16.item() == pytest.approx(k1, abs=2e-3)


def test_loss_argument_errors_name_the_argument():
    logits, labels = two_rows()
    with pytest.raises(ValueError, match="reduction"):
        answer_cross_entropy(logits, labels, reduction="sum")
    with pytest.raises(ValueError, match="labels"):
        answer_cross_entropy(logits, labels[:, :3])
    with pytest.raises(ValueError, match="base_logits"):
        retention_kl(logits, logits[:, :, :1], labels)
    with pytest.raises(ValueError, match="labels"):
        answer_positions(labels.float())


def test_sampled_labels_follow_the_base_not_the_gold():
    """The Fisher's labels are drawn from the base's predictive distribution at each answer position."""
    labels = torch.tensor([[-100, -100, 3, 4], [-100, 5, -100, -100]])
    logits = torch.zeros(2, 4, 9)
    logits[..., 7] = 60.0  # the base is sure of token 7 everywhere
    out = sample_answer_labels(logits, labels, torch.Generator().manual_seed(0))
    assert out.tolist() == [[-100, -100, 7, 7], [-100, 7, -100, -100]]
    assert labels.tolist() == [[-100, -100, 3, 4], [-100, 5, -100, -100]]  # the gold labels untouched
    two = torch.full((1, 401, 9), -60.0)
    two[..., 1] = two[..., 2] = 0.0  # an even choice between tokens 1 and 2 at 400 answer positions
    wide = torch.cat([torch.tensor([[-100]]), torch.full((1, 400), 3)], dim=1)
    drawn = sample_answer_labels(two, wide, torch.Generator().manual_seed(0))[0, 1:]
    assert set(drawn.tolist()) == {1, 2} and 150 < int((drawn == 1).sum()) < 250
    again = sample_answer_labels(two, wide, torch.Generator().manual_seed(0))[0, 1:]
    assert torch.equal(drawn, again)  # a seeded draw: a resumed run draws the same labels


# --------------------------------------------------------------------------------------------
# DiagonalFisher
# --------------------------------------------------------------------------------------------
def params():
    return {"a": torch.nn.Parameter(torch.tensor([1.0, -1.0])), "b": torch.nn.Parameter(torch.tensor(2.0))}


def set_grads(ps, ga, gb):
    ps["a"].grad = None if ga is None else torch.tensor(ga)
    ps["b"].grad = None if gb is None else torch.tensor(gb)


def test_fisher_mean_of_squared_grads_and_penalty_by_hand():
    ps = params()
    f = DiagonalFisher(ps)
    assert f.penalty(ps).item() == 0.0                     # zero Fisher
    set_grads(ps, [1.0, 2.0], 3.0)
    f.accumulate(ps)
    set_grads(ps, [3.0, 0.0], None)                       # b's grad None: counts as 0 for b
    f.accumulate(ps)
    f.finalize()
    assert f.fisher["a"].tolist() == [5.0, 2.0]            # (1+9)/2, (4+0)/2
    assert f.fisher["b"].item() == 4.5                     # (9+0)/2
    assert f.count == 0 and f.num_estimates == 1
    assert f.penalty(ps).item() == 0.0                     # still at the anchor
    with torch.no_grad():
        ps["a"].add_(torch.tensor([1.0, -2.0]))            # anchor stays put (it is a clone)
        ps["b"].sub_(1.0)
    pen = f.penalty(ps)
    assert pen.item() == pytest.approx(5 * 1 + 2 * 4 + 4.5 * 1)   # 17.5
    set_grads(ps, None, None)
    pen.backward()
    assert ps["a"].grad.tolist() == pytest.approx([2 * 5 * 1.0, 2 * 2 * -2.0])  # 2F(theta - anchor)
    assert ps["b"].grad.item() == pytest.approx(2 * 4.5 * -1.0)


def test_fisher_penalty_gradient_alone():
    ps = params()
    f = DiagonalFisher(ps)
    set_grads(ps, [2.0, 1.0], 1.0)
    f.accumulate(ps)
    f.finalize()                                           # F = (4, 1), 1
    with torch.no_grad():
        ps["a"].add_(torch.tensor([0.5, 3.0]))
    set_grads(ps, None, None)
    f.penalty(ps).backward()
    assert ps["a"].grad.tolist() == pytest.approx([2 * 4 * 0.5, 2 * 1 * 3.0])
    assert ps["b"].grad.item() == 0.0


def test_fisher_moving_average_and_first_estimate():
    ps = params()
    f = DiagonalFisher(ps)
    set_grads(ps, [2.0, 2.0], 2.0)
    f.accumulate(ps)
    f.finalize(decay=0.5)                                  # first estimate: F_new itself
    assert f.fisher["a"].tolist() == [4.0, 4.0]
    set_grads(ps, [0.0, 4.0], 0.0)
    f.accumulate(ps)
    f.finalize(decay=0.5)                                  # 0.5*(4,4) + 0.5*(0,16)
    assert f.fisher["a"].tolist() == [2.0, 10.0]
    assert f.fisher["b"].item() == 2.0
    with pytest.raises(RuntimeError, match="count=0"):
        f.finalize()
    with pytest.raises(ValueError, match="decay"):
        f.accumulate(ps)
        f.finalize(decay=1.0)


def test_fisher_state_dict_resumes_exactly_through_safetensors(tmp_path):
    ps = params()
    f = DiagonalFisher(ps)
    set_grads(ps, [1.0, 2.0], 3.0)
    f.accumulate(ps)
    f.finalize()
    set_grads(ps, [0.5, 0.5], 0.5)
    f.accumulate(ps)                                       # pending accumulator must survive too
    save_file(f.state_dict(), str(tmp_path / "fisher.safetensors"))

    other = {"a": torch.nn.Parameter(torch.tensor([7.0, 7.0])), "b": torch.nn.Parameter(torch.tensor(7.0))}
    g = DiagonalFisher(other)                              # different anchors until loaded
    g.load_state_dict(load_file(str(tmp_path / "fisher.safetensors")))
    assert g.count == 1 and g.num_estimates == 1
    assert torch.equal(g.anchors["a"], torch.tensor([1.0, -1.0]))
    for fisher in (f, g):
        fisher.accumulate(ps)
        fisher.finalize(decay=0.25)
    for name in ("a", "b"):
        assert torch.equal(f.fisher[name], g.fisher[name])
    assert torch.equal(f.penalty(other), g.penalty(other))

    with pytest.raises(ValueError, match="missing"):
        g.load_state_dict({k: v for k, v in f.state_dict().items() if k != "count"})


def test_fisher_argument_errors():
    ps = params()
    f = DiagonalFisher(ps)
    with pytest.raises(ValueError, match="unknown"):
        f.accumulate({"c": torch.nn.Parameter(torch.zeros(1))})
    with pytest.raises(ValueError, match="missing"):
        f.penalty({"a": ps["a"]})
    with pytest.raises(ValueError, match="named_params"):
        DiagonalFisher({})


def test_named_trainable_parameters_uses_safe_modules():
    class Fake:
        def __init__(self):
            self.proj = torch.nn.Linear(2, 2)
            self.frozen = torch.nn.Linear(2, 1)
            self.frozen.bias.requires_grad_(False)

        def safe_modules(self):
            return {"projector": self.proj, "adapters": self.frozen}

    names = sorted(named_trainable_parameters(Fake()))
    assert names == ["adapters.weight", "projector.bias", "projector.weight"]
