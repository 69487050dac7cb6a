"""The `dyna` objective (MBPO): branched model rollouts into a buffer of model transitions, SAC on real and model data."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from umpo_dist.config import Config, DynaConfig, ModelConfig, PolicyConfig, TrainConfig
from umpo_dist.data.replay import DataNeeds
from umpo_dist.envs.spec import EnvSpec
from umpo_dist.models.model_learner import ModelLearner
from umpo_dist.objectives import build_objective
from umpo_dist.objectives.dyna import TRANSITION_KEYS, DynaObjective

torch.set_num_threads(1)

SPEC = EnvSpec("test", 2, (-1.0,), (1.0,))
SENTINEL = 1000.0  # reward and next state of every real transition handed in: nothing a model here predicts


def make_config(**dyna) -> Config:
    pcfg = PolicyConfig(objective="dyna", hidden_layers=2, hidden_size=32, actor_lr=1e-3, value_lr=1e-3, alpha_lr=1e-3)
    dcfg = DynaConfig(**{**dict(real_ratio=0.25, batch_size=64, rollout_length=3, rollouts_per_update=16), **dyna})
    return Config(model=ModelConfig(ensemble_size=3, hidden_layers=2, hidden_size=32, elites=2, batch_size=128, lr=3e-3),
                  policy=pcfg, dyna=dcfg, train=TrainConfig(seed=0))


def world(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """s′ = (s₀ + 0.5·a, 0.9·s₁), reward −s₀², ending where |s′₀| > 2."""
    s = (rng.standard_normal((n, 2)) * (1.5, 1.0)).astype(np.float32)
    a = rng.uniform(-1, 1, (n, 1)).astype(np.float32)
    nxt = np.stack([s[:, 0] + 0.5 * a[:, 0], 0.9 * s[:, 1]], 1).astype(np.float32)
    return {"obs": s, "action": a, "reward": -s[:, 0] ** 2, "next_obs": nxt,
            "terminated": (np.abs(nxt[:, 0]) > 2).astype(np.float32), "truncated": np.zeros(n, np.float32),
            "weights": np.ones((n, 3), np.float32)}


def distance_to_nearest(rows: torch.Tensor, among: torch.Tensor) -> torch.Tensor:
    """For each row, the largest coordinate gap to its nearest row of `among` (0: it is one of them)."""
    return (rows[:, None] - among[None]).abs().amax(-1).min(1).values


def test_the_registry_builds_it_and_it_asks_for_what_the_mix_needs():
    objective = build_objective(make_config(), SPEC)
    assert isinstance(objective, DynaObjective)
    assert objective.needs == DataNeeds(start_states=16, transitions=16)  # 25% of 64 real
    # All real: no rollouts, so no start states; all model: no real transitions.
    assert DynaObjective(make_config(real_ratio=1.0), SPEC).needs == DataNeeds(start_states=0, transitions=64)
    assert DynaObjective(make_config(real_ratio=0.0), SPEC).needs == DataNeeds(start_states=16, transitions=0)


@pytest.fixture(scope="module")
def model_weights() -> dict:
    """A model of `world`, briefly trained, with its variance bounds pushed down so that a sample is its mean."""
    ml = ModelLearner(make_config().model, SPEC.obs_dim, SPEC.action_dim, seed=0)
    rng = np.random.default_rng(0)
    for _ in range(600):
        ml.update(world(rng, 128))
    weights = ml.weights()
    weights["max_logvar"] = torch.full_like(weights["max_logvar"], -30.0)
    weights["min_logvar"] = torch.full_like(weights["min_logvar"], -40.0)
    return weights


def test_the_model_buffer_holds_only_model_transitions_and_sac_mixes_them_with_real_ones(model_weights):
    cfg = make_config(real_ratio=0.25, rollout_length=3, rollouts_per_update=16)
    objective = DynaObjective(cfg, SPEC)
    objective.set_model_weights(model_weights, version=1)
    batches = []
    sac_step = objective.sac_step
    objective.sac_step = lambda batch: (batches.append(batch), sac_step(batch))[1]

    rng = np.random.default_rng(1)
    starts = []
    for _ in range(5):
        real = world(rng, 16)
        real["reward"][:] = SENTINEL
        real["next_obs"][:] = SENTINEL
        start = world(rng, 16)["obs"]
        start[:8, 0] = np.sign(start[:8, 0]) * 2.8  # half of them where the world ends at the next step
        starts.append(start)
        metrics = objective.update({"start_states": starts[-1], "transitions": real})
        assert all(np.isfinite(v) for v in metrics.values()), metrics
    assert objective.updates == 5
    buffer = {k: v[: len(objective.model_buffer)] for k, v in objective.model_buffer.data.items()}
    n = len(buffer["reward"])
    assert n == objective.model_buffer.total == metrics["dyna/model_buffer_size"]
    assert 5 * 16 <= n < 5 * 16 * 3  # every rollout's first step; fewer than three steps each: some ended

    # Nothing real got in: no sentinel anywhere.
    for key in TRANSITION_KEYS:
        assert (buffer[key].abs() < SENTINEL / 10).all(), key
    # Every rollout starts at a replay state handed in and goes on from a state the model produced.
    start_states = torch.as_tensor(np.concatenate(starts))
    known = torch.cat([start_states, buffer["next_obs"]])
    assert (distance_to_nearest(buffer["obs"], known) < 1e-6).all()
    assert (distance_to_nearest(buffer["obs"], start_states) < 1e-6).sum() == 5 * 16
    # Every stored step is one member's prediction for its state and action (a sample, here ≈ the mean):
    # next state (kept within the data's range) and reward of the same member.
    pred = objective.model.predict(buffer["obs"], buffer["action"])
    norm = objective.model.input_norm
    low, high = norm.mean[:2] - 5 * norm.std[:2], norm.mean[:2] + 5 * norm.std[:2]
    next_obs = torch.maximum(torch.minimum(buffer["obs"] + pred["mean"][..., :2], high), low)  # (E, n, 2)
    gap = (next_obs - buffer["next_obs"]).abs().amax(-1) + (pred["mean"][..., 2] - buffer["reward"]).abs()
    assert (gap.min(0).values < 1e-3).all()
    assert len(gap.min(0).indices.unique()) == 3  # members drawn at random: all of them took steps
    # The members' termination head decides where a rollout ended.
    cont = torch.sigmoid(-pred["term_logit"]).gather(0, gap.min(0).indices[None])[0]
    assert torch.equal(buffer["terminated"], (cont < 0.5).float())
    ended = buffer["terminated"] == 1
    assert ended.sum() >= 20  # measured 47 of 148
    assert (distance_to_nearest(buffer["next_obs"][ended], buffer["obs"]) > 1e-6).all()  # nothing goes on from there

    # Each SAC batch: the real transitions it was handed, then model transitions drawn from the buffer.
    assert len(batches) == 5
    for batch in batches:
        assert len(batch["reward"]) == 64
        assert (batch["reward"][:16] == SENTINEL).all() and (batch["next_obs"][:16] == SENTINEL).all()
        model_part = torch.cat([batch[k][16:].reshape(48, -1) for k in TRANSITION_KEYS], 1)
        stored = torch.cat([buffer[k].reshape(n, -1) for k in TRANSITION_KEYS], 1)
        assert (distance_to_nearest(model_part, stored) < 1e-6).all()


def test_the_buffer_keeps_the_newest_model_transitions(model_weights):
    cfg = make_config(rollout_length=1, rollouts_per_update=16, model_buffer_size=40)
    objective = DynaObjective(cfg, SPEC)
    objective.set_model_weights(model_weights, version=1)
    rng = np.random.default_rng(2)
    starts = [world(rng, 16)["obs"] for _ in range(4)]
    for start in starts:
        objective.update({"start_states": start, "transitions": world(rng, 16)})
    assert len(objective.model_buffer) == 40 and objective.model_buffer.total == 64
    stored = objective.model_buffer.data["obs"]
    newest = torch.as_tensor(np.concatenate(starts)[-40:])
    assert (distance_to_nearest(stored, newest) < 1e-6).all()


def fixed_batch(n: int = 256) -> dict[str, torch.Tensor]:
    batch = world(np.random.default_rng(3), n)
    return {k: torch.as_tensor(batch[k]) for k in TRANSITION_KEYS}


def test_the_critic_loss_falls_on_a_fixed_batch():
    objective = DynaObjective(make_config(), SPEC)
    batch = fixed_batch()
    losses = [objective.sac_step(batch)["policy/critic_loss"] for _ in range(300)]
    assert np.isfinite(losses).all()
    # Measured: 4.24 over the first 10 steps, 0.28 over the last 10 (targets move with the policy and α).
    assert np.mean(losses[-10:]) < 0.2 * np.mean(losses[:10])
    assert objective.updates == 300


def through_a_checkpoint_file(state: dict) -> dict:
    """What a checkpoint gives back (`torch.load(weights_only=True)`), sharing no tensor with `state`."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_a_restored_objective_continues_identically_and_refills_its_model_buffer(model_weights):
    cfg = make_config()
    learner = DynaObjective(cfg, SPEC)
    learner.set_model_weights(model_weights, version=1)
    rng = np.random.default_rng(4)
    for _ in range(3):
        learner.update({"start_states": world(rng, 16)["obs"], "transitions": world(rng, 16)})
    other = DynaObjective(make_config(), SPEC)
    other.set_model_weights(model_weights, version=1)
    other.load_state(through_a_checkpoint_file(learner.state()))
    assert other.updates == 3 and torch.equal(other.log_alpha, learner.log_alpha)
    batch = fixed_batch(64)
    for step in range(2):  # the second step shows the optimisers' states came along
        torch.manual_seed(7 + step)
        m1 = learner.sac_step(batch)
        torch.manual_seed(7 + step)
        m2 = other.sac_step(batch)
        assert m1 == pytest.approx(m2, rel=1e-6, abs=1e-7)
    # The model buffer is not in the checkpoint: the restored learner starts it afresh and refills it.
    assert len(other.model_buffer) == 0
    other.update({"start_states": world(rng, 16)["obs"], "transitions": world(rng, 16)})
    assert len(other.model_buffer) >= 16 and other.updates == 6
