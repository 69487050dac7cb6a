"""The objective seam: what a policy objective declares and provides, and the registry of objectives.

An objective is the policy learner's algorithm. It declares what one update consumes
from the replay (`DataNeeds`: start states for imagined rollouts, whole transitions,
or both); the runtimes sample exactly that and hand it to `update`. Registering a
factory under a name makes `policy.objective: <name>` select it; no runtime changes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Protocol

import torch

from umpo_dist.data.replay import DataNeeds
from umpo_dist.learner import Learner

if TYPE_CHECKING:
    from umpo_dist.config import Config
    from umpo_dist.envs.spec import EnvSpec
    from umpo_dist.models.policy import TanhGaussianPolicy


class Objective(Learner, Protocol):
    needs: DataNeeds  # what one `update` consumes: `update(replay.sample_for(needs))`
    policy: TanhGaussianPolicy  # the policy it improves (its `weights()` are this policy's)
    model_version: int  # version of the dynamics-model weights it holds (-1: none yet)

    def set_model_weights(self, weights: dict, version: int) -> None:
        """Take newer weights of the dynamics model (an `EnsembleDynamics` state dict)."""


ObjectiveFactory = Callable[["Config", "EnvSpec", torch.device], Objective]
_REGISTRY: dict[str, ObjectiveFactory] = {}


def register_objective(name: str) -> Callable[[ObjectiveFactory], ObjectiveFactory]:
    """Decorator: `@register_objective("name")` on a class or function `(cfg, spec, device) -> Objective`."""

    def add(factory: ObjectiveFactory) -> ObjectiveFactory:
        _REGISTRY[name] = factory
        return factory

    return add


def registered_objectives() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def build_objective(cfg: Config, spec: EnvSpec, device: torch.device | str = "cpu") -> Objective:
    """The objective named by `cfg.policy.objective`, on `device`."""
    try:
        factory = _REGISTRY[cfg.policy.objective]
    except KeyError:
        raise ValueError(f"no objective named {cfg.policy.objective!r}; registered: {', '.join(registered_objectives())}") from None
    return factory(cfg, spec, torch.device(device))
