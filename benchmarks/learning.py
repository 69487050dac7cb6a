"""Evaluation return against environment steps, with the inline runner, next to design §5's figures.

Runs `umpo_dist.runtime.inline.InlineRunner` (the whole algorithm in one process, one torch
thread) per environment and seed, records every evaluation with its wall-clock time,
and reports the first env step at which the return reached the task's target.

    PYTHONPATH=. .venv/bin/python benchmarks/learning.py --env inverted_pendulum --steps 10000 --seeds 1
    PYTHONPATH=. .venv/bin/python benchmarks/learning.py --env halfcheetah --minutes 10 --section5 --set train.eval_every=1000

HalfCheetah is capped by wall-clock (`--minutes`, default 10, as in §5): the runner has
no time limit of its own, so the log callback raises once the time is up, and the run
ends with one final evaluation of the policy as it stands. The task's config file may
differ from the settings §5's figures were measured with; `--section5` applies those.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from umpo_dist.config import Config, load
from umpo_dist.runtime.inline import InlineRunner

ROOT = Path(__file__).resolve().parent.parent

# The fallback when configs/halfcheetah.yaml does not exist: §5's HalfCheetah settings
# on top of the InvertedPendulum file.
HALFCHEETAH_FALLBACK = [
    "env.id=HalfCheetah-v5",
    "policy.init_temperature=0.1",
    "train.eval_every=2000",
    "env.eval_episodes=2",
    "train.total_env_steps=20000",
]

# Design §5's algorithm settings, for a like-for-like comparison with its figures when a
# task's config file chooses differently (`--section5`).
SECTION5_SETTINGS = [
    "model.ensemble_size=5",
    "model.hidden_layers=3",
    "model.hidden_size=200",
    "model.elites=4",
    "model.batch_size=256",
    "model.lr=0.001",
    "policy.hidden_layers=2",
    "policy.hidden_size=128",
    "policy.horizon=5",
    "policy.risk_lambda=0.5",
    "policy.start_states=128",
    "train.random_steps=500",
    "train.model_warmup_updates=300",
    "train.model_updates_per_step=0.5",
    "train.policy_updates_per_step=1.0",
    "train.train_every=10",
]


@dataclass(frozen=True)
class Task:
    name: str
    target_return: float
    target_steps: int  # the target is met if the return reaches target_return by this many env steps
    reference: tuple[str, ...]  # design §5, verbatim figures
    capped: bool  # subject to --minutes


TASKS = {
    "inverted_pendulum": Task(
        "inverted_pendulum",
        1000.0,
        2_000,
        (
            "compact §1 implementation: 1000 at 2,000 env steps (2 seeds), ≈ 60 s",
            "Stable-Baselines3 SAC: 1000 at 6,000 env steps, ≈ 45 s",
        ),
        capped=False,
    ),
    "halfcheetah": Task(
        "halfcheetah",
        5000.0,
        20_000,
        ("compact §1 implementation, 10 min wall-clock: 4,100–5,600 at ≈ 15,000 env steps, still rising",),
        capped=True,
    ),
}


class _WallClockExceeded(Exception):
    """Raised from the log callback to stop a run at the wall-clock cap."""


@dataclass
class SeedResult:
    seed: int
    evaluations: list[tuple[int, float, float]] = field(default_factory=list)  # (env step, return, wall s)
    env_steps: int = 0
    model_updates: int = 0
    policy_updates: int = 0
    wall_s: float = 0.0
    capped: bool = False
    last_metrics: dict = field(default_factory=dict)

    def first_reaching(self, target: float) -> tuple[int, float] | None:
        for step, ret, wall in self.evaluations:
            if ret >= target:
                return step, wall
        return None


def task_config(task: Task, overrides: list[str]) -> Config:
    path = ROOT / "configs" / f"{task.name}.yaml"
    if path.is_file():
        return load(path, overrides)
    if task.name == "halfcheetah":
        print(f"note: {path.relative_to(ROOT)} not found; using inverted_pendulum.yaml + {' '.join(HALFCHEETAH_FALLBACK)}")
        return load(ROOT / "configs" / "inverted_pendulum.yaml", HALFCHEETAH_FALLBACK + overrides)
    return load(path, overrides)  # raises ConfigError naming the missing file


def run_seed(cfg: Config, seed: int, cap_s: float | None, verbose: bool) -> SeedResult:
    result = SeedResult(seed)
    stopping = False
    start = 0.0

    def log(metrics: dict, step: int) -> None:
        elapsed = time.perf_counter() - start
        result.env_steps = max(result.env_steps, step)
        if "eval/return" in metrics:
            result.evaluations.append((step, float(metrics["eval/return"]), elapsed))
            if verbose:
                extra = {k: v for k, v in result.last_metrics.items() if k in ("model/val_mse", "policy/return_std", "policy/alpha", "policy/epistemic")}
                shown = ", ".join(f"{k}={v:.3g}" for k, v in sorted(extra.items()))
                print(f"  seed {seed}  step {step:>7,}  return {metrics['eval/return']:>9.1f}  {elapsed:>7.1f} s  {shown}", flush=True)
        else:
            result.last_metrics.update(metrics)
        if cap_s is not None and not stopping and elapsed > cap_s:
            raise _WallClockExceeded

    runner = InlineRunner(cfg, log)
    start = time.perf_counter()
    try:
        summary = runner.run()
        result.env_steps = summary["env_steps"]
    except _WallClockExceeded:
        # Evaluate the policy as it stands at the cap (the callback no longer raises).
        stopping = True
        result.capped = True
        result.env_steps = runner.env_steps
        if not runner.evaluations or runner.evaluations[-1][0] != runner.env_steps:
            runner.evaluate()
    result.wall_s = time.perf_counter() - start
    result.model_updates = runner.model_learner.updates
    result.policy_updates = runner.policy_learner.updates
    return result


def report(task: Task, cfg: Config, results: list[SeedResult], cap_s: float | None) -> None:
    seeds = [r.seed for r in results]
    print()
    print(f"== {cfg.env.id} ({task.name}) — seeds {seeds}, {cfg.train.total_env_steps:,} env-step budget"
          + (f", {cap_s / 60:g} min cap" if cap_s is not None else ""))
    print(
        f"   model E={cfg.model.ensemble_size} {cfg.model.hidden_layers}x{cfg.model.hidden_size}, H={cfg.policy.horizon}, "
        f"risk λ={cfg.policy.risk_lambda}, updates/step model {cfg.train.model_updates_per_step} policy "
        f"{cfg.train.policy_updates_per_step}, eval {cfg.env.eval_episodes} episodes every {cfg.train.eval_every:,} steps, "
        f"torch threads {torch.get_num_threads()}"
    )
    by_step: dict[int, dict[int, tuple[float, float]]] = {}
    for r in results:
        for step, ret, wall in r.evaluations:
            by_step.setdefault(step, {})[r.seed] = (ret, wall)
    cols = "".join(f"{f'return s{s}':>14}" for s in seeds)
    header = f"{'env steps':>10}{cols}{'mean':>11}{'wall s':>9}"
    print(header)
    print("-" * len(header))
    for step in sorted(by_step):
        row = by_step[step]
        rets = "".join(f"{row[s][0]:>14.1f}" if s in row else f"{'':>14}" for s in seeds)
        mean = statistics.fmean(v[0] for v in row.values())
        wall = statistics.fmean(v[1] for v in row.values())
        print(f"{step:>10,}{rets}{mean:>11.1f}{wall:>9.1f}")
    print()
    print(f"target: return >= {task.target_return:g} by {task.target_steps:,} env steps")
    for r in results:
        hit = r.first_reaching(task.target_return)
        reached = (
            f"first reached at {hit[0]:,} env steps ({hit[1]:.1f} s){' — within target' if hit[0] <= task.target_steps else ' — LATE'}"
            if hit
            else "never reached — MISSED"
        )
        best = max(ret for _, ret, _ in r.evaluations)
        final = r.evaluations[-1][1]
        stop = f", stopped by the {cap_s / 60:g} min cap" if r.capped else ""
        print(
            f"  seed {r.seed}: {reached}; final {final:.1f}, best {best:.1f}; {r.env_steps:,} env steps in {r.wall_s:.1f} s"
            f" ({r.env_steps / r.wall_s:.0f} steps/s){stop}; {r.model_updates:,} model / {r.policy_updates:,} policy updates"
        )
    print("reference (design §5):")
    for line in task.reference:
        print(f"  {line}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--env", choices=["inverted_pendulum", "halfcheetah", "both"], default="both")
    p.add_argument("--steps", type=int, default=None, help="override train.total_env_steps")
    p.add_argument("--seeds", type=int, default=2, help="number of seeds, run one after another")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--minutes", type=float, default=10.0, help="wall-clock cap per HalfCheetah seed (0: none)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (design §5 figures use 1)")
    p.add_argument("--section5", action="store_true", help="apply design §5's algorithm settings over the task's config file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="extra config override")
    p.add_argument("--quiet", action="store_true", help="no per-evaluation progress lines")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    names = ["inverted_pendulum", "halfcheetah"] if args.env == "both" else [args.env]
    overrides = (SECTION5_SETTINGS if args.section5 else []) + list(args.overrides)
    if args.steps is not None:
        overrides.append(f"train.total_env_steps={args.steps}")
    for name in names:
        task = TASKS[name]
        cap_s = args.minutes * 60 if task.capped and args.minutes > 0 else None
        results = []
        cfg = None
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            cfg = task_config(task, overrides + [f"train.seed={seed}"])
            if not args.quiet:
                print(f"{cfg.env.id} seed {seed}: running", flush=True)
            results.append(run_seed(cfg, seed, cap_s, verbose=not args.quiet))
        report(task, cfg, results, cap_s)


if __name__ == "__main__":
    main()
