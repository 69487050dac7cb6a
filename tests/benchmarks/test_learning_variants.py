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


def test_dhmbpo_critic_is_hopper_yaml_s_algorithm_before_the_real_critic():
    ours = load(ROOT / "configs" / "hopper.yaml", learning.VARIANTS["dhmbpo_critic"])
    before = load(ROOT / "configs" / "hopper.yaml", learning.VARIANTS["imagined_critic"])
    shipped = load(ROOT / "configs" / "hopper.yaml")
    assert shipped.policy.real_critic_batch > 0 and before.policy.real_critic_batch == 0
    for section in ("model", "policy", "mean_variance", "train"):
        assert getattr(ours, section) == getattr(before, section), section
