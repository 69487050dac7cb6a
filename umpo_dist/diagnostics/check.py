"""All of an evaluation's model diagnostics, from its recorded episodes."""

from __future__ import annotations

import time

import numpy as np

from umpo_dist.config import Config
from umpo_dist.diagnostics.calibration import model_calibration
from umpo_dist.diagnostics.foresight import termination_foresight
from umpo_dist.diagnostics.imagination import imagination_gap
from umpo_dist.models.ensemble import EnsembleDynamics
from umpo_dist.models.policy import TanhGaussianPolicy


def check_model(model: EnsembleDynamics, policy: TanhGaussianPolicy, episodes: list[dict], cfg: Config) -> dict:
    """Calibration figures (`calibration_error`, `spread_error_corr`, `predicted_rmse`, `observed_rmse`,
    `curve`), imagined-vs-real figures (`gap`, `gap_share`, ... or none if no window fits), the termination
    probability where the episodes ended and elsewhere (`termination_at_ends`, ...) and `seconds`."""
    d = cfg.diagnostics
    start = time.perf_counter()
    transitions = {k: np.concatenate([ep[k] for ep in episodes]) for k in ("obs", "action", "next_obs", "reward")}
    n = len(transitions["reward"])
    if n > d.max_transitions:
        keep = np.linspace(0, n - 1, d.max_transitions).round().astype(int)
        transitions = {k: v[keep] for k, v in transitions.items()}
    out = model_calibration(model, transitions, d.calibration_bins)
    gap = imagination_gap(model, policy, episodes, d.horizon or cfg.policy.horizon, cfg.policy.gamma,
                          d.start_every, d.max_starts)
    out.update(gap or {})
    out.update(termination_foresight(model, episodes))
    out["seconds"] = time.perf_counter() - start
    return out
