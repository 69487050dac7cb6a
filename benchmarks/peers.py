"""Model-free references on our evaluation protocol: Stable-Baselines3's SAC (`pip install -e '.[peers]'`).

    .venv/bin/python benchmarks/learning.py --env inverted_pendulum --peer sac --seeds 0 1 --steps 20000

What is the same as in our runs: the task's committed config file (with `--set` overrides on top)
gives the environment and its episode limit (`env.max_episode_steps`), the env-step budget, the
initial uniformly random steps (`train.random_steps`, SB3's `learning_starts`), the replay window
(`replay.capacity`, capped at the budget), and the evaluations: at step 0, every `train.eval_every`
env steps and at the end (a `--minutes` cap or `train.stop_at_return` end a run early, as they do
ours), each `env.eval_episodes` episodes of the deterministic action from seeds 10_000 + seed, ...,
run by `umpo_dist.envs.evaluation.evaluate_policy` itself. The rest is SB3's default SAC (twin Q,
target critics, tuned entropy temperature, one gradient step per env step, (256, 256) MLPs,
batch 256, learning rate 3e-4) on the CPU, seeded with the run's seed.
"""

from __future__ import annotations

import shlex
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class DeterministicActor:
    """An SB3 model seen as `evaluate_policy` sees our policy: `act(obs_batch, deterministic=True)`."""

    def __init__(self, model):
        self.model = model

    def act(self, obs, deterministic: bool = True):
        actions, _ = self.model.predict(obs, deterministic=deterministic)
        return actions


def train_sac(cfg, cap_s: float | None = None, report=None) -> dict:
    """One SAC run under `cfg`'s protocol; returns its evaluations [(env step, return)], the wall-clock
    of each (since the run started), the env steps taken and the trained model.

    `report(step, ret, wall)` is called after each evaluation."""
    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import BaseCallback

    from umpo_dist.envs.evaluation import evaluate_policy
    from umpo_dist.envs.spec import make_env

    seed = cfg.train.seed
    model = SAC("MlpPolicy", make_env(cfg.env.id, cfg.env.max_episode_steps), seed=seed, device="cpu",
                learning_starts=cfg.train.random_steps,
                buffer_size=min(cfg.replay.capacity, cfg.train.total_env_steps))
    actor = DeterministicActor(model)
    evaluations: list[tuple[int, float]] = []
    walls: list[float] = []
    start = time.perf_counter()

    def evaluate(step: int) -> bool:
        """Evaluate now; True when the run should go on."""
        ret = evaluate_policy(actor, cfg.env.id, cfg.env.eval_episodes, 10_000 + seed, cfg.env.max_episode_steps)["return_mean"]
        evaluations.append((step, ret))
        walls.append(time.perf_counter() - start)
        if report:
            report(step, ret, walls[-1])
        return cfg.train.stop_at_return is None or ret < cfg.train.stop_at_return

    class EvaluationCadence(BaseCallback):
        def __init__(self):
            super().__init__()
            self.next_eval = cfg.train.eval_every

        def _on_step(self) -> bool:
            go_on = True
            # The budget's last step is evaluated after `learn` returns, once its gradient step is taken.
            if self.next_eval <= self.num_timesteps < cfg.train.total_env_steps:
                self.next_eval += cfg.train.eval_every
                go_on = evaluate(self.num_timesteps)
            return go_on and (cap_s is None or time.perf_counter() - start <= cap_s)

    if evaluate(0):
        model.learn(total_timesteps=cfg.train.total_env_steps, callback=EvaluationCadence())
    if evaluations[-1][0] != model.num_timesteps:
        evaluate(model.num_timesteps)
    return {"evaluations": evaluations, "walls": walls, "env_steps": model.num_timesteps,
            "wall_s": time.perf_counter() - start, "model": model}


PEERS = {"sac": train_sac}  # `learning.py --peer NAME`: a function of (cfg, cap_s, report) like `train_sac`


def csv_rows(cfg, peer: str, result: dict, commit: str, command: str) -> list[dict]:
    """`benchmarks/results/learning.csv` rows, one per evaluation (no model: no model diagnostics)."""
    return [{"env": cfg.env.id, "runtime": "sb3", "variant": peer, "seed": cfg.train.seed, "env_steps": step,
             "eval_return": f"{ret:.1f}", "wall_s": f"{wall:.1f}", "commit": commit, "termination": "model-free",
             "command": command, "gap_share": "", "calibration_error": ""}
            for (step, ret), wall in zip(result["evaluations"], result["walls"])]


def run(args, commit: str, append_rows) -> None:
    """`learning.py --peer`: every seed of `args.seeds`, rows appended unless `--no-csv`."""
    from umpo_dist.config import load

    finals = []
    for seed in args.seeds:
        cfg = load(ROOT / "configs" / f"{args.env}.yaml",
                   [f"train.total_env_steps={args.steps}", *args.overrides, f"train.seed={seed}"])

        def report(step: int, ret: float, wall: float) -> None:
            print(f"  {args.env} sb3 {args.peer} seed {seed}: step {step:>7,} return {ret:>9.1f} ({wall:.0f} s)", flush=True)

        result = PEERS[args.peer](cfg, args.minutes * 60 or None, report)
        command = shlex.join([
            ".venv/bin/python", "benchmarks/learning.py", "--env", args.env, "--peer", args.peer,
            "--seeds", str(seed), "--steps", str(args.steps), *[x for o in args.overrides for x in ("--set", o)],
        ])
        if not args.no_csv:
            append_rows(csv_rows(cfg, args.peer, result, commit, command))
        returns = [r for _, r in result["evaluations"]]
        finals.append(returns[-1])
        print(f"{cfg.env.id} sb3 {args.peer} seed {seed}: final {returns[-1]:.1f}, best {max(returns):.1f}, "
              f"{result['env_steps']:,} env steps in {result['wall_s']:.0f} s", flush=True)
    if len(finals) > 1:
        print(f"final return over seeds {args.seeds}: {statistics.fmean(finals):.1f} ± {statistics.stdev(finals):.1f}")
