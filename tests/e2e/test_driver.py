"""The Ray driver's scheduling rules, seen in real runs: minimum chunks, stalls, checkpoint draining, stop.

Each test runs a tiny InvertedPendulum budget on the module's local Ray cluster and
watches the driver from a callback (called once per scheduling round).
"""

import pytest
from mlflow.tracking import MlflowClient

import umpo_dist.ops.train as train_mod
from test_distributed import FAST, ip_config
from umpo_dist.ops.checkpoint import load_checkpoint
from umpo_dist.ops.train import train

pytestmark = pytest.mark.e2e

TOTAL, RANDOM = 600, 200
RUN = (*FAST, "resources.num_env_workers=2", "resources.worker_cpus=0.5", "resources.learner_cpus=0.5",
       f"train.total_env_steps={TOTAL}", f"train.random_steps={RANDOM}", "train.model_warmup_updates=20",
       "train.checkpoint_every=0", f"train.eval_every={TOTAL}", "env.eval_episodes=1")


class CallLog:
    """A callback that, from the first round on, records every call the driver puts in flight.

    It swaps `driver._inflight` for a dict that notes each new entry with the schedule's state
    at that moment: (call, env steps, env steps already asked of workers, stop requested).
    """

    def __init__(self):
        self.driver = None
        self.calls = []

    def __call__(self, driver):
        if self.driver is not None:
            return
        self.driver = driver
        calls = self.calls

        class Recording(dict):
            def __setitem__(self, ref, call):
                s = driver.schedule
                in_flight = sum(c.steps for c in self.values())
                calls.append((call, s.env_steps, in_flight, s.stop_requested))
                super().__setitem__(ref, call)

        driver._inflight = Recording(driver._inflight)

    def worker_calls(self):
        return [entry for entry in self.calls if entry[0].kind == "worker"]


def test_worker_calls_after_the_random_phase_are_never_below_the_minimum_chunk(local_ray, workdir):
    """After the random steps, a worker call takes at least min(chunk // 4, budget left, tolerance) steps.

    Two learner updates per call (at 0.2 updates per step: 10 env steps' worth) make the
    ratios free the env steps in small increments, so allowances below a quarter chunk
    occur and the rule has to hold them back until they have grown.
    """
    chunk, tolerance = 100, 60
    minimum = chunk // 4
    cfg = ip_config(*RUN, f"resources.chunk_size={chunk}", f"resources.ratio_tolerance={tolerance}",
                    "train.updates_per_call=2")
    log = CallLog()
    asked = []  # (allowed by the ratios, budget left, the schedule's answer) of every non-random request

    def watch_chunks(driver):
        s = driver.schedule
        if "next_chunk" in vars(s):
            return
        real = s.next_chunk

        def next_chunk(in_flight_steps, chunk_size):
            planned = s.env_steps + in_flight_steps
            answer = real(in_flight_steps, chunk_size)
            if planned >= RANDOM:
                allowed = min(s.model_limiter.env_steps_allowed(planned, s.model_updates),
                              s.policy_limiter.env_steps_allowed(planned, s.policy_updates))
                asked.append((allowed, TOTAL - planned, answer.steps if answer else None))
            return answer

        s.next_chunk = next_chunk

    summary = train(cfg, progress=False, callbacks=[log, watch_chunks])
    assert summary["env_steps"] == TOTAL

    calls = [(call.steps, env, in_flight) for call, env, in_flight, _ in log.worker_calls() if env + in_flight >= RANDOM]
    print("worker calls after the random phase (steps, env steps, in flight):", calls)
    assert calls
    for steps, env, in_flight in calls:
        budget = TOTAL - env - in_flight
        assert min(minimum, budget, tolerance) <= steps <= min(chunk, budget), (steps, env, in_flight)
    # The rule was under pressure: the ratios allowed some steps, fewer than the minimum, and the
    # schedule sent nothing then; what it did send was whatever the ratios allowed, up to a chunk.
    held_back = [(allowed, budget) for allowed, budget, answer in asked if 0 < allowed < min(minimum, budget)]
    print("held back (allowed, budget):", held_back)
    assert held_back
    assert all(answer is None for allowed, budget, answer in asked if 0 < allowed < min(minimum, budget))
    assert all(answer == min(chunk, allowed, budget) for allowed, budget, answer in asked if answer is not None)
    # Every call the driver sent was acknowledged, and nothing more was collected.
    assert sum(call.steps for call, *_ in log.worker_calls()) == summary["env_steps"]
    # Chunks go to the workers in turn: the allowance does not always go to worker 0.
    workers = [call.index for call, env, in_flight, _ in log.worker_calls() if env + in_flight >= RANDOM]
    print("workers of the calls after the random phase:", workers)
    assert min(workers.count(0), workers.count(1)) >= len(workers) // 4, workers


def test_a_schedule_that_allows_nothing_is_a_stall_error(local_ray, workdir):
    """Ratios that can never be met cannot be configured (the ranges forbid 0): make the schedule
    refuse every worker chunk and every learner update from the first round on."""

    def allow_nothing(driver):
        s = driver.schedule
        s.next_chunk = lambda *args, **kwargs: None
        s.model_updates_allowed = lambda: 0
        s.policy_updates_allowed = lambda: 0

    with pytest.raises(RuntimeError, match="stalled"):
        train(ip_config(*RUN), progress=False, callbacks=[allow_nothing])
    runs = MlflowClient().search_runs(MlflowClient().get_experiment_by_name("umpo-dist").experiment_id)
    assert [r.info.status for r in runs] == ["FAILED"]


def test_checkpoints_are_written_with_nothing_in_flight(local_ray, workdir, monkeypatch):
    every = 200
    log = CallLog()
    saved = []
    real_save = train_mod.save_checkpoint

    def save(run_dir, env_steps, replay_state, model_state, policy_state, counters, meta):
        driver = log.driver
        saved.append({
            "env_steps": env_steps,
            "schedule_env_steps": driver.schedule.env_steps,
            "calls_in_flight": [c.kind for c in driver._inflight.values() if c.kind != "eval"],
            "replay_total": int(replay_state["total_inserted"]),
            "model_updates": (model_state["updates"], counters["model_updates"], driver.schedule.model_updates),
            "policy_updates": (policy_state["updates"], counters["policy_updates"], driver.schedule.policy_updates),
        })
        return real_save(run_dir, env_steps, replay_state, model_state, policy_state, counters, meta)

    monkeypatch.setattr(train_mod, "save_checkpoint", save)
    cfg = ip_config(*RUN, f"train.checkpoint_every={every}")
    summary = train(cfg, progress=False, callbacks=[log])
    print("checkpoints:", saved)

    # Two periodic checkpoints (due at 200 and 400 env steps; written once the chunks asked for by
    # then were in) and the final one at the budget.
    steps = [c["env_steps"] for c in saved]
    chunk, workers = cfg.resources.chunk_size, cfg.resources.num_env_workers
    assert len(steps) == 3 and steps[-1] == TOTAL, steps
    for due, step in zip((every, 2 * every), steps):
        assert due <= step < due + workers * chunk, steps
    for c in saved:
        # Drained: no worker or learner call in flight, so the replay, the learners and the counters agree.
        assert c["calls_in_flight"] == [], c
        assert c["replay_total"] == c["env_steps"] == c["schedule_env_steps"], c
        assert len(set(c["model_updates"])) == 1 and len(set(c["policy_updates"])) == 1, c
    # The periodic ones were drained mid-run: collection went on after each of them.
    for step in steps[:-1]:
        assert any(call.kind == "worker" and env >= step for call, env, _, _ in log.calls), step
    assert load_checkpoint(summary["run_dir"])["counters"]["env_steps"] == TOTAL


def test_request_stop_from_a_callback_ends_the_run_early(local_ray, workdir):
    stop_at = 300
    log = CallLog()
    stopped = []

    def stop(driver):
        if not stopped and driver.schedule.env_steps >= stop_at:
            driver.request_stop()
            stopped.append(driver.schedule.env_steps)

    summary = train(ip_config(*RUN), progress=False, callbacks=[log, stop])
    print("stopped at", stopped, "summary env steps", summary["env_steps"], summary["evaluations"])
    assert stopped
    # The calls in flight at the stop finished; nothing new was sent to a worker after it.
    assert not [call for call, _, _, requested in log.worker_calls() if requested]
    assert stopped[0] <= summary["env_steps"] < TOTAL
    # The run ended with an evaluation of the policy at the step it stopped at, and a checkpoint there.
    assert summary["evaluations"][-1][0] == summary["env_steps"]
    assert [step for step, _ in summary["evaluations"]] == [0, summary["env_steps"]]
    ckpt = load_checkpoint(summary["run_dir"])
    assert ckpt["counters"]["env_steps"] == summary["env_steps"] == int(ckpt["replay"]["total_inserted"])
