"""Evaluation return against environment steps, in either runtime; every evaluation becomes a CSV row.

    .venv/bin/python benchmarks/learning.py --env inverted_pendulum --runtime inline --seeds 0 1
    .venv/bin/python benchmarks/learning.py --env halfcheetah --steps 20000 --seeds 0 1 --variant obs_norm
    .venv/bin/python benchmarks/learning.py --env hopper --runtime ray --steps 20000 --set train.eval_every=2500
    .venv/bin/python benchmarks/learning.py --env hopper --peer sac --steps 20000   # SB3's SAC: benchmarks/peers.py

Each run goes through `umpo_dist.ops.train.train` — the path `umpo train` takes — with
the task's committed config file, the variant's overrides and `--set` overrides on top,
MLflow and run data in a temporary directory. Every evaluation of every seed is
appended to `benchmarks/results/learning.csv` (env, runtime, variant, seed, env steps,
return, wall-clock since the loop started, git commit, termination rule, the command
that reproduces the row, the model diagnostics) as soon as the run has made it, so a run
cut short (a session's end, a killed process) keeps every evaluation it reached.
`benchmarks/report.py` turns the CSV into `docs/results.md`.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "learning.csv"
COLUMNS = ["env", "runtime", "variant", "seed", "env_steps", "eval_return", "wall_s", "commit", "termination", "command",
           "gap_share", "calibration_error"]  # the model diagnostics at that evaluation (empty: none computed)
TASKS = ("inverted_pendulum", "halfcheetah", "hopper", "walker2d")

# Named sets of overrides over a task's config file: the ablations of the learning path.
# "shipped" is the committed config as it is.
# The critic pipeline hopper.yaml had before it took DHMBPO's (Q critic, value bounds, γ 0.995, every start state
# from 20-step model rollouts): the earlier Hopper rows on the file are labelled `value_critic`, which reproduces them.
VALUE_CRITIC = ["policy.critic=value", "policy.value_bounds=false", "policy.gamma=0.99", "policy.model_start_share=0.0",
                "policy.real_critic_batch=0"]
# ... and one such value function, not normalised: the compact reference's critic, and the default
PLAIN_CRITIC = ["policy.value_members=1", "policy.value_layer_norm=false", *VALUE_CRITIC]
# Updates after every 10 env steps at a policy ratio of 1.0 and no restart, not DHMBPO's bursts and restart
# (`train.train_every` 500, `policy.restart_every`): the compact reference's schedule. The earlier shipped Hopper
# rows are labelled `no_bursts`, which reproduces them on hopper.yaml as it is now.
NO_RESTART = ["policy.restart_every=0", "policy.critic_warmup=0"]
NO_BURSTS = ["train.train_every=10", "train.policy_updates_per_step=1.0", *NO_RESTART]
# Each member's noise predicted per input (the default, and the compact reference's), not DHMBPO's one learned
# log-variance per target dim: hopper.yaml carries that; its earlier rows on the file (all of `shipped`'s before
# it, and those of `no_bursts`, `imagined_critic` and `value_critic`, which begin with this) are labelled
# `heteroscedastic`, which reproduces them.
HETEROSCEDASTIC = ["model.noise=heteroscedastic"]
# A model without DHMBPO's regularisers (layer norm, dropout) and noise: the default, and the compact reference's.
# walker2d.yaml carries the regularisers; its earlier rows on the file are labelled `plain_model`, which reproduces
# them.
PLAIN_MODEL = ["model.layer_norm=false", "model.dropout=0.0", *HETEROSCEDASTIC]
VARIANTS: dict[str, list[str]] = {
    "shipped": [],
    # the compact single-process reference's algorithm settings
    "reference": [
        "model.ensemble_size=5", "model.hidden_layers=3", "model.hidden_size=200", "model.elites=4",
        "train.random_steps=500", "train.model_warmup_updates=300",
        "train.model_updates_per_step=0.5", *NO_BURSTS,
        # its critic, one plain value function on λ-returns at γ 0.99 from replay starts (hopper.yaml ships a
        # normalised ensemble of Q functions), and its model without layer norm or dropout (walker2d.yaml has
        # them): so the rows of this variant and of `aligned` mean the same whatever a task's file now carries
        *PLAIN_CRITIC, *PLAIN_MODEL,
    ],
    "elites": ["model.rollout_members=elites"],
    # design §1.4: half of each update's start states from 20-step no-gradient rollouts in the model
    "double_horizon": ["policy.model_start_share=0.5"],
    # the other objectives on the task's config as shipped (design §3): the comparison of issue 11
    "mnm": ["policy.objective=mnm"],
    # MBPO-style: many cheap SAC updates per env step on mostly model transitions
    # (it has no restart: off, where a task's file has one)
    "dyna": ["policy.objective=dyna", "train.policy_updates_per_step=5", *NO_RESTART],
}
VARIANTS["heteroscedastic"] = HETEROSCEDASTIC
VARIANTS["no_bursts"] = HETEROSCEDASTIC + NO_BURSTS
VARIANTS["plain_model"] = PLAIN_MODEL
# The two critics hopper.yaml had earlier ran without the bursts too.
VARIANTS["value_critic"] = HETEROSCEDASTIC + VALUE_CRITIC + NO_BURSTS
# hopper.yaml before its Q critic also learned from real transitions (`policy.real_critic_batch`)
VARIANTS["imagined_critic"] = HETEROSCEDASTIC + ["policy.real_critic_batch=0"] + NO_BURSTS
# The policy settings before the audit, the defaults (InvertedPendulum's and HalfCheetah's configs took the
# audit's policy settings; their earlier rows are labelled with this, which reproduces them on today's files).
VARIANTS["unaligned"] = [
    "policy.normalize_obs=false", "policy.init_std=null", "policy.entropy_in_return=false",
    "policy.mean_rewards=false", "policy.alpha_lr=0.0003",
]
# The audit's differences from the compact reference (its items 1–4 and its alpha_lr), together: on the task's
# file as it is ("audited") and on the reference's model and ratios ("aligned").
VARIANTS["audited"] = [
    "policy.normalize_obs=true", "policy.init_std=1.0", "policy.entropy_in_return=true",
    "policy.mean_rewards=true", "policy.alpha_lr=0.001",
]
VARIANTS["aligned"] = VARIANTS["reference"] + VARIANTS["audited"]
# walker2d.yaml before it took hopper.yaml's algorithm: the heavy model and late start of halfcheetah.yaml (7
# members of 4x200, 5,000 random steps, 1,000 warm-up updates, evaluations every 5,000 steps) with the default
# policy, critic and schedule. Its earlier Walker2d rows are labelled with this (or `heavy_audited`, the audit's
# policy settings on it), which reproduces them on today's file.
VARIANTS["heavy_defaults"] = [
    "model.ensemble_size=7", "model.hidden_layers=4", "model.hidden_size=200", "model.elites=5",
    "train.random_steps=5000", "train.model_warmup_updates=1000", "train.model_updates_per_step=0.5",
    "train.eval_every=5000", *VARIANTS["unaligned"], *PLAIN_CRITIC, "policy.model_start_refresh=10",
    "policy.model_start_buffer=20000", *NO_BURSTS, *PLAIN_MODEL,
]
VARIANTS["heavy_audited"] = VARIANTS["heavy_defaults"] + VARIANTS["audited"]
# `aligned` with DHMBPO's critic pipeline and a normalised critic ensemble: hopper.yaml's algorithm (model, policy,
# objective and ratios) on any task's file, but for the real-transition critic and the bursts (none here, as
# `reference` pins them)
VARIANTS["dhmbpo_critic"] = VARIANTS["aligned"] + [
    "policy.value_members=5", "policy.value_layer_norm=true", "policy.critic=q", "policy.value_bounds=true",
    "policy.gamma=0.995", "policy.model_start_share=1.0", "policy.model_start_refresh=20",
    "policy.model_start_buffer=50000", "train.eval_every=2500",
]
# The Ray runtime's collection before hopper.yaml and walker2d.yaml took one env worker that sends each round as one
# chunk: four workers (four episodes side by side) sending chunks of 100 steps. Their earlier Ray rows are labelled
# `four_workers`, which reproduces them; the inline runner steps `resources.envs_per_worker` envs whatever it says.
VARIANTS["four_workers"] = ["resources.num_env_workers=4", "resources.chunk_size=100"]


def parent(variant: str) -> str | None:
    """The variant `variant` adds to: the one whose overrides are the longest proper leading part of its own
    (`shipped`, which has none, for a variant that starts afresh); None for `shipped` and for unknown names.
    The ablation table in `benchmarks/report.py` measures a variant against this one."""
    own = VARIANTS.get(variant, [])
    heads = [(len(theirs), name) for name, theirs in VARIANTS.items()
             if len(theirs) < len(own) and own[:len(theirs)] == theirs]
    return max(heads, default=(0, None))[1]


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], capture_output=True, text=True, cwd=ROOT, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "umpo_dist", "configs"],
                               capture_output=True, text=True, cwd=ROOT, timeout=5).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def termination_rule(cfg) -> str:
    return getattr(cfg.model, "termination", "learned")


def run_seed(task: str, runtime: str, overrides: list[str], seed: int, cap_s: float | None, workdir: Path,
             on_evaluation=None) -> dict:
    """One training run; returns its config and summary. `on_evaluation(cfg, step, ret, wall, diag)` is called for
    each evaluation as soon as the run has booked it, with its wall-clock and model diagnostics (empty: none)."""
    from umpo_dist.config import load
    from umpo_dist.ops.train import train

    cfg = load(ROOT / "configs" / f"{task}.yaml",
               overrides + [f"runtime={runtime}", f"train.seed={seed}", f"tracking.runs_dir={workdir / 'runs'}"])
    from mlflow.tracking import MlflowClient

    client = MlflowClient()  # the run's store (MLFLOW_TRACKING_URI, in `workdir`) keeps its artifacts beside it,
    if client.get_experiment_by_name(cfg.tracking.experiment) is None:  # not in ./mlruns of the working directory
        client.create_experiment(cfg.tracking.experiment, artifact_location=(workdir / "mlartifacts").as_uri())
    if runtime == "ray":
        from umpo_dist.runtime.ray.cluster import init_ray

        init_ray(cfg)
    marks = {"start": None, "seen": 0, "schedule": None}

    def show(evaluations, wall: float) -> None:
        """Hand on (timed at `wall`) and print the evaluations not yet shown."""
        diagnostics = marks["schedule"].diagnostics if marks["schedule"] is not None else []
        while marks["seen"] < len(evaluations):
            step, ret = evaluations[marks["seen"]]
            if on_evaluation is not None:
                on_evaluation(cfg, step, ret, wall, next((d for d in diagnostics if d["step"] == step), {}))
            print(f"  {task} {runtime} seed {seed}: step {step:>7,} return {ret:>9.1f} ({wall:.0f} s)", flush=True)
            marks["seen"] += 1

    def watch(runner) -> None:
        now = time.perf_counter()
        if marks["start"] is None:
            marks["start"] = now
        marks["schedule"] = runner.schedule
        show(runner.schedule.evaluations, now - marks["start"])
        if cap_s is not None and now - marks["start"] > cap_s:
            runner.request_stop()

    summary = train(cfg, progress=False, callbacks=[watch])
    show(summary["evaluations"], summary["wall_s"])  # those after the last round's callback (the run's last ones)
    if runtime == "ray":
        import ray

        ray.shutdown()
    return {"cfg": cfg, "summary": summary}


def append_rows(rows: list[dict], path: Path = RESULTS, columns: list[str] = COLUMNS) -> None:
    """Append `rows` to the CSV at `path` (made with a header if new; rewritten first, with the new
    columns empty, if it was written with other columns)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    if not new:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            old_rows, header = list(reader), reader.fieldnames
        if header != columns:  # rows from before a column was added: rewrite them with it empty
            with open(path, "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=columns, restval="")
                writer.writeheader()
                writer.writerows(old_rows)
    with open(path, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        if new:
            writer.writeheader()
        writer.writerows(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--env", choices=TASKS, required=True)
    p.add_argument("--runtime", choices=["inline", "ray"], default="inline")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--steps", type=int, default=20_000, help="env-step budget (train.total_env_steps)")
    p.add_argument("--variant", default="shipped", help=f"named overrides: {', '.join(VARIANTS)}")
    p.add_argument("--name", default=None, help="variant name written to the CSV (default: --variant, plus '+set' if --set)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--minutes", type=float, default=0.0, help="wall-clock cap per seed (0: none)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (inline runtime)")
    p.add_argument("--no-csv", action="store_true", help="print only")
    p.add_argument("--csv", type=Path, default=RESULTS, help="the CSV the rows go to (default: %(default)s)")
    p.add_argument("--keep", type=Path, default=None, metavar="DIR",
                   help="keep the runs (checkpoints, MLflow store DIR/mlflow.db) in DIR instead of a temporary directory")
    p.add_argument("--peer", choices=["sac"], default=None,
                   help="a model-free reference on the same protocol instead (benchmarks/peers.py; the 'peers' extra)")
    args = p.parse_args()
    if args.variant not in VARIANTS:
        p.error(f"--variant must be one of {', '.join(VARIANTS)}")
    if args.peer and (args.runtime != "inline" or args.variant != "shipped" or args.name):
        p.error("--peer runs Stable-Baselines3 alone: no --runtime, --variant or --name")

    import torch

    torch.set_num_threads(args.threads)
    overrides = VARIANTS[args.variant] + [f"train.total_env_steps={args.steps}"] + args.overrides
    name = args.name or (args.variant + ("+" + ",".join(args.overrides) if args.overrides else ""))
    commit = git_commit()
    if args.peer:
        import peers

        return peers.run(args, commit, lambda rows: append_rows(rows, args.csv))
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    with (contextlib.nullcontext(str(args.keep.resolve())) if args.keep
          else tempfile.TemporaryDirectory(prefix="umpo-learning-")) as tmp:
        work = Path(tmp)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
        finals = []
        for seed in args.seeds:
            command = shlex.join([
                ".venv/bin/python", "benchmarks/learning.py", "--env", args.env, "--runtime", args.runtime,
                "--seeds", str(seed), "--steps", str(args.steps), "--variant", args.variant,
                *(["--name", args.name] if args.name else []), *[x for o in args.overrides for x in ("--set", o)],
            ])

            def book(cfg, step, ret, wall, diag, seed=seed, command=command) -> None:
                append_rows([{"env": cfg.env.id, "runtime": args.runtime, "variant": name, "seed": seed,
                              "env_steps": step, "eval_return": f"{ret:.1f}", "wall_s": f"{wall:.1f}", "commit": commit,
                              "termination": termination_rule(cfg), "command": command,
                              **{k: f"{diag[k]:.4f}" if k in diag else "" for k in COLUMNS[-2:]}}], args.csv)

            out = run_seed(args.env, args.runtime, overrides, seed, args.minutes * 60 or None, work,
                           None if args.no_csv else book)
            s, cfg = out["summary"], out["cfg"]
            finals.append(s["final_return"])
            print(f"{cfg.env.id} {args.runtime} {name} seed {seed}: final {s['final_return']:.1f}, best "
                  f"{s['best_return']:.1f}, {s['env_steps']:,} env steps in {s['wall_s']:.0f} s; "
                  f"{s['model_updates']:,} model / {s['policy_updates']:,} policy updates; model diagnostics "
                  f"{100 * (s['diagnostics_share'] or 0):.2f}% of the wall-clock, warnings at {s['model_warnings']}",
                  flush=True)
            if s.get("devices"):  # the Ray runtime: where the learners computed and what their updates cost
                print("  learners on " + ", ".join(f"{k} {v}" for k, v in sorted(s["devices"].items())) + "; ms per update "
                      + ", ".join(f"{k} {v:.1f}" for k, v in sorted(s["update_ms"].items())) + "; busy share "
                      + ", ".join(f"{k} {v:.2f}" for k, v in sorted(s["utilisation"].items())), flush=True)
    if len(finals) > 1:
        print(f"final return over seeds {args.seeds}: {statistics.fmean(finals):.1f} ± {statistics.stdev(finals):.1f}")


if __name__ == "__main__":
    sys.exit(main())
