"""Stage B: PPO over an outcome table, with a Lagrangian retention constraint (the proposal's Stage B, docs/design.md).

Each episode is one step: a row of the :class:`~safe.policy.table.OutcomeTable` is the state, the
policy decides whether to consult audio, and the reward is read from the table (:mod:`safe.policy.reward`):

    r = correct - alpha * cost - gamma * irrelevance_penalty - lambda * is_vl * (1 - correct)

where ``cost`` is the row's measured extra runtime and extra language-model tokens of audio, each
normalised over the table (an average audio call costs 1, so ``alpha`` is unitless), and the last term is
the Lagrangian of the retention constraint, see :class:`PPOConfig`; ``lambda`` follows projected dual
ascent (:class:`safe.training.schedules.DualAscent`, reused from Stage A).

Since an episode ends after one step there is nothing to bootstrap: the return is the reward and
the advantage is ``reward - value`` (GAE with any lambda reduces to this). The rest is standard
clipped PPO (clipped surrogate, value loss, entropy bonus, several epochs over minibatches), with
the diagnostics named as in CleanRL's ``ppo.py``: ``approx_kl`` (the ``(ratio - 1) - log ratio``
estimator), ``clipfrac``, ``entropy``, ``explained_variance``; plus ``lambda``, ``alpha`` and the
``use_rate`` for this problem, and :func:`detect_collapse` for the "always / never" failure
(docs/design.md, "Policy collapse is watched").
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from numbers import Real
from typing import Any

import torch

from safe.policy.network import PolicyNetwork
from safe.policy.reward import LATENCY_NORMS, _vector, latency_scale, retention_penalty, reward, token_scale
from safe.policy.table import OutcomeTable, evaluate_actions
from safe.training.config import RETENTION_TAU
from safe.training.schedules import DualAscent
from safe.validation import int_arg, real_arg

__all__ = [
    "latency_scale",
    "token_scale",
    "reward",
    "retention_penalty",
    "alpha_schedule",
    "normalize_advantages",
    "explained_variance",
    "ppo_loss",
    "detect_collapse",
    "PPOConfig",
    "train_ppo",
    "evaluate_policy",
]

# --------------------------------------------------------------------------------------------
# schedules and statistics
# --------------------------------------------------------------------------------------------
def alpha_schedule(step: int, total: int, final: float = 0.6, ramp_fraction: float = 0.2) -> float:
    """The latency weight at update ``step`` (0-based) of ``total``: ``final * step / (ramp_fraction * total)``
    during the first ``ramp_fraction * total`` updates, then ``final``.

    Starts at exactly 0 (the proposal starts RL with alpha = 0, docs/design.md, so the policy first learns
    where audio helps before it learns that audio costs); ``ramp_fraction = 0`` gives ``final``
    from the first update. Steps past ``total`` give ``final``.
    """
    step = int_arg("step", step, 0)
    total = int_arg("total", total, 1)
    final = real_arg("final", final, 0.0)
    ramp_fraction = real_arg("ramp_fraction", ramp_fraction, 0.0, 1.0)
    ramp = ramp_fraction * total
    if ramp <= 0 or step >= ramp:
        return final
    return final * step / ramp


def normalize_advantages(adv: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``(adv - mean) / (std + eps)`` with the unbiased std (as CleanRL); (n,) -> (n,).

    A single element, or a constant vector, gives zeros (there is no relative information to
    keep; the unbiased std of one element would be NaN). An empty vector is an error.
    """
    a = _vector("adv", adv).float()
    if a.numel() == 0:
        raise ValueError("adv must not be empty")
    if a.numel() == 1:
        return torch.zeros_like(a)
    return (a - a.mean()) / (a.std() + eps)


def explained_variance(values: Any, returns: Any) -> float:
    """``1 - Var(returns - values) / Var(returns)``: 1 = perfect value function, 0 = no better than
    the mean, negative = worse. NaN when the returns are constant (undefined), as in CleanRL."""
    r = _vector("returns", returns).double()
    v = _vector("values", values, r.shape[0]).double()
    var_r = float(r.var(unbiased=False)) if r.numel() else 0.0
    if var_r == 0.0:
        return math.nan
    return 1.0 - float((r - v).var(unbiased=False)) / var_r


def ppo_loss(new_logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, values: torch.Tensor,
             returns: torch.Tensor, entropy: torch.Tensor, clip: float = 0.2, vf_coef: float = 0.5,
             ent_coef: float = 0.01) -> tuple[torch.Tensor, dict[str, float]]:
    """The clipped PPO loss on one minibatch; every input is (m,).

    With ``ratio = exp(new_logp - old_logp)``:

    * ``policy_loss = mean(max(-A * ratio, -A * clamp(ratio, 1 - clip, 1 + clip)))``;
    * ``value_loss = 0.5 * mean((values - returns) ** 2)`` (unclipped);
    * ``loss = policy_loss + vf_coef * value_loss - ent_coef * mean(entropy)``.

    ``advantages``, ``old_logp`` and ``returns`` are data (taken as given, gradients only flow
    through ``new_logp``, ``values`` and ``entropy``). Returns ``(loss, stats)`` with plain floats:
    ``loss``, ``policy_loss``, ``value_loss``, ``entropy`` (mean), ``approx_kl`` =
    ``mean((ratio - 1) - log ratio)`` (the low-variance, always >= 0 estimator of
    KL(old || new)), ``clipfrac`` = fraction with ``|ratio - 1| > clip`` (CleanRL's definition,
    whether or not the clipped branch is the active one).
    """
    new_logp = _vector("new_logp", new_logp)
    m = new_logp.shape[0]
    if m == 0:
        raise ValueError("new_logp must not be empty")
    old_logp = _vector("old_logp", old_logp, m).detach()
    adv = _vector("advantages", advantages, m).detach()
    values = _vector("values", values, m)
    returns = _vector("returns", returns, m).detach()
    entropy = _vector("entropy", entropy, m)
    clip = real_arg("clip", clip, 0.0, lo_open=True)
    vf_coef = real_arg("vf_coef", vf_coef, 0.0)
    ent_coef = real_arg("ent_coef", ent_coef, 0.0)

    logratio = new_logp - old_logp
    ratio = logratio.exp()
    policy_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1.0 - clip, 1.0 + clip)).mean()
    value_loss = 0.5 * ((values - returns) ** 2).mean()
    ent = entropy.mean()
    loss = policy_loss + vf_coef * value_loss - ent_coef * ent
    with torch.no_grad():
        stats = {
            "loss": float(loss.detach()),
            "policy_loss": float(policy_loss.detach()),
            "value_loss": float(value_loss.detach()),
            "entropy": float(ent.detach()),
            "approx_kl": float(((ratio - 1.0) - logratio).mean()),
            "clipfrac": float(((ratio - 1.0).abs() > clip).float().mean()),
        }
    return loss, stats


def detect_collapse(use_rate: float | Sequence[float], low: float = 0.02, high: float = 0.98,
                    window: int = 10) -> str | None:
    """``"never"`` if the use rate is <= ``low``, ``"always"`` if >= ``high``, else ``None``.

    ``use_rate`` is one rate or a history of rates; for a history the mean of the last ``window``
    entries is judged, because one sampled batch's rate is noisy (256 draws: +-3 points). A policy
    that has collapsed is still a valid policy — audio may really be never worth it — so this
    reports, it does not fail; the caller decides (collapse is the first Stage B risk the proposal names).
    """
    low = real_arg("low", low, 0.0, 1.0)
    high = real_arg("high", high, 0.0, 1.0)
    if not low < high:
        raise ValueError(f"low must be < high, got low={low}, high={high}")
    window = int_arg("window", window, 1)
    if isinstance(use_rate, Real) and not isinstance(use_rate, bool):
        rate = real_arg("use_rate", use_rate, 0.0, 1.0)
    else:
        rates = list(use_rate)
        if not rates:
            raise ValueError("use_rate must be a number or a non-empty sequence, got an empty sequence")
        tail = [real_arg(f"use_rate[{i}]", r, 0.0, 1.0) for i, r in enumerate(rates[-window:])]
        rate = sum(tail) / len(tail)
    if rate <= low:
        return "never"
    if rate >= high:
        return "always"
    return None


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------
@dataclass
class PPOConfig:
    """Stage B hyper-parameters (defaults: the proposal's Stage B, docs/design.md). Validated on construction;
    errors name the field and value."""

    steps: int = 200
    """PPO updates; each samples one batch of ``batch_size`` rows (one-step episodes)."""
    batch_size: int = 256
    """Rows per update (proposal: 256). Sampled without replacement when the table has that many."""
    epochs: int = 4
    """Passes of gradient steps over each batch."""
    minibatch_size: int = 64
    """Rows per gradient step; must be <= ``batch_size`` (the last minibatch may be smaller)."""
    lr: float = 3e-3
    """Adam learning rate at the first update."""
    anneal_lr: bool = True
    """Decay the learning rate linearly from ``lr`` to 0 over ``steps`` (as CleanRL's default). Without it
    the decision boundary keeps wandering with batch noise to the last update."""
    clip: float = 0.2
    """PPO ratio clip epsilon."""
    ent_coef: float = 0.01
    """Entropy bonus weight (proposal: 0.01, against degenerate always/never policies)."""
    vf_coef: float = 0.5
    """Value-loss weight."""
    max_grad_norm: float = 0.5
    """Gradient-norm clip per step."""
    target_kl: float | None = None
    """Stop a batch's epochs early once the mean approx-KL of an epoch exceeds this; None = never."""
    alpha_final: float = 0.6
    """Latency weight after the curriculum (proposal: alpha 0 -> 0.6)."""
    alpha_ramp: float = 0.2
    """Fraction of ``steps`` over which alpha rises linearly from 0 (proposal: first 20k of 50-100k)."""
    gamma: float = 0.1
    """Irrelevance penalty for consulting audio on a row that does not need it."""
    latency_norm: str = "mean_extra"
    """How extra milliseconds become the runtime cost: ``"mean_extra"`` or ``"base"`` (:func:`latency_scale`)."""
    token_weight: float = 1.0
    """Weight of the token cost beside the runtime cost's 1 (0: runtime only); the weighted sum is divided by
    ``1 + token_weight``, so an average audio call costs 1 (:func:`safe.policy.reward.reward`). Tables without
    token counts have no token cost whatever this is."""
    tau: float = RETENTION_TAU
    """Retention tolerance: the constraint is VL accuracy >= base VL accuracy - tau (0.3 points)."""
    dual_lr: float = 1.0
    """Dual-ascent step: lambda += dual_lr * (floor - measured VL accuracy) after each batch; 0 freezes lambda."""
    lambda_init: float = 0.0
    """Initial multiplier (also its lower bound is 0, so the dual may relax back to 0)."""
    lambda_max: float = 10.0
    """Upper bound on lambda (one noisy measurement cannot tilt training without limit)."""
    hidden: int = 64
    """Hidden width of the actor and the critic."""
    seed: int = 0
    """Seeds the network initialisation, the batch sampling, the action sampling and the shuffles."""
    collapse_low: float = 0.02
    """Use rate at or below which the policy is reported collapsed to "never"."""
    collapse_high: float = 0.98
    """Use rate at or above which the policy is reported collapsed to "always"."""
    collapse_window: int = 10
    """Updates averaged by :func:`detect_collapse` over the sampled use-rate history."""

    def __post_init__(self) -> None:
        for name, minimum in (("steps", 1), ("batch_size", 1), ("epochs", 1), ("minibatch_size", 1),
                              ("hidden", 1), ("seed", 0), ("collapse_window", 1)):
            setattr(self, name, int_arg(name, getattr(self, name), minimum))
        if self.minibatch_size > self.batch_size:
            raise ValueError(f"minibatch_size must be <= batch_size={self.batch_size}, got {self.minibatch_size}")
        for name in ("lr", "clip"):
            setattr(self, name, real_arg(name, getattr(self, name), 0.0, lo_open=True))
        for name in ("ent_coef", "vf_coef", "alpha_final", "gamma", "tau", "dual_lr", "lambda_init", "token_weight"):
            setattr(self, name, real_arg(name, getattr(self, name), 0.0))
        self.max_grad_norm = real_arg("max_grad_norm", self.max_grad_norm, 0.0, lo_open=True)
        if self.target_kl is not None:
            self.target_kl = real_arg("target_kl", self.target_kl, 0.0, lo_open=True)
        self.alpha_ramp = real_arg("alpha_ramp", self.alpha_ramp, 0.0, 1.0)
        self.lambda_max = real_arg("lambda_max", self.lambda_max, self.lambda_init)
        if self.latency_norm not in LATENCY_NORMS:
            raise ValueError(f"latency_norm must be one of {LATENCY_NORMS}, got {self.latency_norm!r}")
        self.collapse_low = real_arg("collapse_low", self.collapse_low, 0.0, 1.0)
        self.collapse_high = real_arg("collapse_high", self.collapse_high, 0.0, 1.0)
        if not self.collapse_low < self.collapse_high:
            raise ValueError(f"collapse_low must be < collapse_high, got {self.collapse_low} and {self.collapse_high}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields (for run records)."""
        return asdict(self)


def train_ppo(table: OutcomeTable, cfg: PPOConfig | None = None, progress: bool = False,
              log: Callable[[dict[str, Any]], None] | None = None) -> tuple[PolicyNetwork, list[dict[str, Any]]]:
    """Train the Stage B policy on ``table``; returns ``(policy, history)``.

    Per update ``k``: ``alpha = alpha_schedule(k, steps, alpha_final, alpha_ramp)``; sample
    ``batch_size`` rows; sample actions from the current policy; read rewards off the table
    (:func:`reward` minus :func:`retention_penalty` with the current ``lambda``); advantages =
    reward - value, normalised over the batch; ``epochs`` passes of clipped-PPO steps over
    shuffled minibatches (Adam, gradient clipping); then one dual-ascent step on lambda.

    Retention constraint: ``floor = base VL accuracy on the table - tau``. The VL accuracy fed to
    dual ascent is the batch's *paired* estimate, ``base_vl_acc(table) + mean over the batch's VL
    rows of (correct_taken - correct_without)``: the same expectation as the batch's raw VL
    accuracy, but free of the sampling noise of which VL rows were drawn (+-3 points at 256 rows,
    ten times tau), which would otherwise drive lambda up on pure noise. Tables without VL rows
    have no constraint (lambda stays at ``lambda_init``, ``vl_accuracy`` is NaN).

    ``history[k]`` holds floats: ``update``, ``alpha``, ``lambda`` (the value used for this batch's
    rewards), ``use_rate`` (sampled actions), ``mean_reward``, ``accuracy`` (of the sampled
    actions), ``vl_accuracy`` (paired estimate), ``vl_floor``, ``approx_kl``, ``clipfrac``,
    ``entropy``, ``policy_loss``, ``value_loss`` (means over the update's gradient steps),
    ``explained_variance`` (pre-update values vs rewards), ``epochs_run``, and ``collapse``
    (:func:`detect_collapse` over the sampled use rates so far: ``"never"``, ``"always"`` or None).
    A collapse at the end also raises a ``UserWarning``; :func:`evaluate_policy` reports it for the
    deterministic policy. ``log`` (if given) is called with each row; ``progress`` shows tqdm.

    Guarantees: deterministic given ``cfg.seed`` (all randomness from one ``torch.Generator``; the
    initialisation runs under ``torch.random.fork_rng`` so the global RNG is left as it was); the
    returned policy is in eval mode and carries the table's input standardisation.
    """
    if not isinstance(table, OutcomeTable):
        raise TypeError(f"table must be an OutcomeTable, got {type(table).__name__}")
    cfg = PPOConfig() if cfg is None else cfg
    if not isinstance(cfg, PPOConfig):
        raise TypeError(f"cfg must be a PPOConfig, got {type(cfg).__name__}")
    n = len(table)
    gen = torch.Generator().manual_seed(cfg.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        policy = PolicyNetwork(table.state_dim, cfg.hidden)
    policy.set_input_normalization(table.states.mean(0), table.states.std(0, unbiased=False))
    policy.train()
    opt = torch.optim.Adam(policy.parameters(), lr=cfg.lr, eps=1e-5, foreach=True)  # foreach: one fused pass on CPU too
    scale = latency_scale(table, cfg.latency_norm)
    t_scale = token_scale(table)

    has_vl = bool(table.is_vl.any())
    base_vl_acc = float(table.correct_without[table.is_vl].double().mean()) if has_vl else math.nan
    dual = None
    if has_vl:
        dual = DualAscent(cfg.lambda_init, cfg.dual_lr, floor=base_vl_acc - cfg.tau, min_value=0.0,
                          max_value=cfg.lambda_max)

    history: list[dict[str, Any]] = []
    use_rates: list[float] = []
    steps = range(cfg.steps)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="PPO", unit="update")
    for k in steps:
        alpha = alpha_schedule(k, cfg.steps, cfg.alpha_final, cfg.alpha_ramp)
        if cfg.anneal_lr:
            for group in opt.param_groups:
                group["lr"] = cfg.lr * (1.0 - k / cfg.steps)
        lam = dual.value if dual is not None else cfg.lambda_init
        if n >= cfg.batch_size:
            idx = torch.randperm(n, generator=gen)[: cfg.batch_size]
        else:  # tiny tables (tests): with replacement, so the batch size is what was asked
            idx = torch.randint(n, (cfg.batch_size,), generator=gen)
        states = table.states[idx]
        actions, old_logp, old_values = policy.act(states, generator=gen)
        use = actions.bool()
        correct = torch.where(use, table.correct_with[idx], table.correct_without[idx])
        cost = torch.where(use, table.cost_with_ms[idx], table.cost_without_ms[idx])
        is_vl = table.is_vl[idx]
        tokens = torch.where(use, table.tokens_with[idx], table.tokens_without[idx])
        r = reward(correct, use, cost, table.cost_without_ms[idx], alpha, cfg.gamma, table.needs_audio[idx],
                   latency_scale=scale, tokens=tokens, base_tokens=table.tokens_without[idx], token_scale=t_scale,
                   token_weight=cfg.token_weight)
        r = r - retention_penalty(correct, is_vl, lam)
        returns = r
        adv = normalize_advantages(returns - old_values)

        sums: dict[str, float] = {}
        n_steps = 0
        epochs_run = 0
        for _ in range(cfg.epochs):
            perm = torch.randperm(cfg.batch_size, generator=gen)
            epoch_kl, epoch_steps = 0.0, 0
            for start in range(0, cfg.batch_size, cfg.minibatch_size):
                mb = perm[start:start + cfg.minibatch_size]
                new_logp, entropy, values = policy.evaluate(states[mb], actions[mb])
                loss, st = ppo_loss(new_logp, old_logp[mb], adv[mb], values, returns[mb], entropy,
                                    clip=cfg.clip, vf_coef=cfg.vf_coef, ent_coef=cfg.ent_coef)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
                opt.step()
                for key, v in st.items():
                    sums[key] = sums.get(key, 0.0) + v
                n_steps += 1
                epoch_kl += st["approx_kl"]
                epoch_steps += 1
            epochs_run += 1
            if cfg.target_kl is not None and epoch_kl / epoch_steps > cfg.target_kl:
                break

        if has_vl and bool(is_vl.any()):
            paired = (correct[is_vl].double() - table.correct_without[idx][is_vl].double()).mean()
            vl_measured = min(1.0, max(0.0, base_vl_acc + float(paired)))
            dual.update(vl_measured)
        else:
            vl_measured = math.nan
        use_rate = float(use.float().mean())
        use_rates.append(use_rate)
        row: dict[str, Any] = {
            "update": k,
            "alpha": alpha,
            "lambda": lam,
            "use_rate": use_rate,
            "mean_reward": float(r.mean()),
            "accuracy": float(correct.float().mean()),
            "vl_accuracy": vl_measured,
            "vl_floor": dual.floor if dual is not None else math.nan,
            **{key: v / n_steps for key, v in sums.items() if key != "loss"},
            "explained_variance": explained_variance(old_values, returns),
            "epochs_run": epochs_run,
            "collapse": detect_collapse(use_rates, cfg.collapse_low, cfg.collapse_high, cfg.collapse_window),
        }
        history.append(row)
        if log is not None:
            log(row)
    policy.eval()
    if history[-1]["collapse"] is not None:
        warnings.warn(f"Stage B policy collapsed to {history[-1]['collapse']!r} (mean sampled use rate over the "
                      f"last {cfg.collapse_window} updates outside ({cfg.collapse_low}, {cfg.collapse_high}))",
                      stacklevel=2)
    return policy, history


def evaluate_policy(policy: PolicyNetwork, table: OutcomeTable, low: float = 0.02,
                    high: float = 0.98) -> dict[str, Any]:
    """The deterministic policy's decisions on ``table`` scored by :func:`evaluate_actions`, plus
    ``collapse`` (:func:`detect_collapse` of its use rate with ``low`` / ``high``)."""
    if not isinstance(policy, PolicyNetwork):
        raise TypeError(f"policy must be a PolicyNetwork, got {type(policy).__name__}")
    use = policy.decide(table.states)
    out: dict[str, Any] = evaluate_actions(table, use)
    out["collapse"] = detect_collapse(out["use_rate"], low, high)
    return out
