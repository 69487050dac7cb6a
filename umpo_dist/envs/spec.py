"""Gymnasium environments: construction and the sizes the networks are built for."""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np


@dataclass(frozen=True)
class EnvSpec:
    env_id: str
    obs_dim: int
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]

    @property
    def action_dim(self) -> int:
        return len(self.action_low)


def make_env(env_id: str, max_episode_steps: int | None = None) -> gym.Env:
    return gym.make(env_id, max_episode_steps=max_episode_steps)


def env_spec(env_id: str) -> EnvSpec:
    env = make_env(env_id)
    try:
        obs_space, act_space = env.observation_space, env.action_space
        if not isinstance(act_space, gym.spaces.Box) or len(obs_space.shape) != 1:
            raise ValueError(f"env '{env_id}' must have a flat Box observation and a Box action space")
        return EnvSpec(
            env_id,
            int(obs_space.shape[0]),
            tuple(float(x) for x in np.asarray(act_space.low)),
            tuple(float(x) for x in np.asarray(act_space.high)),
        )
    finally:
        env.close()
