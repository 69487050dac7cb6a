"""The driver: starts the actors, keeps them busy within the schedule, evaluates, checkpoints.

Every actor call is asynchronous; the driver keeps each env worker and each learner
busy with one call at a time, as far as the shared `Schedule` allows, and reacts to
whichever call finishes first (`ray.wait`). Env workers run their own loop in each call
(`EnvWorker.run`): they ask the replay for every chunk, and the replay grants them by the
learners' progress, which the driver reports to it (`runtime/admission.py`), so workers
never run more than `ratio_tolerance` steps ahead of a learner and the driver is not in
the data path. Learners that run ahead wait for data.
Actors ask Ray for CPUs fitted to the cluster (`cpu_requests`); one evaluation actor
lives for the whole run. Each call reports its busy seconds, and the driver logs each
role's utilisation (share of wall-clock inside useful work).
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from typing import Callable

import numpy as np
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from umpo_dist.config import Config
from umpo_dist.diagnostics.watch import ExploitationWatch
from umpo_dist.envs.spec import EnvSpec
from umpo_dist.runtime.ray.cluster import cpu_requests, learner_gpus, local_cluster_cpus, policy_learner_cores
from umpo_dist.runtime.ray.env_worker import EnvWorker
from umpo_dist.runtime.ray.evaluator import EvaluatorActor
from umpo_dist.runtime.ray.learners import ModelLearnerActor, PolicyLearnerActor
from umpo_dist.runtime.ray.replay_actor import ReplayActor
from umpo_dist.runtime.ray.retry import ACTOR_ERRORS, call_with_retry
from umpo_dist.runtime.ray.weights import WeightStoreActor
from umpo_dist.runtime.admission import Admission
from umpo_dist.runtime.evaluation_round import record_round
from umpo_dist.runtime.learner_metrics import mean_metrics
from umpo_dist.runtime.schedule import Call, Schedule
from umpo_dist.runtime.update_timer import UpdateTimer

log = logging.getLogger(__name__)
LogFn = Callable[[dict, int], None]
RESTART_COOLDOWN_S = 1.0  # pause before calling an actor again after a failed call
STALL_AFTER_S = 60.0  # no progress for this long, with no learner allowed to update: the ratios are stuck


class Driver:
    def __init__(self, cfg: Config, spec: EnvSpec, run_dir: str | None = None, log_fn: LogFn | None = None):
        """`run_dir` (on this node) holds checkpoints and the replay's chunk log; without it
        nothing is durable and a restarted replay starts empty."""
        self.cfg, self.spec = cfg, spec
        self.log = log_fn or (lambda metrics, step: None)
        r, t = cfg.resources, cfg.train
        gpus = learner_gpus(r.learner_gpus)
        cpus = cpu_requests(r, local_cluster_cpus())
        run_dir = str(run_dir) if run_dir is not None else None
        self.store = WeightStoreActor.remote()
        # The replay writes its log into the run directory, so it lives on the driver's node.
        here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
        self.replay = ReplayActor.options(scheduling_strategy=here).remote(
            spec.obs_dim, spec.action_dim, cfg.replay.capacity, cfg.model.ensemble_size, cfg.replay.sampling,
            cfg.model.holdout_fraction, t.seed, run_dir=run_dir, sync_every_ms=cfg.replay.sync_every_ms,
            admission=Admission(t, r.ratio_tolerance),
        )
        self.model_learner = ModelLearnerActor.options(num_cpus=cpus.model_learner, num_gpus=gpus).remote(
            cfg, spec, self.replay, self.store, run_dir)
        self.policy_learner = PolicyLearnerActor.options(num_cpus=cpus.policy_learner, num_gpus=gpus).remote(
            cfg, spec, self.replay, self.store, run_dir, cores=policy_learner_cores())
        # SPREAD places env workers across nodes, so collection uses every machine's cores.
        self.workers = [
            EnvWorker.options(num_cpus=cpus.env_worker, scheduling_strategy="SPREAD").remote(cfg, spec, i, self.replay, self.store)
            for i in range(r.num_env_workers)
        ]
        self.evaluator = EvaluatorActor.remote(cfg, spec)
        self.schedule = Schedule(t, r.ratio_tolerance,
                                 ExploitationWatch(cfg.diagnostics.warn_margin, cfg.diagnostics.warn_after))
        hardware = {role: ray.get(actor.hardware.remote())
                    for role, actor in (("model_learner", self.model_learner), ("policy_learner", self.policy_learner))}
        self.devices = {role: device for role, (device, _) in hardware.items()}
        self.learner_cpus = {role: cpu for role, (_, cpu) in hardware.items()}  # may be other nodes' CPUs
        self.policy_versions_used: Counter = Counter()
        self.worker_nodes: dict[int, str] = {}
        self.worker_steps: Counter = Counter()  # env steps each worker (by index) had acknowledged
        self.acknowledged = 0  # transitions whose acknowledgement a worker reported in this process
        self._inflight: dict = {}  # ObjectRef -> Call
        self._admitted = None  # what the replay's admission was last told (None: tell it again)
        self.stall_after_s = STALL_AFTER_S
        self._progress_mark = (None, time.monotonic())  # (counters, when they last changed)
        self._down: dict[tuple[str, int], float] = {}  # failed actors: (kind, index) -> when to call again
        self.busy: Counter = Counter()  # seconds inside useful work, by role ("worker" summed over workers)
        self.data_wait: Counter = Counter()  # of those, seconds a learner was blocked on replay answers
        self.timer = UpdateTimer()  # the learners' seconds inside gradient updates, as they report them
        self.busy_since: dict[str, float] = {}  # when each role's first call was issued
        self.failures: Counter = Counter()  # actor deaths seen, by role
        self.recoveries: Counter = Counter()  # restarted actors that came back and reported, by role
        self.callbacks: list[Callable[["Driver"], None]] = []  # called once per scheduling round
        self.on_best = None  # (weights, step, return) of each evaluation that beats the earlier ones
        self.on_warning = None  # (step, text) of each model-exploitation warning
        # Transitions the replay acknowledged: the run's env-step count (resumed runs included).
        self.schedule.env_steps = ray.get(self.replay.stats.remote())["total_inserted"]

    # -- state ------------------------------------------------------------------
    def state(self) -> dict:
        """Everything a checkpoint needs; call only when no actor call is in flight."""
        replay_state, model_state, policy_state = (
            call_with_retry(lambda a=actor: a.state.remote(), f"{name} state")
            for name, actor in (("replay", self.replay), ("model learner", self.model_learner),
                                ("policy learner", self.policy_learner)))
        return {"replay": replay_state, "model": model_state, "policy": policy_state,
                "counters": self.schedule.counters()}

    def load_state(self, replay_state: dict, model_state: dict, policy_state: dict, counters: dict) -> None:
        """Resume: the learners from the checkpoint; the replay rebuilt itself from the run
        directory (checkpoint plus every chunk acknowledged after it), and its count is the env-step count."""
        s = self.schedule
        s.load_counters(counters)
        s.model_updates = ray.get(self.model_learner.load_state.remote(model_state))
        s.policy_updates = ray.get(self.policy_learner.load_state.remote(policy_state))
        s.env_steps = ray.get(self.replay.stats.remote())["total_inserted"]
        s.checkpoint_written()

    def checkpoint_written(self, replay_total: int) -> None:
        """The chunks up to `replay_total` are now in a checkpoint: drop them from the log."""
        call_with_retry(lambda: self.replay.compact.remote(replay_total), "replay log compaction")

    def latest_policy_weights(self) -> dict | None:
        """The newest published policy, or None if there is none (yet, or since the store restarted)."""
        held = self._latest_ref("policy")
        try:
            return ray.get(held[1]) if held else None
        except ACTOR_ERRORS:  # the store died after answering: its objects went with it
            return None

    def _latest_ref(self, kind: str) -> tuple[int, ray.ObjectRef] | None:
        """(version, object ref) of the newest published weights of `kind`, or None."""
        held = call_with_retry(lambda: self.store.latest.remote(kind, -1), f"reading {kind} weights")
        return (held[0], held[1][0]) if held else None

    # -- the loop ---------------------------------------------------------------
    def run(self, checkpoint: Callable[["Driver"], None] | None = None, progress=None) -> dict:
        """Train to the env-step budget (or `stop_at_return`); returns a summary.

        `checkpoint(driver)` is called every `checkpoint_every` env steps, at a moment
        when no actor call is in flight, so the state it reads is consistent.
        """
        s = self.schedule
        self._metrics: dict = {}
        self._learner_calls: dict = defaultdict(list)  # per learner kind, each call's metrics since the last report
        self._staleness: dict = defaultdict(list)
        start = time.monotonic()
        self._window = (start, s.env_steps, s.model_updates, s.policy_updates)
        while True:
            drain = s.checkpoint_due()
            for callback in self.callbacks:
                callback(self)
            self._tell_admission()
            if not (s.stopping() or drain):
                self._schedule_workers()
                self._schedule_learners()
                if s.eval_due() and not self._calls("eval"):
                    ref, call = self._submit_eval(s.eval_started())
                    self._inflight[ref] = call
            if not any(call.kind != "eval" for call in self._inflight.values()):
                if drain:
                    if checkpoint:
                        checkpoint(self)
                    s.checkpoint_written()
                    continue
                if s.done():
                    break
                if not self._inflight:
                    if self._down:  # the actor everything waits for is restarting: give it a moment
                        time.sleep(RESTART_COOLDOWN_S / 4)
                        continue
                    raise RuntimeError("scheduler stalled: nothing in flight and nothing allowed; check the ratios")
            if self._stalled():
                raise RuntimeError(f"scheduler stalled: no env step and no update allowed for {self.stall_after_s:g} s; "
                                   "check the ratios")
            ready, _ = ray.wait(list(self._inflight), num_returns=1, timeout=1.0)
            if ready and len(self._inflight) > 1:  # every call finished by now, handled in this one turn
                ready, _ = ray.wait(list(self._inflight), num_returns=len(self._inflight), timeout=0)
            for ref in ready:
                self._handle(self._inflight.pop(ref), ref)
            self._report(progress)

        self.drain()
        if s.final_eval_needed():
            self._finish_eval(*self._submit_eval(s.env_steps))
        self._report(progress, force=True)
        end = time.monotonic()
        return {
            **s.summary(end - start),
            "utilisation": self._utilisation(end),
            "update_ms": self.timer.ms_per_update(),
            "policy_versions_used": len(self.policy_versions_used),
            "worker_nodes": sorted(set(self.worker_nodes.values())),
            "worker_steps": dict(self.worker_steps),
            "devices": self.devices,
            "learner_cpus": self.learner_cpus,
            "acknowledged_in_session": self.acknowledged,
            "failures": dict(self.failures),
            "recoveries": dict(self.recoveries),
        }

    def request_stop(self) -> None:
        """End the run after the calls in flight (e.g. at a wall-clock limit)."""
        self.schedule.request_stop()

    def drain(self) -> None:
        """Finish every call still in flight (after an interrupt), so that `state()` is consistent."""
        for ref, call in list(self._inflight.items()):
            del self._inflight[ref]
            self._handle(call, ref)

    def _replay_total(self) -> int:
        return call_with_retry(lambda: self.replay.stats.remote(), "replay stats")["total_inserted"]

    def _calls(self, kind: str, index: int | None = None) -> bool:
        """A call of this kind (to this actor index, if given) is in flight."""
        return any(c.kind == kind and index in (None, c.index) for c in self._inflight.values())

    def _busy(self, kind: str, index: int = 0) -> bool:
        """A call is in flight, or the actor is restarting and is left alone for a moment."""
        return self._down.get((kind, index), 0.0) > time.monotonic() or self._calls(kind, index)

    def _stalled(self) -> bool:
        """No counter moved for `stall_after_s` while no learner had anything to do or was restarting."""
        s, now = self.schedule, time.monotonic()
        mark = (s.env_steps, s.model_updates, s.policy_updates)
        busy = (self._down or self._calls("model") or self._calls("policy") or s.model_updates_allowed() > 0
                or s.policy_updates_allowed() > 0 or s.env_steps >= s.collection_limit())
        if busy or mark != self._progress_mark[0]:
            self._progress_mark = (mark, now)
            return False
        return now - self._progress_mark[1] > self.stall_after_s

    def _tell_admission(self) -> None:
        """Keep the replay's admission told of the learners' counts and of how far collection may run.

        Told again after every call that finished (a restarted replay has forgotten it); one call at a
        time, and its answer, the replay's acknowledged count, keeps the schedule's count fresh."""
        s = self.schedule
        told = (s.model_updates, s.policy_updates, s.collection_limit())
        if told == self._admitted or self._busy("admission"):
            return
        self._inflight[self.replay.admit.remote(*told)] = Call("admission")
        self._admitted = told

    def _admission_answered(self, ref) -> None:
        try:
            total = ray.get(ref)
        except ACTOR_ERRORS:  # the replay is restarting: tell the new one in a moment
            self._admitted = None
            self._down[("admission", 0)] = time.monotonic() + RESTART_COOLDOWN_S / 4
            return
        self._down.pop(("admission", 0), None)
        self.schedule.env_steps = max(self.schedule.env_steps, total)

    def _schedule_workers(self) -> None:
        """Every idle worker runs, as long as collection has steps left before its limit."""
        if self.schedule.env_steps >= self.schedule.collection_limit():
            return
        for i, worker in enumerate(self.workers):
            if not self._busy("worker", i):
                self._inflight[worker.run.remote(self.cfg.resources.chunk_size)] = Call("worker", i)
                self.busy_since.setdefault("worker", time.monotonic())

    def _schedule_learners(self) -> None:
        """Each idle learner gets a call of the updates it is allowed, at most `train.updates_per_call`; with
        rounds, the call that takes a round's last updates says so (its learner then prefetches nothing)."""
        s, per_call = self.schedule, self.cfg.train.updates_per_call
        for kind, actor, allowed in (("model", self.model_learner, s.model_updates_allowed),
                                     ("policy", self.policy_learner, s.policy_updates_allowed)):
            if not self._busy(kind):
                k = allowed()
                if k > 0:
                    round_end = bool(s.round_steps) and k <= per_call
                    self._inflight[actor.train.remote(min(k, per_call), round_end)] = Call(kind)
                    self.busy_since.setdefault(kind, time.monotonic())

    def _handle(self, call: Call, ref) -> None:
        s = self.schedule
        kind, index = call.kind, call.index
        if kind == "eval":
            self._finish_eval(ref, call)
            return
        if kind == "admission":
            self._admission_answered(ref)
            return
        self._admitted = None  # something changed, or an actor came back: tell the replay again
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
                s.env_steps = max(s.env_steps, self._replay_total())
            return
        self._down.pop((kind, index), None)
        self.busy[kind] += result.get("busy_s", 0.0)
        self.data_wait[kind] += result.get("data_wait_s", 0.0)
        if result.get("updates_timed"):
            self.timer.add(f"{kind}_learner", result["update_s"], result["updates_timed"])
        if result.get("restarted"):
            self.recoveries[kind] += 1
            log.warning("actor %s is back after a restart", role)
            self._metrics[f"faults/{kind}_recoveries"] = self.recoveries[kind]
        if kind == "worker":
            if result["replay_total"] is not None:
                self.acknowledged += result["steps"]
                self.worker_steps[index] += result["steps"]
                # The replay's acknowledged total after this chunk (other workers' chunks included).
                s.env_steps = max(s.env_steps, result["replay_total"])
                self._metrics["replay/total_inserted"] = result["replay_total"]
            self.worker_nodes[index] = result["node_id"]
            self._metrics["env/dropped_nonfinite_episodes"] = result["dropped_episodes"]
            for version in result["policy_versions"]:
                if version >= 0:
                    self.policy_versions_used[version] += 1
                    self._staleness["policy"].append(s.policy_updates - version)
            for ep in result["episodes"]:
                s.record_episode(ep["return"])
                self._metrics["episode/return"] = ep["return"]
                self._metrics["episode/length"] = ep["length"]
        elif kind == "model":
            s.model_updates = result["updates"]
            self._learner_calls[kind].append(result["metrics"])
        else:
            s.policy_updates = result["updates"]
            self._staleness["model"].append(s.model_updates - result["model_version"])
            self._learner_calls[kind].append(result["metrics"])

    def _report(self, progress, force: bool = False) -> None:
        s = self.schedule
        now = time.monotonic()
        t0, env0, model0, policy0 = self._window
        dt = now - t0
        if not force and dt < min(self.cfg.tracking.log_every_s, 1.0 if progress else float("inf")):
            return
        dt = max(dt, 1e-9)
        rates = {
            "rate/env_steps_per_s": (s.env_steps - env0) / dt,
            "rate/model_updates_per_s": (s.model_updates - model0) / dt,
            "rate/policy_updates_per_s": (s.policy_updates - policy0) / dt,
            "ratio/model_updates_per_step": s.model_limiter.achieved(s.env_steps, s.model_updates),
            "ratio/policy_updates_per_step": s.policy_limiter.achieved(s.env_steps, s.policy_updates),
            "versions/policy_versions_acted": len(self.policy_versions_used),
        }
        for name, lags in self._staleness.items():
            rates[f"staleness/{name}_versions"] = float(np.mean(lags))
        rates.update({f"utilisation/{role}": share for role, share in self._utilisation(now).items()})
        rates.update({f"update_ms/{role}": ms for role, ms in self.timer.ms_per_update().items()})
        for calls in self._learner_calls.values():
            # Several calls may end between two reports: the log gets their mean, not the last one's figures.
            self._metrics.update(mean_metrics(calls))
        self.log({**self._metrics, **rates}, s.env_steps)
        if progress:
            progress.update(s.env_steps, s.evaluations[-1][1] if s.evaluations else None, rates)
        self._metrics = {}
        self._learner_calls = defaultdict(list)
        self._staleness = defaultdict(list)
        self._window = (now, s.env_steps, s.model_updates, s.policy_updates)

    def _utilisation(self, now: float) -> dict[str, float]:
        """Each role's share of wall-clock inside useful work since its first call (env workers: the mean),
        and for the learners the share of it spent blocked on replay answers (`..._data_wait`)."""
        names = {"policy": "policy_learner", "model": "model_learner", "worker": "env_workers"}
        shares = {}
        for kind, since in self.busy_since.items():
            actors = len(self.workers) if kind == "worker" else 1
            wall = max(now - since, 1e-9)
            shares[names[kind]] = self.busy[kind] / wall / actors
            if kind != "worker":
                shares[f"{names[kind]}_data_wait"] = self.data_wait[kind] / wall
        return shares

    def _submit_eval(self, step: int) -> tuple:
        """Start evaluating the newest published policy (the one at env step `step`) in the evaluation
        actor; returns the result's ref and its `Call`, which holds the weights evaluated (an object ref,
        or the learner's initial weights before any publication) and their version (policy updates)."""
        held = self._latest_ref("policy")
        if held is None:  # before the first publication: the initial policy the learner starts from
            version = 0
            weights = call_with_retry(lambda: self.policy_learner.state.remote(), "policy learner state")["policy"]
        else:
            version, weights = held
        model = self._latest_ref("model") if self.cfg.diagnostics.enabled else None
        seed = 10_000 + self.cfg.train.seed
        ref = self.evaluator.evaluate.remote(weights, model[1] if model else None, seed)
        return ref, Call("eval", step, weights=weights, version=version)

    def _finish_eval(self, ref, call: Call) -> None:
        try:
            result = ray.get(ref)
            # Fetched now, while the evaluation is known good: the best policy's export needs them, and the
            # store that owns them may go with a lost node before they are read.
            weights = ray.get(call.weights) if isinstance(call.weights, ray.ObjectRef) else call.weights
        except ray.exceptions.ObjectLostError:  # the weights' owner left with a lost node: the newest weights, now
            log.warning("the weights of the evaluation at env step %d were lost; evaluating the newest", call.index)
            self._finish_eval(*self._submit_eval(call.index))
            return
        record_round(self, call.index, result, lambda: weights, call.version)
