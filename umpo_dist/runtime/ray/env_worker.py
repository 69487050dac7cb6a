"""The env-worker actor: an `EnvCollector` acting with the newest policy it holds, in its own loop.

It acts through a `NumpyPolicy` (the same actions at a third of torch's per-call cost at
batch 8). It asks the replay for each chunk (the replay paces the workers by the learners'
progress: `runtime/admission.py`) and sends it without waiting for the one before to be
acknowledged. It asks for newer policy weights (and waits for the answer) at the start of
each call and whenever the learners let it go on after holding it back, so that a
round's first steps act with the round's policy; between those, it looks at most every
`WEIGHT_POLL_S` (a non-blocking poll of the weight store): far more
often than a learner publishes (every `train.publish_every` updates, tens of ms each),
and far less often than a step, whose batched inference costs less than one look.
"""

from __future__ import annotations

import time
import uuid

import ray

from umpo_dist.envs.collector import EnvCollector, noise_seed, worker_seed
from umpo_dist.config import Config
from umpo_dist.devices import set_threads
from umpo_dist.envs.spec import EnvSpec
from umpo_dist.models.numpy_policy import NumpyPolicy
from umpo_dist.models.policy import build_policy
from umpo_dist.runtime.admission import Grant
from umpo_dist.runtime.ray.chunk_sender import ChunkSender
from umpo_dist.runtime.ray.cluster import assigned_cpus
from umpo_dist.runtime.ray.retry import ACTOR_ERRORS, call_with_retry, was_restarted
from umpo_dist.runtime.ray.weights import WeightSubscriber

RUN_CALL_S = 0.5  # a run call's longest span: how often the driver hears of episodes and counts
INSERTS_IN_FLIGHT = 4  # chunks sent and not yet acknowledged, at most
# First and longest pause between asks while the learners are behind: continuous learners hold a worker back
# for one learner call (tens of updates), rounds (`train.train_every`) for a whole round's updates (tens of
# seconds), where asking 50 times a second spent a third of a core per run on asks and their answers (4 workers
# and the replay, 2-core machine) and a round's start a quarter second later costs nothing. The pause grows
# across calls and starts again at the first when a chunk is granted.
WAIT_S = {"continuous": (0.001, 0.02), "rounds": (0.001, 0.25)}
WEIGHT_POLL_S = 0.01  # the shortest pause between looks for newer policy weights within a call


@ray.remote(max_restarts=-1)
class EnvWorker:
    def __init__(self, cfg: Config, spec: EnvSpec, index: int, replay, store):
        set_threads(assigned_cpus())
        # A restarted worker gets fresh seeds and a new chunk stream, so nothing collides with its past.
        self.stream = uuid.uuid4().hex
        seed = worker_seed(cfg.train.seed, index)
        self.restarted = was_restarted()
        if self.restarted:
            seed += 1 + uuid.UUID(self.stream).int % 1_000_000
        self.collector = EnvCollector(spec.env_id, cfg.resources.envs_per_worker, seed, cfg.env.max_episode_steps)
        self.policy = build_policy(spec, cfg.policy)  # receives the published weights
        self.actor = NumpyPolicy(self.policy, noise_seed(seed))  # acts with them
        self.replay = replay
        self.sender = ChunkSender(replay, self.stream, window=INSERTS_IN_FLIGHT)
        self.policy_weights = WeightSubscriber(store, "policy")
        self.node_id = ray.get_runtime_context().get_node_id()
        self._clock = time.perf_counter
        self._next_poll = 0.0
        self.waits = WAIT_S["rounds" if cfg.train.round_steps(cfg.resources.ratio_tolerance) else "continuous"]
        self._delay = self.waits[0]  # the next pause while held back

    def _refresh(self, ask_now: bool = False) -> None:
        """Newer policy weights if there are some: `ask_now` waits for the store's answer (a call's start, so
        that a round's first steps act with the round's policy), else a look that never waits."""
        self._next_poll = self._clock() + WEIGHT_POLL_S
        weights = self.policy_weights.fetch() if ask_now else self.policy_weights.poll()
        if weights is not None:
            self.policy.load_state_dict(weights)
            self.actor.load(self.policy)

    def _act(self, obs):
        if self._clock() >= self._next_poll:
            self._refresh()
        return self.actor.act(obs)

    def run(self, chunk_size: int, max_seconds: float = RUN_CALL_S) -> dict:
        """Collect on its own: ask the replay for a chunk, step it, send it, and go on.

        The next grant is asked for while a chunk is collected, and up to `INSERTS_IN_FLIGHT`
        chunks travel unacknowledged (`ChunkSender`: exactly once, in order, resent after a
        replay restart). The call ends when the replay closes collection (the budget, a
        checkpoint or a stop), when the learners hold the worker back after it has sent
        something (the driver then learns the new count at once), or after `max_seconds`;
        it waits for every acknowledgement and reports what was collected.
        """
        deadline = time.perf_counter() + max_seconds
        acknowledged, busy = self.sender.acknowledged, 0.0
        episodes, versions, sent = [], [], 0
        self._refresh(ask_now=True)
        ask, held_back = self._ask(chunk_size), False
        while ask is not None:
            grant, ask = self._answer(ask, chunk_size), None
            if grant.closed:
                break
            if grant.steps == 0:  # the learners are behind
                if sent or time.perf_counter() + self._delay > deadline:
                    break
                time.sleep(self._delay)
                self._delay, held_back = min(2 * self._delay, self.waits[1]), True
                ask = self._ask(chunk_size)
                continue
            if held_back:  # the learners have caught up: act with the policy they have now
                self._refresh(ask_now=True)
                held_back = False
            self._delay = self.waits[0]
            if time.perf_counter() < deadline:
                ask = self._ask(chunk_size)  # answered while this chunk is collected
            t0 = time.perf_counter()
            use_policy = not grant.random and self.policy_weights.version >= 0
            batch, done = self.collector.collect(grant.steps, self._act if use_policy else None)
            episodes += done
            versions.append(self.policy_weights.version if use_policy else -1)
            if len(batch.get("reward", ())):
                self.sender.send(batch)
                sent += 1
            busy += time.perf_counter() - t0
        self.sender.flush()
        self.replay.release.remote(self.stream)  # after every insert and ask sent: nothing stays reserved
        return {
            "steps": self.sender.acknowledged - acknowledged,
            "replay_total": self.sender.total,
            "episodes": episodes,
            "policy_versions": versions,
            "node_id": self.node_id,
            "dropped_episodes": self.collector.dropped_episodes,
            "restarted": self._take_restarted(),
            "busy_s": busy,
        }

    def _ask(self, chunk_size: int):
        return self.replay.reserve.remote(self.stream, chunk_size)

    def _answer(self, ask, chunk_size: int) -> Grant:
        try:
            return ray.get(ask)
        except ACTOR_ERRORS:  # the replay is restarting: ask the new one (it grants once the driver has told it)
            return call_with_retry(lambda: self._ask(chunk_size), "replay reserve")

    def _take_restarted(self) -> bool:
        """True once, on the first call after Ray restarted this actor."""
        restarted, self.restarted = self.restarted, False
        return restarted
