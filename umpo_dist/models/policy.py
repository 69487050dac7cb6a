"""The explicit policy (tanh-squashed Gaussian) and the value function."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from umpo_dist.models.ensemble import EnsembleLinear, check_dropout, check_layer_norm

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


def bounded_log_std(raw, tanh=torch.tanh):
    """The network's raw log-std output mapped smoothly into [LOG_STD_MIN, LOG_STD_MAX] (NumPy: pass `np.tanh`)."""
    return LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (tanh(raw) + 1)


def mlp(in_size: int, out_size: int, hidden_layers: int, hidden_size: int, layer_norm_eps: float = 0.0) -> nn.Sequential:
    """Linear and SiLU layers; with `layer_norm_eps` > 0 every linear layer after the first sees its input
    layer-normalised (no learned scale or shift)."""
    layers: list[nn.Module] = []
    size = in_size
    for _ in range(hidden_layers):
        layers += [nn.Linear(size, hidden_size), nn.SiLU()]
        if layer_norm_eps:  # in front of the next linear layer
            layers.append(nn.LayerNorm(hidden_size, eps=layer_norm_eps, elementwise_affine=False))
        size = hidden_size
    layers.append(nn.Linear(size, out_size))
    return nn.Sequential(*layers)


class ObservationInput(nn.Module):
    """Observations scaled by `(obs − obs_mean) / obs_std` before the network; identity until set.

    The statistics are buffers, so they travel with the weights (published weights,
    checkpoints, `policy.pt`); a state dict from before they existed loads as identity.
    """

    def _init_obs_stats(self, obs_dim: int) -> None:
        self.register_buffer("obs_mean", torch.zeros(obs_dim))
        self.register_buffer("obs_std", torch.ones(obs_dim))

    def set_obs_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        with torch.no_grad():
            self.obs_mean.copy_(mean)
            self.obs_std.copy_(std)

    def scale(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs - self.obs_mean) / self.obs_std

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.setdefault(prefix + "obs_mean", torch.zeros_like(self.obs_mean))
        state_dict.setdefault(prefix + "obs_std", torch.ones_like(self.obs_std))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class TanhGaussianPolicy(ObservationInput):
    """π(a|s): a Gaussian squashed by tanh and scaled to the action box; reparameterised samples."""

    def __init__(self, obs_dim: int, action_low, action_high, hidden_layers: int = 2, hidden_size: int = 128):
        super().__init__()
        low = torch.as_tensor(np.asarray(action_low, np.float32))
        high = torch.as_tensor(np.asarray(action_high, np.float32))
        self.obs_dim, self.action_dim = obs_dim, low.numel()
        self.net = mlp(obs_dim, 2 * self.action_dim, hidden_layers, hidden_size)
        self._init_obs_stats(obs_dim)
        self.register_buffer("action_scale", (high - low) / 2)
        self.register_buffer("action_bias", (high + low) / 2)

    def set_initial_std(self, std: float) -> None:
        """Make the pre-tanh action std start near `std` for any observation (the log-std head's bias)."""
        target = 2 * (math.log(std) - LOG_STD_MIN) / (LOG_STD_MAX - LOG_STD_MIN) - 1
        head = self.net[-1]
        with torch.no_grad():
            head.bias[self.action_dim:] = math.atanh(target)
            head.weight[self.action_dim:] *= 0.01

    def _gaussian(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, log_std = self.net(self.scale(obs)).chunk(2, -1)
        return mu, bounded_log_std(log_std)

    def forward(self, obs: torch.Tensor, deterministic: bool = False):
        """Returns an action in the env's box and its log-probability (summed over action dims)."""
        mu, log_std = self._gaussian(obs)
        std = log_std.exp()
        u = mu if deterministic else mu + std * torch.randn_like(mu)
        y = torch.tanh(u)
        # log N(u; mu, std) − log |d a / d u|, with the numerically stable form of log(1 − tanh²u).
        gauss = -0.5 * (((u - mu) / std) ** 2) - log_std - 0.5 * math.log(2 * math.pi)
        log_det = 2 * (math.log(2) - u - F.softplus(-2 * u)) + torch.log(self.action_scale)
        logp = (gauss - log_det).sum(-1)
        return y * self.action_scale + self.action_bias, logp

    @torch.inference_mode()
    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """Actions for a batch of observations; no log-probability (this is the env workers' hot path)."""
        param = self.action_scale
        mu, log_std = self._gaussian(torch.as_tensor(obs, dtype=param.dtype, device=param.device))
        u = mu if deterministic else mu + log_std.exp() * torch.randn_like(mu)
        return (torch.tanh(u) * self.action_scale + self.action_bias).cpu().numpy()


def build_policy(spec, cfg) -> TanhGaussianPolicy:
    """The policy network for an environment (`EnvSpec`) and a `PolicyConfig`; every role builds it here."""
    policy = TanhGaussianPolicy(spec.obs_dim, spec.action_low, spec.action_high, cfg.hidden_layers, cfg.hidden_size)
    if cfg.init_std is not None:
        policy.set_initial_std(cfg.init_std)
    return policy


class ValueFunction(ObservationInput):
    """V(s), or with `action_dim` > 0 Q(s, a); with `members` > 1 an ensemble of them as one batched network.

    `forward` gives the members' mean; `members_values` every member's value (or those in `index`). A Q
    function takes the scaled observation and the action side by side.
    The network's output `y` is read as `center + half_width · y` with the buffers `low`, `high`
    (−1 and 1, the identity, until `set_bounds`), so a value of any scale starts within reach.
    """

    def __init__(self, obs_dim: int, hidden_layers: int = 2, hidden_size: int = 128, members: int = 1,
                 action_dim: int = 0, layer_norm: bool = False, dropout: float = 0.0):
        super().__init__()
        self.members, self.action_dim, self.dropout = members, action_dim, check_dropout(dropout)
        self.norm_eps = 1e-5 if layer_norm else 0.0
        self.register_buffer("layer_norm_eps", torch.tensor([self.norm_eps] if layer_norm else [], dtype=torch.float64))
        if members == 1:
            self.net = mlp(obs_dim + action_dim, 1, hidden_layers, hidden_size, self.norm_eps)
        else:
            sizes = [obs_dim + action_dim] + [hidden_size] * hidden_layers + [1]
            self.layers = nn.ModuleList(EnsembleLinear(members, a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self._init_obs_stats(obs_dim)
        self.register_buffer("low", torch.tensor(-1.0))
        self.register_buffer("high", torch.tensor(1.0))

    def set_bounds(self, low: torch.Tensor, high: torch.Tensor) -> None:
        with torch.no_grad():
            self.low.copy_(low)
            self.high.copy_(high)

    def _output(self, y: torch.Tensor) -> torch.Tensor:
        return (self.high + self.low) / 2 + (self.high - self.low) / 2 * y

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.setdefault(prefix + "low", torch.tensor(-1.0))  # weights saved before the bounds: identity
        state_dict.setdefault(prefix + "high", torch.tensor(1.0))
        check_layer_norm(state_dict, prefix + "layer_norm_eps", self.layer_norm_eps, "value-function (policy.value_layer_norm)")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def members_values(self, obs: torch.Tensor, action: torch.Tensor | None = None,
                       index: torch.Tensor | None = None, dropout: bool = False) -> torch.Tensor:
        """(N, ...) values of members `index` (default: all) at `obs` (..., obs_dim) and, for a Q function,
        `action` (..., action_dim). `dropout`: drop hidden units at the rate `self.dropout` (the critic's
        regression losses)."""
        p = self.dropout if dropout else 0.0
        x = self.scale(obs)
        if self.action_dim:
            if action is None:
                raise ValueError("a Q function (action_dim > 0) is evaluated at an action: none was given")
            x = torch.cat([x, action.to(x.dtype)], -1)
        if self.members == 1:
            last = len(self.net) - 1
            for k, layer in enumerate(self.net):
                x = layer(x)
                if p and k < last and isinstance(layer, nn.Linear):
                    x = F.dropout(x, p)
            return self._output(x.squeeze(-1)).unsqueeze(0)
        lead = x.shape[:-1]
        n = self.members if index is None else len(index)
        x = x.reshape(1, -1, x.shape[-1]).expand(n, -1, -1)
        for i, layer in enumerate(self.layers):
            if i and self.norm_eps:
                x = F.layer_norm(x, x.shape[-1:], eps=self.norm_eps)
            weight, bias = (layer.weight, layer.bias) if index is None else (layer.weight[index], layer.bias[index])
            x = torch.baddbmm(bias, x, weight)
            if i < len(self.layers) - 1:
                x = F.silu(F.dropout(x, p) if p else x)
        return self._output(x.reshape(n, *lead))

    def forward(self, obs: torch.Tensor, action: torch.Tensor | None = None) -> torch.Tensor:
        return self.members_values(obs, action).mean(0)

    def pessimistic(self, obs: torch.Tensor, subset: int, action: torch.Tensor | None = None) -> torch.Tensor:
        """The smallest value among `subset` members drawn at random (all of them if `subset` ≥ members)."""
        index = None if subset >= self.members else torch.randperm(self.members, device=self.obs_mean.device)[:subset]
        return self.members_values(obs, action, index).min(0).values
