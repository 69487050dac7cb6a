"""`benchmarks/policy_update.py` times every task's shipped objective on what the runtimes would hand it."""

import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import learning  # noqa: E402
import policy_update  # noqa: E402

from umpo_dist.config import load  # noqa: E402
from umpo_dist.envs.spec import env_spec  # noqa: E402
from umpo_dist.objectives import build_objective  # noqa: E402


@pytest.mark.parametrize("task", learning.TASKS)
def test_the_replay_answer_is_what_the_shipped_objective_asks_for(task):
    torch.set_num_threads(1)
    cfg = load(ROOT / "configs" / f"{task}.yaml", ["policy.start_states=16", "policy.model_start_buffer=1000"])
    spec = env_spec(cfg.env.id)
    objective = build_objective(cfg, spec, "cpu")
    data = policy_update.replay_answer(objective.needs, spec.obs_dim, spec.action_dim, cfg, size=500)
    assert data["start_states"].shape == (16, spec.obs_dim)
    if cfg.policy.real_critic_batch:  # hopper.yaml's critic also learns from real transitions
        assert len(data["transitions"]["reward"]) == cfg.policy.real_critic_batch
    metrics = objective.update(data)
    assert objective.updates == 1
    assert all(math.isfinite(v) for v in metrics.values())
