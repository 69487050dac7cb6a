"""Replay actor throughput: inserts and linear-weighted samples through Ray calls, against in-process calls.

The replay actor (design §2) is `DurableReplayBuffer` wrapped in `ray.remote`; every
insert from an env worker and every batch for a learner is one actor call. This
measures, at HalfCheetah-v5 sizes (obs 17, action 6, E = 7 bootstrap weights):

- inserts: chunks of `--chunk` transitions through `insert_chunk` (what env workers
  call: bootstrap draws, in-order exactly-once acceptance by `(stream, seq)`, the
  durable log when there is a run directory), one call at a time and waiting for each
  acknowledgement as a worker does, and also through a `ChunkSender` keeping
  `--inflight` insert calls outstanding and sending the chunks queued meanwhile in one
  call (pipelined and grouped; timed until every chunk is acknowledged);
- samples: `sample(--batch)` model batches and `sample_start_states(128)` with linear
  weights from a window of `--fill` transitions, one call at a time, and `--many`
  model batches per call (`many`, as the learners fetch them: drawn at once);

each against the same operation on the plain class in this process: `ReplayBuffer`
for the bare cost and `DurableReplayBuffer` (same run directory setting) for the
like-for-like ratio. With a run directory (a temp dir) every accepted chunk is written
to the log (one write) before it is acknowledged, fsync'd by group commit every 50 ms. Measurements are
interleaved repetition by repetition so that machine noise hits all alike; medians.

    PYTHONPATH=. .venv/bin/python benchmarks/replay_actor.py [--reps 3] [--seconds 1.0] [--fill 100000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
import sys
import uuid
from pathlib import Path

import numpy as np


def make_chunks(n_chunks: int, m: int, obs_dim: int, action_dim: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_chunks):
        obs = rng.standard_normal((m, obs_dim)).astype(np.float32)
        out.append({
            "obs": obs,
            "action": rng.uniform(-1, 1, (m, action_dim)).astype(np.float32),
            "reward": rng.standard_normal(m).astype(np.float32),
            "next_obs": (obs + 0.1 * rng.standard_normal((m, obs_dim))).astype(np.float32),
            "terminated": np.zeros(m, np.float32),
            "truncated": (rng.random(m) < 0.001).astype(np.float32),
        })
    return out


def rate(step, seconds: float, per_call: int, finish=None) -> float:
    """Items per second of repeated `step()` calls (each handles `per_call` items) for about `seconds`;
    `finish()`, timed too, completes what the steps left outstanding (pipelined inserts: all acknowledged)."""
    calls = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        step()
        calls += 1
        if time.perf_counter() >= deadline:
            break
    if finish is not None:
        finish()
    return calls * per_call / (time.perf_counter() - start)


class InProc:
    """The operations on a buffer object in this process."""

    def __init__(self, buf, chunks, chunk_api: bool):
        self.buf, self.chunks, self.chunk_api = buf, chunks, chunk_api
        self.stream, self.seq, self.i = uuid.uuid4().hex, 0, 0

    def insert(self) -> None:
        batch = self.chunks[self.i % len(self.chunks)]
        self.i += 1
        if self.chunk_api:
            self.buf.insert_chunk(batch, self.stream, self.seq)
            self.seq += 1
        else:
            self.buf.insert(batch)

    def sample(self, n: int) -> None:
        self.buf.sample(n)

    def sample_many(self, n: int, k: int) -> None:
        self.buf.many(k, "sample", n)

    def start_states(self, n: int) -> None:
        self.buf.sample_start_states(n)


class Remote:
    """The same operations as Ray calls to a `ReplayActor`, waiting for each result."""

    def __init__(self, actor, chunks, inflight: int):
        import ray

        from umpo_dist.runtime.ray.chunk_sender import ChunkSender

        self.ray, self.actor, self.chunks, self.inflight = ray, actor, chunks, inflight
        # The chunk dict is passed by value, so each call serialises it as a worker's call does.
        self.i = 0
        self.sender = ChunkSender(actor, uuid.uuid4().hex, window=1)
        self.pipelined = ChunkSender(actor, uuid.uuid4().hex, window=inflight)

    def _batch(self) -> dict:
        self.i += 1
        return self.chunks[(self.i - 1) % len(self.chunks)]

    def insert(self) -> None:
        self.sender.send(self._batch())
        self.sender.flush()

    def insert_pipelined(self) -> None:
        """`inflight` chunks through a `ChunkSender` that keeps up to `inflight` insert calls outstanding and
        sends the chunks queued meanwhile together (timed until all are acknowledged: `flush`)."""
        for _ in range(self.inflight):
            self.pipelined.send(self._batch())

    def chunks_per_call(self) -> float:
        return self.pipelined.next_seq / max(1, self.pipelined.calls)

    def sample(self, n: int) -> None:
        self.ray.get(self.actor.sample.remote(n))

    def sample_many(self, n: int, k: int) -> None:
        self.ray.get(self.actor.many.remote(k, "sample", n))

    def start_states(self, n: int) -> None:
        self.ray.get(self.actor.sample_start_states.remote(n))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--obs-dim", type=int, default=17, help="HalfCheetah-v5 size")
    p.add_argument("--action-dim", type=int, default=6, help="HalfCheetah-v5 size")
    p.add_argument("--ensemble", type=int, default=7, help="bootstrap weights per transition (E)")
    p.add_argument("--chunk", type=int, default=100, help="transitions per insert call")
    p.add_argument("--batch", type=int, default=256, help="transitions per sample call")
    p.add_argument("--many", type=int, default=16, help="batches per call in the batched-sample variant")
    p.add_argument("--start-states", type=int, default=128, help="states per sample_start_states call")
    p.add_argument("--capacity", type=int, default=1_000_000, help="ring buffer capacity (config default)")
    p.add_argument("--fill", type=int, default=100_000, help="transitions in the window before sampling")
    p.add_argument("--inflight", type=int, default=8, help="outstanding inserts in the pipelined variant")
    p.add_argument("--seconds", type=float, default=1.0, help="timed seconds per measurement per repetition")
    p.add_argument("--reps", type=int, default=3, help="interleaved repetitions (median shown)")
    p.add_argument("--no-csv", action="store_true", help="print only (default: append rows to runtime.csv)")
    p.add_argument("--tmp", default=None, help="parent directory of the temp run directories (default: system temp)")
    args = p.parse_args()

    import ray

    from umpo_dist.runtime.ray.replay_actor import ReplayActor
    from umpo_dist.data.durable_replay import DurableReplayBuffer
    from umpo_dist.data.replay import ReplayBuffer

    load_start = os.getloadavg()
    tmp = tempfile.mkdtemp(prefix="umpo-bench-replay-", dir=args.tmp)
    o, a, e, cap = args.obs_dim, args.action_dim, args.ensemble, args.capacity
    chunks = make_chunks(64, args.chunk, o, a)
    fill = make_chunks(1, args.fill, o, a, seed=1)[0]
    try:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        t0 = time.perf_counter()
        actor_plain = ReplayActor.remote(o, a, cap, e, "linear", 0.1, 0, run_dir=None)
        actor_durable = ReplayActor.remote(o, a, cap, e, "linear", 0.1, 0, run_dir=os.path.join(tmp, "ray"))
        ray.get([actor_plain.stats.remote(), actor_durable.stats.remote()])
        actor_start_s = time.perf_counter() - t0
        variants = {
            "ReplayBuffer (in-process)": InProc(ReplayBuffer(o, a, cap, e, "linear", 0.1, 0), chunks, chunk_api=False),
            "DurableReplayBuffer, no run_dir (in-process)": InProc(DurableReplayBuffer(o, a, cap, e, "linear", 0.1, 0),
                                                                   chunks, chunk_api=True),
            "DurableReplayBuffer, run_dir (in-process)": InProc(
                DurableReplayBuffer(o, a, cap, e, "linear", 0.1, 0, run_dir=os.path.join(tmp, "inproc")), chunks,
                chunk_api=True),
            "ReplayActor, no run_dir (Ray)": Remote(actor_plain, chunks, args.inflight),
            "ReplayActor, run_dir (Ray)": Remote(actor_durable, chunks, args.inflight),
        }
        baseline_of = {
            "ReplayActor, no run_dir (Ray)": "DurableReplayBuffer, no run_dir (in-process)",
            "ReplayActor, run_dir (Ray)": "DurableReplayBuffer, run_dir (in-process)",
        }
        # Fill every buffer to the same window (plain insert: not logged, not timed).
        for name, v in variants.items():
            if isinstance(v, Remote):
                ray.get(v.actor.insert.remote(fill))
            else:
                v.buf.insert(fill)

        many = f"sample x{args.many}"
        ops = ["insert", "insert x{}".format(args.inflight), "sample", many, "start states"]
        per_call = {"insert": args.chunk, ops[1]: args.chunk * args.inflight, "sample": args.batch,
                    many: args.batch * args.many,
                    "start states": args.start_states}
        results: dict[tuple[str, str], list[float]] = {}
        wall = time.perf_counter()
        for _ in range(args.reps):
            for op in ops:
                for name, v in variants.items():
                    finish = None
                    if op == ops[1]:
                        if not isinstance(v, Remote):
                            continue
                        fn, finish = v.insert_pipelined, v.pipelined.flush
                    elif op == "insert":
                        fn = v.insert
                    elif op == many:
                        fn = lambda v=v: v.sample_many(args.batch, args.many)  # noqa: E731
                    elif op == "sample":
                        fn = lambda v=v: v.sample(args.batch)  # noqa: E731
                    else:
                        fn = lambda v=v: v.start_states(args.start_states)  # noqa: E731
                    fn()  # warm-up call
                    results.setdefault((op, name), []).append(rate(fn, args.seconds, per_call[op], finish))
        wall = time.perf_counter() - wall
        grouping = {name: v.chunks_per_call() for name, v in variants.items() if isinstance(v, Remote)}
        totals = {name: (ray.get(v.actor.stats.remote()) if isinstance(v, Remote) else v.buf.stats())["total_inserted"]
                  for name, v in variants.items()}
        log_files = len(os.listdir(os.path.join(tmp, "ray", "replay_log")))  # segments (and a snapshot)
        ray.shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    load_end = os.getloadavg()

    med = {k: statistics.median(v) for k, v in results.items()}
    print()
    print(f"replay: obs {o}, action {a}, E={e}, capacity {cap:,}, window {args.fill:,}+ transitions, linear sampling; "
          f"insert chunks of {args.chunk}, sample batches of {args.batch}, start states {args.start_states}")
    print(f"{args.reps} interleaved reps x {args.seconds:g} s per cell (median shown, [min-max]); {wall:.1f} s timed; "
          f"actors up in {actor_start_s:.1f} s; run_dir on {tmp} ({log_files} log files written by the Ray actor)")
    print(f"load average (1/5/15 min): start {load_start[0]:.2f}/{load_start[1]:.2f}/{load_start[2]:.2f}, "
          f"end {load_end[0]:.2f}/{load_end[1]:.2f}/{load_end[2]:.2f}")
    for op in ops:
        unit = {"insert": f"insert_chunk, 1 call at a time (chunks of {args.chunk})",
                ops[1]: f"insert_chunks, ChunkSender {args.inflight} calls in flight",
                "sample": f"sample({args.batch}), 1 call at a time",
                many: f"many({args.many}, 'sample', {args.batch}): {args.many} batches per call",
                "start states": f"sample_start_states({args.start_states}), 1 call at a time"}[op]
        print()
        header = f"{unit:<56}{'transitions/s':>22}{'calls/s':>10}{'Ray/in-proc':>13}"
        print(header)
        print("-" * len(header))
        for name in variants:
            if (op, name) not in med:
                continue
            vals = results[(op, name)]
            m = med[(op, name)]
            ratio = ""
            base = baseline_of.get(name)
            base_op = {ops[1]: "insert", many: "sample"}.get(op, op)
            if base is not None and (base_op, base) in med:
                ratio = f"{m / med[(base_op, base)]:.3f}x"
            cell = f"{m:>11,.0f} [{min(vals) / 1e3:.0f}k-{max(vals) / 1e3:.0f}k]"
            calls = m / (args.chunk if op == ops[1] else per_call[op])  # pipelined: single calls, not rounds
            print(f"  {name:<54}{cell:>22}{calls:>10,.0f}{ratio:>13}")
    print()
    print("Ray/in-proc: the Ray actor against DurableReplayBuffer in this process with the same run_dir setting "
          "(pipelined inserts against in-process inserts, one at a time)")
    nodir = "DurableReplayBuffer, no run_dir (in-process)"
    withdir = "DurableReplayBuffer, run_dir (in-process)"
    ray_nodir, ray_dir = "ReplayActor, no run_dir (Ray)", "ReplayActor, run_dir (Ray)"
    print(f"durable-log cost per chunk: in-process {1e6 * args.chunk * (1 / med[('insert', withdir)] - 1 / med[('insert', nodir)]):.0f} us, "
          f"through Ray {1e6 * args.chunk * (1 / med[('insert', ray_dir)] - 1 / med[('insert', ray_nodir)]):.0f} us; "
          f"Ray round trip per insert call {1e6 * args.chunk * (1 / med[('insert', ray_nodir)] - 1 / med[('insert', nodir)]):.0f} us, "
          f"per sample call {1e6 * args.batch * (1 / med[('sample', ray_nodir)] - 1 / med[('sample', nodir)]):.0f} us")
    print("pipelined inserts: chunks per call (queued chunks sent together) " +
          ", ".join(f"{k.split(' (')[0]} {v:.1f}" for k, v in grouping.items()))
    print("transitions held at the end: " + ", ".join(f"{k.split(' (')[0]} {v:,}" for k, v in totals.items()))
    if not args.no_csv:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from distributed_vs_inline import COLUMNS, RESULTS, ROOT, append_rows, git_commit

        bench = f"replay_actor (HalfCheetah-v5 sizes, chunks of {args.chunk}, 2 cores)"
        rows = [{"benchmark": bench, "figure": "durable insert transitions/s, Ray 1 in flight vs in-process",
                 "value": f"{med[('insert', ray_dir)]:.0f}", "baseline": f"{med[('insert', withdir)]:.0f}",
                 "ratio": f"{med[('insert', ray_dir)] / med[('insert', withdir)]:.3f}"},
                {"benchmark": bench, "figure": f"durable insert transitions/s, Ray ChunkSender {args.inflight} calls in flight, "
                 f"queued chunks grouped ({grouping[ray_dir]:.1f} per call) vs in-process one at a time", "value": f"{med[(ops[1], ray_dir)]:.0f}", "baseline": f"{med[('insert', withdir)]:.0f}",
                 "ratio": f"{med[(ops[1], ray_dir)] / med[('insert', withdir)]:.3f}"},
                {"benchmark": bench, "figure": f"sample({args.batch}) transitions/s, Ray vs in-process",
                 "value": f"{med[('sample', ray_dir)]:.0f}", "baseline": f"{med[('sample', withdir)]:.0f}",
                 "ratio": f"{med[('sample', ray_dir)] / med[('sample', withdir)]:.3f}"},
                {"benchmark": bench, "figure": f"sample({args.batch}) transitions/s, Ray {args.many} batches per call "
                 "vs in-process", "value": f"{med[(many, ray_dir)]:.0f}", "baseline": f"{med[('sample', withdir)]:.0f}",
                 "ratio": f"{med[(many, ray_dir)] / med[('sample', withdir)]:.3f}"},
                {"benchmark": bench, "figure": f"sample({args.batch}) transitions/s, in-process {args.many} batches per "
                 "call (many) vs one at a time", "value": f"{med[(many, withdir)]:.0f}",
                 "baseline": f"{med[('sample', withdir)]:.0f}",
                 "ratio": f"{med[(many, withdir)] / med[('sample', withdir)]:.3f}"}]
        commit = git_commit()
        append_rows([{**row, "commit": commit} for row in rows], RESULTS, COLUMNS)
        print(f"{len(rows)} rows appended to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
