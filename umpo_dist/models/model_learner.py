"""Trains the ensemble dynamics model: bootstrap-weighted NLL, held-out validation, elites."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from umpo_dist.config import Config, ModelConfig
from umpo_dist.devices import state_to_cpu, to_tensors
from umpo_dist.envs.spec import EnvSpec
from umpo_dist.models.classifier import TransitionClassifier
from umpo_dist.models.ensemble import ensemble_network
from umpo_dist.numerical_guard import NumericalGuard


class ModelLearner:
    def __init__(self, cfg: ModelConfig, obs_dim: int, action_dim: int, device: torch.device | str = "cpu", seed: int = 0,
                 classifier: TransitionClassifier | None = None, realism_weight: float = 0.0):
        """With a `classifier` (mnm's, `mnm.model_realism` = `realism_weight` > 0) the loss also has
        `realism_weight · −log C(s, a, ŝ′)` once the classifier's weights arrived (`set_classifier_weights`)."""
        torch.manual_seed(seed)
        self.cfg = cfg
        self.device = torch.device(device)
        self.model = ensemble_network(obs_dim, action_dim, cfg)
        self.model.to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.updates = 0
        self.guard = NumericalGuard({"model": self.model, "optimizer": self.optimizer})
        self.classifier = classifier.to(self.device).requires_grad_(False) if classifier is not None else None
        self.realism_weight = realism_weight
        self.classifier_version = -1  # policy updates of the classifier weights held (-1: none yet)

    def update(self, batch: dict[str, np.ndarray]) -> dict[str, float]:
        """One gradient step on a replay batch (with its bootstrap `weights`).

        A batch, loss or gradient that is not finite skips the step (and is counted);
        repeated blow-ups roll the model back to its last good weights.
        """
        b = to_tensors(batch, self.device)
        if not self.guard.finite(*b.values()):
            self.guard.bad()
            return self.guard.metrics("model")
        if self.cfg.normalizer == "running":
            self.model.input_norm.update(torch.cat([b["obs"], b["action"]], -1))
            self.model.target_norm.update(self.model.targets(b))
        loss, metrics = self.model.loss(b, b["weights"])
        if self.classifier_version >= 0:
            realism = self.realism_loss(b["obs"], b["action"], b["weights"])
            loss = loss + self.realism_weight * realism
            metrics["model/realism_loss"] = float(realism.detach())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip = self.cfg.grad_clip if self.cfg.grad_clip is not None else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        if not self.guard.finite(loss.detach(), grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            self.guard.bad()
            return self.guard.metrics("model")
        self.optimizer.step()
        self.guard.good()
        self.updates += 1
        return {**metrics, **self.guard.metrics("model")}

    def realism_loss(self, obs: torch.Tensor, action: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """−log C(s, a, ŝ′), ŝ′ each member's reparameterised sample from (s, a): each member's mean under the
        bootstrap `weights` (B, E) (held-out items weigh 0), summed over members like the NLL. Low where the
        classifier takes the model's transitions for real ones; differentiable in the model only."""
        pred = self.model.predict(obs, action)
        sample = pred["mean"] + pred["var"].sqrt() * torch.randn_like(pred["mean"])
        next_obs = obs + sample[..., : self.model.obs_dim]
        logit = self.classifier(obs.expand_as(next_obs), action.expand(*next_obs.shape[:-1], -1), next_obs)
        w = weights.T  # (E, B)
        return ((F.softplus(-logit) * w).sum(-1) / w.sum(-1).clamp_min(1.0)).sum()  # summed over members, as the NLL

    def set_classifier_weights(self, weights: dict, version: int) -> None:
        self.classifier.load_state_dict(weights)
        self.classifier_version = version

    def refresh_statistics(self, read) -> None:
        """Under `model.normalizer: replay`, normalise with the replay window's statistics (`read()` returns
        `ReplayBuffer.statistics()`); called before each round of updates, the running merge is then left alone."""
        if self.cfg.normalizer != "replay":
            return
        stats = read()
        n, d = stats["count"], self.model.target_dim
        self.model.input_norm.assign(stats["inputs_mean"], stats["inputs_var"], n, stats["inputs_low"], stats["inputs_high"])
        self.model.target_norm.assign(stats["targets_mean"], stats["targets_var"], n, np.full(d, np.inf), np.full(d, -np.inf))

    @property
    def validation_due(self) -> bool:
        """A held-out evaluation is due after this update (every `validate_every` updates)."""
        return self.updates > 0 and self.updates % self.cfg.validate_every == 0

    def validate(self, holdout: dict[str, np.ndarray]) -> dict[str, float]:
        """Held-out NLL/MSE per member; the `elites` best members are recorded in the model."""
        if len(holdout["reward"]) == 0:
            return {}
        per_member = self.model.evaluate(to_tensors(holdout, self.device))
        order = torch.argsort(per_member["nll"])
        elites = order[: self.cfg.elites]
        self.model.elite_mask.zero_()
        self.model.elite_mask[elites] = True
        return {
            "model/val_nll": float(per_member["nll"][elites].mean()),
            "model/val_mse": float(per_member["mse"][elites].mean()),
            "model/val_nll_all": float(per_member["nll"].mean()),
        }

    def weights(self) -> dict:
        return state_to_cpu(self.model.state_dict())

    def state(self) -> dict:
        return {"model": self.weights(), "optimizer": self.optimizer.state_dict(), "updates": self.updates}

    def load_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.updates = int(state["updates"])


def build_model_learner(cfg: Config, spec: EnvSpec, device: torch.device | str = "cpu") -> ModelLearner:
    """The run's model learner; under `policy.objective: mnm` with `mnm.model_realism` > 0 it holds a copy of
    the classifier (the policy learner trains it and publishes its weights) to train the model against."""
    classifier = None
    if cfg.policy.objective == "mnm" and cfg.mnm.model_realism > 0:
        classifier = TransitionClassifier(spec.obs_dim, spec.action_dim, cfg.mnm.hidden_layers, cfg.mnm.hidden_size)
    return ModelLearner(cfg.model, spec.obs_dim, spec.action_dim, device, cfg.train.seed, classifier,
                        cfg.mnm.model_realism)
