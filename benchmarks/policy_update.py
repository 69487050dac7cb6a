"""The critical path: what one policy update costs, against the arithmetic it needs and this CPU's matmul rate.

On a CPU every run waits for the policy update (design: ratios, not speed). This
measures, for a task's config (the learner's sizes, horizon, start states):

- ms per update of the `mean_variance` objective (imagined rollout through the
  ensemble, backward through it, the value step, the temperature step), after a few
  warm-up updates, median over repetitions;
- the floating-point work of one update as PyTorch's own `FlopCounterMode` counts it
  (matmuls forward and backward; elementwise work is not counted);
- the machine's matmul rate, measured in the same run: one (E·B, width) × (width, width)
  batched matmul shaped like the model's hidden layers, and a large square one.

The ratio achieved GFLOP/s ÷ matmul GFLOP/s says how much of the update is arithmetic
and how much is overhead (Python, small ops, allocations). The update is timed twice in
the same process: first with the C library's own allocator policy, then with freed memory
kept in the process (`umpo_dist.devices.keep_freed_memory`, what the learners run with),
and the ratio of the two is printed. The objective gets what the runtimes would hand it:
the replay's answer to its `DataNeeds`, from a replay of random transitions. A row per
figure goes to `benchmarks/results/runtime.csv`.

    .venv/bin/python benchmarks/policy_update.py --env halfcheetah --variant aligned [--threads 1] [--device cuda]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from learning import TASKS, VARIANTS, append_rows, git_commit  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "runtime.csv"
COLUMNS = ["benchmark", "figure", "value", "baseline", "ratio", "commit"]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(shape_a: tuple, shape_b: tuple, reps: int, device: torch.device) -> float:
    a, b = torch.randn(*shape_a, device=device), torch.randn(*shape_b, device=device)
    batched = a.dim() == 3
    op = torch.bmm if batched else torch.mm
    for _ in range(3):
        op(a, b)
    synchronize(device)
    flops = 2 * a.shape[-2] * a.shape[-1] * b.shape[-1] * (a.shape[0] if batched else 1)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        op(a, b)
        synchronize(device)
        times.append(time.perf_counter() - t)
    return flops / statistics.median(times) / 1e9


def replay_answer(needs, obs_dim: int, action_dim: int, cfg, size: int = 10_000) -> dict:
    """What the runtimes hand `update`: the replay's answer to the objective's `DataNeeds` (start states,
    and whole transitions where the objective asks for them, e.g. `policy.real_critic_batch`), here from a
    replay of random transitions."""
    from umpo_dist.data.replay import ReplayBuffer

    rng = np.random.default_rng(0)
    replay = ReplayBuffer.from_config(cfg, obs_dim, action_dim)
    replay.insert({"obs": rng.normal(size=(size, obs_dim)).astype(np.float32),
                   "next_obs": rng.normal(size=(size, obs_dim)).astype(np.float32),
                   "action": rng.uniform(-1, 1, size=(size, action_dim)).astype(np.float32),
                   "reward": rng.normal(size=size).astype(np.float32),
                   "terminated": (rng.random(size) < 0.01).astype(np.float32),
                   "truncated": np.zeros(size, np.float32)})
    return replay.sample_for(needs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--env", choices=TASKS, default="halfcheetah")
    p.add_argument("--variant", default="shipped", help=f"named overrides: {', '.join(VARIANTS)}")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=40)
    p.add_argument("--device", default="cpu", help="cpu or cuda: where the learner computes (as Ray's GPU assignment would put it)")
    p.add_argument("--no-csv", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    from umpo_dist.config import load
    from umpo_dist.devices import keep_freed_memory
    from umpo_dist.envs.spec import env_spec
    from umpo_dist.objectives import build_objective

    cfg = load(ROOT / "configs" / f"{args.env}.yaml", VARIANTS[args.variant] + args.overrides)
    spec = env_spec(cfg.env.id)
    objective = build_objective(cfg, spec, device)
    data = replay_answer(objective.needs, spec.obs_dim, spec.action_dim, cfg)

    def ms_per_update() -> float:
        for _ in range(5):
            objective.update(data)
        synchronize(device)
        times = []
        for _ in range(args.reps):
            t = time.perf_counter()
            objective.update(data)
            synchronize(device)
            times.append(time.perf_counter() - t)
        return 1e3 * statistics.median(times)

    # First with the C library's own allocator policy, then as the learners run (freed memory kept).
    ms_default = ms_per_update()
    kept = keep_freed_memory()
    ms = ms_per_update() if kept else ms_default
    with FlopCounterMode(display=False) as counter:
        objective.update(data)
    gflop = counter.get_total_flops() / 1e9
    achieved = gflop / (ms / 1e3)
    E, B, width = cfg.model.ensemble_size, cfg.policy.start_states, cfg.model.hidden_size
    shaped = matmul_gflops((E, B, width), (E, width, width), 200, device)
    square = matmul_gflops((1024, 1024), (1024, 1024), 10, device)
    name = f"{cfg.env.id} {args.variant}" + (f" {' '.join(args.overrides)}" if args.overrides else "")
    where = f"{args.threads} thread" if device.type == "cpu" else torch.cuda.get_device_name(device)
    print(f"{name}: {ms:.1f} ms per policy update ({where}), {gflop:.3f} GFLOP counted "
          f"-> {achieved:.2f} GFLOP/s; matmul rate here: {shaped:.2f} GFLOP/s model-shaped "
          f"({E}x{B}x{width}), {square:.2f} GFLOP/s 1024²; ratio {achieved / shaped:.2f} of the model-shaped rate")
    if kept:
        print(f"freed memory kept in the process (as the learners run): {ms:.1f} ms against {ms_default:.1f} ms with "
              f"the C library's default policy, ratio {ms / ms_default:.2f}")
    else:
        print("the C library has no mallopt (not glibc): measured with its own allocator policy only")
    if not args.no_csv:
        commit = git_commit()
        bench = f"policy_update ({name}, {where})"
        append_rows([
            {"benchmark": bench, "figure": "ms per update", "value": f"{ms:.1f}", "baseline": "", "ratio": "", "commit": commit},
            {"benchmark": bench, "figure": "GFLOP/s achieved vs model-shaped matmul", "value": f"{achieved:.2f}",
             "baseline": f"{shaped:.2f}", "ratio": f"{achieved / shaped:.2f}", "commit": commit},
            {"benchmark": bench, "figure": "GFLOP/s achieved vs 1024² matmul", "value": f"{achieved:.2f}",
             "baseline": f"{square:.2f}", "ratio": f"{achieved / square:.2f}", "commit": commit},
            *([{"benchmark": bench, "figure": "ms per update, freed memory kept vs the C library's default",
                "value": f"{ms:.1f}", "baseline": f"{ms_default:.1f}", "ratio": f"{ms / ms_default:.2f}",
                "commit": commit}] if kept else []),
        ], RESULTS, COLUMNS)


if __name__ == "__main__":
    main()
