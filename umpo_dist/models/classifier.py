"""The transition classifier of the `mnm` objective: C(s, a, s′), the probability that a transition is real.

Trained on balanced batches, transitions from the replay (real, label 1) against
transitions of the dynamics model (label 0). At the optimum its logit
log(C / (1 − C)) is the log-ratio of the two distributions of transitions, the term
Mismatched No More (Eysenbach et al., 2022) adds to the model's reward: negative where
the model produces what the environment would not.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from umpo_dist.models.policy import ObservationInput, mlp


class TransitionClassifier(ObservationInput):
    """An MLP over (s, a, s′ − s); returns the logit of C.

    What it observes is the whole transition: `set_obs_stats` takes the means and stds
    of (s, a, Δs) — the dynamics model's input and Δobs statistics — identity until set.
    """

    def __init__(self, obs_dim: int, action_dim: int, hidden_layers: int = 2, hidden_size: int = 128):
        super().__init__()
        size = 2 * obs_dim + action_dim
        self.net = mlp(size, 1, hidden_layers, hidden_size)
        self._init_obs_stats(size)

    def forward(self, obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
        # The change of state, not the next state: what a dynamics model gets wrong is the step.
        return self.net(self.scale(torch.cat([obs, action, next_obs - obs], -1))).squeeze(-1)

    def loss(self, real: tuple[torch.Tensor, ...], fake: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """Binary cross-entropy of real (label 1) against fake (label 0) `(obs, action, next_obs)`, and the accuracy."""
        logits = torch.cat([self(*real), self(*fake)])
        labels = torch.cat([torch.ones(len(real[0]), device=logits.device), torch.zeros(len(fake[0]), device=logits.device)])
        accuracy = ((logits > 0) == (labels > 0.5)).float().mean()
        return F.binary_cross_entropy_with_logits(logits, labels), accuracy.detach()
