"""Differentiable imagination, the mean–variance objective, λ-returns, the policy and its learner."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import distributions as D

from umpo_dist.config import ModelConfig, PolicyConfig
from umpo_dist.models.ensemble import EnsembleDynamics
from umpo_dist.objectives.rollouts import Rollout, imagine_rollout, lambda_returns, mean_variance_objective, particle_returns
from umpo_dist.models.model_learner import ModelLearner
from umpo_dist.models.policy import TanhGaussianPolicy, ValueFunction
from umpo_dist.objectives.mean_variance import PolicyLearner

torch.set_num_threads(1)
f64 = torch.float64


def tiny_world(seed: int = 0, obs_dim: int = 2, E: int = 3):
    torch.manual_seed(seed)
    model = EnsembleDynamics(obs_dim, 1, ensemble_size=E, hidden_layers=1, hidden_size=8).double().requires_grad_(False)
    with torch.no_grad():
        for layer in list(model.hidden) + [model.head]:
            layer.weight.mul_(3.0)  # larger weights: the rollout really depends on the actions
            layer.bias.normal_(std=0.3)
        model.input_norm.update(torch.randn(200, obs_dim + 1, dtype=f64))
        model.target_norm.update(0.3 * torch.randn(200, obs_dim + 1, dtype=f64))
    policy = TanhGaussianPolicy(obs_dim, [-2.0], [2.0], hidden_layers=1, hidden_size=6).double()
    value = ValueFunction(obs_dim, hidden_layers=1, hidden_size=6).double()
    return model, policy, value


def objective(model, policy, value, start, horizon=3, risk_lambda=0.5, alpha=0.1, noise_seed=123, bounds=None):
    torch.manual_seed(noise_seed)  # the same reparameterisation noise for every evaluation
    low, high = bounds if bounds is not None else (None, None)
    ro = imagine_rollout(model, policy, start, horizon, low, high)
    returns = particle_returns(ro, value, 0.9)
    obj, _, _ = mean_variance_objective(returns, risk_lambda)
    alive = ro.alive[:-1]
    entropy = -(alive * ro.log_probs).sum() / alive.sum()
    return obj + alpha * entropy


@pytest.mark.parametrize("with_value", [True, False])
def test_objective_gradient_through_the_model_matches_finite_differences(with_value):
    model, policy, value = tiny_world(0)
    if not with_value:
        # No value tail and no entropy: the policy affects J only through the model's rewards and states.
        with torch.no_grad():
            value.net[-1].weight.zero_()
            value.net[-1].bias.zero_()
    alpha = 0.1 if with_value else 0.0
    start = torch.randn(4, 2, dtype=f64, generator=torch.Generator().manual_seed(1))
    bounds = (torch.full((2,), -50.0, dtype=f64), torch.full((2,), 50.0, dtype=f64))
    params = list(policy.parameters())
    J = objective(model, policy, value, start, alpha=alpha, bounds=bounds)
    grads = torch.autograd.grad(J, params)
    assert sum(float(g.abs().sum()) for g in grads) > 1e-3, "the objective must depend on the policy"
    eps = 1e-6
    checked = 0
    with torch.no_grad():
        for p, g in zip(params, grads):
            flat, gflat = p.view(-1), g.view(-1)
            for j in range(flat.numel()):
                old = float(flat[j])
                flat[j] = old + eps
                up = float(objective(model, policy, value, start, alpha=alpha, bounds=bounds))
                flat[j] = old - eps
                down = float(objective(model, policy, value, start, alpha=alpha, bounds=bounds))
                flat[j] = old
                fd = (up - down) / (2 * eps)
                assert float(gflat[j]) == pytest.approx(fd, rel=1e-5, abs=1e-7), (p.shape, j)
                checked += 1
    assert checked == sum(p.numel() for p in params)


def test_rollout_shapes_alive_and_clamp():
    model, policy, value = tiny_world(2, E=4)
    start = torch.randn(5, 2, dtype=f64)
    low, high = torch.tensor([-0.5, -0.2], dtype=f64), torch.tensor([0.5, 0.3], dtype=f64)
    ro = imagine_rollout(model, policy, start, 4, low, high)
    assert ro.states.shape == (5, 4, 5, 2)
    assert ro.rewards.shape == ro.continues.shape == ro.log_probs.shape == (4, 4, 5)
    assert ro.alive.shape == (5, 4, 5) and ro.epistemic.shape == (4, 5)
    torch.testing.assert_close(ro.states[0], start.expand(4, -1, -1))
    torch.testing.assert_close(ro.alive[0], torch.ones(4, 5, dtype=ro.alive.dtype))
    torch.testing.assert_close(ro.alive[1:], torch.cumprod(ro.continues, 0))
    assert ((ro.continues > 0) & (ro.continues < 1)).all()
    assert (ro.states[1:] >= low).all() and (ro.states[1:] <= high).all()
    assert (ro.epistemic >= 0).all()
    # Each member rolls out its own particle.
    assert not torch.allclose(ro.states[2, 0], ro.states[2, 1])


def test_particle_returns_hand_computed():
    H, E, B = 2, 2, 1
    rewards = torch.tensor([[[1.0], [2.0]], [[3.0], [4.0]]])  # (H, E, B)
    continues = torch.tensor([[[0.5], [1.0]], [[1.0], [0.25]]])
    alive = torch.cat([torch.ones(1, E, B), torch.cumprod(continues, 0)])
    states = torch.tensor([0.0, 0.0, 10.0]).view(H + 1, 1, 1, 1).expand(H + 1, E, B, 1) + torch.tensor([[0.0], [1.0]]).view(1, E, 1, 1)
    ro = Rollout(states, rewards, continues, alive, torch.zeros(H, E, B), torch.zeros(H, B))
    value = lambda s: s.squeeze(-1)  # V(s) = s
    g = 0.9
    got = particle_returns(ro, value, g)
    # member 0: 1 + 0.9·0.5·3 + 0.81·0.5·10 ; member 1: 2 + 0.9·1·4 + 0.81·0.25·11
    expected = torch.tensor([[1 + g * 0.5 * 3 + g**2 * 0.5 * 10.0], [2 + g * 4 + g**2 * 0.25 * 11.0]])
    torch.testing.assert_close(got, expected)


def test_mean_variance_prefers_agreement_when_lambda_positive():
    agree = torch.tensor([[1.0], [1.0], [1.0]])
    disagree = torch.tensor([[0.0], [1.0], [2.0]])
    for lam in (0.1, 0.5, 2.0):
        j_agree, m_a, s_a = mean_variance_objective(agree, lam)
        j_dis, m_d, s_d = mean_variance_objective(disagree, lam)
        assert float(j_agree) > float(j_dis)
        assert float(m_a) == float(m_d) == pytest.approx(1.0)
        assert float(s_a) == 0.0 and float(s_d) == pytest.approx(math.sqrt(2 / 3))
        assert float(j_dis) == pytest.approx(1.0 - lam * math.sqrt(2 / 3))
    j_agree, _, _ = mean_variance_objective(agree, 0.0)
    j_dis, _, _ = mean_variance_objective(disagree, 0.0)
    assert float(j_agree) == pytest.approx(float(j_dis))
    # Averaged over start states (columns); a single member has no spread.
    both = torch.cat([agree, disagree], 1)
    assert float(mean_variance_objective(both, 0.5)[0]) == pytest.approx(1.0 - 0.25 * math.sqrt(2 / 3))
    assert float(mean_variance_objective(torch.tensor([[3.0, 5.0]]), 1.0)[0]) == pytest.approx(4.0)


def test_lambda_returns_hand_computed():
    r = torch.tensor([1.0, 2.0, 3.0], dtype=f64)
    c = torch.tensor([1.0, 0.5, 1.0], dtype=f64)
    v = torch.tensor([10.0, 20.0, 30.0, 40.0], dtype=f64)
    g = 0.9
    # λ = 1: discounted Monte Carlo with the bootstrapped tail V(s_H).
    mc2 = 3 + g * 40
    mc1 = 2 + g * 0.5 * mc2
    mc0 = 1 + g * 1.0 * mc1
    torch.testing.assert_close(lambda_returns(r, c, v, g, 1.0), torch.tensor([mc0, mc1, mc2], dtype=f64))
    assert mc0 == pytest.approx(18.595)
    # λ = 0: one-step TD targets r_t + γ c_t V(s_{t+1}).
    torch.testing.assert_close(lambda_returns(r, c, v, g, 0.0), torch.tensor([19.0, 15.5, 39.0], dtype=f64))
    # λ = 0.5 by hand.
    torch.testing.assert_close(lambda_returns(r, c, v, g, 0.5), torch.tensor([17.88625, 17.525, 39.0], dtype=f64))
    # Batched (H, E, B) inputs keep their shape and act elementwise.
    rb = r.view(3, 1, 1).expand(3, 2, 4)
    cb = c.view(3, 1, 1).expand(3, 2, 4)
    vb = v.view(4, 1, 1).expand(4, 2, 4)
    out = lambda_returns(rb, cb, vb, g, 0.5)
    assert out.shape == (3, 2, 4)
    torch.testing.assert_close(out[:, 1, 3], torch.tensor([17.88625, 17.525, 39.0], dtype=f64))


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


# -- the learner --------------------------------------------------------------------------------------
def test_policy_learner_updates_run_and_change_the_policy():
    torch.manual_seed(6)
    pcfg = PolicyConfig(hidden_layers=1, hidden_size=16, horizon=3, start_states=16, actor_lr=1e-3, value_lr=1e-3,
                        alpha_lr=1e-2)
    mcfg = ModelConfig(ensemble_size=3, hidden_layers=1, hidden_size=16, elites=2)
    learner = PolicyLearner(pcfg, mcfg, obs_dim=3, action_low=[-1.0, -2.0], action_high=[1.0, 2.0], seed=0)
    # Weights from a model learner (random, untrained), as published in a run.
    ml = ModelLearner(mcfg, 3, 2, seed=1)
    learner.set_model_weights(ml.weights(), version=7)
    assert learner.model_version == 7
    before_policy = [p.detach().clone() for p in learner.policy.parameters()]
    before_value = [p.detach().clone() for p in learner.value.parameters()]
    before_target = [p.detach().clone() for p in learner.target_value.parameters()]
    before_alpha = float(learner.log_alpha.detach())
    rng = np.random.default_rng(6)
    for _ in range(4):
        metrics = learner.update(rng.standard_normal((16, 3)).astype(np.float32))
        assert metrics.keys() >= {"policy/objective", "policy/return_mean", "policy/return_std", "policy/entropy",
                                  "policy/alpha", "policy/value_loss", "policy/actor_grad_norm", "policy/epistemic"}
        assert all(np.isfinite(v) for v in metrics.values()), metrics
        assert metrics["policy/return_std"] >= 0 and metrics["policy/epistemic"] >= 0
    assert learner.updates == 4
    changed = lambda before, module: any(not torch.equal(b, p) for b, p in zip(before, module.parameters()))
    assert changed(before_policy, learner.policy)
    assert changed(before_value, learner.value)
    assert changed(before_target, learner.target_value)
    assert float(learner.log_alpha.detach()) != before_alpha
    # The model is the learner's frozen copy: not trained by policy updates.
    for k, v in ml.weights().items():
        torch.testing.assert_close(learner.model.state_dict()[k], v)

    # Checkpoint round trip: a restored learner continues identically.
    other = PolicyLearner(pcfg, mcfg, obs_dim=3, action_low=[-1.0, -2.0], action_high=[1.0, 2.0], seed=5)
    other.set_model_weights(ml.weights(), version=7)
    other.load_state(learner.state())
    s = rng.standard_normal((16, 3)).astype(np.float32)
    torch.manual_seed(9)
    m1 = learner.update(s)
    torch.manual_seed(9)
    m2 = other.update(s)
    assert m1 == pytest.approx(m2, rel=1e-6, abs=1e-7)
