"""`benchmarks/learning.py`: every named variant is a valid set of overrides on every task's config."""

import sys
from dataclasses import replace
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
    bursts = load(ROOT / "configs" / "hopper.yaml", learning.VARIANTS["heteroscedastic"])  # the noise they ran
    before = load(ROOT / "configs" / "hopper.yaml", learning.VARIANTS["no_bursts"])
    assert bursts.train.round_steps(bursts.resources.ratio_tolerance) == 500 and bursts.policy.restart_every
    assert before.train.round_steps(before.resources.ratio_tolerance) == 0
    assert (before.train.train_every, before.train.policy_updates_per_step) == (10, 1.0)
    assert (before.policy.restart_every, before.policy.critic_warmup) == (0, 0)
    assert before.model == bursts.model and before.mean_variance == bursts.mean_variance


def test_heteroscedastic_is_hopper_yaml_before_its_homoscedastic_noise():
    """hopper.yaml's model learns one noise level per target dim (DHMBPO's); `heteroscedastic` (the label of its
    earlier rows, and the head of `no_bursts`, `imagined_critic` and `value_critic`, which ran before) gives back
    the noise predicted per input and changes nothing else; the compact reference's model (`plain_model`) has it."""
    hopper = ROOT / "configs" / "hopper.yaml"
    shipped, before = load(hopper), load(hopper, learning.VARIANTS["heteroscedastic"])
    assert shipped.model.noise == "homoscedastic" and before.model.noise == "heteroscedastic"
    assert replace(before.model, noise=shipped.model.noise) == shipped.model
    for section in ("policy", "mean_variance", "train", "replay"):
        assert getattr(before, section) == getattr(shipped, section), section
    for name in ("no_bursts", "imagined_critic", "value_critic", "plain_model", "reference"):
        assert load(hopper, learning.VARIANTS[name]).model.noise == "heteroscedastic", name


@pytest.mark.parametrize("task", ["hopper", "walker2d"])
def test_four_workers_is_the_file_before_one_env_worker(task):
    """hopper.yaml's and walker2d.yaml's Ray runtime collects with one env worker sending whole rounds (so that it
    computes what the inline runner computes); `four_workers`, the label of their earlier Ray rows, gives back four
    workers sending chunks of 100 steps and changes nothing else."""
    path = ROOT / "configs" / f"{task}.yaml"
    shipped, before = load(path), load(path, learning.VARIANTS["four_workers"])
    assert (shipped.resources.num_env_workers, shipped.resources.chunk_size) == (1, shipped.train.train_every)
    assert (before.resources.num_env_workers, before.resources.chunk_size) == (4, 100)
    assert replace(before.resources, num_env_workers=1, chunk_size=shipped.train.train_every) == shipped.resources
    for section in ("model", "policy", "mean_variance", "train", "replay"):
        assert getattr(before, section) == getattr(shipped, section), section


WALKER2D_BEFORE = """
env: {id: Walker2d-v5, eval_episodes: 3}
model: {ensemble_size: 7, hidden_layers: 4, hidden_size: 200, elites: 5}
policy: {init_temperature: 0.1}
mean_variance: {risk_lambda: 0.5}
train: {total_env_steps: 200000, random_steps: 5000, model_warmup_updates: 1000, eval_every: 5000,
        checkpoint_every: 20000}
resources: {num_env_workers: 4}
"""


def test_heavy_defaults_is_walker2d_yaml_before_it_took_hopper_yaml_s_algorithm(tmp_path):
    """walker2d.yaml now carries hopper.yaml's algorithm (but for the model's regularisers: `plain_model` takes them
    off); `heavy_defaults` (the label of its earlier rows) gives back the file it had, and `heavy_audited` that file
    with the audit's policy settings."""
    (tmp_path / "walker2d.yaml").write_text(WALKER2D_BEFORE)
    before = load(tmp_path / "walker2d.yaml")
    before_audited = load(tmp_path / "walker2d.yaml", learning.VARIANTS["audited"])
    walker = ROOT / "configs" / "walker2d.yaml"
    now = load(walker)
    heavy = load(walker, learning.VARIANTS["heavy_defaults"])
    heavy_audited = load(walker, learning.VARIANTS["heavy_audited"])
    hopper = load(ROOT / "configs" / "hopper.yaml", learning.VARIANTS["heteroscedastic"])
    plain = load(walker, learning.VARIANTS["plain_model"])
    for section in ("model", "policy", "mean_variance", "train"):
        assert getattr(plain, section) == getattr(hopper, section), section
        assert getattr(now, section) != getattr(before, section) or section == "mean_variance", section
        assert getattr(heavy, section) == getattr(before, section), section
        assert getattr(heavy_audited, section) == getattr(before_audited, section), section


def test_walker2d_yaml_is_what_its_rows_ran_with_the_settings_it_chose():
    """The Walker2d rows that chose the file's settings ran what their labels now give on it: `dhmbpo_critic` plus
    the real-transition critic and the bursts (set by hand) ran `plain_model`, the file without the model's
    regularisers; that file with `model.layer_norm` and `model.dropout` 0.01 set by hand is the file (`shipped`)."""
    walker = ROOT / "configs" / "walker2d.yaml"
    sets = ["policy.real_critic_batch=256", "train.train_every=500", "policy.restart_every=250",
            "policy.critic_warmup=125", "train.policy_updates_per_step=1.25"]
    ran = load(walker, learning.VARIANTS["dhmbpo_critic"] + sets)
    plain = load(walker, learning.VARIANTS["plain_model"])
    regularised = load(walker, learning.VARIANTS["plain_model"] + ["model.layer_norm=true", "model.dropout=0.01"])
    shipped = load(walker)
    assert not plain.model.layer_norm and plain.model.dropout == 0.0
    for section in ("model", "policy", "mean_variance", "train"):
        assert getattr(ran, section) == getattr(plain, section), section
        assert getattr(regularised, section) == getattr(shipped, section), section


def test_each_variant_names_the_variant_it_is_built_on():
    assert learning.parent("shipped") is None and learning.parent("no_such_variant") is None
    assert learning.parent("aligned") == "reference"
    assert learning.parent("heavy_audited") == "heavy_defaults"
    assert learning.parent("dhmbpo_critic") == "aligned"
    assert learning.parent("no_bursts") == "heteroscedastic" and learning.parent("plain_model") == "shipped"
    assert learning.parent("imagined_critic") == "heteroscedastic" == learning.parent("value_critic")
    for name in learning.VARIANTS:  # every parent's overrides lead its child's
        if (base := learning.parent(name)) is not None:
            assert learning.VARIANTS[name][:len(learning.VARIANTS[base])] == learning.VARIANTS[base]


def test_a_run_prints_and_times_every_evaluation_its_last_included(tmp_path, monkeypatch, capsys):
    """The progress lines follow the rounds' callbacks; the evaluations after the last one (the run's end)
    are printed, timed and handed on too, one wall-clock per evaluation, with the model diagnostics of each
    evaluation made with a trained model."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    small = ["train.total_env_steps=300", "train.random_steps=100", "train.model_warmup_updates=5",
             "train.eval_every=100", "train.checkpoint_every=300", "env.eval_episodes=1",
             "model.hidden_size=16", "policy.hidden_size=16"]
    handed = []
    out = learning.run_seed("inverted_pendulum", "inline", small, 0, None, tmp_path,
                            lambda cfg, step, ret, wall, diag: handed.append((step, ret, wall, diag)))
    evaluations = out["summary"]["evaluations"]
    assert [step for step, _ in evaluations] == [0, 100, 200, 300]
    assert [(step, ret) for step, ret, _, _ in handed] == evaluations
    walls = [wall for _, _, wall, _ in handed]
    assert walls == sorted(walls) and walls[-1] == out["summary"]["wall_s"]
    assert handed[0][3] == {} and handed[-1][3]["step"] == 300 and "gap_share" in handed[-1][3]
    printed = [line for line in capsys.readouterr().out.splitlines() if "inverted_pendulum inline seed 0" in line]
    assert [int(line.split("step")[1].split()[0].replace(",", "")) for line in printed] == [0, 100, 200, 300]
