"""The env workers' NumPy action path computes the torch policy's actions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from umpo_dist.models.numpy_policy import NumpyPolicy
from umpo_dist.models.policy import TanhGaussianPolicy, mlp

torch.set_num_threads(1)
LOW, HIGH = np.array([-3.0, 0.0, -0.1]), np.array([1.0, 0.5, 0.1])


def _policy(seed: int = 0, layer_norm_eps: float = 0.0) -> TanhGaussianPolicy:
    torch.manual_seed(seed)
    policy = TanhGaussianPolicy(5, LOW, HIGH, hidden_layers=2, hidden_size=32)
    if layer_norm_eps:
        policy.net = mlp(5, 6, 2, 32, layer_norm_eps)
    policy.set_initial_std(0.7)
    policy.set_obs_stats(torch.linspace(-1.0, 2.0, 5), torch.linspace(0.5, 3.0, 5))
    return policy


def _obs(n: int = 64, seed: int = 1) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((n, 5)) * [1.0, 3.0, 10.0, 0.1, 50.0]).astype(np.float32)


@pytest.mark.parametrize("layer_norm_eps", [0.0, 1e-3])
def test_numpy_policy_matches_the_torch_policy(layer_norm_eps):
    policy, obs = _policy(layer_norm_eps=layer_norm_eps), _obs()
    fast = NumpyPolicy(policy, seed=0)
    mu, log_std = policy._gaussian(torch.as_tensor(obs))
    np_mu, np_log_std = fast.gaussian(obs)
    np.testing.assert_allclose(np_mu, mu.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np_log_std, log_std.detach().numpy(), rtol=1e-5, atol=1e-5)
    det = fast.act(obs, deterministic=True)
    assert det.dtype == np.float32 and det.shape == (64, 3)
    np.testing.assert_allclose(det, policy.act(obs, deterministic=True), rtol=1e-5, atol=1e-5)


def test_numpy_policy_samples_the_policys_distribution_inside_the_box():
    policy = _policy()
    fast = NumpyPolicy(policy, seed=3)
    obs = np.repeat(_obs(1), 20_000, axis=0)
    actions = fast.act(obs)
    assert (actions >= LOW.astype(np.float32)).all() and (actions <= HIGH.astype(np.float32)).all()
    # Undo the box and the tanh: the pre-tanh samples are N(mu, std) of the torch policy.
    scale, bias = (HIGH - LOW) / 2, (HIGH + LOW) / 2
    u = np.arctanh(np.clip((actions - bias) / scale, -1 + 1e-6, 1 - 1e-6))
    mu, log_std = (t.detach().numpy()[0] for t in policy._gaussian(torch.as_tensor(obs[:1])))
    std = np.exp(log_std)
    # 20,000 samples: the mean's standard error is std/141; allow 5 of them, and 5% on the std.
    np.testing.assert_array_less(np.abs(u.mean(0) - mu), 5 * std / np.sqrt(len(u)))
    np.testing.assert_allclose(u.std(0), std, rtol=0.05)
    # Seeded: the same seed gives the same actions, another seed others.
    np.testing.assert_allclose(NumpyPolicy(policy, seed=3).act(obs[:10]), actions[:10], rtol=1e-6, atol=1e-6)
    assert not np.allclose(NumpyPolicy(policy, seed=4).act(obs[:10]), actions[:10])


def test_numpy_policy_takes_new_weights_only_when_loaded():
    policy, obs = _policy(), _obs()
    fast = NumpyPolicy(policy)
    before = fast.act(obs, deterministic=True)
    policy.load_state_dict(_policy(seed=5).state_dict())
    np.testing.assert_array_equal(fast.act(obs, deterministic=True), before)  # a copy, not a view
    fast.load(policy)
    np.testing.assert_allclose(fast.act(obs, deterministic=True), policy.act(obs, deterministic=True), rtol=1e-5,
                               atol=1e-5)
    assert not np.allclose(fast.act(obs, deterministic=True), before)


def test_numpy_policy_refuses_a_layer_it_cannot_compute():
    policy = _policy()
    policy.net[1] = nn.ReLU()
    with pytest.raises(TypeError, match="ReLU"):
        NumpyPolicy(policy)
