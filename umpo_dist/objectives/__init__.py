"""Policy objectives, side by side over the shared rollouts, replay and model; `policy.objective` picks one.

- `mean_variance`: mean − λ·std of the members' particle returns, differentiated
  through model rollouts (`mean_variance.py`).
- `mnm`: mean_variance on rewards plus w·log(C/(1−C)) of a classifier that tells real
  transitions from the model's (Mismatched No More; `mnm.py`).
- `dyna`: SAC on real and model transitions from branched rollouts, no gradient
  through the model (MBPO; `dyna.py`).

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
from umpo_dist.objectives import mnm  # noqa: F401  (registers "mnm")
from umpo_dist.objectives import dyna  # noqa: F401  (registers "dyna")

__all__ = ["Objective", "build_objective", "register_objective", "registered_objectives", "resolve_objective"]
