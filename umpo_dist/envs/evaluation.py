"""Evaluation episodes with the deterministic (mean) action of a policy."""

from __future__ import annotations

import numpy as np

from umpo_dist.envs.spec import make_env
from umpo_dist.models.policy import TanhGaussianPolicy


def evaluate_policy(policy: TanhGaussianPolicy, env_id: str, episodes: int, seed: int,
                    max_episode_steps: int | None = None, record: bool = False) -> dict:
    """Mean and std of the episodes' returns; with `record`, also the episodes themselves under
    `"episodes"` (per episode: `obs`, `action`, `reward`, `next_obs` arrays and `terminated`)."""
    env = make_env(env_id, max_episode_steps)
    returns, lengths, recorded = [], [], []
    try:
        for ep in range(episodes):
            obs, _ = env.reset(seed=seed + ep)
            done, total, length = False, 0.0, 0
            steps: dict[str, list] = {"obs": [], "action": [], "reward": [], "next_obs": []}
            terminated = False
            while not done:
                action = policy.act(np.asarray(obs, np.float32)[None], deterministic=True)[0]
                next_obs, reward, terminated, truncated, _ = env.step(action)
                if record:
                    for key, value in (("obs", obs), ("action", action), ("reward", reward), ("next_obs", next_obs)):
                        steps[key].append(value)
                obs = next_obs
                total += float(reward)
                length += 1
                done = terminated or truncated
            returns.append(total)
            lengths.append(length)
            if record:
                recorded.append({key: np.asarray(v, np.float32) for key, v in steps.items()} | {"terminated": bool(terminated)})
    finally:
        env.close()
    result = {"return_mean": float(np.mean(returns)), "return_std": float(np.std(returns)), "length_mean": float(np.mean(lengths))}
    if record:
        result["episodes"] = recorded
    return result
