"""The `dyna` objective (MBPO, Janner et al. 2019): the model as a fast simulator for SAC.

Every update first branches `dyna.rollouts_per_update` rollouts of the current policy
off replay states, `dyna.rollout_length` model steps each, without gradients: each
step of each rollout is taken by one member drawn at random (among the elites with
`model.rollout_members: elites`), a sample of its Gaussian, and a rollout stops where
the termination head says it more likely ended than not. Those model transitions go
into a buffer the objective holds (`dyna.model_buffer_size`, oldest dropped first).
Then one SAC step on `dyna.batch_size` transitions, the share `dyna.real_ratio` from
the replay and the rest from the model buffer: twin Q critics regressed on
r + γ(1 − done)(min Q_target(s′, a′) − α log π(a′|s′)), slowly moving target critics,
the policy against the smaller Q, and α tuned to a target entropy.

The model buffer is not part of the checkpoint: after a resume it is rebuilt from new
rollouts (refilled in `model_buffer_size / (rollouts_per_update · rollout_length)`
updates). The networks, optimisers, α and the update count resume.
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
from umpo_dist.models.policy import ObservationInput, build_policy, mlp
from umpo_dist.numerical_guard import NumericalGuard
from umpo_dist.objectives.base import register_objective
from umpo_dist.objectives.rollouts import TRANSITION_KEYS, ModelTransitions, branched_rollouts, state_box

class TwinCritic(ObservationInput):
    """Q1(s, a) and Q2(s, a): the smaller of two critics keeps the policy from climbing one's overestimate."""

    def __init__(self, obs_dim: int, action_dim: int, hidden_layers: int = 2, hidden_size: int = 128):
        super().__init__()
        self.q1 = mlp(obs_dim + action_dim, 1, hidden_layers, hidden_size)
        self.q2 = mlp(obs_dim + action_dim, 1, hidden_layers, hidden_size)
        self._init_obs_stats(obs_dim)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([self.scale(obs), action], -1)
        return self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)


@register_objective("dyna")
class DynaObjective:
    def __init__(self, cfg: Config, spec: EnvSpec, device: torch.device | str = "cpu"):
        torch.manual_seed(cfg.train.seed + 1)
        self.cfg, self.dyna = cfg.policy, cfg.dyna
        self.elites_only = cfg.model.rollout_members == "elites"
        self.device = torch.device(device)
        self.real_batch = round(cfg.dyna.real_ratio * cfg.dyna.batch_size)
        self.model_batch = cfg.dyna.batch_size - self.real_batch
        self.needs = DataNeeds(start_states=cfg.dyna.rollouts_per_update if self.model_batch else 0,
                               transitions=self.real_batch)
        pcfg = cfg.policy
        self.policy = build_policy(spec, pcfg).to(self.device)
        self.critic = TwinCritic(spec.obs_dim, spec.action_dim, pcfg.hidden_layers, pcfg.hidden_size).to(self.device)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        # The learner's own copy of the dynamics model, refreshed from the model learner's weights.
        self.model = build_ensemble(spec, cfg.model).to(self.device).requires_grad_(False)
        self.model_buffer = ModelTransitions(cfg.dyna.model_buffer_size, spec.obs_dim, spec.action_dim, self.device)
        self.log_alpha = torch.tensor(np.log(pcfg.init_temperature), dtype=torch.float32, device=self.device,
                                      requires_grad=True)
        self.target_entropy = -pcfg.target_entropy_scale * spec.action_dim
        self.actor_opt = torch.optim.Adam(self.policy.parameters(), lr=pcfg.actor_lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=pcfg.value_lr)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=pcfg.alpha_lr)
        self.updates = 0
        self.model_version = -1
        self.guard = NumericalGuard({
            "policy": self.policy, "critic": self.critic, "target_critic": self.target_critic,
            "actor_opt": self.actor_opt, "critic_opt": self.critic_opt,
        })

    def set_model_weights(self, weights: dict, version: int) -> None:
        self.model.load_state_dict(weights)
        self.model_version = version
        if self.cfg.normalize_obs:  # the policy and the critics see what the model sees
            norm, obs_dim = self.model.input_norm, self.policy.obs_dim
            for net in (self.policy, self.critic, self.target_critic):
                net.set_obs_stats(norm.mean[:obs_dim], norm.std[:obs_dim])

    def branched_rollouts(self, start: torch.Tensor) -> dict[str, torch.Tensor]:
        """Model transitions of the current policy from `start` (B, obs), `dyna.rollout_length` steps at most."""
        low, high = state_box(self.model, self.policy.obs_dim, self.cfg.state_clip_sigmas, self.cfg.state_clip)
        return branched_rollouts(self.model, self.policy, start, self.dyna.rollout_length, low, high,
                                 self.elites_only, self.cfg.mean_rewards)

    def update(self, data: dict) -> dict[str, float]:
        """Branched rollouts from `data["start_states"]` into the model buffer, then one SAC step on
        `data["transitions"]` (real) mixed with a draw from the model buffer."""
        parts, metrics = [], {}
        if self.real_batch:
            parts.append(to_tensors({k: data["transitions"][k] for k in TRANSITION_KEYS}, self.device))
        if self.model_batch:
            start = torch.as_tensor(np.array(data["start_states"], dtype=np.float32), device=self.device)
            imagined = self.branched_rollouts(start)
            self.model_buffer.add(imagined)
            parts.append(self.model_buffer.sample(self.model_batch))
            metrics = {"dyna/model_buffer_size": len(self.model_buffer),
                       "dyna/rollout_steps": len(imagined["reward"]) / len(start),
                       "dyna/model_reward_mean": float(imagined["reward"].mean())}
        batch = {k: torch.cat([part[k] for part in parts]) for k in TRANSITION_KEYS}
        return {**self.sac_step(batch), **metrics}

    def sac_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One SAC update of critics, policy and temperature on `batch` (tensors keyed like `TRANSITION_KEYS`)."""
        cfg = self.cfg
        alpha = self.log_alpha.exp().detach()
        with torch.no_grad():
            next_action, next_logp = self.policy(batch["next_obs"])
            next_q = torch.minimum(*self.target_critic(batch["next_obs"], next_action)) - alpha * next_logp
            target = batch["reward"] + cfg.gamma * (1 - batch["terminated"]) * next_q
        q1, q2 = self.critic(batch["obs"], batch["action"])
        critic_loss = 0.5 * (((q1 - target) ** 2).mean() + ((q2 - target) ** 2).mean())
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        critic_grad = torch.nn.utils.clip_grad_norm_(self.critic.parameters(), cfg.grad_clip)

        action, logp = self.policy(batch["obs"])
        self.critic.requires_grad_(False)  # the actor's loss moves the policy only
        try:
            q = torch.minimum(*self.critic(batch["obs"], action))
        finally:
            self.critic.requires_grad_(True)
        actor_loss = (alpha * logp - q).mean()
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward()
        actor_grad = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.grad_clip)
        if not self.guard.finite(critic_loss.detach(), critic_grad, actor_loss.detach(), actor_grad):
            # Skip the whole update: no network moves on a non-finite loss or gradient.
            self.critic_opt.zero_grad(set_to_none=True)
            self.actor_opt.zero_grad(set_to_none=True)
            self.guard.bad()
            return self.guard.metrics("policy")
        self.critic_opt.step()
        self.actor_opt.step()

        entropy = -logp.detach().mean()
        alpha_loss = -self.log_alpha * (self.target_entropy - entropy)
        self.alpha_opt.zero_grad(set_to_none=True)
        alpha_loss.backward()
        self.alpha_opt.step()

        with torch.no_grad():
            for p, tp in zip(self.critic.parameters(), self.target_critic.parameters()):
                tp.lerp_(p, cfg.target_tau)
        self.guard.good()
        self.updates += 1
        return {**self.guard.metrics("policy"),
            "policy/critic_loss": float(critic_loss.detach()),
            "policy/q_mean": float(q.detach().mean()),
            "policy/actor_loss": float(actor_loss.detach()),
            "policy/entropy": float(entropy),
            "policy/alpha": float(alpha),
            "policy/actor_grad_norm": float(actor_grad),
        }

    def weights(self) -> dict:
        return state_to_cpu(self.policy.state_dict())

    def _checkpointed(self) -> dict:
        """The networks and optimisers `state()` holds, by name (the model buffer is not among them)."""
        return {"policy": self.policy, "critic": self.critic, "target_critic": self.target_critic,
                "actor_opt": self.actor_opt, "critic_opt": self.critic_opt, "alpha_opt": self.alpha_opt}

    def state(self) -> dict:
        parts = {name: state_to_cpu(part.state_dict()) if isinstance(part, torch.nn.Module) else part.state_dict()
                 for name, part in self._checkpointed().items()}
        return {**parts, "log_alpha": self.log_alpha.detach().cpu(), "updates": self.updates}

    def load_state(self, state: dict) -> None:
        for name, part in self._checkpointed().items():
            part.load_state_dict(state[name])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.updates = int(state["updates"])
