"""An objective registered outside the package runs end to end in both runtimes, no runtime file touched.

`e2e_objectives.py` (next to this file) registers `zero_gradient`; the config names it
`e2e_objectives:zero_gradient`, so each process that builds it imports that module
first. The Ray workers find the module because this module's cluster puts this folder
on their `PYTHONPATH` (a cluster of its own: the shared `local_ray` fixture starts one
without it).
"""

import os
from pathlib import Path

import pytest
import ray
import torch

import e2e_objectives
from test_distributed import FAST, ip_config
from umpo_dist.envs.spec import env_spec
from umpo_dist.objectives import build_objective
from umpo_dist.ops.artifacts import load_policy
from umpo_dist.ops.checkpoint import load_checkpoint
from umpo_dist.ops.train import train

pytestmark = pytest.mark.e2e

HERE = Path(__file__).resolve().parent
TOTAL, RANDOM, RATIO = 600, 200, 0.2
RUN = (*FAST, f"policy.objective={e2e_objectives.NAME}", "resources.num_env_workers=1", "resources.worker_cpus=0.5",
       "resources.learner_cpus=0.5", f"train.total_env_steps={TOTAL}", f"train.random_steps={RANDOM}",
       f"train.policy_updates_per_step={RATIO}", "train.model_warmup_updates=20", "train.checkpoint_every=300",
       f"train.eval_every={TOTAL}", "env.eval_episodes=1")


@pytest.fixture(scope="module")
def ray_finding_this_folder():
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(HERE)}})
    yield
    ray.shutdown()


@pytest.mark.parametrize("runtime", ["ray", "inline"])
def test_objective_from_outside_the_package_runs_in_both_runtimes(runtime, ray_finding_this_folder, workdir):
    cfg = ip_config(*RUN, f"runtime={runtime}")
    summary = train(cfg, progress=False)

    # The run finished its budget, and the objective's update count followed the configured ratio
    # (the warm-up delays policy updates; by the end the learner has caught up with its target).
    assert summary["env_steps"] == TOTAL
    expected = int(RATIO * (TOTAL - RANDOM))
    assert summary["policy_updates"] == expected
    assert [step for step, _ in summary["evaluations"]] == [0, TOTAL]

    # The checkpoint it wrote holds the objective's own state, and loads.
    ckpt = load_checkpoint(summary["run_dir"])
    state = ckpt["policy"]
    assert state["updates"] == expected
    assert state["start_states_seen"] == e2e_objectives.START_STATES * expected  # what `needs` declared, per update
    assert state["model_version"] >= cfg.train.model_warmup_updates  # it was handed the model learner's weights
    # Its updates ran in the policy-learner actor's process on Ray, here inline.
    assert (state["pid"] != os.getpid()) if runtime == "ray" else (state["pid"] == os.getpid())
    rebuilt = build_objective(cfg, env_spec(cfg.env.id))
    rebuilt.load_state(state)
    assert isinstance(rebuilt, e2e_objectives.ZeroGradientObjective) and rebuilt.updates == expected
    # No gradient step was ever taken: the published policy is the initial one, and the exported policy loads.
    initial = e2e_objectives.ZeroGradientObjective(cfg, env_spec(cfg.env.id), "cpu").policy.state_dict()
    exported = load_policy(summary["policy_file"]).state_dict()
    for name, tensor in initial.items():
        assert torch.equal(exported[name], tensor), name
        assert torch.equal(state["policy"][name], tensor), name
    assert summary["evaluations"][0][1] == summary["evaluations"][-1][1]
