"""Publishing weights through the weight-store actor, and fetching them only when they changed."""

from __future__ import annotations

import time

import ray

from umpo_dist.runtime.weight_store import WeightStore
from umpo_dist.runtime.ray.retry import ACTOR_ERRORS, call_with_retry


@ray.remote(num_cpus=0, max_restarts=-1)
class WeightStoreActor(WeightStore):
    """The store `ray.put`s the weights itself, so it owns them: they outlive the learner that sent them."""

    def publish(self, name: str, version: int, weights: dict) -> int:
        held = self.latest(name, version - 1)
        if held is not None and held[0] >= version:
            return held[0]
        return super().publish(name, version, [ray.put(weights)])


def publish(store, name: str, version: int, weights: dict) -> None:
    call_with_retry(lambda: store.publish.remote(name, version, weights), f"publishing {name} weights")


class WeightSubscriber:
    """Polls the store without blocking: one request is always in flight, checked with a zero timeout."""

    def __init__(self, store, name: str):
        self.store, self.name = store, name
        self.version = -1
        self._pending = None

    def _take(self, result) -> dict | None:
        if result is None or result[0] <= self.version:  # an answer to an older question: nothing newer
            return None
        version, (ref,) = result
        weights = ray.get(ref)
        self.version = version
        return weights

    def poll(self) -> dict | None:
        """The newer weights if the store answered that there are some, else None (never waits)."""
        if self._pending is None:
            self._pending = self.store.latest.remote(self.name, self.version)
        ready, _ = ray.wait([self._pending], timeout=0)
        if not ready:
            return None
        ref, self._pending = self._pending, None
        try:
            weights = self._take(ray.get(ref))
        except ACTOR_ERRORS:
            return None  # the store is restarting; ask again next time
        if weights is not None:
            self._pending = self.store.latest.remote(self.name, self.version)
        return weights

    def fetch(self) -> dict | None:
        """The newer weights if the store holds some, else None: one round trip, waited for.

        Unlike `poll`, whose request in flight may have been answered long before (a policy learner
        starting a round would take the last round's model for its first looks), this asks now."""
        self._pending = None
        held = call_with_retry(lambda: self.store.latest.remote(self.name, self.version), f"reading {self.name} weights")
        try:
            return self._take(held)
        except ACTOR_ERRORS:  # the store died after answering: nothing newer for now
            return None

    def wait(self, timeout_s: float = 600.0) -> dict:
        """Block until some version newer than the one held exists."""
        deadline = time.monotonic() + timeout_s
        while True:
            held = call_with_retry(lambda: self.store.latest.remote(self.name, self.version), f"reading {self.name} weights")
            try:
                weights = self._take(held)
            except ACTOR_ERRORS:  # the store died after answering; ask the restarted one
                weights = None
            if weights is not None:
                self._pending = None
                return weights
            if time.monotonic() > deadline:
                raise TimeoutError(f"no '{self.name}' weights were published within {timeout_s:.0f} s")
            time.sleep(0.05)
