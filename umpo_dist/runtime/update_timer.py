"""Seconds inside gradient updates, per learner: the compute a run's critical path is made of.

Both runtimes time the same thing, the learner's `update(batch)` call (no data fetch, no
publishing, no waiting), so their milliseconds per update compare directly: the Ray actor
against the inline runner (`benchmarks/distributed_vs_inline.py`), a GPU learner against a
CPU one. A learner actor times its own updates and reports each call's totals (`take`);
the driver adds them up (`add`).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Callable


class UpdateTimer:
    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self.clock = clock
        self.seconds: Counter = Counter()
        self.count: Counter = Counter()

    def run(self, role: str, update: Callable, batch) -> dict:
        """`update(batch)`, timed under `role`."""
        started = self.clock()
        metrics = update(batch)
        self.add(role, self.clock() - started, 1)
        return metrics

    def add(self, role: str, seconds: float, count: int) -> None:
        self.seconds[role] += seconds
        self.count[role] += count

    def take(self, role: str) -> tuple[float, int]:
        """The seconds and updates timed under `role` since the last `take`, and forget them."""
        return self.seconds.pop(role, 0.0), self.count.pop(role, 0)

    def ms_per_update(self) -> dict[str, float]:
        return {role: 1000.0 * self.seconds[role] / n for role, n in self.count.items() if n}
