"""The replay actor: the plain `ReplayBuffer`, served to the env workers and learners."""

from __future__ import annotations

import ray

from ..replay import ReplayBuffer


@ray.remote(num_cpus=0)
class ReplayActor(ReplayBuffer):
    """Every `ReplayBuffer` method is a remote call; batches travel as one message of numpy arrays.

    It reserves no CPU: it only copies arrays, and the learners and workers it serves
    hold the cores.
    """

    def insert(self, batch: dict) -> int:
        super().insert(batch)
        return self.total_inserted
