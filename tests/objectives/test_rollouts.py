"""Differentiable imagined rollouts through the ensemble, particle returns, λ-returns."""

from __future__ import annotations

import pytest
import torch

from umpo_dist.models.ensemble import EnsembleDynamics
from umpo_dist.models.policy import TanhGaussianPolicy, ValueFunction
from umpo_dist.objectives.mean_variance import mean_variance_objective
from umpo_dist.objectives.rollouts import Rollout, imagine_rollout, lambda_returns, particle_returns

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


def objective(model, policy, value, start, horizon=3, risk_lambda=0.5, alpha=0.1, noise_seed=123, bounds=None,
              shuffle=False):
    torch.manual_seed(noise_seed)  # the same reparameterisation noise (and member order) for every evaluation
    low, high = bounds if bounds is not None else (None, None)
    ro = imagine_rollout(model, policy, start, horizon, low, high, shuffle_members=shuffle)
    returns = particle_returns(ro, value, 0.9)
    obj, _, _ = mean_variance_objective(returns, risk_lambda)
    alive = ro.alive[:-1]
    entropy = -(alive * ro.log_probs).sum() / alive.sum()
    return obj + alpha * entropy


@pytest.mark.parametrize("with_value,shuffle", [(True, False), (False, False), (True, True)])
def test_objective_gradient_through_the_model_matches_finite_differences(with_value, shuffle):
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
    J = objective(model, policy, value, start, alpha=alpha, bounds=bounds, shuffle=shuffle)
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
                up = float(objective(model, policy, value, start, alpha=alpha, bounds=bounds, shuffle=shuffle))
                flat[j] = old - eps
                down = float(objective(model, policy, value, start, alpha=alpha, bounds=bounds, shuffle=shuffle))
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


@pytest.mark.parametrize("shuffle", [False, True])
def test_which_member_steps_each_particle(shuffle):
    """Fixed propagation: particle e is always member e's. Shuffled: at every step each start state's particles
    are stepped by every member exactly once, in an order that changes, and each particle's step is that
    member's prediction for the particle's own state and action."""
    E, B, H = 4, 6, 5
    model, policy, _ = tiny_world(3, E=E)
    with torch.no_grad():  # no aleatoric noise: a step is its member's mean, so the member can be read off
        model.max_logvar.fill_(-60.0)
        model.min_logvar.fill_(-70.0)
    start = torch.randn(B, 2, dtype=f64, generator=torch.Generator().manual_seed(4))
    torch.manual_seed(5)
    with torch.no_grad():
        ro = imagine_rollout(model, policy, start, H, shuffle_members=shuffle)
    used = []
    for t in range(H):
        s, a = ro.states[t], ro.actions[t]  # (E, B, ·)
        # every member's prediction for every particle: (members, particles, B, obs)
        means = torch.stack([model.predict(s[p], a[p])["mean"][..., :2] for p in range(E)], 1)
        error = (s.unsqueeze(0) + means - ro.states[t + 1].unsqueeze(0)).abs().amax(-1)
        member = error.argmin(0)  # (particles, B)
        assert float(error.gather(0, member[None]).max()) < 1e-9  # each step is exactly one member's
        assert (member.sort(0).values == torch.arange(E)[:, None]).all()  # each member once per start state
        used.append(member)
    used = torch.stack(used)
    if shuffle:
        assert (used != torch.arange(E)[None, :, None]).float().mean() > 0.5  # not the fixed pairing
        assert (used[1:] != used[:-1]).any()  # the order changes between steps
    else:
        assert (used == torch.arange(E)[None, :, None]).all()


def test_particle_returns_hand_computed():
    H, E, B = 2, 2, 1
    rewards = torch.tensor([[[1.0], [2.0]], [[3.0], [4.0]]])  # (H, E, B)
    continues = torch.tensor([[[0.5], [1.0]], [[1.0], [0.25]]])
    alive = torch.cat([torch.ones(1, E, B), torch.cumprod(continues, 0)])
    states = torch.tensor([0.0, 0.0, 10.0]).view(H + 1, 1, 1, 1).expand(H + 1, E, B, 1) + torch.tensor([[0.0], [1.0]]).view(1, E, 1, 1)
    ro = Rollout(states, torch.zeros(H, E, B, 1), rewards, continues, alive, torch.zeros(H, E, B), torch.zeros(H, B))
    value = lambda s: s.squeeze(-1)  # V(s) = s
    g = 0.9
    got = particle_returns(ro, value, g)
    # member 0: 1 + 0.9·0.5·3 + 0.81·0.5·10 ; member 1: 2 + 0.9·1·4 + 0.81·0.25·11
    expected = torch.tensor([[1 + g * 0.5 * 3 + g**2 * 0.5 * 10.0], [2 + g * 4 + g**2 * 0.25 * 11.0]])
    torch.testing.assert_close(got, expected)


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
