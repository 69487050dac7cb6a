"""The run's Schedule (no Ray): chunks, ratios, warm-up, evaluations, stop, checkpoints, counters."""

from __future__ import annotations

import json
import math

import pytest

from umpo_dist.config import TrainConfig
from umpo_dist.runtime import schedule as schedule_mod
from umpo_dist.runtime.schedule import Chunk, Schedule

RANDOM, WARMUP = 500, 100


def train_cfg(**kw) -> TrainConfig:
    base = dict(total_env_steps=10_000, random_steps=RANDOM, model_warmup_updates=WARMUP, model_updates_per_step=0.5,
                policy_updates_per_step=1.0, eval_every=1000, checkpoint_every=2500)
    return TrainConfig(**{**base, **kw})


# -- collection ----------------------------------------------------------------------------------------------
def test_random_steps_come_first_in_chunks():
    s = Schedule(train_cfg(), tolerance=200)
    assert s.acts_randomly()
    assert s.next_chunk(0, 100) == Chunk(100, True)
    assert s.next_chunk(300, 100) == Chunk(100, True)  # steps already asked for count
    assert s.next_chunk(450, 100) == Chunk(50, True)  # never past the random steps
    s.env_steps = 499
    assert s.acts_randomly() and s.next_chunk(0, 100) == Chunk(1, True)
    # No learner has done anything, yet the random steps are never held back.
    assert s.model_updates == s.policy_updates == 0
    s.env_steps = RANDOM
    assert not s.acts_randomly()
    assert s.next_chunk(0, 100) == Chunk(100, False)
    # A small budget bounds the random chunk too.
    tiny = Schedule(train_cfg(total_env_steps=30), tolerance=200)
    assert tiny.next_chunk(0, 100) == Chunk(30, True)
    assert tiny.next_chunk(30, 100) is None


def test_after_the_random_steps_chunks_are_bounded_by_the_ratios_and_tolerance():
    s = Schedule(train_cfg(), tolerance=200)
    s.env_steps = RANDOM
    # Nothing learnt yet: the env may run `tolerance` steps past the random ones, and no further.
    assert s.next_chunk(0, 1000) == Chunk(200, False)
    assert s.next_chunk(150, 100) == Chunk(50, False)
    assert s.next_chunk(200, 100) is None
    # The model learner lags: it bounds the chunk even when the policy learner is ahead.
    s.model_updates, s.policy_updates = WARMUP + 50, 400  # model covers 100 steps past RANDOM, policy 400
    assert s.next_chunk(0, 1000) == Chunk(100 + 200, False)
    # Now the policy learner lags.
    s.model_updates, s.policy_updates = WARMUP + 500, 30  # model covers 1000 steps, policy 30
    assert s.next_chunk(0, 1000) == Chunk(30 + 200, False)
    # The budget bounds it as well.
    s.env_steps, s.model_updates, s.policy_updates = 9_950, 10**6, 10**6
    assert s.next_chunk(0, 100) == Chunk(50, False)


def test_a_call_smaller_than_a_quarter_chunk_waits_until_the_updates_catch_up():
    s = Schedule(train_cfg(), tolerance=200)
    s.env_steps = RANDOM
    assert s.next_chunk(190, 100) is None  # 10 steps allowed: less than 100 // 4
    assert s.next_chunk(176, 100) is None  # 24
    assert s.next_chunk(175, 100) == Chunk(25, False)  # a quarter chunk is enough
    # Updates catch up (model 0.5 and policy 1.0 per step for 90 steps): a full chunk again.
    s.model_updates, s.policy_updates = WARMUP + 45, 90
    assert s.next_chunk(190, 100) == Chunk(100, False)
    # The run's last few steps are not held back by the rule.
    s.env_steps, s.model_updates, s.policy_updates = 9_990, 10**6, 10**6
    assert s.next_chunk(0, 100) == Chunk(10, False)
    assert s.next_chunk(10, 100) is None  # nothing left to ask for
    # A tolerance below a quarter chunk lowers the minimum to the tolerance.
    t = Schedule(train_cfg(), tolerance=10)
    t.env_steps = RANDOM
    assert t.next_chunk(0, 100) == Chunk(10, False)
    assert t.next_chunk(1, 100) is None


def test_no_policy_updates_before_the_model_warm_up():
    s = Schedule(train_cfg(), tolerance=200)
    s.env_steps = 2_000
    for done in (0, 1, WARMUP - 1):
        s.model_updates = done
        assert not s.warmed_up and s.policy_updates_allowed() == 0
    s.model_updates = WARMUP
    assert s.warmed_up and s.policy_updates_allowed() == 1.0 * (2_000 - RANDOM)
    zero = Schedule(train_cfg(model_warmup_updates=0), tolerance=200)
    zero.env_steps = RANDOM + 7
    assert zero.warmed_up and zero.policy_updates_allowed() == 7


@pytest.mark.parametrize("env_steps", [0, 1, RANDOM - 1, RANDOM, RANDOM + 1, RANDOM + 3, 777, 2_000, 10_000])
def test_updates_allowed_follow_warmup_plus_ratio_times_steps(env_steps):
    s = Schedule(train_cfg(), tolerance=200)
    s.env_steps = env_steps
    model_target = 0 if env_steps < RANDOM else WARMUP + math.floor(0.5 * (env_steps - RANDOM))
    policy_target = 0 if env_steps < RANDOM else math.floor(1.0 * (env_steps - RANDOM))
    assert s.model_updates_allowed() == model_target
    s.model_updates = model_target  # the model is done: the policy may go (warm-up included in the target)
    assert s.model_updates_allowed() == 0
    expected_policy = policy_target if model_target >= WARMUP else 0
    assert s.policy_updates_allowed() == expected_policy
    s.policy_updates = max(0, policy_target - 3)
    assert s.policy_updates_allowed() == (min(3, policy_target) if model_target >= WARMUP else 0)
    s.model_updates = model_target + 5  # ahead of its target: nothing more, never negative
    assert s.model_updates_allowed() == 0


@pytest.mark.parametrize("tolerance, chunk_size, model_ratio, policy_ratio",
                         [(200, 100, 0.5, 1.0), (1, 100, 0.05, 0.3), (50, 7, 2.0, 1.5), (500, 100, 0.25, 0.01)])
def test_a_whole_run_never_stalls_and_holds_the_ratios(tolerance, chunk_size, model_ratio, policy_ratio):
    """Learners do everything they are allowed, the env takes what it is offered: the run reaches its budget,
    the env never runs further ahead than the tolerance (or one update's worth), and the ratios are met."""
    cfg = train_cfg(total_env_steps=5_000, model_updates_per_step=model_ratio, policy_updates_per_step=policy_ratio)
    s = Schedule(cfg, tolerance)
    for _ in range(100_000):
        if s.done():
            break
        chunk = s.next_chunk(0, chunk_size)
        if chunk is not None:
            assert chunk.random == (s.env_steps < RANDOM) and 0 < chunk.steps <= chunk_size
            s.env_steps += chunk.steps
            if not chunk.random:
                ahead_of_model = s.env_steps - RANDOM - max(0, s.model_updates - WARMUP) / model_ratio
                ahead_of_policy = s.env_steps - RANDOM - s.policy_updates / policy_ratio
                assert ahead_of_model <= max(tolerance, 1 / model_ratio + 1)
                assert ahead_of_policy <= max(tolerance, 1 / policy_ratio + 1)
            continue
        m, p = s.model_updates_allowed(), s.policy_updates_allowed()
        assert m or p, f"stalled at {s.env_steps} env steps"
        s.model_updates += m
        s.policy_updates += s.policy_updates_allowed()
    assert s.done() and s.env_steps == cfg.total_env_steps
    s.model_updates += s.model_updates_allowed()
    s.policy_updates += s.policy_updates_allowed()
    summary = s.summary(1.0)
    assert summary["model_ratio"] == pytest.approx(model_ratio, abs=1 / 4_500)
    assert summary["policy_ratio"] == pytest.approx(policy_ratio, abs=1 / 4_500)


@pytest.mark.parametrize("train_every, chunk_size, random_steps", [(300, 100, RANDOM), (250, 100, 600), (400, 64, RANDOM)])
def test_rounds_alternate_collection_and_all_of_its_updates_model_first(train_every, chunk_size, random_steps):
    """Rounds (`train_every` above the tolerance): no chunk crosses a round's end; a round starts only once both
    learners have every update the steps before it allow; the learners learn from whole rounds only, the policy
    only on a model that has all of the round's updates; evaluations see the policy after them. A run driven
    so (learners in bursts of at most 50 updates, as the Ray driver's calls) never stalls and meets the ratios."""
    cfg = train_cfg(total_env_steps=5_000, train_every=train_every, random_steps=random_steps, eval_every=1000)
    s = Schedule(cfg, tolerance=100)
    assert s.round_steps == train_every
    in_flight, evaluated = 0, []
    for _ in range(100_000):  # a turn: the env workers and both learners each do what they may
        if s.done():
            break
        if s.eval_due():
            assert s.caught_up(s.env_steps)
            evaluated.append((s.eval_started(), s.policy_updates))
        chunk = s.next_chunk(in_flight, chunk_size)
        if chunk is not None:
            start = s.env_steps + in_flight
            end = start + chunk.steps
            if not chunk.random:
                assert (end - 1) // train_every == start // train_every  # within one round
                if start % train_every == 0:
                    assert s.caught_up(start)
            in_flight += chunk.steps
        if in_flight and (chunk is None or chunk.random or in_flight >= 2 * chunk_size):  # two chunks arrive together
            s.env_steps, in_flight = s.env_steps + in_flight, 0
        m, p = s.model_updates_allowed(), s.policy_updates_allowed()
        assert m or p or chunk is not None or in_flight, f"stalled at {s.env_steps} env steps"
        whole = s.env_steps // train_every * train_every  # the steps of whole rounds, and the budget's last
        whole = s.env_steps if s.env_steps == cfg.total_env_steps else whole
        assert s.model_updates + m == s.model_limiter.target_updates(whole)
        if p:
            assert s.model_caught_up(whole)  # the policy goes only on the round's whole model
        s.model_updates += min(m, 50)
        s.policy_updates += min(p, 50)
    assert s.done() and s.env_steps == cfg.total_env_steps
    # Each evaluation at the end of the round that reached its multiple of `eval_every` (as the inline runner's).
    assert [step // 1000 for step, _ in evaluated] == [0, 1, 2, 3, 4]
    assert all(step % train_every == 0 and step - step // 1000 * 1000 < train_every for step, _ in evaluated)
    target = s.policy_limiter.target_updates
    assert [updates for _, updates in evaluated] == [target(step) for step, _ in evaluated]
    s.model_updates += s.model_updates_allowed()
    s.policy_updates += s.policy_updates_allowed()
    assert s.summary(1.0)["policy_ratio"] == pytest.approx(1.0, abs=1 / 4_000)


def test_with_rounds_collection_waits_at_a_round_end_until_its_due_evaluation_started():
    """The Ray driver runs one evaluation at a time, so the one due at a round's end may wait for the last one
    to finish: until it starts, collection stops at that round's end, so it evaluates that round's policy at
    its own step (a later start labelled it with the next round's step). Continuous learners do not wait."""
    s = Schedule(train_cfg(total_env_steps=5_000, train_every=500, eval_every=1_000), tolerance=100)
    s.eval_started()  # step 0's
    s.env_steps = 1_000
    assert not s.eval_due()  # not before the round's updates (`next_chunk` holds the workers for those)
    s.model_updates, s.policy_updates = s.model_limiter.target_updates(1_000), s.policy_limiter.target_updates(1_000)
    assert s.eval_due() and s.collection_limit() == 1_000  # due, not started: no further steps
    assert s.eval_started() == 1_000 and s.collection_limit() > 1_000
    continuous = Schedule(train_cfg(total_env_steps=5_000, eval_every=1_000), tolerance=100)
    continuous.eval_started()
    continuous.env_steps = 1_000
    assert continuous.eval_due() and continuous.collection_limit() > 1_000


def test_rounds_need_a_train_every_above_the_tolerance_and_the_default():
    assert Schedule(train_cfg(train_every=500), tolerance=100).round_steps == 500
    assert Schedule(train_cfg(train_every=100), tolerance=100).round_steps == 0  # the rate limiter's own window
    assert Schedule(train_cfg(), tolerance=1).round_steps == 0  # the default: continuous, whatever the tolerance
    continuous = Schedule(train_cfg(), tolerance=100)
    continuous.env_steps = RANDOM + 100
    continuous.model_updates = WARMUP  # behind by 50 updates: the policy goes anyway, on the model it has
    assert continuous.policy_updates_allowed() == 100


# -- evaluation and stop -------------------------------------------------------------------------------------
@pytest.mark.parametrize("jump, expected", [(False, [0, 1000, 2000, 3000]), (True, [0, 1000, 2020, 3000])])
def test_evaluations_fall_at_multiples_of_eval_every(jump, expected):
    s = Schedule(train_cfg(total_env_steps=3_500, eval_every=1000), tolerance=200)
    steps = []
    while not s.done():
        if s.eval_due():
            step = s.eval_started()
            assert not s.eval_due()  # started: not due again at the same step
            s.record_evaluation(step, 0.0)
            steps.append(step)
        s.env_steps += 30 if jump and s.env_steps == 1_990 else 10  # a round that jumps past a multiple
    # Past a multiple, the evaluation belongs to the step it ran at, and the next one is at the next multiple.
    assert steps == expected
    assert s.final_eval_needed()  # the last evaluation is older than the run's end
    assert not s.eval_due()  # the run is over: no periodic evaluation
    s.record_evaluation(s.env_steps, 1.0)
    assert not s.final_eval_needed()
    fresh = Schedule(train_cfg(), tolerance=200)
    assert fresh.final_eval_needed()  # a run with no evaluation at all


def test_stop_at_return_stops_the_run_through_record_evaluation():
    s = Schedule(train_cfg(stop_at_return=900.0), tolerance=200)
    s.env_steps = 1000
    s.record_evaluation(1000, 899.9)
    assert not s.done() and not s.stopping()
    s.env_steps = 2000
    s.record_evaluation(2000, 900.0)
    assert s.done() and s.stopping() and not s.eval_due()
    s.record_evaluation(3000, 1000.0)  # the first evaluation that met it is the one reported
    summary = s.summary(12.0)
    assert summary["reached_stop_return_at"] == 2000
    assert summary["best_return"] == 1000.0 and summary["final_return"] == 1000.0
    assert summary["evaluations"] == [(1000, 899.9), (2000, 900.0), (3000, 1000.0)]
    never = Schedule(train_cfg(), tolerance=200)  # no stop_at_return: any return goes on
    never.record_evaluation(0, 1e9)
    assert not never.done() and never.summary(0.0)["reached_stop_return_at"] is None


def test_record_evaluation_says_which_evaluations_beat_all_earlier_ones():
    s = Schedule(train_cfg(), tolerance=200)
    assert [s.record_evaluation(step, ret) for step, ret in [(0, 10.0), (1000, 5.0), (2000, 10.0), (3000, 11.0)]] \
        == [True, False, False, True]  # a tie is not better: the policy that scored it first stays
    resumed = Schedule(train_cfg(), tolerance=200)
    resumed.load_counters(s.counters())  # evaluations before a resume count
    assert not resumed.record_evaluation(4000, 10.5) and resumed.record_evaluation(5000, 11.5)


def test_request_stop_ends_the_run_without_a_reached_return():
    s = Schedule(train_cfg(stop_at_return=900.0), tolerance=200)
    s.env_steps = 1234
    assert not s.done()
    s.request_stop()
    assert s.done() and s.stopping() and s.reached_at is None
    assert s.summary(1.0)["reached_stop_return_at"] is None
    assert not s.eval_due()


# -- checkpoints ---------------------------------------------------------------------------------------------
def test_checkpoints_fall_due_at_the_collection_limit_and_move_to_the_next_multiple():
    s = Schedule(train_cfg(total_env_steps=10_000, checkpoint_every=2500), tolerance=200)
    assert not s.checkpoint_due() and s.collection_limit() == 2500  # collection stops at the checkpoint
    s.env_steps = 2499
    assert not s.checkpoint_due()
    s.env_steps = 2500
    assert s.checkpoint_due()
    s.env_steps = 2530  # a run resumed past it, or steps dropped in: written at once
    assert s.checkpoint_due()
    s.checkpoint_written()
    assert not s.checkpoint_due() and s.collection_limit() == 5000
    s.env_steps = 7_600  # a long round: one checkpoint, then the next multiple after it
    assert s.checkpoint_due()
    s.checkpoint_written()
    assert s.collection_limit() == 10_000  # the next one would be the budget: the run's end writes that one
    for steps in (9_999, 10_000, 10_500):
        s.env_steps = steps
        assert not s.checkpoint_due()
    s.env_steps = 9_000
    s.request_stop()
    assert s.collection_limit() == 9_000  # stopping: nothing more is collected


def test_checkpoint_every_not_dividing_the_budget_and_zero():
    s = Schedule(train_cfg(total_env_steps=10_000, checkpoint_every=3000), tolerance=200)
    due = []
    for steps in range(0, 10_001, 100):
        s.env_steps = steps
        if s.checkpoint_due():
            due.append(steps)
            s.checkpoint_written()
    assert due == [3000, 6000, 9000]
    off = Schedule(train_cfg(checkpoint_every=0), tolerance=200)
    for steps in (0, 2500, 5000, 9_999):
        off.env_steps = steps
        assert not off.checkpoint_due() and off.collection_limit() == 10_000
        off.checkpoint_written()
        assert off.next_checkpoint is None


# -- state ---------------------------------------------------------------------------------------------------
def test_counters_round_trip_through_json():
    cfg = train_cfg()
    s = Schedule(cfg, tolerance=200)
    s.env_steps, s.model_updates, s.policy_updates = 2_600, 1_150, 2_090
    for step in (0, 1000, 2000):
        s.env_steps = step
        s.record_evaluation(s.eval_started(), step / 10)
    s.env_steps = 2_600
    for i in range(5):
        s.record_episode(float(i))
    counters = json.loads(json.dumps(s.counters()))  # as a checkpoint stores them
    assert counters["env_steps"] == 2_600 and counters["next_eval"] == 3000

    t = Schedule(cfg, tolerance=200)
    t.load_counters(counters)
    assert t.counters() == s.counters()
    assert (t.env_steps, t.model_updates, t.policy_updates) == (2_600, 1_150, 2_090)
    assert t.evaluations == [(0, 0.0), (1000, 100.0), (2000, 200.0)]
    assert t.episodes == [(2_600, float(i)) for i in range(5)]
    assert t.summary(1.0) | {"wall_s": 0} == s.summary(1.0) | {"wall_s": 0}
    # The resumed run goes on where it was: the next evaluation at 3000, the next checkpoint at 5000.
    assert not t.eval_due()
    assert t.next_checkpoint == 5000 == t.collection_limit() and not t.checkpoint_due()
    # A counters dict from before `next_eval` was stored evaluates at once.
    old = {k: v for k, v in counters.items() if k != "next_eval"}
    u = Schedule(cfg, tolerance=200)
    u.load_counters(old)
    assert u.eval_due() and u.eval_started() == 2_600


def test_the_episode_list_stays_bounded():
    kept = schedule_mod.EPISODES_KEPT
    s = Schedule(train_cfg(), tolerance=200)
    for i in range(2 * kept + 1):
        s.env_steps = i
        s.record_episode(float(i))
        assert len(s.episodes) <= 2 * kept
    assert len(s.episodes) == kept
    assert s.episodes[-1] == (2 * kept, float(2 * kept)) and s.episodes[0] == (kept + 1, float(kept + 1))
    for i in range(kept):
        s.record_episode(-1.0)
    stored = s.counters()["episodes"]
    assert len(stored) == kept and stored[-1] == (s.env_steps, -1.0)
