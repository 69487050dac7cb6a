"""The `mean_variance` objective: the policy climbs mean − λ·std of the members' returns, through the model.

Every member imagines its own particle from each start state (`rollouts.py`); the
policy is updated by differentiating the Markowitz objective over those particle
returns, a value function trained on imagined λ-returns carries the tail, and the
entropy temperature is tuned to a target entropy. With `policy.model_start_share` > 0
a share of the start states are model states reached by longer no-gradient rollouts of
the current policy (the double horizon of design §1.4).
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from umpo_dist.config import Config
from umpo_dist.data.replay import DataNeeds
from umpo_dist.devices import state_to_cpu, to_tensors
from umpo_dist.envs.spec import EnvSpec
from umpo_dist.models.ensemble import build_ensemble
from umpo_dist.models.policy import ValueFunction, build_policy
from umpo_dist.numerical_guard import NumericalGuard
from umpo_dist.objectives.base import register_objective
from umpo_dist.objectives.rollouts import (
    TRANSITION_KEYS,
    ModelTransitions,
    Rollout,
    branched_rollouts,
    imagine_rollout,
    lambda_returns,
    particle_returns,
    state_box,
)


def mean_variance_objective(returns: torch.Tensor, risk_lambda: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Markowitz objective over the members' returns of each start state.

    `returns` (E, B) → (objective, mean part, std part), each averaged over start
    states: `mean_e R − λ · std_e R`. With λ > 0, states where the members disagree
    are worth less, so the policy avoids exploiting model errors.
    """
    mean = returns.mean(0)
    std = returns.std(0, unbiased=False) if returns.shape[0] > 1 else torch.zeros_like(mean)
    return (mean - risk_lambda * std).mean(), mean.mean(), std.mean()



@register_objective("mean_variance")
class MeanVarianceObjective:
    def __init__(self, cfg: Config, spec: EnvSpec, device: torch.device | str = "cpu"):
        torch.manual_seed(cfg.train.seed + 1)
        self.cfg = cfg.policy
        self.risk_lambda = cfg.mean_variance.risk_lambda
        self.elites_only = cfg.model.rollout_members == "elites"
        self.needs = DataNeeds(start_states=cfg.policy.start_states, transitions=cfg.policy.real_critic_batch)
        self.device = torch.device(device)
        self.policy = build_policy(spec, cfg.policy).to(self.device)
        action_dim = self.policy.action_dim
        self.q_critic = cfg.policy.critic == "q"
        self.value = ValueFunction(spec.obs_dim, cfg.policy.hidden_layers, cfg.policy.hidden_size,
                                   cfg.policy.value_members, action_dim if self.q_critic else 0,
                                   cfg.policy.value_layer_norm, cfg.policy.value_dropout).to(self.device)
        self.target_value = copy.deepcopy(self.value).requires_grad_(False)
        # Model states for the double horizon's start states (not checkpointed: refilled after a resume).
        self.model_starts = (ModelTransitions(cfg.policy.model_start_buffer, spec.obs_dim, action_dim, self.device)
                             if cfg.policy.model_start_share else None)
        # The learner's own copy of the dynamics model, refreshed from the model learner's weights.
        self.model = build_ensemble(spec, cfg.model).to(self.device).requires_grad_(False)
        cfg = cfg.policy
        self.log_alpha = torch.tensor(np.log(cfg.init_temperature), dtype=torch.float32, device=self.device, requires_grad=True)
        self.target_entropy = -cfg.target_entropy_scale * action_dim
        self.actor_opt = torch.optim.Adam(self.policy.parameters(), lr=cfg.actor_lr)
        self.value_opt = torch.optim.Adam(self.value.parameters(), lr=cfg.value_lr)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=cfg.alpha_lr)
        self.updates = 0
        self.model_version = -1
        self.restarted_at = 0  # the model version of the last restart (`policy.restart_every`)
        self.critic_only = 0  # critic-only updates left after it (`policy.critic_warmup`)
        self.guard = NumericalGuard({
            "policy": self.policy, "value": self.value, "target_value": self.target_value,
            "actor_opt": self.actor_opt, "value_opt": self.value_opt,
        })

    def set_model_weights(self, weights: dict, version: int) -> None:
        self.model.load_state_dict(weights)
        self.model_version = version
        if self.cfg.restart_every and version - self.restarted_at >= self.cfg.restart_every:
            self.restart(version)
        if self.cfg.normalize_obs:  # the policy and the value see what the model sees
            norm, obs_dim = self.model.input_norm, self.policy.obs_dim
            for net in (self.policy, self.value, self.target_value):
                net.set_obs_stats(norm.mean[:obs_dim], norm.std[:obs_dim])

    def restart(self, version: int) -> None:
        """DHMBPO's restart on a new model (`policy.restart_every`): fresh Adam moments, no start states of the
        older model, and `policy.critic_warmup` critic-only updates next."""
        for opt in (self.actor_opt, self.value_opt, self.alpha_opt):
            opt.state.clear()
        if self.model_starts is not None:
            self.model_starts.clear()
        self.restarted_at = version
        self.critic_only = self.cfg.critic_warmup

    def _state_bounds(self):
        return state_box(self.model, self.policy.obs_dim, self.cfg.state_clip_sigmas, self.cfg.state_clip)

    def _start_states(self, replay_starts: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        """This update's start states: the replay's, with the share `policy.model_start_share` replaced by
        model states (double horizon, design §1.4).

        Every `policy.model_start_refresh` updates, no-gradient rollouts of the current policy from this
        update's replay starts, `policy.model_start_horizon` steps each, add the states they reach alive to a
        buffer of model states; the model share is drawn from that buffer, uniformly.
        """
        cfg = self.cfg
        n = round(cfg.model_start_share * len(replay_starts))
        if n == 0:
            return replay_starts
        if self.updates % cfg.model_start_refresh == 0 or not len(self.model_starts):
            reached = branched_rollouts(self.model, self.policy, replay_starts, cfg.model_start_horizon, low, high,
                                        self.elites_only, cfg.mean_rewards)
            alive = reached["terminated"] == 0
            self.model_starts.add({k: v[alive] for k, v in reached.items()})
        if not len(self.model_starts):  # every rollout ended at its first step
            return replay_starts
        return torch.cat([self.model_starts.sample(n)["next_obs"], replay_starts[n:]])

    def _track_value_bounds(self, rewards: torch.Tensor) -> None:
        """`policy.value_bounds`: move the value's [low, high] toward 1/(1 − γ) × the 1% and 99% quantiles of
        this update's imagined rewards, widened to include 0 (the value of an ended episode), at the rate
        `policy.value_lr` (set to them at the first update)."""
        q = torch.tensor([0.01, 0.99], device=rewards.device, dtype=rewards.dtype)
        low, high = torch.quantile(rewards.flatten(), q) / (1 - self.cfg.gamma)
        bounds = torch.stack([low.clamp(max=0), high.clamp(min=0)])
        if self.updates:
            bounds = torch.lerp(torch.stack([self.value.low, self.value.high]), bounds, self.cfg.value_lr)
        for net in (self.value, self.target_value):
            net.set_bounds(*bounds)

    def imagined_rewards(self, rollout: Rollout, data: dict) -> torch.Tensor:
        """The rewards (H, E, B) the particle returns and the value targets are built from.

        The model's own here; a variant shapes them (`mnm` adds its classifier's log-ratio).
        `data` is this update's replay answer.
        """
        return rollout.rewards

    def _critic_inputs(self, rollout: Rollout) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The actions (H+1, E, B, act) at the rollout's states that the critic is evaluated with, and their
        log-probabilities (H+1, E, B) (the soft value's entropy bonus); both None for a V function."""
        if not self.q_critic:
            return None, None
        return (torch.cat([rollout.actions, rollout.final_action[None]]),
                torch.cat([rollout.log_probs, rollout.final_log_prob[None]]))

    def _target_values(self, states: torch.Tensor, actions: torch.Tensor | None) -> torch.Tensor:
        """The pessimistic target critic's values at `states` (at `actions` for a Q function), clamped to the
        value bounds where `policy.value_bounds` is on: what every bootstrap is."""
        values = self.target_value.pessimistic(states, self.cfg.value_target_min, actions)
        return torch.clamp(values, self.value.low, self.value.high) if self.cfg.value_bounds else values

    @torch.no_grad()
    def _value_targets(self, rollout: Rollout, rewards: torch.Tensor, actions: torch.Tensor | None,
                       log_probs: torch.Tensor | None, soft: float | torch.Tensor) -> tuple[slice, torch.Tensor, torch.Tensor]:
        """Which rollout steps the critic learns at, their targets and the targets' weights, per
        `policy.value_targets`: "lambda", every imagined step but the last on its λ-return, weighted by the
        probability of being alive there; "start", the start states on each particle's H-step return with the
        target critic's tail (weight 1)."""
        cfg = self.cfg
        last = slice(-1, None) if cfg.value_targets == "start" else slice(None)  # where bootstraps are needed
        bootstrap = self._target_values(rollout.states[last], actions[last] if self.q_critic else None)
        if self.q_critic:  # the states' soft values
            bootstrap = bootstrap - soft * log_probs[last]
        if cfg.value_targets == "start":
            targets = particle_returns(rollout, bootstrap[0], cfg.gamma, rewards)[None]  # (1, E, B)
            at, weight = slice(0, 1), torch.ones_like(targets)
        else:
            targets = lambda_returns(rewards, rollout.continues, bootstrap, cfg.gamma, cfg.lambda_return)
            at, weight = slice(0, -1), rollout.alive[:-1]
        if self.q_critic:  # Q(s_t, a_t): a_t is given, so its own entropy bonus is not part of the target
            targets = targets + soft * log_probs[at]
        return at, targets, weight

    def _value_loss(self, rollout: Rollout, rewards: torch.Tensor, actions: torch.Tensor | None,
                    log_probs: torch.Tensor | None, soft: float | torch.Tensor) -> torch.Tensor:
        """Every value member regresses on the same targets (summed over members)."""
        if self.q_critic:
            actions, log_probs = actions.detach(), log_probs.detach()
        at, targets, weight = self._value_targets(rollout, rewards, actions, log_probs, soft)
        states = rollout.states.detach()[at]
        values = self.value.members_values(states, actions[at] if self.q_critic else None, dropout=True)
        errors = (values - targets) ** 2
        return (weight * errors).sum() / weight.sum().clamp_min(1e-6)

    def _real_value_loss(self, batch: dict[str, torch.Tensor], soft: float | torch.Tensor) -> torch.Tensor:
        """`policy.real_critic_batch`: every Q member regresses on real transitions' one-step soft targets
        r + γ(1 − terminated)(Q_target(s′, a′) − soft·log π(a′|s′)), a′ drawn from the policy (summed over
        members, like the imagined targets' loss)."""
        cfg = self.cfg
        with torch.no_grad():
            next_action, next_log_prob = self.policy(batch["next_obs"])
            bootstrap = self._target_values(batch["next_obs"], next_action)
            targets = batch["reward"] + cfg.gamma * (1 - batch["terminated"]) * (bootstrap - soft * next_log_prob)
        errors = (self.value.members_values(batch["obs"], batch["action"], dropout=True) - targets) ** 2
        return errors.sum() / len(targets)

    def update(self, data: dict) -> dict[str, float]:
        """One update from `data["start_states"]` (the replay's answer to `self.needs`)."""
        cfg = self.cfg
        start = torch.as_tensor(np.array(data["start_states"], dtype=np.float32), device=self.device)
        low, high = self._state_bounds()
        start = self._start_states(start, low, high)
        alpha = self.log_alpha.exp().detach()

        actor_steps = not self.critic_only  # after a restart, the critic learns the new model's values first
        with torch.set_grad_enabled(actor_steps):  # a critic-only update needs no graph through the policy
            rollout = imagine_rollout(self.model, self.policy, start, cfg.horizon, low, high, cfg.mean_rewards,
                                      final_action=self.q_critic, shuffle_members=cfg.propagation == "shuffled")
            rewards = self.imagined_rewards(rollout, data)
            soft = alpha if cfg.entropy_in_return else 0.0
            if cfg.entropy_in_return:  # a soft return: the entropy bonus of every step, discounted with its reward
                rewards = rewards - alpha * rollout.log_probs
            if cfg.value_bounds:
                self._track_value_bounds(rewards.detach())
            actions, log_probs = self._critic_inputs(rollout)
            # the tail: V(s_H), or the soft value Q(s_H, a_H) − α·log π(a_H|s_H) with a gradient through a_H
            tail = (self.value(rollout.states[-1], actions[-1]) - soft * log_probs[-1] if self.q_critic
                    else self.value(rollout.states[-1]))
            returns = particle_returns(rollout, tail, cfg.gamma, rewards)
            if self.elites_only:
                returns = returns[self.model.elite_mask]
            objective, ret_mean, ret_std = mean_variance_objective(returns, self.risk_lambda)
            alive = rollout.alive[:-1]
            entropy = -(alive * rollout.log_probs).sum() / alive.sum().clamp_min(1e-6)
            actor_loss = -objective if cfg.entropy_in_return else -(objective + alpha * entropy)
        self.actor_opt.zero_grad(set_to_none=True)
        if actor_steps:
            actor_loss.backward()
            actor_grad = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.grad_clip)
        else:
            actor_grad = torch.zeros(())

        value_loss = self._value_loss(rollout, rewards.detach(), actions, log_probs, soft)
        if cfg.real_critic_batch:
            real = to_tensors({k: data["transitions"][k] for k in TRANSITION_KEYS}, self.device)
            real_value_loss = self._real_value_loss(real, soft)
            value_loss = value_loss + real_value_loss
        self.value_opt.zero_grad(set_to_none=True)  # also drops the actor loss's gradient on the value net
        value_loss.backward()
        value_grad = torch.nn.utils.clip_grad_norm_(self.value.parameters(), cfg.grad_clip)
        if not self.guard.finite(actor_loss.detach(), actor_grad, value_loss.detach(), value_grad):
            # Skip the whole update: neither network moves on a non-finite loss or gradient.
            self.actor_opt.zero_grad(set_to_none=True)
            self.value_opt.zero_grad(set_to_none=True)
            self.guard.bad()
            return self.guard.metrics("policy")
        self.value_opt.step()
        if actor_steps:
            self.actor_opt.step()
            alpha_loss = -self.log_alpha * (self.target_entropy - entropy.detach())
            self.alpha_opt.zero_grad(set_to_none=True)
            alpha_loss.backward()
            self.alpha_opt.step()
        else:
            self.critic_only -= 1

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
            **({"policy/real_value_loss": float(real_value_loss.detach())} if cfg.real_critic_batch else {}),
            "policy/actor_grad_norm": float(actor_grad),
            "policy/epistemic": float(rollout.epistemic.detach().mean()),
            **({"policy/model_start_buffer": len(self.model_starts)} if self.cfg.model_start_share else {}),
            **({"policy/restarted_at": self.restarted_at} if cfg.restart_every else {}),
            **({"policy/value_low": float(self.value.low), "policy/value_high": float(self.value.high)}
               if self.cfg.value_bounds else {}),
        }

    def weights(self) -> dict:
        return state_to_cpu(self.policy.state_dict())

    def state(self) -> dict:
        return {
            "policy": self.weights(),
            "value": state_to_cpu(self.value.state_dict()),
            "target_value": state_to_cpu(self.target_value.state_dict()),
            "log_alpha": self.log_alpha.detach().cpu(),
            "actor_opt": self.actor_opt.state_dict(),
            "value_opt": self.value_opt.state_dict(),
            "alpha_opt": self.alpha_opt.state_dict(),
            "updates": self.updates,
            "restarted_at": self.restarted_at,
            "critic_only": self.critic_only,
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
        self.restarted_at = int(state.get("restarted_at", 0))  # checkpoints from before restarts: none yet
        self.critic_only = int(state.get("critic_only", 0))
