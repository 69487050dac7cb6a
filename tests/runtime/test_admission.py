"""The replay's admission (no Ray): grants by the Schedule's rule, reservations, the limit, expiry."""

from __future__ import annotations

from umpo_dist.config import TrainConfig
from umpo_dist.runtime.admission import Admission, Grant
from umpo_dist.runtime.schedule import Schedule

RANDOM, WARMUP = 500, 100


def train_cfg(**kw) -> TrainConfig:
    base = dict(total_env_steps=10_000, random_steps=RANDOM, model_warmup_updates=WARMUP, model_updates_per_step=0.5,
                policy_updates_per_step=1.0, eval_every=1000, checkpoint_every=2500)
    return TrainConfig(**{**base, **kw})


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_nothing_is_granted_before_the_driver_has_told_it_anything():
    a = Admission(train_cfg(), tolerance=200)
    assert a.grant("w", 0, 100) == Grant(0, False) and a.reserved_steps() == 0
    a.update(0, 0, limit=10_000)
    assert a.grant("w", 0, 100) == Grant(100, True)


def test_grants_count_against_the_random_steps_and_the_ratios_until_their_chunks_arrive():
    a = Admission(train_cfg(), tolerance=200)
    a.update(0, 0, limit=10_000)
    grants = [a.grant(f"w{i}", 0, 200) for i in range(3)]
    # The random steps are shared out between the streams, never granted twice.
    assert grants == [Grant(200, True), Grant(200, True), Grant(100, True)]
    assert a.reserved_steps() == RANDOM
    # Past them the learners have done nothing yet: the tolerance bounds what may be collected ahead of them.
    assert a.grant("w3", 0, 1000) == Grant(200, False)
    assert a.grant("w4", 0, 1000) == Grant(0, False)
    for stream, steps in (("w0", 200), ("w1", 200), ("w2", 100)):
        a.inserted(stream, steps)
    assert a.reserved_steps() == 200
    assert a.grant("w0", RANDOM, 1000) == Grant(0, False)  # w3's grant still counts, though its chunk is not in
    a.update(WARMUP + 50, 100, limit=10_000)  # the model covered 100 more steps, the policy 100
    assert a.grant("w1", RANDOM, 200) == Grant(100, False)
    a.inserted("w3", 200)
    assert a.reserved_steps() == 100


def test_grants_follow_the_schedules_rule_exactly():
    """The admission is the Schedule's `next_chunk` applied to the replay's count plus what it has granted."""
    cfg = train_cfg()
    a, s = Admission(cfg, tolerance=60), Schedule(cfg, 60)
    for inserted, model, policy, reserved in ((0, 0, 0, 0), (RANDOM, WARMUP, 0, 0), (900, WARMUP + 150, 380, 30),
                                              (900, WARMUP + 150, 380, 90), (4000, 1900, 3500, 0)):
        a.update(model, policy, limit=10_000)
        a.reserved = {"other": [reserved, 0.0]} if reserved else {}
        s.env_steps, s.model_updates, s.policy_updates = inserted, model, policy
        expected = s.next_chunk(reserved, 100)
        got = a.grant("w", inserted, 100)
        assert (got.steps, got.random) == ((expected.steps, expected.random) if expected else (0, False))


def test_the_limit_closes_collection_and_no_grant_passes_it():
    a = Admission(train_cfg(), tolerance=200)
    a.update(10**6, 10**6, limit=2500)  # learners far ahead: only the limit binds
    assert a.grant("w", 2450, 100) == Grant(50, False)
    assert a.grant("w", 2450, 100) == Grant(0, False)  # granted up to the limit; its chunk is not in yet
    a.inserted("w", 50)
    assert a.grant("w", 2500, 100) == Grant(0, False, closed=True)
    a.update(10**6, 10**6, limit=5000)  # the checkpoint is written: the driver moves the limit
    assert a.grant("w", 2500, 100) == Grant(100, False)


def test_released_and_expired_reservations_stop_counting():
    clock = Clock()
    a = Admission(train_cfg(), tolerance=200, ttl_s=30.0, clock=clock)
    a.update(0, 0, limit=10_000)
    assert a.grant("dead", 0, 300).steps == 300
    assert a.grant("alive", 0, 300).steps == 200
    a.release("alive")
    assert a.reserved_steps() == 300
    clock.now = 29.0
    assert a.grant("alive", 0, 300).steps == 200  # the dead stream's grant still counts
    a.release("alive")
    clock.now = 31.0
    assert a.grant("alive", 0, 500).steps == 500  # its worker died: after the TTL it no longer holds steps
    assert a.reserved == {"alive": [500, 31.0]}
    a.inserted("alive", 499)  # one step dropped (non-finite): the worker releases the rest when it pauses
    assert a.reserved_steps() == 1
    a.release("alive")
    assert a.reserved_steps() == 0
