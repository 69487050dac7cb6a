"""The replay's append-only log: chunk records in segment files, made durable by group commit.

A record is one chunk as the replay stored it (its transitions, bootstrap weights and
held-out flags), its `(stream, seq)` id, the global index of its first transition and
the sampler's RNG state after its draws. `append` hands the record to the operating
system with one `write` before it returns, so once a chunk is acknowledged the kill of
any process — the replay's included — cannot lose it. `fsync` is grouped: at most every
`sync_every_ms` (a background thread syncs what was written since the last one) and at
every `sync()` (each compaction, i.e. each checkpoint); a crash of the whole node (power,
kernel) may lose the chunks acknowledged in the last `sync_every_ms` before it and
nothing older. `sync_every_ms = 0` syncs every record before `append` returns.

Segments are named by the global index of their first record; `rotate` starts a new
one, so `compact(upto)` deletes whole files. A record cut short by a crash (only ever
the last one written) fails its length or checksum and is cut off when the log is read.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import threading
import time
import weakref
import zlib
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np

from umpo_dist.files import fsync_dir

log = logging.getLogger(__name__)

MAGIC = b"UMPL"
HEAD = struct.Struct("<4sIQI")  # magic, header bytes, payload bytes, crc32 of header + payload


class Record(NamedTuple):
    start: int  # global index of the chunk's first transition
    stream: str
    seq: int
    batch: dict[str, np.ndarray]
    rng_state: str


def encode(start: int, stream: str, seq: int, batch: dict[str, np.ndarray], rng_state: str) -> bytes:
    arrays = {name: np.ascontiguousarray(value) for name, value in batch.items()}
    header = json.dumps({"start": start, "stream": stream, "seq": seq, "rng_state": rng_state,
                         "arrays": [[name, a.dtype.str, list(a.shape)] for name, a in arrays.items()]}).encode()
    payload = b"".join(a.tobytes() for a in arrays.values())
    crc = zlib.crc32(payload, zlib.crc32(header))
    return HEAD.pack(MAGIC, len(header), len(payload), crc) + header + payload


def decode(blob: bytes, offset: int) -> tuple[Record, int] | None:
    """The record at `offset` and the offset after it, or None if it is cut short or damaged."""
    if offset + HEAD.size > len(blob):
        return None
    magic, header_len, payload_len, crc = HEAD.unpack_from(blob, offset)
    body = offset + HEAD.size
    end = body + header_len + payload_len
    if magic != MAGIC or end > len(blob):
        return None
    header_bytes, payload = blob[body:body + header_len], blob[body + header_len:end]
    if zlib.crc32(payload, zlib.crc32(header_bytes)) != crc:
        return None
    header = json.loads(header_bytes)
    batch, at = {}, 0
    for name, dtype, shape in header["arrays"]:
        dt = np.dtype(dtype)
        n = dt.itemsize * int(np.prod(shape, dtype=np.int64))
        batch[name] = np.frombuffer(payload, dt, count=n // dt.itemsize, offset=at).reshape(shape).copy()
        at += n
    return Record(header["start"], header["stream"], header["seq"], batch, header["rng_state"]), end


class ReplayLog:
    def __init__(self, directory: str | Path, sync_every_ms: float = 50.0):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.sync_every_s = sync_every_ms / 1000.0
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._unsynced = 0  # records written since the last fsync
        self.syncs = 0  # fsyncs that wrote something (group commits)
        self._flusher: threading.Thread | None = None

    # -- writing ---------------------------------------------------------------------------------------
    def append(self, start: int, stream: str, seq: int, batch: dict[str, np.ndarray], rng_state: str = "") -> None:
        record = encode(start, stream, seq, batch, rng_state)
        with self._lock:
            if self._fd is None:
                self._open(start)
            os.write(self._fd, record)
            self._unsynced += 1
            if self.sync_every_s <= 0:
                self._sync_locked()
        if self.sync_every_s > 0 and self._flusher is None:
            self._flusher = threading.Thread(target=_flush_periodically, args=(weakref.ref(self), self.sync_every_s),
                                             name="replay-log-sync", daemon=True)
            self._flusher.start()

    def _open(self, start: int) -> None:
        self._fd = os.open(self.directory / f"segment_{start:012d}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        fsync_dir(self.directory)

    def sync(self) -> None:
        """Make every record written so far durable (one fsync for all of them)."""
        with self._lock:
            self._sync_locked()

    def _sync_locked(self) -> None:
        if self._fd is not None and self._unsynced:
            os.fsync(self._fd)
            self._unsynced = 0
            self.syncs += 1

    def rotate(self) -> None:
        """Sync and close the current segment; the next record starts a new one."""
        with self._lock:
            self._sync_locked()
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __del__(self):
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)

    # -- reading ---------------------------------------------------------------------------------------
    def segments(self) -> list[tuple[int, Path]]:
        return sorted((int(p.stem.split("_")[1]), p) for p in self.directory.glob("segment_*.log"))

    def records(self, after: int = 0) -> Iterator[Record]:
        """Every record of a chunk that ends after global index `after`, oldest first.

        A damaged tail of the newest segment (a write cut short by a crash) is cut off;
        damage anywhere else is an error naming the file.
        """
        segments = self.segments()
        for k, (_, path) in enumerate(segments):
            blob, offset = path.read_bytes(), 0
            while offset < len(blob):
                decoded = decode(blob, offset)
                if decoded is None:
                    if k != len(segments) - 1:
                        raise RuntimeError(f"replay log segment '{path}' is damaged at byte {offset} of {len(blob)} "
                                           "and is not the newest one")
                    log.warning("replay log '%s': cutting off %d bytes of a record cut short at byte %d",
                                path, len(blob) - offset, offset)
                    os.truncate(path, offset)
                    break
                record, offset = decoded
                if record.start + len(record.batch["reward"]) > after:
                    yield record

    def compact(self, upto: int, total: int) -> int:
        """Sync, rotate, and delete the segments wholly below global index `upto`; returns how many.

        `total` is where the log ends now (the next segment's first index), so the segment
        just closed is deleted too when `upto` covers it.
        """
        self.rotate()
        starts = self.segments()
        ends = [s for s, _ in starts[1:]] + [total]
        removed = 0
        for (_, path), end in zip(starts, ends):
            if end <= upto:
                path.unlink()
                removed += 1
        if removed:
            fsync_dir(self.directory)
        return removed


def _flush_periodically(ref: weakref.ref, interval_s: float) -> None:
    """Group commit: sync whatever was written since the last sync, every `interval_s`, while the log lives."""
    while True:
        time.sleep(interval_s)
        replay_log = ref()
        if replay_log is None:
            return
        try:
            replay_log.sync()
        except OSError as exc:  # a closed or deleted segment: the next record opens a new one
            log.debug("replay log sync skipped: %s", exc)
        del replay_log
