"""The env-worker loop: step a few environments with a batched policy and emit transitions.

Environments are stepped synchronously inside one process (on 2 cores Gymnasium's
`AsyncVectorEnv` loses to this: inter-process traffic dominates); parallelism comes
from running several collectors, one per env-worker actor.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable

import numpy as np

from umpo_dist.envs.spec import make_env

ActFn = Callable[[np.ndarray], np.ndarray]


def worker_seed(train_seed: int, index: int) -> int:
    """The collector seed of env worker `index` of a run seeded `train_seed`; the inline runner collects as
    worker 0, so that one env worker in the Ray runtime steps the same episodes."""
    return train_seed + 7919 * (index + 1)


def noise_seed(collector_seed: int) -> list[int]:
    """The seed of the acting policy's noise (`NumpyPolicy`) beside a collector seeded `collector_seed`: a
    stream of its own, apart from the collector's reset seeds (two generators of one seed draw the same bits)."""
    return [collector_seed, 1]


class EnvCollector:
    def __init__(self, env_id: str, num_envs: int = 1, seed: int = 0, max_episode_steps: int | None = None):
        self.env_id = env_id
        self.envs = [make_env(env_id, max_episode_steps) for _ in range(num_envs)]
        self.rng = np.random.default_rng(seed)
        self.obs = np.stack([self._reset(env, seed + i) for i, env in enumerate(self.envs)])
        for i, env in enumerate(self.envs):
            env.action_space.seed(seed + 1000 + i)
        self.episode_return = np.zeros(num_envs)
        self.episode_length = np.zeros(num_envs, np.int64)
        self.dropped_episodes = 0

    def _reset(self, env, seed: int, attempts: int = 10) -> np.ndarray:
        for _ in range(attempts):
            obs = np.asarray(env.reset(seed=seed)[0], np.float32)
            if np.isfinite(obs).all():
                return obs
            warnings.warn(f"env '{self.env_id}' reset to a non-finite observation; resetting again",
                          RuntimeWarning, stacklevel=3)
            seed += 1
        raise RuntimeError(f"env '{self.env_id}' reset to a non-finite observation {attempts} times in a row")

    def random_actions(self, obs: np.ndarray) -> np.ndarray:
        return np.stack([env.action_space.sample() for env in self.envs[: len(obs)]]).astype(np.float32)

    def collect(self, num_steps: int, act: ActFn | None = None) -> tuple[dict[str, np.ndarray], list[dict]]:
        """Step the envs `num_steps` times in all (round-robin) and return the transitions.

        Returns a batch of arrays and the finished episodes' `{"return", "length"}`.
        `act=None` acts uniformly at random. A step whose observation or reward is not
        finite is dropped and ends its episode, with a warning naming the env: a
        non-finite value would poison the model's normalisers and losses.
        """
        act = act or self.random_actions
        obs_dim = self.obs.shape[1]
        out = {"obs": np.empty((num_steps, obs_dim), np.float32), "action": None,
               "reward": np.empty(num_steps, np.float32), "next_obs": np.empty((num_steps, obs_dim), np.float32),
               "terminated": np.empty(num_steps, np.float32), "truncated": np.empty(num_steps, np.float32)}
        episodes: list[dict] = []
        steps = kept = 0  # steps taken, and rows written (a non-finite step takes no row)
        while steps < num_steps:
            actions = np.asarray(act(self.obs), np.float32)
            if out["action"] is None:
                out["action"] = np.empty((num_steps, actions.shape[1]), np.float32)
            for i, env in enumerate(self.envs[: num_steps - steps]):
                next_obs, reward, terminated, truncated, _ = env.step(actions[i])
                next_obs = np.asarray(next_obs, np.float32)
                steps += 1
                finite = bool(np.isfinite(next_obs).all()) and math.isfinite(reward)
                if finite:
                    out["obs"][kept] = self.obs[i]
                    out["action"][kept] = actions[i]
                    out["reward"][kept] = reward
                    out["next_obs"][kept] = next_obs
                    out["terminated"][kept] = terminated
                    out["truncated"][kept] = truncated
                    kept += 1
                    self.episode_return[i] += reward
                    self.episode_length[i] += 1
                else:
                    warnings.warn(
                        f"env '{self.env_id}' returned a non-finite observation or reward; "
                        "dropping that step and ending its episode",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                    self.dropped_episodes += 1
                if terminated or truncated or not finite:
                    if finite:
                        episodes.append({"return": float(self.episode_return[i]), "length": int(self.episode_length[i])})
                    next_obs = self._reset(env, int(self.rng.integers(2**31)))
                    self.episode_return[i] = 0.0
                    self.episode_length[i] = 0
                self.obs[i] = next_obs
        if kept == 0:
            return {}, episodes
        return {k: v[:kept] for k, v in out.items()}, episodes

    def close(self) -> None:
        for env in self.envs:
            env.close()

