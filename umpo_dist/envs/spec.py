"""Gymnasium environments: construction and the sizes the networks are built for."""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from umpo_dist.config import ConfigError


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
    """The sizes of `env_id`; a `ConfigError` naming `env.id` for spaces the networks cannot take."""
    env = make_env(env_id)
    try:
        obs_space, act_space = env.observation_space, env.action_space
        flat_box = isinstance(obs_space, gym.spaces.Box) and len(obs_space.shape) == 1
        if not flat_box or not isinstance(act_space, gym.spaces.Box) or len(act_space.shape) != 1:
            raise ConfigError(f"config key 'env.id' = {env_id!r}: umpo needs a flat Box observation space and a "
                              f"flat Box (continuous) action space; this env has {obs_space} and {act_space}")
        return EnvSpec(
            env_id,
            int(obs_space.shape[0]),
            tuple(float(x) for x in np.asarray(act_space.low)),
            tuple(float(x) for x in np.asarray(act_space.high)),
        )
    finally:
        env.close()
