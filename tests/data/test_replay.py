"""ReplayBuffer: linear sampling law, ring-buffer window, fairness, online bagging, persistence."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from umpo_dist.data.replay import DataNeeds, ReplayBuffer, linear_ranks, read_replay_state, write_replay_state

OBS_DIM, ACT_DIM, E = 3, 2, 5


def make_batch(start: int, m: int) -> dict[str, np.ndarray]:
    """`m` transitions whose contents encode their global index (start, start+1, ...)."""
    g = np.arange(start, start + m, dtype=np.float32)
    return {
        "obs": np.stack([g, g + 0.25, g + 0.5], 1),
        "action": np.stack([-g, -g - 0.5], 1),
        "reward": g * 10.0,
        "next_obs": np.stack([g + 1, g + 1.25, g + 1.5], 1),
        "terminated": (np.arange(start, start + m) % 7 == 0).astype(np.float32),
        "truncated": (np.arange(start, start + m) % 11 == 0).astype(np.float32),
    }


def fill(buf: ReplayBuffer, sizes) -> None:
    for m in sizes:
        buf.insert(make_batch(buf.total_inserted, m))


# -- chi-square machinery -----------------------------------------------------------------------
def chi2_sf(stat: float, df: int) -> float:
    """Upper tail of the chi-square distribution.

    scipy when available; otherwise the Wilson–Hilferty approximation
    ((X/k)^(1/3) is approximately normal with mean 1 − 2/(9k) and variance 2/(9k)),
    accurate to a few per cent in the tail for k ≳ 10.
    """
    try:
        from scipy.stats import chi2

        return float(chi2.sf(stat, df))
    except ImportError:  # pragma: no cover - scipy ships with the venv
        z = ((stat / df) ** (1 / 3) - (1 - 2 / (9 * df))) / math.sqrt(2 / (9 * df))
        return 0.5 * math.erfc(z / math.sqrt(2))


def chi2_pvalue(counts: np.ndarray, probs: np.ndarray) -> float:
    n = counts.sum()
    expected = n * probs
    assert expected.min() >= 5, "chi-square needs at least 5 expected counts per cell"
    stat = float(((counts - expected) ** 2 / expected).sum())
    return chi2_sf(stat, len(counts) - 1)


def test_chi2_helper_agrees_with_wilson_hilferty():
    # The helper itself: scipy (or the fallback) agrees with Wilson–Hilferty at a few points.
    for df, stat in ((49, 49.0), (49, 80.0), (99, 140.0)):
        z = ((stat / df) ** (1 / 3) - (1 - 2 / (9 * df))) / math.sqrt(2 / (9 * df))
        wh = 0.5 * math.erfc(z / math.sqrt(2))
        assert chi2_sf(stat, df) == pytest.approx(wh, rel=0.1, abs=1e-4)


# -- linear_ranks ---------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 7, 1000, 1_000_000])
def test_linear_ranks_edges(n):
    assert linear_ranks(np.array([0.0]), n)[0] == 1
    almost_one = np.nextafter(1.0, 0.0)
    assert linear_ranks(np.array([almost_one]), n)[0] == n
    u = np.linspace(0.0, almost_one, 10_001)
    r = linear_ranks(u, n)
    assert r.dtype == np.int64
    assert r.min() >= 1 and r.max() <= n
    assert np.all(np.diff(r) >= 0), "the inverse CDF must be monotone"


def test_linear_ranks_is_the_inverse_cdf():
    n = 40
    r = np.arange(1, n + 1)
    cdf = r * (r + 1) / (n * (n + 1))  # P(rank <= r)
    prev = np.concatenate([[0.0], cdf[:-1]])
    # Any u strictly inside (cdf(r-1), cdf(r)) maps to r.
    for frac in (0.01, 0.5, 0.99):
        u = prev + frac * (cdf - prev)
        np.testing.assert_array_equal(linear_ranks(u, n), r)


def test_linear_ranks_distribution_chi_square():
    n = 50
    rng = np.random.default_rng(123)
    ranks = linear_ranks(rng.random(200_000), n)
    counts = np.bincount(ranks, minlength=n + 1)[1:]
    r = np.arange(1, n + 1)
    assert chi2_pvalue(counts, 2 * r / (n * (n + 1))) > 1e-3


# -- the sampler on the buffer -----------------------------------------------------------------
def drawn_global_indices(buf: ReplayBuffer, draws: int, sampling: str | None = None) -> np.ndarray:
    pos = buf.sample_positions(draws, sampling)
    return buf.global_index[pos]


def test_linear_sampling_matches_rank_law_before_wrap():
    n = 60
    buf = ReplayBuffer(OBS_DIM, ACT_DIM, capacity=100, ensemble_size=E, seed=1)
    fill(buf, [25, 35])
    assert len(buf) == n
    g = drawn_global_indices(buf, 200_000)
    assert g.min() >= 0 and g.max() <= n - 1
    counts = np.bincount(g, minlength=n)
    rank = np.arange(1, n + 1)  # global index 0 is the oldest: rank 1
    assert chi2_pvalue(counts, 2 * rank / (n * (n + 1))) > 1e-3
    # The newest item is drawn about n times as often as the oldest.
    assert counts[-1] / counts[0] == pytest.approx(n, rel=0.25)


@pytest.mark.parametrize("sizes", [[30, 30, 77], [137], [1] * 137, [50, 87]])
def test_linear_sampling_after_wrap_draws_only_the_window(sizes):
    capacity = 50
    buf = ReplayBuffer(OBS_DIM, ACT_DIM, capacity=capacity, ensemble_size=E, seed=2)
    fill(buf, sizes)
    total = sum(sizes)
    assert buf.total_inserted == total and len(buf) == capacity
    oldest = total - capacity
    batch = buf.sample(100_000)
    g = batch["global_index"]
    assert g.min() >= oldest and g.max() <= total - 1, "only the newest `capacity` items may be drawn"
    # The stored contents belong to the drawn global index (the ring buffer kept the right rows).
    np.testing.assert_array_equal(batch["obs"][:, 0], g.astype(np.float32))
    np.testing.assert_array_equal(batch["reward"], g.astype(np.float32) * 10)
    np.testing.assert_array_equal(batch["action"][:, 1], -g.astype(np.float32) - 0.5)
    counts = np.bincount(g - oldest, minlength=capacity)
    rank = np.arange(1, capacity + 1)
    assert chi2_pvalue(counts, 2 * rank / (capacity * (capacity + 1))) > 1e-3


def test_uniform_sampling_is_uniform_over_the_window():
    capacity = 40
    buf = ReplayBuffer(OBS_DIM, ACT_DIM, capacity=capacity, ensemble_size=E, sampling="uniform", seed=3)
    fill(buf, [33, 33, 33])
    oldest = buf.total_inserted - capacity
    g = drawn_global_indices(buf, 100_000)
    assert g.min() >= oldest and g.max() <= buf.total_inserted - 1
    counts = np.bincount(g - oldest, minlength=capacity)
    assert chi2_pvalue(counts, np.full(capacity, 1 / capacity)) > 1e-3
    # The per-call override selects the other law on the same buffer.
    g_lin = drawn_global_indices(buf, 100_000, sampling="linear")
    counts_lin = np.bincount(g_lin - oldest, minlength=capacity)
    rank = np.arange(1, capacity + 1)
    assert chi2_pvalue(counts_lin, 2 * rank / (capacity * (capacity + 1))) > 1e-3


def test_bad_sampling_name_and_empty_buffer():
    with pytest.raises(ValueError, match="sampling"):
        ReplayBuffer(OBS_DIM, ACT_DIM, 10, E, sampling="prioritized")
    buf = ReplayBuffer(OBS_DIM, ACT_DIM, 10, E)
    with pytest.raises(ValueError, match="empty"):
        buf.sample(4)


# -- fairness in an online process ------------------------------------------------------------------
def online_draw_counts(sampling: str, T: int, draws_per_step: int, seed: int) -> np.ndarray:
    """Insert one item per step and draw from the growing buffer; expected draws per item.

    Each step makes `draws_per_step` draws and counts each as 1/draws_per_step, so
    `counts[i-1]` estimates the expected number of times item i (1-based) is drawn by
    step T in the one-draw-per-step process.
    """
    buf = ReplayBuffer(1, 1, capacity=T, ensemble_size=1, sampling=sampling, holdout_fraction=0.0, seed=seed)
    one = {
        "obs": np.zeros((1, 1), np.float32),
        "action": np.zeros((1, 1), np.float32),
        "reward": np.zeros(1, np.float32),
        "next_obs": np.zeros((1, 1), np.float32),
        "terminated": np.zeros(1, np.float32),
        "truncated": np.zeros(1, np.float32),
    }
    counts = np.zeros(T)
    for _ in range(T):
        buf.insert(one)
        g = buf.global_index[buf.sample_positions(draws_per_step)]
        counts += np.bincount(g, minlength=T)
    return counts / draws_per_step


T_ONLINE, K_ONLINE = 3000, 100


def test_linear_weights_draw_every_item_about_equally_often():
    counts = online_draw_counts("linear", T_ONLINE, K_ONLINE, seed=4)
    i = np.arange(1, T_ONLINE + 1)
    expected = 2 * (1 - i / (T_ONLINE + 1))  # design.md §1.1
    # Per-item count variance is about expected/K (sum of binomials), so a decile mean of
    # 300 items has sd ≈ sqrt(2/100/300) ≈ 0.008; 0.05 is > 5 sd.
    for lo, hi in ((0.0, 0.1), (0.45, 0.55)):
        sl = slice(int(lo * T_ONLINE), int(hi * T_ONLINE))
        assert counts[sl].mean() == pytest.approx(expected[sl].mean(), abs=0.05)
    # No item is over-used: even the earliest items are drawn at most ~2 times.
    assert counts[:30].mean() == pytest.approx(2.0, abs=0.1)
    assert counts[:30].mean() < 2.2
    # Whole-curve agreement (mean absolute error over items of decile means).
    deciles = counts.reshape(10, -1).mean(1)
    np.testing.assert_allclose(deciles, expected.reshape(10, -1).mean(1), atol=0.05)


def test_uniform_sampling_overuses_early_items_like_log():
    counts = online_draw_counts("uniform", T_ONLINE, K_ONLINE, seed=5)
    i = np.arange(1, T_ONLINE + 1)
    harmonic = np.cumsum(1.0 / i[::-1])[::-1]  # exact: Σ_{t=i..T} 1/t
    log_law = np.log(T_ONLINE / i)
    early = slice(9, 100)  # items 10..100; here H_T - H_{i-1} ≈ ln(T/i) + 1/(2i)
    # Exact expectation: sd of a 91-item mean is ≈ sqrt(5/100/91) ≈ 0.02.
    assert counts[early].mean() == pytest.approx(harmonic[early].mean(), abs=0.1)
    # The ln(T/i) law of design.md §1.1, within its own approximation error (≤ 1/(2i) ≤ 0.05) + noise.
    assert counts[early].mean() == pytest.approx(log_law[early].mean(), rel=0.05)
    np.testing.assert_allclose(counts[9:100:10], log_law[9:100:10], rtol=0.2)
    # Early items are drawn several times more often than late ones (and than linear's bound of 2).
    late = counts[int(0.9 * T_ONLINE):].mean()
    assert counts[:30].mean() > 5 * late
    assert counts[:30].mean() > 2.5 * 2.0


# -- online bagging and held-out items -----------------------------------------------------------
def test_bootstrap_weights_are_poisson_one():
    buf = ReplayBuffer(OBS_DIM, ACT_DIM, capacity=30_000, ensemble_size=E, holdout_fraction=0.1, seed=6)
    fill(buf, [1000] * 30)
    k = buf.bootstrap[: len(buf)]
    assert k.shape == (30_000, E)
    # 150,000 draws: sd of the mean ≈ 0.0026, of the variance ≈ sqrt(3/150000) ≈ 0.0045.
    assert k.mean() == pytest.approx(1.0, abs=0.015)
    assert k.var() == pytest.approx(1.0, abs=0.03)
    assert (k == 0).mean() == pytest.approx(math.exp(-1), abs=0.01)
    assert np.all(k == np.round(k)) and k.min() >= 0
    # Members draw independently: near-zero correlation between members.
    corr = np.corrcoef(k.T)
    assert np.abs(corr[~np.eye(E, dtype=bool)]).max() < 0.03
    assert buf.holdout[: len(buf)].mean() == pytest.approx(0.1, abs=0.01)


def test_held_out_items_get_zero_weight_in_samples():
    buf = ReplayBuffer(OBS_DIM, ACT_DIM, capacity=500, ensemble_size=E, holdout_fraction=0.3, seed=7)
    fill(buf, [300, 400])
    batch = buf.sample(5000)
    pos = batch["global_index"] % buf.capacity
    held = buf.holdout[pos]
    assert batch["weights"].shape == (5000, E)
    assert held.any() and (~held).any()
    np.testing.assert_array_equal(batch["weights"][held], 0.0)
    np.testing.assert_array_equal(batch["weights"][~held], buf.bootstrap[pos][~held])
    # holdout_batch returns only held-out rows, the newest ones.
    hb = buf.holdout_batch(50)
    g = hb["reward"] / 10
    assert len(g) == 50
    assert np.all(buf.holdout[g.astype(np.int64) % buf.capacity])
    window_held = np.sort([gi for gi in range(buf.total_inserted - 500, buf.total_inserted) if buf.holdout[gi % 500]])
    np.testing.assert_array_equal(g.astype(np.int64), window_held[-50:])


def test_start_states_are_obs_rows_of_the_window():
    buf = ReplayBuffer(OBS_DIM, ACT_DIM, capacity=64, ensemble_size=E, seed=8)
    fill(buf, [100, 50])
    s = buf.sample_start_states(500)
    assert s.shape == (500, OBS_DIM) and s.dtype == np.float32
    g = s[:, 0].astype(np.int64)
    assert g.min() >= buf.total_inserted - 64 and g.max() < buf.total_inserted
    np.testing.assert_array_equal(s, make_batch(0, buf.total_inserted)["obs"][g])


def test_sample_for_serves_exactly_what_the_needs_ask():
    a = ReplayBuffer(OBS_DIM, ACT_DIM, capacity=64, ensemble_size=E, seed=8)
    b = ReplayBuffer(OBS_DIM, ACT_DIM, capacity=64, ensemble_size=E, seed=8)
    fill(a, [100])
    fill(b, [100])
    assert a.sample_for(DataNeeds()) == {}
    only_states = a.sample_for(DataNeeds(start_states=7))
    assert list(only_states) == ["start_states"]
    np.testing.assert_array_equal(only_states["start_states"], b.sample_start_states(7))
    both = a.sample_for(DataNeeds(start_states=5, transitions=9))
    assert sorted(both) == ["start_states", "transitions"]
    np.testing.assert_array_equal(both["start_states"], b.sample_start_states(5))
    expected = b.sample(9)
    assert both["transitions"].keys() == expected.keys()
    for key in expected:
        np.testing.assert_array_equal(both["transitions"][key], expected[key], err_msg=key)


@pytest.mark.parametrize("method, args", [
    ("sample", (9,)), ("sample_start_states", (6,)), ("sample_for", (DataNeeds(start_states=5),)),
    ("sample_for", (DataNeeds(transitions=4),)), ("sample_for", (DataNeeds(start_states=3, transitions=2),)),
    ("sample_for", (DataNeeds(),)),
])
def test_many_answers_like_that_many_calls_in_a_row(method, args):
    """`many` draws the batches at once, and they are exactly those of the calls one by one (same seed)."""
    a = ReplayBuffer(OBS_DIM, ACT_DIM, capacity=64, ensemble_size=E, seed=8)
    b = ReplayBuffer(OBS_DIM, ACT_DIM, capacity=64, ensemble_size=E, seed=8)
    fill(a, [100, 30])
    fill(b, [100, 30])
    got = a.many(4, method, *args) + a.many(1, method, *args)
    expected = [getattr(b, method)(*args) for _ in range(5)]

    def flat(answer, prefix=""):
        if isinstance(answer, np.ndarray):
            return {prefix: answer}
        return {k: v for key, sub in answer.items() for k, v in flat(sub, prefix + "/" + key).items()}

    assert len(got) == 5
    for g, e in zip(got, expected):
        g, e = flat(g), flat(e)
        assert g.keys() == e.keys()
        for key in e:
            np.testing.assert_array_equal(g[key], e[key], err_msg=key)
    assert len({id(g) for g in got}) == 5
    with pytest.raises(ValueError, match="'insert' is not a sampling method"):
        a.many(2, "insert", make_batch(0, 1))


# -- insert validation -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "field, shape",
    [("obs", (4, OBS_DIM + 1)), ("next_obs", (4, OBS_DIM - 1)), ("action", (4, ACT_DIM + 1)), ("action", (4,)),
     ("obs", (3, OBS_DIM))],
)
def test_insert_wrong_shape_names_the_field(field, shape):
    buf = ReplayBuffer(OBS_DIM, ACT_DIM, capacity=16, ensemble_size=E)
    batch = make_batch(0, 4)
    batch[field] = np.zeros(shape, np.float32)
    with pytest.raises(ValueError, match=f"'{field}'"):
        buf.insert(batch)
    assert buf.total_inserted == 0 and len(buf) == 0


@pytest.mark.parametrize("field", ["reward", "terminated", "truncated"])
def test_insert_wrong_length_scalar_field_names_the_field(field):
    buf = ReplayBuffer(OBS_DIM, ACT_DIM, capacity=16, ensemble_size=E)
    batch = make_batch(0, 4)
    batch[field] = np.zeros((4, 2), np.float32)
    with pytest.raises(ValueError, match=f"'{field}'"):
        buf.insert(batch)


def test_insert_empty_batch_is_a_no_op():
    buf = ReplayBuffer(OBS_DIM, ACT_DIM, capacity=16, ensemble_size=E)
    assert buf.insert(make_batch(0, 0)) == 0
    assert buf.total_inserted == 0


# -- persistence ----------------------------------------------------------------------------------------
def save(buf: ReplayBuffer, directory) -> Path:
    """What `ReplayBuffer.save` did: the state, atomically, as `directory/replay.npz`."""
    return write_replay_state(buf.state(), directory / "replay.npz")


def load(buf: ReplayBuffer, directory) -> None:
    """What `ReplayBuffer.load` did."""
    buf.load_state(read_replay_state(directory / "replay.npz"))


def test_save_load_round_trip_continues_the_random_stream(tmp_path):
    kwargs = dict(obs_dim=OBS_DIM, action_dim=ACT_DIM, capacity=64, ensemble_size=E, holdout_fraction=0.2)
    buf = ReplayBuffer(seed=9, **kwargs)
    fill(buf, [40, 70])  # wrapped
    buf.sample(17)  # advance the stream past insertion
    path = save(buf, tmp_path)
    assert path == tmp_path / "replay.npz" and path.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["replay.npz"], "no temp file may be left behind"

    other = ReplayBuffer(seed=12345, **kwargs)
    load(other, tmp_path)
    assert len(other) == len(buf) and other.total_inserted == buf.total_inserted
    a, b = buf.state(), other.state()
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)

    # Same draws after load, including the next inserts' bootstrap weights and held-out flags.
    for x, y in ((buf.sample(32), other.sample(32)), (buf.sample(5), other.sample(5))):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)
    fill(buf, [20])
    fill(other, [20])
    np.testing.assert_array_equal(buf.bootstrap, other.bootstrap)
    np.testing.assert_array_equal(buf.holdout, other.holdout)
    np.testing.assert_array_equal(buf.sample_start_states(9), other.sample_start_states(9))


def test_save_replaces_the_previous_file(tmp_path):
    buf = ReplayBuffer(OBS_DIM, ACT_DIM, capacity=32, ensemble_size=E, seed=10)
    fill(buf, [10])
    save(buf, tmp_path)
    fill(buf, [15])
    save(buf, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["replay.npz"]
    fresh = ReplayBuffer(OBS_DIM, ACT_DIM, capacity=32, ensemble_size=E)
    load(fresh, tmp_path)
    assert fresh.total_inserted == 25 and len(fresh) == 25


def test_failed_save_keeps_the_previous_file(tmp_path, monkeypatch):
    buf = ReplayBuffer(OBS_DIM, ACT_DIM, capacity=32, ensemble_size=E, seed=11)
    fill(buf, [10])
    save(buf, tmp_path)
    fill(buf, [5])

    def broken_savez(fh, **arrays):
        fh.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        save(buf, tmp_path)
    monkeypatch.undo()
    fresh = ReplayBuffer(OBS_DIM, ACT_DIM, capacity=32, ensemble_size=E)
    load(fresh, tmp_path)  # the old, complete file is still there
    assert fresh.total_inserted == 10


def test_load_errors(tmp_path):
    buf = ReplayBuffer(OBS_DIM, ACT_DIM, capacity=32, ensemble_size=E)
    with pytest.raises(FileNotFoundError, match="replay.npz"):
        load(buf, tmp_path)
    fill(buf, [5])
    save(buf, tmp_path)
    with pytest.raises(ValueError, match="ensemble_size"):
        load(ReplayBuffer(OBS_DIM, ACT_DIM, capacity=32, ensemble_size=E + 1), tmp_path)
    with pytest.raises(ValueError, match="obs/action"):
        load(ReplayBuffer(OBS_DIM + 1, ACT_DIM, capacity=32, ensemble_size=E), tmp_path)
