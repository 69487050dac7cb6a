"""Evaluation episodes with the deterministic (mean) action of a policy."""

from __future__ import annotations

import numpy as np

from umpo_dist.envs.spec import make_env
from umpo_dist.models.policy import TanhGaussianPolicy


def evaluate_policy(policy: TanhGaussianPolicy, env_id: str, episodes: int, seed: int, max_episode_steps: int | None = None) -> dict:
    env = make_env(env_id, max_episode_steps)
    returns, lengths = [], []
    try:
        for ep in range(episodes):
            obs, _ = env.reset(seed=seed + ep)
            done, total, length = False, 0.0, 0
            while not done:
                action = policy.act(np.asarray(obs, np.float32)[None], deterministic=True)[0]
                obs, reward, terminated, truncated, _ = env.step(action)
                total += float(reward)
                length += 1
                done = terminated or truncated
            returns.append(total)
            lengths.append(length)
    finally:
        env.close()
    return {"return_mean": float(np.mean(returns)), "return_std": float(np.std(returns)), "length_mean": float(np.mean(lengths))}
