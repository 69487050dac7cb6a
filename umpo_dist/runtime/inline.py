"""The inline runner: the whole algorithm in one process, no Ray.

Built from the same classes the distributed runtime wraps in actors, and driven by
the same `Schedule`; it is the reference for correctness and the fallback for
debugging (`--set runtime=inline`). It collects and acts as env worker 0 does (its
seeds, a `NumpyPolicy` of the newest policy), each learner draws from a torch stream
of its own, as in its own actor process, and the policy takes the newest model when
its round of updates starts, as the policy learner takes it at a call's start: with
rounds (`train.train_every`) and one env worker sending whole rounds, the Ray runtime
computes what this runner does, bit for bit (`tests/e2e/test_runtime_parity.py`).
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable

import numpy as np
import torch

from umpo_dist.config import Config
from umpo_dist.data.replay import ReplayBuffer
from umpo_dist.devices import cpu_kind
from umpo_dist.envs.collector import EnvCollector, noise_seed, worker_seed
from umpo_dist.envs.spec import env_spec
from umpo_dist.models.model_learner import build_model_learner
from umpo_dist.models.numpy_policy import NumpyPolicy
from umpo_dist.objectives import build_objective
from umpo_dist.diagnostics.watch import ExploitationWatch
from umpo_dist.runtime.evaluation_round import evaluation_round, record_round
from umpo_dist.runtime.learner_metrics import mean_metrics
from umpo_dist.runtime.schedule import Schedule
from umpo_dist.runtime.update_timer import UpdateTimer

LogFn = Callable[[dict, int], None]


class InlineRunner:
    def __init__(self, cfg: Config, log: LogFn | None = None):
        self.cfg = cfg
        self.log = log or (lambda metrics, step: None)
        seed = cfg.train.seed
        np.random.seed(seed)
        torch.manual_seed(seed)
        self.spec = spec = env_spec(cfg.env.id)
        self.replay = ReplayBuffer.from_config(cfg, spec.obs_dim, spec.action_dim, seed)
        self.model_learner = build_model_learner(cfg, spec, "cpu")
        self.streams = {"model": torch.get_rng_state()}  # each learner's torch stream, as its actor process has it
        self.objective = build_objective(cfg, spec, "cpu")
        self.streams["policy"] = torch.get_rng_state()
        collector_seed = worker_seed(seed, 0)
        self.collector = EnvCollector(cfg.env.id, cfg.resources.envs_per_worker, collector_seed, cfg.env.max_episode_steps)
        self.actor = NumpyPolicy(self.objective.policy, noise_seed(collector_seed))  # acts as env worker 0
        self.schedule = Schedule(cfg.train, watch=ExploitationWatch(cfg.diagnostics.warn_margin, cfg.diagnostics.warn_after))
        self.devices = {"model_learner": "cpu", "policy_learner": "cpu"}
        self.learner_cpus = dict.fromkeys(self.devices, cpu_kind())
        self.timer = UpdateTimer()  # seconds inside each learner's gradient updates, as in the Ray runtime
        self.callbacks: list[Callable[["InlineRunner"], None]] = []  # called once per round
        self.on_best = None  # (weights, step, return) of each evaluation that beats the earlier ones
        self.on_warning = None  # (step, text) of each model-exploitation warning

    def state(self) -> dict:
        """The same checkpoint contents as the distributed driver's."""
        return {"replay": self.replay.state(), "model": self.model_learner.state(),
                "policy": self.objective.state(), "counters": self.schedule.counters()}

    def load_state(self, replay_state: dict, model_state: dict, policy_state: dict, counters: dict) -> None:
        self.replay.load_state(replay_state)
        self.model_learner.load_state(model_state)
        # The model first: taking model weights also syncs the networks' observation statistics
        # (`policy.normalize_obs`), and the checkpoint's policy must come back exactly as it was saved.
        self.objective.set_model_weights(self.model_learner.weights(), self.model_learner.updates)
        self.objective.load_state(policy_state)
        self.schedule.load_counters(counters)

    def drain(self) -> None:
        """Nothing runs concurrently here: the state is always consistent between steps."""

    def checkpoint_written(self, replay_total: int) -> None:
        """The inline replay keeps no chunk log, so there is nothing to compact."""

    def request_stop(self) -> None:
        self.schedule.request_stop()

    def evaluate(self) -> float:
        step = self.schedule.eval_started()
        model = self.model_learner.model if self.model_learner.updates > 0 else None  # an untrained model says nothing
        policy = self.objective.policy
        result = evaluation_round(policy, model, self.cfg, 10_000 + self.cfg.train.seed)
        record_round(self, step, result, policy.state_dict, self.objective.updates)
        return result["return_mean"]

    @contextlib.contextmanager
    def _stream(self, learner: str):
        """Run in `learner`'s own torch stream (the global generator is given back as it was)."""
        outer = torch.get_rng_state()
        torch.set_rng_state(self.streams[learner])
        try:
            yield
        finally:
            self.streams[learner] = torch.get_rng_state()
            torch.set_rng_state(outer)

    def _act(self):
        """The acting function for the next steps: the newest policy, as an env worker acts with it."""
        self.actor.load(self.objective.policy)
        return self.actor.act

    def _train_model(self) -> dict:
        with self._stream("model"):
            return self._model_round()

    def _train_policy(self) -> dict:
        with self._stream("policy"):
            return self._policy_round()

    def _model_round(self) -> dict:
        cfg, ml = self.cfg, self.model_learner
        rows: list[dict] = []
        allowed = self.schedule.model_updates_allowed()
        if allowed:
            ml.refresh_statistics(self.replay.statistics)
        for _ in range(allowed):  # the round's updates' figures, and its held-out evaluations: their means
            rows.append(self.timer.run("model_learner", ml.update, self.replay.sample(cfg.model.batch_size)))
            if ml.validation_due:
                rows[-1].update(ml.validate(self.replay.holdout_batch(cfg.model.holdout_capacity)))
            self.schedule.model_updates = ml.updates
        return mean_metrics(rows)

    def _policy_round(self) -> dict:
        objective, ml = self.objective, self.model_learner
        rows: list[dict] = []
        allowed = self.schedule.policy_updates_allowed()
        if allowed and objective.model_version < ml.updates:  # the newest model, as the policy learner takes it
            objective.set_model_weights(ml.model.state_dict(), ml.updates)
        for _ in range(allowed):
            rows.append(self.timer.run("policy_learner", objective.update, self.replay.sample_for(objective.needs)))
            self.schedule.policy_updates = objective.updates
        if rows and self.model_learner.classifier is not None:  # mnm.model_realism: the newest classifier
            self.model_learner.set_classifier_weights(objective.shared_weights()["classifier"], objective.updates)
        return mean_metrics(rows)

    def run(self, checkpoint: Callable[["InlineRunner"], None] | None = None, progress=None) -> dict:
        s, t = self.schedule, self.cfg.train
        start = time.perf_counter()
        while not s.done():
            for callback in self.callbacks:
                callback(self)
            if s.eval_due():
                self.evaluate()
                if s.done():
                    break
            n = min(t.train_every, t.total_env_steps - s.env_steps)
            act = None if s.acts_randomly() else self._act()
            batch, episodes = self.collector.collect(n, act)
            self.replay.insert(batch)
            s.env_steps += n
            metrics: dict = {}
            for ep in episodes:
                s.record_episode(ep["return"])
                metrics["episode/return"] = ep["return"]
            metrics.update(self._train_model())
            metrics.update(self._train_policy())
            if metrics:
                self.log(metrics, s.env_steps)
            if progress:
                progress.update(s.env_steps, s.evaluations[-1][1] if s.evaluations else None, {})
            if s.checkpoint_due():
                if checkpoint:
                    checkpoint(self)
                s.checkpoint_written()
        if s.final_eval_needed():
            self.evaluate()
        return {**s.summary(time.perf_counter() - start), "update_ms": self.timer.ms_per_update()}
