"""The objective seam: what a policy objective declares and provides, and the registry of objectives.

An objective is the policy learner's algorithm. It declares what one update consumes
from the replay (`DataNeeds`: start states for imagined rollouts, whole transitions,
or both); the runtimes sample exactly that and hand it to `update`. Registering a
factory under a name makes `policy.objective: <name>` select it; no runtime changes.

An objective outside the package is named `module:name` (`policy.objective:
my_objectives:zero_gradient`): whichever process builds it (the driver checking the
config, the inline runner, a Ray policy-learner actor) imports `module` first, and the
import registers `name` there. `module` must be importable in those processes: on their
`PYTHONPATH`, in a Ray job's `working_dir`, or installed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Callable, Protocol

import torch

from umpo_dist.data.replay import DataNeeds
from umpo_dist.learner import Learner

if TYPE_CHECKING:
    from umpo_dist.config import Config
    from umpo_dist.envs.spec import EnvSpec
    from umpo_dist.models.policy import TanhGaussianPolicy


class Objective(Learner, Protocol):
    """`state()` holds the policy's weights under "policy" (checkpoints export the policy from there).

    Optional: `shared_weights() -> {name: state dict}`, weights other learners use, which the Ray policy
    learner publishes beside the policy's after each call (mnm's classifier, for `mnm.model_realism`).
    """

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


def resolve_objective(name: str) -> ObjectiveFactory:
    """The factory registered under `name`; for `module:name`, under `name` once `module` is imported."""
    module, sep, short = name.rpartition(":")
    if sep:
        try:
            importlib.import_module(module)
        except (ImportError, TypeError) as exc:  # TypeError: a relative name such as '.x'
            raise ValueError(f"objective {name!r}: cannot import module {module!r} ({exc})") from None
    try:
        return _REGISTRY[short]
    except KeyError:
        raise ValueError(f"no objective named {short!r}; registered: {', '.join(registered_objectives())}") from None


def build_objective(cfg: Config, spec: EnvSpec, device: torch.device | str = "cpu") -> Objective:
    """The objective named by `cfg.policy.objective` (a registered name, or `module:name`), on `device`."""
    return resolve_objective(cfg.policy.objective)(cfg, spec, torch.device(device))
