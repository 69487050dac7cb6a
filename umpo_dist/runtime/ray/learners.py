"""The learner actors: a model learner and a policy learner, training side by side.

Each wraps its core learner, computes on `cuda` when Ray assigned it a GPU and on
the CPU otherwise, prefetches its next replay request while it computes on the
current one (but not past a round's last update, `train.train_every`), and publishes
its weights to the weight store every `train.publish_every` updates and at the end of
every call (the policy learner also its initial weights, as version 0, when it starts:
after the random steps the workers act with a policy, as the inline runner's do), so that
env workers act with a policy, and the policy learner imagines with a model, at most about that many
updates old (the policy learner looks for a newer model as often). Each call reports the
seconds it spent inside updates (`busy_s`), of which it waited for replay answers
(`data_wait_s`) and computed gradient updates (`update_s`, over `updates_timed`), from which
the driver logs utilisation, data waits and milliseconds per update.
Ray restarts a learner that died; it comes back with its optimiser state from the
run's last checkpoint and the newest weights it had published.
"""

from __future__ import annotations

import time
from collections import deque

import ray

from umpo_dist.ops.checkpoint import load_learner_state
from umpo_dist.config import Config
from umpo_dist.devices import cpu_kind, keep_freed_memory, select_device, set_threads
from umpo_dist.envs.spec import EnvSpec
from umpo_dist.models.model_learner import build_model_learner
from umpo_dist.objectives import build_objective
from umpo_dist.runtime.learner_metrics import mean_metrics
from umpo_dist.runtime.ray.cluster import assigned_cpus, pin_to
from umpo_dist.runtime.ray.retry import ACTOR_ERRORS, call_with_retry, was_restarted
from umpo_dist.runtime.ray.weights import WeightSubscriber, publish
from umpo_dist.runtime.update_timer import UpdateTimer


class Prefetcher:
    """Keeps one request in flight: `next()` returns the pending result and issues the next request.

    With `batched`, each answer is a list (several batches from one replay call, `ReplayActor.many`)
    that `next()` hands out one item at a time, asking again when it is used up. `next(last=True)`
    leaves nothing behind: no request ahead and no items kept (a pending request is dropped unread), so the
    next `next()` asks afresh: with rounds, a round's first batch is drawn once the round's data is in.
    """

    def __init__(self, request, what: str, batched: bool = False):
        self.request, self.what, self.batched = request, what, batched
        self._ref = None
        self._items: deque = deque()
        self.waited_s = 0.0  # seconds `next()` spent blocked on answers (the prefetch was not ready)

    def next(self, last: bool = False):
        if not self.batched:
            return self._answer(ahead=not last)
        while not self._items:
            self._items.extend(self._answer(ahead=not last))
        item = self._items.popleft()
        if last:
            self._items.clear()
            self._ref = None
        return item

    def _answer(self, ahead: bool = True):
        ref = self._ref if self._ref is not None else self.request()
        self._ref = self.request() if ahead else None
        started = time.perf_counter()
        try:
            return ray.get(ref)
        except ACTOR_ERRORS:  # the replay is restarting: drop the prefetch and wait for it
            self._ref = None
            return call_with_retry(self.request, self.what)
        finally:
            self.waited_s += time.perf_counter() - started

    def take_waited(self) -> float:
        waited, self.waited_s = self.waited_s, 0.0
        return waited


class _LearnerActor:
    """What both learner actors share: device, threads, restore after a restart, publishing."""

    state_name: str  # the learner's file in a checkpoint
    weights_name: str  # the weight set it publishes

    def __init__(self, cfg: Config, store, run_dir: str | None, cores: list[int] | None = None):
        pin_to(cores)
        set_threads(assigned_cpus())
        keep_freed_memory()
        self.device = select_device(ray.get_gpu_ids())
        self.cfg, self.store, self.run_dir = cfg, store, run_dir
        self.restarted = was_restarted()
        self.timer = UpdateTimer()

    def _update(self, batch) -> dict:
        return self.timer.run("update", self.learner.update, batch)

    def _restore(self) -> None:
        """After a restart: optimiser and the rest from the last checkpoint, then the newest published weights."""
        state = load_learner_state(self.run_dir, self.state_name) if self.run_dir else None
        if state is not None:
            self.learner.load_state(state)
        held = call_with_retry(lambda: self.store.latest.remote(self.weights_name, -1), "reading weights")
        if held is not None:
            version, (ref,) = held
            try:
                self._load_published(ray.get(ref))
                self.learner.updates = version
            except ACTOR_ERRORS:
                pass  # the store went down meanwhile: keep what the checkpoint gave

    def _publish(self) -> None:
        """Publish the current weights, as the version of its update count, and wait until the store has them."""
        publish(self.store, self.weights_name, self.learner.updates, self.learner.weights())

    def _publish_within(self, i: int, num_updates: int) -> bool:
        """After the call's `i`-th update: publish every `train.publish_every` updates (not waited for: the
        store keeps the newest version, and the call's last publication is awaited). True if it published."""
        if i % self.cfg.train.publish_every or i == num_updates:
            return False
        self.store.publish.remote(self.weights_name, self.learner.updates, self.learner.weights())
        return True

    def _result(self, rows: list[dict], started: float, data: Prefetcher, **extra) -> dict:
        busy_s = time.perf_counter() - started
        self._publish()
        restarted, self.restarted = self.restarted, False
        update_s, updates_timed = self.timer.take("update")
        return {"updates": self.learner.updates, "metrics": mean_metrics(rows), "restarted": restarted,
                "busy_s": busy_s, "data_wait_s": data.take_waited(), "update_s": update_s,
                "updates_timed": updates_timed, **extra}

    def hardware(self) -> tuple[str, str]:
        """(the torch device it computes on, the kind of CPU its process runs on)."""
        return str(self.device), cpu_kind()

    def state(self) -> dict:
        return self.learner.state()

    def load_state(self, state: dict) -> int:
        self.learner.load_state(state)
        self._publish()
        return self.learner.updates


@ray.remote(max_restarts=-1)
class ModelLearnerActor(_LearnerActor):
    state_name, weights_name = "model_learner", "model"

    def __init__(self, cfg: Config, spec: EnvSpec, replay, store, run_dir: str | None = None):
        super().__init__(cfg, store, run_dir)
        self.learner = build_model_learner(cfg, spec, self.device)
        self.replay = replay
        # mnm.model_realism: the classifier the policy learner publishes
        self.classifier_weights = WeightSubscriber(store, "classifier") if self.learner.classifier is not None else None
        k = cfg.resources.batches_per_call
        self.batches = Prefetcher(lambda: replay.many.remote(k, "sample", cfg.model.batch_size), "replay sample",
                                  batched=True)
        if self.restarted:
            self._restore()

    def _load_published(self, weights: dict) -> None:
        self.learner.model.load_state_dict(weights)

    def train(self, num_updates: int, round_end: bool = False) -> dict:
        """`num_updates` updates; `round_end`: they are the last of a round (`train.train_every`), so nothing is
        asked of the replay ahead: the next round's first batch is drawn once that round's data is in."""
        started = time.perf_counter()
        if self.classifier_weights is not None:  # asked and waited for until the first one is there, then polled
            sub = self.classifier_weights
            weights = sub.poll() if self.learner.classifier_version >= 0 else sub.fetch()
            if weights is not None:
                self.learner.set_classifier_weights(weights, sub.version)
        self.learner.refresh_statistics(lambda: call_with_retry(lambda: self.replay.statistics.remote(), "replay statistics"))
        rows = []
        for i in range(1, num_updates + 1):
            metrics = self._update(self.batches.next(last=round_end and i == num_updates))
            if self.learner.validation_due:
                holdout = call_with_retry(lambda: self.replay.holdout_batch.remote(self.cfg.model.holdout_capacity),
                                          "replay holdout")
                metrics.update(self.learner.validate(holdout))
            rows.append(metrics)
            self._publish_within(i, num_updates)
        return self._result(rows, started, self.batches)


@ray.remote(max_restarts=-1)
class PolicyLearnerActor(_LearnerActor):
    """Runs the objective named by `policy.objective` on the data it declares it needs."""

    state_name, weights_name = "policy_learner", "policy"

    def __init__(self, cfg: Config, spec: EnvSpec, replay, store, run_dir: str | None = None,
                 cores: list[int] | None = None):
        """`cores`: run on these only (the core a small local machine keeps for it: `cluster.core_plan`)."""
        super().__init__(cfg, store, run_dir, cores)
        self.learner = build_objective(cfg, spec, self.device)
        self.model_weights = WeightSubscriber(store, "model")
        needs = self.learner.needs
        k = cfg.resources.batches_per_call
        self.data = Prefetcher(lambda: replay.many.remote(k, "sample_for", needs), "replay sample for the objective",
                               batched=True)
        if self.restarted:
            self._restore()
        else:  # the initial policy, as version 0: the workers act with it once the random steps are in, as inline
            self._publish()

    def _load_published(self, weights: dict) -> None:
        self.learner.policy.load_state_dict(weights)

    def _take_model(self, weights: dict | None) -> None:
        if weights is not None:
            self.learner.set_model_weights(weights, self.model_weights.version)

    def train(self, num_updates: int, round_end: bool = False) -> dict:
        """As `ModelLearnerActor.train`."""
        # The newest model as the call starts, asked now (with rounds, the round's whole model; `poll`'s
        # request in flight may have been answered before it existed), then looked for within the call.
        weights = self.model_weights.fetch() if self.learner.model_version >= 0 else self.model_weights.wait()
        started = time.perf_counter()  # after the first model's arrival: waiting for it is not work
        self._take_model(weights)
        rows = []
        for i in range(1, num_updates + 1):
            rows.append(self._update(self.data.next(last=round_end and i == num_updates)))
            if self._publish_within(i, num_updates):
                self._take_model(self.model_weights.poll())  # a newer model, if the store has one (never waits)
        shared = getattr(self.learner, "shared_weights", None)  # an objective's weights other learners use
        for name, weights in (shared() if shared else {}).items():
            publish(self.store, name, self.learner.updates, weights)
        return self._result(rows, started, self.data, model_version=self.learner.model_version)
