"""Sending a stream of chunks to the replay actor: exactly once, in order, several in flight.

Each chunk gets the next seq of the sender's stream; up to `window` inserts are in
flight at once and `send` waits only when one more would exceed it. The replay
accepts a stream's chunks only in order (`data/durable_replay.py`), so after any
failure — the replay actor died and Ray is restarting it, or a chunk arrived after a
lost one (`ChunkOutOfOrder`) — the sender resends every unacknowledged chunk from the
first the replay lacks, and the replay stores each exactly once whatever happened to
the earlier attempts. The transitions the replay holds after a recovery are the
acknowledged ones plus those still in flight, never a duplicate.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict

import ray

from umpo_dist.data.durable_replay import ChunkOutOfOrder
from umpo_dist.runtime.ray.retry import ACTOR_ERRORS

log = logging.getLogger(__name__)


class ChunkSender:
    def __init__(self, replay, stream: str, window: int = 1, timeout_s: float = 600.0):
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        self.replay, self.stream, self.window, self.timeout_s = replay, stream, window, timeout_s
        self.next_seq = 0
        self.pending: OrderedDict[int, list] = OrderedDict()  # seq -> [batch, ref of its latest attempt]
        self.total: int | None = None  # the replay's acknowledged total in the newest acknowledgement
        self.acknowledged = 0  # transitions of this stream acknowledged so far
        self.resends = 0

    @property
    def in_flight(self) -> int:
        """Transitions sent and not yet acknowledged."""
        return sum(len(batch["reward"]) for batch, _ in self.pending.values())

    def send(self, batch: dict) -> None:
        """Send a chunk; returns once at most `window` chunks are unacknowledged."""
        seq = self.next_seq
        self.next_seq += 1
        self.pending[seq] = [batch, self._insert(batch, seq)]
        while len(self.pending) > self.window:
            self._settle_oldest()

    def flush(self) -> None:
        """Wait until every chunk sent is acknowledged."""
        while self.pending:
            self._settle_oldest()

    def _insert(self, batch: dict, seq: int):
        return self.replay.insert_chunk.remote(batch, self.stream, seq)

    def _settle_oldest(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        delay = 0.1
        while self.pending:
            seq, (batch, ref) = next(iter(self.pending.items()))
            try:
                total = ray.get(ref)
            except ChunkOutOfOrder as exc:  # an earlier chunk was lost: the replay holds everything before it
                expected = getattr(exc, "cause", exc).expected
                if expected < seq:  # it forgot chunks it had acknowledged
                    self._renumber(expected)
                else:
                    self._acknowledge_below(expected)
                self._resend()
                continue
            except ACTOR_ERRORS as exc:
                if time.monotonic() > deadline:
                    raise
                log.warning("replay insert failed (%s); resending %d chunk(s) in %.1f s",
                            type(exc).__name__, len(self.pending), delay)
                time.sleep(delay)
                delay = min(2.0, delay * 2)
                self._resend()
                continue
            self._acknowledge_below(seq + 1)
            self.total = total if self.total is None else max(self.total, total)
            return

    def _acknowledge_below(self, seq: int) -> None:
        while self.pending and next(iter(self.pending)) < seq:
            batch, _ = self.pending.popitem(last=False)[1]
            self.acknowledged += len(batch["reward"])

    def _renumber(self, expected: int) -> None:
        """The replay expects a chunk it had acknowledged: it forgot them (without a run directory a
        restarted replay starts empty). Number the unacknowledged chunks from where it expects."""
        log.warning("the replay restarted without %d acknowledged chunk(s) of stream %s (it has no run directory "
                    "to recover them from); the stream continues at chunk %d",
                    next(iter(self.pending)) - expected, self.stream, expected)
        self.pending = OrderedDict((expected + k, entry) for k, entry in enumerate(self.pending.values()))
        self.next_seq = expected + len(self.pending)

    def _resend(self) -> None:
        """Every unacknowledged chunk again, in order; earlier attempts' answers are no longer awaited."""
        for seq, entry in self.pending.items():
            entry[1] = self._insert(entry[0], seq)
            self.resends += 1
