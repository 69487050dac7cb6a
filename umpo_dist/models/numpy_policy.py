"""The policy's action path in NumPy, for the env workers' hot loop.

An env worker acts on a handful of observations per env step. At that size torch's
per-op dispatch dominates: a `TanhGaussianPolicy.act` on 8 HalfCheetah observations
costs ≈ 75 µs here against ≈ 30 µs for the same arithmetic in NumPy, and interleaved
with MuJoCo steps the torch call takes ≈ 130 µs, a quarter of the worker's time
(`benchmarks/collection.py`). `NumpyPolicy` copies a policy's weights once per load
and computes the same actions: the same network, observation scaling, log-std
mapping, tanh squashing and action box; the exploration noise comes from its own
NumPy generator. Training, evaluation and `policy.pt` keep the torch module.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from umpo_dist.models.policy import TanhGaussianPolicy, bounded_log_std


class NumpyPolicy:
    def __init__(self, policy: TanhGaussianPolicy, seed: int | list[int] | None = None):
        self.rng = np.random.default_rng(seed)
        self.load(policy)

    def load(self, policy: TanhGaussianPolicy) -> None:
        """Copy the policy's current weights and statistics (call after every `load_state_dict`)."""

        def array(t):
            return t.detach().cpu().numpy().astype(np.float32, copy=True)

        layers = []
        for module in policy.net:
            if isinstance(module, nn.Linear):
                layers.append(("linear", array(module.weight).T.copy(), array(module.bias)))
            elif isinstance(module, nn.SiLU):
                layers.append(("silu",))
            elif isinstance(module, nn.LayerNorm) and module.weight is None:
                layers.append(("layer_norm", module.eps))
            else:
                raise TypeError(f"NumpyPolicy cannot compute a {type(module).__name__} layer")
        self.layers = layers
        self.action_dim = policy.action_dim
        self.obs_mean, self.obs_std = array(policy.obs_mean), array(policy.obs_std)
        self.action_scale, self.action_bias = array(policy.action_scale), array(policy.action_bias)

    def gaussian(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The pre-tanh mean and log-std, as `TanhGaussianPolicy._gaussian` computes them."""
        x = (np.asarray(obs, np.float32) - self.obs_mean) / self.obs_std
        for layer in self.layers:
            if layer[0] == "linear":
                x = x @ layer[1]
                x += layer[2]
            elif layer[0] == "silu":
                x = x * (0.5 + 0.5 * np.tanh(0.5 * x))  # x·sigmoid(x), with no overflow for large |x|
            else:
                x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + layer[1])
        mu, log_std = x[..., : self.action_dim], x[..., self.action_dim:]
        return mu, bounded_log_std(log_std, np.tanh)

    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """Actions in the env's box for a batch of observations, like `TanhGaussianPolicy.act`."""
        mu, log_std = self.gaussian(obs)
        u = mu if deterministic else mu + np.exp(log_std) * self.rng.standard_normal(mu.shape, dtype=np.float32)
        return (np.tanh(u) * self.action_scale + self.action_bias).astype(np.float32, copy=False)
