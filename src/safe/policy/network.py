"""The Stage B policy network and the Stage C gate MLP.

* :class:`PolicyNetwork` — the actor-critic that PPO trains: two small tanh MLPs on the same
  (standardised) state, an action head with two logits (``0`` = skip audio, ``1`` = use audio;
  a Bernoulli decision written as a 2-way categorical) and a scalar value head.
* :class:`GateMLP` — the distilled deployment gate: one hidden ReLU layer and one logit.

Both standardise their input with buffers (``input_mean`` / ``input_std``, identity until
:meth:`set_input_normalization` is called, and saved in the ``state_dict``): the state concatenates
embeddings and confidence scores of very different scales, and a network that carries its own
normalisation can be deployed on raw states with nothing else to ship.

Action ``1`` means "consult audio" everywhere in :mod:`safe.policy`.
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["PolicyNetwork", "GateMLP", "USE_AUDIO", "SKIP_AUDIO"]

SKIP_AUDIO = 0
USE_AUDIO = 1


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


class _Standardize(nn.Module):
    """``(x - mean) / std`` with buffers; identity until set."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("input_mean", torch.zeros(dim))
        self.register_buffer("input_std", torch.ones(dim))

    def set(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        dim = self.input_mean.shape[0]
        mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        std = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
        if mean.shape[0] != dim:
            raise ValueError(f"mean must have length state_dim={dim}, got {mean.shape[0]}")
        if std.shape[0] != dim:
            raise ValueError(f"std must have length state_dim={dim}, got {std.shape[0]}")
        if not bool(torch.isfinite(mean).all() and torch.isfinite(std).all()):
            raise ValueError("mean and std must be finite")
        # A constant feature has std 0; dividing by 1 keeps it at 0 after centring instead of
        # blowing it up to inf.
        std = torch.where(std > 1e-6, std, torch.ones_like(std))
        self.input_mean.copy_(mean)
        self.input_std.copy_(std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.input_mean) / self.input_std


def _check_states(states: torch.Tensor, dim: int) -> torch.Tensor:
    if not isinstance(states, torch.Tensor):
        raise TypeError(f"states must be a torch.Tensor, got {type(states).__name__}")
    if states.dim() != 2 or states.shape[1] != dim:
        raise ValueError(f"states must have shape (n, {dim}), got {tuple(states.shape)}")
    return states.float()


def _layer(fan_in: int, fan_out: int, gain: float) -> nn.Linear:
    # Orthogonal init with per-layer gain (the usual PPO choice): a small gain on the action head
    # makes the initial policy ~50/50, i.e. maximal entropy, so neither action is favoured before
    # any reward has been seen (a guard against early collapse, docs/design.md).
    layer = nn.Linear(fan_in, fan_out)
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


class PolicyNetwork(nn.Module):
    """Actor-critic for the one-step "consult audio?" decision.

    Architecture (``d = state_dim``, ``h = hidden``): standardise -> actor ``d -> h -> h -> 2``
    (tanh) and critic ``d -> h -> h -> 1`` (tanh); separate trunks so that the value regression
    does not pull on the policy's features. Parameters:
    ``2 * (d*h + h + h*h + h) + 3*h + 3`` (e.g. d = 2048, h = 64: 270,787, well under the proposal's
    2M budget).

    Shapes: ``states`` (n, d) float -> ``forward`` gives ``logits`` (n, 2) and ``value`` (n,).
    """

    def __init__(self, state_dim: int, hidden: int = 64) -> None:
        super().__init__()
        self.state_dim = _positive_int("state_dim", state_dim)
        self.hidden = _positive_int("hidden", hidden)
        self.norm = _Standardize(self.state_dim)
        h, d = self.hidden, self.state_dim
        self.actor = nn.Sequential(_layer(d, h, math.sqrt(2)), nn.Tanh(), _layer(h, h, math.sqrt(2)), nn.Tanh(),
                                   _layer(h, 2, 0.01))
        self.critic = nn.Sequential(_layer(d, h, math.sqrt(2)), nn.Tanh(), _layer(h, h, math.sqrt(2)), nn.Tanh(),
                                    _layer(h, 1, 1.0))

    def set_input_normalization(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Standardise inputs with ``mean`` / ``std`` (each (d,)); a std <= 1e-6 is taken as 1."""
        self.norm.set(mean, std)

    def num_parameters(self) -> int:
        """Trainable parameter count (the normalisation buffers are not parameters)."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``states`` (n, d) -> ``(logits (n, 2), value (n,))``; column 1 of the logits is "use audio"."""
        x = self.norm(_check_states(states, self.state_dim))
        return self.actor(x), self.critic(x).squeeze(-1)

    def evaluate(self, states: torch.Tensor, actions: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Log-probability of given ``actions`` ((n,) in {0, 1}), the policy entropy and the value, each (n,).

        This is what PPO differentiates: the new policy's log-prob of the actions sampled before
        the update.
        """
        logits, value = self(states)
        logp_all = torch.log_softmax(logits, dim=-1)
        a = actions.long().reshape(-1, 1)
        if a.shape[0] != logits.shape[0]:
            raise ValueError(f"actions must have length {logits.shape[0]} (rows of states), got {a.shape[0]}")
        logp = logp_all.gather(1, a).squeeze(1)
        entropy = -(logp_all.exp() * logp_all).sum(-1)
        return logp, entropy, value

    def use_probability(self, states: torch.Tensor) -> torch.Tensor:
        """P(use audio | state), (n,)."""
        logits, _ = self(states)
        return torch.softmax(logits, dim=-1)[:, USE_AUDIO]

    def act(self, states: torch.Tensor, deterministic: bool = False, generator: torch.Generator | None = None
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Choose actions for ``states`` (n, d): ``(actions (n,) int64 in {0,1}, log_probs (n,), values (n,))``.

        ``deterministic=True`` takes the more likely action (ties -> skip audio, the cheap and
        safe one); otherwise it samples, from ``generator`` if given (reproducible). Runs without
        gradient: acting is data collection, learning goes through :meth:`evaluate`.
        """
        with torch.no_grad():
            logits, value = self(states)
            logp_all = torch.log_softmax(logits, dim=-1)
            if deterministic:
                actions = (logits[:, USE_AUDIO] > logits[:, SKIP_AUDIO]).long()
            else:
                actions = torch.multinomial(logp_all.exp(), 1, generator=generator).squeeze(1)
            logp = logp_all.gather(1, actions.unsqueeze(1)).squeeze(1)
        return actions, logp, value

    def decide(self, states: torch.Tensor) -> torch.Tensor:
        """Deterministic decision as a bool (n,) tensor (True = use audio)."""
        return self.act(states, deterministic=True)[0].bool()


class GateMLP(nn.Module):
    """Stage C gate: a 2-layer MLP (one hidden ReLU layer) giving the logit of "use audio".

    Architecture: standardise -> ``d -> hidden`` (ReLU) -> ``hidden -> 1``; parameters
    ``d*hidden + 2*hidden + 1``. Shapes: ``states`` (n, d) -> ``forward`` logit (n,);
    :meth:`decide` -> bool (n,).
    """

    def __init__(self, state_dim: int, hidden: int = 32) -> None:
        super().__init__()
        self.state_dim = _positive_int("state_dim", state_dim)
        self.hidden = _positive_int("hidden", hidden)
        self.norm = _Standardize(self.state_dim)
        self.net = nn.Sequential(nn.Linear(self.state_dim, self.hidden), nn.ReLU(), nn.Linear(self.hidden, 1))

    def set_input_normalization(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Standardise inputs with ``mean`` / ``std`` (each (d,)); a std <= 1e-6 is taken as 1."""
        self.norm.set(mean, std)

    def num_parameters(self) -> int:
        """Trainable parameter count."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """``states`` (n, d) -> logit of "use audio", (n,)."""
        return self.net(self.norm(_check_states(states, self.state_dim))).squeeze(-1)

    def decide(self, states: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
        """Use audio where ``sigmoid(logit) > threshold`` (strict: p = threshold -> skip); bool (n,)."""
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r}")
        with torch.no_grad():
            return torch.sigmoid(self(states)) > threshold
