"""End-to-end runs of the distributed runtime: real Ray actors, MuJoCo and MLflow."""

import json
from pathlib import Path

import pytest
import ray
from mlflow.tracking import MlflowClient

from umpo_dist import config
from umpo_dist.devices import cpu_kind
from umpo_dist.ops.checkpoint import load_checkpoint
from umpo_dist.ops.train import train

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def ip_config(*overrides):
    return config.load(ROOT / "configs" / "inverted_pendulum.yaml", list(overrides))


def expected_device() -> str:
    """The device the learners compute on under `resources.learner_gpus=auto`: `cuda` when the
    cluster has a GPU to share between them (`learner_gpus`), else the CPU."""
    return "cuda" if ray.cluster_resources().get("GPU", 0) >= 1 else "cpu"


def artifact_paths(client, run_id, path=None):
    out = []
    for f in client.list_artifacts(run_id, path):
        out.extend(artifact_paths(client, run_id, f.path) if f.is_dir else [f.path])
    return out


def test_distributed_run_solves_inverted_pendulum_and_is_tracked(local_ray, workdir):
    cfg = ip_config(
        "resources.num_env_workers=2", "resources.worker_cpus=0.5", "resources.learner_cpus=1",
        "train.total_env_steps=10000", "train.stop_at_return=900", "train.eval_every=500",
        "train.checkpoint_every=0", "tracking.log_every_s=2",
    )
    summary = train(cfg, progress=False)

    # Learning: solved within the 10k-step budget, and better than the initial policy.
    initial = summary["evaluations"][0]
    assert initial[0] == 0
    assert summary["best_return"] >= 900, summary["evaluations"]
    assert summary["best_return"] > initial[1] + 500
    assert summary["env_steps"] <= 10000
    # Asynchronous weight exchange: versions advanced, workers acted with several policies.
    assert summary["model_updates"] > cfg.train.model_warmup_updates
    assert summary["policy_updates"] > 0
    assert summary["policy_versions_used"] > 1
    # The rate limiter held the target ratios (0.5 model, 1.0 policy updates per env step): learners
    # never ran ahead of their targets, and at the stop they lagged by at most the tolerance.
    steps = summary["env_steps"] - cfg.train.random_steps
    slack = cfg.resources.ratio_tolerance + cfg.resources.chunk_size
    assert 0.5 * (steps - slack) <= summary["model_updates"] - cfg.train.model_warmup_updates <= 0.5 * steps
    assert 1.0 * (steps - slack) <= summary["policy_updates"] <= 1.0 * steps
    device = expected_device()
    assert summary["devices"] == {"model_learner": device, "policy_learner": device}
    # and the kind of CPU each learner's process ran on (this machine's: one node here)
    assert summary["learner_cpus"] == dict.fromkeys(summary["devices"], cpu_kind())
    # Utilisation: each role's share of wall-clock inside its work since its first call; the roles
    # take turns with the learners on 2 cores, so only the bounds are asserted here (the figures
    # themselves are benchmarks/distributed_vs_inline.py's).
    use = summary["utilisation"]
    assert set(use) == {"policy_learner", "model_learner", "env_workers",
                        "policy_learner_data_wait", "model_learner_data_wait"}, use
    assert all(0.0 < use[role] <= 1.01 for role in ("policy_learner", "model_learner", "env_workers")), use
    for role in ("policy_learner", "model_learner"):  # blocked on the replay: part of the busy time
        assert 0.0 <= use[f"{role}_data_wait"] <= use[role], use

    # Milliseconds per gradient update, the compute alone, as each learner actor timed and reported it.
    assert set(summary["update_ms"]) == {"policy_learner", "model_learner"}, summary["update_ms"]
    assert all(ms > 0 for ms in summary["update_ms"].values()), summary["update_ms"]

    client = MlflowClient()
    run = client.get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["env.id"] == "InvertedPendulum-v5"
    assert run.data.params["resources.num_env_workers"] == "2"
    for key in ("episode/return", "eval/return", "model/train_nll", "model/val_nll", "model/val_mse",
                "policy/epistemic", "policy/objective", "policy/return_mean", "policy/return_std",
                "policy/value_loss", "policy/entropy", "rate/env_steps_per_s", "rate/model_updates_per_s",
                "rate/policy_updates_per_s", "staleness/policy_versions", "staleness/model_versions",
                "utilisation/policy_learner", "utilisation/model_learner", "utilisation/env_workers",
                "utilisation/policy_learner_data_wait", "update_ms/policy_learner", "update_ms/model_learner",
                # the model diagnostics, computed in the evaluation task from the published model
                "diagnostics/calibration_error", "diagnostics/spread_error_corr", "diagnostics/gap_share",
                "diagnostics/imagined_return", "diagnostics/real_return", "diagnostics/member_spread",
                "diagnostics/termination_elsewhere"):
        assert key in run.data.metrics, key
    evals = client.get_metric_history(run.info.run_id, "eval/return")
    assert max(m.value for m in evals) >= 900
    # Each evaluation records the policy's update count beside its env step: none at step 0, then rising.
    versions = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "eval/policy_updates"))
    assert len(versions) == len(evals) and versions[0] == (0, 0)
    assert [v for _, v in versions] == sorted(v for _, v in versions) and versions[-1][1] > 0
    # and the mean length of its episodes (InvertedPendulum: 1000 when it balances to the limit)
    lengths = dict((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "eval/length"))
    assert sorted(lengths) == sorted(m.step for m in evals)
    assert all(1 <= v <= 1000 for v in lengths.values())
    assert all(lengths[m.step] == 1000 for m in evals if m.value >= 1000)
    for tag in ("umpo.version", "ray.version", "device"):
        assert tag in run.data.tags
    assert run.data.tags["device"] == device
    assert run.data.tags["learner.cpu"] == cpu_kind()
    artifacts = artifact_paths(client, run.info.run_id)
    for path in ("config.yaml", "learning_curve.png", "model_diagnostics.png", "policy/policy.pt", "policy/README.md",
                 "checkpoint/manifest.json", "checkpoint/replay.npz"):
        assert path in artifacts, artifacts

    # The exported policy is the one that scored the best evaluation (not whatever the learner held
    # when the run stopped); it loads, and balances the pendulum on its own from other start states.
    from umpo_dist.envs.evaluation import evaluate_policy
    from umpo_dist.ops.artifacts import load_policy

    assert summary["policy_evaluation"][1] == summary["best_return"]
    policy = load_policy(summary["policy_file"])
    again = evaluate_policy(policy, "InvertedPendulum-v5", cfg.env.eval_episodes, 10_000 + cfg.train.seed,
                            cfg.env.max_episode_steps)
    assert again["return_mean"] == pytest.approx(summary["best_return"], abs=1.0)
    assert evaluate_policy(policy, "InvertedPendulum-v5", 2, seed=123)["return_mean"] >= 900


# Small networks and low update ratios: these tests are about plumbing, not learning.
FAST = ("model.hidden_size=64", "model.hidden_layers=2", "policy.hidden_size=64", "policy.start_states=32",
        "train.model_updates_per_step=0.2", "train.policy_updates_per_step=0.2")


def test_resume_continues_counters_replay_and_mlflow_run(local_ray, workdir):
    cfg = ip_config(
        *FAST,
        "resources.num_env_workers=2", "resources.worker_cpus=0.5", "train.total_env_steps=1200",
        "train.random_steps=300", "train.model_warmup_updates=50", "train.checkpoint_every=600",
        "train.eval_every=600", "env.eval_episodes=1",
    )
    first = train(cfg, progress=False)
    ckpt = load_checkpoint(first["run_dir"])
    assert ckpt["counters"]["env_steps"] == 1200
    assert int(ckpt["replay"]["total_inserted"]) == 1200
    assert len(ckpt["replay"]["reward"]) == 1200

    second = train(None, resume=first["run_id"], overrides=["train.total_env_steps=1800"], progress=False)
    assert second["run_id"] == first["run_id"]
    assert second["env_steps"] == 1800
    assert second["model_updates"] > first["model_updates"]
    assert second["policy_updates"] > first["policy_updates"]
    ckpt2 = load_checkpoint(second["run_dir"])
    # The replay kept everything from before the resume, in order, and added the new steps.
    assert int(ckpt2["replay"]["total_inserted"]) == 1800
    assert (ckpt2["replay"]["global_index"][:1200] == ckpt["replay"]["global_index"]).all()
    assert (ckpt2["replay"]["obs"][:1200] == ckpt["replay"]["obs"]).all()
    run = MlflowClient().get_run(first["run_id"])
    assert run.data.tags["resumed_at_env_steps"] == "1200"
    steps = [m.step for m in MlflowClient().get_metric_history(first["run_id"], "eval/return")]
    assert min(steps) == 0 and max(steps) == 1800
    assert json.loads((Path(second["run_dir"]) / "run.json").read_text())["run_id"] == first["run_id"]
