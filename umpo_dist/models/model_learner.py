"""Trains the ensemble dynamics model: bootstrap-weighted NLL, held-out validation, elites."""

from __future__ import annotations

import numpy as np
import torch

from umpo_dist.config import ModelConfig
from umpo_dist.devices import state_to_cpu, to_tensors
from umpo_dist.models.ensemble import EnsembleDynamics
from umpo_dist.numerical_guard import NumericalGuard


class ModelLearner:
    def __init__(self, cfg: ModelConfig, obs_dim: int, action_dim: int, device: torch.device | str = "cpu", seed: int = 0):
        torch.manual_seed(seed)
        self.cfg = cfg
        self.device = torch.device(device)
        self.model = EnsembleDynamics(obs_dim, action_dim, cfg.ensemble_size, cfg.hidden_layers, cfg.hidden_size)
        self.model.to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.updates = 0
        self.guard = NumericalGuard({"model": self.model, "optimizer": self.optimizer})

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

    def set_statistics(self, stats: dict[str, np.ndarray]) -> None:
        """Normalise with statistics of the replay's window (`ReplayBuffer.statistics`): `model.normalizer:
        replay` calls this before each round of updates; the running merge is then left alone."""
        n = stats["count"]
        self.model.input_norm.assign(stats["inputs_mean"], stats["inputs_var"], n, stats["inputs_low"], stats["inputs_high"])
        d = self.model.target_dim
        self.model.target_norm.assign(stats["targets_mean"], stats["targets_var"], n, np.full(d, np.inf), np.full(d, -np.inf))

    def refresh_statistics(self, read) -> None:
        """Under `model.normalizer: replay`, take the replay's statistics (`read()` returns them)."""
        if self.cfg.normalizer == "replay":
            self.set_statistics(read())

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
