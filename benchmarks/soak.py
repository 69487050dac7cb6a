"""Soak: a long distributed run with a random actor killed every minute, against a run without faults.

Prints the failures injected, the recoveries, the transitions acknowledged to the env
workers and the transitions present in the replay at the end (these must be equal),
and the evaluation return of the faulty run against a fault-free run of the same
env-step count, same config and seed.

    python benchmarks/soak.py --minutes 10 [--env inverted_pendulum] [--every 60]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import ray

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from umpo_dist import config  # noqa: E402
from umpo_dist.ops.checkpoint import load_checkpoint  # noqa: E402
from umpo_dist.ops.train import train  # noqa: E402
from umpo_dist.runtime.ray.cluster import init_ray  # noqa: E402


class RandomKiller:
    """Kills one random actor (env worker, replay, a learner, the weight store) every `every_s` seconds."""

    def __init__(self, minutes: float, every_s: float, seed: int):
        self.rng = random.Random(seed)
        self.start = time.monotonic()
        self.deadline = self.start + 60 * minutes
        self.every_s = every_s
        self.next_kill = self.start + every_s
        self.kills: list[tuple[float, str, int]] = []

    def __call__(self, driver) -> None:
        now = time.monotonic()
        if now >= self.deadline:
            driver.request_stop()
            return
        if now < self.next_kill:
            return
        targets = {f"env_worker_{i}": w for i, w in enumerate(driver.workers)}
        targets.update(replay=driver.replay, model_learner=driver.model_learner,
                       policy_learner=driver.policy_learner, weight_store=driver.store)
        name = self.rng.choice(sorted(targets))
        ray.kill(targets[name], no_restart=False)
        self.kills.append((now - self.start, name, driver.schedule.env_steps))
        print(f"[soak] t={now - self.start:6.0f}s killed {name} at {driver.schedule.env_steps} env steps", flush=True)
        self.next_kill = now + self.every_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="inverted_pendulum", help="config name in configs/")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--every", type=float, default=60.0, help="seconds between kills")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], help="extra config overrides")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="umpo-soak-"))
    os.chdir(work)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work}/mlflow.db"
    overrides = ["train.total_env_steps=10000000", "train.checkpoint_every=2000", "train.eval_every=2000",
                 f"train.seed={args.seed}", "tracking.log_every_s=10", *args.set]
    cfg = config.load(ROOT / "configs" / f"{args.env}.yaml", overrides)
    init_ray(cfg, None)  # sized like `umpo train` does: every actor, and a restarted one, gets its CPUs

    killer = RandomKiller(args.minutes, args.every, args.seed)
    faulty = train(cfg, progress=False, callbacks=[killer])
    present = int(load_checkpoint(faulty["run_dir"])["replay"]["total_inserted"])

    steps = faulty["env_steps"]
    clean_cfg = config.load(ROOT / "configs" / f"{args.env}.yaml",
                            [*overrides, f"train.total_env_steps={steps}"])
    clean = train(clean_cfg, progress=False)
    ray.shutdown()

    print(f"\n== soak: {cfg.env.id}, {args.minutes:.0f} min, a random actor killed every {args.every:.0f} s ==")
    print(f"failures injected          {len(killer.kills)}  ({', '.join(k[1] for k in killer.kills)})")
    print(f"failures seen by driver    {faulty['failures']}")
    print(f"recoveries reported        {faulty['recoveries']}")
    print(f"transitions acknowledged   {faulty['acknowledged_in_session']}")
    print(f"transitions present at end {present}   ({'equal' if present == faulty['acknowledged_in_session'] else 'DIFFERENT'})")
    print(f"env steps                  {steps}   (updates: model {faulty['model_updates']}, policy {faulty['policy_updates']})")
    print(f"{'':27}{'with faults':>14}{'without':>12}")
    print(f"{'final evaluation return':27}{faulty['final_return']:>14.1f}{clean['final_return']:>12.1f}")
    print(f"{'best evaluation return':27}{faulty['best_return']:>14.1f}{clean['best_return']:>12.1f}")
    print(f"{'wall-clock (s)':27}{faulty['wall_s']:>14.0f}{clean['wall_s']:>12.0f}")


if __name__ == "__main__":
    main()
