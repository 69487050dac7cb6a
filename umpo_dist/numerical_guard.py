"""Skips updates that went non-finite and rolls a learner back after repeated blow-ups."""

from __future__ import annotations

import copy

import torch


class NumericalGuard:
    """Watches one learner's updates.

    `finite(...)` tells whether an update may be applied; `good()`/`bad()` record the
    outcome. Every `snapshot_every` good updates the state of `parts` (modules and
    optimisers) is copied; `max_consecutive` bad updates in a row restore that copy.
    """

    def __init__(self, parts: dict, snapshot_every: int = 100, max_consecutive: int = 5):
        self.parts = parts
        self.snapshot_every = snapshot_every
        self.max_consecutive = max_consecutive
        self.skipped = 0
        self.rollbacks = 0
        self.consecutive = 0
        self._good = 0
        self._snapshot = self._copy()

    def _copy(self) -> dict:
        return {name: copy.deepcopy(part.state_dict()) for name, part in self.parts.items()}

    @staticmethod
    def finite(*tensors: torch.Tensor) -> bool:
        return all(bool(torch.isfinite(t).all()) for t in tensors)

    def good(self) -> None:
        self.consecutive = 0
        self._good += 1
        if self._good % self.snapshot_every == 0:
            self._snapshot = self._copy()

    def bad(self) -> bool:
        """Count a skipped update; returns True when it triggered a rollback."""
        self.skipped += 1
        self.consecutive += 1
        if self.consecutive < self.max_consecutive:
            return False
        for name, part in self.parts.items():
            part.load_state_dict(self._snapshot[name])
        self.rollbacks += 1
        self.consecutive = 0
        return True

    def metrics(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}/nonfinite_skipped": self.skipped, f"{prefix}/rollbacks": self.rollbacks}
