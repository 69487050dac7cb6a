"""Imagined against real return: large where the model is wrong, near zero where it is right."""

import numpy as np
import pytest
import torch

from umpo_dist.diagnostics.imagination import imagination_gap, windows
from umpo_dist.models.policy import TanhGaussianPolicy

H, GAMMA = 5, 0.99


def true_step(s, a):
    """A point mass: the action moves it, the reward is minus its distance from the origin."""
    nxt = s + 0.1 * a
    return nxt, -np.abs(nxt).sum(-1)


class ToyModel:
    """Members that know `true_step` exactly, except that they promise +`bonus` reward where x > 1."""

    ensemble_size = 3

    def __init__(self, bonus: float):
        self.bonus = bonus

    def step(self, s, a, sample=True):
        nxt, reward = true_step(s.numpy(), a.numpy())
        reward = reward + self.bonus * (nxt[..., 0] > 1.0)
        members = (torch.arange(self.ensemble_size, dtype=torch.float32)[:, None] - 1) * 1e-3  # a little disagreement, mean 0
        return (torch.as_tensor(nxt, dtype=torch.float32), torch.as_tensor(reward, dtype=torch.float32) + members,
                torch.ones(s.shape[:2]), torch.zeros(s.shape))


def episode(policy, start, steps=60):
    obs, rewards = [], []
    s = np.asarray(start, np.float32)
    for _ in range(steps):
        a = policy.act(s[None], deterministic=True)[0]
        nxt, r = true_step(s, a)
        obs.append(s)
        rewards.append(r)
        s = nxt.astype(np.float32)
    return {"obs": np.array(obs), "reward": np.array(rewards), "terminated": False}


@pytest.fixture(scope="module")
def policy():
    torch.manual_seed(0)
    return TanhGaussianPolicy(2, np.array([-0.05, -0.05]), np.array([0.05, 0.05]), 1, 8)  # small steps: stays put


def test_the_gap_is_large_where_the_model_is_wrong_and_near_zero_elsewhere(policy):
    model = ToyModel(bonus=2.0)
    inside = [episode(policy, [3.0, 0.0]), episode(policy, [2.5, 1.0])]  # x stays > 1: the model is wrong there
    outside = [episode(policy, [-3.0, 0.0]), episode(policy, [-0.5, 2.0])]  # x stays < 1: the model is right
    wrong = imagination_gap(model, policy, inside, H, GAMMA)
    right = imagination_gap(model, policy, outside, H, GAMMA)
    promised = 2.0 * sum(GAMMA**t for t in range(H))  # the bonus on every imagined step
    assert wrong["gap"] == pytest.approx(promised, rel=1e-3)
    assert wrong["gap_share"] > 0.5
    assert abs(right["gap"]) < 1e-3 and abs(right["gap_share"]) < 1e-3
    assert wrong["imagined_return"] > wrong["real_return"]
    # The members agree (spread ≈ 0.003 against a gap of ≈ 9.8): confident and wrong.
    assert wrong["member_spread"] < 0.01
    assert wrong["starts"] == right["starts"] == 2 * len(range(0, 60 - H + 1, 10))


def test_windows_stay_inside_truncated_episodes_and_pad_terminated_ones_with_zero_reward():
    obs = np.arange(12, dtype=np.float32).reshape(12, 1)
    reward = np.arange(12, dtype=np.float64) + 1
    truncated = {"obs": obs, "reward": reward, "terminated": False}
    starts, rewards = windows([truncated], horizon=5, every=3, max_starts=100)
    assert starts[:, 0].tolist() == [0, 3, 6]  # a window from step 9 would run past the episode's end
    assert rewards[2].tolist() == [7, 8, 9, 10, 11]
    terminated = {"obs": obs, "reward": reward, "terminated": True}
    starts, rewards = windows([terminated], horizon=5, every=3, max_starts=100)
    assert starts[:, 0].tolist() == [0, 3, 6, 9]
    assert rewards[3].tolist() == [10, 11, 12, 0, 0]  # after termination nothing more is earned
    starts, _ = windows([terminated, truncated], horizon=5, every=1, max_starts=4)
    assert len(starts) == 4 and starts[0, 0] == 0 and starts[-1, 0] == 7  # evenly spread over all windows
    assert imagination_gap(ToyModel(0.0), None, [{"obs": obs[:3], "reward": reward[:3], "terminated": False}], 5, GAMMA) is None
