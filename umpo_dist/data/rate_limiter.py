"""Ratio control: learner updates per environment step, independent of machine speed.

In the spirit of Reverb's `SampleToInsertRatio`: a learner may run until its update
count reaches `warmup + ratio · (env_steps − min_steps)`; env workers may run ahead of
what the learner has consumed by at most `tolerance` steps. A run therefore learns
the same on a fast or a slow machine; `achieved` reports the ratio it actually got.
"""

from __future__ import annotations

import math


class RateLimiter:
    def __init__(self, updates_per_step: float, min_steps: int, warmup_updates: int = 0, tolerance: int = 0):
        self.ratio = updates_per_step
        self.min_steps = min_steps
        self.warmup = warmup_updates
        self.tolerance = tolerance

    def target_updates(self, env_steps: int) -> int:
        if env_steps < self.min_steps:
            return 0
        return self.warmup + math.floor(self.ratio * (env_steps - self.min_steps))

    def updates_allowed(self, env_steps: int, updates_done: int) -> int:
        """How many more updates the learner may run now."""
        return max(0, self.target_updates(env_steps) - updates_done)

    def env_steps_allowed(self, env_steps: int, updates_done: int) -> int:
        """How many more env steps may be taken before the learner is `tolerance` steps behind.

        Never less than what brings the learner its next update, so that the env and the
        learner can't both be waiting (a tolerance below 1/ratio would otherwise stall).
        """
        if updates_done < self.warmup or env_steps < self.min_steps:
            covered = self.min_steps
            next_work = self.min_steps
        else:
            covered = self.min_steps + math.floor((updates_done - self.warmup) / self.ratio)
            next_work = self.min_steps + math.ceil((updates_done - self.warmup + 1) / self.ratio - 1e-9)
        return max(0, max(covered + self.tolerance, next_work) - env_steps)

    def achieved(self, env_steps: int, updates_done: int) -> float:
        """Updates per env step after the start, warm-up excluded."""
        steps = env_steps - self.min_steps
        return (updates_done - self.warmup) / steps if steps > 0 else 0.0
