"""The Ray learners compute exactly what the inline runner computes: from the same state and RNG seeds, a
round of updates through a real `ModelLearnerActor` or `PolicyLearnerActor` (calls of `updates_per_call`,
prefetched replay answers from a real `ReplayActor`, weights through the weight store) gives bit-identical
weights to the inline runner's round. Hopper's shipped features are on (restart with critic-only updates,
model start states, a Q critic learning from real transitions, bounded values) at small sizes.
"""

import copy

import pytest
import ray
import torch

from umpo_dist.config import load
from umpo_dist.runtime.inline import InlineRunner
from umpo_dist.runtime.ray.learners import ModelLearnerActor, PolicyLearnerActor
from umpo_dist.runtime.ray.replay_actor import ReplayActor
from umpo_dist.runtime.ray.weights import WeightStoreActor, publish

pytestmark = pytest.mark.e2e

SMALL = ["model.hidden_size=32", "model.hidden_layers=2", "model.batch_size=32", "model.validate_every=10",
         "model.holdout_capacity=100", "policy.hidden_size=32", "policy.start_states=16", "policy.real_critic_batch=16",
         "policy.model_start_buffer=500", "policy.model_start_refresh=5", "policy.model_start_horizon=5",
         "policy.restart_every=20", "policy.critic_warmup=8", "train.random_steps=200", "train.train_every=200",
         "train.model_warmup_updates=10", "train.model_updates_per_step=0.2", "train.policy_updates_per_step=0.3",
         "train.updates_per_call=12", "train.seed=3", "diagnostics.enabled=false"]


@pytest.fixture(scope="module")
def runner_rounds():
    """An inline runner after three rounds of data, the model trained on the first two; its state then."""
    torch.set_num_threads(1)
    cfg = load("configs/hopper.yaml", SMALL)
    runner = InlineRunner(cfg)
    s = runner.schedule
    for i in range(3):
        act = None if s.acts_randomly() else runner._act()
        batch, _ = runner.collector.collect(cfg.train.train_every, act)
        runner.replay.insert(batch)
        s.env_steps += cfg.train.train_every
        if i < 2:
            runner._train_model()
            runner._train_policy()
    return runner, copy.deepcopy(runner.state())


def replay_actor(runner, state):
    cfg, spec = runner.cfg, runner.spec
    replay = ReplayActor.remote(spec.obs_dim, spec.action_dim, cfg.replay.capacity, cfg.model.ensemble_size,
                                cfg.replay.sampling, cfg.model.holdout_fraction, cfg.train.seed)
    ray.get(replay.load_state.remote(state["replay"]))
    return replay


def seed_actor(actor, seed: int) -> None:
    ray.get(actor.__ray_call__.remote(lambda self: (torch.set_num_threads(1), torch.manual_seed(seed))))


def seed_inline(runner, learner: str, seed: int) -> None:
    """Seed the inline runner's torch stream of `learner` (it keeps one per learner, as each actor has its own)."""
    outer = torch.get_rng_state()
    torch.manual_seed(seed)
    runner.streams[learner] = torch.get_rng_state()
    torch.set_rng_state(outer)


def assert_same(a: dict, b: dict, what: str = "") -> None:
    """Equal keys and bit-identical tensors, in nested dicts too (an optimiser state); other values equal."""
    assert a.keys() == b.keys(), what
    for key in a:
        if isinstance(a[key], dict):
            assert_same(a[key], b[key], f"{what}.{key}")
        elif isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), f"{what}.{key}"
        else:
            assert a[key] == b[key], f"{what}.{key}"


def test_policy_learner_round_equals_inline(local_ray, runner_rounds):
    runner, _ = runner_rounds
    runner = copy.deepcopy(runner)
    # The model of the third round: the policy takes it as its round starts, and a restart falls due.
    runner._train_model()
    state = copy.deepcopy(runner.state())
    updates = runner.schedule.policy_updates_allowed()
    assert updates > 2 * runner.cfg.train.updates_per_call  # several calls, and actor steps after the critic-only ones
    assert runner.cfg.policy.critic_warmup < updates
    assert state["model"]["updates"] - runner.objective.restarted_at >= runner.cfg.policy.restart_every

    seed_inline(runner, "policy", 11)
    runner._train_policy()
    inline_policy = runner.objective.state()

    store = WeightStoreActor.remote()
    publish(store, "model", state["model"]["updates"], state["model"]["model"])
    learner = PolicyLearnerActor.remote(runner.cfg, runner.spec, replay_actor(runner, state), store, None)
    ray.get(learner.load_state.remote(state["policy"]))
    seed_actor(learner, 11)
    calls = [ray.get(learner.train.remote(n)) for n in split(updates, runner.cfg.train.updates_per_call)]
    ray_policy = ray.get(learner.state.remote())

    assert calls[-1]["updates"] == inline_policy["updates"] == state["policy"]["updates"] + updates
    assert ray_policy["restarted_at"] == inline_policy["restarted_at"] == state["model"]["updates"]
    for name in ("policy", "value", "target_value"):
        assert_same(ray_policy[name], inline_policy[name])
    assert torch.equal(ray_policy["log_alpha"], inline_policy["log_alpha"])
    assert not torch.equal(inline_policy["policy"]["net.0.weight"], state["policy"]["policy"]["net.0.weight"])  # it learned


def test_model_learner_round_equals_inline(local_ray, runner_rounds):
    runner, state = runner_rounds
    runner = copy.deepcopy(runner)
    updates = runner.schedule.model_updates_allowed()
    assert updates > 2 * runner.cfg.train.updates_per_call

    seed_inline(runner, "model", 12)
    runner._train_model()
    inline_model = runner.model_learner.state()

    learner = ModelLearnerActor.remote(runner.cfg, runner.spec, replay_actor(runner, state), WeightStoreActor.remote(), None)
    ray.get(learner.load_state.remote(state["model"]))
    seed_actor(learner, 12)
    calls = [ray.get(learner.train.remote(n)) for n in split(updates, runner.cfg.train.updates_per_call)]
    ray_model = ray.get(learner.state.remote())

    assert calls[-1]["updates"] == inline_model["updates"] == state["model"]["updates"] + updates
    assert any("model/val_nll" in call["metrics"] for call in calls)  # held-out evaluations (elites) happened
    assert_same(ray_model["model"], inline_model["model"])
    assert not torch.equal(ray_model["model"]["hidden.0.weight"], state["model"]["model"]["hidden.0.weight"])


def split(total: int, per_call: int) -> list[int]:
    return [per_call] * (total // per_call) + ([total % per_call] if total % per_call else [])
