"""The learner role: what the runtimes need from anything that trains (model learner, objectives)."""

from __future__ import annotations

from typing import Any, Protocol


class Learner(Protocol):
    updates: int  # gradient updates applied so far; the version its published weights carry

    def update(self, data: Any) -> dict[str, float]:
        """One update on data from the replay; returns metrics."""

    def weights(self) -> dict:
        """The weights others act or imagine with (published to the weight store)."""

    def state(self) -> dict:
        """Everything needed to continue: weights, optimisers, counters (for checkpoints)."""

    def load_state(self, state: dict) -> None: ...
