"""EnsembleDynamics / EnsembleLinear / RunningNormalizer / ModelLearner."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from umpo_dist.config import ModelConfig
from umpo_dist.models.ensemble import EnsembleDynamics, EnsembleLinear
from umpo_dist.models.normalizer import RunningNormalizer
from umpo_dist.models.model_learner import ModelLearner
from umpo_dist.data.replay import ReplayBuffer

torch.set_num_threads(1)


def separate_mlps(model: EnsembleDynamics, layer_norm_eps: list[float] = ()) -> list[nn.Sequential]:
    """E ordinary MLPs (nn.Linear + SiLU, and nn.LayerNorm with these ε in front of every linear but the
    first) holding copies of each member's weights."""
    nets = []
    for e in range(model.ensemble_size):
        layers: list[nn.Module] = []
        for k, layer in enumerate(list(model.hidden) + [model.head]):
            w = layer.weight[e]  # (in, out)
            if k > 0 and layer_norm_eps:
                layers.append(nn.LayerNorm(w.shape[0], eps=layer_norm_eps[k - 1], elementwise_affine=False))
            lin = nn.Linear(w.shape[0], w.shape[1]).to(w.dtype)
            with torch.no_grad():
                lin.weight.copy_(w.T)
                lin.bias.copy_(layer.bias[e, 0])
            layers += [lin, nn.SiLU()]
        nets.append(nn.Sequential(*layers[:-1]))  # no activation after the head
    return nets


def test_ensemble_linear_equals_separate_linears():
    torch.manual_seed(0)
    E, B, din, dout = 4, 9, 5, 3
    layer = EnsembleLinear(E, din, dout)
    with torch.no_grad():
        layer.bias.normal_()
    assert layer.weight.shape == (E, din, dout) and layer.bias.shape == (E, 1, dout)
    x = torch.randn(E, B, din)
    out = layer(x)
    assert out.shape == (E, B, dout)
    for e in range(E):
        lin = nn.Linear(din, dout)
        with torch.no_grad():
            lin.weight.copy_(layer.weight[e].T)
            lin.bias.copy_(layer.bias[e, 0])
        torch.testing.assert_close(out[e], lin(x[e]), rtol=1e-5, atol=1e-6)
    # Members are independent: different weights per member, not one shared layer.
    assert not torch.allclose(layer.weight[0], layer.weight[1])


@pytest.mark.parametrize("shared_input,layer_norm", [(True, False), (False, False), (False, True)])
def test_ensemble_equals_separate_mlps(shared_input, layer_norm):
    torch.manual_seed(1)
    obs_dim, act_dim, E = 3, 2, 4
    model = EnsembleDynamics(obs_dim, act_dim, ensemble_size=E, hidden_layers=3, hidden_size=16,
                             layer_norm=layer_norm).double()
    eps = [1.0, 0.1, 0.01] if layer_norm else []
    assert model.norm_eps == pytest.approx(eps)
    with torch.no_grad():
        for layer in list(model.hidden) + [model.head]:
            layer.bias.normal_(std=0.1)
        model.input_norm.update(torch.randn(100, obs_dim + act_dim, dtype=torch.float64) * 3 + 1)
        model.target_norm.update(torch.randn(100, obs_dim + 1, dtype=torch.float64) * 2 - 1)
    if shared_input:
        obs, act = torch.randn(7, obs_dim, dtype=torch.float64), torch.randn(7, act_dim, dtype=torch.float64)
    else:
        obs, act = torch.randn(E, 7, obs_dim, dtype=torch.float64), torch.randn(E, 7, act_dim, dtype=torch.float64)
    mean, logvar, term = model(obs, act)
    pred = model.predict(obs, act)
    D = obs_dim + 1
    nets = separate_mlps(model, eps)
    means = []
    for e, net in enumerate(nets):
        o, a = (obs, act) if shared_input else (obs[e], act[e])
        x = model.input_norm.normalize(torch.cat([o, a], -1))
        out = net(x)
        m, raw, t = out[:, :D], out[:, D : 2 * D], out[:, 2 * D]
        lv = model.max_logvar[0, 0] - F.softplus(model.max_logvar[0, 0] - raw)
        lv = model.min_logvar[0, 0] + F.softplus(lv - model.min_logvar[0, 0])
        torch.testing.assert_close(mean[e], m)
        torch.testing.assert_close(logvar[e], lv)
        torch.testing.assert_close(term[e], t)
        env_mean = m * model.target_norm.std + model.target_norm.mean
        torch.testing.assert_close(pred["mean"][e], env_mean)
        torch.testing.assert_close(pred["var"][e], lv.exp() * model.target_norm.std**2)
        means.append(env_mean)
    torch.testing.assert_close(pred["epistemic"], torch.stack(means).var(0, unbiased=False))
    assert pred["term_logit"].shape == (E, 7)
    # The bounded log-variance stays within the learned soft bounds.
    assert (logvar <= model.max_logvar).all() and (logvar >= model.min_logvar).all()


def make_model_batch(B: int, obs_dim: int, act_dim: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    obs = torch.randn(B, obs_dim, generator=gen)
    return {
        "obs": obs,
        "action": torch.randn(B, act_dim, generator=gen),
        "next_obs": obs + 0.1 * torch.randn(B, obs_dim, generator=gen),
        "reward": torch.randn(B, generator=gen),
        "terminated": (torch.rand(B, generator=gen) < 0.3).float(),
    }


def member_grads(model: EnsembleDynamics, e: int) -> list[torch.Tensor]:
    return [t.grad[e].clone() for layer in list(model.hidden) + [model.head] for t in (layer.weight, layer.bias)]


def test_layer_norm_travels_with_the_weights():
    plain = EnsembleDynamics(3, 2, 2, hidden_layers=2, hidden_size=8)
    normed = EnsembleDynamics(3, 2, 2, hidden_layers=2, hidden_size=8, layer_norm=True)
    obs, act = torch.randn(5, 3), torch.randn(5, 2)
    assert not torch.allclose(plain(obs, act)[0], normed(obs, act)[0])  # the option changes the function
    copy = EnsembleDynamics(3, 2, 2, hidden_layers=2, hidden_size=8, layer_norm=True)
    copy.load_state_dict(normed.state_dict())
    torch.testing.assert_close(copy(obs, act)[0], normed(obs, act)[0])
    with pytest.raises(ValueError, match="trained with layer normalisation; this network is built without"):
        plain.load_state_dict(normed.state_dict())
    with pytest.raises(ValueError, match="trained without layer normalisation; this network is built with it"):
        normed.load_state_dict(plain.state_dict())
    # weights saved before the option existed are plain ones
    old = {k: v for k, v in plain.state_dict().items() if k != "layer_norm_eps"}
    EnsembleDynamics(3, 2, 2, hidden_layers=2, hidden_size=8).load_state_dict(old)
    with pytest.raises(ValueError, match="trained without layer normalisation"):
        normed.load_state_dict(old)


def test_dropout_acts_in_the_training_loss_only():
    torch.manual_seed(0)
    plain = EnsembleDynamics(3, 2, 2, hidden_layers=3, hidden_size=64)
    dropped = EnsembleDynamics(3, 2, 2, hidden_layers=3, hidden_size=64, dropout=0.4)
    dropped.load_state_dict(plain.state_dict())  # dropout adds no weights: the same function
    assert dropped.dropout == pytest.approx([0.3, 0.2, 0.1]) and plain.dropout == [0.0, 0.0, 0.0]
    batch = make_model_batch(32, 3, 2, torch.Generator().manual_seed(1))
    obs, act = batch["obs"], batch["action"]
    # predictions (rollouts, held-out scores) use the whole network
    torch.testing.assert_close(dropped.predict(obs, act)["mean"], plain.predict(obs, act)["mean"])
    torch.testing.assert_close(dropped.evaluate(batch)["nll"], plain.evaluate(batch)["nll"])
    # the loss drops units, so two evaluations of it differ; without dropout it is the same function
    a, b = dropped.loss(batch)[0], dropped.loss(batch)[0]
    assert not torch.allclose(a, b)
    torch.testing.assert_close(plain.loss(batch)[0], plain.loss(batch)[0])
    # ... and it still trains the same weights: every layer gets a gradient
    a.backward()
    assert all(layer.weight.grad.abs().sum() > 0 for layer in [*dropped.hidden, dropped.head])
    with pytest.raises(ValueError, match="dropout"):
        EnsembleDynamics(3, 2, 2, dropout=1.5)


def test_the_model_learner_trains_the_network_the_config_describes():
    from umpo_dist.envs.spec import env_spec
    from umpo_dist.models.ensemble import build_ensemble

    cfg = ModelConfig(ensemble_size=2, hidden_layers=3, hidden_size=16, layer_norm=True, dropout=0.4)
    learned = ModelLearner(cfg, 4, 1).model
    assert learned.dropout == pytest.approx([0.3, 0.2, 0.1]) and learned.norm_eps == [1.0, 0.1, 0.01]
    # ... the same network the policy learner builds to roll out in, so the weights load into it
    imagined = build_ensemble(env_spec("InvertedPendulum-v5"), cfg)
    assert imagined.dropout == learned.dropout
    imagined.load_state_dict(learned.state_dict())


def test_homoscedastic_noise_is_one_learned_variance_per_member_and_travels_with_the_weights():
    from umpo_dist.envs.spec import env_spec
    from umpo_dist.models.ensemble import build_ensemble

    torch.manual_seed(0)
    cfg = ModelConfig(ensemble_size=3, hidden_layers=2, hidden_size=16, noise="homoscedastic")
    homo = ModelLearner(cfg, 4, 1).model
    assert homo.head.weight.shape[-1] == homo.target_dim + 1  # the head predicts means and termination alone
    with torch.no_grad():
        homo.noise_logvar.copy_(torch.randn_like(homo.noise_logvar))
    pred = homo.predict(torch.randn(64, 4), torch.randn(64, 1))
    # the same variance for every input, a different one per member and target dim
    torch.testing.assert_close(pred["var"], pred["var"][:, :1].expand_as(pred["var"]))
    assert pred["var"][:, 0].unique().numel() == 3 * homo.target_dim
    # the noise is a weight: it trains and travels (to the policy learner's copy of the model)
    homo.loss(make_model_batch(32, 4, 1, torch.Generator().manual_seed(1)))[0].backward()
    assert homo.noise_logvar.grad.abs().min() > 0
    imagined = build_ensemble(env_spec("InvertedPendulum-v5"), cfg)
    imagined.load_state_dict(homo.state_dict())
    torch.testing.assert_close(imagined.predict(torch.ones(2, 4), torch.ones(2, 1))["var"],
                               homo.predict(torch.ones(2, 4), torch.ones(2, 1))["var"])
    hetero = EnsembleDynamics(4, 1, 3, hidden_layers=2, hidden_size=16)
    with pytest.raises(ValueError, match="trained with model.noise 'homoscedastic'; this network is built with 'heteroscedastic'"):
        hetero.load_state_dict(homo.state_dict())
    with pytest.raises(ValueError, match="trained with model.noise 'heteroscedastic'; this network is built with 'homoscedastic'"):
        homo.load_state_dict(hetero.state_dict())
    with pytest.raises(ValueError, match="noise must be one of"):
        EnsembleDynamics(4, 1, 3, noise="constant")


def test_homoscedastic_noise_learns_the_datas_noise_level():
    """Δobs = f(obs, a) + 0.1·ε: the learned standard deviation of Δobs comes out near 0.1 (the fit's own error
    adds a little), far from where it starts, near the targets' whole spread (≈ 0.4)."""
    torch.manual_seed(3)
    rng = np.random.default_rng(3)
    cfg = ModelConfig(ensemble_size=3, hidden_layers=2, hidden_size=32, lr=3e-3, batch_size=128, noise="homoscedastic")
    obs = rng.uniform(-1, 1, (4000, 1)).astype(np.float32)
    action = rng.uniform(-1, 1, (4000, 1)).astype(np.float32)
    delta = 0.5 * np.sin(3 * obs) + 0.2 * action + 0.1 * rng.standard_normal(obs.shape)
    data = {"obs": obs, "action": action, "next_obs": (obs + delta).astype(np.float32),
            "reward": (-(obs[:, 0] ** 2)).astype(np.float32), "terminated": np.zeros(4000, np.float32)}
    learner = ModelLearner(cfg, 1, 1, seed=3)
    for _ in range(800):
        i = rng.integers(0, 4000, 128)
        learner.update({**{k: v[i] for k, v in data.items()}, "weights": np.ones((128, 3), np.float32)})
    with torch.no_grad():
        std = learner.model.predict(torch.zeros(1, 1), torch.zeros(1, 1))["var"][:, 0, 0].sqrt()
    assert torch.all((std > 0.08) & (std < 0.14)), std


def test_zero_bootstrap_weight_removes_a_sample_from_that_members_loss():
    torch.manual_seed(2)
    obs_dim, act_dim, E, B = 3, 2, 4, 32
    model = EnsembleDynamics(obs_dim, act_dim, E, hidden_layers=2, hidden_size=16).double()
    gen = torch.Generator().manual_seed(0)
    batch = {k: v.double() for k, v in make_model_batch(B, obs_dim, act_dim, gen).items()}
    weights = torch.poisson(torch.ones(B, E, dtype=torch.float64), generator=gen)
    e = 1
    weights[:10, e] = 0.0
    weights[:10, (e + 1) % E] = 1.0  # another member does use these samples

    def grads_after_loss(b):
        model.zero_grad(set_to_none=True)
        loss, metrics = model.loss(b, weights)
        loss.backward()
        assert np.isfinite(metrics["model/train_nll"])
        return member_grads(model, e), member_grads(model, (e + 1) % E)

    base_e, base_other = grads_after_loss(batch)
    changed = dict(batch)
    changed["next_obs"] = batch["next_obs"].clone()
    changed["reward"] = batch["reward"].clone()
    changed["terminated"] = batch["terminated"].clone()
    changed["next_obs"][:10] += 5.0
    changed["reward"][:10] -= 3.0
    changed["terminated"][:10] = 1.0 - changed["terminated"][:10]
    new_e, new_other = grads_after_loss(changed)
    for g0, g1 in zip(base_e, new_e):
        torch.testing.assert_close(g0, g1, rtol=0, atol=1e-12)
    # Sanity: the member that does weight those samples sees the change.
    assert any(not torch.allclose(g0, g1) for g0, g1 in zip(base_other, new_other))

    # And changing a sample member e weights > 0 does move member e's gradient.
    changed2 = dict(batch)
    changed2["reward"] = batch["reward"].clone()
    b_used = int(torch.nonzero(weights[:, e] > 0)[0])
    changed2["reward"][b_used] += 3.0
    new2_e, _ = grads_after_loss(changed2)
    assert any(not torch.allclose(g0, g1) for g0, g1 in zip(base_e, new2_e))


def test_member_loss_is_the_weighted_mean_nll():
    torch.manual_seed(3)
    model = EnsembleDynamics(2, 1, 3, hidden_layers=1, hidden_size=8).double()
    gen = torch.Generator().manual_seed(1)
    batch = {k: v.double() for k, v in make_model_batch(10, 2, 1, gen).items()}
    w = torch.zeros(10, 3, dtype=torch.float64)
    w[0, 0], w[1, 1], w[2, 2] = 2.0, 1.0, 3.0
    loss, _ = model.loss(batch, w)
    y = model.target_norm.normalize(model.targets(batch))
    mean, logvar, term = model(batch["obs"], batch["action"])
    per = (((mean - y) ** 2) * torch.exp(-logvar) + logvar).sum(-1)
    per = per + F.binary_cross_entropy_with_logits(term, batch["terminated"].expand_as(term), reduction="none")
    # A lone sample of weight k: that member's loss is that sample's loss (weights normalised).
    expected = per[0, 0] + per[1, 1] + per[2, 2] + 0.01 * (model.max_logvar.sum() - model.min_logvar.sum())
    torch.testing.assert_close(loss, expected)


# -- RunningNormalizer ------------------------------------------------------------------------------
def test_running_normalizer_merge_equals_full_data_statistics():
    gen = torch.Generator().manual_seed(4)
    data = torch.randn(1000, 3, generator=gen, dtype=torch.float64) * torch.tensor([1.0, 5.0, 0.1], dtype=torch.float64)
    data = data + torch.tensor([3.0, -2.0, 100.0], dtype=torch.float64)
    norm = RunningNormalizer(3).double()
    for chunk in torch.split(data, [1, 7, 100, 250, 0, 642]):
        norm.update(chunk)
    assert float(norm.count) == 1000
    torch.testing.assert_close(norm.mean, data.mean(0))
    torch.testing.assert_close(norm.var, data.var(0, unbiased=False))
    z = norm.normalize(data)
    torch.testing.assert_close(z.mean(0), torch.zeros(3, dtype=torch.float64), atol=1e-9, rtol=0)
    torch.testing.assert_close(z.std(0, unbiased=False), torch.ones(3, dtype=torch.float64), atol=1e-4, rtol=0)
    # 3-D input (E, B, D) is treated as rows.
    norm2 = RunningNormalizer(3).double()
    norm2.update(data.reshape(4, 250, 3))
    torch.testing.assert_close(norm2.mean, data.mean(0))
    torch.testing.assert_close(norm2.var, data.var(0, unbiased=False))


def test_running_normalizer_float32_matches_float64_reference():
    gen = torch.Generator().manual_seed(5)
    data = torch.randn(5000, 2, generator=gen, dtype=torch.float64) * 2 + 7
    norm = RunningNormalizer(2)
    for chunk in torch.split(data.float(), 256):
        norm.update(chunk)
    torch.testing.assert_close(norm.mean.double(), data.mean(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(norm.var.double(), data.var(0, unbiased=False), rtol=1e-4, atol=1e-5)


# -- learning with ModelLearner ----------------------------------------------------------------------
def toy_dynamics(obs: np.ndarray, action: np.ndarray, rng: np.random.Generator):
    """1-D system: Δobs = 0.5 sin(3 obs) + 0.2 a + noise; reward = −obs²."""
    delta = 0.5 * np.sin(3 * obs) + 0.2 * action + 0.02 * rng.standard_normal(obs.shape)
    reward = -(obs[:, 0] ** 2) + 0.01 * rng.standard_normal(len(obs))
    return (obs + delta).astype(np.float32), reward.astype(np.float32)


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(6)
    rng = np.random.default_rng(6)
    cfg = ModelConfig(ensemble_size=5, hidden_layers=2, hidden_size=32, elites=3, lr=3e-3, batch_size=128,
                      holdout_fraction=0.1)
    buf = ReplayBuffer(1, 1, capacity=4000, ensemble_size=cfg.ensemble_size, holdout_fraction=cfg.holdout_fraction,
                       seed=6)
    obs = rng.uniform(-1, 1, (4000, 1)).astype(np.float32)
    action = rng.uniform(-1, 1, (4000, 1)).astype(np.float32)
    next_obs, reward = toy_dynamics(obs, action, rng)
    buf.insert({"obs": obs, "action": action, "reward": reward, "next_obs": next_obs,
                "terminated": np.zeros(4000, np.float32), "truncated": np.zeros(4000, np.float32)})
    learner = ModelLearner(cfg, 1, 1, seed=6)
    nll = [learner.update(buf.sample(cfg.batch_size))["model/train_nll"] for _ in range(400)]
    return learner, buf, nll


def test_model_learner_loss_goes_down(trained):
    learner, _, nll = trained
    assert all(np.isfinite(nll))
    assert learner.updates == 400
    first, last = np.mean(nll[:20]), np.mean(nll[-20:])
    assert last < first - 1.0, (first, last)


def test_model_fits_inside_the_data(trained):
    learner, _, _ = trained
    rng = np.random.default_rng(60)
    obs = rng.uniform(-1, 1, (256, 1)).astype(np.float32)
    action = rng.uniform(-1, 1, (256, 1)).astype(np.float32)
    with torch.no_grad():
        pred = learner.model.predict(torch.as_tensor(obs), torch.as_tensor(action))
    true_delta = 0.5 * np.sin(3 * obs) + 0.2 * action
    err = (pred["mean"][..., 0].mean(0).numpy() - true_delta[:, 0]) ** 2
    assert err.mean() < 0.1 * true_delta.var(), "ensemble mean should explain most of the Δobs variance"


def test_epistemic_uncertainty_is_larger_outside_the_data(trained):
    learner, _, _ = trained
    rng = np.random.default_rng(61)
    action = torch.as_tensor(rng.uniform(-1, 1, (200, 1)).astype(np.float32))
    inside = torch.as_tensor(rng.uniform(-1, 1, (200, 1)).astype(np.float32))
    outside = torch.as_tensor(rng.uniform(5, 10, (200, 1)).astype(np.float32))
    with torch.no_grad():
        epi_in = learner.model.predict(inside, action)["epistemic"]
        epi_out = learner.model.predict(outside, action)["epistemic"]
    assert epi_in.shape == (200, 2)
    # Δobs and reward alike: members agree where the data are, disagree far from them.
    for d in range(2):
        assert epi_out[:, d].median() > 10 * epi_in[:, d].median(), (d, epi_out[:, d].median(), epi_in[:, d].median())


def test_validate_marks_exactly_the_elites(trained):
    learner, buf, _ = trained
    held = buf.holdout_batch(1000)
    assert len(held["reward"]) > 100
    metrics = learner.validate(held)
    mask = learner.model.elite_mask
    assert mask.dtype == torch.bool and int(mask.sum()) == learner.cfg.elites
    per_member = learner.model.evaluate({k: torch.as_tensor(v) for k, v in held.items()})
    nll = per_member["nll"]
    # The elites are the members with the lowest held-out NLL.
    assert nll[mask].max() <= nll[~mask].min()
    assert metrics["model/val_nll"] == pytest.approx(float(nll[mask].mean()), rel=1e-5)
    assert metrics["model/val_nll"] <= metrics["model/val_nll_all"]
    assert np.isfinite(metrics["model/val_mse"])
    assert learner.validate({k: v[:0] for k, v in held.items()}) == {}


def test_model_learner_state_round_trip(trained):
    learner, buf, _ = trained
    other = ModelLearner(learner.cfg, 1, 1, seed=99)
    other.load_state(learner.state())
    assert other.updates == learner.updates
    obs = torch.linspace(-1, 1, 11)[:, None]
    with torch.no_grad():
        a, b = learner.model.predict(obs, obs), other.model.predict(obs, obs)
    for k in a:
        torch.testing.assert_close(a[k], b[k])
