"""Sending a stream of chunks to the replay actor: exactly once, in order, several in flight.

Each chunk gets the next seq of the sender's stream; up to `window` insert calls are in
flight at once, and the chunks sent meanwhile queue and go together in the next call
(one message, one log record: a sender that outruns the replay pays one round trip per
group, not per chunk); `send` waits only when `window` chunks are queued. The replay
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
    def __init__(self, replay, stream: str, window: int = 1, timeout_s: float = 600.0, max_group: int = 32):
        """`window`: insert calls in flight at most; chunks sent while it is full wait in a queue and go
        together in the next call (up to `max_group` chunks per call); `send` blocks while `window` chunks
        wait."""
        if window < 1 or max_group < 1:
            raise ValueError(f"window and max_group must be at least 1, got {window} and {max_group}")
        self.replay, self.stream, self.window, self.timeout_s = replay, stream, window, timeout_s
        self.max_group = max_group
        self.next_seq = 0
        # seq -> [batch, ref of the call that carries it (None: queued), last seq of that call]
        self.pending: OrderedDict[int, list] = OrderedDict()
        self.total: int | None = None  # the replay's acknowledged total in the newest acknowledgement
        self.acknowledged = 0  # transitions of this stream acknowledged so far
        self.resends = 0
        self.calls = 0  # insert calls made (a call carries one or more chunks)

    @property
    def in_flight(self) -> int:
        """Transitions sent or queued and not yet acknowledged."""
        return sum(len(batch["reward"]) for batch, _, _ in self.pending.values())

    @property
    def calls_in_flight(self) -> int:
        return len({id(ref) for _, ref, _ in self.pending.values() if ref is not None})

    @property
    def queued(self) -> int:
        """Chunks waiting for a call."""
        return sum(ref is None for _, ref, _ in self.pending.values())

    def send(self, batch: dict) -> None:
        """Send a chunk, or queue it behind `window` calls in flight; returns once fewer than `window` wait."""
        self.pending[self.next_seq] = [batch, None, self.next_seq]
        self.next_seq += 1
        self._pump()
        while self.queued >= self.window:
            self._settle_oldest()
            self._pump()

    def flush(self) -> None:
        """Wait until every chunk sent is acknowledged."""
        while self.pending:
            self._pump()
            self._settle_oldest()

    def _pump(self) -> None:
        """The queued chunks in one call, if a call may start."""
        if self.calls_in_flight < self.window:
            self._call([seq for seq, (_, ref, _) in self.pending.items() if ref is None][: self.max_group])

    def _call(self, seqs: list[int]) -> None:
        if not seqs:
            return
        ref = self.replay.insert_chunks.remote([self.pending[q][0] for q in seqs], self.stream, seqs[0])
        self.calls += 1
        for q in seqs:
            self.pending[q][1:] = [ref, seqs[-1]]

    def _settle_oldest(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        delay = 0.1
        while self.pending:
            seq, (batch, ref, last) = next(iter(self.pending.items()))
            if ref is None:
                self._pump()
                continue
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
            self._acknowledge_below(last + 1)
            self.total = total if self.total is None else max(self.total, total)
            return

    def _acknowledge_below(self, seq: int) -> None:
        while self.pending and next(iter(self.pending)) < seq:
            batch = self.pending.popitem(last=False)[1][0]
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
        """Every unacknowledged chunk again, in order, `max_group` per call; earlier attempts' answers are no
        longer awaited."""
        seqs = list(self.pending)
        for k in range(0, len(seqs), self.max_group):
            self._call(seqs[k:k + self.max_group])
            self.resends += len(seqs[k:k + self.max_group])
