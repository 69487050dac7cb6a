"""The env-worker actor: an `EnvCollector` acting with the newest policy it holds.

It looks for newer policy weights at the start of each call and every
`train.publish_every` steps within it (a non-blocking poll of the weight store), so a
chunk is not collected with a policy older than the learner's last few publications.
"""

from __future__ import annotations

import time
import uuid

import ray

from umpo_dist.envs.collector import EnvCollector
from umpo_dist.config import Config
from umpo_dist.devices import set_threads
from umpo_dist.envs.spec import EnvSpec
from umpo_dist.models.policy import build_policy
from umpo_dist.runtime.ray.cluster import assigned_cpus
from umpo_dist.runtime.ray.chunk_sender import ChunkSender
from umpo_dist.runtime.ray.retry import was_restarted
from umpo_dist.runtime.ray.weights import WeightSubscriber


@ray.remote(max_restarts=-1)
class EnvWorker:
    def __init__(self, cfg: Config, spec: EnvSpec, index: int, replay, store):
        set_threads(assigned_cpus())
        # A restarted worker gets fresh seeds and a new chunk stream, so nothing collides with its past.
        self.stream = uuid.uuid4().hex
        seed = cfg.train.seed + 7919 * (index + 1)
        self.restarted = was_restarted()
        if self.restarted:
            seed += 1 + uuid.UUID(self.stream).int % 1_000_000
        self.collector = EnvCollector(spec.env_id, cfg.resources.envs_per_worker, seed, cfg.env.max_episode_steps)
        self.policy = build_policy(spec, cfg.policy)
        self.sender = ChunkSender(replay, self.stream)
        self.policy_weights = WeightSubscriber(store, "policy")
        self.node_id = ray.get_runtime_context().get_node_id()
        self.refresh_every = cfg.train.publish_every
        self._acted = 0

    def _refresh(self) -> None:
        weights = self.policy_weights.poll()
        if weights is not None:
            self.policy.load_state_dict(weights)

    def _act(self, obs):
        self._acted += 1
        if self._acted % self.refresh_every == 0:
            self._refresh()
        return self.policy.act(obs)

    def collect(self, num_steps: int, random_actions: bool) -> dict:
        """Step `num_steps` times, push the transitions to the replay, wait for its acknowledgement.

        A chunk that is not acknowledged (the replay is restarting) is resent with the
        same id until it is; the replay stores it once (`ChunkSender`).
        """
        started = time.perf_counter()
        self._refresh()
        use_policy = not random_actions and self.policy_weights.version >= 0
        batch, episodes = self.collector.collect(num_steps, self._act if use_policy else None)
        inserted = len(batch.get("reward", ()))
        total = None
        if inserted:
            self.sender.send(batch)
            self.sender.flush()
            total = self.sender.total
        return {
            "steps": inserted,
            "replay_total": total,
            "episodes": episodes,
            "policy_version": self.policy_weights.version if use_policy else -1,
            "node_id": self.node_id,
            "dropped_episodes": self.collector.dropped_episodes,
            "restarted": self._take_restarted(),
            "busy_s": time.perf_counter() - started,
        }

    def _take_restarted(self) -> bool:
        """True once, on the first call after Ray restarted this actor."""
        restarted, self.restarted = self.restarted, False
        return restarted
