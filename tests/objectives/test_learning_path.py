"""The learning-path options of the mean–variance objective and the model learner (each off by default)."""

import math

import numpy as np
import pytest
import torch

from umpo_dist.config import Config, ModelConfig, PolicyConfig, TrainConfig
from umpo_dist.data.replay import ReplayBuffer
from umpo_dist.envs.spec import EnvSpec
from umpo_dist.models.model_learner import ModelLearner
from umpo_dist.models.policy import TanhGaussianPolicy, build_policy
from umpo_dist.objectives.mean_variance import MeanVarianceObjective
from umpo_dist.objectives.rollouts import imagine_rollout, particle_returns

SPEC = EnvSpec("test", 3, (-1.0, -2.0), (1.0, 2.0))
MODEL = ModelConfig(ensemble_size=3, hidden_layers=1, hidden_size=16, elites=2, batch_size=64)


def config(**policy) -> Config:
    return Config(model=MODEL, policy=PolicyConfig(hidden_layers=1, hidden_size=16, start_states=32, **policy),
                  train=TrainConfig(seed=0))


def trained_model_learner(scale: float = 10.0) -> ModelLearner:
    """A model learner whose input statistics are far from identity (observations of scale ~`scale`)."""
    rng = np.random.default_rng(0)
    replay = ReplayBuffer(3, 2, 1000, 3, seed=0)
    obs = (rng.normal(size=(500, 3)) * scale + 3.0).astype(np.float32)
    act = rng.uniform(-1, 1, size=(500, 2)).astype(np.float32)
    replay.insert({"obs": obs, "action": act, "reward": obs[:, 0] * 0.1, "next_obs": obs + 0.1 * act[:, :1],
                   "terminated": np.zeros(500, np.float32), "truncated": np.zeros(500, np.float32)})
    learner = ModelLearner(MODEL, 3, 2, seed=0)
    for _ in range(20):
        learner.update(replay.sample(64))
    return learner


def test_policy_and_value_see_observations_normalised_with_the_models_statistics():
    learner = trained_model_learner()
    obj = MeanVarianceObjective(config(normalize_obs=True), SPEC)
    obj.set_model_weights(learner.weights(), learner.updates)
    norm = learner.model.input_norm
    for net in (obj.policy, obj.value, obj.target_value):
        torch.testing.assert_close(net.obs_mean, norm.mean[:3])
        torch.testing.assert_close(net.obs_std, norm.std[:3])
    assert float(norm.std[:3].min()) > 5  # far from identity: the check above means something
    obs = torch.randn(4, 3) * 10 + 3
    scaled = (obs - norm.mean[:3]) / norm.std[:3]
    torch.testing.assert_close(obj.value(obs), obj.value.net(scaled).squeeze(-1))
    # The statistics travel with the published weights: a fresh policy loading them acts the same.
    copy = build_policy(SPEC, config().policy)
    copy.load_state_dict(obj.weights())
    np.testing.assert_allclose(copy.act(obs.numpy(), deterministic=True), obj.policy.act(obs.numpy(), deterministic=True))


def test_without_normalize_obs_the_networks_see_raw_observations():
    learner = trained_model_learner()
    obj = MeanVarianceObjective(config(), SPEC)
    obj.set_model_weights(learner.weights(), learner.updates)
    assert torch.equal(obj.policy.obs_mean, torch.zeros(3)) and torch.equal(obj.policy.obs_std, torch.ones(3))


def test_a_policy_state_from_before_the_observation_statistics_loads_as_identity():
    policy = build_policy(SPEC, config().policy)
    old = {k: v for k, v in policy.state_dict().items() if k not in ("obs_mean", "obs_std")}
    other = TanhGaussianPolicy(3, [-1.0, -2.0], [1.0, 2.0], 1, 16)
    other.set_obs_stats(torch.full((3,), 5.0), torch.full((3,), 2.0))
    other.load_state_dict(old)
    assert torch.equal(other.obs_mean, torch.zeros(3)) and torch.equal(other.obs_std, torch.ones(3))
    obs = np.random.default_rng(1).normal(size=(5, 3)).astype(np.float32)
    np.testing.assert_array_equal(other.act(obs, deterministic=True), policy.act(obs, deterministic=True))


@pytest.mark.parametrize("std", [1.0, 0.5])
def test_initial_std_sets_the_pre_tanh_spread(std):
    torch.manual_seed(0)
    policy = build_policy(SPEC, config(init_std=std).policy)
    with torch.no_grad():
        _, log_std = policy._gaussian(torch.randn(256, 3) * 3)
    assert float(log_std.exp().mean()) == pytest.approx(std, rel=0.05)
    assert float(log_std.exp().std()) < 0.05 * std  # about the same for every observation


def test_default_initial_std_is_unchanged_by_the_option():
    torch.manual_seed(0)
    a = build_policy(SPEC, config().policy)
    torch.manual_seed(0)
    b = TanhGaussianPolicy(3, [-1.0, -2.0], [1.0, 2.0], 1, 16)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_entropy_enters_each_particles_discounted_return():
    learner = trained_model_learner(scale=1.0)
    obj = MeanVarianceObjective(config(entropy_in_return=True), SPEC)
    obj.set_model_weights(learner.weights(), learner.updates)
    start = torch.randn(8, 3)
    torch.manual_seed(3)
    rollout = imagine_rollout(obj.model, obj.policy, start, 4)
    alpha, gamma = 0.3, 0.9
    soft = particle_returns(rollout, obj.value, gamma, rollout.rewards - alpha * rollout.log_probs)
    hard = particle_returns(rollout, obj.value, gamma)
    expected = sum(gamma**t * rollout.alive[t] * (-alpha * rollout.log_probs[t]) for t in range(4))
    torch.testing.assert_close(soft - hard, expected)
    assert float(expected.detach().abs().mean()) > 0.01


def test_objective_with_entropy_in_return_trains_and_reports_finite_metrics():
    learner = trained_model_learner(scale=1.0)
    obj = MeanVarianceObjective(config(entropy_in_return=True, mean_rewards=True), SPEC)
    obj.set_model_weights(learner.weights(), learner.updates)
    starts = np.random.default_rng(2).normal(size=(32, 3)).astype(np.float32)
    before = [p.clone() for p in obj.policy.parameters()]
    for _ in range(3):
        metrics = obj.update({"start_states": starts})
    assert obj.updates == 3 and all(math.isfinite(v) for v in metrics.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, obj.policy.parameters()))


def test_mean_rewards_are_the_members_predicted_means():
    learner = trained_model_learner(scale=1.0)
    model = learner.model.requires_grad_(False)
    policy = build_policy(SPEC, config().policy)
    start = torch.randn(6, 3)
    torch.manual_seed(5)
    rollout = imagine_rollout(model, policy, start, 1, mean_rewards=True)
    torch.manual_seed(5)
    action, _ = policy(start.unsqueeze(0).expand(3, -1, -1))
    expected = model.predict(start.unsqueeze(0).expand(3, -1, -1), action)["mean"][..., 3]
    torch.testing.assert_close(rollout.rewards[0], expected)
    torch.manual_seed(5)
    sampled = imagine_rollout(model, policy, start, 1)
    assert not torch.allclose(sampled.rewards[0], expected)  # the default samples them


def test_model_grad_clip_bounds_the_step():
    rng = np.random.default_rng(0)
    replay = ReplayBuffer(3, 2, 1000, 3, seed=0)
    obs = (rng.normal(size=(300, 3)) * 50).astype(np.float32)
    act = rng.uniform(-1, 1, size=(300, 2)).astype(np.float32)
    replay.insert({"obs": obs, "action": act, "reward": (obs[:, 0] ** 2) * 10, "next_obs": obs * 3,
                   "terminated": np.zeros(300, np.float32), "truncated": np.zeros(300, np.float32)})
    batch = replay.sample(64)

    def applied_grad_norm(clip):
        learner = ModelLearner(ModelConfig(**{**MODEL.__dict__, "grad_clip": clip}), 3, 2, seed=0)
        learner.update(batch)
        # After Adam's first step its first moment is (1 − β1) × the gradient it was given.
        moments = [learner.optimizer.state[p]["exp_avg"] / 0.1 for p in learner.model.parameters()]
        return float(torch.sqrt(sum(m.pow(2).sum() for m in moments)))

    assert applied_grad_norm(None) > 1.0
    assert applied_grad_norm(0.01) == pytest.approx(0.01, rel=1e-3)
