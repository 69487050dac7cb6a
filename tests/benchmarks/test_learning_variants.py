"""`benchmarks/learning.py`: every named variant is a valid set of overrides on every task's config."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import learning  # noqa: E402

from umpo_dist.config import load  # noqa: E402


@pytest.mark.parametrize("task", learning.TASKS)
@pytest.mark.parametrize("variant", sorted(learning.VARIANTS))
def test_every_variant_loads_on_every_task(task, variant):
    cfg = load(ROOT / "configs" / f"{task}.yaml", learning.VARIANTS[variant])
    if variant in ("audited", "aligned"):  # the audit's policy settings, whatever the file carries
        assert cfg.policy.normalize_obs and cfg.policy.init_std == 1.0 and cfg.policy.entropy_in_return
        assert cfg.policy.mean_rewards and cfg.policy.alpha_lr == 0.001
    if variant == "aligned":  # ... on the compact reference's model and critic
        assert (cfg.model.ensemble_size, cfg.model.hidden_layers, cfg.model.hidden_size) == (5, 3, 200)
        assert cfg.policy.value_members == 1 and not cfg.policy.value_layer_norm


def test_dhmbpo_critic_is_hopper_yaml_s_algorithm_before_the_real_critic_and_the_bursts():
    ours = load(ROOT / "configs" / "hopper.yaml", learning.VARIANTS["dhmbpo_critic"])
    before = load(ROOT / "configs" / "hopper.yaml", learning.VARIANTS["imagined_critic"])
    shipped = load(ROOT / "configs" / "hopper.yaml")
    assert shipped.policy.real_critic_batch > 0 and before.policy.real_critic_batch == 0
    for section in ("model", "policy", "mean_variance", "train"):
        assert getattr(ours, section) == getattr(before, section), section


def test_no_bursts_is_hopper_yaml_before_its_rounds_and_restart():
    """hopper.yaml trains in rounds of 500 env steps with DHMBPO's restart; `no_bursts` (the label of its earlier
    rows) gives back the schedule those rows ran: updates every 10 env steps, policy ratio 1.0, no restart."""
    shipped = load(ROOT / "configs" / "hopper.yaml")
    before = load(ROOT / "configs" / "hopper.yaml", learning.VARIANTS["no_bursts"])
    assert shipped.train.round_steps(shipped.resources.ratio_tolerance) == 500 and shipped.policy.restart_every
    assert before.train.round_steps(before.resources.ratio_tolerance) == 0
    assert (before.train.train_every, before.train.policy_updates_per_step) == (10, 1.0)
    assert (before.policy.restart_every, before.policy.critic_warmup) == (0, 0)
    assert before.model == shipped.model and before.mean_variance == shipped.mean_variance
