"""NumericalGuard and the learners: a non-finite update is skipped and counted; repeated ones roll back."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from umpo_dist.config import Config, ModelConfig, PolicyConfig, TrainConfig
from umpo_dist.models.model_learner import ModelLearner
from umpo_dist.numerical_guard import NumericalGuard
from umpo_dist.envs.spec import EnvSpec
from umpo_dist.objectives.mean_variance import MeanVarianceObjective
from umpo_dist.data.replay import ReplayBuffer

torch.set_num_threads(1)

OBS_DIM, ACT_DIM = 4, 1
MODEL_CFG = ModelConfig(ensemble_size=3, hidden_layers=1, hidden_size=16, elites=2, batch_size=32)
POLICY_CFG = PolicyConfig(hidden_layers=1, hidden_size=16, horizon=3, start_states=16)


def snapshot(*modules) -> list[dict]:
    return [copy.deepcopy(m.state_dict()) for m in modules]


def assert_state_equal(a, b, where: str = "") -> None:
    if isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            assert_state_equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_state_equal(x, y, f"{where}[{i}]")
    elif torch.is_tensor(a):
        assert torch.equal(a, b), where
    else:
        assert a == b, where


def params_equal(module, state: dict) -> bool:
    return all(torch.equal(p, state[name]) for name, p in module.named_parameters())


@pytest.fixture
def replay() -> ReplayBuffer:
    rng = np.random.default_rng(0)
    buf = ReplayBuffer(OBS_DIM, ACT_DIM, 500, MODEL_CFG.ensemble_size, seed=1)
    obs = rng.normal(size=(300, OBS_DIM)).astype(np.float32)
    buf.insert({
        "obs": obs,
        "action": rng.uniform(-3, 3, size=(300, ACT_DIM)).astype(np.float32),
        "reward": rng.normal(size=300).astype(np.float32),
        "next_obs": (obs + 0.1 * rng.normal(size=obs.shape)).astype(np.float32),
        "terminated": np.zeros(300, np.float32),
        "truncated": np.zeros(300, np.float32),
    })
    return buf


def nan_batch(replay: ReplayBuffer) -> dict:
    batch = replay.sample(32)
    batch["reward"][3] = np.nan
    return batch


# -- the guard alone ------------------------------------------------------------------------------------
class TestGuard:
    def setup_method(self):
        torch.manual_seed(0)
        self.net = torch.nn.Linear(3, 2)
        self.opt = torch.optim.SGD(self.net.parameters(), lr=0.1, momentum=0.9)
        self.guard = NumericalGuard({"net": self.net, "opt": self.opt}, snapshot_every=3, max_consecutive=5)
        self.x = torch.randn(8, 3)

    def good_step(self):
        self.opt.zero_grad()
        self.net(self.x).pow(2).mean().backward()
        self.opt.step()
        self.guard.good()

    def test_finite(self):
        assert NumericalGuard.finite(torch.ones(3), torch.tensor(2.0))
        assert not NumericalGuard.finite(torch.ones(3), torch.tensor([1.0, float("nan")]))
        assert not NumericalGuard.finite(torch.tensor(float("inf")))
        assert not NumericalGuard.finite(torch.tensor(-float("inf")))

    def test_rollback_restores_the_last_snapshot(self):
        for _ in range(3):
            self.good_step()
        at_snapshot = snapshot(self.net, self.opt)
        self.good_step()  # after the snapshot: weights move on
        assert not params_equal(self.net, at_snapshot[0])
        with torch.no_grad():
            self.net.weight.fill_(float("nan"))  # a blow-up
        assert [self.guard.bad() for _ in range(4)] == [False] * 4
        assert self.guard.rollbacks == 0 and torch.isnan(self.net.weight).all()
        assert self.guard.bad() is True
        assert self.guard.rollbacks == 1 and self.guard.skipped == 5 and self.guard.consecutive == 0
        assert_state_equal(at_snapshot[0], self.net.state_dict(), "net")
        assert_state_equal(at_snapshot[1], self.opt.state_dict(), "opt")
        assert self.guard.metrics("x") == {"x/nonfinite_skipped": 5, "x/rollbacks": 1}

    def test_snapshot_is_a_copy_not_a_view(self):
        for _ in range(3):
            self.good_step()
        at_snapshot = snapshot(self.net)[0]
        with torch.no_grad():
            self.net.weight.add_(1.0)  # in place: a shallow snapshot would follow
        for _ in range(5):
            self.guard.bad()
        assert_state_equal(at_snapshot, self.net.state_dict())

    def test_rollback_before_any_snapshot_restores_the_initial_state(self):
        initial = snapshot(self.net)[0]
        self.good_step()
        for _ in range(5):
            self.guard.bad()
        assert_state_equal(initial, self.net.state_dict())

    def test_good_update_resets_the_consecutive_count(self):
        for _ in range(4):
            self.guard.bad()
        self.good_step()
        assert self.guard.consecutive == 0
        assert [self.guard.bad() for _ in range(4)] == [False] * 4  # 8 bad in all, never 5 in a row
        assert self.guard.rollbacks == 0 and self.guard.skipped == 8
        assert self.guard.bad() is True and self.guard.rollbacks == 1


# -- the model learner ---------------------------------------------------------------------------------
def make_model_learner(snapshot_every: int = 100) -> ModelLearner:
    learner = ModelLearner(MODEL_CFG, OBS_DIM, ACT_DIM, seed=0)
    learner.guard = NumericalGuard({"model": learner.model, "optimizer": learner.optimizer},
                                   snapshot_every=snapshot_every)
    return learner


def test_model_nan_batch_is_skipped(replay):
    learner = make_model_learner()
    learner.update(replay.sample(32))
    before = snapshot(learner.model, learner.optimizer)
    metrics = learner.update(nan_batch(replay))
    assert metrics == {"model/nonfinite_skipped": 1, "model/rollbacks": 0}
    assert learner.updates == 1
    assert_state_equal(before[0], learner.model.state_dict(), "model")  # normalisers included
    assert_state_equal(before[1], learner.optimizer.state_dict(), "optimizer")
    # The next good batch is applied and reports the count.
    metrics = learner.update(replay.sample(32))
    assert learner.updates == 2 and metrics["model/nonfinite_skipped"] == 1 and "model/train_nll" in metrics


def test_model_nan_loss_is_skipped(replay, monkeypatch):
    learner = make_model_learner()
    learner.update(replay.sample(32))
    before = snapshot(learner.model, learner.optimizer)
    weight = learner.model.head.weight

    def nan_loss(batch, weights=None):
        return weight.sum() * float("nan"), {"model/train_nll": float("nan")}

    monkeypatch.setattr(learner.model, "loss", nan_loss)
    metrics = learner.update(replay.sample(32))
    assert metrics["model/nonfinite_skipped"] == 1 and learner.updates == 1
    for name, p in learner.model.named_parameters():
        assert torch.equal(p, before[0][name]), name
        assert p.grad is None, name  # the poisoned gradient was dropped
    assert_state_equal(before[1], learner.optimizer.state_dict(), "optimizer")


def test_model_inf_gradient_is_skipped(replay, monkeypatch):
    learner = make_model_learner()
    before = snapshot(learner.model)[0]
    real_loss = learner.model.loss

    def inf_grad_loss(batch, weights=None):
        loss, metrics = real_loss(batch, weights)
        # Finite value, infinite gradient: sqrt at 0.
        return loss + torch.sqrt(learner.model.max_logvar.sum() * 0), metrics

    monkeypatch.setattr(learner.model, "loss", inf_grad_loss)
    metrics = learner.update(replay.sample(32))
    assert metrics["model/nonfinite_skipped"] == 1 and learner.updates == 0
    assert params_equal(learner.model, before)


def test_model_rollback_after_five_bad_updates(replay):
    learner = make_model_learner(snapshot_every=3)
    for _ in range(3):
        learner.update(replay.sample(32))
    at_snapshot = snapshot(learner.model, learner.optimizer)
    learner.update(replay.sample(32))
    assert learner.updates == 4 and not params_equal(learner.model, at_snapshot[0])
    with torch.no_grad():  # the weights blew up
        learner.model.head.weight.fill_(float("inf"))
    for i in range(4):
        metrics = learner.update(replay.sample(32))  # finite batch, non-finite loss
        assert metrics == {"model/nonfinite_skipped": i + 1, "model/rollbacks": 0}
    metrics = learner.update(replay.sample(32))
    assert metrics == {"model/nonfinite_skipped": 5, "model/rollbacks": 1}
    assert_state_equal(at_snapshot[0], learner.model.state_dict(), "model")
    assert_state_equal(at_snapshot[1], learner.optimizer.state_dict(), "optimizer")
    assert learner.updates == 4
    # Training continues from the restored weights.
    metrics = learner.update(replay.sample(32))
    assert learner.updates == 5 and np.isfinite(metrics["model/train_nll"])
    assert all(torch.isfinite(p).all() for p in learner.model.parameters())


def test_model_good_update_resets_consecutive_bad(replay):
    learner = make_model_learner()
    for _ in range(4):
        learner.update(nan_batch(replay))
    assert learner.guard.consecutive == 4
    learner.update(replay.sample(32))
    assert learner.guard.consecutive == 0 and learner.updates == 1
    for _ in range(4):
        metrics = learner.update(nan_batch(replay))
    assert metrics == {"model/nonfinite_skipped": 8, "model/rollbacks": 0}


# -- the policy learner --------------------------------------------------------------------------------
def make_policy_learner(replay, snapshot_every: int = 100) -> MeanVarianceObjective:
    model = ModelLearner(MODEL_CFG, OBS_DIM, ACT_DIM, seed=0)
    for _ in range(3):
        model.update(replay.sample(32))
    cfg = Config(model=MODEL_CFG, policy=POLICY_CFG, train=TrainConfig(seed=0))
    learner = MeanVarianceObjective(cfg, EnvSpec("test", OBS_DIM, (-3.0,), (3.0,)))
    learner.set_model_weights(model.weights(), model.updates)
    learner.guard = NumericalGuard({
        "policy": learner.policy, "value": learner.value, "target_value": learner.target_value,
        "actor_opt": learner.actor_opt, "value_opt": learner.value_opt,
    }, snapshot_every=snapshot_every)
    return learner


def policy_parts(learner: MeanVarianceObjective) -> list:
    return [learner.policy, learner.value, learner.target_value, learner.actor_opt, learner.value_opt,
            learner.alpha_opt]


def starts(replay) -> dict:
    """What the replay serves for the learner's `needs`: 16 start states."""
    return {"start_states": replay.sample_start_states(16)}


def nan_starts(replay) -> dict:
    data = starts(replay)
    data["start_states"][5, 2] = np.nan
    return data


def test_policy_nan_start_states_are_skipped(replay):
    learner = make_policy_learner(replay)
    torch.manual_seed(0)
    learner.update(starts(replay))
    before = snapshot(*policy_parts(learner))
    alpha = learner.log_alpha.detach().clone()
    metrics = learner.update(nan_starts(replay))
    assert metrics == {"policy/nonfinite_skipped": 1, "policy/rollbacks": 0}
    assert learner.updates == 1
    for part, state in zip(policy_parts(learner), before):
        assert_state_equal(state, part.state_dict(), type(part).__name__)
    assert torch.equal(learner.log_alpha.detach(), alpha)
    assert all(p.grad is None for p in learner.policy.parameters())
    metrics = learner.update(starts(replay))
    assert learner.updates == 2 and metrics["policy/nonfinite_skipped"] == 1
    assert np.isfinite(metrics["policy/objective"])


def test_policy_nan_objective_is_skipped(replay, monkeypatch):
    import umpo_dist.objectives.mean_variance as pl

    learner = make_policy_learner(replay)
    before = snapshot(*policy_parts(learner))
    real = pl.mean_variance_objective

    def nan_objective(returns, risk_lambda):
        objective, mean, std = real(returns, risk_lambda)
        return objective * float("nan"), mean, std

    monkeypatch.setattr(pl, "mean_variance_objective", nan_objective)
    metrics = learner.update(starts(replay))
    assert metrics["policy/nonfinite_skipped"] == 1 and learner.updates == 0
    for part, state in zip(policy_parts(learner), before):
        assert_state_equal(state, part.state_dict(), type(part).__name__)


def test_policy_rollback_and_reset(replay):
    learner = make_policy_learner(replay, snapshot_every=3)
    torch.manual_seed(1)
    for _ in range(3):
        learner.update(starts(replay))
    guarded = [learner.policy, learner.value, learner.target_value, learner.actor_opt, learner.value_opt]
    at_snapshot = snapshot(*guarded)
    learner.update(starts(replay))
    assert learner.updates == 4 and not params_equal(learner.policy, at_snapshot[0])
    # Two bad, one good: the count starts again.
    learner.update(nan_starts(replay))
    learner.update(nan_starts(replay))
    learner.update(starts(replay))
    assert learner.guard.consecutive == 0 and learner.updates == 5
    learner.update(starts(replay))
    assert learner.updates == 6
    at_snapshot = snapshot(*guarded)  # 6 good updates: a new snapshot
    with torch.no_grad():
        for p in learner.policy.parameters():
            p.fill_(float("nan"))
    for i in range(4):
        assert learner.update(starts(replay))["policy/rollbacks"] == 0
    metrics = learner.update(starts(replay))
    assert metrics == {"policy/nonfinite_skipped": 7, "policy/rollbacks": 1}
    for module, state in zip(guarded, at_snapshot):
        assert_state_equal(state, module.state_dict(), type(module).__name__)
    metrics = learner.update(starts(replay))
    assert learner.updates == 7 and np.isfinite(metrics["policy/objective"])


def test_policy_nan_value_targets_do_not_reach_the_value_weights(replay, monkeypatch):
    import umpo_dist.objectives.mean_variance as pl

    learner = make_policy_learner(replay)
    real = pl.lambda_returns
    monkeypatch.setattr(pl, "lambda_returns", lambda *a, **k: real(*a, **k) * float("nan"))
    learner.update(starts(replay))
    assert all(torch.isfinite(p).all() for p in learner.value.parameters())
