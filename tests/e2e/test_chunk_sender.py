"""ChunkSender against a real ReplayActor killed mid-stream: exactly once, in order, with inserts in flight."""

from __future__ import annotations

import time

import numpy as np
import pytest
import ray

from umpo_dist.data.durable_replay import ChunkOutOfOrder
from umpo_dist.runtime.ray.chunk_sender import ChunkSender
from umpo_dist.runtime.ray.replay_actor import ReplayActor
from umpo_dist.runtime.ray.retry import ACTOR_ERRORS

OBS, ACT, E = 3, 2, 4


def chunk(tag: int, m: int) -> dict[str, np.ndarray]:
    """`m` transitions whose rewards name the chunk and the position in it."""
    i = np.arange(m, dtype=np.float32)
    return {"obs": np.stack([i, i, i], 1) + tag, "action": np.stack([i, -i], 1), "reward": tag * 1000.0 + i,
            "next_obs": np.stack([i, i, i], 1) + tag + 1, "terminated": np.zeros(m, np.float32),
            "truncated": np.zeros(m, np.float32)}


def rewards(replay) -> np.ndarray:
    return ray.get(replay.state.remote())["reward"]


def make_replay(run_dir):
    return ReplayActor.options(max_task_retries=0).remote(OBS, ACT, 10_000, E, "linear", 0.1, 0, run_dir=run_dir,
                                                          sync_every_ms=50.0)


@pytest.mark.parametrize("window", [4])
def test_pipelined_inserts_survive_a_replay_kill_exactly_once(local_ray, tmp_path, window):
    replay = make_replay(str(tmp_path))
    sender = ChunkSender(replay, "worker-a", window=window)
    sizes = [5 + (k % 7) for k in range(40)]
    for k, m in enumerate(sizes):
        sender.send(chunk(k, m))
        if k in (12, 27):  # killed with chunks in flight; Ray restarts it, it rebuilds from its log
            ray.kill(replay, no_restart=False)
        assert sender.calls_in_flight <= window and sender.queued < window
        assert sender.acknowledged + sender.in_flight == sum(sizes[:k + 1])
    sender.flush()
    assert sender.acknowledged == sum(sizes) and sender.total == sum(sizes)
    expected = np.concatenate([chunk(k, m)["reward"] for k, m in enumerate(sizes)])
    np.testing.assert_array_equal(rewards(replay), expected)  # every chunk once, in the order sent
    assert ray.get(replay.stats.remote())["total_inserted"] == sum(sizes)


def test_chunks_queued_behind_a_full_window_go_together_in_one_call(local_ray, tmp_path):
    replay = make_replay(str(tmp_path))
    sender = ChunkSender(replay, "w", window=2)
    for k in range(10):
        sender.send(chunk(k, 3))
    sender.flush()
    # chunks 0 and 1 fill the window; from then on each call carries the two chunks queued behind it
    assert sender.calls == 2 + 4 and sender.acknowledged == 30 and sender.total == 30
    np.testing.assert_array_equal(rewards(replay), np.concatenate([chunk(k, 3)["reward"] for k in range(10)]))


def test_out_of_order_chunk_is_refused_through_ray_with_the_seq_to_resend(local_ray, tmp_path):
    replay = make_replay(str(tmp_path))
    assert ray.get(replay.insert_chunk.remote(chunk(0, 3), "s", 0)) == 3
    with pytest.raises(ChunkOutOfOrder) as err:
        ray.get(replay.insert_chunk.remote(chunk(2, 3), "s", 2))
    assert getattr(err.value, "cause", err.value).expected == 1
    # A sender that lost chunk 1 in flight resends from it.
    sender = ChunkSender(replay, "s", window=4)
    sender.next_seq = 2
    # Its attempt at chunk 1 was lost; the attempt at 2 was refused (and so answers for 1's place).
    sender.pending[1] = [chunk(1, 3), replay.insert_chunk.remote(chunk(2, 3), "s", 2), 1]
    sender.send(chunk(2, 3))
    sender.flush()
    np.testing.assert_array_equal(rewards(replay), np.concatenate([chunk(k, 3)["reward"] for k in range(3)]))


def test_a_replay_without_run_dir_restarts_empty_and_the_stream_goes_on(local_ray):
    replay = make_replay(None)
    sender = ChunkSender(replay, "w", window=2)
    for k in range(5):
        sender.send(chunk(k, 4))
    sender.flush()
    ray.kill(replay, no_restart=False)
    # Wait for the restarted, empty replay: a chunk sent at once may still reach the dying one and be
    # acknowledged by it, and then be lost with it (that is what no run directory means).
    for _ in range(1200):
        try:
            if ray.get(replay.stats.remote())["total_inserted"] == 0:
                break
        except ACTOR_ERRORS:
            pass
        time.sleep(0.1)
    else:
        pytest.fail("the killed replay did not come back within 2 minutes")
    for k in range(5, 8):
        sender.send(chunk(k, 4))
    sender.flush()
    # Nothing durable: what was acknowledged before the kill is gone, what came after is there once.
    np.testing.assert_array_equal(rewards(replay), np.concatenate([chunk(k, 4)["reward"] for k in range(5, 8)]))
    assert sender.acknowledged == 32
    assert sender.resends >= 1 and sender.next_seq == 3  # refused at seq 5, the stream went on from 0
