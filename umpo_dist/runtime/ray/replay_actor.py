"""The replay actor: the durable replay buffer, served to the env workers and learners."""

from __future__ import annotations

import ray

from umpo_dist.data.durable_replay import DurableReplayBuffer


@ray.remote(num_cpus=0, max_restarts=-1)
class ReplayActor(DurableReplayBuffer):
    """Every buffer method is a remote call; batches travel as one message of numpy arrays.

    It reserves no CPU: it only copies arrays, and the learners and workers it serves
    hold the cores. Given a run directory it logs each accepted chunk before
    acknowledging it, and a restart rebuilds it from the checkpoint and that log. A learner's
    next batches come in one call (`many`).
    """
