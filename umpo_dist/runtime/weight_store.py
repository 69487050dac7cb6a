"""The weight store: the newest published weight set of each kind, with a version number.

Publishing stores one reference (on Ray, the `ray.put` object ref, wrapped in a list so
Ray does not resolve it); readers ask with the version they hold and get `None` back
unless a newer one exists, so unchanged weights are never transferred twice.
"""

from __future__ import annotations

from typing import Any


class WeightStore:
    def __init__(self):
        self._latest: dict[str, tuple[int, Any]] = {}

    def publish(self, name: str, version: int, ref: Any) -> int:
        """Keep `ref` if `version` is newer than what is held; returns the held version."""
        held = self._latest.get(name)
        if held is None or version > held[0]:
            self._latest[name] = (version, ref)
        return self._latest[name][0]

    def latest(self, name: str, known_version: int = -1) -> tuple[int, Any] | None:
        """`(version, ref)` if newer than `known_version`, else None."""
        held = self._latest.get(name)
        if held is None or held[0] <= known_version:
            return None
        return held
