"""Stage B's costs per row: runtime spread over a family's rows by the measured per-token time, token counts,
the reward's token term, and tables written before token counts still loading."""
from __future__ import annotations

import pytest
import torch

from safe.policy.outcomes import generated_tokens, row_costs
from safe.policy.ppo import PPOConfig, evaluate_policy, train_ppo
from safe.policy.reward import reward, token_scale
from safe.policy.table import OutcomeTable, cost_summary, evaluate_actions

torch.set_num_threads(1)


def _table(**change):
    n = 4
    t = dict(states=torch.arange(8.0).reshape(n, 2), correct_without=[0, 1, 1, 0], correct_with=[1, 1, 0, 0],
             needs_audio=[1, 0, 0, 0], is_vl=[0, 1, 1, 0], cost_without_ms=[100.0] * n,
             cost_with_ms=[140.0, 150.0, 130.0, 140.0], confidence=[0.5] * n, entropy=[0.5] * n,
             tokens_without=[2.0, 3.0, 2.0, 6.0], tokens_with=[10.0, 11.0, 6.0, 14.0])
    return OutcomeTable(**{**t, **change})


def test_generated_tokens_counts_up_to_the_first_end_token():
    eos = 9
    new = torch.tensor([[5, 9, 9, 9], [5, 6, 7, 8], [9, 0, 0, 0], [5, 6, 9, 5]])
    assert generated_tokens(new, eos).tolist() == [2.0, 4.0, 1.0, 3.0]
    assert generated_tokens(new[:, :0], eos).tolist() == [0.0] * 4


def test_row_costs_spread_the_family_price_by_tokens():
    """Family prices 10 / 20 ms (early path) or 10 / 10 + 20 (cascade); 2 ms per token base, 3 with audio;
    the timed batch averaged 2 tokens base, 4 with audio."""
    early = {"f": {"without_audio": 10.0, "with_audio": 20.0, "early_skip": 8.0, "ms_per_token_base": 2.0,
                   "ms_per_token_audio": 3.0, "tokens_base": 2.0, "tokens_audio": 4.0}}
    outcomes = {"generated_without": torch.tensor([1.0, 2.0, 6.0]), "generated_with": torch.tensor([4.0, 6.0, 1.0])}
    without, with_ = row_costs(outcomes, ["f"] * 3, early)
    assert without.tolist() == pytest.approx([8.0, 10.0, 18.0])          # 10 + 2 * (t - 2)
    assert with_.tolist() == pytest.approx([20.0, 26.0, 11.0])           # 20 + 3 * (t - 4)
    cascade = {"f": {**early["f"], "base_pass": 5.0}}
    _, with_c = row_costs(outcomes, ["f"] * 3, cascade)                  # the audio action also pays the base's answer
    assert with_c.tolist() == pytest.approx([18.0, 26.0, 19.0])
    old = {"f": {"without_audio": 10.0, "with_audio": 20.0}}             # costs measured before per-token times
    assert [v.tolist() for v in row_costs(outcomes, ["f"] * 3, old)] == [[10.0] * 3, [20.0] * 3]
    assert [v.tolist() for v in row_costs({}, ["f"] * 3, early)] == [[10.0] * 3, [20.0] * 3]
    floored = {"f": {**early["f"], "encode": 4.0}}                       # audio costs at least the encoder above skipping
    without_f, with_f = row_costs(outcomes, ["f"] * 3, floored)
    assert with_f.tolist() == pytest.approx([20.0, 26.0, 22.0]) and without_f.tolist() == without.tolist()
    cheap = {"f": {**early["f"], "without_audio": 1.0}}                  # never below 0 ms
    assert float(row_costs(outcomes, ["f"] * 3, cheap)[0].min()) == 0.0


def test_reward_adds_the_normalised_token_cost():
    t = _table()
    assert token_scale(t) == pytest.approx(7.0)                          # extra tokens 8, 8, 4, 8
    use = torch.tensor([True, True, False, True])
    correct = torch.where(use, t.correct_with, t.correct_without)
    tokens = torch.where(use, t.tokens_with, t.tokens_without)
    cost = torch.where(use, t.cost_with_ms, t.cost_without_ms)
    r = reward(correct, use, cost, t.cost_without_ms, alpha=0.5, gamma=0.0, needs_audio=t.needs_audio,
               latency_scale=40.0, tokens=tokens, base_tokens=t.tokens_without, token_scale=7.0, token_weight=1.0)
    # cost = (runtime / 40 + tokens / 7) / 2: row 0 (1 + 8/7) / 2, row 1 (50/40 + 8/7) / 2, row 2 skips: 0
    expected = [1 - 0.5 * (1 + 8 / 7) / 2, 1 - 0.5 * (1.25 + 8 / 7) / 2, 1.0, 0 - 0.5 * (1 + 8 / 7) / 2]
    assert r.tolist() == pytest.approx(expected, abs=1e-6)
    runtime_only = reward(correct, use, cost, t.cost_without_ms, alpha=0.5, gamma=0.0, needs_audio=t.needs_audio,
                          latency_scale=40.0, tokens=tokens, base_tokens=t.tokens_without, token_scale=7.0,
                          token_weight=0.0)
    assert runtime_only.tolist() == pytest.approx([0.5, 1 - 0.625, 1.0, -0.5], abs=1e-6)


def test_token_cost_steers_the_policy_where_runtime_does_not():
    """Audio fixes every row and costs the same runtime everywhere, but 1 token on rows with x0 < 0 and 20 on
    the others (token scale 10.5). At alpha 0.8 with the token cost, audio costs 0.8 * (1 + 1 / 10.5) / 2 = 0.44
    on the cheap rows and 1.16 on the others: used only where cheap. Runtime only (token_weight 0): 0.8
    everywhere, used everywhere."""
    g = torch.Generator().manual_seed(0)
    n = 1000
    x = torch.randn(n, 2, generator=g)
    cheap = x[:, 0] < 0
    t = OutcomeTable(states=x, correct_without=torch.zeros(n), correct_with=torch.ones(n),
                     needs_audio=torch.ones(n), is_vl=torch.zeros(n), cost_without_ms=torch.full((n,), 10.0),
                     cost_with_ms=torch.full((n,), 11.0), confidence=torch.zeros(n), entropy=torch.zeros(n),
                     tokens_without=torch.zeros(n), tokens_with=torch.where(cheap, 1.0, 20.0))
    cfg = dict(steps=40, batch_size=128, epochs=2, alpha_final=0.8, alpha_ramp=0.0, gamma=0.0, seed=0)
    policy, _ = train_ppo(t, PPOConfig(**cfg))
    use = policy.decide(t.states)
    assert float(use[cheap].float().mean()) > 0.9 and float(use[~cheap].float().mean()) < 0.1
    assert evaluate_policy(policy, t)["mean_tokens"] < 2.0
    with pytest.warns(UserWarning, match="always"):  # runtime only: audio everywhere
        without = train_ppo(t, PPOConfig(**cfg, token_weight=0.0))[0].decide(t.states)
    assert float(without.float().mean()) > 0.9


def test_tables_without_token_counts_load_and_cost_runtime_only(tmp_path):
    t = _table()
    from safetensors.torch import save_file
    old = {k: v for k, v in t.to_dict().items() if not k.startswith("tokens_")}
    save_file(old, str(tmp_path / "old.safetensors"), metadata={"format": "safe.policy.OutcomeTable/1"})
    back = OutcomeTable.load(tmp_path / "old.safetensors")
    assert back.tokens_without.tolist() == [0.0] * 4 and back.tokens_with.tolist() == [0.0] * 4
    assert token_scale(back) == 0.0
    again = OutcomeTable.load(t.save(tmp_path / "new.safetensors"))
    assert torch.equal(again.tokens_with, t.tokens_with)
    with pytest.raises(ValueError, match="tokens_with"):
        _table(tokens_with=[1.0, -1.0, 0.0, 0.0])


def test_cost_summary_and_mean_tokens():
    t = _table()
    c = cost_summary(t)
    assert c["runtime_ms_extra"] == pytest.approx(40.0) and c["runtime_rows_distinct"] == 3
    assert c["tokens_extra"] == pytest.approx(7.0) and c["tokens_with"] == pytest.approx(10.25)
    assert evaluate_actions(t, [1, 0, 0, 0])["mean_tokens"] == pytest.approx((10 + 3 + 2 + 6) / 4)
