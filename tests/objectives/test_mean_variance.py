"""The `mean_variance` objective: the Markowitz objective and the learner that climbs it through the model."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from umpo_dist.config import Config, ConfigError, ModelConfig, PolicyConfig, TrainConfig, validate
from umpo_dist.data.replay import DataNeeds
from umpo_dist.envs.spec import EnvSpec
from umpo_dist.models.model_learner import ModelLearner
from umpo_dist.objectives import build_objective
from umpo_dist.objectives.mean_variance import MeanVarianceObjective, mean_variance_objective
from umpo_dist.models.policy import ValueFunction
from umpo_dist.objectives.rollouts import imagine_rollout, lambda_returns, particle_returns

torch.set_num_threads(1)


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


# -- the learner --------------------------------------------------------------------------------------
SPEC = EnvSpec("test", 3, (-1.0, -2.0), (1.0, 2.0))


def make_config(seed: int, **policy) -> Config:
    pcfg = PolicyConfig(**{**dict(hidden_layers=1, hidden_size=16, horizon=3, start_states=16, actor_lr=1e-3,
                                  value_lr=1e-3, alpha_lr=1e-2), **policy})
    mcfg = ModelConfig(ensemble_size=3, hidden_layers=1, hidden_size=16, elites=2)
    return Config(model=mcfg, policy=pcfg, train=TrainConfig(seed=seed))


def test_the_registry_builds_it_by_name():
    cfg = make_config(seed=0)
    assert cfg.policy.objective == "mean_variance"
    objective = build_objective(cfg, SPEC)
    assert isinstance(objective, MeanVarianceObjective)
    assert objective.needs == DataNeeds(start_states=16) and objective.risk_lambda == cfg.mean_variance.risk_lambda


def test_policy_learner_updates_run_and_change_the_policy():
    torch.manual_seed(6)
    cfg = make_config(seed=0)
    mcfg = cfg.model
    learner = MeanVarianceObjective(cfg, SPEC)
    assert learner.needs == DataNeeds(start_states=16)
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
        metrics = learner.update({"start_states": rng.standard_normal((16, 3)).astype(np.float32)})
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
    other = MeanVarianceObjective(make_config(seed=5), SPEC)
    other.set_model_weights(ml.weights(), version=7)
    other.load_state(learner.state())
    s = rng.standard_normal((16, 3)).astype(np.float32)
    torch.manual_seed(9)
    m1 = learner.update({"start_states": s})
    torch.manual_seed(9)
    m2 = other.update({"start_states": s})
    assert m1 == pytest.approx(m2, rel=1e-6, abs=1e-7)


# -- it climbs its objective ----------------------------------------------------------------------------
HIGH = np.array(SPEC.action_high, np.float32)


def synthetic_world(rng: np.random.Generator, n: int, ensemble_size: int) -> dict[str, np.ndarray]:
    """Transitions of a world whose best action depends on the state: r = −‖a/high − tanh(s[:2])‖²."""
    s = rng.standard_normal((n, 3)).astype(np.float32)
    a = (rng.uniform(-1, 1, (n, 2)) * HIGH).astype(np.float32)
    r = -((a / HIGH - np.tanh(s[:, :2])) ** 2).sum(1)
    nxt = 0.9 * s + 0.1 * np.concatenate([a / HIGH, np.zeros((n, 1), np.float32)], 1)
    return {"obs": s, "action": a, "reward": r.astype(np.float32), "next_obs": nxt.astype(np.float32),
            "terminated": np.zeros(n, np.float32), "truncated": np.zeros(n, np.float32),
            "weights": np.ones((n, ensemble_size), np.float32)}


def fixed_objective(learner: MeanVarianceObjective, start: torch.Tensor, value, alpha: float, noise_seed: int):
    """J = mean − λ·std of the particle returns + α·entropy, with fixed noise, value tail and α: (J, mean–std part)."""
    torch.manual_seed(noise_seed)
    with torch.no_grad():
        low, high = learner._state_bounds()
        ro = imagine_rollout(learner.model, learner.policy, start, learner.cfg.horizon, low, high)
        returns = particle_returns(ro, value, learner.cfg.gamma)
        mv, _, _ = mean_variance_objective(returns, learner.risk_lambda)
        alive = ro.alive[:-1]
        entropy = -(alive * ro.log_probs).sum() / alive.sum()
    return float(mv + alpha * entropy), float(mv)


def test_updates_raise_the_objective_on_a_fixed_model():
    mcfg = ModelConfig(ensemble_size=5, hidden_layers=2, hidden_size=32, elites=3, batch_size=128, lr=3e-3)
    # A briefly trained model of the synthetic world, then frozen: only the policy may move J.
    ml = ModelLearner(mcfg, SPEC.obs_dim, SPEC.action_dim, seed=0)
    rng = np.random.default_rng(0)
    for _ in range(300):
        ml.update(synthetic_world(rng, 128, mcfg.ensemble_size))
    model = ml.model.requires_grad_(False)

    cfg = Config(model=mcfg, policy=PolicyConfig(hidden_layers=2, hidden_size=32, horizon=5, start_states=64,
                                                 init_temperature=0.1), train=TrainConfig(seed=0))
    learner = MeanVarianceObjective(cfg, SPEC)
    learner.set_model_weights(model.state_dict(), 0)
    start = torch.as_tensor(synthetic_world(np.random.default_rng(100), 64, 5)["obs"])
    # J is measured with the initial value function and temperature, so a value net that learns (or an α that
    # changes) cannot raise it: only a better policy can.
    value0 = copy.deepcopy(learner.value).requires_grad_(False)
    alpha0 = float(learner.log_alpha.detach().exp())
    seeds = range(10)
    before = np.array([fixed_objective(learner, start, value0, alpha0, s) for s in seeds])
    weights_before = copy.deepcopy(model.state_dict())
    for _ in range(150):
        learner.update({"start_states": start.numpy()})
    after = np.array([fixed_objective(learner, start, value0, alpha0, s) for s in seeds])

    # Measured: J −4.73 ± 0.08 → −2.37 ± 0.07 over the 10 noise draws (a rise of ~29 noise σ), and the
    # mean − λ·std part −4.80 → −2.29; the thresholds below leave a wide margin and still need a real climb.
    noise = max(before[:, 0].std(), after[:, 0].std())
    rise = after[:, 0].mean() - before[:, 0].mean()
    assert rise > 10 * noise, (rise, noise)
    assert (after[:, 0] > before[:, 0]).all(), "J must rise under every fixed noise draw"
    # The rise is the model's returns (mean − λ·std), not only the entropy bonus.
    mv_rise = after[:, 1].mean() - before[:, 1].mean()
    assert mv_rise > 10 * max(before[:, 1].std(), after[:, 1].std()), mv_rise
    for k, v in weights_before.items():  # the model stayed fixed
        torch.testing.assert_close(learner.model.state_dict()[k], v)


# -- an ensemble of value functions ---------------------------------------------------------------------
def test_value_ensemble_members_mean_and_pessimistic_subsets():
    torch.manual_seed(0)
    vf = ValueFunction(3, hidden_layers=1, hidden_size=8, members=4)
    vf.set_obs_stats(torch.tensor([0.5, -1.0, 2.0]), torch.tensor([2.0, 0.5, 1.0]))
    obs = torch.randn(5, 7, 3)
    every = vf.members_values(obs)
    assert every.shape == (4, 5, 7)
    # Member 2 by hand: its own slice of every layer, on the scaled observation.
    x = ((obs - vf.obs_mean) / vf.obs_std).reshape(-1, 3)
    hidden = torch.nn.functional.silu(x @ vf.layers[0].weight[2] + vf.layers[0].bias[2])
    torch.testing.assert_close(every[2], (hidden @ vf.layers[1].weight[2] + vf.layers[1].bias[2]).reshape(5, 7))
    assert not torch.allclose(every[0], every[1])  # the members differ (their own initialisations)
    torch.testing.assert_close(vf(obs), every.mean(0))  # the particle returns' tail: the members' mean
    torch.testing.assert_close(vf.members_values(obs, index=torch.tensor([3, 1])), every[[3, 1]])
    torch.testing.assert_close(vf.pessimistic(obs, 4), every.min(0).values)
    torch.testing.assert_close(vf.pessimistic(obs, 9), every.min(0).values)  # capped at the members
    pairs = [(i, j) for i in range(4) for j in range(i + 1, 4)]
    drawn = set()
    for _ in range(40):
        got = vf.pessimistic(obs, 2)
        # (a subset's batched matmul may differ from the whole ensemble's in the last bits on some CPUs)
        match = [p for p in pairs if torch.allclose(got, torch.minimum(every[p[0]], every[p[1]]), rtol=0, atol=1e-6)]
        assert len(match) == 1, "the bootstrap is the minimum of one pair of members"
        drawn.add(match[0])
    assert len(drawn) >= 4  # pairs drawn at random, not a fixed one


def test_one_value_member_is_the_plain_value_function():
    torch.manual_seed(0)
    vf = ValueFunction(3, hidden_layers=2, hidden_size=8)
    assert sorted(vf.state_dict()) == ["high", "layer_norm_eps", "low", "net.0.bias", "net.0.weight", "net.2.bias", "net.2.weight",
                                       "net.4.bias", "net.4.weight", "obs_mean", "obs_std"]
    obs = torch.randn(6, 3)
    torch.testing.assert_close(vf.members_values(obs), vf(obs).unsqueeze(0))
    torch.testing.assert_close(vf.pessimistic(obs, 2), vf(obs))
    assert torch.equal(vf(obs), vf.net(obs).squeeze(-1))  # no bounds set: the network's own output
    # A value function saved before the bounds existed loads as it was.
    old = {k: v for k, v in vf.state_dict().items() if k not in ("low", "high")}
    vf.set_bounds(torch.tensor(10.0), torch.tensor(30.0))
    torch.testing.assert_close(vf(obs), 20 + 10 * vf.net(obs).squeeze(-1))  # centre + half width · output
    vf.load_state_dict(old)
    assert (float(vf.low), float(vf.high)) == (-1.0, 1.0) and torch.equal(vf(obs), vf.net(obs).squeeze(-1))


@pytest.mark.parametrize("members", [1, 3])
def test_value_layer_norm_normalises_the_inputs_of_the_later_layers(members):
    torch.manual_seed(0)
    vf = ValueFunction(3, hidden_layers=2, hidden_size=8, members=members, layer_norm=True)
    obs = torch.randn(5, 3)
    linears = ([(m.weight.T, m.bias) for m in vf.net if isinstance(m, torch.nn.Linear)] if members == 1 else
               [(layer.weight[-1], layer.bias[-1]) for layer in vf.layers])  # the last member's
    x = obs
    for k, (weight, bias) in enumerate(linears):
        if k:
            x = torch.nn.functional.silu(x)
            x = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-5)
        x = x @ weight + bias
    torch.testing.assert_close(vf.members_values(obs)[-1], x.squeeze(-1))
    plain = ValueFunction(3, hidden_layers=2, hidden_size=8, members=members)
    with pytest.raises(ValueError, match="value-function .* trained with layer normalisation; this network is built without"):
        plain.load_state_dict(vf.state_dict(), strict=False)
    with pytest.raises(ValueError, match="trained without layer normalisation; this network is built with it"):
        vf.load_state_dict(plain.state_dict(), strict=False)


@pytest.mark.parametrize("members", [1, 3])
def test_value_dropout_drops_hidden_units_only_when_asked(members):
    torch.manual_seed(0)
    vf = ValueFunction(3, hidden_layers=2, hidden_size=64, members=members, layer_norm=True, dropout=0.5)
    obs = torch.randn(5, 3)
    whole = vf.members_values(obs)
    assert torch.equal(vf.members_values(obs), whole)  # the actor's tail and the targets: no units dropped
    assert not torch.allclose(vf.members_values(obs, dropout=True), whole)
    vf.dropout = 1.0  # every hidden unit dropped: what is left is the output layer's bias, whatever the input
    dropped = vf.members_values(obs, dropout=True)
    constant = lambda values: torch.equal(values, values[:, :1].expand_as(values))
    assert constant(dropped) and not constant(whole)
    vf.dropout = 0.0
    assert torch.equal(vf.members_values(obs, dropout=True), whole)
    with pytest.raises(ValueError, match="dropout must be in"):
        ValueFunction(3, dropout=1.5)


@pytest.mark.parametrize("dropout", [0.0, 1.0])
def test_value_dropout_acts_in_the_critic_losses(dropout):
    """At rate 1 the critic's imagined and real regressions see no hidden unit, so one update moves only the
    output layer's bias; at rate 0 it moves every layer."""
    cfg = make_config(seed=0, critic="q", value_members=3, real_critic_batch=8, value_dropout=dropout)
    learner = MeanVarianceObjective(cfg, SPEC)
    learner.set_model_weights(ModelLearner(cfg.model, 3, 2, seed=1).weights(), version=0)
    before = copy.deepcopy(learner.value.state_dict())
    rng = np.random.default_rng(2)
    learner.update({"start_states": rng.standard_normal((16, 3)).astype(np.float32),
                    "transitions": real_transitions(rng, 8, 0.0)})
    after = learner.value.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    weights = {f"layers.{i}.{p}" for i in range(len(learner.value.layers)) for p in ("weight", "bias")}
    last_bias = f"layers.{len(learner.value.layers) - 1}.bias"
    assert moved & weights == ({last_bias} if dropout else weights)


def trained_learner(cfg: Config, updates: int = 3) -> tuple[MeanVarianceObjective, np.random.Generator]:
    learner = MeanVarianceObjective(cfg, SPEC)
    learner.set_model_weights(ModelLearner(cfg.model, 3, 2, seed=1).weights(), version=0)
    rng = np.random.default_rng(2)
    for _ in range(updates):  # the target members drift from the members
        learner.update({"start_states": rng.standard_normal((16, 3)).astype(np.float32)})
    return learner, rng


def assert_restored_continues_identically(learner: MeanVarianceObjective, cfg: Config, start: np.ndarray) -> None:
    """A learner built from `cfg` (another seed) and loaded from `learner.state()` takes the same next update."""
    other = MeanVarianceObjective(cfg, SPEC)
    other.set_model_weights(learner.model.state_dict(), version=0)
    other.load_state(learner.state())
    torch.manual_seed(9)
    m1 = learner.update({"start_states": start})
    torch.manual_seed(9)
    m2 = other.update({"start_states": start})
    assert m1 == pytest.approx(m2, rel=1e-6, abs=1e-7)


def replay_update(before: MeanVarianceObjective, start: np.ndarray, seed: int):
    """The rollout of `before.update` under `torch.manual_seed(seed)`, and the value loss for given bootstrap values."""
    cfg = before.cfg
    torch.manual_seed(seed)
    with torch.no_grad():
        low, high = before._state_bounds()
        ro = imagine_rollout(before.model, before.policy, torch.as_tensor(start), cfg.horizon, low, high)
    alive = ro.alive[:-1]

    @torch.no_grad()
    def loss(bootstrap: torch.Tensor, value: ValueFunction) -> float:
        targets = lambda_returns(ro.rewards, ro.continues, bootstrap, cfg.gamma, cfg.lambda_return)
        return float((alive * (value.members_values(ro.states[:-1]) - targets) ** 2).sum() / alive.sum())

    return ro, loss


def test_value_members_regress_on_the_pessimistic_lambda_returns():
    cfg = make_config(seed=0, value_members=3, value_target_min=3)
    learner, rng = trained_learner(cfg)
    before = copy.deepcopy(learner)
    start = rng.standard_normal((16, 3)).astype(np.float32)
    torch.manual_seed(3)
    metrics = learner.update({"start_states": start})

    # The same update's value loss by hand: the same noise, every member against the minimum of the targets.
    ro, loss = replay_update(before, start, seed=3)
    with torch.no_grad():
        target_values = before.target_value.members_values(ro.states)
    assert metrics["policy/value_loss"] == pytest.approx(loss(target_values.min(0).values, before.value), rel=1e-5)
    assert metrics["policy/value_loss"] != pytest.approx(loss(target_values.mean(0), before.value), rel=1e-3)
    # Every member learned (each its own slice of the batched weights).
    for old, new in zip(before.value.parameters(), learner.value.parameters()):
        assert all(not torch.equal(o, n) for o, n in zip(old, new))
    # A checkpoint carries the members; a restored learner continues identically.
    assert_restored_continues_identically(learner, make_config(seed=5, value_members=3, value_target_min=3), start)


def test_value_bounds_follow_the_imagined_rewards_and_clamp_the_bootstrap():
    cfg = make_config(seed=0, value_bounds=True, gamma=0.9, value_lr=0.05)
    fresh = MeanVarianceObjective(cfg, SPEC)
    fresh.set_model_weights(ModelLearner(cfg.model, 3, 2, seed=1).weights(), version=0)
    start = np.random.default_rng(4).standard_normal((16, 3)).astype(np.float32)
    first = copy.deepcopy(fresh)
    torch.manual_seed(5)
    fresh.update({"start_states": start})
    ro, _ = replay_update(first, start, seed=5)
    q01, q99 = np.quantile(ro.rewards.numpy().ravel(), [0.01, 0.99]) * 10  # 1 / (1 − γ) = 10
    # The first update sets them: the rewards' quantiles over 1 − γ, widened to include 0.
    expected = (min(q01, 0.0), max(q99, 0.0))
    assert q01 < 0 or q99 > 0
    for net in (fresh.value, fresh.target_value):
        assert (float(net.low), float(net.high)) == pytest.approx(expected, rel=1e-4)

    learner, rng = trained_learner(cfg)
    # Narrow bounds and a target network whose outputs reach beyond them, so that the clamp matters.
    for net in (learner.value, learner.target_value):
        net.set_bounds(torch.tensor(-0.5), torch.tensor(0.2))
    with torch.no_grad():
        learner.target_value.net[-1].weight.mul_(30)
    before = copy.deepcopy(learner)
    start = rng.standard_normal((16, 3)).astype(np.float32)
    torch.manual_seed(3)
    metrics = learner.update({"start_states": start})
    ro, loss = replay_update(before, start, seed=3)
    q01, q99 = np.quantile(ro.rewards.numpy().ravel(), [0.01, 0.99]) * 10
    low = -0.5 + 0.05 * (min(q01, 0.0) + 0.5)  # later updates move them at the rate value_lr
    high = 0.2 + 0.05 * (max(q99, 0.0) - 0.2)
    assert (metrics["policy/value_low"], metrics["policy/value_high"]) == pytest.approx((low, high), rel=1e-4)
    # The value loss of that update: the value read within the new bounds, its targets from clamped bootstraps.
    now = copy.deepcopy(before.value)
    now.set_bounds(torch.tensor(low), torch.tensor(high))
    with torch.no_grad():
        raw = before.target_value.net(before.target_value.scale(ro.states)).squeeze(-1)
        bootstrap = (low + high) / 2 + (high - low) / 2 * raw
    assert ((bootstrap < low) | (bootstrap > high)).float().mean() > 0.1
    clamped = loss(bootstrap.clamp(low, high), now)
    assert metrics["policy/value_loss"] == pytest.approx(clamped, rel=1e-4)
    assert metrics["policy/value_loss"] != pytest.approx(loss(bootstrap, now), rel=1e-3)


# -- policy.critic: q ---------------------------------------------------------------------------------
def test_q_critic_regresses_on_soft_lambda_returns_at_the_imagined_actions():
    cfg = make_config(seed=0, critic="q", entropy_in_return=True, init_temperature=0.5)
    learner, rng = trained_learner(cfg)
    assert learner.value.action_dim == SPEC.action_dim
    with pytest.raises(ValueError, match="evaluated at an action"):
        learner.value(torch.zeros(2, 3))
    before = copy.deepcopy(learner)
    start = rng.standard_normal((16, 3)).astype(np.float32)
    torch.manual_seed(3)
    metrics = learner.update({"start_states": start})

    # The same update by hand: the same noise (the final action is the rollout's last draw).
    torch.manual_seed(3)
    with torch.no_grad():
        low, high = before._state_bounds()
        ro = imagine_rollout(before.model, before.policy, torch.as_tensor(start), cfg.policy.horizon, low, high,
                             final_action=True)
        alpha = before.log_alpha.exp()
        actions = torch.cat([ro.actions, ro.final_action[None]])
        log_probs = torch.cat([ro.log_probs, ro.final_log_prob[None]])
        soft_values = before.target_value(ro.states, actions) - alpha * log_probs
        v_style = lambda_returns(ro.rewards - alpha * ro.log_probs, ro.continues, soft_values, cfg.policy.gamma,
                                 cfg.policy.lambda_return)
        q_pred = before.value(ro.states[:-1], actions[:-1])
    alive = ro.alive[:-1]

    def loss(targets):
        return float((alive * (q_pred - targets) ** 2).sum() / alive.sum())

    # Q(s_t, a_t)'s target is the soft λ-return from s_t plus a_t's own entropy bonus back (a_t is given).
    assert metrics["policy/value_loss"] == pytest.approx(loss(v_style + alpha * ro.log_probs), rel=1e-5)
    assert metrics["policy/value_loss"] != pytest.approx(loss(v_style), rel=1e-3)
    # A checkpoint carries the Q function; a restored learner continues identically.
    assert_restored_continues_identically(learner, make_config(seed=5, critic="q", entropy_in_return=True), start)


@pytest.mark.parametrize("critic", ["q", "value"])
def test_the_q_tail_moves_the_policy_through_its_last_action(critic):
    """A model whose next state ignores the action and whose rewards are 0, and a critic fixed to prefer a
    large first action component: only a Q tail gives the policy a reason to move its action."""
    cfg = make_config(seed=0, critic=critic, value_lr=1e-12, init_temperature=1e-5, alpha_lr=0.0, actor_lr=1e-2)
    weights = ModelLearner(cfg.model, 3, 2, seed=1).weights()
    for name in ("head.weight", "head.bias"):
        weights[name] = torch.zeros_like(weights[name])
    weights["head.bias"][..., -1] = -10.0  # never terminates
    weights["max_logvar"] = torch.full_like(weights["max_logvar"], -30.0)
    weights["min_logvar"] = torch.full_like(weights["min_logvar"], -40.0)
    weights["target_norm.mean"] = torch.tensor([0.05, 0.0, -0.05, 0.0])  # a drift, reward 0
    learner = MeanVarianceObjective(cfg, SPEC)
    learner.set_model_weights(weights, version=0)
    with torch.no_grad():  # V(s) = Q(s, a) = Σ_units silu(a_0): larger with the first action component
        for net in (learner.value, learner.target_value):
            first, last = net.net[0], net.net[-1]
            for p in net.parameters():
                p.zero_()
            if critic == "q":
                first.weight[:, SPEC.obs_dim] = 1.0
            last.weight.fill_(1.0)
    probe = torch.as_tensor(np.random.default_rng(0).standard_normal((64, 3)), dtype=torch.float32)
    action_before = learner.policy.act(probe.numpy(), deterministic=True)[:, 0].mean()
    rng = np.random.default_rng(1)
    grads = [learner.update({"start_states": rng.standard_normal((16, 3)).astype(np.float32)})["policy/actor_grad_norm"]
             for _ in range(60)]
    moved = learner.policy.act(probe.numpy(), deterministic=True)[:, 0].mean() - action_before
    if critic == "q":
        assert min(grads) > 0.1
        assert moved > 0.5  # toward the critic's preferred action (the box's high is 1)
    else:  # nothing but the tiny entropy bonus (Adam would still move the policy on it, in no useful direction)
        assert max(grads) < 1e-3


# -- policy.value_targets: start ----------------------------------------------------------------------
@pytest.mark.parametrize("critic", ["value", "q"])
def test_start_value_targets_fit_the_start_states_to_the_particle_returns(critic):
    """DHMBPO's critic: only the start states are fitted, on each particle's soft H-step return with the
    pessimistic target tail (a Q function at the particle's first action, whose entropy bonus is given back)."""
    cfg = make_config(seed=0, critic=critic, value_targets="start", value_members=3, value_target_min=2,
                      entropy_in_return=True, init_temperature=0.5)
    learner, rng = trained_learner(cfg)
    before = copy.deepcopy(learner)
    start = rng.standard_normal((16, 3)).astype(np.float32)
    torch.manual_seed(3)
    metrics = learner.update({"start_states": start})

    torch.manual_seed(3)  # the same update by hand: the same noise, then the same two target members
    with torch.no_grad():
        low, high = before._state_bounds()
        ro = imagine_rollout(before.model, before.policy, torch.as_tensor(start), cfg.policy.horizon, low, high,
                             final_action=critic == "q")
        alpha = before.log_alpha.exp()
        q = critic == "q"
        pick = torch.randperm(3)[:2]
        tail = before.target_value.members_values(ro.states[-1], ro.final_action if q else None, pick).min(0).values
        if q:
            tail = tail - alpha * ro.final_log_prob
        targets = particle_returns(ro, tail, cfg.policy.gamma, ro.rewards - alpha * ro.log_probs)
        if q:
            targets = targets + alpha * ro.log_probs[0]
        pred = before.value.members_values(ro.states[0], ro.actions[0] if q else None)  # (members, E, B)
        expected = float(((pred - targets) ** 2).sum(0).mean())  # summed over members, as the λ-return loss
        without_entropy = float(((pred - particle_returns(ro, tail, cfg.policy.gamma)) ** 2).sum(0).mean())
    assert metrics["policy/value_loss"] == pytest.approx(expected, rel=1e-5)
    assert metrics["policy/value_loss"] != pytest.approx(without_entropy, rel=1e-3)
    assert_restored_continues_identically(learner, make_config(seed=5, critic=critic, value_targets="start",
                                                               value_members=3, entropy_in_return=True), start)


@pytest.mark.parametrize("propagation", ["member", "shuffled"])
def test_policy_propagation_picks_how_the_rollouts_deal_particles_to_members(propagation, monkeypatch):
    import umpo_dist.objectives.mean_variance as mv

    seen = []

    def spy(*args, **kwargs):
        seen.append(kwargs["shuffle_members"])
        return imagine_rollout(*args, **kwargs)

    monkeypatch.setattr(mv, "imagine_rollout", spy)
    learner, _ = trained_learner(make_config(seed=0, propagation=propagation), updates=2)
    assert seen == [propagation == "shuffled"] * 2
    assert all(np.isfinite(p.detach().numpy()).all() for p in learner.policy.parameters())


# -- policy.real_critic_batch: the Q critic also learns from real transitions ---------------------------
def real_transitions(rng: np.random.Generator, n: int, terminated: float) -> dict[str, np.ndarray]:
    return {"obs": rng.standard_normal((n, 3)).astype(np.float32),
            "action": rng.uniform(-1, 1, (n, 2)).astype(np.float32) * HIGH,
            "reward": rng.standard_normal(n).astype(np.float32),
            "next_obs": rng.standard_normal((n, 3)).astype(np.float32),
            "terminated": np.full(n, terminated, np.float32)}


@pytest.mark.parametrize("terminated", [0.0, 1.0])
def test_real_critic_batch_regresses_q_on_real_one_step_soft_targets(terminated):
    cfg = make_config(seed=0, critic="q", entropy_in_return=True, init_temperature=0.5, value_members=3,
                      value_target_min=2, value_bounds=True, real_critic_batch=8)
    learner = MeanVarianceObjective(cfg, SPEC)
    assert learner.needs == DataNeeds(start_states=16, transitions=8)
    learner.set_model_weights(ModelLearner(cfg.model, 3, 2, seed=1).weights(), version=0)
    rng = np.random.default_rng(2)
    for _ in range(3):  # the target members drift from the members
        metrics = learner.update({"start_states": rng.standard_normal((16, 3)).astype(np.float32),
                                  "transitions": real_transitions(rng, 8, terminated)})
        assert np.isfinite(metrics["policy/real_value_loss"])
        assert metrics["policy/value_loss"] > metrics["policy/real_value_loss"] > 0  # the sum of both losses
    batch = {k: torch.as_tensor(v) for k, v in real_transitions(rng, 8, terminated).items()}
    alpha = learner.log_alpha.exp().detach()
    torch.manual_seed(4)
    loss = float(learner._real_value_loss(batch, alpha).detach())

    torch.manual_seed(4)  # by hand: the next action's noise, then the two target members
    with torch.no_grad():
        next_action, next_log_prob = learner.policy(batch["next_obs"])
        pick = torch.randperm(3)[:2]
        tail = learner.target_value.members_values(batch["next_obs"], next_action, pick).min(0).values
        tail = tail.clamp(learner.value.low, learner.value.high) - alpha * next_log_prob
        q = learner.value.members_values(batch["obs"], batch["action"])  # (members, N)
        targets = batch["reward"] + cfg.policy.gamma * (1 - batch["terminated"]) * tail
        expected = float(((q - targets) ** 2).sum(0).mean())
        reward_only = float(((q - batch["reward"]) ** 2).sum(0).mean())
    assert loss == pytest.approx(expected, rel=1e-5)
    if terminated:  # an ended episode's target is its last reward
        assert loss == pytest.approx(reward_only, rel=1e-5)
    else:
        assert loss != pytest.approx(reward_only, rel=1e-3)


def test_real_critic_batch_fits_the_critic_to_real_returns():
    """Real transitions that all end with reward 1: Q(s, a) → 1 where the replay's actions were taken."""
    cfg = make_config(seed=0, critic="q", real_critic_batch=32, value_lr=3e-3)
    learner = MeanVarianceObjective(cfg, SPEC)
    learner.set_model_weights(ModelLearner(cfg.model, 3, 2, seed=1).weights(), version=0)
    rng = np.random.default_rng(3)
    probe = {k: torch.as_tensor(v) for k, v in real_transitions(rng, 256, 1.0).items()}
    error = lambda: float((learner.value(probe["obs"], probe["action"]).detach() - 1.0).abs().mean())
    before = error()
    for _ in range(200):
        real = real_transitions(rng, 32, 1.0) | {"reward": np.ones(32, np.float32)}
        learner.update({"start_states": rng.standard_normal((16, 3)).astype(np.float32), "transitions": real})
    assert error() < 0.5 * before


def test_a_restart_on_a_newer_model_resets_adam_empties_the_model_starts_and_trains_the_critic_first():
    """`policy.restart_every`: once the model handed over has moved that many updates on, fresh Adam moments,
    no start states of the older model, then `policy.critic_warmup` updates in which only the critic moves."""
    cfg = make_config(seed=0, critic="q", restart_every=100, critic_warmup=2, model_start_share=0.5,
                      model_start_refresh=1)
    learner, rng = trained_learner(cfg)
    weights = learner.model.state_dict()
    starts = lambda: {"start_states": rng.standard_normal((16, 3)).astype(np.float32)}
    learner.set_model_weights(weights, version=99)  # not far enough on: nothing restarts
    assert learner.restarted_at == 0 and learner.critic_only == 0
    assert learner.actor_opt.state and learner.value_opt.state and len(learner.model_starts)
    learner.set_model_weights(weights, version=100)
    assert learner.restarted_at == 100 and learner.critic_only == 2
    assert not (learner.actor_opt.state or learner.value_opt.state or learner.alpha_opt.state)
    assert len(learner.model_starts) == 0

    snapshot = lambda: ([p.detach().clone() for p in learner.policy.parameters()],
                        [p.detach().clone() for p in learner.value.parameters()], float(learner.log_alpha.detach()))
    same = lambda a, b: all(torch.equal(x, y) for x, y in zip(a, b))
    policy, value, alpha = snapshot()
    learner.update(starts())
    assert len(learner.model_starts) > 0  # refilled from the new model's rollouts
    other = MeanVarianceObjective(cfg, SPEC)  # a checkpoint keeps the restart and the warm-up left
    other.load_state(learner.state())
    assert (other.restarted_at, other.critic_only) == (100, 1)
    learner.update(starts())
    assert learner.critic_only == 0 and learner.updates == 5
    assert same(policy, learner.policy.parameters()) and float(learner.log_alpha.detach()) == alpha
    assert not same(value, learner.value.parameters())
    assert not learner.actor_opt.state and learner.value_opt.state  # the actor's moments start at its first step
    learner.update(starts())  # the warm-up is over: the actor and α move again
    assert not same(policy, learner.policy.parameters()) and float(learner.log_alpha.detach()) != alpha
    learner.set_model_weights(weights, version=199)  # counted from the last restart, not from 0
    assert learner.restarted_at == 100 and learner.critic_only == 0


def test_critic_warmup_without_restarts_is_refused():
    with pytest.raises(ConfigError, match="policy.critic_warmup"):
        validate(make_config(seed=0, critic_warmup=10), check_env=False)


@pytest.mark.parametrize("key, value", [("restart_every", 100), ("value_dropout", 0.01)])
def test_restarts_and_critic_dropout_are_refused_for_the_dyna_objective(key, value):
    with pytest.raises(ConfigError, match=f"policy.{key}.*'dyna'"):
        validate(make_config(seed=0, objective="dyna", **{key: value}), check_env=False)
    validate(make_config(seed=0, objective="mnm", **{key: value}), check_env=False)
