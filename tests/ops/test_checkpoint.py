"""Checkpoints: round trip of real learner state, atomic writes, verification on load, no unpickling."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import umpo_dist
from umpo_dist.config import from_dict
from umpo_dist.data.replay import ReplayBuffer
from umpo_dist.envs.spec import env_spec
from umpo_dist.models.model_learner import ModelLearner
from umpo_dist.objectives.mean_variance import MeanVarianceObjective
from umpo_dist.ops import checkpoint as checkpoint_mod
from umpo_dist.ops import cli
from umpo_dist.ops.artifacts import export_policy, load_policy
from umpo_dist.ops.checkpoint import (
    KEEP,
    MANIFEST,
    CheckpointError,
    load_checkpoint,
    load_learner_state,
    resolve_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)
from umpo_dist.ops.train import checkpoint_meta

torch.set_num_threads(1)

ENV_ID = "InvertedPendulum-v5"
SMALL = {
    "model": {"ensemble_size": 3, "hidden_layers": 1, "hidden_size": 16, "elites": 2, "batch_size": 32},
    "policy": {"hidden_layers": 1, "hidden_size": 16, "horizon": 3, "start_states": 16},
}


# -- a small but real learning state --------------------------------------------------------------
@pytest.fixture(scope="module")
def spec():
    return env_spec(ENV_ID)


@pytest.fixture(scope="module")
def cfg():
    return from_dict(SMALL, check_env=False)


@pytest.fixture(scope="module")
def meta(cfg, spec):
    return checkpoint_meta(cfg, spec)


def make_replay(spec, cfg, n: int = 120) -> ReplayBuffer:
    rng = np.random.default_rng(1)
    buf = ReplayBuffer(spec.obs_dim, spec.action_dim, capacity=100, ensemble_size=cfg.model.ensemble_size, seed=2)
    for m in (50, 40, n - 90):  # 120 > capacity: the window has wrapped
        obs = rng.normal(size=(m, spec.obs_dim)).astype(np.float32)
        buf.insert({
            "obs": obs,
            "action": rng.uniform(-3, 3, size=(m, spec.action_dim)).astype(np.float32),
            "reward": rng.normal(size=m).astype(np.float32),
            "next_obs": (obs + 0.1 * rng.normal(size=obs.shape)).astype(np.float32),
            "terminated": (rng.random(m) < 0.05).astype(np.float32),
            "truncated": np.zeros(m, np.float32),
        })
    return buf


@pytest.fixture(scope="module")
def states(spec, cfg):
    """Replay, model learner and policy learner states after a few real updates."""
    replay = make_replay(spec, cfg)
    model = ModelLearner(cfg.model, spec.obs_dim, spec.action_dim, seed=0)
    for _ in range(3):
        model.update(replay.sample(cfg.model.batch_size))
    policy = MeanVarianceObjective(cfg, spec)
    policy.set_model_weights(model.weights(), model.updates)
    for _ in range(2):
        policy.update(replay.sample_for(policy.needs))
    assert model.updates == 3 and policy.updates == 2
    counters = {"env_steps": 120, "model_updates": 3, "policy_updates": 2, "evaluations": [[100, 12.5]],
                "episodes": [[40, 7.0], [95, 11.0]], "next_eval": 200}
    return {"replay": replay.state(), "model": model.state(), "policy": policy.state(), "counters": counters,
            "model_learner": model, "policy_learner": policy}


def write(run_dir: Path, env_steps: int, states: dict, meta: dict) -> Path:
    return save_checkpoint(run_dir, env_steps, states["replay"], states["model"], states["policy"],
                           states["counters"], meta)


def assert_same(a, b, where: str = "") -> None:
    """Deep equality of nested dicts/lists of tensors, arrays and plain values."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif torch.is_tensor(a):
        assert torch.is_tensor(b) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b, err_msg=where)
        assert a.dtype == b.dtype, where
    else:
        assert a == b, where


def rewrite_manifest_entry(ckpt: Path, name: str) -> None:
    """Make the manifest agree with whatever `name` now holds (what a forger would do)."""
    manifest = json.loads((ckpt / MANIFEST).read_text())
    data = (ckpt / name).read_bytes()
    manifest["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (ckpt / MANIFEST).write_text(json.dumps(manifest, indent=1))


# -- round trip ---------------------------------------------------------------------------------------
def test_round_trip_returns_equal_state(tmp_path, states, meta, spec, cfg):
    path = write(tmp_path, 120, states, meta)
    assert path == tmp_path / "checkpoints" / "step_0000000120"
    assert sorted(p.name for p in path.iterdir()) == sorted(
        ["replay.npz", "model_learner.pt", "policy_learner.pt", "counters.json", MANIFEST])

    ckpt = load_checkpoint(tmp_path, meta)  # a run directory resolves to its latest checkpoint
    assert ckpt["path"] == path
    assert ckpt["manifest"]["env_steps"] == 120 and ckpt["manifest"]["meta"] == meta
    assert_same(states["replay"], ckpt["replay"], "replay")
    assert_same(states["model"], ckpt["model"], "model")
    assert_same(states["policy"], ckpt["policy"], "policy")
    assert ckpt["counters"] == states["counters"]

    # The loaded state drives fresh objects to the same behaviour.
    replay = ReplayBuffer(spec.obs_dim, spec.action_dim, 100, cfg.model.ensemble_size, seed=99)
    replay.load_state(ckpt["replay"])
    assert_same(states["replay"], replay.state(), "reloaded replay")
    model = ModelLearner(cfg.model, spec.obs_dim, spec.action_dim, seed=5)
    model.load_state(ckpt["model"])
    assert_same(states["model_learner"].model.state_dict(), model.model.state_dict(), "model weights")
    assert model.updates == 3
    policy = MeanVarianceObjective(replace(cfg, train=replace(cfg.train, seed=5)), spec)
    policy.load_state(ckpt["policy"])
    assert_same(states["policy_learner"].policy.state_dict(), policy.policy.state_dict(), "policy weights")
    assert policy.updates == 2


def test_latest_pointer_and_only_newest_kept(tmp_path, states, meta):
    root = tmp_path / "checkpoints"
    written = [write(tmp_path, steps, states, meta) for steps in (100, 200, 300, 400)]
    assert (root / "latest").read_text() == "step_0000000400"
    assert resolve_checkpoint(tmp_path) == written[-1]
    assert resolve_checkpoint(root) == written[-1]
    assert not written[0].exists() and not written[1].exists()
    kept = sorted(p.name for p in root.glob("step_*"))
    assert kept == [p.name for p in written[-KEEP:]]
    assert KEEP == 2
    # Atomic: nothing temporary left behind.
    assert not list(root.glob(".tmp_*")) and not (root / "latest.tmp").exists()
    assert not list(root.rglob("*.tmp"))
    assert load_checkpoint(written[-2], meta)["manifest"]["env_steps"] == 300


def test_stale_temporary_dir_from_a_crashed_write_is_harmless(tmp_path, states, meta):
    good = write(tmp_path, 100, states, meta)
    # A crash mid-write of the next checkpoint: half a temporary directory, `latest` untouched.
    stale = tmp_path / "checkpoints" / ".tmp_step_0000000200"
    stale.mkdir()
    (stale / "replay.npz").write_bytes(b"half a file")
    assert load_checkpoint(tmp_path, meta)["path"] == good
    # The next write of that step replaces the leftovers.
    new = write(tmp_path, 200, states, meta)
    assert not stale.exists() and load_checkpoint(tmp_path, meta)["path"] == new


# -- rewriting a step: the crash window ------------------------------------------------------------------
def changed_states(states: dict) -> dict:
    """Other contents for the same env step: a moved model weight, other counters, a longer replay."""
    model = {**states["model"], "model": dict(states["model"]["model"]), "updates": states["model"]["updates"] + 1}
    name = next(k for k, v in model["model"].items() if torch.is_tensor(v) and v.is_floating_point() and v.numel() > 1)
    model["model"][name] = model["model"][name] + 1.0
    replay = {k: v.copy() for k, v in states["replay"].items()}
    replay["reward"] = replay["reward"] + 1.0
    counters = {**states["counters"], "model_updates": states["counters"]["model_updates"] + 1,
                "evaluations": [[100, 12.5], [120, 99.0]]}
    return {**states, "model": model, "replay": replay, "counters": counters}


def assert_holds(ckpt: dict, expected: dict) -> None:
    assert_same(expected["replay"], ckpt["replay"], "replay")
    assert_same(expected["model"], ckpt["model"], "model")
    assert_same(expected["policy"], ckpt["policy"], "policy")
    assert ckpt["counters"] == expected["counters"]


def test_changed_states_differ(states):
    new = changed_states(states)
    with pytest.raises(AssertionError):
        assert_same(states["model"], new["model"])
    with pytest.raises(AssertionError):
        assert_same(states["replay"], new["replay"])
    assert new["counters"] != states["counters"]


def test_rewriting_a_step_never_touches_what_latest_names(tmp_path, states, meta):
    root = tmp_path / "checkpoints"
    old = write(tmp_path, 120, states, meta)
    new_states = changed_states(states)
    again = write(tmp_path, 120, new_states, meta)  # a final checkpoint at a periodic one's step, say
    assert again == root / "step_0000000120.1" and old.is_dir()
    assert (root / "latest").read_text() == again.name
    assert_holds(load_checkpoint(tmp_path, meta), new_states)
    third = write(tmp_path, 120, states, meta)
    assert third == root / "step_0000000120.2"
    assert sorted(p.name for p in root.glob("step_*")) == ["step_0000000120.1", "step_0000000120.2"]
    assert_holds(load_checkpoint(tmp_path, meta), states)


@pytest.mark.parametrize("failure", ["latest pointer", "fsync after the rename"])
def test_a_crash_before_latest_moves_leaves_the_old_checkpoint_whole(tmp_path, states, meta, monkeypatch, failure):
    root = tmp_path / "checkpoints"
    old = write(tmp_path, 120, states, meta)
    old_files = {p.name: p.read_bytes() for p in old.iterdir()}
    new_states = changed_states(states)

    if failure == "latest pointer":
        real_write_text = checkpoint_mod._write_text

        def write_text(path, text):
            if Path(path).name == "latest":
                raise OSError("power cut while writing latest")
            return real_write_text(path, text)

        monkeypatch.setattr(checkpoint_mod, "_write_text", write_text)
    else:
        real_fsync_dir = checkpoint_mod.fsync_dir

        def fsync_dir(path):
            if Path(path) == root and not list(root.glob(".tmp_step_*")):
                raise OSError("power cut after the rename")  # the new directory is in place, `latest` not moved
            return real_fsync_dir(path)

        monkeypatch.setattr(checkpoint_mod, "fsync_dir", fsync_dir)
    with pytest.raises(OSError, match="power cut"):
        write(tmp_path, 120, new_states, meta)  # the same env step again
    monkeypatch.undo()

    # `latest` still names the old checkpoint, whose files are untouched: it verifies and loads with the old
    # contents. The new one went in beside it, under its own name.
    assert resolve_checkpoint(tmp_path) == old
    verify_checkpoint(old, meta)
    loaded = load_checkpoint(tmp_path, meta)
    assert loaded["path"] == old
    assert_holds(loaded, states)
    assert {p.name: p.read_bytes() for p in old.iterdir()} == old_files
    assert (root / "latest").read_text() == old.name
    assert (root / "step_0000000120.1").is_dir()

    # A successful save at that step afterwards is what `latest` names, with the new contents.
    path = write(tmp_path, 120, new_states, meta)
    assert path.name.startswith("step_0000000120.") and path != old
    assert resolve_checkpoint(tmp_path) == path
    assert_holds(load_checkpoint(tmp_path, meta), new_states)
    # Several more saves, some at one step: only the KEEP newest directories remain, `latest` among them.
    for steps in (120, 240, 240, 360):
        last = write(tmp_path, steps, states, meta)
    kept = sorted(p.name for p in root.glob("step_*"))
    assert len(kept) == KEEP and kept == ["step_0000000240.1", "step_0000000360"]
    assert resolve_checkpoint(tmp_path) == last
    assert not list(root.glob(".tmp_*")) and not list(root.rglob("*.tmp"))
    assert_holds(load_checkpoint(tmp_path, meta), states)


def test_a_failed_rename_of_the_new_directory_keeps_the_old_one(tmp_path, states, meta, monkeypatch):
    """The old code removed the step's directory before renaming the new one into place; a failed rename
    then left no checkpoint at that step at all."""
    root = tmp_path / "checkpoints"
    old = write(tmp_path, 120, states, meta)
    real_replace = os.replace

    def replace_files_only(src, dst):
        if Path(src).is_dir():
            raise OSError("rename failed")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_files_only)
    with pytest.raises(OSError, match="rename failed"):
        write(tmp_path, 120, changed_states(states), meta)
    monkeypatch.undo()
    assert resolve_checkpoint(tmp_path) == old
    assert_holds(load_checkpoint(tmp_path, meta), states)
    assert sorted(p.name for p in root.glob("step_*")) == [old.name]
    # The leftover temporary directory is harmless, and the next save of the step clears it.
    path = write(tmp_path, 120, changed_states(states), meta)
    assert not list(root.glob(".tmp_*"))
    assert_holds(load_checkpoint(tmp_path, meta), changed_states(states))
    assert path != old and old.is_dir()


# -- damage ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["replay.npz", "model_learner.pt", "policy_learner.pt", "counters.json"])
def test_truncated_file_is_named(tmp_path, states, meta, name):
    path = write(tmp_path, 120, states, meta)
    file = path / name
    full = file.stat().st_size
    with open(file, "r+b") as fh:
        fh.truncate(full // 2)
    expected = (f"checkpoint '{path}': file '{name}' is truncated or altered "
                f"({full // 2} bytes, manifest says {full})")
    with pytest.raises(CheckpointError, match=re.escape(expected)):
        load_checkpoint(tmp_path, meta)


@pytest.mark.parametrize("name", ["replay.npz", "model_learner.pt", "policy_learner.pt"])
def test_flipped_byte_is_detected(tmp_path, states, meta, name):
    path = write(tmp_path, 120, states, meta)
    file = path / name
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0x01
    file.write_bytes(bytes(data))
    assert file.stat().st_size == len(data)
    expected = f"checkpoint '{path}': file '{name}' is corrupted (SHA-256 does not match the manifest)"
    with pytest.raises(CheckpointError, match=re.escape(expected)):
        load_checkpoint(path, meta)


def test_missing_file_is_named(tmp_path, states, meta):
    path = write(tmp_path, 120, states, meta)
    (path / "policy_learner.pt").unlink()
    with pytest.raises(CheckpointError, match=re.escape(f"checkpoint '{path}': file 'policy_learner.pt' is missing")):
        load_checkpoint(path, meta)


def test_checkpoint_of_another_env_is_refused(tmp_path, states, meta, cfg):
    other = checkpoint_meta(cfg, env_spec("HalfCheetah-v5"))
    write(tmp_path, 120, states, other)
    path = tmp_path / "checkpoints" / "step_0000000120"
    expected = (f"checkpoint '{path}' was made for env_id='HalfCheetah-v5', "
                f"this run has env_id='InvertedPendulum-v5'")
    with pytest.raises(CheckpointError, match=re.escape(expected)):
        load_checkpoint(tmp_path, meta)


def test_checkpoint_of_another_ensemble_size_is_refused(tmp_path, states, meta, spec):
    bigger = from_dict({**SMALL, "model": {**SMALL["model"], "ensemble_size": 5}}, check_env=False)
    write(tmp_path, 120, states, checkpoint_meta(bigger, spec))
    path = tmp_path / "checkpoints" / "step_0000000120"
    expected = f"checkpoint '{path}' was made for ensemble_size=5, this run has ensemble_size=3"
    with pytest.raises(CheckpointError, match=re.escape(expected)):
        load_checkpoint(tmp_path, meta)


def test_unknown_path_names_the_path(tmp_path):
    nowhere = tmp_path / "no" / "such" / "run"
    expected = f"no checkpoint at '{nowhere}' (expected a {MANIFEST} or a checkpoints/latest pointer)"
    with pytest.raises(CheckpointError, match=re.escape(expected)):
        load_checkpoint(nowhere)


def test_missing_manifest_names_the_path(tmp_path, states, meta):
    path = write(tmp_path, 120, states, meta)
    (path / MANIFEST).unlink()
    pointer = tmp_path / "checkpoints" / "latest"
    with pytest.raises(CheckpointError, match=re.escape(f"checkpoint '{path}' named by '{pointer}' has no {MANIFEST}")):
        load_checkpoint(tmp_path, meta)
    with pytest.raises(CheckpointError, match=re.escape(f"checkpoint '{path}': unreadable {MANIFEST}")):
        verify_checkpoint(path)


def test_garbled_manifest_names_the_path(tmp_path, states, meta):
    path = write(tmp_path, 120, states, meta)
    (path / MANIFEST).write_text("{not json")
    with pytest.raises(CheckpointError, match=re.escape(f"checkpoint '{path}': unreadable {MANIFEST}")):
        load_checkpoint(path, meta)


# -- nothing is unpickled -----------------------------------------------------------------------------
class SideEffect:
    """Unpickling this creates a directory: a stand-in for arbitrary code execution."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def plant_pickle(ckpt: Path, marker: Path) -> None:
    with open(ckpt / "model_learner.pt", "wb") as fh:
        torch.save({"model": SideEffect(marker), "updates": 3}, fh)
    rewrite_manifest_entry(ckpt, "model_learner.pt")


def test_a_pickled_object_is_not_executed(tmp_path, states, meta):
    path = write(tmp_path / "run", 120, states, meta)
    marker = tmp_path / "pwned"
    plant_pickle(path, marker)
    verify_checkpoint(path, meta)  # the checksums agree: only the loader stands in the way
    with pytest.raises(CheckpointError, match=re.escape(f"checkpoint '{path}' could not be read:")):
        load_checkpoint(tmp_path / "run", meta)
    assert not marker.exists()
    # The payload is live: an unrestricted unpickler would have run it.
    torch.load(path / "model_learner.pt", weights_only=False)
    assert marker.is_dir()


def test_load_learner_state_refuses_a_pickled_object_with_checkpoint_error(tmp_path, states, meta):
    path = write(tmp_path / "run", 120, states, meta)
    marker = tmp_path / "pwned"
    plant_pickle(path, marker)
    try:
        with pytest.raises(CheckpointError, match=re.escape(f"'{path}'")):
            load_learner_state(tmp_path / "run", "model_learner")
    finally:
        assert not marker.exists()


def test_load_learner_state_never_unpickles(tmp_path, states, meta):
    path = write(tmp_path / "run", 120, states, meta)
    marker = tmp_path / "pwned"
    plant_pickle(path, marker)
    with pytest.raises(Exception):
        load_learner_state(tmp_path / "run", "model_learner")
    assert not marker.exists()


# -- load_learner_state -------------------------------------------------------------------------------
def test_load_learner_state(tmp_path, states, meta):
    assert load_learner_state(tmp_path, "model_learner") is None  # a new run: nothing yet
    write(tmp_path, 120, states, meta)
    assert_same(states["model"], load_learner_state(tmp_path, "model_learner"), "model")
    assert_same(states["policy"], load_learner_state(tmp_path, "policy_learner"), "policy")
    # A damaged checkpoint is an error, not a silent fresh start.
    file = tmp_path / "checkpoints" / "step_0000000120" / "policy_learner.pt"
    with open(file, "r+b") as fh:
        fh.truncate(10)
    with pytest.raises(CheckpointError, match=re.escape("file 'policy_learner.pt' is truncated")):
        load_learner_state(tmp_path, "policy_learner")


# -- the command line ---------------------------------------------------------------------------------
def test_cli_evaluate_corrupted_checkpoint_is_a_one_line_error(tmp_path, states, meta, capsys):
    path = write(tmp_path, 120, states, meta)
    data = bytearray((path / "replay.npz").read_bytes())
    data[100] ^= 0xFF
    (path / "replay.npz").write_bytes(bytes(data))
    assert cli.main(["evaluate", str(path)]) == 2
    err = capsys.readouterr().err
    expected = (f"umpo: error: checkpoint '{path}': file 'replay.npz' is corrupted "
                f"(SHA-256 does not match the manifest)")
    assert expected in err
    assert "Traceback" not in err
    # The run directory works the same way.
    assert cli.main(["evaluate", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err


def test_cli_evaluate_missing_and_non_policy_paths(tmp_path, capsys):
    missing = tmp_path / "nothing-here"
    assert cli.main(["evaluate", str(missing)]) == 2
    err = capsys.readouterr().err
    assert f"umpo: error: no policy file, checkpoint or run directory at '{missing}'" in err and "Traceback" not in err
    junk = tmp_path / "notes.txt"
    junk.write_text("not a policy")
    assert cli.main(["evaluate", str(junk)]) == 2
    err = capsys.readouterr().err
    assert f"umpo: error: policy file '{junk}' could not be read" in err and "Traceback" not in err


# -- the exported policy ------------------------------------------------------------------------------
def test_export_and_load_policy_give_identical_actions(tmp_path, states, spec, cfg):
    learner = states["policy_learner"]
    file = export_policy(tmp_path / "out" / "policy.pt", learner.weights(), spec, cfg.policy)
    assert file == tmp_path / "out" / "policy.pt" and not file.with_suffix(".tmp").exists()
    policy = load_policy(file)
    assert policy.env_id == spec.env_id and not policy.training
    obs = np.random.default_rng(3).normal(size=(32, spec.obs_dim)).astype(np.float32)
    np.testing.assert_array_equal(policy.act(obs, deterministic=True), learner.policy.act(obs, deterministic=True))
    torch.manual_seed(7)
    a = policy.act(obs)
    torch.manual_seed(7)
    np.testing.assert_array_equal(a, learner.policy.act(obs))
    assert np.all(np.abs(a) <= 3.0)


def test_load_policy_from_a_checkpoint_or_run_directory(tmp_path, states, meta, spec):
    learner = states["policy_learner"]
    path = write(tmp_path, 120, states, meta)
    obs = np.random.default_rng(4).normal(size=(16, spec.obs_dim)).astype(np.float32)
    for where in (path, tmp_path, tmp_path / "checkpoints"):
        policy = load_policy(where)
        assert policy.env_id == spec.env_id and not policy.training
        np.testing.assert_array_equal(policy.act(obs, deterministic=True), learner.policy.act(obs, deterministic=True))
    shortcut = umpo_dist.load_policy(tmp_path)  # the top-level shortcut
    np.testing.assert_array_equal(shortcut.act(obs, deterministic=True), learner.policy.act(obs, deterministic=True))


def test_load_policy_refuses_other_files(tmp_path, states, meta):
    absent = tmp_path / "absent.pt"
    with pytest.raises(CheckpointError, match=re.escape(f"no policy file, checkpoint or run directory at '{absent}'")):
        load_policy(tmp_path / "absent.pt")
    path = write(tmp_path, 120, states, meta)
    for name in ("model_learner.pt", "counters.json", "replay.npz"):
        with pytest.raises(CheckpointError, match=re.escape(f"policy file '{path / name}' could not be read")):
            load_policy(path / name)
    # A pickled object in a policy file is refused without running it.
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil_policy.pt"
    torch.save({"obs_dim": SideEffect(marker)}, evil)
    with pytest.raises(CheckpointError, match=re.escape(f"policy file '{evil}' could not be read")):
        load_policy(evil)
    assert not marker.exists()
