"""An objective from outside the package, for the end-to-end tests: `policy.objective=e2e_objectives:zero_gradient`.

Importing this module registers it. The runtimes build it from its `module:name`, so
every process that builds it (the driver checking the config, the inline runner, a Ray
policy-learner actor) imports this module itself; a Ray worker can when this folder is
on its `PYTHONPATH`.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from umpo_dist.data.replay import DataNeeds
from umpo_dist.devices import state_to_cpu
from umpo_dist.models.policy import build_policy
from umpo_dist.objectives import register_objective

NAME = "e2e_objectives:zero_gradient"
START_STATES = 8


@register_objective("zero_gradient")
class ZeroGradientObjective:
    """Takes no gradient step: each update checks the start states it was handed, and counts.

    Its state records what it consumed, so a test can read from a checkpoint that the
    runtime fed it exactly what `needs` declared, once per update.
    """

    def __init__(self, cfg, spec, device):
        torch.manual_seed(cfg.train.seed + 1)
        self.needs = DataNeeds(start_states=START_STATES)
        self.device = torch.device(device)
        self.policy = build_policy(spec, cfg.policy).to(self.device)
        self.updates = 0
        self.model_version = -1
        self.start_states_seen = 0
        self.pid = None  # the process that ran its updates

    def set_model_weights(self, weights: dict, version: int) -> None:
        self.model_version = version

    def update(self, data: dict) -> dict[str, float]:
        if set(data) != {"start_states"}:
            raise AssertionError(f"asked for start states only, got {sorted(data)}")
        start = torch.as_tensor(np.array(data["start_states"], dtype=np.float32), device=self.device)
        if start.shape != (START_STATES, self.policy.obs_dim) or not torch.isfinite(start).all():
            raise AssertionError(f"bad start states: {tuple(start.shape)}")
        self.start_states_seen += start.shape[0]
        self.updates += 1
        self.pid = os.getpid()
        return {"policy/start_state_norm": float(start.norm(dim=-1).mean())}

    def weights(self) -> dict:
        return state_to_cpu(self.policy.state_dict())

    def state(self) -> dict:
        return {"policy": self.weights(), "updates": self.updates, "model_version": self.model_version,
                "start_states_seen": self.start_states_seen, "pid": self.pid or 0}

    def load_state(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.updates = int(state["updates"])
        self.model_version = int(state["model_version"])
        self.start_states_seen = int(state["start_states_seen"])
