"""Checkpoints: the whole learning state of a run, written atomically, verified on load.

A checkpoint is a directory `checkpoints/step_<env_steps>` holding

- `replay.npz`        the replay window, counters and sampler RNG (plain arrays)
- `model_learner.pt`  ensemble weights, normalisers, optimiser state, update count
- `policy_learner.pt` policy, value, target value, temperature, optimisers, update count
- `counters.json`     env steps, versions, evaluations, RNG states of the driver
- `manifest.json`     sizes and SHA-256 of every file, and the shapes it was made for

It is written into a temporary directory and renamed into place under a name no
other checkpoint has, then `latest` is replaced; a crash at any point leaves `latest`
naming a whole checkpoint. Tensors are read
with `torch.load(weights_only=True)`: nothing from a run directory is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch

from umpo_dist.data.replay import read_replay_state, write_replay_state
from umpo_dist.files import atomic_write, fsync_dir

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
KEEP = 2  # checkpoints kept per run


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, damaged or made for another setting; names the path."""


def first_line(exc: Exception) -> str:
    """torch's refusal text goes on to suggest `weights_only=False`: bad advice for a file from elsewhere."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    detail = next((line for line in lines if "GLOBAL" in line), lines[0] if lines else type(exc).__name__)
    return detail


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def torch_save(obj, path: Path) -> Path:
    return atomic_write(path, lambda fh: torch.save(obj, fh))


def _write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda fh: fh.write(text.encode()))


def _step_dirs(root: Path) -> list[Path]:
    """Checkpoint directories, oldest first: by env step, then by the number of a rewrite of the same step."""
    def key(path: Path):
        step, _, rewrite = path.name[len("step_"):].partition(".")
        return int(step), int(rewrite or 0)

    return sorted((p for p in root.glob("step_*") if p.is_dir()), key=key)


def save_checkpoint(
    run_dir: str | Path,
    env_steps: int,
    replay_state: dict,
    model_state: dict,
    policy_state: dict,
    counters: dict,
    meta: dict,
) -> Path:
    """Write a checkpoint under `run_dir/checkpoints/` and point `latest` at it."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp_step_{env_steps:010d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    write_replay_state(replay_state, tmp / "replay.npz")
    torch_save(model_state, tmp / "model_learner.pt")
    torch_save(policy_state, tmp / "policy_learner.pt")
    _write_text(tmp / "counters.json", json.dumps(counters, indent=1))
    files = {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(tmp.iterdir())}
    manifest = {"format": FORMAT_VERSION, "env_steps": env_steps, "meta": meta, "files": files}
    _write_text(tmp / MANIFEST, json.dumps(manifest, indent=1))
    # A new name every time, even for a step written before (a resumed run, a final checkpoint at a
    # periodic one's step): the directory `latest` names is never removed or replaced before `latest`
    # has moved on, so a crash at any point leaves `latest` naming a whole checkpoint.
    final = root / f"step_{env_steps:010d}"
    rewrite = 0
    while final.exists():
        rewrite += 1
        final = root / f"step_{env_steps:010d}.{rewrite}"
    os.replace(tmp, final)
    fsync_dir(root)
    _write_text(root / "latest", final.name)
    fsync_dir(root)
    for old in _step_dirs(root)[:-KEEP]:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or a run directory / its `checkpoints/` (then the latest one)."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        return path
    for root in (path / "checkpoints", path):
        pointer = root / "latest"
        if pointer.is_file():
            target = root / pointer.read_text().strip()
            if (target / MANIFEST).is_file():
                return target
            raise CheckpointError(f"checkpoint '{target}' named by '{pointer}' has no {MANIFEST}")
    raise CheckpointError(f"no checkpoint at '{path}' (expected a {MANIFEST} or a checkpoints/latest pointer)")


def verify_checkpoint(path: str | Path, expect_meta: dict | None = None) -> dict:
    """Check every file's size and checksum, and that the shapes fit `expect_meta`; returns the manifest."""
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint '{path}': unreadable {MANIFEST} ({exc})") from None
    if manifest.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint '{path}': format {manifest.get('format')!r}, this version reads {FORMAT_VERSION}")
    for name, info in manifest["files"].items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"checkpoint '{path}': file '{name}' is missing")
        size = file.stat().st_size
        if size != info["bytes"]:
            raise CheckpointError(f"checkpoint '{path}': file '{name}' is truncated or altered ({size} bytes, manifest says {info['bytes']})")
        if _sha256(file) != info["sha256"]:
            raise CheckpointError(f"checkpoint '{path}': file '{name}' is corrupted (SHA-256 does not match the manifest)")
    for key, want in (expect_meta or {}).items():
        have = manifest["meta"].get(key)
        if have != want:
            raise CheckpointError(f"checkpoint '{path}' was made for {key}={have!r}, this run has {key}={want!r}")
    return manifest


def load_checkpoint(path: str | Path, expect_meta: dict | None = None) -> dict:
    """Verify, then read everything; nothing is returned unless every file checked out."""
    path = resolve_checkpoint(path)
    manifest = verify_checkpoint(path, expect_meta)
    try:
        return {
            "path": path,
            "manifest": manifest,
            "replay": read_replay_state(path / "replay.npz"),
            "model": torch.load(path / "model_learner.pt", weights_only=True, map_location="cpu"),
            "policy": torch.load(path / "policy_learner.pt", weights_only=True, map_location="cpu"),
            "counters": json.loads((path / "counters.json").read_text()),
        }
    except Exception as exc:  # checksums matched, so this is a file written by something else
        raise CheckpointError(f"checkpoint '{path}' could not be read: {first_line(exc)}") from None


def load_learner_state(run_dir: str | Path, name: str) -> dict | None:
    """One learner's state (`model_learner` or `policy_learner`) from a run's newest checkpoint, if any."""
    try:
        path = resolve_checkpoint(run_dir)
    except CheckpointError:
        return None
    verify_checkpoint(path)
    try:
        return torch.load(path / f"{name}.pt", weights_only=True, map_location="cpu")
    except Exception as exc:  # checksums matched, so this is a file written by something else
        raise CheckpointError(f"checkpoint '{path}': '{name}.pt' could not be read: {first_line(exc)}") from None
