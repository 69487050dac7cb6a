"""The Ray driver's scheduling rules, seen in real runs: minimum chunks, stalls, checkpoint draining, stop.

Each test runs a tiny InvertedPendulum budget on the module's local Ray cluster and
watches the driver from a callback (called once per scheduling round).
"""

from collections import Counter

import numpy as np
import pytest
import ray
from mlflow.tracking import MlflowClient

import umpo_dist.ops.train as train_mod
from test_distributed import FAST, ip_config
from umpo_dist.data.rate_limiter import RateLimiter
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
    at that moment: (call, env steps, stop requested), and in `counters` (call kind, env steps,
    model updates, policy updates).
    """

    def __init__(self):
        self.driver = None
        self.calls = []
        self.counters = []

    def __call__(self, driver):
        if self.driver is not None:
            return
        self.driver = driver
        calls, counters = self.calls, self.counters

        class Recording(dict):
            def __setitem__(self, ref, call):
                s = driver.schedule
                calls.append((call, s.env_steps, s.stop_requested))
                counters.append((call.kind, s.env_steps, s.model_updates, s.policy_updates))
                super().__setitem__(ref, call)

        driver._inflight = Recording(driver._inflight)

    def worker_calls(self):
        return [entry for entry in self.calls if entry[0].kind == "worker"]


def record_grants(replay):
    """Make the replay actor's admission note every grant it answers: (env steps the ratios allowed,
    budget left, steps granted, random); returns a function that reads the notes so far."""
    def install(actor):
        a = actor.admission
        notes = actor.grant_notes = []
        real = a.grant

        def grant(stream, inserted, want):
            s = a.schedule
            planned = inserted + a.reserved_steps()
            s.env_steps = inserted
            allowed = min(s.model_limiter.env_steps_allowed(planned, s.model_updates),
                          s.policy_limiter.env_steps_allowed(planned, s.policy_updates))
            answer = real(stream, inserted, want)
            if a.limit is not None and not answer.closed:
                notes.append((planned, allowed, TOTAL - planned, answer.steps, answer.random))
            return answer

        a.grant = grant

    ray.get(replay.__ray_call__.remote(install))
    return lambda: ray.get(replay.__ray_call__.remote(lambda actor: list(actor.grant_notes)))


def record_samples(replay):
    """Make the replay actor note every draw of positions it makes for the learners' batches: (its acknowledged
    total then, positions drawn); returns a function that reads the notes so far."""
    def install(actor):
        notes = actor.sample_notes = []
        real = actor.sample_positions

        def sample_positions(batch_size, *args):
            notes.append((actor.total_inserted, batch_size))
            return real(batch_size, *args)

        actor.sample_positions = sample_positions  # what `many`, `sample` and `sample_for` call

    ray.get(replay.__ray_call__.remote(install))
    return lambda: ray.get(replay.__ray_call__.remote(lambda actor: list(actor.sample_notes)))


def test_workers_collect_on_their_own_within_the_ratios_and_never_below_the_minimum_chunk(local_ray, workdir):
    """The replay grants env workers their chunks: after the random steps, a grant takes at least
    min(chunk // 4, budget left, tolerance) steps and never runs past the ratios' tolerance.

    Two learner updates per call (at 0.2 updates per step: 10 env steps' worth) make the
    ratios free the env steps in small increments, so allowances below a quarter chunk
    occur and the rule has to hold them back until they have grown.
    """
    chunk, tolerance = 100, 60
    minimum = chunk // 4
    cfg = ip_config(*RUN, f"resources.chunk_size={chunk}", f"resources.ratio_tolerance={tolerance}",
                    "train.updates_per_call=2")
    notes, ahead = [], []

    def watch(driver):
        if not notes:
            notes.append(record_grants(driver.replay))
        s = driver.schedule
        # What the driver knows (the replay told it its count; the learners' counts it told the replay are no
        # newer than these): the steps collected never run further than the ratios' limiters let them.
        if s.env_steps > RANDOM:
            ahead.append(tuple(s.env_steps - (RANDOM + lim.env_steps_allowed(RANDOM, updates))
                               for lim, updates in ((s.model_limiter, s.model_updates),
                                                    (s.policy_limiter, s.policy_updates))))
        notes[1:] = [notes[0]()]

    summary = train(cfg, progress=False, callbacks=[watch])
    assert summary["env_steps"] == TOTAL
    grants = notes[1]
    print(f"{len(grants)} asks answered; grants after the random phase (planned, allowed, budget, steps):",
          [g[:4] for g in grants if not g[4] and g[3]])
    granted = [(planned, allowed, budget, steps) for planned, allowed, budget, steps, random in grants
               if not random and steps > 0]
    assert granted
    for planned, allowed, budget, steps in granted:
        assert min(minimum, budget, tolerance) <= steps <= min(chunk, budget, allowed), (planned, allowed, steps)
    # The rule was under pressure: the ratios allowed some steps, fewer than the minimum, and the
    # replay granted nothing then.
    held_back = [(allowed, budget, steps) for _, allowed, budget, steps, random in grants
                 if not random and 0 < allowed < min(minimum, budget)]
    print(f"held back {len(held_back)} times; allowances:", sorted({allowed for allowed, _, _ in held_back}))
    assert held_back and all(steps == 0 for _, _, steps in held_back)
    # The workers never ran past what the learners' progress allowed (≤ 0: within the tolerance).
    print("steps past the model / policy limiter, largest:", max(a for a, _ in ahead), max(b for _, b in ahead))
    assert ahead and all(a <= 0 and b <= 0 for a, b in ahead)
    # Every transition collected was acknowledged to the worker that sent it and reported to the driver,
    # and both workers collected.
    assert summary["acknowledged_in_session"] == sum(summary["worker_steps"].values()) == summary["env_steps"]
    print("steps by worker:", summary["worker_steps"])
    assert min(summary["worker_steps"].get(i, 0) for i in range(2)) >= chunk


def test_rounds_hold_the_workers_at_each_round_end_until_both_learners_have_its_updates(local_ray, workdir):
    """`train.train_every` above the ratio tolerance: rounds, as the inline runner makes them. No grant crosses a
    round's end; the learners learn from whole rounds, the policy only once the model has the round's updates;
    the evaluations fall at round ends, after the round's updates; the ratios hold at the end."""
    every = 100
    cfg = ip_config(*RUN, f"train.train_every={every}", "train.eval_every=200")
    assert every > cfg.resources.ratio_tolerance
    log, readers, notes = CallLog(), {}, {}

    def watch(driver):
        log(driver)
        if not readers:
            readers.update(grants=record_grants(driver.replay), samples=record_samples(driver.replay))
        notes.update({name: read() for name, read in readers.items()})

    summary = train(cfg, progress=False, callbacks=[watch])
    assert summary["env_steps"] == TOTAL
    grants = [(planned, steps) for planned, _, _, steps, random in notes["grants"] if not random and steps > 0]
    print("grants after the random phase (planned, steps):", grants)
    assert sum(steps for _, steps in grants) == TOTAL - RANDOM
    assert all(planned // every == (planned + steps - 1) // every for planned, steps in grants)
    # Every chunk after the random steps was collected with a policy: the first round's with the initial one,
    # published as version 0 (the policy learner has no updates for it yet), as the inline runner acts.
    acted = log.driver.policy_versions_used
    print("chunks per policy version acted with:", dict(acted))
    assert sum(acted.values()) == len(grants)
    first = [planned for planned, _ in grants if planned < RANDOM + every]
    assert first and acted[0] == len(first)
    t = cfg.train
    model_target = lambda steps: t.model_warmup_updates + round(t.model_updates_per_step * (steps - RANDOM))  # noqa: E731
    learner_calls = [c for c in log.counters if c[0] in ("model", "policy")]
    print("learner calls (kind, env steps, model updates, policy updates):", learner_calls)
    for kind, env_steps, model_updates, policy_updates in learner_calls:
        whole = env_steps // every * every
        assert whole >= RANDOM  # nothing to learn before the random steps are in
        if kind == "model":
            assert model_updates < model_target(whole)
        else:  # on the round's whole model
            assert model_updates == model_target(whole)
            assert policy_updates < round(t.policy_updates_per_step * (whole - RANDOM))
    # Every batch a round's updates use was drawn from that round's whole data, as the inline runner draws
    # them: the positions drawn at each round end are those of the round's updates, none fetched ahead for
    # the next round (which would lack its data) and none left over at the end.
    needs = ray.get(log.driver.policy_learner.__ray_call__.remote(lambda actor: actor.learner.needs))
    per_update = {"model": cfg.model.batch_size, "policy": needs.start_states + needs.transitions}
    limiters = {"model": RateLimiter(t.model_updates_per_step, RANDOM, t.model_warmup_updates),
                "policy": RateLimiter(t.policy_updates_per_step, RANDOM)}
    drawn = Counter()
    for total, n in notes["samples"]:
        drawn[total] += n
    expected = {end: sum(per_update[k] * (lim.target_updates(end) - lim.target_updates(end - every))
                         for k, lim in limiters.items()) for end in range(RANDOM, TOTAL + 1, every)}
    assert dict(drawn) == expected
    assert [step for step, _ in summary["evaluations"]] == [0, 200, 400, 600]
    assert summary["model_ratio"] == pytest.approx(t.model_updates_per_step, abs=0.01)
    assert summary["policy_ratio"] == pytest.approx(t.policy_updates_per_step, abs=0.01)
    # Resumed from its checkpoint for two more rounds: the rounds go on from the counters it kept.
    more = train(None, resume=summary["run_id"], overrides=["train.total_env_steps=800"], progress=False)
    assert more["env_steps"] == 800 and [step for step, _ in more["evaluations"]][-2:] == [600, 800]
    assert more["model_updates"] == model_target(800)
    assert more["policy_updates"] == round(t.policy_updates_per_step * (800 - RANDOM))


def test_a_schedule_that_allows_nothing_is_a_stall_error(local_ray, workdir):
    """Ratios that can never be met cannot be configured (the ranges forbid 0): make the schedule
    refuse every learner update from the first round on, so the replay grants the workers nothing past
    the random steps and the tolerance, and nothing moves."""

    def allow_nothing(driver):
        s = driver.schedule
        driver.stall_after_s = 3.0
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

    # Two periodic checkpoints (collection stops at 200 and 400 env steps and each is written there)
    # and the final one at the budget.
    steps = [c["env_steps"] for c in saved]
    assert steps == [every, 2 * every, TOTAL], steps
    for c in saved:
        # Drained: no worker or learner call in flight, so the replay, the learners and the counters agree.
        assert c["calls_in_flight"] == [], c
        assert c["replay_total"] == c["env_steps"] == c["schedule_env_steps"], c
        assert len(set(c["model_updates"])) == 1 and len(set(c["policy_updates"])) == 1, c
    # The periodic ones were drained mid-run: collection went on after each of them.
    for step in steps[:-1]:
        assert any(call.kind == "worker" and env >= step for call, env, _ in log.calls), step
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
    assert not [call for call, _, requested in log.worker_calls() if requested]
    assert stopped[0] <= summary["env_steps"] < TOTAL
    # The run ended with an evaluation of the policy at the step it stopped at, and a checkpoint there.
    assert summary["evaluations"][-1][0] == summary["env_steps"]
    assert [step for step, _ in summary["evaluations"]] == [0, summary["env_steps"]]
    ckpt = load_checkpoint(summary["run_dir"])
    assert ckpt["counters"]["env_steps"] == summary["env_steps"] == int(ckpt["replay"]["total_inserted"])


def test_the_policy_learner_runs_on_the_core_kept_for_it(local_ray, workdir, monkeypatch):
    """On a small local machine `init_ray` keeps a core for the policy learner (`cluster.core_plan`); the
    driver hands it to the actor, which pins itself there, and no other actor is pinned to it."""
    import os

    import umpo_dist.runtime.ray.driver as driver_mod

    core = min(os.sched_getaffinity(0))
    monkeypatch.setattr(driver_mod, "policy_learner_cores", lambda: [core])
    seen = {}

    def look(driver):
        if not seen:
            affinity = lambda actor: sorted(os.sched_getaffinity(0))  # noqa: E731 - shipped by value
            seen["policy"] = ray.get(driver.policy_learner.__ray_call__.remote(affinity))
            seen["model"] = ray.get(driver.model_learner.__ray_call__.remote(affinity))
            driver.request_stop()

    train(ip_config(*RUN), progress=False, callbacks=[look])
    print("affinity:", seen)
    assert seen["policy"] == [core]
    assert seen["model"] == sorted(os.sched_getaffinity(0)) and len(seen["model"]) > 1


def test_the_log_gets_the_mean_of_the_learner_calls_since_the_last_report(local_ray, workdir):
    """Several learner calls may end between two reports; each logged learner figure is their mean (per
    key, over the calls that have it), not the last call's."""
    reports = []  # (the logged metrics, {kind: the metrics of each learner call handled since the last report})
    pending = {"model": [], "policy": []}

    def wrap(driver):
        if getattr(driver, "_log_recorded", False):
            return
        driver._log_recorded = True
        handle, log = driver._handle, driver.log

        def recording_handle(call, ref):
            if call.kind in pending:
                try:
                    pending[call.kind].append(ray.get(ref)["metrics"])
                except ray.exceptions.RayError:
                    pass
            handle(call, ref)

        def recording_log(metrics, step):
            if "rate/env_steps_per_s" not in metrics:  # an evaluation's figures, not a report
                return log(metrics, step)
            reports.append((metrics, {kind: list(calls) for kind, calls in pending.items()}))
            for calls in pending.values():
                calls.clear()
            log(metrics, step)

        driver._handle, driver.log = recording_handle, recording_log

    train(ip_config(*RUN, "tracking.log_every_s=2"), progress=False, callbacks=[wrap])
    checked = Counter()
    for metrics, calls in reports:
        for kind, rows in calls.items():
            for key in {k for row in rows for k in row}:
                values = [row[key] for row in rows if key in row]
                assert metrics[key] == pytest.approx(float(np.mean(values)), rel=1e-9, abs=1e-12), (kind, key)
            checked[kind, len(rows) > 1] += 1
    print("reports by (kind, several calls):", dict(checked))
    # The rule was exercised where it matters: reports that follow several calls of each learner.
    assert checked["model", True] > 0 and checked["policy", True] > 0
