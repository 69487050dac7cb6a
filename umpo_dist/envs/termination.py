"""The tasks' known termination rules, for imagined rollouts (`model.termination: known`; design §6).

MBPO and DHMBPO roll Hopper, Walker2d and Ant out with the rule the environment itself
applies instead of a learned termination head. Each rule here reads only the
observation (Gymnasium's default observation, which leaves out the x position — and
the y position for Ant) and returns True where the environment would end the episode
on arriving in that state. `tests/envs/test_termination.py` checks every rule against
the real environment's `terminated` flag.
"""

from __future__ import annotations

from typing import Callable

import torch

TerminationRule = Callable[[torch.Tensor], torch.Tensor]  # next observations (..., obs_dim) -> bool (...)


def _hopper(obs: torch.Tensor) -> torch.Tensor:
    # healthy: height > 0.7, |torso angle| < 0.2, every other coordinate inside (-100, 100)
    z, angle = obs[..., 0], obs[..., 1]
    healthy = (z > 0.7) & (angle.abs() < 0.2) & (obs[..., 1:].abs() < 100).all(-1)
    return ~healthy


def _walker2d(obs: torch.Tensor) -> torch.Tensor:
    # healthy: 0.8 < height < 2.0, |torso angle| < 1
    z, angle = obs[..., 0], obs[..., 1]
    return ~((z > 0.8) & (z < 2.0) & (angle.abs() < 1.0))


def _ant(obs: torch.Tensor) -> torch.Tensor:
    # healthy: a finite state and 0.2 <= torso height <= 1.0
    z = obs[..., 0]
    return ~(torch.isfinite(obs).all(-1) & (z >= 0.2) & (z <= 1.0))


def _inverted_pendulum(obs: torch.Tensor) -> torch.Tensor:
    # alive while finite and the pole within 0.2 rad of upright
    return ~(torch.isfinite(obs).all(-1) & (obs[..., 1].abs() <= 0.2))


_RULES: dict[str, TerminationRule] = {
    "Hopper": _hopper,
    "Walker2d": _walker2d,
    "Ant": _ant,
    "InvertedPendulum": _inverted_pendulum,
}
_VERSIONS = ("v4", "v5")  # the versions whose default observation the rules above read


def known_termination(env_id: str) -> TerminationRule | None:
    """The rule of `env_id` (e.g. 'Hopper-v5'), or None where this project knows none."""
    name, _, version = env_id.rpartition("-")
    return _RULES.get(name) if version in _VERSIONS else None


def tasks_with_known_termination() -> list[str]:
    return [f"{name}-{v}" for name in _RULES for v in _VERSIONS]
