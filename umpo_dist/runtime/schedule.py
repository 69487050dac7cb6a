"""The run's schedule, shared by both runtimes: counters, ratios, warm-up, evaluation, checkpoints, stop.

Plain Python, no Ray. The inline runner and the distributed driver each ask it what
may happen next (how many model and policy updates, how many env steps and in what
chunk, whether an evaluation or a checkpoint is due, whether the run is over) and
tell it what happened; so both runtimes follow one set of rules and report the
same counters and summary.
"""

from __future__ import annotations

from dataclasses import dataclass

from umpo_dist.config import TrainConfig
from umpo_dist.data.rate_limiter import RateLimiter
from umpo_dist.diagnostics.watch import ExploitationWatch

EPISODES_KEPT = 10_000  # training-episode returns kept for the learning curve and checkpoints


@dataclass
class Call:
    """One actor call in flight (distributed runtime)."""

    kind: str  # "worker", "model", "policy", "eval" or "admission" (the replay told the learners' progress)
    index: int = 0  # which env worker; for "eval", the env step the evaluated policy belongs to
    weights: object = None  # for "eval", the policy weights being evaluated (a dict, or a Ray object ref)
    version: int = 0  # for "eval", the policy updates behind those weights


@dataclass
class Chunk:
    """Env steps a worker may take now, and whether they are the initial random ones."""

    steps: int
    random: bool


class Schedule:
    def __init__(self, cfg: TrainConfig, tolerance: int = 0, watch: ExploitationWatch | None = None):
        """`tolerance`: env steps the collection may run ahead of what the learners have consumed;
        `watch`: the model-exploitation warning's rule (none: never warns).

        Rounds (`train.train_every` longer than both the tolerance and its default): collection takes a
        round's env steps; once they are all in, the learners take all the updates they allow, the model's
        before the policy's, and collection waits; the round's evaluation sees the policy after them; then
        the next round. Otherwise the learners run continuously, at most `tolerance` env steps behind. (The
        inline runner makes its rounds itself, and there these rules hold anyway.)
        """
        self.cfg = cfg
        self.watch = watch
        self.tolerance = tolerance
        self.round_steps = cfg.round_steps(tolerance)
        self.model_limiter = RateLimiter(cfg.model_updates_per_step, cfg.random_steps, cfg.model_warmup_updates, tolerance)
        self.policy_limiter = RateLimiter(cfg.policy_updates_per_step, cfg.random_steps, 0, tolerance)
        self.env_steps = 0
        self.model_updates = 0
        self.policy_updates = 0
        self.evaluations: list[tuple[int, float]] = []
        self.episodes: list[tuple[int, float]] = []
        self.next_eval = 0
        self.next_checkpoint = cfg.checkpoint_every or None
        self.diagnostics: list[dict] = []  # per evaluation with diagnostics: env step and scalar figures
        self.calibration_curve: list = []  # the newest evaluation's (RMV, RMSE, count) bins
        self.diagnostics_s = 0.0  # seconds the diagnostics took in this process's part of the run
        self.reached_at: int | None = None  # env step of the first evaluation that met `stop_at_return`
        self.stop_requested = False

    # -- learners ---------------------------------------------------------------
    def learner_steps(self) -> int:
        """The env steps the learners' updates are counted against: with rounds, those of whole rounds
        (and the budget's last, shorter one)."""
        if not self.round_steps or self.env_steps >= self.cfg.total_env_steps:
            return self.env_steps
        return self.env_steps // self.round_steps * self.round_steps

    def model_updates_allowed(self) -> int:
        return self.model_limiter.updates_allowed(self.learner_steps(), self.model_updates)

    @property
    def warmed_up(self) -> bool:
        """The policy learns only once the model has had its warm-up updates."""
        return self.model_updates >= self.cfg.model_warmup_updates

    def policy_updates_allowed(self) -> int:
        steps = self.learner_steps()
        if not self.warmed_up or (self.round_steps and not self.model_caught_up(steps)):
            return 0
        return self.policy_limiter.updates_allowed(steps, self.policy_updates)

    def model_caught_up(self, env_steps: int) -> bool:
        return self.model_updates >= self.model_limiter.target_updates(env_steps)

    def caught_up(self, env_steps: int) -> bool:
        """Both learners have taken every update `env_steps` allow."""
        return (self.model_caught_up(env_steps)
                and self.policy_updates >= self.policy_limiter.target_updates(env_steps))

    # -- collection -------------------------------------------------------------
    def next_chunk(self, in_flight_steps: int, chunk_size: int, limit: int | None = None) -> Chunk | None:
        """The env steps one more chunk may take, given those already granted; None to wait.

        Random steps come first. After them the learners' ratios (plus the tolerance)
        bound the steps, and a chunk smaller than a quarter chunk waits for a bigger
        allowance: tiny chunks each cost a round trip. With rounds, a chunk runs to the
        end of its round at most, and a new round starts once the learners have caught
        up with the last one. No chunk passes `limit` (default: the budget).
        """
        planned = self.env_steps + in_flight_steps
        total = self.cfg.total_env_steps
        budget = (total if limit is None else min(limit, total)) - planned
        if budget <= 0:
            return None
        if planned < self.cfg.random_steps:
            return Chunk(min(chunk_size, self.cfg.random_steps - planned, budget), True)
        if self.round_steps:
            if planned % self.round_steps == 0 and not self.caught_up(planned):
                return None
            round_end = (planned // self.round_steps + 1) * self.round_steps
            return Chunk(min(chunk_size, round_end - planned, budget), False)
        allowed = min(self.model_limiter.env_steps_allowed(planned, self.model_updates),
                      self.policy_limiter.env_steps_allowed(planned, self.policy_updates))
        n = min(chunk_size, allowed, budget)
        if n <= 0 or n < min(chunk_size // 4, budget, self.tolerance):
            return None
        return Chunk(n, False)

    def acts_randomly(self) -> bool:
        return self.env_steps < self.cfg.random_steps

    def record_episode(self, ret: float) -> None:
        self.episodes.append((self.env_steps, ret))
        if len(self.episodes) > 2 * EPISODES_KEPT:  # trimmed in batches, so appends stay O(1)
            del self.episodes[:-EPISODES_KEPT]

    # -- evaluation and stop ----------------------------------------------------
    def eval_due(self) -> bool:
        """With rounds, at the end of the round that reached the evaluation step, once it had its updates."""
        if self.round_steps and not (self.env_steps == self.learner_steps() and self.caught_up(self.env_steps)):
            return False
        return not self.done() and self.env_steps >= self.next_eval

    def eval_started(self) -> int:
        """Note that an evaluation of the current policy starts; returns the env step it belongs to."""
        self.next_eval = (self.env_steps // self.cfg.eval_every + 1) * self.cfg.eval_every
        return self.env_steps

    def record_evaluation(self, step: int, ret: float) -> bool:
        """Record an evaluation; True if it beats every earlier one of the run (its policy is the one to export)."""
        best = all(ret > r for _, r in self.evaluations)
        self.evaluations.append((step, ret))
        stop_at = self.cfg.stop_at_return
        if stop_at is not None and ret >= stop_at and self.reached_at is None:
            self.reached_at = step
        return best

    def record_diagnostics(self, step: int, diag: dict) -> str | None:
        """Keep an evaluation's model diagnostics; the warning's text if the watch fires on them.

        The watch counts evaluations only once the policy learns through the model (after warm-up)."""
        self.diagnostics.append({"step": step, **{k: v for k, v in diag.items() if isinstance(v, (int, float))}})
        self.calibration_curve = [list(b) for b in diag.get("curve", [])]
        self.diagnostics_s += diag.get("seconds", 0.0)
        if self.watch is None or not self.warmed_up or "gap_share" not in diag:
            return None
        return self.watch.record(step, diag)

    def final_eval_needed(self) -> bool:
        return not self.evaluations or self.evaluations[-1][0] != self.env_steps

    def request_stop(self) -> None:
        """End the run at the current step (e.g. at a wall-clock limit)."""
        self.stop_requested = True

    def stopping(self) -> bool:
        """A stop was requested or an evaluation met `stop_at_return`: start nothing new."""
        return self.stop_requested or self.reached_at is not None

    def done(self) -> bool:
        return self.stopping() or self.env_steps >= self.cfg.total_env_steps

    def collection_limit(self) -> int:
        """The env step collection may run to now: the budget, or the next periodic checkpoint (written
        with nothing in flight), or the steps taken once the run is stopping or, with rounds, while the
        round's evaluation is due and not started (the last one may still be running): each evaluation
        falls at the round end it is due at, with that round's policy."""
        if self.stopping() or (self.round_steps and self.eval_due()):
            return self.env_steps
        due, total = self.next_checkpoint, self.cfg.total_env_steps
        return due if due is not None and due < total else total

    # -- checkpoints ------------------------------------------------------------
    def checkpoint_due(self) -> bool:
        """A periodic checkpoint is due once the steps taken reach it (collection stops there:
        `collection_limit`); the run's last checkpoint is written at its end, not here."""
        due = self.next_checkpoint
        total = self.cfg.total_env_steps
        return due is not None and due <= self.env_steps < total

    def checkpoint_written(self) -> None:
        every = self.cfg.checkpoint_every
        self.next_checkpoint = (self.env_steps // every + 1) * every if every else None

    # -- state and summary ------------------------------------------------------
    def counters(self) -> dict:
        return {
            "env_steps": self.env_steps,
            "model_updates": self.model_updates,
            "policy_updates": self.policy_updates,
            "evaluations": self.evaluations,
            "episodes": self.episodes[-EPISODES_KEPT:],
            "next_eval": self.next_eval,
            "diagnostics": self.diagnostics,
            "calibration_curve": self.calibration_curve,
            "watch": self.watch.state() if self.watch else {},
        }

    def load_counters(self, counters: dict) -> None:
        self.env_steps = int(counters["env_steps"])
        self.model_updates = int(counters.get("model_updates", 0))
        self.policy_updates = int(counters.get("policy_updates", 0))
        self.evaluations = [tuple(e) for e in counters.get("evaluations", [])]
        self.episodes = [tuple(e) for e in counters.get("episodes", [])]
        self.next_eval = int(counters.get("next_eval", self.env_steps))
        self.diagnostics = [dict(d) for d in counters.get("diagnostics", [])]
        self.calibration_curve = [list(b) for b in counters.get("calibration_curve", [])]
        if self.watch:
            self.watch.load_state(counters.get("watch", {}))
        self.checkpoint_written()

    def summary(self, wall_s: float) -> dict:
        returns = [r for _, r in self.evaluations]
        return {
            "env_steps": self.env_steps,
            "model_updates": self.model_updates,
            "policy_updates": self.policy_updates,
            "final_return": returns[-1] if returns else None,
            "best_return": max(returns) if returns else None,
            "reached_stop_return_at": self.reached_at,
            "evaluations": self.evaluations,
            "model_ratio": self.model_limiter.achieved(self.env_steps, self.model_updates),
            "policy_ratio": self.policy_limiter.achieved(self.env_steps, self.policy_updates),
            "wall_s": wall_s,
            # seconds the model diagnostics took, as a share of the wall-clock (their cost)
            "diagnostics_share": self.diagnostics_s / wall_s if wall_s > 0 else None,
            "model_warnings": list(self.watch.fired_at) if self.watch else [],
        }
