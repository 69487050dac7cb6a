"""The env-worker actor: an `EnvCollector` acting with the newest policy it holds."""

from __future__ import annotations

import ray

from ..collector import EnvCollector
from ..config import Config
from ..devices import set_threads
from ..envs import EnvSpec
from ..policy import TanhGaussianPolicy
from .weights import WeightSubscriber


@ray.remote
class EnvWorker:
    def __init__(self, cfg: Config, spec: EnvSpec, index: int, replay, store):
        set_threads(cfg.resources.worker_cpus)
        seed = cfg.train.seed + 7919 * (index + 1)
        self.collector = EnvCollector(spec.env_id, cfg.resources.envs_per_worker, seed, cfg.env.max_episode_steps)
        self.policy = TanhGaussianPolicy(spec.obs_dim, spec.action_low, spec.action_high, cfg.policy.hidden_layers,
                                         cfg.policy.hidden_size)
        self.replay = replay
        self.policy_weights = WeightSubscriber(store, "policy")
        self.node_id = ray.get_runtime_context().get_node_id()

    def collect(self, num_steps: int, random_actions: bool) -> dict:
        """Step `num_steps` times, push the transitions to the replay, wait for its acknowledgement."""
        weights = self.policy_weights.poll()
        if weights is not None:
            self.policy.load_state_dict(weights)
        use_policy = not random_actions and self.policy_weights.version >= 0
        batch, episodes = self.collector.collect(num_steps, self.policy.act if use_policy else None)
        inserted = len(batch.get("reward", ()))
        total = ray.get(self.replay.insert.remote(batch)) if inserted else None
        return {
            "steps": inserted,
            "replay_total": total,
            "episodes": episodes,
            "policy_version": self.policy_weights.version if use_policy else -1,
            "node_id": self.node_id,
            "dropped_episodes": self.collector.dropped_episodes,
        }
