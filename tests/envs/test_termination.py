"""The known termination rules agree with the real environments, and `model.termination: known` uses them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from umpo_dist.config import ConfigError, ModelConfig, from_dict
from umpo_dist.envs.spec import env_spec, make_env
from umpo_dist.envs.termination import known_termination, terminated
from umpo_dist.models.ensemble import build_ensemble


@pytest.mark.parametrize("env_id", ["Hopper-v5", "Walker2d-v5", "Ant-v5", "InvertedPendulum-v5", "Hopper-v4"])
def test_the_rule_says_terminated_exactly_where_the_environment_does(env_id):
    """Random actions, episodes run to their end: the rule on each next observation == the env's flag."""
    rule = known_termination(env_id)
    env = make_env(env_id)
    rng = np.random.default_rng(0)
    flags, said = [], []
    obs, _ = env.reset(seed=0)
    for _ in range(1500):
        # Uniform actions topple these robots within tens of steps, so every run sees many terminations.
        next_obs, _, ended, truncated, _ = env.step(rng.uniform(env.action_space.low, env.action_space.high))
        flags.append(bool(ended))
        said.append(bool(terminated(rule(torch.as_tensor(next_obs, dtype=torch.float64)))))
        obs = next_obs
        if ended or truncated:
            obs, _ = env.reset(seed=int(rng.integers(1 << 30)))
    env.close()
    assert sum(flags) >= 5 and len(flags) - sum(flags) >= 100, "the run must see both outcomes for this to mean anything"
    assert said == flags
    assert bool(terminated(rule(torch.full((len(obs),), float("nan"))))) is True  # a non-finite state ends it


def test_unknown_tasks_have_no_rule_and_a_config_asking_for_one_is_refused():
    assert known_termination("HalfCheetah-v5") is None
    assert known_termination("Hopper-v3") is None  # another observation layout
    with pytest.raises(ConfigError, match=r"model\.termination.*HalfCheetah-v5.*Hopper-v5"):
        from_dict({"env": {"id": "HalfCheetah-v5"}, "model": {"termination": "known"}})
    with pytest.raises(ConfigError, match="model.termination.*known_soft"):
        from_dict({"env": {"id": "HalfCheetah-v5"}, "model": {"termination": "known_soft"}})
    with pytest.raises(ConfigError, match="model.termination"):
        from_dict({"model": {"termination": "sometimes"}})
    assert from_dict({"env": {"id": "Hopper-v5"}, "model": {"termination": "known"}}).model.termination == "known"


def test_a_model_with_the_known_rule_ends_imagined_steps_by_it_and_not_by_its_head():
    spec = env_spec("Hopper-v5")
    cfg = ModelConfig(ensemble_size=2, hidden_layers=1, hidden_size=8, elites=1)
    learned = build_ensemble(spec, cfg)
    known = build_ensemble(spec, ModelConfig(**{**cfg.__dict__, "termination": "known"}))
    known.load_state_dict(learned.state_dict())
    with torch.no_grad():  # a model that predicts no change at all, so the next state is the state
        for model in (learned, known):
            model.head.weight.zero_()
            model.head.bias.zero_()
            model.max_logvar.fill_(-30.0)
            model.min_logvar.fill_(-40.0)
    standing = torch.zeros(spec.obs_dim)
    standing[0] = 1.25  # height
    fallen = standing.clone()
    fallen[0] = 0.5
    tilted = standing.clone()
    tilted[1] = 0.3
    obs = torch.stack([standing, fallen, tilted])
    action = torch.zeros(3, spec.action_dim)
    _, _, cont_known, _ = known.step(obs, action, sample=False)
    _, _, cont_learned, _ = learned.step(obs, action, sample=False)
    torch.testing.assert_close(cont_known, torch.tensor([[1.0, 0.0, 0.0]] * 2))
    torch.testing.assert_close(cont_learned, torch.full((2, 3), 0.5))  # a zero termination logit


def test_the_soft_rule_decides_like_the_hard_one_and_gives_a_gradient_away_from_the_limit():
    spec = env_spec("Hopper-v5")
    cfg = ModelConfig(ensemble_size=2, hidden_layers=1, hidden_size=8, elites=1, termination="known_soft")
    model = build_ensemble(spec, cfg)
    rule = known_termination("Hopper-v5")
    rng = np.random.default_rng(0)
    obs = torch.zeros(400, spec.obs_dim)
    obs[:, 0] = torch.as_tensor(rng.uniform(0.5, 1.5, 400))  # heights on both sides of 0.7
    obs[:, 1] = torch.as_tensor(rng.uniform(-0.4, 0.4, 400))  # angles on both sides of ±0.2
    soft = torch.sigmoid(rule(obs))
    healthy = ~terminated(rule(obs))
    assert 50 < int(healthy.sum()) < 350
    assert torch.equal(soft > 0.5, healthy)
    # Standing well inside the limits continues almost surely; just inside the height limit, the gradient
    # of the continuation probability points up (away from falling).
    standing = torch.zeros(1, spec.obs_dim)
    standing[0, 0] = 1.25
    assert float(torch.sigmoid(rule(standing))) > 0.9999
    low = standing.clone()
    low[0, 0] = 0.72
    low.requires_grad_(True)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
    _, _, cont, _ = model.step(low, torch.zeros(1, spec.action_dim), sample=False)
    assert 0.5 < float(cont[0, 0].detach()) < 0.9
    cont.sum().backward()
    assert float(low.grad[0, 0]) > 0 and float(low.grad[0, 1]) == 0.0
