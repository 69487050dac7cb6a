"""The evaluation actor: one per run, kept for the whole run, off the learners' path.

It builds its policy (and, with diagnostics on, its model) once; each call loads the
weights it is given and runs an evaluation round. The driver passes the weights as
the weight store's object references, so they travel from the object store to this
actor without passing through the driver. Ray restarts it if it dies and retries the
call in flight (an evaluation is a pure function of its arguments).
"""

from __future__ import annotations

import ray

from umpo_dist.config import Config
from umpo_dist.devices import set_threads
from umpo_dist.envs.spec import EnvSpec
from umpo_dist.models.ensemble import build_ensemble
from umpo_dist.models.policy import build_policy
from umpo_dist.runtime.evaluation_round import evaluation_round


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=3)
class EvaluatorActor:
    def __init__(self, cfg: Config, spec: EnvSpec):
        set_threads(1)
        self.cfg = cfg
        self.policy = build_policy(spec, cfg.policy)
        self.model = build_ensemble(spec, cfg.model).requires_grad_(False) if cfg.diagnostics.enabled else None

    def evaluate(self, policy_weights: dict, model_weights: dict | None, seed: int) -> dict:
        """An evaluation round of `policy_weights`; the model's diagnostics too once a model was published."""
        self.policy.load_state_dict(policy_weights)
        model = None
        if model_weights is not None and self.model is not None:
            self.model.load_state_dict(model_weights)
            model = self.model
        return evaluation_round(self.policy, model, self.cfg, seed)
