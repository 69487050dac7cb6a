"""The learner actors: a model learner and a policy learner, training side by side.

Each wraps its core learner, computes on `cuda` when Ray assigned it a GPU and on
the CPU otherwise, prefetches its next replay batch while it computes on the current
one, and publishes its weights to the weight store at the end of every call.
"""

from __future__ import annotations

import numpy as np
import ray

from ..config import Config
from ..devices import select_device, set_threads
from ..envs import EnvSpec
from ..model_learner import ModelLearner
from ..policy_learner import PolicyLearner
from .weights import WeightSubscriber, publish


class Prefetcher:
    """Keeps one request in flight: `next()` returns the pending result and issues the next request."""

    def __init__(self, request):
        self.request = request
        self._ref = None

    def next(self):
        ref = self._ref if self._ref is not None else self.request()
        self._ref = self.request()
        return ray.get(ref)


def _mean_metrics(rows: list[dict]) -> dict:
    keys = {k for row in rows for k in row}
    return {k: float(np.mean([row[k] for row in rows if k in row])) for k in keys}


@ray.remote
class ModelLearnerActor:
    def __init__(self, cfg: Config, spec: EnvSpec, replay, store):
        set_threads(cfg.resources.learner_cpus)
        self.device = select_device(ray.get_gpu_ids())
        self.cfg = cfg
        self.learner = ModelLearner(cfg.model, spec.obs_dim, spec.action_dim, self.device, cfg.train.seed)
        self.replay, self.store = replay, store
        self.batches = Prefetcher(lambda: replay.sample.remote(cfg.model.batch_size))

    def device_name(self) -> str:
        return str(self.device)

    def train(self, num_updates: int) -> dict:
        rows = []
        for _ in range(num_updates):
            metrics = self.learner.update(self.batches.next())
            if self.learner.updates % self.cfg.model.validate_every == 0:
                holdout = ray.get(self.replay.holdout_batch.remote(self.cfg.model.holdout_capacity))
                metrics.update(self.learner.validate(holdout))
            rows.append(metrics)
        publish(self.store, "model", self.learner.updates, self.learner.weights())
        return {"updates": self.learner.updates, "metrics": _mean_metrics(rows)}

    def state(self) -> dict:
        return self.learner.state()

    def load_state(self, state: dict) -> int:
        self.learner.load_state(state)
        publish(self.store, "model", self.learner.updates, self.learner.weights())
        return self.learner.updates


@ray.remote
class PolicyLearnerActor:
    def __init__(self, cfg: Config, spec: EnvSpec, replay, store):
        set_threads(cfg.resources.learner_cpus)
        self.device = select_device(ray.get_gpu_ids())
        self.learner = PolicyLearner(cfg.policy, cfg.model, spec.obs_dim, spec.action_low, spec.action_high,
                                     self.device, cfg.train.seed)
        self.store = store
        self.model_weights = WeightSubscriber(store, "model")
        self.starts = Prefetcher(lambda: replay.sample_start_states.remote(cfg.policy.start_states))

    def device_name(self) -> str:
        return str(self.device)

    def train(self, num_updates: int) -> dict:
        weights = self.model_weights.poll() if self.learner.model_version >= 0 else self.model_weights.wait()
        if weights is not None:
            self.learner.set_model_weights(weights, self.model_weights.version)
        rows = [self.learner.update(self.starts.next()) for _ in range(num_updates)]
        publish(self.store, "policy", self.learner.updates, self.learner.policy_weights())
        return {"updates": self.learner.updates, "model_version": self.learner.model_version, "metrics": _mean_metrics(rows)}

    def state(self) -> dict:
        return self.learner.state()

    def load_state(self, state: dict) -> int:
        self.learner.load_state(state)
        publish(self.store, "policy", self.learner.updates, self.learner.policy_weights())
        return self.learner.updates
