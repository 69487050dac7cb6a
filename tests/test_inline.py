"""The inline runner (one process, no Ray) learns InvertedPendulum-v5."""

from pathlib import Path

import torch

from umpo_dist import config
from umpo_dist.runtime.inline import InlineRunner

ROOT = Path(__file__).resolve().parents[1]


def test_inline_runner_solves_inverted_pendulum_within_5000_steps():
    torch.set_num_threads(1)
    cfg = config.load(ROOT / "configs" / "inverted_pendulum.yaml",
                      ["runtime=inline", "train.total_env_steps=5000", "train.stop_at_return=900", "train.seed=0"])
    logged = []
    summary = InlineRunner(cfg, lambda m, step: logged.append((step, m))).run()
    assert summary["evaluations"][0][0] == 0
    assert summary["evaluations"][0][1] < 100  # the initial policy drops the pole quickly
    assert summary["best_return"] >= 900, summary["evaluations"]
    assert summary["env_steps"] <= 5000
    # The update-to-data ratios were held: 0.5 model and 1.0 policy updates per env step after warm-up.
    assert abs(summary["model_ratio"] - 0.5) < 0.01
    assert abs(summary["policy_ratio"] - 1.0) < 0.01
    assert any("model/val_nll" in m for _, m in logged)
