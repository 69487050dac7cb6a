"""The SAC peer of `benchmarks/learning.py --peer sac` follows our evaluation protocol (skipped without SB3)."""

import importlib.util
import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("stable_baselines3")

from umpo_dist import config  # noqa: E402
from umpo_dist.envs.evaluation import evaluate_policy  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SHORT = ["train.total_env_steps=300", "train.eval_every=100", "train.random_steps=100", "env.eval_episodes=2",
         "train.seed=4"]


def load_peers():
    spec = importlib.util.spec_from_file_location("peers", ROOT / "benchmarks" / "peers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sac_is_evaluated_like_our_runs_and_gives_a_csv_row_per_evaluation():
    torch.set_num_threads(1)
    peers = load_peers()
    cfg = config.load(ROOT / "configs" / "inverted_pendulum.yaml", SHORT)
    result = peers.PEERS["sac"](cfg)
    steps = [s for s, _ in result["evaluations"]]
    assert steps == [0, 100, 200, 300] and result["env_steps"] == 300
    returns = [r for _, r in result["evaluations"]]
    assert all(math.isfinite(r) and r >= 1 for r in returns), returns  # every episode earns at least one step's reward
    # The evaluation protocol: the deterministic action, `env.eval_episodes` episodes from seeds 10_000 + seed.
    again = evaluate_policy(peers.DeterministicActor(result["model"]), cfg.env.id, 2, 10_004, cfg.env.max_episode_steps)
    assert again["return_mean"] == returns[-1]

    rows = peers.csv_rows(cfg, "sac", result, "abc", "cmd")
    assert [int(r["env_steps"]) for r in rows] == steps
    assert {(r["env"], r["runtime"], r["variant"], r["seed"]) for r in rows} == {("InvertedPendulum-v5", "sb3", "sac", 4)}
    walls = [float(r["wall_s"]) for r in rows]
    assert walls == sorted(walls)


def test_a_return_threshold_stops_sac_at_the_evaluation_that_meets_it():
    peers = load_peers()
    cfg = config.load(ROOT / "configs" / "inverted_pendulum.yaml", SHORT + ["train.stop_at_return=1"])
    result = peers.PEERS["sac"](cfg)
    assert [s for s, _ in result["evaluations"]] == [0] and result["env_steps"] == 0
