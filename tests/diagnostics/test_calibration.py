"""One-step calibration: a calibrated synthetic predictor scores near 0, mis-scaled ones clearly more."""

import numpy as np
import pytest
import torch

from umpo_dist.diagnostics.calibration import calibration_report, model_calibration, rank_correlation
from umpo_dist.models.ensemble import EnsembleDynamics

E, N, D = 5, 4000, 3


def synthetic(seed=0):
    """Members that share a mean; targets drawn from exactly the Gaussian they predict (σ varies ×100)."""
    rng = np.random.default_rng(seed)
    mu = rng.normal(size=(N, D))
    sigma = np.exp(rng.uniform(-3, 1.6, size=(N, D)))
    target = mu + sigma * rng.normal(size=(N, D))
    mean = np.broadcast_to(mu, (E, N, D)).copy()
    aleatoric = np.broadcast_to(sigma**2, (E, N, D)).copy()
    return mean, aleatoric, target


def test_a_calibrated_predictor_scores_near_zero_and_mis_scaled_ones_clearly_more():
    mean, aleatoric, target = synthetic()
    scale = np.ones(D)
    good = calibration_report(mean, aleatoric, target, scale)
    assert good["calibration_error"] < 0.05  # 10 bins of 1,200 errors each: sampling noise ≈ 2%
    assert good["predicted_rmse"] == pytest.approx(good["observed_rmse"], rel=0.1)
    for rmv, rmse, count in good["curve"]:  # every bin on the diagonal, from σ ≈ 0.05 to σ ≈ 5
        assert rmse == pytest.approx(rmv, rel=0.12) and count == N * D // 10
    too_wide = calibration_report(mean, 4 * aleatoric, target, scale)["calibration_error"]
    too_narrow = calibration_report(mean, aleatoric / 4, target, scale)["calibration_error"]
    assert too_wide == pytest.approx(0.5, abs=0.05)  # |2σ − σ| / 2σ
    assert too_narrow == pytest.approx(1.0, abs=0.1)  # |σ/2 − σ| / (σ/2)
    # Units: measuring the targets in other units per dimension changes nothing.
    s = np.array([0.1, 1.0, 30.0])
    rescaled = calibration_report(mean * s, aleatoric * s**2, target * s, s)["calibration_error"]
    assert rescaled == pytest.approx(good["calibration_error"], abs=1e-9)


def test_the_members_disagreement_counts_as_predicted_variance():
    _, aleatoric, target = synthetic(seed=1)
    mu = synthetic(seed=1)[0][0]
    sigma = np.sqrt(aleatoric[0])
    # Four members: two at μ + σ/√2, two at μ − σ/√2 (variance of the means σ²/2), each with σ²/2 of its own.
    signs = np.array([1.0, -1.0, 1.0, -1.0])[:, None, None]
    members = mu + signs * sigma / np.sqrt(2)
    half = np.broadcast_to(aleatoric[0] / 2, members.shape)
    assert calibration_report(members, half, target, np.ones(D))["calibration_error"] < 0.05
    # Leaving the disagreement out (one member at μ with σ²/2) looks over-confident by √2.
    alone = calibration_report(mu[None], half[:1], target, np.ones(D))["calibration_error"]
    assert alone == pytest.approx(np.sqrt(2) - 1, abs=0.05)


def test_spread_error_correlation_tells_informative_disagreement_from_noise():
    rng = np.random.default_rng(2)
    err_scale = np.exp(rng.uniform(-2, 2, size=(N, D)))
    target = err_scale * rng.normal(size=(N, D))  # the truth is 0 ± err_scale
    noise = rng.normal(size=(E, N, D))
    noise -= noise.mean(0)  # the members agree on average: μ = 0, only their spread differs
    informative = err_scale * noise  # members disagree where the error is large
    uninformative = np.exp(rng.uniform(-2, 2, size=(N, D))) * noise  # disagreement unrelated to the error
    var = np.full((E, N, D), 1e-6)
    good = calibration_report(informative, var, target, np.ones(D))["spread_error_corr"]
    bad = calibration_report(uninformative, var, target, np.ones(D))["spread_error_corr"]
    assert good > 0.3 and abs(bad) < 0.05
    assert rank_correlation(np.arange(10), np.arange(10) ** 3) == pytest.approx(1.0)
    assert rank_correlation(np.ones(5), np.arange(5)) == 0.0


def test_model_calibration_reads_a_real_ensembles_predictions_in_environment_units():
    torch.manual_seed(0)
    model = EnsembleDynamics(obs_dim=3, action_dim=1, ensemble_size=4, hidden_layers=1, hidden_size=16)
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(500, 3)).astype(np.float32)
    action = rng.uniform(-1, 1, size=(500, 1)).astype(np.float32)
    transitions = {"obs": obs, "action": action, "next_obs": obs + 0.1, "reward": np.zeros(500, np.float32)}
    with torch.no_grad():
        pred = model.predict(torch.as_tensor(obs), torch.as_tensor(action))
    expected = calibration_report(pred["mean"].numpy(), pred["var"].numpy(),
                                  np.concatenate([np.full((500, 3), 0.1), np.zeros((500, 1))], 1),
                                  model.target_norm.std.numpy())
    got = model_calibration(model, transitions)
    assert got["calibration_error"] == pytest.approx(expected["calibration_error"], rel=1e-5)
    assert got["observed_rmse"] == pytest.approx(expected["observed_rmse"], rel=1e-5)
