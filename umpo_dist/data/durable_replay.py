"""A replay that loses nothing it acknowledged: an append-only chunk log beside the checkpoints.

`insert_chunk` writes the chunk — with its bootstrap and held-out draws — to the log
and fsyncs it before it stores and acknowledges it. A rebuilt replay (a restarted
actor, a resumed run) loads the newest checkpoint's replay and then replays the log
records after it, so it holds exactly the transitions it had acknowledged, with the
same weights. Each checkpoint compacts the log up to its own count. Chunks carry a
`(stream, seq)` id so a chunk resent after a lost acknowledgement is stored once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np

from umpo_dist.data.replay import ReplayBuffer, read_replay_state
from umpo_dist.files import atomic_write, fsync_dir


class ReplayLog:
    """One `.npz` file per accepted chunk, named by its first global index and length."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def append(self, start: int, stream: str, seq: int, batch: dict[str, np.ndarray], rng_state: str = "") -> Path:
        m = len(batch["reward"])
        path = self.directory / f"chunk_{start:012d}_{m:06d}.npz"
        atomic_write(path, lambda fh: np.savez(fh, stream=np.array(stream), seq=np.array(seq),
                                               rng_state=np.array(rng_state), **batch))
        fsync_dir(self.directory)
        return path

    def _files(self) -> list[tuple[int, int, Path]]:
        out = []
        for path in self.directory.glob("chunk_*.npz"):
            _, start, m = path.stem.split("_")
            out.append((int(start), int(m), path))
        return sorted(out)

    def records(self, after: int = 0) -> Iterator[tuple[int, str, int, dict[str, np.ndarray], str]]:
        """`(start, stream, seq, batch, rng_state)` of every chunk that ends after global index `after`."""
        for start, m, path in self._files():
            if start + m <= after:
                continue
            with np.load(path, allow_pickle=False) as data:
                batch = {k: data[k] for k in data.files if k not in ("stream", "seq", "rng_state")}
                rng_state = str(data["rng_state"]) if "rng_state" in data.files else ""
                yield start, str(data["stream"]), int(data["seq"]), batch, rng_state

    def compact(self, upto: int) -> int:
        """Delete the chunks wholly below global index `upto` (they are in a checkpoint); returns how many."""
        removed = 0
        for start, m, path in self._files():
            if start + m <= upto:
                path.unlink()
                removed += 1
        for stale in self.directory.glob("*.tmp"):
            stale.unlink()
        return removed


class DurableReplayBuffer(ReplayBuffer):
    def __init__(self, *args, run_dir: str | Path | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.streams: dict[str, int] = {}  # highest chunk seq accepted per sender
        self.log = ReplayLog(Path(run_dir) / "replay_log") if run_dir is not None else None
        self.recovered_from_log = 0
        if run_dir is not None:
            self._recover(Path(run_dir))

    def _recover(self, run_dir: Path) -> None:
        from umpo_dist.ops.checkpoint import CheckpointError, resolve_checkpoint, verify_checkpoint

        try:
            path = resolve_checkpoint(run_dir)
        except CheckpointError:
            path = None  # a new run: nothing to restore yet
        if path is not None:
            verify_checkpoint(path)
            self.load_state(read_replay_state(path / "replay.npz"))
        for start, stream, seq, batch, rng_state in self.log.records(after=self.total_inserted):
            if start != self.total_inserted:
                raise RuntimeError(
                    f"replay log in '{self.log.directory}' has a gap: next chunk starts at {start}, "
                    f"the replay holds {self.total_inserted}"
                )
            self.insert(batch)
            self.streams[stream] = max(seq, self.streams.get(stream, -1))
            self.recovered_from_log += len(batch["reward"])
            if rng_state:  # continue the draws where the logged ones ended, never repeat them
                self.rng.bit_generator.state = json.loads(rng_state)

    def insert_chunk(self, batch: dict[str, np.ndarray], stream: str, seq: int) -> int:
        """Make the chunk durable, store it, and return the acknowledged total."""
        if seq <= self.streams.get(stream, -1):
            return self.total_inserted  # a resend of a chunk already accepted
        full = self.with_insert_draws(batch)
        if self.log is not None:
            self.log.append(self.total_inserted, stream, seq, full, json.dumps(self.rng.bit_generator.state))
        self.insert(full)
        self.streams[stream] = seq
        return self.total_inserted

    def compact(self, upto: int) -> int:
        return self.log.compact(upto) if self.log is not None else 0

    def state(self) -> dict[str, np.ndarray]:
        state = super().state()
        state["streams"] = np.array(json.dumps(self.streams))
        return state

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        super().load_state(state)
        self.streams = json.loads(str(state["streams"])) if "streams" in state else {}
