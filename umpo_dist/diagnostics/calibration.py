"""One-step calibration of the ensemble on fresh transitions.

The ensemble's predictive distribution for a target (Δobs, reward) has mean μ = mean
of the members' means and variance σ² = mean aleatoric variance + epistemic variance
(the variance of the members' means). A calibrated model's σ² matches the squared
error (μ − y)² it actually makes, on average over any group of predictions that
share a σ. Targets are measured in units of the model's target standard deviation,
so that every dimension weighs alike.

The calibration error is the expected normalised calibration error (ENCE, Levi et al.
2022): predictions are binned by σ (equal-count bins) and
ENCE = mean over bins |RMV − RMSE| / RMV, with RMV = √(mean σ²) and RMSE = √(mean (μ − y)²)
in the bin. It is 0 for a calibrated model (up to sampling noise), and ≈ 0.5 for one
whose variances are 4× too large (its σ 2× too large).
"""

from __future__ import annotations

import numpy as np
import torch

from umpo_dist.models.ensemble import EnsembleDynamics


def calibration_curve(pred_var: np.ndarray, sq_err: np.ndarray, bins: int = 10) -> list[tuple[float, float, int]]:
    """(RMV, RMSE, count) per equal-count bin of predicted variance, smallest first."""
    pred_var, sq_err = np.asarray(pred_var, np.float64).ravel(), np.asarray(sq_err, np.float64).ravel()
    order = np.argsort(pred_var, kind="stable")
    curve = []
    for idx in np.array_split(order, min(bins, len(order))):
        if len(idx):
            curve.append((float(np.sqrt(pred_var[idx].mean())), float(np.sqrt(sq_err[idx].mean())), int(len(idx))))
    return curve


def calibration_error(curve: list[tuple[float, float, int]]) -> float:
    """ENCE: the mean over bins of |RMV − RMSE| / RMV."""
    return float(np.mean([abs(rmv - rmse) / max(rmv, 1e-12) for rmv, rmse, _ in curve]))


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1, tied values sharing their mean rank."""
    _, inverse, counts = np.unique(np.asarray(x, np.float64).ravel(), return_inverse=True, return_counts=True)
    first = np.cumsum(counts) - counts
    return (first + (counts - 1) / 2)[inverse]


def rank_correlation(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (0 when either side is constant)."""
    rx, ry = _ranks(x), _ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return 0.0
    return float(np.corrcoef(rx, ry)[0, 1])


def calibration_report(mean: np.ndarray, aleatoric: np.ndarray, target: np.ndarray, scale: np.ndarray,
                       bins: int = 10) -> dict:
    """Calibration of per-member Gaussian predictions.

    `mean`, `aleatoric`: (E, N, D) per-member means and variances; `target`: (N, D);
    `scale`: (D,) the unit of each dimension (the model's target std).
    """
    mean, aleatoric = np.asarray(mean, np.float64), np.asarray(aleatoric, np.float64)
    scale = np.maximum(np.asarray(scale, np.float64), 1e-12)
    mu = mean.mean(0)
    epistemic = mean.var(0)
    pred_var = (aleatoric.mean(0) + epistemic) / scale**2
    sq_err = ((mu - np.asarray(target, np.float64)) / scale) ** 2
    curve = calibration_curve(pred_var, sq_err, bins)
    return {
        "calibration_error": calibration_error(curve),
        # Does the members' disagreement point at the errors? (rank correlation of epistemic std and |error|)
        "spread_error_corr": rank_correlation(np.sqrt(epistemic / scale**2), np.sqrt(sq_err)),
        "predicted_rmse": float(np.sqrt(pred_var.mean())),
        "observed_rmse": float(np.sqrt(sq_err.mean())),
        "curve": curve,
    }


@torch.no_grad()
def model_calibration(model: EnsembleDynamics, transitions: dict, bins: int = 10) -> dict:
    """`calibration_report` of `model` on `transitions` (arrays `obs`, `action`, `next_obs`, `reward`)."""
    batch = {k: torch.as_tensor(np.asarray(transitions[k], np.float32)) for k in ("obs", "action", "next_obs", "reward")}
    pred = model.predict(batch["obs"], batch["action"])
    return calibration_report(pred["mean"].numpy(), pred["var"].numpy(), model.targets(batch).numpy(),
                              model.target_norm.std.numpy(), bins)
