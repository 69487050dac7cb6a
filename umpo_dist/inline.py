"""The inline runner: the whole algorithm in one process, no Ray.

Built from the same classes the distributed runtime wraps in actors; it is the
reference for correctness and the fallback for debugging (`--set runtime=inline`).
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch

from .collector import EnvCollector
from .config import Config
from .envs import env_spec
from .evaluation import evaluate_policy
from .model_learner import ModelLearner
from .policy_learner import PolicyLearner
from .rate_limiter import RateLimiter
from .replay import ReplayBuffer

LogFn = Callable[[dict, int], None]


class InlineRunner:
    def __init__(self, cfg: Config, log: LogFn | None = None):
        self.cfg = cfg
        self.log = log or (lambda metrics, step: None)
        seed = cfg.train.seed
        np.random.seed(seed)
        torch.manual_seed(seed)
        spec = env_spec(cfg.env.id)
        self.spec = spec
        self.replay = ReplayBuffer.from_config(cfg, spec.obs_dim, spec.action_dim, seed)
        self.model_learner = ModelLearner(cfg.model, spec.obs_dim, spec.action_dim, "cpu", seed)
        self.policy_learner = PolicyLearner(cfg.policy, cfg.model, spec.obs_dim, spec.action_low, spec.action_high, "cpu", seed)
        self.collector = EnvCollector(cfg.env.id, cfg.resources.envs_per_worker, seed, cfg.env.max_episode_steps)
        t = cfg.train
        self.model_limiter = RateLimiter(t.model_updates_per_step, t.random_steps, t.model_warmup_updates)
        self.policy_limiter = RateLimiter(t.policy_updates_per_step, t.random_steps)
        self.env_steps = 0
        self.next_eval = 0
        self.evaluations: list[tuple[int, float]] = []
        self.episodes: list[tuple[int, float]] = []

    def state(self) -> dict:
        """The same checkpoint contents as the distributed driver's."""
        counters = {"env_steps": self.env_steps, "model_updates": self.model_learner.updates,
                    "policy_updates": self.policy_learner.updates, "evaluations": self.evaluations,
                    "episodes": self.episodes[-10_000:], "next_eval": self.next_eval}
        return {"replay": self.replay.state(), "model": self.model_learner.state(),
                "policy": self.policy_learner.state(), "counters": counters}

    def load_state(self, replay_state: dict, model_state: dict, policy_state: dict, counters: dict) -> None:
        self.replay.load_state(replay_state)
        self.model_learner.load_state(model_state)
        self.policy_learner.load_state(policy_state)
        self.policy_learner.set_model_weights(self.model_learner.model.state_dict(), self.model_learner.updates)
        self.env_steps = int(counters["env_steps"])
        self.next_eval = int(counters.get("next_eval", self.env_steps))
        self.evaluations = [tuple(e) for e in counters.get("evaluations", [])]
        self.episodes = [tuple(e) for e in counters.get("episodes", [])]

    def drain(self) -> None:
        """Nothing runs concurrently here: the state is always consistent between steps."""

    def checkpoint_written(self, replay_total: int) -> None:
        """The inline replay keeps no chunk log, so there is nothing to compact."""

    def evaluate(self) -> float:
        result = evaluate_policy(
            self.policy_learner.policy, self.cfg.env.id, self.cfg.env.eval_episodes, 10_000 + self.cfg.train.seed,
            self.cfg.env.max_episode_steps,
        )
        self.evaluations.append((self.env_steps, result["return_mean"]))
        self.log({"eval/return": result["return_mean"], "eval/return_std": result["return_std"]}, self.env_steps)
        return result["return_mean"]

    def _train_model(self) -> dict:
        cfg, ml = self.cfg, self.model_learner
        metrics: dict = {}
        for _ in range(self.model_limiter.updates_allowed(self.env_steps, ml.updates)):
            metrics = ml.update(self.replay.sample(cfg.model.batch_size))
            if ml.updates % cfg.model.validate_every == 0:
                metrics.update(ml.validate(self.replay.holdout_batch(cfg.model.holdout_capacity)))
        if metrics:
            self.policy_learner.set_model_weights(ml.model.state_dict(), ml.updates)
        return metrics

    def _train_policy(self) -> dict:
        pl = self.policy_learner
        metrics: dict = {}
        if self.model_learner.updates < self.cfg.train.model_warmup_updates:
            return metrics
        for _ in range(self.policy_limiter.updates_allowed(self.env_steps, pl.updates)):
            metrics = pl.update(self.replay.sample_start_states(self.cfg.policy.start_states))
        return metrics

    def run(self, checkpoint: Callable[["InlineRunner"], None] | None = None, progress=None) -> dict:
        t = self.cfg.train
        start = time.perf_counter()
        every = t.checkpoint_every
        next_checkpoint = (self.env_steps // every + 1) * every if every else None
        stopped_at = None
        while self.env_steps < t.total_env_steps:
            if self.env_steps >= self.next_eval:
                ret = self.evaluate()
                self.next_eval += t.eval_every
                if t.stop_at_return is not None and ret >= t.stop_at_return:
                    stopped_at = self.env_steps
                    break
            n = min(t.train_every, t.total_env_steps - self.env_steps)
            act = self.policy_learner.policy.act if self.env_steps >= t.random_steps else None
            batch, episodes = self.collector.collect(n, act)
            self.replay.insert(batch)
            self.env_steps += n
            metrics: dict = {}
            for ep in episodes:
                self.episodes.append((self.env_steps, ep["return"]))
                metrics["episode/return"] = ep["return"]
            metrics.update(self._train_model())
            metrics.update(self._train_policy())
            if metrics:
                self.log(metrics, self.env_steps)
            if progress:
                progress.update(self.env_steps, self.evaluations[-1][1] if self.evaluations else None, {})
            if next_checkpoint is not None and self.env_steps >= next_checkpoint and self.env_steps < t.total_env_steps:
                if checkpoint:
                    checkpoint(self)
                next_checkpoint += every
        if not self.evaluations or self.evaluations[-1][0] != self.env_steps:
            self.evaluate()
        returns = [r for _, r in self.evaluations]
        return {
            "env_steps": self.env_steps,
            "model_updates": self.model_learner.updates,
            "policy_updates": self.policy_learner.updates,
            "final_return": returns[-1],
            "best_return": max(returns),
            "reached_stop_return_at": stopped_at,
            "evaluations": self.evaluations,
            "model_ratio": self.model_limiter.achieved(self.env_steps, self.model_learner.updates),
            "policy_ratio": self.policy_limiter.achieved(self.env_steps, self.policy_learner.updates),
            "wall_s": time.perf_counter() - start,
        }
