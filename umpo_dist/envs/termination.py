"""The tasks' known termination rules, for imagined rollouts (`model.termination: known | known_soft`; design §6).

MBPO and DHMBPO roll Hopper, Walker2d and Ant out with the rule the environment itself
applies instead of a learned termination head. Each rule here reads only the
observation (Gymnasium's default observation, which leaves out the x position — and
the y position for Ant) and returns a *margin*: the smallest distance, over the rule's
health checks, from the limit that check sets, in units of a per-check softness
(0.05 m of height, 0.02 rad of torso angle, ...). The environment ends an episode on
arriving in a state where the margin is not positive (`terminated`); a non-finite
state has margin −∞. `tests/envs/test_termination.py` checks every rule against the
real environment's `terminated` flag.

`known` uses the rule as it is: a hard 0/1 continuation, as the anchors do. A hard
mask gives the policy no gradient away from the limits, which a learned head's soft
probability does; `known_soft` keeps the rule's decision (continuation > ½ exactly
where the state is healthy) but continues with probability σ(margin), so a particle
near a limit is partly ended and the gradient points away from it.
"""

from __future__ import annotations

from typing import Callable

import torch

TerminationRule = Callable[[torch.Tensor], torch.Tensor]  # next observations (..., obs_dim) -> margin (...)


def _margin(obs: torch.Tensor, *checks: torch.Tensor) -> torch.Tensor:
    """The smallest of the checks' margins; −∞ where the observation is not finite."""
    m = torch.stack(checks, -1).amin(-1)
    return torch.where(torch.isfinite(obs).all(-1), m, torch.full_like(m, -torch.inf))


def _hopper(obs: torch.Tensor) -> torch.Tensor:
    # healthy: height > 0.7, |torso angle| < 0.2, every other coordinate inside (-100, 100)
    return _margin(obs, (obs[..., 0] - 0.7) / 0.05, (0.2 - obs[..., 1].abs()) / 0.02,
                   100.0 - obs[..., 1:].abs().amax(-1))


def _walker2d(obs: torch.Tensor) -> torch.Tensor:
    # healthy: 0.8 < height < 2.0, |torso angle| < 1
    z = obs[..., 0]
    return _margin(obs, (z - 0.8) / 0.05, (2.0 - z) / 0.05, (1.0 - obs[..., 1].abs()) / 0.1)


def _ant(obs: torch.Tensor) -> torch.Tensor:
    # healthy: a finite state and 0.2 <= torso height <= 1.0
    z = obs[..., 0]
    return _margin(obs, (z - 0.2) / 0.05, (1.0 - z) / 0.05)


def _inverted_pendulum(obs: torch.Tensor) -> torch.Tensor:
    # alive while finite and the pole within 0.2 rad of upright
    return _margin(obs, (0.2 - obs[..., 1].abs()) / 0.02)


_RULES: dict[str, TerminationRule] = {
    "Hopper": _hopper,
    "Walker2d": _walker2d,
    "Ant": _ant,
    "InvertedPendulum": _inverted_pendulum,
}
_VERSIONS = ("v4", "v5")  # the versions whose default observation the rules above read


def known_termination(env_id: str) -> TerminationRule | None:
    """The margin rule of `env_id` (e.g. 'Hopper-v5'), or None where this project knows none."""
    name, _, version = env_id.rpartition("-")
    return _RULES.get(name) if version in _VERSIONS else None


def terminated(margin: torch.Tensor) -> torch.Tensor:
    """Where the environment ends the episode: a margin that is not positive."""
    return ~(margin > 0)


def continuation(margin: torch.Tensor, soft: bool) -> torch.Tensor:
    """The probability of continuing: 0/1 from the rule, or σ(margin) (> ½ exactly where it is 1)."""
    return torch.sigmoid(margin) if soft else (margin > 0).to(margin.dtype)


def tasks_with_known_termination() -> list[str]:
    return [f"{name}-{v}" for name in _RULES for v in _VERSIONS]
