"""The driver: starts the actors, enforces the update-to-data ratios, evaluates, checkpoints.

Every actor call is asynchronous; the driver keeps each env worker and each learner
busy with one call at a time, as far as the rate limiters allow, and reacts to
whichever call finishes first (`ray.wait`). Learners that run ahead wait for data;
env workers that run more than `ratio_tolerance` steps ahead of a learner wait for it.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from typing import Callable

import numpy as np
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ..config import Config
from ..envs import EnvSpec
from ..evaluation import evaluate_policy
from ..policy import TanhGaussianPolicy
from ..rate_limiter import RateLimiter
from .env_worker import EnvWorker
from .learners import ModelLearnerActor, PolicyLearnerActor
from .replay_actor import ReplayActor
from .retry import ACTOR_ERRORS, call_with_retry
from .weights import WeightStoreActor

log = logging.getLogger(__name__)
LogFn = Callable[[dict, int], None]
RESTART_COOLDOWN_S = 1.0  # pause before calling an actor again after a failed call


@ray.remote(num_cpus=0)
def _evaluate(policy_weights: dict, spec: EnvSpec, cfg: Config, seed: int) -> dict:
    policy = TanhGaussianPolicy(spec.obs_dim, spec.action_low, spec.action_high, cfg.policy.hidden_layers,
                                cfg.policy.hidden_size)
    policy.load_state_dict(policy_weights)
    return evaluate_policy(policy, spec.env_id, cfg.env.eval_episodes, seed, cfg.env.max_episode_steps)


def learner_gpus(setting: str) -> float:
    """GPUs per learner: 'auto' shares what the cluster has between the two learners (at most 1 each)."""
    if setting != "auto":
        return float(setting)
    total = ray.cluster_resources().get("GPU", 0.0)
    return min(1.0, total / 2) if total >= 1 else 0.0


class Driver:
    def __init__(self, cfg: Config, spec: EnvSpec, run_dir: str | None = None, log_fn: LogFn | None = None):
        """`run_dir` (on this node) holds checkpoints and the replay's chunk log; without it
        nothing is durable and a restarted replay starts empty."""
        self.cfg, self.spec = cfg, spec
        self.log = log_fn or (lambda metrics, step: None)
        r, t = cfg.resources, cfg.train
        gpus = learner_gpus(r.learner_gpus)
        run_dir = str(run_dir) if run_dir is not None else None
        self.store = WeightStoreActor.remote()
        # The replay writes its log into the run directory, so it lives on the driver's node.
        here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
        self.replay = ReplayActor.options(scheduling_strategy=here).remote(
            spec.obs_dim, spec.action_dim, cfg.replay.capacity, cfg.model.ensemble_size, cfg.replay.sampling,
            cfg.model.holdout_fraction, t.seed, run_dir=run_dir,
        )
        self.model_learner = ModelLearnerActor.options(num_cpus=r.learner_cpus, num_gpus=gpus).remote(
            cfg, spec, self.replay, self.store, run_dir)
        self.policy_learner = PolicyLearnerActor.options(num_cpus=r.learner_cpus, num_gpus=gpus).remote(
            cfg, spec, self.replay, self.store, run_dir)
        # SPREAD places env workers across nodes, so collection uses every machine's cores.
        self.workers = [
            EnvWorker.options(num_cpus=r.worker_cpus, scheduling_strategy="SPREAD").remote(cfg, spec, i, self.replay, self.store)
            for i in range(r.num_env_workers)
        ]
        self.model_limiter = RateLimiter(t.model_updates_per_step, t.random_steps, t.model_warmup_updates, r.ratio_tolerance)
        self.policy_limiter = RateLimiter(t.policy_updates_per_step, t.random_steps, 0, r.ratio_tolerance)
        self.devices = {
            "model_learner": ray.get(self.model_learner.device_name.remote()),
            "policy_learner": ray.get(self.policy_learner.device_name.remote()),
        }
        self.model_updates = 0
        self.policy_updates = 0
        self.evaluations: list[tuple[int, float]] = []
        self.episodes: list[tuple[int, float]] = []
        self.policy_versions_used: Counter = Counter()
        self.worker_nodes: dict[int, str] = {}
        self.next_eval = 0
        self.next_checkpoint = t.checkpoint_every or None
        self._stop_step = None
        self.acknowledged = 0  # transitions whose acknowledgement a worker reported in this process
        self._down: dict[tuple[str, int], float] = {}  # failed actors: (kind, index) -> when to call again
        self.failures: Counter = Counter()  # actor deaths seen, by role
        self.recoveries: Counter = Counter()  # restarted actors that came back and reported, by role
        self.callbacks: list[Callable[["Driver"], None]] = []  # called once per scheduling round
        # Transitions the replay acknowledged: the run's env-step count (resumed runs included).
        self.env_steps = ray.get(self.replay.stats.remote())["total_inserted"]

    # -- state ------------------------------------------------------------------
    def state(self) -> dict:
        """Everything a checkpoint needs; call only when no actor call is in flight."""
        replay_state, model_state, policy_state = (
            call_with_retry(lambda a=actor: a.state.remote(), f"{name} state")
            for name, actor in (("replay", self.replay), ("model learner", self.model_learner),
                                ("policy learner", self.policy_learner)))
        counters = {
            "env_steps": self.env_steps,
            "model_updates": self.model_updates,
            "policy_updates": self.policy_updates,
            "evaluations": self.evaluations,
            "episodes": self.episodes[-10_000:],
            "next_eval": self.next_eval,
        }
        return {"replay": replay_state, "model": model_state, "policy": policy_state, "counters": counters}

    def load_state(self, replay_state: dict, model_state: dict, policy_state: dict, counters: dict) -> None:
        """Resume: the learners from the checkpoint; the replay rebuilt itself from the run
        directory (checkpoint plus every chunk acknowledged after it), and its count is the env-step count."""
        self.model_updates = ray.get(self.model_learner.load_state.remote(model_state))
        self.policy_updates = ray.get(self.policy_learner.load_state.remote(policy_state))
        self.env_steps = ray.get(self.replay.stats.remote())["total_inserted"]
        self.evaluations = [tuple(e) for e in counters.get("evaluations", [])]
        self.episodes = [tuple(e) for e in counters.get("episodes", [])]
        self.next_eval = int(counters.get("next_eval", self.env_steps))
        every = self.cfg.train.checkpoint_every
        self.next_checkpoint = (self.env_steps // every + 1) * every if every else None

    def checkpoint_written(self, replay_total: int) -> None:
        """The chunks up to `replay_total` are now in a checkpoint: drop them from the log."""
        call_with_retry(lambda: self.replay.compact.remote(replay_total), "replay log compaction")

    def latest_policy_weights(self) -> dict | None:
        """The newest published policy, or None if there is none (yet, or since the store restarted)."""
        held = call_with_retry(lambda: self.store.latest.remote("policy", -1), "reading policy weights")
        try:
            return ray.get(held[1][0]) if held else None
        except ACTOR_ERRORS:  # the store died after answering: its objects went with it
            return None

    # -- the loop ---------------------------------------------------------------
    def run(self, checkpoint: Callable[["Driver"], None] | None = None, progress=None) -> dict:
        """Train to the env-step budget (or `stop_at_return`); returns a summary.

        `checkpoint(driver)` is called every `checkpoint_every` env steps, at a moment
        when no actor call is in flight, so the state it reads is consistent.
        """
        t = self.cfg.train
        self._inflight: dict = {}  # ObjectRef -> (kind, index, requested env steps)
        self._scheduled = 0  # env steps requested from workers and not yet returned
        self._stop_step = None
        self._metrics: dict = {}
        self._staleness: dict = defaultdict(list)
        start = time.monotonic()
        self._window = (start, self.env_steps, self.model_updates, self.policy_updates)
        eval_pending = False
        while True:
            due = self.next_checkpoint
            drain = due is not None and due < t.total_env_steps and self.env_steps + self._scheduled >= due
            stop = self._stop_step is not None
            for callback in self.callbacks:
                callback(self)
            if not (stop or drain):
                self._schedule_workers()
                self._schedule_learners()
                if not eval_pending and self.env_steps >= self.next_eval:
                    self._inflight[self._submit_eval(self.latest_policy_weights())] = ("eval", self.env_steps, 0)
                    self.next_eval = (self.env_steps // t.eval_every + 1) * t.eval_every
                    eval_pending = True
            if not any(kind != "eval" for kind, _, _ in self._inflight.values()):
                if drain:
                    if checkpoint:
                        checkpoint(self)
                    self.next_checkpoint = due + t.checkpoint_every
                    continue
                if stop or self.env_steps >= t.total_env_steps:
                    break
                if not self._inflight:
                    if self._down:  # the actor everything waits for is restarting: give it a moment
                        time.sleep(RESTART_COOLDOWN_S / 4)
                        continue
                    raise RuntimeError("scheduler stalled: nothing in flight and nothing allowed; check the ratios")
            ready, _ = ray.wait(list(self._inflight), num_returns=1, timeout=1.0)
            for ref in ready:
                kind, index, requested = self._inflight.pop(ref)
                eval_pending = eval_pending and kind != "eval"
                self._handle(kind, index, requested, ref)
            self._report(progress)

        for ref, (kind, index, _) in list(self._inflight.items()):
            self._handle(kind, index, 0, ref)
        if not self.evaluations or self.evaluations[-1][0] != self.env_steps:
            self._finish_eval(self._submit_eval(self.latest_policy_weights()), self.env_steps)
        self._report(progress, force=True)
        return {
            "env_steps": self.env_steps,
            "model_updates": self.model_updates,
            "policy_updates": self.policy_updates,
            "final_return": self.evaluations[-1][1],
            "best_return": max(r for _, r in self.evaluations),
            "reached_stop_return_at": self._stop_step,
            "evaluations": self.evaluations,
            "model_ratio": self.model_limiter.achieved(self.env_steps, self.model_updates),
            "policy_ratio": self.policy_limiter.achieved(self.env_steps, self.policy_updates),
            "policy_versions_used": len(self.policy_versions_used),
            "worker_nodes": sorted(set(self.worker_nodes.values())),
            "devices": self.devices,
            "acknowledged_in_session": self.acknowledged,
            "failures": dict(self.failures),
            "recoveries": dict(self.recoveries),
            "wall_s": time.monotonic() - start,
        }

    def request_stop(self) -> None:
        """End the run after the calls in flight (e.g. at a wall-clock limit)."""
        if self._stop_step is None:
            self._stop_step = self.env_steps

    def drain(self) -> None:
        """Finish every call still in flight (after an interrupt), so that `state()` is consistent."""
        for ref, (kind, index, requested) in list(getattr(self, "_inflight", {}).items()):
            del self._inflight[ref]
            self._handle(kind, index, requested, ref)

    def _replay_total(self) -> int:
        return call_with_retry(lambda: self.replay.stats.remote(), "replay stats")["total_inserted"]

    def _busy(self, kind: str, index: int = 0) -> bool:
        """A call is in flight, or the actor is restarting and is left alone for a moment."""
        if self._down.get((kind, index), 0.0) > time.monotonic():
            return True
        return any(k == kind and i == index for k, i, _ in self._inflight.values())

    def _schedule_workers(self) -> None:
        t, r = self.cfg.train, self.cfg.resources
        for i, worker in enumerate(self.workers):
            budget = t.total_env_steps - self.env_steps - self._scheduled
            if budget <= 0:
                return
            if self._busy("worker", i):
                continue
            planned = self.env_steps + self._scheduled
            random_phase = planned < t.random_steps
            if random_phase:
                n = min(r.chunk_size, t.random_steps - planned)
            else:
                allowed = min(self.model_limiter.env_steps_allowed(planned, self.model_updates),
                              self.policy_limiter.env_steps_allowed(planned, self.policy_updates))
                n = min(r.chunk_size, allowed, budget)
                # Tiny calls cost a round trip each; wait until a reasonable chunk is allowed.
                if n < min(r.chunk_size // 4, budget, r.ratio_tolerance) or n <= 0:
                    continue
            self._inflight[worker.collect.remote(n, random_phase)] = ("worker", i, n)
            self._scheduled += n

    def _schedule_learners(self) -> None:
        per_call = self.cfg.train.updates_per_call
        if not self._busy("model"):
            k = self.model_limiter.updates_allowed(self.env_steps, self.model_updates)
            if k > 0:
                self._inflight[self.model_learner.train.remote(min(k, per_call))] = ("model", 0, 0)
        if self.model_updates >= self.cfg.train.model_warmup_updates and not self._busy("policy"):
            k = self.policy_limiter.updates_allowed(self.env_steps, self.policy_updates)
            if k > 0:
                self._inflight[self.policy_learner.train.remote(min(k, per_call))] = ("policy", 0, 0)

    def _handle(self, kind: str, index: int, requested: int, ref) -> None:
        if kind == "eval":
            ret = self._finish_eval(ref, index)
            stop_at = self.cfg.train.stop_at_return
            if stop_at is not None and ret >= stop_at and self._stop_step is None:
                self._stop_step = index
            return
        if kind == "worker":
            self._scheduled -= requested
        role = f"{kind}_{index}" if kind == "worker" else f"{kind}_learner"
        try:
            result = ray.get(ref)
        except ACTOR_ERRORS as exc:
            # Ray restarts the actor (max_restarts); its call is lost and is scheduled again once it is
            # back. Calls that fail while it is still down are the same failure, not new ones.
            if (kind, index) not in self._down:
                self.failures[kind] += 1
                log.warning("actor %s failed (%s); it is being restarted", role, type(exc).__name__)
                self._metrics[f"faults/{kind}_failures"] = self.failures[kind]
            self._down[(kind, index)] = time.monotonic() + RESTART_COOLDOWN_S
            if kind == "worker":
                self.env_steps = max(self.env_steps, self._replay_total())
            return
        self._down.pop((kind, index), None)
        if result.get("restarted"):
            self.recoveries[kind] += 1
            log.warning("actor %s is back after a restart", role)
            self._metrics[f"faults/{kind}_recoveries"] = self.recoveries[kind]
        if kind == "worker":
            if result["replay_total"] is not None:
                self.acknowledged += result["steps"]
                # The replay's acknowledged total after this chunk (other workers' chunks included).
                self.env_steps = max(self.env_steps, result["replay_total"])
                self._metrics["replay/total_inserted"] = result["replay_total"]
            self.worker_nodes[index] = result["node_id"]
            self._metrics["env/dropped_nonfinite_episodes"] = result["dropped_episodes"]
            if result["policy_version"] >= 0:
                self.policy_versions_used[result["policy_version"]] += 1
                self._staleness["policy"].append(self.policy_updates - result["policy_version"])
            for ep in result["episodes"]:
                self.episodes.append((self.env_steps, ep["return"]))
                self._metrics["episode/return"] = ep["return"]
                self._metrics["episode/length"] = ep["length"]
        elif kind == "model":
            self.model_updates = result["updates"]
            self._metrics.update(result["metrics"])
        else:
            self.policy_updates = result["updates"]
            self._staleness["model"].append(self.model_updates - result["model_version"])
            self._metrics.update(result["metrics"])

    def _report(self, progress, force: bool = False) -> None:
        now = time.monotonic()
        t0, env0, model0, policy0 = self._window
        dt = now - t0
        if not force and dt < min(self.cfg.tracking.log_every_s, 1.0 if progress else float("inf")):
            return
        dt = max(dt, 1e-9)
        rates = {
            "rate/env_steps_per_s": (self.env_steps - env0) / dt,
            "rate/model_updates_per_s": (self.model_updates - model0) / dt,
            "rate/policy_updates_per_s": (self.policy_updates - policy0) / dt,
            "ratio/model_updates_per_step": self.model_limiter.achieved(self.env_steps, self.model_updates),
            "ratio/policy_updates_per_step": self.policy_limiter.achieved(self.env_steps, self.policy_updates),
            "versions/policy_versions_acted": len(self.policy_versions_used),
        }
        for name, lags in self._staleness.items():
            rates[f"staleness/{name}_versions"] = float(np.mean(lags))
        self.log({**self._metrics, **rates}, self.env_steps)
        if progress:
            progress.update(self.env_steps, self.evaluations[-1][1] if self.evaluations else None, rates)
        self._metrics = {}
        self._staleness = defaultdict(list)
        self._window = (now, self.env_steps, self.model_updates, self.policy_updates)

    def _submit_eval(self, weights: dict | None):
        if weights is None:  # before the first publication: the initial policy the learner starts from
            weights = call_with_retry(lambda: self.policy_learner.state.remote(), "policy learner state")["policy"]
        return _evaluate.remote(weights, self.spec, self.cfg, 10_000 + self.cfg.train.seed)

    def _finish_eval(self, ref, step: int) -> float:
        result = ray.get(ref)
        self.evaluations.append((step, result["return_mean"]))
        self.log({"eval/return": result["return_mean"], "eval/return_std": result["return_std"]}, step)
        return result["return_mean"]
