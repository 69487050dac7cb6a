"""DurableReplayBuffer: every acknowledged chunk survives a crash, once, with the same draws."""

from __future__ import annotations

import pickle
import re
import time

import numpy as np
import pytest
import torch

from umpo_dist.ops.checkpoint import save_checkpoint
from umpo_dist.data import durable_replay
from umpo_dist.data.durable_replay import ChunkOutOfOrder, DurableReplayBuffer
from umpo_dist.data.replay import FIELDS
from umpo_dist.data.replay_log import ReplayLog, decode

OBS_DIM, ACT_DIM, E = 3, 2, 4
STORED = FIELDS + ("global_index", "bootstrap", "holdout")

torch.set_num_threads(1)


def make_chunk(tag: float, m: int) -> dict[str, np.ndarray]:
    """`m` transitions whose contents identify the chunk (`tag`) and the position in it."""
    i = np.arange(m, dtype=np.float32)
    return {
        "obs": np.stack([tag + i, tag - i, i * 0.5], 1),
        "action": np.stack([-i, i + tag], 1),
        "reward": tag * 100.0 + i,
        "next_obs": np.stack([tag + i + 1, tag - i - 1, i], 1),
        "terminated": (i % 5 == 4).astype(np.float32),
        "truncated": (i % 7 == 6).astype(np.float32),
    }


def make_buffer(run_dir, capacity: int = 1000, seed: int = 0, sync_every_ms: float = 50.0) -> DurableReplayBuffer:
    return DurableReplayBuffer(OBS_DIM, ACT_DIM, capacity, E, holdout_fraction=0.3, seed=seed, run_dir=run_dir,
                               sync_every_ms=sync_every_ms)


def checkpoint(buf: DurableReplayBuffer, run_dir, env_steps: int | None = None):
    """What the driver does: a checkpoint of the buffer's state, then compact the log below it."""
    state = buf.state()
    total = int(state["total_inserted"])
    save_checkpoint(run_dir, total if env_steps is None else env_steps, state, {"updates": 0}, {"updates": 0},
                    {"env_steps": total}, {"env_id": "test"})
    return buf.compact(total)


def contents(buf: DurableReplayBuffer) -> dict[str, np.ndarray]:
    state = buf.state()
    return {k: state[k] for k in STORED + ("total_inserted",)}


def assert_same_contents(a: DurableReplayBuffer, b: DurableReplayBuffer) -> None:
    ca, cb = contents(a), contents(b)
    for name in ca:
        np.testing.assert_array_equal(ca[name], cb[name], err_msg=name)
        assert ca[name].dtype == cb[name].dtype, name
    assert a.total_inserted == b.total_inserted
    assert len(a) == len(b)
    assert a.streams == b.streams


def log_files(run_dir) -> list[str]:
    return sorted(p.name for p in (run_dir / "replay_log").glob("segment_*.log"))


def logged_chunks(run_dir) -> list[tuple[int, int]]:
    """(first global index, length) of every chunk record in the log."""
    return [(r.start, len(r.batch["reward"])) for r in ReplayLog(run_dir / "replay_log").records()]


# -- crash and rebuild ---------------------------------------------------------------------------------
def test_rebuild_after_crash_has_identical_contents(tmp_path):
    buf = make_buffer(tmp_path)
    acked = 0
    for seq in range(4):
        acked = buf.insert_chunk(make_chunk(1 + seq, 7), "worker-0", seq)
        acked = buf.insert_chunk(make_chunk(50 + seq, 5), "worker-1", seq)
    assert acked == buf.total_inserted == 4 * (7 + 5)
    assert buf.streams == {"worker-0": 3, "worker-1": 3}
    assert len(logged_chunks(tmp_path)) == 8 and log_files(tmp_path) == ["segment_000000000000.log"]
    # Different seed: whatever the rebuilt buffer would draw, it must store the logged draws.
    rebuilt = make_buffer(tmp_path, seed=123)
    assert rebuilt.total_inserted == acked
    assert rebuilt.recovered_from_log == acked
    assert_same_contents(buf, rebuilt)
    assert rebuilt.holdout.any() and not rebuilt.holdout[:acked].all()  # the flags are not all alike
    np.testing.assert_array_equal(rebuilt.bootstrap[:acked], buf.bootstrap[:acked])
    # It goes on where the crashed one stopped.
    assert rebuilt.insert_chunk(make_chunk(9, 3), "worker-0", 4) == acked + 3


def test_resent_chunk_is_stored_once(tmp_path):
    buf = make_buffer(tmp_path)
    first = buf.insert_chunk(make_chunk(1, 6), "w", 0)
    second = buf.insert_chunk(make_chunk(2, 6), "w", 1)
    assert (first, second) == (6, 12)
    before = contents(buf)
    files = logged_chunks(tmp_path)
    # The acknowledgement was lost; the sender resends chunk 1 (and an older one).
    assert buf.insert_chunk(make_chunk(2, 6), "w", 1) == 12
    assert buf.insert_chunk(make_chunk(1, 6), "w", 0) == 12
    assert logged_chunks(tmp_path) == files
    for name, value in contents(buf).items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)
    # Another stream's seq numbers are its own.
    assert buf.insert_chunk(make_chunk(3, 6), "other", 0) == 18
    # After a rebuild the resend is still recognised.
    rebuilt = make_buffer(tmp_path)
    assert rebuilt.insert_chunk(make_chunk(2, 6), "w", 1) == 18
    assert rebuilt.insert_chunk(make_chunk(3, 6), "other", 0) == 18
    assert rebuilt.total_inserted == 18


def test_chunk_logged_but_not_acknowledged_is_kept_once(tmp_path, monkeypatch):
    """A crash after the log write and before the acknowledgement: the resend is a duplicate."""
    buf = make_buffer(tmp_path)
    buf.insert_chunk(make_chunk(1, 4), "w", 0)

    def crash(batch):
        raise SystemExit("killed between the log write and the acknowledgement")

    monkeypatch.setattr(buf, "insert", crash)
    with pytest.raises(SystemExit):
        buf.insert_chunk(make_chunk(2, 4), "w", 1)
    rebuilt = make_buffer(tmp_path)
    assert rebuilt.total_inserted == 8 and rebuilt.streams == {"w": 1}
    assert rebuilt.insert_chunk(make_chunk(2, 4), "w", 1) == 8  # the sender's resend
    np.testing.assert_array_equal(rebuilt.reward[4:8], make_chunk(2, 4)["reward"])


@pytest.mark.parametrize("cut", [3, 20, -1])
def test_record_cut_short_by_a_crash_is_cut_off(tmp_path, cut):
    """A write cut short (the node died in it) was never acknowledged: the rebuild drops it and goes on."""
    buf = make_buffer(tmp_path)
    buf.insert_chunk(make_chunk(1, 4), "w", 0)
    buf.insert_chunk(make_chunk(2, 4), "w", 1)
    segment = tmp_path / "replay_log" / "segment_000000000000.log"
    whole = segment.read_bytes()
    second = decode(whole, 0)[1]  # where the second record begins
    segment.write_bytes(whole[:second + cut] if cut > 0 else whole[:-1])
    rebuilt = make_buffer(tmp_path)
    assert rebuilt.total_inserted == 4 and rebuilt.streams == {"w": 0}
    assert segment.stat().st_size == second  # the damaged tail is gone from the file
    assert rebuilt.insert_chunk(make_chunk(2, 4), "w", 1) == 8  # the sender's resend
    assert_same_contents(buf, rebuilt)
    assert checkpoint(rebuilt, tmp_path) == 2 and log_files(tmp_path) == []


def test_chunks_are_accepted_only_in_order(tmp_path):
    buf = make_buffer(tmp_path)
    assert buf.insert_chunk(make_chunk(1, 4), "w", 0) == 4
    with pytest.raises(ChunkOutOfOrder, match="chunk 2 of stream 'w' arrived out of order: the replay expects chunk 1") as err:
        buf.insert_chunk(make_chunk(3, 4), "w", 2)
    assert (err.value.stream, err.value.seq, err.value.expected) == ("w", 2, 1)
    restored = pickle.loads(pickle.dumps(err.value))  # how it crosses from a Ray actor
    assert (restored.stream, restored.seq, restored.expected, str(restored)) == ("w", 2, 1, str(err.value))
    with pytest.raises(ChunkOutOfOrder):
        buf.insert_chunk(make_chunk(1, 4), "new", 1)  # a stream starts at 0
    assert buf.total_inserted == 4 and logged_chunks(tmp_path) == [(0, 4)]
    assert buf.insert_chunk(make_chunk(2, 4), "w", 1) == 8
    assert buf.insert_chunk(make_chunk(3, 4), "w", 2) == 12


def test_chunks_sent_together_are_one_record_and_a_partial_resend_stores_only_the_new_ones(tmp_path):
    buf = make_buffer(tmp_path)
    assert buf.insert_chunks([make_chunk(k, 3 + k) for k in range(3)], "w", 0) == 3 + 4 + 5
    assert buf.streams == {"w": 2} and logged_chunks(tmp_path) == [(0, 12)]  # one record for the group
    np.testing.assert_array_equal(buf.reward[:12], np.concatenate([make_chunk(k, 3 + k)["reward"] for k in range(3)]))
    # The answer was lost; the sender regroups: chunks 1 and 2 again with a new chunk 3.
    assert buf.insert_chunks([make_chunk(k, 3 + k) for k in (1, 2, 3)], "w", 1) == 12 + 6
    assert buf.streams == {"w": 3} and logged_chunks(tmp_path) == [(0, 12), (12, 6)]
    np.testing.assert_array_equal(buf.reward[12:18], make_chunk(3, 6)["reward"])
    assert buf.insert_chunks([make_chunk(1, 4), make_chunk(2, 5)], "w", 1) == 18  # all old: stored nothing
    with pytest.raises(ChunkOutOfOrder) as err:
        buf.insert_chunks([make_chunk(5, 2), make_chunk(6, 2)], "w", 5)
    assert err.value.expected == 4 and buf.total_inserted == 18
    # A rebuild from the log knows the stream's last seq of each group.
    rebuilt = make_buffer(tmp_path, seed=7)
    assert_same_contents(buf, rebuilt)
    assert rebuilt.insert_chunks([make_chunk(3, 6), make_chunk(4, 1)], "w", 3) == 19


@pytest.mark.parametrize("sync_every_ms", [0.0, 60_000.0])
def test_group_commit(tmp_path, sync_every_ms):
    """Every record is written before its acknowledgement; fsyncs are one per record only when asked."""
    buf = make_buffer(tmp_path, sync_every_ms=sync_every_ms)
    for seq in range(6):
        buf.insert_chunk(make_chunk(seq, 3), "w", seq)
        assert len(logged_chunks(tmp_path)) == seq + 1  # readable by a new process before the next chunk
    assert buf.log.syncs == (6 if sync_every_ms == 0 else 0)
    checkpoint(buf, tmp_path)
    assert buf.log.syncs == (6 if sync_every_ms == 0 else 1)  # a checkpoint syncs what is pending, once


def test_background_sync_bounds_what_a_node_crash_can_lose(tmp_path):
    buf = make_buffer(tmp_path, sync_every_ms=20.0)
    for seq in range(3):
        buf.insert_chunk(make_chunk(seq, 3), "w", seq)
    for _ in range(500):  # the flusher syncs within about 20 ms; allow 5 s on a loaded machine
        if buf.log.syncs:
            break
        time.sleep(0.01)
    assert buf.log.syncs >= 1 and buf.log._unsynced == 0


def test_log_stays_bounded_without_checkpoints(tmp_path):
    """`checkpoint_every: 0`: the replay snapshots itself, so the log never holds much more than `capacity`."""
    buf = make_buffer(tmp_path, capacity=20)
    for seq in range(30):
        buf.insert_chunk(make_chunk(seq, 7), "w", seq)
        assert sum(m for _, m in logged_chunks(tmp_path)) <= 20 + 7
    assert buf.snapshots >= 5 and (tmp_path / "replay_log" / "snapshot.npz").is_file()
    rebuilt = make_buffer(tmp_path, capacity=20, seed=9)
    assert rebuilt.total_inserted == 210 and rebuilt.recovered_from_log < 28
    assert_same_contents(buf, rebuilt)
    assert rebuilt.insert_chunk(make_chunk(3, 7), "w", 3) == 210  # old resends are still recognised
    # A checkpoint that covers the snapshot replaces it.
    checkpoint(rebuilt, tmp_path)
    assert not (tmp_path / "replay_log" / "snapshot.npz").exists()
    assert_same_contents(rebuilt, make_buffer(tmp_path, capacity=20))


# -- checkpoint and compaction -------------------------------------------------------------------------
def test_checkpoint_compacts_the_log_and_rebuild_uses_both(tmp_path):
    buf = make_buffer(tmp_path)
    for seq in range(3):
        buf.insert_chunk(make_chunk(seq, 10), "a", seq)
        buf.insert_chunk(make_chunk(20 + seq, 4), "b", seq)
    assert buf.total_inserted == 42 and len(logged_chunks(tmp_path)) == 6
    assert checkpoint(buf, tmp_path) == 1
    assert log_files(tmp_path) == []
    for seq in range(3, 5):
        buf.insert_chunk(make_chunk(seq, 10), "a", seq)
    buf.insert_chunk(make_chunk(30, 3), "b", 3)
    assert buf.total_inserted == 65
    assert log_files(tmp_path) == ["segment_000000000042.log"]
    assert logged_chunks(tmp_path) == [(42, 10), (52, 10), (62, 3)]
    rebuilt = make_buffer(tmp_path, seed=7)
    assert rebuilt.total_inserted == 65
    assert rebuilt.recovered_from_log == 23
    assert_same_contents(buf, rebuilt)
    assert rebuilt.streams == {"a": 4, "b": 3}
    # Resends of chunks that are only in the checkpoint are recognised too.
    assert rebuilt.insert_chunk(make_chunk(0, 10), "a", 0) == 65
    assert rebuilt.insert_chunk(make_chunk(22, 4), "b", 2) == 65


def test_checkpoint_without_compaction_does_not_double_count(tmp_path):
    """Chunks both in the checkpoint and in the log (compact not reached before a crash) count once."""
    buf = make_buffer(tmp_path)
    for seq in range(3):
        buf.insert_chunk(make_chunk(seq, 5), "a", seq)
    state = buf.state()
    save_checkpoint(tmp_path, 15, state, {}, {}, {}, {})  # crash before compact
    buf.insert_chunk(make_chunk(9, 5), "a", 3)
    rebuilt = make_buffer(tmp_path)
    assert rebuilt.total_inserted == 20 and rebuilt.recovered_from_log == 5
    assert_same_contents(buf, rebuilt)


def test_randomized_inserts_checkpoints_and_crashes(tmp_path):
    rng = np.random.default_rng(20240607)
    buf = make_buffer(tmp_path, capacity=64)
    acked = 0
    seqs = {"w0": -1, "w1": -1, "w2": -1}
    crashes = checkpoints = resends = 0
    for step in range(160):
        op = rng.random()
        if op < 0.70:
            stream = f"w{rng.integers(3)}"
            if seqs[stream] >= 0 and rng.random() < 0.2:  # resend an already acknowledged chunk
                seq = int(rng.integers(seqs[stream] + 1))
                resends += 1
                assert buf.insert_chunk(make_chunk(step, 3), stream, seq) == acked
                continue
            seqs[stream] += 1
            m = int(rng.integers(1, 12))
            total = buf.insert_chunk(make_chunk(step, m), stream, seqs[stream])
            assert total == acked + m
            acked = total
        elif op < 0.85:
            checkpoints += 1
            checkpoint(buf, tmp_path)
        else:
            crashes += 1
            before = contents(buf)
            streams = dict(buf.streams)
            del buf
            buf = make_buffer(tmp_path, capacity=64, seed=int(rng.integers(1000)))
            assert buf.total_inserted == acked
            assert buf.streams == streams == {k: v for k, v in seqs.items() if v >= 0}
            for name, value in contents(buf).items():
                np.testing.assert_array_equal(value, before[name], err_msg=f"{name} after crash {crashes}")
    assert crashes >= 5 and checkpoints >= 5 and resends >= 5 and acked > 64  # the sequence exercised it all
    assert make_buffer(tmp_path, capacity=64).total_inserted == acked


@pytest.mark.parametrize("with_checkpoint", [False, True])
def test_draws_after_rebuild_do_not_repeat_logged_draws(tmp_path, with_checkpoint):
    buf = make_buffer(tmp_path)
    seq = 0
    if with_checkpoint:
        buf.insert_chunk(make_chunk(0, 5), "w", 0)
        checkpoint(buf, tmp_path)
        seq = 1
    buf.insert_chunk(make_chunk(1, 40), "w", seq)
    logged = slice(buf.total_inserted - 40, buf.total_inserted)
    rebuilt = make_buffer(tmp_path)
    rebuilt.insert_chunk(make_chunk(2, 40), "w", seq + 1)
    new = slice(rebuilt.total_inserted - 40, rebuilt.total_inserted)
    # 40 x 4 Poisson(1) draws: equal by chance with probability far below 1e-20.
    assert not np.array_equal(rebuilt.bootstrap[new], rebuilt.bootstrap[logged])


# -- damage ---------------------------------------------------------------------------------------------
def test_damage_before_the_newest_segment_is_an_error_naming_the_file(tmp_path):
    buf = make_buffer(tmp_path)
    for seq in range(2):
        buf.insert_chunk(make_chunk(seq, 5), "w", seq)
        buf.log.rotate()
    first = tmp_path / "replay_log" / "segment_000000000000.log"
    blob = bytearray(first.read_bytes())
    blob[-1] ^= 0xFF  # a flipped bit in a segment that was complete
    first.write_bytes(bytes(blob))
    with pytest.raises(RuntimeError, match=re.escape(f"replay log segment '{first}' is damaged at byte 0")):
        make_buffer(tmp_path)


def test_gap_in_the_log_is_an_error_naming_the_directory(tmp_path):
    buf = make_buffer(tmp_path)
    for seq in range(4):
        buf.insert_chunk(make_chunk(seq, 5), "w", seq)
        buf.log.rotate()  # one segment per chunk
    (tmp_path / "replay_log" / "segment_000000000010.log").unlink()
    log_dir = tmp_path / "replay_log"
    expected = f"replay log in '{log_dir}' has a gap: next chunk starts at 15, the replay holds 10"
    with pytest.raises(RuntimeError, match=re.escape(expected)):
        make_buffer(tmp_path)


def test_gap_after_a_checkpoint_is_an_error(tmp_path):
    buf = make_buffer(tmp_path)
    buf.insert_chunk(make_chunk(0, 5), "w", 0)
    checkpoint(buf, tmp_path)
    for seq in range(1, 4):
        buf.insert_chunk(make_chunk(seq, 5), "w", seq)
        buf.log.rotate()
    (tmp_path / "replay_log" / "segment_000000000005.log").unlink()
    with pytest.raises(RuntimeError, match=re.escape(f"replay log in '{tmp_path / 'replay_log'}' has a gap")):
        make_buffer(tmp_path)


# -- the ring buffer -----------------------------------------------------------------------------------
@pytest.mark.parametrize("with_checkpoint", [False, True])
def test_wrapped_ring_buffer_survives_rebuild(tmp_path, with_checkpoint):
    buf = make_buffer(tmp_path, capacity=10)
    for seq in range(5):
        buf.insert_chunk(make_chunk(seq, 7), "w", seq)
        if with_checkpoint and seq == 2:
            checkpoint(buf, tmp_path)
    assert buf.total_inserted == 35 and len(buf) == 10
    rebuilt = make_buffer(tmp_path, capacity=10)
    assert_same_contents(buf, rebuilt)
    np.testing.assert_array_equal(np.sort(rebuilt.global_index), np.arange(25, 35))
    # The window holds the newest ten transitions: the last 7 of chunk 4, the last 3 of chunk 3.
    expect = np.concatenate([make_chunk(3, 7)["reward"][-3:], make_chunk(4, 7)["reward"]])
    np.testing.assert_array_equal(rebuilt.state()["reward"], expect)


def test_chunk_larger_than_capacity(tmp_path):
    buf = make_buffer(tmp_path, capacity=4)
    buf.insert_chunk(make_chunk(1, 9), "w", 0)
    buf.insert_chunk(make_chunk(2, 2), "w", 1)
    rebuilt = make_buffer(tmp_path, capacity=4)
    assert rebuilt.total_inserted == 11
    assert_same_contents(buf, rebuilt)


def test_without_run_dir_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    buf = DurableReplayBuffer(OBS_DIM, ACT_DIM, 10, E)
    assert buf.insert_chunk(make_chunk(1, 3), "w", 0) == 3
    assert buf.insert_chunk(make_chunk(1, 3), "w", 0) == 3
    assert buf.compact(3) == 0
    assert list(tmp_path.iterdir()) == []


def test_only_the_most_recently_active_streams_are_remembered(tmp_path, monkeypatch):
    monkeypatch.setattr(durable_replay, "MAX_STREAMS", 3)
    buf = make_buffer(tmp_path)
    for name in ("a", "b", "c"):
        buf.insert_chunk(make_chunk(1, 2), name, 0)
    buf.insert_chunk(make_chunk(2, 2), "a", 1)  # "a" is active again: "b" is now the oldest
    buf.insert_chunk(make_chunk(3, 2), "d", 0)
    assert list(buf.streams) == ["c", "a", "d"] and buf.streams["a"] == 1
    assert make_buffer(tmp_path).streams == buf.streams  # the same after a rebuild from the log
