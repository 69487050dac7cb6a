"""`mnm`, `dyna` and the double horizon train end to end in both runtimes and resume from a checkpoint.

Each objective runs in one runtime and is resumed in the other (the checkpoint is the same
in both), so every objective trains on real Ray actors and inline, and resumes, in two runs.
Tiny networks and low update ratios: these runs are about the objectives running on the
shared machinery (replay answers to their `needs`, model weights, publishing, checkpoints),
not about learning.
"""

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from test_distributed import FAST, ip_config
from umpo_dist.ops.checkpoint import load_checkpoint
from umpo_dist.ops.train import train

pytestmark = pytest.mark.e2e

FIRST, RESUMED, RANDOM, RATIO = 400, 600, 200, 0.2
RUN = (*FAST, "resources.num_env_workers=1", "resources.worker_cpus=0.5", "resources.learner_cpus=0.5",
       f"train.total_env_steps={FIRST}", f"train.random_steps={RANDOM}", f"train.policy_updates_per_step={RATIO}",
       "train.model_warmup_updates=20", "train.checkpoint_every=0", f"train.eval_every={FIRST}",
       "env.eval_episodes=1", "diagnostics.enabled=false", "tracking.log_every_s=0",
       "mnm.hidden_size=32", "mnm.batch_size=32", "dyna.batch_size=64", "dyna.rollouts_per_update=16")
# Each case's overrides, what it logs, and the optimisers whose step counts must follow its updates across a resume.
CASES = {
    # (model_realism: on Ray its plumbing is tested in test_weights.py; its metric is checked after the inline resume)
    "mnm": (("policy.objective=mnm", "mnm.model_realism=0.5"), ("mnm/classifier_accuracy", "mnm/log_ratio", "policy/objective"),
            ("actor_opt", "classifier_opt")),
    "dyna": (("policy.objective=dyna",), ("policy/critic_loss", "dyna/model_buffer_size", "dyna/model_reward_mean"),
             ("actor_opt", "critic_opt")),
    # mean_variance with model start states, rolled out with InvertedPendulum's known termination rule, the model
    # normalising with the replay's statistics, imagined states clamped to the data's range, and a Q critic of
    # three members with bounds
    "double_horizon": (("policy.model_start_share=0.5", "policy.model_start_horizon=10", "model.termination=known",
                        "model.normalizer=replay", "policy.state_clip=range", "policy.value_members=3",
                        "policy.value_bounds=true", "policy.critic=q"),
                       ("policy/model_start_buffer", "policy/objective", "policy/value_low", "policy/value_high"),
                       ("actor_opt", "value_opt")),
    # mean_variance restarting on each model 20 updates newer (policy.restart_every: fresh Adam moments, then
    # critic-only updates); its optimisers' step counts are checked below
    "restart": (("policy.restart_every=20", "policy.critic_warmup=5"), ("policy/restarted_at", "policy/objective"), ()),
}


def assert_restarted(state: dict, warmup: int = 5) -> None:
    """The learner restarted on a model of 20 updates or more; since then the critic's Adam took every update and
    the actor's all but the `warmup` critic-only ones."""
    assert state["restarted_at"] >= 20
    critic, actor = (max(optimiser_steps(state, name), default=0) for name in ("value_opt", "actor_opt"))
    assert 0 < critic <= state["updates"] and actor == max(0, critic - warmup)
    assert state["critic_only"] == max(0, warmup - critic)


def assert_normalised_with_a_replay_prefix(ckpt: dict) -> None:
    """`model.normalizer: replay`: the model's input statistics are the unweighted moments of the first `count`
    transitions the replay held (the window when they were last refreshed), not a merge of training batches."""
    model, replay = ckpt["model"]["model"], ckpt["replay"]
    count = int(model["input_norm.count"])
    assert RANDOM <= count <= len(replay["reward"])
    inputs = np.concatenate([replay["obs"][:count], replay["action"][:count]], 1).astype(np.float64)
    np.testing.assert_allclose(model["input_norm.mean"].numpy(), inputs.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(model["input_norm.var"].numpy(), inputs.var(0), rtol=1e-4, atol=1e-6)


def optimiser_steps(state: dict, name: str) -> set[int]:
    return {int(s["step"]) for s in state[name]["state"].values()}


def policy_at_start(runner) -> dict:
    """The policy the runner holds before its first update: inline the objective's, on Ray the one its learner published."""
    if hasattr(runner, "objective"):  # copied: inline, the weights share storage with the live policy
        return {name: tensor.clone() for name, tensor in runner.objective.weights().items()}
    return runner.latest_policy_weights()


@pytest.mark.parametrize(("case", "runtime", "resumed_in"),
                         [("mnm", "ray", "inline"), ("dyna", "inline", "ray"), ("double_horizon", "ray", "inline"),
                          ("restart", "ray", "inline")])
def test_the_objective_trains_in_both_runtimes_and_resumes_from_its_checkpoint(case, runtime, resumed_in,
                                                                                local_ray, workdir):
    overrides, metrics, optimisers = CASES[case]
    cfg = ip_config(*RUN, *overrides, f"runtime={runtime}")
    first = train(cfg, progress=False)
    updates = int(RATIO * (FIRST - RANDOM))
    assert first["env_steps"] == FIRST and first["policy_updates"] == updates
    assert [step for step, _ in first["evaluations"]] == [0, FIRST]
    ckpt = load_checkpoint(first["run_dir"])
    state = ckpt["policy"]
    assert state["updates"] == updates
    for name in optimisers:  # every update stepped the objective's optimisers
        assert optimiser_steps(state, name) == {updates}, name
    if "model.normalizer=replay" in overrides:
        assert_normalised_with_a_replay_prefix(ckpt)
    if case == "restart":
        assert_restarted(state)
    logged = MlflowClient().get_run(first["run_id"]).data.metrics
    for key in metrics:
        assert key in logged, key

    # Resume: the objective comes back with the checkpoint's weights and goes on counting.
    held = []
    second = train(None, resume=first["run_id"], overrides=[f"train.total_env_steps={RESUMED}", f"runtime={resumed_in}"],
                   progress=False, callbacks=[lambda runner: held or held.append(policy_at_start(runner))])
    for name, tensor in state["policy"].items():
        assert torch.equal(held[0][name], tensor), name
    more = int(RATIO * (RESUMED - RANDOM))
    assert second["run_id"] == first["run_id"] and second["env_steps"] == RESUMED
    assert second["policy_updates"] == more
    final = load_checkpoint(second["run_dir"])["policy"]
    assert final["updates"] == more
    for name in optimisers:  # continued from the checkpoint's optimiser state, not restarted
        assert optimiser_steps(final, name) == {more}, name
    assert any(not torch.equal(final["policy"][k], v) for k, v in state["policy"].items())
    if "model.normalizer=replay" in overrides:
        assert_normalised_with_a_replay_prefix(load_checkpoint(second["run_dir"]))
    if "policy.value_members=3" in overrides:  # the members and their bounds travel in the checkpoint
        for ckpt_state in (state, final):
            assert ckpt_state["value"]["layers.0.weight"].shape[:2] == (3, 4 + 1)  # Q(s, a): InvertedPendulum's
            assert ckpt_state["value"]["low"] <= 0 <= ckpt_state["value"]["high"]
            assert ckpt_state["value"]["high"] > ckpt_state["value"]["low"]
            assert torch.equal(ckpt_state["target_value"]["high"], ckpt_state["value"]["high"])
        assert not torch.equal(final["value"]["high"], state["value"]["high"])  # tracked on after the resume
    if case == "restart":  # the resumed run restarts on from the checkpoint's last restart
        assert_restarted(final)
        assert final["restarted_at"] > state["restarted_at"]
    if "mnm.model_realism=0.5" in overrides:  # the model learner trained against the classifier
        assert "model/realism_loss" in MlflowClient().get_run(second["run_id"]).data.metrics
