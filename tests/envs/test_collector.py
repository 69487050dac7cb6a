"""EnvCollector on a real MuJoCo env: transition layout, episode bookkeeping, non-finite steps."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest

import umpo_dist.envs.collector as collector_mod
from umpo_dist.envs.collector import EnvCollector
from umpo_dist.envs.spec import env_spec, make_env

ENV_ID = "InvertedPendulum-v5"
KEYS = {"obs", "action", "reward", "next_obs", "terminated", "truncated"}


def check_shapes(batch: dict[str, np.ndarray], n: int) -> None:
    assert set(batch) == KEYS
    assert batch["obs"].shape == (n, 4) and batch["next_obs"].shape == (n, 4)
    assert batch["action"].shape == (n, 1)
    for k in ("reward", "terminated", "truncated"):
        assert batch[k].shape == (n,), k
    for k, v in batch.items():
        assert v.dtype == np.float32, k
        assert np.isfinite(v).all(), k


def test_env_spec():
    spec = env_spec(ENV_ID)
    assert spec.obs_dim == 4 and spec.action_dim == 1
    assert spec.action_low == (-3.0,) and spec.action_high == (3.0,)


def test_an_env_the_networks_cannot_take_is_a_config_error_naming_env_id(workdir):
    from umpo_dist.config import ConfigError, from_dict
    from umpo_dist.ops.train import train

    with pytest.raises(ConfigError, match=r"config key 'env.id' = 'CartPole-v1': .*continuous.*Discrete\(2\)"):
        env_spec("CartPole-v1")
    # through a run: refused before anything starts (no run directory, no MLflow run)
    with pytest.raises(ConfigError, match="'env.id' = 'CartPole-v1'"):
        train(from_dict({}, ["runtime=inline", "env.id=CartPole-v1"]), progress=False)
    assert not (workdir / "runs").exists()


@pytest.mark.parametrize("num_envs", [1, 3])
def test_collect_random_actions(num_envs):
    col = EnvCollector(ENV_ID, num_envs=num_envs, seed=0, max_episode_steps=6)
    n = 300
    batch, episodes = col.collect(n)
    check_shapes(batch, n)
    assert (np.abs(batch["action"]) <= 3.0).all()
    assert set(np.unique(batch["terminated"])) <= {0.0, 1.0}
    assert set(np.unique(batch["truncated"])) <= {0.0, 1.0}
    ended = (batch["terminated"] + batch["truncated"]) > 0
    assert ended.any()
    assert batch["truncated"].any(), "a 6-step limit truncates some episodes"
    # Round robin: transition k comes from env k % num_envs, and its next_obs is the obs of
    # that env's next transition unless the episode ended there.
    continued = 0
    for k in range(n - num_envs):
        if ended[k]:
            assert not np.array_equal(batch["next_obs"][k], batch["obs"][k + num_envs])
        else:
            np.testing.assert_array_equal(batch["next_obs"][k], batch["obs"][k + num_envs])
            continued += 1
    assert continued > n // 2
    # InvertedPendulum-v5 pays 1 per step and 0 on the terminating step.
    np.testing.assert_array_equal(batch["reward"], 1.0 - batch["terminated"])
    # Finished episodes: one per ended transition; return = length, or length − 1 if it terminated.
    assert len(episodes) == int(ended.sum())
    for ep in episodes:
        assert 1 <= ep["length"] <= 6
        assert ep["return"] in (ep["length"], ep["length"] - 1)
    assert sum(ep["length"] for ep in episodes) <= n
    assert sum(ep["length"] - ep["return"] for ep in episodes) == int(batch["terminated"].sum())
    assert col.dropped_episodes == 0
    col.close()


def test_collect_continues_across_calls_and_uses_the_policy():
    col = EnvCollector(ENV_ID, num_envs=2, seed=1, max_episode_steps=1000)
    seen = []

    def act(obs):
        seen.append(obs.copy())
        return np.full((len(obs), 1), 0.25, np.float32)

    b1, _ = col.collect(4, act)
    b2, _ = col.collect(4, act)
    check_shapes(b1, 4)
    check_shapes(b2, 4)
    np.testing.assert_array_equal(b1["action"], 0.25)
    assert seen[0].shape == (2, 4)
    for k in range(2):  # the second call picks up where the first left off, per env
        if not (b1["terminated"][2 + k] or b1["truncated"][2 + k]):
            np.testing.assert_array_equal(b2["obs"][k], b1["next_obs"][2 + k])
    col.close()


def steering(obs: np.ndarray) -> np.ndarray:
    """A deterministic policy whose actions differ per env (they depend on the observation)."""
    return np.clip(2.0 * obs[:, 1:2] + obs[:, 3:4], -3.0, 3.0).astype(np.float32)


def reference_run(seed: int, steps: int, max_episode_steps: int) -> list[dict]:
    """One env stepped alone with `steering`, reset with the seed the collector gives env `i` (seed + i)."""
    env = make_env(ENV_ID, max_episode_steps)
    obs = np.asarray(env.reset(seed=seed)[0], np.float32)
    out = []
    for _ in range(steps):
        action = steering(obs[None])[0]
        next_obs, reward, terminated, truncated, _ = env.step(action)
        next_obs = np.asarray(next_obs, np.float32)
        out.append({"obs": obs, "action": action, "reward": np.float32(reward), "next_obs": next_obs})
        assert not (terminated or truncated), "the reference run must stay inside one episode"
        obs = next_obs
    env.close()
    return out


def test_uneven_steps_go_to_the_first_envs_and_each_env_continues_across_calls():
    seed, num_envs, n, calls = 4, 3, 10, 2
    col = EnvCollector(ENV_ID, num_envs=num_envs, seed=seed, max_episode_steps=1000)
    batches = [col.collect(n, steering)[0] for _ in range(calls)]
    col.close()
    for batch in batches:
        check_shapes(batch, n)  # exactly n transitions, though n is not a multiple of the env count
        assert not (batch["terminated"] + batch["truncated"]).any(), "precondition: no episode ends here"
    # Round robin from the first env in every call: 10 steps over 3 envs are 4, 3, 3.
    per_call = [k % num_envs for k in range(n)]
    assert [per_call.count(i) for i in range(num_envs)] == [4, 3, 3]
    for i in range(num_envs):
        ref = reference_run(seed + i, calls * per_call.count(i), 1000)
        got = [{key: b[key][k] for key in ("obs", "action", "reward", "next_obs")}
               for b in batches for k in range(n) if per_call[k] == i]
        assert len(got) == len(ref) == calls * (4 if i == 0 else 3)
        for j, (g, r) in enumerate(zip(got, ref)):  # env i's own trajectory, in order, across both calls
            for key in g:
                np.testing.assert_array_equal(g[key], r[key], err_msg=f"env {i}, step {j}, {key}")


def test_consecutive_calls_continue_each_envs_episode_through_resets():
    num_envs, n, limit = 3, 10, 4
    col = EnvCollector(ENV_ID, num_envs=num_envs, seed=2, max_episode_steps=limit)
    batches = [col.collect(n)[0] for _ in range(3)]
    col.close()
    streams: dict[int, list[dict]] = {i: [] for i in range(num_envs)}
    for batch in batches:
        check_shapes(batch, n)
        for k in range(n):
            streams[k % num_envs].append({key: batch[key][k] for key in batch})
    assert [len(streams[i]) for i in range(num_envs)] == [12, 9, 9]
    resets = 0
    for i, stream in streams.items():
        length = 0
        for j, t in enumerate(stream):
            length += 1
            ended = bool(t["terminated"] or t["truncated"])
            # The time limit truncates exactly at the env's own 4th step: the stream is this env's alone.
            assert bool(t["truncated"]) == (length == limit and not t["terminated"]) or t["terminated"], (i, j)
            assert length <= limit
            if j + 1 < len(stream):
                if ended:
                    assert not np.array_equal(stream[j + 1]["obs"], t["next_obs"]), (i, j)
                    resets += 1
                else:
                    np.testing.assert_array_equal(stream[j + 1]["obs"], t["next_obs"], err_msg=f"env {i}, step {j}")
            if ended:
                length = 0
    assert resets >= 5


def test_collect_is_reproducible_with_a_seed():
    a, _ = EnvCollector(ENV_ID, num_envs=2, seed=7, max_episode_steps=20).collect(100)
    b, _ = EnvCollector(ENV_ID, num_envs=2, seed=7, max_episode_steps=20).collect(100)
    for k in KEYS:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


class NaNObservation(gym.Wrapper):
    """Emits a NaN observation on every `every`-th step."""

    def __init__(self, env, every: int):
        super().__init__(env)
        self.every, self.calls, self.nan_steps = every, 0, 0

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.calls += 1
        if self.calls % self.every == 0:
            obs = np.full_like(obs, np.nan)
            self.nan_steps += 1
        return obs, reward, terminated, truncated, info


def test_non_finite_observation_is_dropped_with_a_warning(monkeypatch):
    made = []

    def make_nan_env(env_id, max_episode_steps=None):
        env = NaNObservation(make_env(env_id, max_episode_steps), every=4)
        made.append(env)
        return env

    monkeypatch.setattr(collector_mod, "make_env", make_nan_env)
    col = EnvCollector(ENV_ID, num_envs=2, seed=0, max_episode_steps=50)
    n = 40
    with pytest.warns(RuntimeWarning, match=ENV_ID) as record:
        batch, episodes = col.collect(n)
    nan_steps = sum(env.nan_steps for env in made)
    assert nan_steps == n // 4  # 20 steps per env, every 4th is NaN
    assert len([w for w in record if issubclass(w.category, RuntimeWarning)]) == nan_steps
    assert col.dropped_episodes == nan_steps
    # The bad steps are gone and nothing non-finite is returned.
    check_shapes(batch, n - nan_steps)
    # A dropped step ends its episode: the episode is not reported as finished.
    ended = int(((batch["terminated"] + batch["truncated"]) > 0).sum())
    assert len(episodes) == ended
    # The collector keeps going from a fresh episode.
    assert np.isfinite(col.obs).all()


def test_non_finite_reward_is_dropped(monkeypatch):
    class NaNReward(gym.Wrapper):
        def step(self, action):
            obs, reward, terminated, truncated, info = self.env.step(action)
            return obs, float("inf"), terminated, truncated, info

    monkeypatch.setattr(collector_mod, "make_env", lambda env_id, max_episode_steps=None: NaNReward(make_env(env_id)))
    col = EnvCollector(ENV_ID, num_envs=1, seed=0)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        batch, episodes = col.collect(5)
    assert batch == {} and episodes == []
    assert col.dropped_episodes == 5
    assert sum(ENV_ID in str(w.message) for w in record) == 5


def test_non_finite_reset_observation_never_reaches_the_batch(monkeypatch):
    class NaNReset(gym.Wrapper):
        def __init__(self, env):
            super().__init__(env)
            self.resets = 0

        def reset(self, **kwargs):
            obs, info = self.env.reset(**kwargs)
            self.resets += 1
            if self.resets == 2:  # the first reset after an episode ends
                obs = np.full_like(obs, np.nan)
            return obs, info

    monkeypatch.setattr(collector_mod, "make_env",
                        lambda env_id, max_episode_steps=None: NaNReset(make_env(env_id, max_episode_steps)))
    col = EnvCollector(ENV_ID, num_envs=1, seed=0, max_episode_steps=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batch, _ = col.collect(10)
    for k, v in batch.items():
        assert np.isfinite(v).all(), k

