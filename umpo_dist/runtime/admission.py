"""Admission: the replay's side of the ratios. Env workers ask it for their next chunk.

Reverb puts its rate limiter in the replay; so do we. The driver tells the replay the
learners' update counts and the env step collection may run to (`Schedule.collection_limit`:
the budget, the next checkpoint, or the steps taken once the run stops); each env worker
asks for a chunk before it collects one, and the replay grants it by the `Schedule`'s
own rule (`next_chunk`) applied to its acknowledged count plus the steps it has granted
and not yet received. So the workers run their own loop and the driver is not in the
data path, and every runtime follows one rule.

A grant is a reservation held for its stream until the chunk arrives (`inserted`) or the
worker lets it go (`release`); one left behind by a worker that died expires after
`ttl_s`. Plain Python, no Ray: the replay actor holds one (`runtime/ray/replay_actor.py`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from umpo_dist.config import TrainConfig
from umpo_dist.runtime.schedule import Schedule

RESERVATION_TTL_S = 30.0  # a grant whose chunk never came (its worker died) stops counting after this long


@dataclass(frozen=True)
class Grant:
    steps: int  # env steps the worker may take now; 0: ask again shortly (the learners are behind)
    random: bool  # the initial random steps
    closed: bool = False  # collection has reached its limit: nothing more until the driver moves it


class Admission:
    def __init__(self, cfg: TrainConfig, tolerance: int, ttl_s: float = RESERVATION_TTL_S,
                 clock: Callable[[], float] = time.monotonic):
        self.schedule = Schedule(cfg, tolerance)
        self.limit: int | None = None  # until the driver's first word (also after a restart) nothing is granted
        self.reserved: dict[str, list] = {}  # stream -> [steps granted and not yet inserted, when granted last]
        self.ttl_s, self.clock = ttl_s, clock

    def update(self, model_updates: int, policy_updates: int, limit: int) -> None:
        """The learners' update counts and the env step collection may run to, as the driver has them."""
        s = self.schedule
        s.model_updates, s.policy_updates = int(model_updates), int(policy_updates)
        self.limit = int(limit)

    def grant(self, stream: str, inserted: int, want: int) -> Grant:
        """The next chunk of at most `want` steps for `stream`, given the replay's `inserted` count."""
        if self.limit is None:
            return Grant(0, False)
        if inserted >= self.limit:
            return Grant(0, False, closed=True)
        self._expire()
        self.schedule.env_steps = inserted
        chunk = self.schedule.next_chunk(self.reserved_steps(), want, self.limit)
        if chunk is None:
            return Grant(0, False)
        entry = self.reserved.setdefault(stream, [0, 0.0])
        entry[0] += chunk.steps
        entry[1] = self.clock()
        return Grant(chunk.steps, chunk.random)

    def inserted(self, stream: str, steps: int) -> None:
        """`steps` of the stream's granted steps arrived."""
        entry = self.reserved.get(stream)
        if entry is not None:
            entry[0] -= steps
            if entry[0] <= 0:
                del self.reserved[stream]

    def release(self, stream: str) -> None:
        """The stream takes no more of what it was granted (its worker paused or dropped steps)."""
        self.reserved.pop(stream, None)

    def reserved_steps(self) -> int:
        return sum(steps for steps, _ in self.reserved.values())

    def _expire(self) -> None:
        oldest = self.clock() - self.ttl_s
        for stream in [s for s, (_, when) in self.reserved.items() if when < oldest]:
            del self.reserved[stream]
