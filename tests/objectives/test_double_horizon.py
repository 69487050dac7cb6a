"""Double-horizon start states (design §1.4): a share of each update's start states are model states."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import umpo_dist.objectives.mean_variance as mean_variance_module
from umpo_dist.config import Config, ModelConfig, PolicyConfig, TrainConfig
from umpo_dist.envs.spec import EnvSpec
from umpo_dist.models.model_learner import ModelLearner
from umpo_dist.objectives.mean_variance import MeanVarianceObjective

torch.set_num_threads(1)

SPEC = EnvSpec("test", 3, (-1.0, -1.0), (1.0, 1.0))
MODEL = ModelConfig(ensemble_size=3, hidden_layers=1, hidden_size=16, elites=2, batch_size=64)
B, HORIZON = 32, 6


def config(**policy) -> Config:
    fields = {"hidden_layers": 1, "hidden_size": 16, "start_states": B, "model_start_horizon": HORIZON, **policy}
    return Config(model=MODEL, policy=PolicyConfig(**fields), train=TrainConfig(seed=0))


def drifting_model(drift: float) -> dict:
    """Weights of a model whose every member predicts s′ = s + drift (in every coordinate), with no noise to
    speak of, and a termination head that never says more likely ended than not."""
    weights = ModelLearner(MODEL, SPEC.obs_dim, SPEC.action_dim, seed=0).weights()
    for name in ("head.weight", "head.bias"):
        weights[name] = torch.zeros_like(weights[name])
    weights["max_logvar"] = torch.full_like(weights["max_logvar"], -30.0)
    weights["min_logvar"] = torch.full_like(weights["min_logvar"], -40.0)
    weights["target_norm.mean"] = torch.tensor([drift] * SPEC.obs_dim + [0.0])
    return weights


def objective_with(weights: dict, **policy) -> MeanVarianceObjective:
    obj = MeanVarianceObjective(config(**policy), SPEC)
    obj.set_model_weights(weights, 1)
    return obj


def record_starts(monkeypatch) -> list[torch.Tensor]:
    """The start states each update's differentiable rollouts begin from."""
    seen = []
    real = mean_variance_module.imagine_rollout

    def spy(model, policy, start_states, *args, **kwargs):
        seen.append(start_states.detach().clone())
        return real(model, policy, start_states, *args, **kwargs)

    monkeypatch.setattr(mean_variance_module, "imagine_rollout", spy)
    return seen


def test_model_start_states_come_only_from_the_model_and_fill_the_configured_share(monkeypatch):
    drift = 0.05
    obj = objective_with(drifting_model(drift), model_start_share=0.25)
    seen = record_starts(monkeypatch)
    replay = np.random.default_rng(0).normal(0, 0.5, (B, 3)).astype(np.float32)
    metrics = obj.update({"start_states": replay})

    buffer = obj.model_starts.data["next_obs"][: len(obj.model_starts)]
    assert len(obj.model_starts) == B * HORIZON == metrics["policy/model_start_buffer"]  # nothing ended
    # Every stored state is a replay start moved k = 1..H model steps along: reached by the model, not copied.
    offsets = buffer[:, None, :] - torch.as_tensor(replay)[None]  # (states, starts, obs)
    steps = offsets / drift
    on_path = ((steps - steps.round()).abs() < 1e-3).all(-1) & (steps.round() == steps.round()[..., :1]).all(-1)
    k = steps.round()[..., 0]
    assert (on_path & (k >= 1) & (k <= HORIZON)).any(1).all()
    # The update began from 8 model states and the replay's other 24, in place.
    start = seen[0]
    n = round(0.25 * B)
    assert start.shape == (B, 3)
    torch.testing.assert_close(start[n:], torch.as_tensor(replay[n:]))
    from_buffer = (start[:n, None] == buffer[None]).all(-1).any(1)
    assert from_buffer.all()
    assert not (start[:n, None] == torch.as_tensor(replay)[None]).all(-1).any()


def test_model_start_states_are_finite_and_inside_the_clamp_box():
    obj = objective_with(drifting_model(1.0), model_start_share=0.5, model_start_horizon=20)  # drifts far out
    replay = np.random.default_rng(1).normal(0, 1, (B, 3)).astype(np.float32)
    obj.update({"start_states": replay})
    low, high = obj._state_bounds()
    states = obj.model_starts.data["next_obs"][: len(obj.model_starts)]
    assert torch.isfinite(states).all()
    assert ((states >= low) & (states <= high)).all()
    assert (states == high).any()  # the box was reached and held them: the check above had something to hold


def test_states_that_ended_are_not_start_states():
    weights = drifting_model(0.05)
    ends = torch.zeros_like(weights["head.bias"])
    ends[..., -1] = 10.0  # termination logit 10: every model step ends its rollout
    weights["head.bias"] = ends
    obj = objective_with(weights, model_start_share=0.5)
    obj.update({"start_states": np.zeros((B, 3), np.float32)})
    assert len(obj.model_starts) == 0  # nothing alive to start from: this update used replay states only


def test_the_buffer_is_refreshed_every_configured_number_of_updates():
    obj = objective_with(drifting_model(0.01), model_start_share=0.5, model_start_refresh=3, model_start_buffer=500)
    rng = np.random.default_rng(2)
    sizes = []
    for _ in range(7):
        obj.update({"start_states": rng.normal(0, 0.5, (B, 3)).astype(np.float32)})
        sizes.append(obj.model_starts.total)
    per = B * HORIZON
    assert sizes == [per, per, per, 2 * per, 2 * per, 2 * per, 3 * per]  # updates 0, 3 and 6 rolled out
    assert len(obj.model_starts) == 500  # the oldest dropped


def test_share_zero_is_plain_umpo():
    weights = drifting_model(0.02)
    plain = objective_with(weights)
    zero = objective_with(weights, model_start_share=0.0, model_start_horizon=3, model_start_refresh=1)
    assert plain.model_starts is None and zero.model_starts is None
    rng = np.random.default_rng(3)
    for _ in range(3):
        data = {"start_states": rng.normal(0, 0.5, (B, 3)).astype(np.float32)}
        torch.manual_seed(5)
        a = plain.update(data)
        torch.manual_seed(5)
        b = zero.update(data)
        assert a == b and "policy/model_start_buffer" not in a
    for name, tensor in plain.state()["policy"].items():
        torch.testing.assert_close(zero.state()["policy"][name], tensor, rtol=0, atol=0)


@pytest.mark.parametrize("share", [0.5, 1.0])
def test_updates_with_model_starts_train_and_report_finite_metrics(share):
    obj = objective_with(drifting_model(0.02), model_start_share=share)
    before = [p.detach().clone() for p in obj.policy.parameters()]
    rng = np.random.default_rng(4)
    for _ in range(3):
        metrics = obj.update({"start_states": rng.normal(0, 0.5, (B, 3)).astype(np.float32)})
        assert all(np.isfinite(v) for v in metrics.values()), metrics
    assert any(not torch.equal(b, p) for b, p in zip(before, obj.policy.parameters()))
