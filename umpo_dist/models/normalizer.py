"""Input and target statistics for the dynamics model."""

from __future__ import annotations

import torch
from torch import nn


class RunningNormalizer(nn.Module):
    """Mean, variance and range of a stream of vectors.

    `update` merges a batch (parallel Welford) into what was seen before; `assign`
    replaces everything with statistics computed elsewhere (over the replay's window,
    `ReplayBuffer.statistics`). `low`/`high` are the smallest and largest value seen per
    dimension, ±inf until something was seen.
    """

    def __init__(self, size: int, eps: float = 1e-6):
        super().__init__()
        self.register_buffer("mean", torch.zeros(size))
        self.register_buffer("var", torch.ones(size))
        self.register_buffer("count", torch.zeros(()))
        self.register_buffer("low", torch.full((size,), torch.inf))
        self.register_buffer("high", torch.full((size,), -torch.inf))
        self.eps = eps

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1])
        n = x.shape[0]
        if n == 0:
            return
        b_mean, b_var = x.mean(0), x.var(0, unbiased=False)
        total = self.count + n
        delta = b_mean - self.mean
        self.mean += delta * n / total
        self.var.copy_((self.var * self.count + b_var * n + delta**2 * self.count * n / total) / total)
        self.count.copy_(total)
        torch.minimum(self.low, x.min(0).values, out=self.low)
        torch.maximum(self.high, x.max(0).values, out=self.high)

    @torch.no_grad()
    def assign(self, mean, var, count: int, low, high) -> None:
        """Take statistics computed elsewhere (array-likes of this normaliser's size)."""
        for name, value in (("mean", mean), ("var", var), ("low", low), ("high", high)):
            buf = getattr(self, name)
            buf.copy_(torch.as_tensor(value, dtype=buf.dtype))
        self.count.fill_(float(count))

    @property
    def std(self) -> torch.Tensor:
        return torch.sqrt(self.var + self.eps)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Weights saved before the range was kept: "nothing seen", so a range box falls back to mean ± kσ.
        state_dict.setdefault(prefix + "low", torch.full_like(self.low, torch.inf))
        state_dict.setdefault(prefix + "high", torch.full_like(self.high, -torch.inf))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
