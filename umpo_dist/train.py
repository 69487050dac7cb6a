"""A training run from start to end: run directory, tracking, runtime, checkpoints, artifacts.

Both runtimes — the distributed driver and the inline runner — expose the same
`state()`/`load_state()`/`run()` surface, so checkpoints, resume and tracking are
written once, here.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import torch

from . import config as config_mod
from .checkpoint import CheckpointError, export_policy, load_checkpoint, resolve_checkpoint, save_checkpoint
from .config import Config, ConfigError
from .devices import set_threads
from .envs import EnvSpec, env_spec
from .progress import Progress
from .tracking import Tracker

log = logging.getLogger(__name__)


def checkpoint_meta(cfg: Config, spec: EnvSpec) -> dict:
    """What a checkpoint must agree with to be loaded into a run."""
    return {
        "env_id": spec.env_id,
        "obs_dim": spec.obs_dim,
        "action_dim": spec.action_dim,
        "ensemble_size": cfg.model.ensemble_size,
        "model_hidden": [cfg.model.hidden_layers, cfg.model.hidden_size],
        "policy_hidden": [cfg.policy.hidden_layers, cfg.policy.hidden_size],
    }


def find_run_dir(resume: str, runs_dir: str) -> Path:
    """`resume` is a run directory, or an MLflow run id under `runs_dir`."""
    for candidate in (Path(resume), Path(runs_dir) / resume):
        if (candidate / "run.json").is_file():
            return candidate
    raise CheckpointError(f"cannot resume '{resume}': no run directory with a run.json there or under '{runs_dir}/'")


def init_ray(cfg: Config, address: str | None):
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
    else:
        r = cfg.resources
        needed = r.num_env_workers * r.worker_cpus + 2 * r.learner_cpus
        cores = os.cpu_count() or 1
        if needed > cores:
            log.warning("the run asks for %.1f CPUs and this machine has %d: actors will share cores", needed, cores)
        # A local run binds the dashboard to loopback only.
        # address="local": a new cluster of our own, even if another one runs on this machine.
        ray.init(address="local", num_cpus=max(cores, int(needed + 0.999)), dashboard_host="127.0.0.1",
                 include_dashboard=False)


def learning_curve_png(path: Path, evaluations, episodes, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    if episodes:
        xs, ys = zip(*episodes)
        ax.plot(xs, ys, ".", alpha=0.3, markersize=3, label="training episodes")
    if evaluations:
        xs, ys = zip(*evaluations)
        ax.plot(xs, ys, "o-", label="evaluation (mean action)")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def train(
    cfg: Config | None,
    address: str | None = None,
    resume: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    progress: bool = True,
    callbacks: tuple = (),
) -> dict:
    """Run (or resume) a training run; returns the summary, including `run_id` and `run_dir`."""
    run_id = None
    ckpt = None
    if resume is not None:
        runs_dir = cfg.tracking.runs_dir if cfg else "runs"
        run_dir = find_run_dir(resume, runs_dir)
        run_id = json.loads((run_dir / "run.json").read_text())["run_id"]
        if cfg is None:
            cfg = config_mod.load(run_dir / "config.yaml", overrides)
        ckpt_path = resolve_checkpoint(run_dir)
    if cfg is None:
        raise ConfigError("a config file is needed unless --resume is given")
    spec = env_spec(cfg.env.id)
    meta = checkpoint_meta(cfg, spec)
    if resume is not None:
        ckpt = load_checkpoint(ckpt_path, meta)  # verified whole before anything starts

    set_threads(cfg.resources.learner_cpus)
    tracker = Tracker(cfg, run_id)
    run_dir = (Path(cfg.tracking.runs_dir) / tracker.run_id).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(config_mod.dump(cfg))
    (run_dir / "run.json").write_text(json.dumps({"run_id": tracker.run_id, "tracking_uri": tracker.uri}))
    try:
        if cfg.runtime == "inline":
            from .inline import InlineRunner

            runner = InlineRunner(cfg, tracker.log)
            tracker.set_tags({"device": "cpu"})
        else:
            init_ray(cfg, address)
            from .distributed.driver import Driver

            runner = Driver(cfg, spec, run_dir, tracker.log)
            runner.callbacks.extend(callbacks)
            tracker.set_tags({"device": ",".join(sorted(set(runner.devices.values())))})
    except BaseException:
        tracker.end("FAILED")
        raise
    if ckpt is not None:
        runner.load_state(ckpt["replay"], ckpt["model"], ckpt["policy"], ckpt["counters"])
        tracker.set_tags({"resumed_from": str(ckpt["path"]), "resumed_at_env_steps": runner.env_steps})
        log.info("resumed run %s at %d env steps", tracker.run_id, runner.env_steps)

    newest_policy: dict = {}

    def checkpoint(r) -> Path:
        state = r.state()
        newest_policy["weights"] = state["policy"]["policy"]
        path = save_checkpoint(run_dir, r.env_steps, state["replay"], state["model"], state["policy"],
                               {**state["counters"], "torch_rng": torch.get_rng_state().tolist()}, meta)
        r.checkpoint_written(int(state["replay"]["total_inserted"]))
        tracker.log({"checkpoint/env_steps": r.env_steps}, r.env_steps)
        return path

    bar = Progress(cfg.train.total_env_steps) if progress else None
    try:
        summary = runner.run(checkpoint=checkpoint, progress=bar)
    except KeyboardInterrupt:
        if bar:
            bar.close()
        print("\ninterrupted: writing a checkpoint ...", file=sys.stderr)
        runner.drain()
        path = checkpoint(runner)
        tracker.end("KILLED")
        print(f"checkpoint at {path}; continue with: umpo train --resume {tracker.run_id}", file=sys.stderr)
        raise
    except BaseException:
        tracker.end("FAILED")
        raise
    if bar:
        bar.close()
    final = checkpoint(runner)
    policy_file = export_policy(run_dir / "policy.pt", newest_policy["weights"], spec.env_id, spec.obs_dim, spec.action_low,
                                spec.action_high, cfg.policy.hidden_layers, cfg.policy.hidden_size)
    curve = learning_curve_png(run_dir / "learning_curve.png", runner.evaluations, runner.episodes, cfg.env.id)
    summary_metrics = {f"summary/{k}": v for k, v in summary.items() if isinstance(v, (int, float)) and v is not None}
    tracker.log(summary_metrics, runner.env_steps)
    tracker.log_artifact(final, "checkpoint")
    tracker.log_artifact(policy_file, "policy")
    tracker.log_text(POLICY_README.format(env_id=spec.env_id), "policy/README.md")
    tracker.log_artifact(curve)
    tracker.end("FINISHED")
    summary.update({"run_id": tracker.run_id, "run_dir": str(run_dir), "checkpoint": str(final),
                    "policy_file": str(policy_file), "tracking_uri": tracker.uri})
    return summary


POLICY_README = """# The trained policy

`policy.pt` holds the policy's weights and the sizes it was built with
(environment `{env_id}`). Load it and act:

```python
import gymnasium as gym
from umpo_dist.checkpoint import load_policy

policy = load_policy("policy.pt")
env = gym.make("{env_id}")
obs, _ = env.reset(seed=0)
action = policy.act(obs[None], deterministic=True)[0]
```

or run evaluation episodes from the command line:
`umpo evaluate path/to/policy.pt --episodes 10` (a checkpoint directory works too).
The file is read with `torch.load(weights_only=True)`.
"""
