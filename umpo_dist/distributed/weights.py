"""Publishing weights through the weight-store actor, and fetching them only when they changed."""

from __future__ import annotations

import time

import ray

from ..weight_store import WeightStore

WeightStoreActor = ray.remote(num_cpus=0)(WeightStore)


def publish(store, name: str, version: int, weights: dict) -> None:
    """`ray.put` once; the store keeps the reference (wrapped in a list so Ray passes it through)."""
    ray.get(store.publish.remote(name, version, [ray.put(weights)]))


class WeightSubscriber:
    """Polls the store without blocking: one request is always in flight, checked with a zero timeout."""

    def __init__(self, store, name: str):
        self.store, self.name = store, name
        self.version = -1
        self._pending = None

    def poll(self) -> dict | None:
        """The newer weights if the store answered that there are some, else None (never waits)."""
        if self._pending is None:
            self._pending = self.store.latest.remote(self.name, self.version)
        ready, _ = ray.wait([self._pending], timeout=0)
        if not ready:
            return None
        result = ray.get(self._pending)
        self._pending = None
        if result is None:
            return None
        version, (ref,) = result
        weights = ray.get(ref)
        self.version = version
        self._pending = self.store.latest.remote(self.name, self.version)
        return weights

    def wait(self, timeout_s: float = 600.0) -> dict:
        """Block until some version exists (only before first use)."""
        deadline = time.monotonic() + timeout_s
        while True:
            result = ray.get(self.store.latest.remote(self.name, self.version))
            if result is not None:
                version, (ref,) = result
                self.version = version
                self._pending = None
                return ray.get(ref)
            if time.monotonic() > deadline:
                raise TimeoutError(f"no '{self.name}' weights were published within {timeout_s:.0f} s")
            time.sleep(0.05)
