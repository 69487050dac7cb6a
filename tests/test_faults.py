"""Fault injection on a real local Ray cluster: actors killed mid-run, a node removed."""

import pytest
import ray

from test_distributed import FAST, ip_config
from umpo_dist.ops.checkpoint import load_checkpoint
from umpo_dist.runtime.ray.retry import call_with_retry
from umpo_dist.ops.train import train

pytestmark = pytest.mark.e2e

RUN = (*FAST, "resources.num_env_workers=2", "resources.worker_cpus=0.5", "resources.learner_cpus=0.5",
       "train.total_env_steps=1500", "train.random_steps=300", "train.model_warmup_updates=50",
       "train.checkpoint_every=500", "train.eval_every=1500", "env.eval_episodes=1")


class KillOnce:
    """A driver callback that kills one actor once the run has passed `at_steps` env steps."""

    def __init__(self, pick, at_steps=800, quiesce=False):
        self.pick, self.at_steps, self.quiesce = pick, at_steps, quiesce
        self.killed_at = None
        self.acknowledged_before = None
        self.count_after = None

    def __call__(self, driver):
        if self.killed_at is not None or driver.env_steps < self.at_steps:
            return
        if self.quiesce:
            driver.drain()  # every chunk sent so far has its acknowledgement
            self.acknowledged_before = driver._replay_total()
        ray.kill(self.pick(driver), no_restart=False)
        self.killed_at = driver.env_steps
        if self.quiesce:
            self.count_after = call_with_retry(lambda: driver.replay.stats.remote(), "stats")["total_inserted"]


def finished_consistently(summary):
    ckpt = load_checkpoint(summary["run_dir"])
    assert summary["env_steps"] >= 1500
    assert int(ckpt["replay"]["total_inserted"]) == summary["env_steps"]
    assert summary["final_return"] > 0


def test_killed_env_worker_is_replaced(local_ray, workdir):
    kill = KillOnce(lambda d: d.workers[0])
    summary = train(ip_config(*RUN), progress=False, callbacks=[kill])
    assert kill.killed_at is not None
    # Killed mid-call, the driver sees the call fail; killed while idle, its next call returns from the
    # restarted actor. Either way the driver noticed, and the run went on to its budget.
    assert summary["failures"].get("worker", 0) + summary["recoveries"].get("worker", 0) >= 1
    finished_consistently(summary)


def test_killed_replay_is_rebuilt_with_every_acknowledged_transition(local_ray, workdir):
    kill = KillOnce(lambda d: d.replay, quiesce=True)
    summary = train(ip_config(*RUN), progress=False, callbacks=[kill])
    assert kill.acknowledged_before >= 800
    assert kill.count_after == kill.acknowledged_before
    finished_consistently(summary)
    # Every acknowledgement a worker reported is in the final replay, each transition once.
    assert summary["acknowledged_in_session"] == summary["env_steps"]


def test_killed_policy_learner_restarts_from_published_weights(local_ray, workdir):
    kill = KillOnce(lambda d: d.policy_learner, at_steps=900)
    updates_at_kill = []
    summary = train(ip_config(*RUN), progress=False,
                    callbacks=[kill, lambda d: updates_at_kill.append(d.policy_updates) if kill.killed_at is None else None])
    assert kill.killed_at is not None
    assert summary["recoveries"].get("policy", 0) >= 1
    # It came back from its newest published version, not from zero, and kept learning.
    assert summary["policy_updates"] > max(updates_at_kill) > 0
    finished_consistently(summary)
