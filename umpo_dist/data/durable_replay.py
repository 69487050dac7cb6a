"""A replay that loses nothing it acknowledged: an append-only log beside the checkpoints.

`insert_chunk` appends the chunk — with its bootstrap and held-out draws — to the log
(`data/replay_log.py`: one write per chunk, fsync by group commit) before it stores and
acknowledges it. A rebuilt replay (a restarted actor, a resumed run) loads the newer of
the newest checkpoint's replay and its own snapshot, then replays the log records after
it, so it holds exactly the transitions it had acknowledged, with the same draws. Each
checkpoint compacts the log up to its own count.

Exactly once, in order: chunks carry a `(stream, seq)` id and a stream's chunks are
accepted only in order, from seq 0. A resend of an accepted chunk is acknowledged
without storing it again; a chunk that arrives after a gap (an earlier one was lost
while the replay restarted, later ones already in flight) is refused with
`ChunkOutOfOrder`, which names the seq to resend from. So a sender may keep several
inserts in flight, and send the chunks queued behind them together (`insert_chunks`: one
call, one log record, one insert; `runtime/ray/chunk_sender.py`).

Bounded: it keeps the newest seq of the `MAX_STREAMS` most recently active streams
only. Without checkpoints to compact it (`checkpoint_every: 0`) the log would grow
with the run, so once it holds more than `capacity` transitions the replay writes its
own snapshot (`replay_log/snapshot.npz`) and drops the log below it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from umpo_dist.data.replay import ReplayBuffer, read_replay_state, write_replay_state
from umpo_dist.data.replay_log import ReplayLog


# Streams whose newest seq is kept. A stream dropped while its sender still lives costs nothing wrong: its next
# chunk is refused as out of order and the sender renumbers from 0 (`runtime/ray/chunk_sender.py`).
MAX_STREAMS = 1024


class ChunkOutOfOrder(Exception):
    """A chunk arrived before an earlier one of its stream: resend from `expected`."""

    def __init__(self, stream: str, seq: int, expected: int):
        super().__init__(f"chunk {seq} of stream {stream!r} arrived out of order: the replay expects chunk "
                         f"{expected} (resend from there)")
        self.stream, self.seq, self.expected = stream, seq, expected

    def __reduce__(self):  # crosses process boundaries (a Ray actor's error) with its fields
        return ChunkOutOfOrder, (self.stream, self.seq, self.expected)


class DurableReplayBuffer(ReplayBuffer):
    def __init__(self, *args, run_dir: str | Path | None = None, sync_every_ms: float = 50.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.streams: dict[str, int] = {}  # highest chunk seq accepted per sender
        self.log = ReplayLog(Path(run_dir) / "replay_log", sync_every_ms) if run_dir is not None else None
        self.recovered_from_log = 0
        self.logged = 0  # transitions in the log (not yet covered by a checkpoint or snapshot)
        self.snapshots = 0  # snapshots written by this instance
        self.snapshot_total: int | None = None  # transitions the snapshot on disk holds, if there is one
        if run_dir is not None:
            self._recover(Path(run_dir))

    @property
    def snapshot_path(self) -> Path:
        return self.log.directory / "snapshot.npz"

    def _recover(self, run_dir: Path) -> None:
        from umpo_dist.ops.checkpoint import CheckpointError, resolve_checkpoint, verify_checkpoint

        try:
            path = resolve_checkpoint(run_dir)
        except CheckpointError:
            path = None  # a new run: nothing to restore yet
        if path is not None:
            verify_checkpoint(path)
            self.load_state(read_replay_state(path / "replay.npz"))
        if self.snapshot_path.is_file():
            snapshot = read_replay_state(self.snapshot_path)
            self.snapshot_total = int(snapshot["total_inserted"])
            if self.snapshot_total > self.total_inserted:
                self.load_state(snapshot)
        for start, stream, seq, batch, rng_state in self.log.records(after=self.total_inserted):
            if start != self.total_inserted:
                raise RuntimeError(
                    f"replay log in '{self.log.directory}' has a gap: next chunk starts at {start}, "
                    f"the replay holds {self.total_inserted}"
                )
            self.insert(batch)
            self._accepted(stream, max(seq, self.streams.get(stream, -1)))
            self.recovered_from_log += len(batch["reward"])
            if rng_state:  # continue the draws where the logged ones ended, never repeat them
                self.rng.bit_generator.state = json.loads(rng_state)
        self.logged = self.recovered_from_log

    def insert_chunk(self, batch: dict[str, np.ndarray], stream: str, seq: int) -> int:
        """Make the chunk durable, store it, and return the acknowledged total.

        Raises `ChunkOutOfOrder` for a chunk after a gap in its stream.
        """
        return self.insert_chunks([batch], stream, seq)

    def insert_chunks(self, batches: list[dict[str, np.ndarray]], stream: str, first_seq: int) -> int:
        """Chunks `first_seq`, `first_seq + 1`, … of a stream in one call (a sender's queue): those already
        accepted are acknowledged again, the others logged as one record and stored together. Returns the
        acknowledged total; raises `ChunkOutOfOrder` if they start after a gap in the stream."""
        expected = self.streams.get(stream, -1) + 1
        new = batches[max(0, expected - first_seq):]
        if not new:
            return self.total_inserted  # a resend of chunks already accepted
        if first_seq > expected:
            raise ChunkOutOfOrder(stream, first_seq, expected)
        last = first_seq + len(batches) - 1
        batch = new[0] if len(new) == 1 else {k: np.concatenate([b[k] for b in new]) for k in new[0]}
        full = self.with_insert_draws(batch)
        m = len(full["reward"])
        if self.log is not None:  # one record for the group, under its last seq (a recovery accepts up to it)
            self.log.append(self.total_inserted, stream, last, full, json.dumps(self.rng.bit_generator.state))
        self.insert(full)
        self._accepted(stream, last)
        if self.log is not None:
            self.logged += m
            if self.logged > self.capacity:
                self.snapshot()
        return self.total_inserted

    def _accepted(self, stream: str, seq: int) -> None:
        """Record the stream's newest seq; only the `MAX_STREAMS` most recently active streams are kept
        (every restarted env worker starts a new one), the others have ended."""
        self.streams.pop(stream, None)
        self.streams[stream] = seq
        if len(self.streams) > MAX_STREAMS:
            del self.streams[next(iter(self.streams))]

    def snapshot(self) -> None:
        """Write the whole replay to `replay_log/snapshot.npz` and drop the log below it."""
        write_replay_state(self.state(), self.snapshot_path)
        self.snapshots += 1
        self.snapshot_total = self.total_inserted
        self.log.compact(self.total_inserted, self.total_inserted)
        self.logged = 0

    def compact(self, upto: int) -> int:
        """The transitions below `upto` are in a checkpoint (or snapshot): sync, and drop the log below it."""
        if self.log is None:
            return 0
        removed = self.log.compact(upto, self.total_inserted)
        self.logged = max(0, min(self.logged, self.total_inserted - upto))
        if self.snapshot_total is not None and upto >= self.snapshot_total:
            self.snapshot_path.unlink(missing_ok=True)  # the checkpoint holds all it held
            self.snapshot_total = None
        return removed

    def state(self) -> dict[str, np.ndarray]:
        state = super().state()
        state["streams"] = np.array(json.dumps(self.streams))
        return state

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        super().load_state(state)
        self.streams = json.loads(str(state["streams"])) if "streams" in state else {}
