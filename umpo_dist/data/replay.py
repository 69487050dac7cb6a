"""Replay storage: a ring buffer with linearly weighted sampling and online bootstrap weights.

Plain numpy, no Ray: the replay actor wraps exactly this class.

Linear weights: with `n` items in the window, the item of age rank `r` (oldest 1,
newest `n`) is drawn with probability `2r / (n(n+1))`. In an online process that
draws once per step, item `i` is then drawn `2(1 − i/(T+1))` times in expectation by
step `T` — about the same for every item — where uniform sampling draws early
items `ln(T/i)` times (see `docs/design.md`). The CDF of the rank is
`r(r+1)/(n(n+1))`, so one draw is a closed-form inverse: O(1), no sum-tree.

Online bagging: each inserted transition gets `k_e ~ Poisson(1)` per ensemble member,
the stream analogue of a bootstrap resample.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from umpo_dist.files import atomic_write

FIELDS = ("obs", "action", "reward", "next_obs", "terminated", "truncated")


@dataclass(frozen=True)
class DataNeeds:
    """What one learner update consumes from the replay; `ReplayBuffer.sample_for` serves it."""

    start_states: int = 0  # observations to start imagined rollouts from
    transitions: int = 0  # whole transitions, with bootstrap weights


def linear_ranks(u: np.ndarray, n: int) -> np.ndarray:
    """Map uniforms in [0, 1) to age ranks 1..n with P(r) = 2r / (n(n+1)).

    Inverse CDF: the smallest r with r(r+1)/2 >= u·n(n+1)/2.
    """
    r = np.ceil((np.sqrt(1.0 + 4.0 * u * n * (n + 1.0)) - 1.0) / 2.0)
    return np.clip(r, 1, n).astype(np.int64)


class ReplayBuffer:
    """Ring buffer of transitions with global insertion indices.

    Each transition also carries a held-out flag (kept out of model training, used
    for validation) and `ensemble_size` bootstrap weights drawn at insert.
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        capacity: int,
        ensemble_size: int,
        sampling: str = "linear",
        holdout_fraction: float = 0.1,
        seed: int = 0,
    ):
        if sampling not in ("linear", "uniform"):
            raise ValueError(f"sampling must be 'linear' or 'uniform', got {sampling!r}")
        self.obs_dim, self.action_dim = obs_dim, action_dim
        self.capacity, self.ensemble_size = capacity, ensemble_size
        self.sampling = sampling
        self.holdout_fraction = holdout_fraction
        self.rng = np.random.default_rng(seed)
        self.obs = np.zeros((capacity, obs_dim), np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), np.float32)
        self.action = np.zeros((capacity, action_dim), np.float32)
        self.reward = np.zeros(capacity, np.float32)
        self.terminated = np.zeros(capacity, np.float32)
        self.truncated = np.zeros(capacity, np.float32)
        self.global_index = np.zeros(capacity, np.int64)
        self.bootstrap = np.zeros((capacity, ensemble_size), np.float32)
        self.holdout = np.zeros(capacity, bool)
        self.total_inserted = 0
        self._reset_moments()

    @classmethod
    def from_config(cls, cfg, obs_dim: int, action_dim: int, seed: int = 0) -> "ReplayBuffer":
        """From a full `Config`: replay section, ensemble size and held-out share."""
        return cls(obs_dim, action_dim, cfg.replay.capacity, cfg.model.ensemble_size, cfg.replay.sampling,
                   cfg.model.holdout_fraction, seed)

    def __len__(self) -> int:
        return min(self.total_inserted, self.capacity)

    # -- insert ---------------------------------------------------------------
    def with_insert_draws(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`batch` plus its per-transition draws: bootstrap weights `k_e ~ Poisson(1)` and the held-out flag.

        Drawn for the whole batch, so the stream stays reproducible; `insert` of the
        result stores exactly these draws (which is how a logged chunk is replayed).
        """
        m = len(batch["reward"])
        boot = self.rng.poisson(1.0, size=(m, self.ensemble_size)).astype(np.float32)
        hold = self.rng.random(m) < self.holdout_fraction
        return {**batch, "bootstrap": boot, "holdout": hold}

    def insert(self, batch: dict[str, np.ndarray]) -> int:
        """Insert a batch of transitions (dict of arrays with a leading batch axis)."""
        m = len(batch["reward"])
        if m == 0:
            return 0
        expected = {"obs": (m, self.obs_dim), "next_obs": (m, self.obs_dim), "action": (m, self.action_dim),
                    "reward": (m,), "terminated": (m,), "truncated": (m,)}
        if "bootstrap" in batch:
            expected.update(bootstrap=(m, self.ensemble_size), holdout=(m,))
        for name, shape in expected.items():  # all checked before anything is written
            arr = np.asarray(batch[name])
            if arr.shape != shape:
                raise ValueError(f"replay insert: '{name}' has shape {arr.shape}, expected {shape}")
        if "bootstrap" not in batch:
            batch = self.with_insert_draws(batch)
        boot, hold = np.asarray(batch["bootstrap"]), np.asarray(batch["holdout"])
        keep = slice(max(0, m - self.capacity), m)
        g = self.total_inserted + np.arange(m, dtype=np.int64)[keep]
        pos = g % self.capacity
        # Slots that hold a window item now (whatever this buffer held before a `load_state`, only these count).
        evicted = pos if self.total_inserted >= self.capacity else pos[pos < self.total_inserted]
        if len(evicted):
            self._add_moments(self.obs[evicted], self.action[evicted], self.next_obs[evicted], self.reward[evicted], -1)
        for name in FIELDS:
            getattr(self, name)[pos] = np.asarray(batch[name])[keep]
        self._add_moments(self.obs[pos], self.action[pos], self.next_obs[pos], self.reward[pos])  # as stored (float32)
        self.global_index[pos] = g
        self.bootstrap[pos] = boot[keep]
        self.holdout[pos] = hold[keep]
        self.total_inserted += m
        return m

    # -- sample ---------------------------------------------------------------
    def sample_positions(self, batch_size: int, sampling: str | None = None) -> np.ndarray:
        """Storage positions of `batch_size` draws (with replacement)."""
        n = len(self)
        if n == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        u = self.rng.random(batch_size)
        if (sampling or self.sampling) == "linear":
            ranks = linear_ranks(u, n)
        else:
            ranks = np.minimum((u * n).astype(np.int64) + 1, n)
        oldest = self.total_inserted - n
        return (oldest + ranks - 1) % self.capacity

    def _batch_at(self, pos: np.ndarray) -> dict[str, np.ndarray]:
        out = {name: getattr(self, name)[pos] for name in FIELDS}
        out["weights"] = self.bootstrap[pos] * (~self.holdout[pos])[:, None]
        out["global_index"] = self.global_index[pos]
        return out

    def sample(self, batch_size: int) -> dict[str, np.ndarray]:
        """A model-training batch; `weights` (B, E) are the bootstrap weights, zero for held-out items."""
        return self._batch_at(self.sample_positions(batch_size))

    def sample_start_states(self, n: int) -> np.ndarray:
        return self.obs[self.sample_positions(n)]

    def many(self, count: int, method: str, *args) -> list:
        """`count` answers of a sampling method (`sample`, `sample_start_states`, `sample_for`): a learner's
        next batches in one call.

        The answers are those of `count` calls in a row (one stream of uniforms), drawn at once and gathered
        once per field where the method draws once per answer; `sample_for` asking for both start states and
        transitions is answered call by call.
        """
        if method not in ("sample", "sample_for", "sample_start_states"):
            raise ValueError(f"many: {method!r} is not a sampling method")
        needs = args[0] if method == "sample_for" else None
        if needs is not None and bool(needs.start_states) == bool(needs.transitions):  # both, or nothing asked
            return [self.sample_for(needs) for _ in range(count)]
        if needs is not None:
            size, key = (needs.start_states, "start_states") if needs.start_states else (needs.transitions, "transitions")
        else:
            size, key = args[0], None
        pos = self.sample_positions(count * size)
        whole = self.obs[pos] if method == "sample_start_states" or key == "start_states" else self._batch_at(pos)
        parts = [(whole[i * size:(i + 1) * size] if isinstance(whole, np.ndarray)
                  else {k: v[i * size:(i + 1) * size] for k, v in whole.items()}) for i in range(count)]
        return parts if key is None else [{key: part} for part in parts]

    def sample_for(self, needs: DataNeeds) -> dict:
        """`{"start_states": (n, obs), "transitions": batch}`, each present if `needs` asks for it."""
        out: dict = {}
        if needs.start_states:
            out["start_states"] = self.sample_start_states(needs.start_states)
        if needs.transitions:
            out["transitions"] = self.sample(needs.transitions)
        return out

    def holdout_batch(self, max_items: int) -> dict[str, np.ndarray]:
        """The newest held-out transitions in the window (up to `max_items`), for validation."""
        n = len(self)
        order = (self.total_inserted - n + np.arange(n)) % self.capacity
        held = order[self.holdout[order]][-max_items:]
        return {name: getattr(self, name)[held] for name in FIELDS}

    # -- statistics -----------------------------------------------------------
    def _reset_moments(self) -> None:
        d_in, d_out = self.obs_dim + self.action_dim, self.obs_dim + 1
        self._moments = {"inputs": [np.zeros(d_in), np.zeros(d_in)], "targets": [np.zeros(d_out), np.zeros(d_out)]}
        self._low = np.full(d_in, np.inf)
        self._high = np.full(d_in, -np.inf)

    def _add_moments(self, obs, action, next_obs, reward, sign: int = 1) -> None:
        """Add (sign 1) or remove (sign −1, evicted items) rows to the window's running sums; the range only
        ever widens (it covers everything inserted)."""
        inputs = np.concatenate([obs, action], 1).astype(np.float64)
        targets = np.concatenate([next_obs - obs, reward[:, None]], 1).astype(np.float64)
        for name, x in (("inputs", inputs), ("targets", targets)):
            s1, s2 = self._moments[name]
            s1 += sign * x.sum(0)
            s2 += sign * np.square(x).sum(0)
        if sign > 0 and len(inputs):
            np.minimum(self._low, inputs.min(0), out=self._low)
            np.maximum(self._high, inputs.max(0), out=self._high)

    def statistics(self) -> dict[str, np.ndarray]:
        """Unweighted mean and variance over the window of the model's inputs (obs ‖ action) and targets
        (Δobs ‖ reward), and the range of the inputs over everything inserted (kept in `state`): what the model normalises with
        under `model.normalizer: replay`. O(dims): kept as running sums by `insert`."""
        n = len(self)
        if n == 0:
            raise ValueError("no statistics of an empty replay buffer")
        out: dict = {"count": n, "inputs_low": self._low.copy(), "inputs_high": self._high.copy()}
        for name, (s1, s2) in self._moments.items():
            mean = s1 / n
            out[f"{name}_mean"] = mean
            out[f"{name}_var"] = np.maximum(s2 / n - mean**2, 0.0)
        return out

    def stats(self) -> dict[str, float]:
        n = len(self)
        return {
            "size": n,
            "total_inserted": self.total_inserted,
            "reward_mean": float(self.reward[:n].mean()) if n else 0.0,
        }

    # -- persistence ----------------------------------------------------------
    def state(self) -> dict[str, np.ndarray]:
        """The window oldest-first, the counters and the RNG state, as plain arrays."""
        n = len(self)
        order = (self.total_inserted - n + np.arange(n)) % self.capacity
        state = {name: getattr(self, name)[order] for name in FIELDS + ("global_index", "bootstrap", "holdout")}
        state["total_inserted"] = np.array(self.total_inserted)
        state["rng_state"] = np.array(json.dumps(self.rng.bit_generator.state))
        state["inputs_low"], state["inputs_high"] = self._low.copy(), self._high.copy()
        return state

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        n = len(state["reward"])
        if state["obs"].shape[1:] != (self.obs_dim,) or state["action"].shape[1:] != (self.action_dim,):
            raise ValueError(
                f"replay state has obs/action sizes {state['obs'].shape[1:]}/{state['action'].shape[1:]}, "
                f"this buffer expects ({self.obs_dim},)/({self.action_dim},)"
            )
        if state["bootstrap"].shape[1] != self.ensemble_size:
            raise ValueError(
                f"replay state has {state['bootstrap'].shape[1]} bootstrap weights per item, "
                f"this buffer expects ensemble_size={self.ensemble_size}"
            )
        total = int(state["total_inserted"])
        if n < min(total, self.capacity):
            raise ValueError(
                f"replay state holds a window of {n} of {total} transitions; a buffer of capacity "
                f"{self.capacity} would have {min(total, self.capacity) - n} empty slots in its window"
            )
        keep = slice(max(0, n - self.capacity), n)
        g = np.asarray(state["global_index"])[keep]
        pos = g % self.capacity
        for name in FIELDS + ("global_index", "bootstrap", "holdout"):
            getattr(self, name)[pos] = np.asarray(state[name])[keep]
        self.total_inserted = total
        self.rng.bit_generator.state = json.loads(str(state["rng_state"]))
        self._reset_moments()
        window = np.asarray(state["global_index"])[keep] % self.capacity
        self._add_moments(self.obs[window], self.action[window], self.next_obs[window], self.reward[window])
        if "inputs_low" in state:  # the range of everything inserted (states written before it: the window's)
            np.minimum(self._low, state["inputs_low"], out=self._low)
            np.maximum(self._high, state["inputs_high"], out=self._high)


def write_replay_state(state: dict[str, np.ndarray], path: Path) -> Path:
    """Write a replay state (`ReplayBuffer.state()`) to `path` atomically."""
    return atomic_write(path, lambda fh: np.savez(fh, **state))


def read_replay_state(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise FileNotFoundError(f"no replay file at '{path}'")
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}
