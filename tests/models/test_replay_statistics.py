"""`model.normalizer: replay` and `policy.state_clip: range` (the audit's items 5 and 6).

The replay keeps unweighted statistics of its window (model inputs obs ‖ action, targets
Δobs ‖ reward) and the range of everything inserted; the model learner normalises with
them instead of its running merge, and the clamp box of imagined states can follow the
data's range.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from umpo_dist.config import ModelConfig
from umpo_dist.data.replay import ReplayBuffer
from umpo_dist.models.ensemble import EnsembleDynamics
from umpo_dist.models.model_learner import ModelLearner
from umpo_dist.objectives.rollouts import state_box

OBS, ACT = 3, 2


def transitions(rng: np.random.Generator, m: int, shift: float) -> dict[str, np.ndarray]:
    """Transitions whose scale and offset change with `shift`, so old and new data differ."""
    obs = (rng.normal(size=(m, OBS)) * (1 + shift) + shift).astype(np.float32)
    return {
        "obs": obs,
        "action": rng.uniform(-1, 1, size=(m, ACT)).astype(np.float32),
        "reward": (rng.normal(size=m) + 2 * shift).astype(np.float32),
        "next_obs": (obs + rng.normal(size=(m, OBS)) * 0.1 + shift).astype(np.float32),
        "terminated": np.zeros(m, np.float32),
        "truncated": np.zeros(m, np.float32),
    }


def window_arrays(buf: ReplayBuffer) -> tuple[np.ndarray, np.ndarray]:
    """The window's model inputs and targets, computed directly from the stored arrays."""
    state = buf.state()
    inputs = np.concatenate([state["obs"], state["action"]], 1).astype(np.float64)
    targets = np.concatenate([state["next_obs"] - state["obs"], state["reward"][:, None]], 1).astype(np.float64)
    return inputs, targets


def filled(capacity: int, chunks: int, seed: int = 0) -> tuple[ReplayBuffer, list[dict]]:
    rng = np.random.default_rng(seed)
    buf = ReplayBuffer(OBS, ACT, capacity, ensemble_size=3, seed=seed)
    inserted = [transitions(rng, 37, shift=k / 2) for k in range(chunks)]
    for batch in inserted:
        buf.insert(batch)
    return buf, inserted


@pytest.mark.parametrize("capacity", [10_000, 100])  # the window holds everything / has dropped most of it
def test_replay_statistics_are_the_windows_unweighted_moments(capacity):
    buf, inserted = filled(capacity, chunks=12)
    stats = buf.statistics()
    inputs, targets = window_arrays(buf)
    assert stats["count"] == len(inputs) == min(capacity, 12 * 37)
    np.testing.assert_allclose(stats["inputs_mean"], inputs.mean(0), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(stats["inputs_var"], inputs.var(0), rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(stats["targets_mean"], targets.mean(0), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(stats["targets_var"], targets.var(0), rtol=1e-7, atol=1e-9)
    # The range covers everything inserted, the evicted data too.
    everything = np.concatenate([np.concatenate([b["obs"], b["action"]], 1) for b in inserted])
    np.testing.assert_array_equal(stats["inputs_low"], everything.min(0))
    np.testing.assert_array_equal(stats["inputs_high"], everything.max(0))
    if capacity < len(everything):  # evicted rows really left the moments
        assert not np.allclose(stats["inputs_mean"], everything.mean(0), atol=1e-3)


def test_replay_statistics_survive_state_and_load_state():
    buf, _ = filled(100, chunks=6)
    copy = ReplayBuffer(OBS, ACT, 100, ensemble_size=3)
    copy.load_state(buf.state())
    for key, value in buf.statistics().items():
        np.testing.assert_allclose(copy.statistics()[key], value, rtol=1e-9, atol=1e-9, err_msg=key)


def test_statistics_of_an_empty_replay_is_a_clear_error():
    with pytest.raises(ValueError, match="empty replay"):
        ReplayBuffer(OBS, ACT, 10, ensemble_size=3).statistics()


@pytest.mark.parametrize("normalizer", ["running", "replay"])
def test_model_learner_normalises_with_the_replays_statistics(normalizer):
    buf, _ = filled(10_000, chunks=10)
    learner = ModelLearner(ModelConfig(ensemble_size=3, hidden_layers=1, hidden_size=16, normalizer=normalizer), OBS, ACT)
    for _ in range(20):
        learner.refresh_statistics(buf.statistics)
        learner.update(buf.sample(64))
    stats, norm = buf.statistics(), learner.model.input_norm
    inputs_match = np.allclose(norm.mean.numpy(), stats["inputs_mean"], atol=1e-5)
    if normalizer == "replay":  # exactly the window's moments; the batches (linearly weighted) changed nothing
        assert inputs_match and int(norm.count) == stats["count"]
        np.testing.assert_allclose(norm.var.numpy(), stats["inputs_var"], rtol=1e-5)
        np.testing.assert_allclose(learner.model.target_norm.mean.numpy(), stats["targets_mean"], atol=1e-5)
        np.testing.assert_allclose(learner.model.target_norm.var.numpy(), stats["targets_var"], rtol=1e-5)
        np.testing.assert_array_equal(norm.low.numpy(), stats["inputs_low"].astype(np.float32))
    else:  # the running merge of linearly weighted batches: counts every sample, newer data weighted up
        assert not inputs_match and int(norm.count) == 20 * 64
        assert (norm.mean[:OBS] > torch.as_tensor(stats["inputs_mean"][:OBS], dtype=torch.float32)).all()


def model_with_statistics(mean, var, low, high) -> EnsembleDynamics:
    model = EnsembleDynamics(2, 1, ensemble_size=2, hidden_layers=1, hidden_size=4)
    model.input_norm.assign(mean, var, 10, low, high)
    return model


def test_range_box_spans_the_data_range_widened_by_sigmas():
    model = model_with_statistics([0.0, 1.0, 0.0], [4.0, 1.0, 1.0], [-1.0, -3.0, -1.0], [5.0, 2.0, 1.0])
    low, high = state_box(model, 2, 2.0, "range")
    std = model.input_norm.std[:2]
    torch.testing.assert_close(low, torch.tensor([-1.0, -3.0]) - 2 * std)
    torch.testing.assert_close(high, torch.tensor([5.0, 2.0]) + 2 * std)
    mean_low, mean_high = state_box(model, 2, 2.0, "mean")
    torch.testing.assert_close(mean_low, torch.tensor([0.0, 1.0]) - 2 * std)
    torch.testing.assert_close(mean_high, torch.tensor([0.0, 1.0]) + 2 * std)
    assert high[0] > mean_high[0]  # a skewed dimension: the range reaches data the mean ± kσ box cuts off


def test_weights_saved_before_the_range_load_and_the_range_box_falls_back_to_mean_and_sigmas():
    model = model_with_statistics([0.5, 1.0, 0.0], [1.0, 4.0, 1.0], [-9.0, -9.0, -9.0], [9.0, 9.0, 9.0])
    old = {k: v for k, v in model.state_dict().items() if not k.endswith(("norm.low", "norm.high"))}
    fresh = EnsembleDynamics(2, 1, ensemble_size=2, hidden_layers=1, hidden_size=4)
    fresh.load_state_dict(old)  # strict: the missing keys are filled in, nothing refused
    assert torch.isinf(fresh.input_norm.low).all() and torch.isinf(fresh.input_norm.high).all()
    torch.testing.assert_close(state_box(fresh, 2, 3.0, "range"), state_box(fresh, 2, 3.0, "mean"))
    torch.testing.assert_close(fresh.input_norm.mean, model.input_norm.mean)


def test_running_normaliser_tracks_the_range_of_every_batch():
    model = EnsembleDynamics(2, 1, ensemble_size=2, hidden_layers=1, hidden_size=4)
    a, b = torch.tensor([[0.0, 1.0, 2.0], [1.0, -1.0, 0.0]]), torch.tensor([[3.0, 0.0, -5.0]])
    model.input_norm.update(a)
    model.input_norm.update(b)
    torch.testing.assert_close(model.input_norm.low, torch.tensor([0.0, -1.0, -5.0]))
    torch.testing.assert_close(model.input_norm.high, torch.tensor([3.0, 1.0, 2.0]))


@pytest.mark.parametrize("sizes", [[5, 30], [25, 7, 40, 3], [9, 10, 11, 100, 1]])
def test_statistics_hold_for_inserts_that_wrap_or_exceed_the_capacity(sizes):
    rng = np.random.default_rng(3)
    buf = ReplayBuffer(OBS, ACT, 10, ensemble_size=3)
    for k, m in enumerate(sizes):
        buf.insert(transitions(rng, m, shift=k))
        inputs, targets = window_arrays(buf)
        np.testing.assert_allclose(buf.statistics()["inputs_mean"], inputs.mean(0), rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(buf.statistics()["targets_var"], targets.var(0), rtol=1e-6, atol=1e-9)


def test_statistics_after_loading_a_smaller_state_into_a_used_buffer():
    used, _ = filled(50, chunks=4, seed=1)  # slots full of other data
    small, _ = filled(50, chunks=1, seed=2)  # 37 items
    used.load_state(small.state())
    used.insert(transitions(np.random.default_rng(4), 60, shift=1.0))  # more than the capacity at once
    inputs, _ = window_arrays(used)
    np.testing.assert_allclose(used.statistics()["inputs_mean"], inputs.mean(0), rtol=1e-9, atol=1e-9)


def test_a_durable_replay_recovers_its_statistics_from_snapshot_and_log(tmp_path):
    from umpo_dist.data.durable_replay import DurableReplayBuffer

    rng = np.random.default_rng(5)
    first = DurableReplayBuffer(OBS, ACT, 60, 3, run_dir=tmp_path, sync_every_ms=0)
    for seq in range(8):  # more than the capacity: snapshots, then a log after the last one
        first.insert_chunk(transitions(rng, 23, shift=seq / 3), "w", seq)
    assert first.snapshots >= 1
    again = DurableReplayBuffer(OBS, ACT, 60, 3, run_dir=tmp_path, sync_every_ms=0)
    assert again.total_inserted == first.total_inserted
    for key, value in first.statistics().items():
        np.testing.assert_allclose(again.statistics()[key], value, rtol=1e-9, atol=1e-9, err_msg=key)
