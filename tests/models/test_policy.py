"""The explicit policy: actions in the env's box, exact log-probabilities of the squashed Gaussian."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import distributions as D

from umpo_dist.models.policy import TanhGaussianPolicy

torch.set_num_threads(1)
f64 = torch.float64


# -- the policy ----------------------------------------------------------------------------------------
def test_policy_actions_stay_in_the_box():
    torch.manual_seed(3)
    low, high = np.array([-3.0, 0.0, -0.1]), np.array([1.0, 0.5, 0.1])
    policy = TanhGaussianPolicy(4, low, high, hidden_layers=2, hidden_size=16)
    obs = torch.randn(5000, 4) * torch.tensor([1.0, 10.0, 100.0, 1000.0])  # including saturating inputs
    a, logp = policy(obs)
    assert a.shape == (5000, 3) and logp.shape == (5000,)
    lo, hi = torch.as_tensor(low, dtype=torch.float32), torch.as_tensor(high, dtype=torch.float32)
    assert (a >= lo).all() and (a <= hi).all()
    assert torch.isfinite(logp).all()
    det, _ = policy(obs, deterministic=True)
    assert (det >= lo).all() and (det <= hi).all()
    act = policy.act(obs[:7].numpy())
    assert isinstance(act, np.ndarray) and act.shape == (7, 3)
    # Samples spread over most of the box for moderate inputs.
    a_mod, _ = policy(torch.zeros(5000, 4))
    assert (a_mod.max(0).values - a_mod.min(0).values > 0.3 * (hi - lo)).all()


def _dist_params(policy, obs):
    from umpo_dist.models.policy import LOG_STD_MAX, LOG_STD_MIN

    mu, log_std = policy.net(obs).chunk(2, -1)
    log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (torch.tanh(log_std) + 1)
    return mu, log_std.exp()


@pytest.mark.parametrize("low, high", [(-1.0, 1.0), (-2.0, 3.0), (0.5, 0.75)])
def test_policy_log_prob_matches_transformed_distribution(low, high):
    torch.manual_seed(4)
    policy = TanhGaussianPolicy(3, [low], [high], hidden_layers=1, hidden_size=8).double()
    obs = torch.randn(256, 3, dtype=f64)
    a, logp = policy(obs)
    mu, std = _dist_params(policy, obs)
    scale, bias = (high - low) / 2, (high + low) / 2
    dist = D.TransformedDistribution(
        D.Normal(mu, std), [D.TanhTransform(cache_size=0), D.AffineTransform(bias, scale)]
    )
    torch.testing.assert_close(logp, dist.log_prob(a).sum(-1), rtol=1e-7, atol=1e-7)
    # A numerical density: central difference of the analytic CDF Φ((atanh((a−b)/s) − μ)/σ).
    h = 1e-6 * scale
    normal = D.Normal(mu, std)
    cdf = lambda x: normal.cdf(torch.atanh((x - bias) / scale))
    density = (cdf(a + h) - cdf(a - h)) / (2 * h)
    inner = ((a - bias).abs() < 0.99 * scale).squeeze(-1)  # atanh is ill-conditioned at the edges
    assert inner.sum() > 200
    torch.testing.assert_close(logp[inner].exp(), density.squeeze(-1)[inner], rtol=1e-4, atol=1e-8)


def test_policy_log_prob_multi_dim_is_a_sum():
    torch.manual_seed(5)
    low, high = [-1.0, 0.0], [1.0, 4.0]
    policy = TanhGaussianPolicy(2, low, high, hidden_layers=1, hidden_size=8).double()
    obs = torch.randn(64, 2, dtype=f64)
    a, logp = policy(obs)
    mu, std = _dist_params(policy, obs)
    lo, hi = torch.tensor(low, dtype=f64), torch.tensor(high, dtype=f64)
    dist = D.Independent(
        D.TransformedDistribution(D.Normal(mu, std), [D.TanhTransform(cache_size=0), D.AffineTransform((hi + lo) / 2, (hi - lo) / 2)]),
        1,
    )
    torch.testing.assert_close(logp, dist.log_prob(a), rtol=1e-7, atol=1e-7)
