"""RateLimiter: update targets per env step, env-side throttling, achieved ratio."""

from __future__ import annotations

import numpy as np
import pytest

from umpo_dist.data.rate_limiter import RateLimiter


def test_target_updates():
    r = RateLimiter(0.5, min_steps=100, warmup_updates=10, tolerance=20)
    assert [r.target_updates(s) for s in (0, 50, 99)] == [0, 0, 0]
    # At min_steps the warm-up is due at once, then ratio·(steps − min_steps), rounded down.
    assert [r.target_updates(s) for s in (100, 101, 102, 103, 300)] == [10, 10, 11, 11, 110]
    fast = RateLimiter(2.0, min_steps=0)
    assert [fast.target_updates(s) for s in (0, 1, 7)] == [0, 2, 14]
    frac = RateLimiter(0.1, min_steps=0)
    # 0.1·30 is 3.0000000000000004 in floating point: still 3.
    assert [frac.target_updates(s) for s in (9, 10, 29, 30, 31)] == [0, 1, 2, 3, 3]


def test_updates_allowed():
    r = RateLimiter(0.5, min_steps=100, warmup_updates=10, tolerance=20)
    assert r.updates_allowed(50, 0) == 0  # still collecting random steps
    assert r.updates_allowed(100, 0) == 10  # warm-up
    assert r.updates_allowed(102, 5) == 6
    assert r.updates_allowed(102, 11) == 0
    assert r.updates_allowed(102, 20) == 0  # never negative when ahead


def test_env_steps_allowed():
    r = RateLimiter(0.5, min_steps=100, warmup_updates=10, tolerance=20)
    assert r.env_steps_allowed(0, 0) == 120  # the random steps plus the tolerance
    assert r.env_steps_allowed(50, 0) == 70
    assert r.env_steps_allowed(110, 5) == 10  # warm-up not done: nothing beyond min_steps + tolerance
    assert r.env_steps_allowed(130, 10) == 0  # learner 30 steps behind > tolerance: wait
    assert r.env_steps_allowed(130, 20) == 10  # 10 updates past warm-up cover 20 steps at 0.5
    assert r.env_steps_allowed(500, 1000) == 100 + (1000 - 10) * 2 + 20 - 500  # learner far ahead
    # Taking the allowed steps brings the env exactly to the tolerance.
    steps = 130 + r.env_steps_allowed(130, 20)
    assert r.env_steps_allowed(steps, 20) == 0
    assert r.target_updates(steps) - 20 == pytest.approx(0.5 * 20, abs=1)


def test_achieved_ratio():
    r = RateLimiter(0.5, min_steps=100, warmup_updates=10)
    assert r.achieved(100, 10) == 0.0
    assert r.achieved(50, 0) == 0.0
    assert r.achieved(300, 110) == pytest.approx(0.5)
    assert r.achieved(300, 60) == pytest.approx(0.25)


@pytest.mark.parametrize(
    "ratio, min_steps, warmup, tolerance",
    [(0.5, 100, 30, 40), (1.0, 500, 300, 500), (4.0, 50, 0, 10), (0.1, 0, 5, 25)],
)
def test_simulated_run_keeps_the_ratio(ratio, min_steps, warmup, tolerance):
    """Env and learner advance in random order and random chunk sizes, each doing what the limiter allows."""
    r = RateLimiter(ratio, min_steps, warmup, tolerance)
    rng = np.random.default_rng(0)
    env, updates = 0, 0
    total = 5000
    while env < total:
        e_ok = r.env_steps_allowed(env, updates)
        u_ok = r.updates_allowed(env, updates)
        assert e_ok > 0 or u_ok > 0, f"deadlock at env={env}, updates={updates}"
        if rng.random() < 0.5 and e_ok > 0:
            env += int(min(e_ok, rng.integers(1, 60), total - env))
        elif u_ok > 0:
            updates += int(min(u_ok, rng.integers(1, 60)))
        # The learner never runs ahead of its target ...
        assert updates <= r.target_updates(env)
        # ... and the env never runs more than `tolerance` steps past what the updates cover.
        covered = min_steps + (max(0, updates - warmup) / ratio if updates >= warmup else 0)
        assert env <= covered + tolerance + 1
    achieved = r.achieved(env, updates)
    steps = env - min_steps
    assert ratio * (1 - tolerance / steps) - 1 / steps <= achieved <= ratio + 1e-12
    # After the learner catches up the ratio is met to within rounding.
    updates += r.updates_allowed(env, updates)
    assert r.achieved(env, updates) == pytest.approx(ratio, abs=1 / steps)


@pytest.mark.parametrize("ratio, tolerance", [(1.0, 0), (0.5, 1), (0.1, 5)])
def test_small_tolerance_does_not_deadlock(ratio, tolerance):
    r = RateLimiter(ratio, min_steps=0, warmup_updates=0, tolerance=tolerance)
    env, updates = 0, 0
    for _ in range(1000):
        e_ok, u_ok = r.env_steps_allowed(env, updates), r.updates_allowed(env, updates)
        assert e_ok > 0 or u_ok > 0, f"deadlock at env={env}, updates={updates}"
        env += min(e_ok, 1)
        updates += u_ok
