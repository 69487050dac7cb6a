"""The inline runner (one process, no Ray): it learns InvertedPendulum-v5, and an interrupted run resumes."""

from pathlib import Path

import numpy as np
import pytest
import torch

from umpo_dist import config
from umpo_dist.runtime.inline import InlineRunner

ROOT = Path(__file__).resolve().parents[2]  # the repository


def test_inline_runner_solves_inverted_pendulum_within_5000_steps():
    torch.set_num_threads(1)
    cfg = config.load(ROOT / "configs" / "inverted_pendulum.yaml",
                      ["runtime=inline", "train.total_env_steps=5000", "train.stop_at_return=900", "train.seed=0"])
    logged = []
    runner = InlineRunner(cfg, lambda m, step: logged.append((step, m)))
    summary = runner.run()
    assert summary["evaluations"][0][0] == 0
    assert summary["evaluations"][0][1] < 100  # the initial policy drops the pole quickly
    assert summary["best_return"] >= 900, summary["evaluations"]
    assert summary["env_steps"] <= 5000
    # The update-to-data ratios were held: 0.5 model and 1.0 policy updates per env step after warm-up.
    assert abs(summary["model_ratio"] - 0.5) < 0.01
    assert abs(summary["policy_ratio"] - 1.0) < 0.01
    assert any("model/val_nll" in m for _, m in logged)
    # Every gradient update was timed, under its learner's name (the figures: benchmarks/distributed_vs_inline.py).
    assert dict(runner.timer.count) == {"model_learner": summary["model_updates"],
                                        "policy_learner": summary["policy_updates"]}
    assert set(summary["update_ms"]) == {"model_learner", "policy_learner"}
    assert all(ms > 0 for ms in summary["update_ms"].values()), summary["update_ms"]


# -- Ctrl-C and resume through `train` -------------------------------------------------------------------
FAST = ["runtime=inline", "env.id=InvertedPendulum-v5", "env.eval_episodes=2",
        "model.ensemble_size=3", "model.elites=2", "model.hidden_size=32", "model.hidden_layers=2", "policy.hidden_size=32", "policy.start_states=32",
        "train.random_steps=200", "train.model_warmup_updates=20", "train.total_env_steps=600",
        "train.checkpoint_every=300", "tracking.log_every_s=0", "tracking.experiment=umpo-test-inline-resume"]


def test_an_interrupted_inline_run_checkpoints_and_resumes_where_it_stopped(workdir, capfd):
    from mlflow.tracking import MlflowClient

    from umpo_dist.devices import cpu_kind
    from umpo_dist.ops.checkpoint import load_checkpoint
    from umpo_dist.ops.train import train

    cfg = config.from_dict({}, FAST)
    interrupted_at = []

    def ctrl_c(runner):
        if runner.schedule.env_steps >= 300:
            interrupted_at.append(runner.schedule.env_steps)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False, callbacks=[ctrl_c])
    assert interrupted_at == [300]
    (run_dir,) = (workdir / "runs").iterdir()
    run_id = run_dir.name
    assert f"continue with: umpo train --resume {run_id}" in capfd.readouterr().err
    client = MlflowClient()
    assert client.get_run(run_id).info.status == "KILLED"

    # The Ctrl-C checkpoint: at the interrupted step, the replay holds exactly those transitions.
    first = load_checkpoint(run_dir)
    assert first["manifest"]["env_steps"] == 300 and first["path"].name.startswith("step_0000000300")
    replay = first["replay"]
    assert int(replay["total_inserted"]) == 300 and len(replay["reward"]) == 300
    np.testing.assert_array_equal(replay["global_index"], np.arange(300))
    counters = first["counters"]
    # warm-up + 0.5 and 1.0 updates per env step past the 200 random ones
    assert (counters["env_steps"], counters["model_updates"], counters["policy_updates"]) == (300, 70, 100)
    assert first["model"]["updates"] == 70 and first["policy"]["updates"] == 100
    assert [step for step, _ in counters["evaluations"]] == [0]

    resumed_with = []

    def note(runner):
        if not resumed_with:
            resumed_with.append((runner.schedule.env_steps, runner.model_learner.updates, runner.objective.updates,
                                 runner.replay.total_inserted))

    summary = train(None, resume=run_id, progress=False, callbacks=[note])
    assert resumed_with == [(300, 70, 100, 300)]  # the learners continue from the checkpoint, not from zero
    assert summary["run_id"] == run_id and Path(summary["run_dir"]) == run_dir.resolve()
    assert summary["env_steps"] == 600
    assert (summary["model_updates"], summary["policy_updates"]) == (20 + 200, 400)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["resumed_at_env_steps"] == "300"
    assert run.data.tags["device"] == "cpu" and run.data.tags["learner.cpu"] == cpu_kind()  # inline: this process
    # periodic at 300, Ctrl-C at 300, final at 600: one run's history
    assert sorted(m.step for m in client.get_metric_history(run_id, "checkpoint/env_steps")) == [300, 300, 600]

    final = load_checkpoint(summary["checkpoint"])
    assert final["manifest"]["env_steps"] == 600
    assert final["model"]["updates"] == 220 and final["policy"]["updates"] == 400
    assert (final["counters"]["model_updates"], final["counters"]["policy_updates"]) == (220, 400)
    assert [step for step, _ in final["counters"]["evaluations"]] == [0, 600]
    done = final["replay"]
    assert int(done["total_inserted"]) == 600 and len(done["reward"]) == 600
    np.testing.assert_array_equal(done["global_index"], np.arange(600))
    for key in ("obs", "action", "reward", "next_obs", "terminated", "truncated", "bootstrap", "holdout"):
        np.testing.assert_array_equal(done[key][:300], replay[key], err_msg=key)
    assert not np.array_equal(done["obs"][300:310], replay["obs"][:10])

    # The exported policy is the one that scored the best evaluation (one before the resume counts):
    # evaluated again the same way, it gives the same return.
    from umpo_dist.envs.evaluation import evaluate_policy
    from umpo_dist.ops.artifacts import exported_evaluation, load_policy

    best = max(summary["evaluations"], key=lambda e: e[1])  # max keeps the first of equal returns
    assert exported_evaluation(summary["policy_file"]) == summary["policy_evaluation"] == best
    again = evaluate_policy(load_policy(summary["policy_file"]), "InvertedPendulum-v5", 2, 10_000 + cfg.train.seed,
                            cfg.env.max_episode_steps)
    assert again["return_mean"] == best[1]


def test_a_long_round_of_model_updates_logs_its_held_out_evaluation():
    """With `train.train_every` in the hundreds a round holds ~100 model updates; the held-out evaluation
    inside it (every 7th update, so rarely the round's last) reaches the log with the round's other figures."""
    torch.set_num_threads(1)
    cfg = config.from_dict({}, [*FAST, "train.train_every=200", "model.validate_every=7", "train.eval_every=10000"])
    logged = []
    InlineRunner(cfg, lambda m, step: logged.append((step, m))).run()
    rounds = [(step, m) for step, m in logged if "model/train_nll" in m]
    assert [step for step, _ in rounds] == [200, 400, 600], [step for step, _ in logged]
    for step, m in rounds:
        assert np.isfinite(m["model/val_nll"]), (step, m)


def test_bursts_of_updates_restart_the_policy_learner_on_each_new_model():
    """`policy.restart_every` in the inline runner: rounds of 200 env steps bring 100 model updates each (after
    the 20 warm-up ones at 200), so the policy learner restarts on the models of 400 (120 updates) and 600 (220)."""
    torch.set_num_threads(1)
    cfg = config.from_dict({}, [*FAST, "train.train_every=200", "train.eval_every=10000", "policy.restart_every=100",
                                "policy.critic_warmup=10"])
    logged = []
    runner = InlineRunner(cfg, lambda m, step: logged.append((step, m)))
    runner.run()
    assert [(step, m["policy/restarted_at"]) for step, m in logged if "policy/objective" in m] == [(400, 120), (600, 220)]
    assert runner.objective.critic_only == 0 and runner.objective.updates == 400


def test_a_round_logs_the_mean_of_its_updates_figures_as_a_ray_learner_call_does():
    """Each round's log holds, per key, the mean over the round's policy (and model) updates that reported
    it, as the Ray learners report each call (`runtime.learner_metrics`), not the last update's figures."""
    torch.set_num_threads(1)
    cfg = config.from_dict({}, [*FAST, "train.train_every=200", "train.eval_every=10000"])
    logged, seen = [], []
    runner = InlineRunner(cfg, lambda m, step: logged.append((step, dict(m))))
    update = runner.objective.update

    def recorded(batch):
        seen.append((runner.schedule.env_steps, update(batch)))
        return seen[-1][1]

    runner.objective.update = recorded
    runner.run()
    rounds = [(step, m) for step, m in logged if "policy/objective" in m]
    assert [step for step, _ in rounds] == [400, 600]  # none while the random steps end at 200
    for step, m in rounds:
        mine = [row for at, row in seen if at == step]
        assert len(mine) > 1 and len({row["policy/objective"] for row in mine}) > 1  # a mean of differing figures
        for key in ("policy/objective", "policy/alpha", "policy/value_loss"):
            assert m[key] == pytest.approx(np.mean([row[key] for row in mine]), rel=1e-9), (step, key)
