"""A training run from start to end: run directory, tracking, runtime, checkpoints, artifacts.

Both runtimes — the distributed driver and the inline runner — are runners with the
same `state()`/`load_state()`/`run()` surface and a shared `Schedule`, so
checkpoints, resume and tracking are written once, here.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from umpo_dist import config as config_mod
from umpo_dist.config import Config, ConfigError
from umpo_dist.devices import keep_freed_memory, set_threads
from umpo_dist.diagnostics.plots import model_diagnostics_png
from umpo_dist.envs.spec import EnvSpec, env_spec
from umpo_dist.ops.artifacts import POLICY_README, export_policy, exported_evaluation, learning_curve_png
from umpo_dist.ops.checkpoint import CheckpointError, load_checkpoint, resolve_checkpoint, save_checkpoint
from umpo_dist.ops.mlflow_model import log_policy_model
from umpo_dist.ops.progress import Progress
from umpo_dist.ops.tracking import Tracker
from umpo_dist.runtime import make_runner

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


def train(
    cfg: Config | None,
    address: str | None = None,
    resume: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    progress: bool = True,
    callbacks: tuple = (),
) -> dict:
    """Run (or resume) a training run; returns the summary, including `run_id` and `run_dir`.

    `callbacks` are called with the runner once per scheduling round (Ray runtime).
    """
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
    keep_freed_memory()  # inline, the learners compute in this process (with Ray, in their actors: learners.py)
    tracker = Tracker(cfg, run_id)
    run_dir = (Path(cfg.tracking.runs_dir) / tracker.run_id).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(config_mod.dump(cfg))
    (run_dir / "run.json").write_text(json.dumps({"run_id": tracker.run_id, "tracking_uri": tracker.uri}))
    try:
        runner = make_runner(cfg, spec, run_dir, tracker.log, address)
        if callbacks:
            runner.callbacks.extend(callbacks)
        tracker.set_tags({tag: ",".join(sorted(set(by_role.values())))  # each distinct value once
                          for tag, by_role in (("device", runner.devices), ("learner.cpu", runner.learner_cpus))})
    except BaseException:
        tracker.end("FAILED")
        raise
    s = runner.schedule
    if ckpt is not None:
        runner.load_state(ckpt["replay"], ckpt["model"], ckpt["policy"], ckpt["counters"])
        tracker.set_tags({"resumed_from": str(ckpt["path"]), "resumed_at_env_steps": s.env_steps})
        log.info("resumed run %s at %d env steps", tracker.run_id, s.env_steps)

    newest_policy: dict = {}
    policy_path = run_dir / "policy.pt"

    def export_best(weights: dict, step: int, ret: float) -> None:
        # Written when an evaluation beats all earlier ones (of this run, resumes included), so the
        # exported policy is the one that scored the best return, not whatever the learner held last.
        export_policy(policy_path, weights, spec, cfg.policy, (step, ret))

    runner.on_best = export_best
    bar = Progress(cfg.train.total_env_steps) if progress else None

    def warn(step: int, text: str) -> None:
        # logged by the runtime already; here the user's screen and the MLflow run get it too
        if bar:
            bar.note(f"WARNING at env step {step}: {text}")
        tracker.set_tags({"umpo.warning.model_exploitation": f"env step {step}: {text}"[:5000]})

    runner.on_warning = warn

    def checkpoint(r) -> Path:
        state = r.state()
        newest_policy["weights"] = state["policy"]["policy"]
        path = save_checkpoint(run_dir, s.env_steps, state["replay"], state["model"], state["policy"],
                               state["counters"], meta)
        r.checkpoint_written(int(state["replay"]["total_inserted"]))
        tracker.log({"checkpoint/env_steps": s.env_steps}, s.env_steps)
        return path

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
    try:  # what a finished run leaves; a failure here still ends the MLflow run (FAILED), not RUNNING
        tracker.stop_writer()  # every metric in the store before the policy model links those at its step
        final = checkpoint(runner)
        if not policy_path.exists() or exported_evaluation(policy_path)[0] is None:
            # resumed from a run whose policy file is gone (or predates evaluations in the file), none better since
            export_policy(policy_path, newest_policy["weights"], spec, cfg.policy, s.evaluations[-1])
        policy_file = policy_path
        best_step, best_return = exported_evaluation(policy_path)
        curve = learning_curve_png(run_dir / "learning_curve.png", s.evaluations, s.episodes, cfg.env.id)
        if s.diagnostics:
            tracker.log_artifact(model_diagnostics_png(run_dir / "model_diagnostics.png", s.diagnostics,
                                                       s.calibration_curve, cfg.env.id))
        summary_metrics = {f"summary/{k}": v for k, v in summary.items() if isinstance(v, (int, float)) and v is not None}
        tracker.log(summary_metrics, s.env_steps)
        tracker.log_artifact(final, "checkpoint")
        # The file and its README as run artifacts under `policy/`, beside the MLflow model of the same
        # name: `runs:/<run id>/policy` resolves to both (MLflow 3 merges a run's artifacts at a path with
        # the run's logged model of that name).
        tracker.log_artifact(policy_file, "policy")
        tracker.log_text(POLICY_README.format(env_id=spec.env_id, eval_step=best_step, eval_return=best_return,
                                              run_id=tracker.run_id), "policy/README.md")
        model = log_policy_model(policy_file, tracker.run_id, spec, (best_step, best_return), tracker.uri,
                                 cfg.tracking.register_model)
        tracker.log_artifact(curve)
    except BaseException:
        tracker.end("FAILED")
        raise
    tracker.end("FINISHED")
    summary.update({"run_id": tracker.run_id, "run_dir": str(run_dir), "checkpoint": str(final),
                    "policy_file": str(policy_file), "policy_evaluation": (best_step, best_return),
                    "policy_model_uri": model.model_uri, "policy_registered_version": model.registered_model_version,
                    "tracking_uri": tracker.uri})
    return summary
