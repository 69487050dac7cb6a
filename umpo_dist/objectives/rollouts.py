"""Differentiable rollouts in the ensemble model, shared by the objectives that learn through it.

From each start state every member rolls out its own particle for `H` steps: the
policy's reparameterised action, then a reparameterised sample of that member's
Gaussian, so the particle return is a differentiable function of the policy
parameters. Continuation probabilities from the termination head form a soft alive
mask (so the policy gets a gradient away from terminal states), and a learned value
function carries the tail beyond `H`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from umpo_dist.models.ensemble import EnsembleDynamics
from umpo_dist.models.policy import TanhGaussianPolicy, ValueFunction


@dataclass
class Rollout:
    states: torch.Tensor  # (H+1, E, B, obs)
    actions: torch.Tensor  # (H, E, B, act): the policy's reparameterised actions
    rewards: torch.Tensor  # (H, E, B)
    continues: torch.Tensor  # (H, E, B): probability of not terminating at step t
    alive: torch.Tensor  # (H+1, E, B): probability of being alive before step t
    log_probs: torch.Tensor  # (H, E, B)
    epistemic: torch.Tensor  # (H, B): mean epistemic variance over target dims


def imagine_rollout(
    model: EnsembleDynamics,
    policy: TanhGaussianPolicy,
    start_states: torch.Tensor,
    horizon: int,
    state_low: torch.Tensor | None = None,
    state_high: torch.Tensor | None = None,
    mean_rewards: bool = False,
) -> Rollout:
    """Roll the policy out in the model, one particle per member from each start state.

    `mean_rewards`: rewards are the members' predicted means (the next states are still sampled).
    """
    s = start_states.unsqueeze(0).expand(model.ensemble_size, -1, -1)
    alive = torch.ones(s.shape[:2], device=s.device)
    states, actions, rewards, continues, alives, log_probs, epistemic = [s], [], [], [], [alive], [], []
    for _ in range(horizon):
        action, logp = policy(s)
        s, reward, cont, epi = model.step(s, action, mean_reward=mean_rewards)
        if state_low is not None:
            # Keeps a compounding model error from carrying particles into regions never seen.
            s = torch.maximum(torch.minimum(s, state_high), state_low)
        alive = alive * cont
        states.append(s)
        actions.append(action)
        rewards.append(reward)
        continues.append(cont)
        alives.append(alive)
        log_probs.append(logp)
        epistemic.append(epi.mean(-1))
    return Rollout(
        torch.stack(states), torch.stack(actions), torch.stack(rewards), torch.stack(continues), torch.stack(alives),
        torch.stack(log_probs), torch.stack(epistemic),
    )


def particle_returns(rollout: Rollout, value: ValueFunction, gamma: float,
                     rewards: torch.Tensor | None = None) -> torch.Tensor:
    """Σ_t γ^t alive_t r_t + γ^H alive_H V(s_H), per particle: (E, B).

    `rewards` (H, E, B) replaces the rollout's own (e.g. rewards with an entropy bonus).
    """
    rewards = rollout.rewards if rewards is None else rewards
    horizon = rewards.shape[0]
    discounts = gamma ** torch.arange(horizon, device=rewards.device, dtype=rewards.dtype)
    ret = (discounts[:, None, None] * rollout.alive[:-1] * rewards).sum(0)
    return ret + gamma**horizon * rollout.alive[-1] * value(rollout.states[-1])


def lambda_returns(rewards, continues, values, gamma: float, lam: float) -> torch.Tensor:
    """TD(λ) targets: G_t = r_t + γ c_t ((1 − λ) V(s_{t+1}) + λ G_{t+1}), G_H = V(s_H).

    `rewards`, `continues`: (H, ...); `values`: (H+1, ...). Returns (H, ...).
    """
    out = []
    g = values[-1]
    for t in reversed(range(rewards.shape[0])):
        g = rewards[t] + gamma * continues[t] * ((1 - lam) * values[t + 1] + lam * g)
        out.append(g)
    return torch.stack(out[::-1])
