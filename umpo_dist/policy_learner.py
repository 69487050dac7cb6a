"""Improves the policy by differentiating the mean–variance objective through model rollouts."""

from __future__ import annotations

import copy

import numpy as np
import torch

from .config import ModelConfig, PolicyConfig
from .devices import state_to_cpu
from .ensemble import EnsembleDynamics
from .imagination import imagine_rollout, lambda_returns, mean_variance_objective, particle_returns
from .numerical_guard import NumericalGuard
from .policy import TanhGaussianPolicy, ValueFunction


class PolicyLearner:
    def __init__(
        self,
        cfg: PolicyConfig,
        model_cfg: ModelConfig,
        obs_dim: int,
        action_low,
        action_high,
        device: torch.device | str = "cpu",
        seed: int = 0,
    ):
        torch.manual_seed(seed + 1)
        self.cfg = cfg
        self.device = torch.device(device)
        self.policy = TanhGaussianPolicy(obs_dim, action_low, action_high, cfg.hidden_layers, cfg.hidden_size).to(self.device)
        self.value = ValueFunction(obs_dim, cfg.hidden_layers, cfg.hidden_size).to(self.device)
        self.target_value = copy.deepcopy(self.value).requires_grad_(False)
        action_dim = self.policy.action_dim
        # The learner's own copy of the dynamics model, refreshed from the model learner's weights.
        self.model = EnsembleDynamics(obs_dim, action_dim, model_cfg.ensemble_size, model_cfg.hidden_layers, model_cfg.hidden_size)
        self.model.to(self.device).requires_grad_(False)
        self.log_alpha = torch.tensor(np.log(cfg.init_temperature), dtype=torch.float32, device=self.device, requires_grad=True)
        self.target_entropy = -cfg.target_entropy_scale * action_dim
        self.actor_opt = torch.optim.Adam(self.policy.parameters(), lr=cfg.actor_lr)
        self.value_opt = torch.optim.Adam(self.value.parameters(), lr=cfg.value_lr)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=cfg.alpha_lr)
        self.updates = 0
        self.model_version = -1
        self.guard = NumericalGuard({
            "policy": self.policy, "value": self.value, "target_value": self.target_value,
            "actor_opt": self.actor_opt, "value_opt": self.value_opt,
        })

    def set_model_weights(self, weights: dict, version: int) -> None:
        self.model.load_state_dict(weights)
        self.model_version = version

    def _state_bounds(self):
        norm = self.model.input_norm
        obs_dim = self.policy.obs_dim
        mean, std = norm.mean[:obs_dim], norm.std[:obs_dim]
        k = self.cfg.state_clip_sigmas
        return mean - k * std, mean + k * std

    def update(self, start_states: np.ndarray) -> dict[str, float]:
        cfg = self.cfg
        start = torch.as_tensor(np.array(start_states, dtype=np.float32), device=self.device)
        low, high = self._state_bounds()
        alpha = self.log_alpha.exp().detach()

        rollout = imagine_rollout(self.model, self.policy, start, cfg.horizon, low, high)
        returns = particle_returns(rollout, self.value, cfg.gamma)
        objective, ret_mean, ret_std = mean_variance_objective(returns, cfg.risk_lambda)
        alive = rollout.alive[:-1]
        entropy = -(alive * rollout.log_probs).sum() / alive.sum().clamp_min(1e-6)
        actor_loss = -(objective + alpha * entropy)
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward()
        actor_grad = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.grad_clip)

        with torch.no_grad():
            states = rollout.states.detach()
            targets = lambda_returns(
                rollout.rewards.detach(), rollout.continues.detach(), self.target_value(states), cfg.gamma, cfg.lambda_return
            )
            weight = alive.detach()
        value_loss = (weight * (self.value(states[:-1]) - targets) ** 2).sum() / weight.sum().clamp_min(1e-6)
        self.value_opt.zero_grad(set_to_none=True)  # also drops the actor loss's gradient on the value net
        value_loss.backward()
        value_grad = torch.nn.utils.clip_grad_norm_(self.value.parameters(), cfg.grad_clip)
        if not self.guard.finite(actor_loss.detach(), actor_grad, value_loss.detach(), value_grad):
            # Skip the whole update: neither network moves on a non-finite loss or gradient.
            self.actor_opt.zero_grad(set_to_none=True)
            self.value_opt.zero_grad(set_to_none=True)
            self.guard.bad()
            return self.guard.metrics("policy")
        self.actor_opt.step()
        self.value_opt.step()

        alpha_loss = -self.log_alpha * (self.target_entropy - entropy.detach())
        self.alpha_opt.zero_grad(set_to_none=True)
        alpha_loss.backward()
        self.alpha_opt.step()

        with torch.no_grad():
            for p, tp in zip(self.value.parameters(), self.target_value.parameters()):
                tp.lerp_(p, cfg.target_tau)
        self.guard.good()
        self.updates += 1
        return {**self.guard.metrics("policy"),
            "policy/objective": float(objective.detach()),
            "policy/return_mean": float(ret_mean.detach()),
            "policy/return_std": float(ret_std.detach()),
            "policy/entropy": float(entropy.detach()),
            "policy/alpha": float(alpha),
            "policy/value_loss": float(value_loss.detach()),
            "policy/actor_grad_norm": float(actor_grad),
            "policy/epistemic": float(rollout.epistemic.detach().mean()),
        }

    def policy_weights(self) -> dict:
        return state_to_cpu(self.policy.state_dict())

    def state(self) -> dict:
        return {
            "policy": self.policy_weights(),
            "value": state_to_cpu(self.value.state_dict()),
            "target_value": state_to_cpu(self.target_value.state_dict()),
            "log_alpha": self.log_alpha.detach().cpu(),
            "actor_opt": self.actor_opt.state_dict(),
            "value_opt": self.value_opt.state_dict(),
            "alpha_opt": self.alpha_opt.state_dict(),
            "updates": self.updates,
        }

    def load_state(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.value.load_state_dict(state["value"])
        self.target_value.load_state_dict(state["target_value"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.value_opt.load_state_dict(state["value_opt"])
        self.alpha_opt.load_state_dict(state["alpha_opt"])
        self.updates = int(state["updates"])
