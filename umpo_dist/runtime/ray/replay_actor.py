"""The replay actor: the durable replay buffer, served to the env workers and learners, and the
admission that paces the env workers by the learners' progress (`runtime/admission.py`)."""

from __future__ import annotations

import ray

from umpo_dist.data.durable_replay import DurableReplayBuffer
from umpo_dist.runtime.admission import Admission, Grant


@ray.remote(num_cpus=0, max_restarts=-1)
class ReplayActor(DurableReplayBuffer):
    """Every buffer method is a remote call; batches travel as one message of numpy arrays.

    It reserves no CPU: it only copies arrays, and the learners and workers it serves
    hold the cores. Given a run directory it logs each accepted chunk before
    acknowledging it, and a restart rebuilds it from the checkpoint and that log. A learner's
    next batches come in one call (`many`). Given an `admission`, env workers ask it for
    their chunks (`reserve`) and the driver keeps it told of the learners' progress (`admit`);
    a restarted replay grants nothing until the driver's next word.
    """

    def __init__(self, *args, admission: Admission | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.admission = admission

    def _admission(self) -> Admission:
        if self.admission is None:
            raise RuntimeError("this replay was started without an admission: env workers cannot ask it for chunks")
        return self.admission

    def admit(self, model_updates: int, policy_updates: int, limit: int) -> int:
        """The learners' update counts and the env step collection may run to; returns the acknowledged total."""
        self._admission().update(model_updates, policy_updates, limit)
        return self.total_inserted

    def reserve(self, stream: str, want: int) -> Grant:
        return self._admission().grant(stream, self.total_inserted, want)

    def release(self, stream: str) -> None:
        self._admission().release(stream)

    def insert_chunks(self, batches: list, stream: str, first_seq: int) -> int:
        before = self.total_inserted
        total = super().insert_chunks(batches, stream, first_seq)
        if self.admission is not None:
            self.admission.inserted(stream, total - before)
        return total
