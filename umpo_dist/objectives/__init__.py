"""Policy objectives, side by side over the shared rollouts, replay and model; `policy.objective` picks one.

- `mean_variance`: mean − λ·std of the members' particle returns, differentiated
  through model rollouts (`mean_variance.py`).

Shared pieces: `rollouts.py` (differentiable imagined rollouts, particle returns,
λ-returns); the seam every objective implements: `base.py`.
"""

from umpo_dist.objectives.base import (
    Objective,
    build_objective,
    register_objective,
    registered_objectives,
    resolve_objective,
)
from umpo_dist.objectives import mean_variance  # noqa: F401  (registers "mean_variance")

__all__ = ["Objective", "build_objective", "register_objective", "registered_objectives", "resolve_objective"]
