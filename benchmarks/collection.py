"""Env collection throughput: Ray env-worker actors against a bare Gymnasium loop on the same env.

Measures aggregate env steps per second of 1 and 2 `EnvWorker` actors (design §2: each
runs its own loop, asks a real `ReplayActor` for every chunk, steps its environments
synchronously, acts with the policy it fetched from the weight store, and sends the
chunk with a few inserts in flight), and sets them against, in the same command:

- a bare single-process Gymnasium loop (`env.step` with random actions, no policy, no
  bookkeeping): the baseline every ratio is taken against;
- the plain `EnvCollector` in this process, with random actions and with the policy,
  so the cost of the collector's bookkeeping and of policy inference is visible apart
  from Ray's.

Per-core efficiency = aggregate steps/s ÷ (workers × bare single-process steps/s): 1.0
would be perfect scaling of the bare loop over the workers' cores. The workers act with
a freshly initialised policy (published to a `WeightStoreActor` as version 1), which
costs exactly what a trained one does. The bare loop is measured at the start and at
the end; so are the in-process collector variants; ratios use the mean of the two, and the
spread between them (column before/after) says how noisy the machine was.

    PYTHONPATH=. .venv/bin/python benchmarks/collection.py [--env HalfCheetah-v5] [--chunk-size 100] \
        [--envs-per-worker 1 8] [--workers 1 2] [--seconds 6] [--no-csv]

Appends its per-core figures to `benchmarks/results/runtime.csv` (the issue's target:
one worker with 8 envs at ≥ 0.8 of the bare loop per core, policy inference included).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from umpo_dist.envs.collector import EnvCollector
from umpo_dist.config import from_dict
from umpo_dist.envs.spec import env_spec, make_env
from umpo_dist.models.policy import build_policy


def bare_loop(env_id: str, seconds: float, max_episode_steps: int, seed: int = 0) -> float:
    """Steps/s of `env.step` with `action_space.sample()`, resetting at episode ends."""
    env = make_env(env_id, max_episode_steps)
    env.reset(seed=seed)
    env.action_space.seed(seed)
    steps = 0
    for _ in range(200):  # warm-up
        _, _, term, trunc, _ = env.step(env.action_space.sample())
        if term or trunc:
            env.reset()
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(500):
            _, _, term, trunc, _ = env.step(env.action_space.sample())
            if term or trunc:
                env.reset()
        steps += 500
        now = time.perf_counter()
        if now >= deadline:
            break
    env.close()
    return steps / (now - start)


def collector_loop(env_id: str, num_envs: int, chunk: int, seconds: float, max_episode_steps: int, act) -> float:
    """Steps/s of `EnvCollector.collect(chunk, act)` in this process (act=None: random actions)."""
    collector = EnvCollector(env_id, num_envs, seed=0, max_episode_steps=max_episode_steps)
    collector.collect(chunk, act)  # warm-up
    steps = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        batch, _ = collector.collect(chunk, act)
        steps += len(batch["reward"])
        now = time.perf_counter()
        if now >= deadline:
            break
    collector.close()
    return steps / (now - start)


def policy_act_us(policy, obs_dim: int, n: int, calls: int = 2000) -> float:
    """Microseconds per `policy.act` call on a batch of `n` observations."""
    obs = np.zeros((n, obs_dim), np.float32)
    for _ in range(100):
        policy.act(obs)
    start = time.perf_counter()
    for _ in range(calls):
        policy.act(obs)
    return 1e6 * (time.perf_counter() - start) / calls


def ray_workers(cfg, spec, replay, store, workers: int, chunk: int, seconds: float) -> dict:
    """Aggregate steps/s of `workers` EnvWorker actors, each in its own loop (one `run` call after another).

    The replay's admission is told learners far ahead, so only the workers' speed bounds what they collect."""
    import ray

    from umpo_dist.runtime.ray.env_worker import EnvWorker

    ray.get(replay.admit.remote(10**12, 10**12, 10**12))
    t0 = time.perf_counter()
    actors = [EnvWorker.options(num_cpus=cfg.resources.worker_cpus).remote(cfg, spec, i, replay, store)
              for i in range(workers)]
    # Warm-up: until every worker reports acting with the published policy (its first
    # poll of the weight store is still in flight on the first call).
    for a in actors:
        for attempt in range(50):
            r = ray.get(a.run.remote(chunk, 0.2))
            if min(r["policy_versions"], default=-1) >= 0 and attempt >= 1:
                break
        else:
            raise RuntimeError("an env worker never picked up the published policy")
    startup_s = time.perf_counter() - t0

    inflight = {}
    steps = 0
    calls = 0
    chunks = 0
    busy = 0.0
    versions = set()
    start = time.perf_counter()
    deadline = start + seconds
    for i, a in enumerate(actors):
        inflight[a.run.remote(chunk, min(seconds, 1.0))] = i
    while inflight:
        ready, _ = ray.wait(list(inflight), num_returns=1)
        for ref in ready:
            i = inflight.pop(ref)
            r = ray.get(ref)
            steps += r["steps"]
            calls += 1
            chunks += len(r["policy_versions"])
            busy += r["busy_s"]
            versions.update(r["policy_versions"])
            left = deadline - time.perf_counter()
            if left > 0.05:
                inflight[actors[i].run.remote(chunk, min(left, 1.0))] = i
    elapsed = time.perf_counter() - start
    for a in actors:
        ray.kill(a)
    return {"rate": steps / elapsed, "calls": calls, "chunks": chunks, "steps": steps, "elapsed": elapsed,
            "ms_per_chunk": 1e3 * elapsed * workers / max(chunks, 1), "versions": sorted(versions),
            "startup_s": startup_s, "busy_share": busy / (elapsed * workers)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--env", default="HalfCheetah-v5")
    p.add_argument("--chunk-size", type=int, default=100, help="env steps per collect call / replay message")
    p.add_argument("--envs-per-worker", type=int, nargs="+", default=[1], help="one or more values, e.g. 1 4")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to measure")
    p.add_argument("--seconds", type=float, default=6.0, help="timed seconds per measurement")
    p.add_argument("--num-cpus", type=int, default=None, help="ray.init num_cpus (default: max(2, workers))")
    p.add_argument("--capacity", type=int, default=1_000_000, help="replay actor capacity")
    p.add_argument("--no-csv", action="store_true", help="print only (default: append rows to runtime.csv)")
    args = p.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = from_dict({"env": {"id": args.env},
                     "resources": {"worker_cpus": 1.0, "chunk_size": args.chunk_size}})
    spec = env_spec(args.env)
    mes = cfg.env.max_episode_steps
    policy = build_policy(spec, cfg.policy)
    load_start = os.getloadavg()

    def in_process(when: str) -> dict:
        """The bare loop and the in-process collector; measured before and after the Ray runs."""
        out = {"bare": bare_loop(args.env, args.seconds, mes)}
        print(f"bare loop ({when}): {out['bare']:,.0f} steps/s", flush=True)
        for n in args.envs_per_worker:
            out[("random", n)] = collector_loop(args.env, n, args.chunk_size, args.seconds, mes, None)
            out[("policy", n)] = collector_loop(args.env, n, args.chunk_size, args.seconds, mes, policy.act)
            print(f"EnvCollector in-process ({when}), {n} env(s): random {out[('random', n)]:,.0f}/s, "
                  f"policy {out[('policy', n)]:,.0f}/s", flush=True)
        return out

    before = in_process("before")

    import ray

    from umpo_dist.config import TrainConfig
    from umpo_dist.runtime.admission import Admission
    from umpo_dist.runtime.ray.replay_actor import ReplayActor
    from umpo_dist.runtime.ray.weights import WeightStoreActor, publish

    num_cpus = args.num_cpus or max(2, max(args.workers))
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    store = WeightStoreActor.remote()
    replay = ReplayActor.remote(spec.obs_dim, spec.action_dim, args.capacity, cfg.model.ensemble_size,
                                cfg.replay.sampling, cfg.model.holdout_fraction, 0, run_dir=None,
                                admission=Admission(TrainConfig(total_env_steps=10**12, random_steps=0), 10**6))
    publish(store, "policy", 1, policy.state_dict())
    distributed: dict[tuple[int, int], dict] = {}
    for n in args.envs_per_worker:
        wcfg = from_dict({"env": {"id": args.env},
                          "resources": {"worker_cpus": 1.0, "chunk_size": args.chunk_size, "envs_per_worker": n}})
        for w in args.workers:
            distributed[(w, n)] = res = ray_workers(wcfg, spec, replay, store, w, args.chunk_size, args.seconds)
            print(f"Ray {w} worker(s) x {n} env(s): {res['rate']:,.0f} steps/s aggregate "
                  f"({res['calls']} calls, {res['chunks']} chunks, {res['ms_per_chunk']:.1f} ms/chunk/worker, "
                  f"policy versions {res['versions']}, collecting {res['busy_share']:.0%} of the time, "
                  f"actor start + warm-up {res['startup_s']:.1f} s)", flush=True)
    replay_total = ray.get(replay.stats.remote())["total_inserted"]
    ray.shutdown()

    after = in_process("after")
    load_end = os.getloadavg()
    inproc = {k: (before[k] + after[k]) / 2 for k in before}
    bare = inproc["bare"]
    act_us = {n: policy_act_us(policy, spec.obs_dim, n) for n in args.envs_per_worker}

    print()
    print(f"collection: {args.env}, chunk {args.chunk_size}, policy {cfg.policy.hidden_layers}x{cfg.policy.hidden_size} "
          f"(torch threads 1 everywhere), {args.seconds:g} s per measurement, local ray.init(num_cpus={num_cpus}), "
          f"{os.cpu_count()} cores")
    print(f"baseline: bare single-process loop (random actions, no policy) {bare:,.0f} steps/s "
          f"(before {before['bare']:,.0f}, after {after['bare']:,.0f}); replay actor received {replay_total:,} transitions")
    print("policy.act per call (this process, 1 thread): "
          + ", ".join(f"batch {n}: {us:.0f} us" for n, us in act_us.items()))
    print(f"load average (1/5/15 min): start {load_start[0]:.2f}/{load_start[1]:.2f}/{load_start[2]:.2f}, "
          f"end {load_end[0]:.2f}/{load_end[1]:.2f}/{load_end[2]:.2f}")
    print()
    header = (f"{'configuration':<46}{'steps/s':>11}{'x bare':>9}{'per-core eff.':>15}{'vs in-proc':>12}"
              f"{'before/after':>18}")
    print(header)
    print("-" * len(header))
    ba = f"{before['bare']:,.0f}/{after['bare']:,.0f}"
    print(f"{'bare gym loop, 1 env, random, 1 process':<46}{bare:>11,.0f}{1.0:>9.2f}{1.0:>15.2f}{'':>12}{ba:>18}")
    for n in args.envs_per_worker:
        for kind in ("random", "policy"):
            rate = inproc[(kind, n)]
            label = f"EnvCollector in-process, {n} env(s), {kind}"
            ba = f"{before[(kind, n)]:,.0f}/{after[(kind, n)]:,.0f}"
            print(f"{label:<46}{rate:>11,.0f}{rate / bare:>9.2f}{rate / bare:>15.2f}{'':>12}{ba:>18}")
        for w in args.workers:
            rate = distributed[(w, n)]["rate"]
            label = f"Ray {w} worker(s) x {n} env(s), policy"
            vs = rate / (w * inproc[("policy", n)])
            print(f"{label:<46}{rate:>11,.0f}{rate / bare:>9.2f}{rate / (w * bare):>15.2f}{vs:>11.2f}x")
    print()
    print("per-core eff. = steps/s / (workers x bare); vs in-proc = steps/s / (workers x in-process EnvCollector "
          "with the policy and the same envs)")
    if not args.no_csv:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from distributed_vs_inline import COLUMNS, RESULTS, ROOT, append_rows, git_commit

        bench = f"collection ({args.env}, chunks of {args.chunk_size}, {os.cpu_count()} cores)"
        rows = []
        for n in args.envs_per_worker:
            rate = inproc[("policy", n)]
            rows.append({"benchmark": bench, "figure": f"steps/s, in-process EnvCollector {n} env(s) with the policy "
                         "vs the bare loop", "value": f"{rate:.0f}", "baseline": f"{bare:.0f}", "ratio": f"{rate / bare:.3f}"})
            for w in args.workers:
                rate = distributed[(w, n)]["rate"]
                rows.append({"benchmark": bench, "figure": f"steps/s per core, Ray {w} worker(s) x {n} env(s) with the "
                             "policy vs the bare loop", "value": f"{rate / w:.0f}", "baseline": f"{bare:.0f}",
                             "ratio": f"{rate / (w * bare):.3f}"})
        commit = git_commit()
        append_rows([{**row, "commit": commit} for row in rows], RESULTS, COLUMNS)
        print(f"{len(rows)} rows appended to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
