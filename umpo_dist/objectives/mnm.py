"""The `mnm` objective (Mismatched No More): mean_variance on rewards that distrust the model where it looks fake.

A classifier C(s, a, s′) (`models/classifier.py`) learns to tell replay transitions
(real) from transitions the model imagines for the current policy; each policy update
first takes one classifier step on a balanced batch — `mnm.batch_size` real
transitions and as many drawn from this update's imagined rollouts — then the imagined
rewards become `r + w · log(C / (1 − C))`, `w = mnm.classifier_weight`. The log-ratio is
differentiated through the rollout like the reward itself, so the policy is pushed
away from actions that lead the model where its transitions look unlike the
environment's (Eysenbach et al., 2022: with w = 1 the objective is a lower bound on
the real return). Everything else is the `mean_variance` objective.
"""

from __future__ import annotations

import torch

from umpo_dist.config import Config
from umpo_dist.data.replay import DataNeeds
from umpo_dist.devices import state_to_cpu, to_tensors
from umpo_dist.envs.spec import EnvSpec
from umpo_dist.models.classifier import TransitionClassifier
from umpo_dist.numerical_guard import NumericalGuard
from umpo_dist.objectives.base import register_objective
from umpo_dist.objectives.mean_variance import MeanVarianceObjective
from umpo_dist.objectives.rollouts import Rollout


@register_objective("mnm")
class MnmObjective(MeanVarianceObjective):
    def __init__(self, cfg: Config, spec: EnvSpec, device: torch.device | str = "cpu"):
        super().__init__(cfg, spec, device)
        mnm = cfg.mnm
        self.classifier_weight = mnm.classifier_weight
        self.log_ratio_clip = mnm.log_ratio_clip
        self.model_realism = mnm.model_realism > 0  # the model learner trains against this classifier
        self.needs = DataNeeds(start_states=cfg.policy.start_states, transitions=mnm.batch_size)
        self.classifier = TransitionClassifier(spec.obs_dim, spec.action_dim, mnm.hidden_layers,
                                               mnm.hidden_size).to(self.device)
        self.classifier_opt = torch.optim.Adam(self.classifier.parameters(), lr=mnm.lr)
        self.classifier_skipped = 0  # classifier steps skipped on a non-finite loss
        self.guard = NumericalGuard({**self.guard.parts, "classifier": self.classifier,
                                     "classifier_opt": self.classifier_opt})
        self._metrics: dict[str, float] = {}

    def set_model_weights(self, weights: dict, version: int) -> None:
        super().set_model_weights(weights, version)
        obs_dim, model = self.policy.obs_dim, self.model
        self.classifier.set_obs_stats(torch.cat([model.input_norm.mean, model.target_norm.mean[:obs_dim]]),
                                      torch.cat([model.input_norm.std, model.target_norm.std[:obs_dim]]))

    def update(self, data: dict) -> dict[str, float]:
        """One classifier step and one mean_variance update on the shaped rewards."""
        metrics = super().update(data)
        return {**metrics, **self._metrics}

    def train_classifier(self, real: tuple[torch.Tensor, ...], fake: tuple[torch.Tensor, ...]) -> dict[str, float]:
        """One step on `real` against `fake` transitions, each `(obs, action, next_obs)`."""
        loss, accuracy = self.classifier.loss(real, fake)
        self.classifier_opt.zero_grad(set_to_none=True)
        loss.backward()
        if NumericalGuard.finite(loss.detach()):
            self.classifier_opt.step()
        else:
            self.classifier_opt.zero_grad(set_to_none=True)
            self.classifier_skipped += 1
        return {"mnm/classifier_loss": float(loss.detach()), "mnm/classifier_accuracy": float(accuracy),
                "mnm/classifier_skipped": self.classifier_skipped}

    def log_ratio(self, obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
        """log(C / (1 − C)), clipped; differentiable in the transition, not in the classifier's weights."""
        self.classifier.requires_grad_(False)
        try:
            logit = self.classifier(obs, action, next_obs)
        finally:
            self.classifier.requires_grad_(True)
        return logit.clamp(-self.log_ratio_clip, self.log_ratio_clip)

    def imagined_rewards(self, rollout: Rollout, data: dict) -> torch.Tensor:
        states, actions = rollout.states, rollout.actions  # (H+1, E, B, obs), (H, E, B, act)
        keys = ("obs", "action", "next_obs")
        real = tuple(to_tensors({k: data["transitions"][k] for k in keys}, self.device).values())
        flat = [x.detach().reshape(-1, x.shape[-1]) for x in (states[:-1], actions, states[1:])]
        pick = torch.randint(len(flat[0]), (len(real[0]),), device=self.device)  # balanced: as many as real ones
        self._metrics = self.train_classifier(real, tuple(x[pick] for x in flat))
        log_ratio = self.log_ratio(states[:-1], actions, states[1:])
        self._metrics["mnm/log_ratio"] = float(log_ratio.detach().mean())
        return rollout.rewards + self.classifier_weight * log_ratio

    def shared_weights(self) -> dict[str, dict]:
        """Weights other learners use, published beside the policy's: the classifier, which the model learner
        trains the model against under `mnm.model_realism` (nothing otherwise)."""
        return {"classifier": state_to_cpu(self.classifier.state_dict())} if self.model_realism else {}

    def state(self) -> dict:
        return {**super().state(), "classifier": state_to_cpu(self.classifier.state_dict()),
                "classifier_opt": self.classifier_opt.state_dict(), "classifier_skipped": self.classifier_skipped}

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        self.classifier.load_state_dict(state["classifier"])
        self.classifier_opt.load_state_dict(state["classifier_opt"])
        self.classifier_skipped = int(state["classifier_skipped"])
