"""The `mnm` objective: a classifier of real against model transitions, and rewards that distrust the fakes."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from umpo_dist.config import Config, MnmConfig, ModelConfig, PolicyConfig, TrainConfig
from umpo_dist.data.replay import DataNeeds
from umpo_dist.envs.spec import EnvSpec
from umpo_dist.models.model_learner import ModelLearner
from umpo_dist.objectives import build_objective
from umpo_dist.objectives.mnm import MnmObjective

torch.set_num_threads(1)

SPEC = EnvSpec("test", 2, (-1.0,), (1.0,))


def make_config(weight: float = 1.0, **policy) -> Config:
    pcfg = PolicyConfig(**{**dict(objective="mnm", hidden_layers=1, hidden_size=32, horizon=3, start_states=64,
                                  actor_lr=1e-3, value_lr=1e-3, alpha_lr=1e-3, init_temperature=0.01), **policy})
    return Config(model=ModelConfig(ensemble_size=3, hidden_layers=2, hidden_size=32, elites=2, batch_size=128, lr=3e-3),
                  policy=pcfg, mnm=MnmConfig(classifier_weight=weight, batch_size=128, hidden_size=32, lr=3e-3),
                  train=TrainConfig(seed=0))


def world(rng: np.random.Generator, n: int, low: float = -1.0, high: float = 1.0) -> dict[str, np.ndarray]:
    """A world whose action moves the first coordinate: s′ = (s₀ + 0.5·a, 0.9·s₁), reward 0, never ending."""
    s = rng.standard_normal((n, 2)).astype(np.float32)
    a = rng.uniform(low, high, (n, 1)).astype(np.float32)
    nxt = np.stack([s[:, 0] + 0.5 * a[:, 0], 0.9 * s[:, 1]], 1).astype(np.float32)
    zeros = np.zeros(n, np.float32)
    return {"obs": s, "action": a, "reward": zeros, "next_obs": nxt, "terminated": zeros, "truncated": zeros,
            "weights": np.ones((n, 3), np.float32)}


def trained_model(cfg: Config) -> ModelLearner:
    ml = ModelLearner(cfg.model, SPEC.obs_dim, SPEC.action_dim, seed=0)
    rng = np.random.default_rng(0)
    for _ in range(300):
        ml.update(world(rng, 128))
    return ml


def test_the_registry_builds_it_and_it_asks_for_start_states_and_real_transitions():
    cfg = make_config()
    objective = build_objective(cfg, SPEC)
    assert isinstance(objective, MnmObjective)
    assert objective.needs == DataNeeds(start_states=64, transitions=128)


def test_inside_its_updates_the_classifier_learns_to_tell_the_models_transitions_from_real_ones():
    cfg = make_config(weight=0.1)
    objective = MnmObjective(cfg, SPEC)
    # An untrained model: its transitions are clearly not the world's.
    untrained = ModelLearner(cfg.model, SPEC.obs_dim, SPEC.action_dim, seed=1)
    objective.set_model_weights(untrained.weights(), version=1)
    rng = np.random.default_rng(1)
    history = [objective.update({"start_states": world(rng, 64)["obs"], "transitions": world(rng, 128)})
               for _ in range(300)]
    mean = lambda key, rows: np.mean([m[key] for m in rows])
    # Measured: accuracy 0.54 over the first 10 updates, 0.975 over the last 10; the log-ratio 0.02 → −8.4.
    assert mean("mnm/classifier_accuracy", history[:10]) < 0.6
    assert mean("mnm/classifier_accuracy", history[-10:]) > 0.95
    assert mean("mnm/classifier_loss", history[-10:]) < 0.25 < mean("mnm/classifier_loss", history[:10])
    # Along the imagined rollouts the log-ratio log(C / (1 − C)) says "fake", and the policy's rewards carry it.
    assert mean("mnm/log_ratio", history[-10:]) < -5 < mean("mnm/log_ratio", history[:10])
    assert all(np.isfinite(v) for m in history for v in m.values())
    assert objective.updates == 300 and history[-1]["mnm/classifier_skipped"] == 0

    # On fresh transitions: real ones are called real, the model's own called fake.
    fresh = world(np.random.default_rng(2), 500)
    obs, action, next_obs = (torch.as_tensor(fresh[k]) for k in ("obs", "action", "next_obs"))
    with torch.no_grad():
        model_next, _, _, _ = objective.model.step(obs, action)
        real = objective.classifier(obs, action, next_obs)
        fake = objective.classifier(obs.expand(3, -1, -1), action.expand(3, -1, -1), model_next)
    assert float((real > 0).float().mean()) > 0.95 and float((fake < 0).float().mean()) > 0.9  # measured 1.0, 0.955


def flagged_share(objective: MnmObjective, start: torch.Tensor) -> tuple[float, float]:
    """Share of the policy's (mean-action) next states under the model that the classifier calls fake, and the mean action."""
    with torch.no_grad():
        action, _ = objective.policy(start, deterministic=True)
        next_obs = start + objective.model.predict(start, action)["mean"][..., :2].mean(0)
        return float((objective.classifier(start, action, next_obs) < 0).float().mean()), float(action.mean())


def test_with_a_positive_weight_the_policy_moves_away_from_states_the_classifier_flags():
    cfg = make_config(weight=1.0)
    ml = trained_model(cfg)
    objective = MnmObjective(cfg, SPEC)
    objective.set_model_weights(ml.weights(), version=1)

    # A constructed classifier: transitions into s′₀ > 0 are fake (whatever the state and action), into s′₀ < 0 real.
    rng = np.random.default_rng(3)

    def landing(n, sign):
        batch = world(rng, n)
        s0 = batch["next_obs"][:, 0]
        batch["next_obs"][:, 0] = sign * np.abs(s0 + rng.normal(0, 0.2, n).astype(np.float32))
        return tuple(torch.as_tensor(batch[k]) for k in ("obs", "action", "next_obs"))

    for _ in range(300):
        objective.train_classifier(landing(128, -1.0), landing(128, 1.0))
    for group in objective.classifier_opt.param_groups:  # held fixed from here on: the case is constructed
        group["lr"] = 0.0
    with torch.no_grad():  # V ≡ 0 to start with, so an initial value's slope gives the policy no direction either
        for value in (objective.value, objective.target_value):
            value.net[-1].weight.zero_()
            value.net[-1].bias.zero_()
    # The same learner without the classifier's term in its rewards.
    indifferent = MnmObjective(make_config(weight=0.0), SPEC)
    indifferent.set_model_weights(ml.weights(), version=1)
    indifferent.load_state(objective.state())

    # Start states from which the initial policy (mean action ≈ 0) lands where the classifier says "fake".
    start = torch.stack([torch.linspace(0.05, 0.4, 64), torch.linspace(-1, 1, 64)], 1)
    share0, action0 = flagged_share(objective, start)
    assert share0 > 0.9 and abs(action0) < 0.2

    real = world(np.random.default_rng(4), 128)
    for learner in (objective, indifferent):
        torch.manual_seed(5)
        for _ in range(100):
            metrics = learner.update({"start_states": start.numpy(), "transitions": real})
        assert all(np.isfinite(v) for v in metrics.values())
    share, action = flagged_share(objective, start)
    share_w0, action_w0 = flagged_share(indifferent, start)
    # With w > 0 the policy pushes s₀ down, out of the flagged region; with w = 0 it has no reason to.
    # Measured: from every next state flagged (mean action −0.001) to 3% (mean action −0.66) with w = 1;
    # with w = 0 still all of them (mean action 0.004).
    assert share < 0.1 and action < -0.3, (share, action)
    assert share_w0 > 0.8 and abs(action_w0) < 0.2, (share_w0, action_w0)


def through_a_checkpoint_file(state: dict) -> dict:
    """What a checkpoint gives back (`torch.load(weights_only=True)`), sharing no tensor with `state`."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_a_restored_objective_continues_identically():
    cfg = make_config(weight=0.5)
    ml = ModelLearner(cfg.model, SPEC.obs_dim, SPEC.action_dim, seed=1)
    learner = MnmObjective(cfg, SPEC)
    learner.set_model_weights(ml.weights(), version=3)
    rng = np.random.default_rng(6)
    for _ in range(3):
        learner.update({"start_states": world(rng, 64)["obs"], "transitions": world(rng, 128)})
    other = MnmObjective(make_config(weight=0.5), SPEC)
    other.set_model_weights(ml.weights(), version=3)
    other.load_state(through_a_checkpoint_file(learner.state()))
    assert other.updates == 3
    for step in range(2):  # the second update shows the optimisers' states came along
        data = {"start_states": world(rng, 64)["obs"], "transitions": world(rng, 128)}
        torch.manual_seed(9 + step)
        m1 = learner.update(data)
        torch.manual_seed(9 + step)
        m2 = other.update(data)
        assert m1 == pytest.approx(m2, rel=1e-6, abs=1e-7)
    for a, b in zip(learner.classifier.parameters(), other.classifier.parameters()):
        torch.testing.assert_close(a, b)


class DeltaJudge(torch.nn.Module):
    """A fixed classifier: a transition looks real exactly when it moves the first coordinate down."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(4.0))

    def forward(self, obs, action, next_obs):
        return -self.scale * (next_obs[..., 0] - obs[..., 0])


def test_model_realism_moves_the_models_transitions_towards_what_the_classifier_takes_for_real():
    cfg = make_config()
    batches = [world(np.random.default_rng(k), 128) for k in range(200)]
    probe = world(np.random.default_rng(999), 512)
    obs, action = torch.as_tensor(probe["obs"]), torch.as_tensor(probe["action"])
    fitted = {}
    # A large weight: the world is deterministic, so the NLL pins the fit hard (at weight 1 it moves < 0.01).
    for weight in (0.0, 10.0):
        ml = ModelLearner(cfg.model, SPEC.obs_dim, SPEC.action_dim, seed=0, classifier=DeltaJudge(), realism_weight=weight)
        ml.classifier_version = 0 if weight else -1  # "the classifier's weights arrived" (they are fixed here)
        for batch in batches:
            metrics = ml.update(batch)
        assert ("model/realism_loss" in metrics) == bool(weight)
        with torch.no_grad():
            fitted[weight] = ml.model.predict(obs, action)["mean"][..., 0].mean().item()
        assert ml.classifier.scale.item() == 4.0 and ml.classifier.scale.grad is None  # only the model learns
    true_mean = float((probe["next_obs"][:, 0] - probe["obs"][:, 0]).mean())
    assert abs(fitted[0.0] - true_mean) < 0.05  # the plain fit is right on average
    assert fitted[10.0] < fitted[0.0] - 0.1  # pushed down, where the classifier says "real"


def test_only_mnm_with_model_realism_gives_the_model_learner_a_classifier():
    from umpo_dist.models.model_learner import build_model_learner

    def classifier_of(objective, realism):
        cfg = make_config()
        cfg.policy.objective, cfg.mnm.model_realism = objective, realism
        return build_model_learner(cfg, SPEC).classifier

    assert classifier_of("mnm", 0.0) is None and classifier_of("mean_variance", 1.0) is None
    learner_copy = classifier_of("mnm", 0.5)
    assert MnmObjective(make_config(), SPEC).shared_weights() == {}  # nothing to publish without model_realism
    cfg = make_config()
    cfg.mnm.model_realism = 0.5
    learner_copy.load_state_dict(MnmObjective(cfg, SPEC).shared_weights()["classifier"])  # the published weights fit
    assert not any(p.requires_grad for p in learner_copy.parameters())
