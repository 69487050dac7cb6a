"""The uncertainty-aware dynamics model: a bootstrap ensemble of Gaussian MLPs.

All `E` members are one batched network: each layer holds weights `(E, in, out)`
and runs one batched matmul (`torch.baddbmm`), never a Python loop over members
(mbrl-lib measured ≈2.5× over separate networks; `benchmarks/ensemble.py` measures it
here). Each member predicts a Gaussian over `(Δobs, reward)` with a bounded
log-variance, plus a termination logit. Aleatoric uncertainty is a member's own
variance (a function of the input, or under `model.noise: homoscedastic` one learned
variance per member and target dim, as DHMBPO's models have); epistemic uncertainty is
the variance of the members' means.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from umpo_dist.envs.termination import continuation, known_termination
from umpo_dist.models.normalizer import RunningNormalizer


NOISE = ("heteroscedastic", "homoscedastic")  # model.noise: a member's variance depends on its input, or not


def gaussian_nll(mean: torch.Tensor, logvar: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Gaussian negative log-likelihood summed over the last axis, without the constant."""
    return (((mean - target) ** 2) * torch.exp(-logvar) + logvar).sum(-1)


def check_dropout(rate: float) -> float:
    """A dropout rate, refused outside [0, 1] (the model's and the critic's)."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"dropout must be in [0, 1], got {rate}")
    return rate


def check_layer_norm(state_dict: dict, key: str, built_with: torch.Tensor, what: str) -> None:
    """Weights meet a network normalised as they were trained: `key` holds the ε of the layer normalisations
    they were trained with (absent in weights from before the option: none); a difference is an error."""
    saved = state_dict.setdefault(key, torch.zeros(0, dtype=torch.float64))
    if saved.numel() != built_with.numel():
        raise ValueError(f"these {what} weights were trained {'with' if saved.numel() else 'without'} layer "
                         f"normalisation; this network is built {'with' if built_with.numel() else 'without'} it")


class EnsembleLinear(nn.Module):
    """`E` independent linear layers as one `(E, in, out)` weight and one batched matmul."""

    def __init__(self, members: int, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(members, in_features, out_features))
        self.bias = nn.Parameter(torch.zeros(members, 1, out_features))
        # Truncated-normal init scaled like PyTorch's default fan-in init, per member.
        std = 1.0 / (2.0 * math.sqrt(in_features))
        nn.init.trunc_normal_(self.weight, std=std, a=-2 * std, b=2 * std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (E, B, in)
        return torch.baddbmm(self.bias, x, self.weight)


class EnsembleDynamics(nn.Module):
    """`E` Gaussian MLPs over `(obs, action) → (Δobs, reward)` plus a termination logit."""

    def __init__(self, obs_dim: int, action_dim: int, ensemble_size: int = 7, hidden_layers: int = 4, hidden_size: int = 200,
                 layer_norm: bool = False, dropout: float = 0.0, noise: str = "heteroscedastic"):
        """`layer_norm`: every layer after the first sees its input layer-normalised (no learned scale or shift,
        so it adds no weights), with an ε that starts at 1 (a soft normalisation) and falls tenfold per layer
        to 1e-5 — a regulariser of deep ensembles (DHMBPO's models use this schedule).

        `dropout`: in the training loss only, hidden layer k of L drops its units (before the activation) with
        probability `dropout · (L − k) / (L + 1)` — highest after the first layer, none in the head, DHMBPO's
        schedule; predictions, rollouts and held-out scores use the whole network.

        `noise`: "heteroscedastic" (the head predicts each input's log-variance) or "homoscedastic" (each member
        learns one log-variance per target dim, whatever the input; the head predicts the means alone)."""
        if noise not in NOISE:
            raise ValueError(f"noise must be one of {NOISE}, got {noise!r}")
        super().__init__()
        self.obs_dim, self.action_dim, self.ensemble_size = obs_dim, action_dim, ensemble_size
        self.target_dim = obs_dim + 1  # Δobs and reward
        sizes = [obs_dim + action_dim] + [hidden_size] * hidden_layers
        self.hidden = nn.ModuleList(EnsembleLinear(ensemble_size, a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.noise = noise
        variance_outputs = 0 if self.homoscedastic else self.target_dim
        self.head = EnsembleLinear(ensemble_size, hidden_size, self.target_dim + variance_outputs + 1)
        if self.homoscedastic:  # normalised units: starts at the targets' own variance
            self.noise_logvar = nn.Parameter(torch.zeros(ensemble_size, 1, self.target_dim))
        # ε of the normalisation in front of hidden layer 1, 2, … and the head (hidden layer 0 sees the
        # normalised inputs); empty: none
        self.norm_eps = [max(10.0 ** -k, 1e-5) for k in range(hidden_layers)] if layer_norm else []
        check_dropout(dropout)
        self.dropout = [dropout * (hidden_layers - k) / (hidden_layers + 1) for k in range(hidden_layers)]
        # ... also kept with the weights, so that weights never meet a network normalised otherwise
        self.register_buffer("layer_norm_eps", torch.tensor(self.norm_eps, dtype=torch.float64))
        # Learned soft bounds on the log-variance (Chua et al., PETS), in normalised target units.
        self.max_logvar = nn.Parameter(torch.full((1, 1, self.target_dim), 0.5))
        self.min_logvar = nn.Parameter(torch.full((1, 1, self.target_dim), -10.0))
        self.input_norm = RunningNormalizer(obs_dim + action_dim)
        self.target_norm = RunningNormalizer(self.target_dim)
        self.register_buffer("elite_mask", torch.ones(ensemble_size, dtype=torch.bool))
        # The task's known termination rule (`model.termination: known | known_soft`): it replaces the
        # termination head in `step`. Not a weight: set from the config by `build_ensemble`.
        self.termination_rule = None
        self.soft_termination = False

    @property
    def homoscedastic(self) -> bool:
        return self.noise == "homoscedastic"

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        check_layer_norm(state_dict, prefix + "layer_norm_eps", self.layer_norm_eps, "dynamics-model (model.layer_norm)")
        trained = NOISE[prefix + "noise_logvar" in state_dict]
        if trained != self.noise:
            raise ValueError(f"these dynamics-model weights were trained with model.noise {trained!r}; this network "
                             f"is built with {self.noise!r}")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, obs: torch.Tensor, action: torch.Tensor, dropout: bool = False):
        """Normalised-space outputs. `obs`, `action`: (E, B, ·) or (B, ·), broadcast to every member.
        `dropout`: drop hidden units at the configured rates (the training loss)."""
        x = self.input_norm.normalize(torch.cat([obs, action], -1))
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.ensemble_size, -1, -1)
        for k, layer in enumerate([*self.hidden, self.head]):
            if k > 0:
                if dropout and self.dropout[k - 1] > 0:
                    x = F.dropout(x, self.dropout[k - 1])
                x = F.silu(x)
                if self.norm_eps:
                    x = F.layer_norm(x, x.shape[-1:], eps=self.norm_eps[k - 1])
            x = layer(x)
        if self.homoscedastic:
            mean, term_logit = x.split([self.target_dim, 1], -1)
            raw_logvar = self.noise_logvar.expand_as(mean)
        else:
            mean, raw_logvar, term_logit = x.split([self.target_dim, self.target_dim, 1], -1)
        logvar = self.max_logvar - F.softplus(self.max_logvar - raw_logvar)
        logvar = self.min_logvar + F.softplus(logvar - self.min_logvar)
        return mean, logvar, term_logit.squeeze(-1)

    def predict(self, obs: torch.Tensor, action: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-member predictions in environment units.

        Returns `mean`/`var` (E, B, obs_dim+1) over (Δobs, reward) — `var` is the
        aleatoric part — `term_logit` (E, B), and `epistemic` (B, obs_dim+1): the
        variance of the members' means.
        """
        mean_n, logvar_n, term_logit = self(obs, action)
        std = self.target_norm.std
        mean = mean_n * std + self.target_norm.mean
        var = logvar_n.exp() * std**2
        # A reported figure, never differentiated; written out because `Tensor.var` over the members' dim
        # costs ≈ 13× this on a CPU (0.77 ms of a policy update's H steps each, at HalfCheetah's sizes).
        means = mean.detach()
        epistemic = (means - means.mean(0)).square().mean(0)
        return {"mean": mean, "var": var, "term_logit": term_logit, "epistemic": epistemic}

    def step(self, obs: torch.Tensor, action: torch.Tensor, sample: bool = True, mean_reward: bool = False):
        """One reparameterised model step per member: next_obs, reward, continuation probability, epistemic.

        The continuation probability is the termination head's, or the task's rule's when the model has
        one (`termination_rule`: 0/1, or σ(margin) with `soft_termination`).

        `mean_reward`: the reward is the member's predicted mean even when the next state is sampled.
        """
        pred = self.predict(obs, action)
        target = pred["mean"]
        if sample:
            target = target + pred["var"].sqrt() * torch.randn_like(target)
        delta, reward = target[..., : self.obs_dim], target[..., self.obs_dim]
        if mean_reward:
            reward = pred["mean"][..., self.obs_dim]
        next_obs = obs + delta
        if self.termination_rule is not None:
            cont = continuation(self.termination_rule(next_obs), self.soft_termination)
        else:
            cont = torch.sigmoid(-pred["term_logit"])
        return next_obs, reward, cont, pred["epistemic"]

    def targets(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([batch["next_obs"] - batch["obs"], batch["reward"].unsqueeze(-1)], -1)

    def loss(self, batch: dict[str, torch.Tensor], weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        """Bootstrap-weighted Gaussian NLL (+ termination BCE), summed over members.

        `weights` (B, E): member `e` weights sample `b` by `weights[b, e]`; a zero
        weight removes the sample from that member's loss entirely.
        """
        obs, action = batch["obs"], batch["action"]
        y = self.target_norm.normalize(self.targets(batch))
        mean, logvar, term_logit = self(obs, action, dropout=True)  # (E, B, D), (E, B)
        nll = gaussian_nll(mean, logvar, y)
        term = batch["terminated"].expand_as(term_logit)
        bce = F.binary_cross_entropy_with_logits(term_logit, term, reduction="none")
        per_sample = nll + bce  # (E, B)
        if weights is None:
            weights = torch.ones_like(per_sample).T
        w = weights.T  # (E, B)
        member_loss = (w * per_sample).sum(-1) / w.sum(-1).clamp_min(1.0)
        bound_penalty = 0.01 * (self.max_logvar.sum() - self.min_logvar.sum())
        total = member_loss.sum() + bound_penalty
        with torch.no_grad():
            mse = ((mean - y) ** 2).mean()
        return total, {"model/train_nll": float(member_loss.detach().mean()), "model/train_mse_norm": float(mse)}

    @torch.no_grad()
    def evaluate(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-member held-out NLL and MSE (environment units for MSE)."""
        y_env = self.targets(batch)
        y = self.target_norm.normalize(y_env)
        mean, logvar, _ = self(batch["obs"], batch["action"])
        nll = gaussian_nll(mean, logvar, y).mean(-1) / self.target_dim
        pred_env = mean * self.target_norm.std + self.target_norm.mean
        mse = ((pred_env - y_env) ** 2).mean((-1, -2))
        return {"nll": nll, "mse": mse}


def ensemble_network(obs_dim: int, action_dim: int, cfg) -> EnsembleDynamics:
    """The dynamics network a `ModelConfig` describes (what the model learner trains)."""
    return EnsembleDynamics(obs_dim, action_dim, cfg.ensemble_size, cfg.hidden_layers, cfg.hidden_size, cfg.layer_norm,
                            cfg.dropout, cfg.noise)


def build_ensemble(spec, cfg) -> EnsembleDynamics:
    """The dynamics model for an environment (`EnvSpec`) and a `ModelConfig` (its termination rule included)."""
    model = ensemble_network(spec.obs_dim, spec.action_dim, cfg)
    if cfg.termination != "learned":
        model.termination_rule = known_termination(spec.env_id)
        model.soft_termination = cfg.termination == "known_soft"
        if model.termination_rule is None:
            raise ValueError(f"model.termination {cfg.termination!r}: no known termination rule for env {spec.env_id!r}")
    return model
