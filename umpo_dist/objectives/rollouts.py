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

TRANSITION_KEYS = ("obs", "action", "reward", "next_obs", "terminated")


@dataclass
class Rollout:
    states: torch.Tensor  # (H+1, E, B, obs)
    actions: torch.Tensor  # (H, E, B, act): the policy's reparameterised actions
    rewards: torch.Tensor  # (H, E, B)
    continues: torch.Tensor  # (H, E, B): probability of not terminating at step t
    alive: torch.Tensor  # (H+1, E, B): probability of being alive before step t
    log_probs: torch.Tensor  # (H, E, B)
    epistemic: torch.Tensor  # (H, B): mean epistemic variance over target dims
    # the policy's reparameterised action at the last states and its log-probability, (E, B, act) and (E, B):
    # what a Q function's tail is evaluated at (None unless asked for)
    final_action: torch.Tensor | None = None
    final_log_prob: torch.Tensor | None = None


def imagine_rollout(
    model: EnsembleDynamics,
    policy: TanhGaussianPolicy,
    start_states: torch.Tensor,
    horizon: int,
    state_low: torch.Tensor | None = None,
    state_high: torch.Tensor | None = None,
    mean_rewards: bool = False,
    final_action: bool = False,
    shuffle_members: bool = False,
) -> Rollout:
    """Roll the policy out in the model, `E` particles from each start state.

    Particle `e` is stepped by member `e` throughout; with `shuffle_members`, at every step the `E` particles
    of each start state are dealt to the members in a fresh random order (each particle meets a random
    member at each step, as in MBPO's and DHMBPO's rollouts; every member still steps one particle of each
    start state, so the cost is the same).
    `mean_rewards`: rewards are the members' predicted means (the next states are still sampled).
    `final_action`: also draw the policy's action at the last states (a Q function's tail).
    """
    s = start_states.unsqueeze(0).expand(model.ensemble_size, -1, -1)
    alive = torch.ones(s.shape[:2], device=s.device)
    states, actions, rewards, continues, alives, log_probs, epistemic = [s], [], [], [], [alive], [], []
    for _ in range(horizon):
        action, logp = policy(s)
        if shuffle_members:
            s, reward, cont, epi = _shuffled_step(model, s, action, mean_rewards)
        else:
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
    last = policy(s) if final_action else (None, None)
    return Rollout(
        torch.stack(states), torch.stack(actions), torch.stack(rewards), torch.stack(continues), torch.stack(alives),
        torch.stack(log_probs), torch.stack(epistemic), *last,
    )


def _shuffled_step(model: EnsembleDynamics, s: torch.Tensor, action: torch.Tensor, mean_rewards: bool):
    """`model.step` with the particles (E, B, ·) dealt to the members in a random order per start state,
    the results put back in particle order (differentiable: a gather each way)."""
    order = torch.rand(s.shape[:2], device=s.device).argsort(0)  # member e steps particle order[e, b]
    back = order.argsort(0)  # particle p was stepped by member back[p, b]

    def take(x, idx):
        return x.gather(0, idx.view(*idx.shape, *[1] * (x.dim() - 2)).expand_as(x))

    next_obs, reward, cont, epi = model.step(take(s, order), take(action, order), mean_reward=mean_rewards)
    return take(next_obs, back), take(reward, back), take(cont, back), epi


def state_box(model: EnsembleDynamics, obs_dim: int, sigmas: float, mode: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
    """The box imagined states are clamped to (`policy.state_clip`), from the model's input statistics.

    "mean": mean ± `sigmas` standard deviations. "range": from the smallest value seen − `sigmas`·σ to the
    largest + `sigmas`·σ (per dimension; mean ± `sigmas`·σ where no range is known yet, as in weights saved
    before it was kept). Keeps a compounding model error from carrying rollouts into regions never seen.
    """
    norm = model.input_norm
    mean, std = norm.mean[:obs_dim], norm.std[:obs_dim]
    low, high = mean - sigmas * std, mean + sigmas * std
    if mode == "range":
        seen_low, seen_high = norm.low[:obs_dim], norm.high[:obs_dim]
        known = torch.isfinite(seen_low) & torch.isfinite(seen_high)
        low = torch.where(known, seen_low - sigmas * std, low)
        high = torch.where(known, seen_high + sigmas * std, high)
    return low, high


@torch.no_grad()
def branched_rollouts(model: EnsembleDynamics, policy: TanhGaussianPolicy, start: torch.Tensor, length: int,
                      low: torch.Tensor, high: torch.Tensor, elites_only: bool = False,
                      mean_rewards: bool = False) -> dict[str, torch.Tensor]:
    """No-gradient model transitions of `policy` from `start` (B, obs), `length` steps at most (MBPO's).

    Every step of every rollout is taken by one member drawn at random (among the elites with
    `elites_only`), a sample of its Gaussian clamped to [low, high]; a rollout stops where its step's
    continuation probability is below ½. Returns the transitions keyed like `TRANSITION_KEYS`.
    """
    members = torch.arange(model.ensemble_size, device=start.device)
    if elites_only:
        members = members[model.elite_mask]
    steps = []
    s = start
    for _ in range(length):
        action, _ = policy(s)
        next_obs, reward, cont, _ = model.step(s, action, mean_reward=mean_rewards)  # every member
        pick = members[torch.randint(len(members), (len(s),), device=start.device)]
        rows = torch.arange(len(s), device=start.device)
        next_obs = torch.maximum(torch.minimum(next_obs[pick, rows], high), low)
        terminated = (cont[pick, rows] < 0.5).float()
        steps.append({"obs": s, "action": action, "reward": reward[pick, rows], "next_obs": next_obs,
                      "terminated": terminated})
        s = next_obs[terminated == 0]
        if len(s) == 0:
            break
    return {key: torch.cat([step[key] for step in steps]) for key in TRANSITION_KEYS}


class ModelTransitions:
    """A ring buffer of model-generated transitions, as tensors on the learner's device."""

    def __init__(self, capacity: int, obs_dim: int, action_dim: int, device: torch.device):
        self.capacity = capacity
        widths = {"obs": obs_dim, "action": action_dim, "reward": None, "next_obs": obs_dim, "terminated": None}
        self.data = {k: torch.zeros((capacity, w) if w else (capacity,), device=device) for k, w in widths.items()}
        self.total = 0  # transitions ever added

    def __len__(self) -> int:
        return min(self.total, self.capacity)

    def add(self, batch: dict[str, torch.Tensor]) -> None:
        m = len(batch["reward"])
        keep = slice(max(0, m - self.capacity), m)
        pos = (self.total + torch.arange(m, device=batch["reward"].device)[keep]) % self.capacity
        for k, store in self.data.items():
            store[pos] = batch[k][keep].to(store.dtype)
        self.total += m

    def clear(self) -> None:
        self.total = 0

    def sample(self, n: int) -> dict[str, torch.Tensor]:
        """`n` transitions drawn uniformly, with replacement."""
        idx = torch.randint(len(self), (n,), device=self.data["reward"].device)
        return {k: v[idx] for k, v in self.data.items()}


def particle_returns(rollout: Rollout, value: ValueFunction | torch.Tensor, gamma: float,
                     rewards: torch.Tensor | None = None) -> torch.Tensor:
    """Σ_t γ^t alive_t r_t + γ^H alive_H V(s_H), per particle: (E, B).

    `value`: a function of the last states, or the tail values V(s_H) (E, B) themselves.
    `rewards` (H, E, B) replaces the rollout's own (e.g. rewards with an entropy bonus).
    """
    rewards = rollout.rewards if rewards is None else rewards
    horizon = rewards.shape[0]
    discounts = gamma ** torch.arange(horizon, device=rewards.device, dtype=rewards.dtype)
    ret = (discounts[:, None, None] * rollout.alive[:-1] * rewards).sum(0)
    tail = value if isinstance(value, torch.Tensor) else value(rollout.states[-1])
    return ret + gamma**horizon * rollout.alive[-1] * tail


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
