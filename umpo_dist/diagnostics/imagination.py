"""Imagined against real return, from states the policy actually visited.

From start states along the evaluation episodes, every member rolls the policy's
deterministic action out in the model for `horizon` steps (members' mean predictions,
continuation probabilities as a soft alive mask), and the discounted sum of imagined
rewards is compared with the discounted sum of the rewards the real environment gave
over the same steps of the episode. This is the model-only part of what the policy is
optimised through (the value function's tail is left out: it is trained on imagined
returns, so it cannot witness against them). A policy that exploits model errors shows
an imagined return above the real one, usually with members that agree.
"""

from __future__ import annotations

import numpy as np
import torch

from umpo_dist.models.ensemble import EnsembleDynamics
from umpo_dist.models.policy import TanhGaussianPolicy


def windows(episodes: list[dict], horizon: int, every: int, max_starts: int) -> tuple[np.ndarray, np.ndarray]:
    """Start states every `every` steps along the episodes and the real `horizon`-step reward windows.

    A window must lie inside its episode, unless the episode ended by termination: then
    the rewards after the end are 0, as they are for an imagined particle that terminated.
    Returns (starts (N, obs), rewards (N, horizon)), at most `max_starts` of them, evenly spread.
    """
    starts, rewards = [], []
    for ep in episodes:
        obs, rew = np.asarray(ep["obs"], np.float32), np.asarray(ep["reward"], np.float64)
        last = len(rew) if ep["terminated"] else len(rew) - horizon + 1
        for t in range(0, max(last, 0), every):
            r = rew[t:t + horizon]
            starts.append(obs[t])
            rewards.append(np.pad(r, (0, horizon - len(r))))
    if not starts:
        return np.zeros((0, 0), np.float32), np.zeros((0, horizon))
    keep = np.unique(np.linspace(0, len(starts) - 1, min(max_starts, len(starts))).round().astype(int))
    return np.stack(starts)[keep], np.stack(rewards)[keep]


@torch.no_grad()
def imagined_returns(model: EnsembleDynamics, policy: TanhGaussianPolicy, starts: torch.Tensor, horizon: int,
                     gamma: float) -> torch.Tensor:
    """Discounted `horizon`-step returns the model imagines for the policy's mean action: (E, N)."""
    s = starts.unsqueeze(0).expand(model.ensemble_size, -1, -1)
    alive = torch.ones(s.shape[:2])
    ret = torch.zeros(s.shape[:2])
    for t in range(horizon):
        action, _ = policy(s, deterministic=True)
        s, reward, cont, _ = model.step(s, action, sample=False)
        ret = ret + gamma**t * alive * reward
        alive = alive * cont
    return ret


def imagination_gap(model: EnsembleDynamics, policy: TanhGaussianPolicy, episodes: list[dict], horizon: int,
                    gamma: float, every: int = 10, max_starts: int = 200) -> dict | None:
    """Imagined vs real `horizon`-step return from states along `episodes`; None if no window fits."""
    starts, real = windows(episodes, horizon, every, max_starts)
    if not len(starts):
        return None
    imagined = imagined_returns(model, policy, torch.as_tensor(starts), horizon, gamma).double().numpy()
    real_ret = (gamma ** np.arange(horizon) * real).sum(1)
    gap = imagined.mean(0) - real_ret  # per start state: the members' mean against reality
    scale = max(float(np.abs(real_ret).mean()), 1e-6)
    return {
        "imagined_return": float(imagined.mean()),
        "real_return": float(real_ret.mean()),
        "gap": float(gap.mean()),
        "gap_share": float(gap.mean()) / scale,  # as a share of the real return's magnitude
        "abs_gap": float(np.abs(gap).mean()),
        "member_spread": float(imagined.std(0).mean()),  # std of the members' returns, mean over start states
        "starts": int(len(starts)),
    }
