"""Config loading and validation: every class of bad input is a ConfigError naming the key."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from umpo_dist import config as C
from umpo_dist.config import Config, ConfigError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIG_FILES = sorted(CONFIG_DIR.glob("*.yaml"))


def esc(text: str) -> str:
    return re.escape(text)


def test_inverted_pendulum_config_exists():
    assert (CONFIG_DIR / "inverted_pendulum.yaml") in CONFIG_FILES


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg = C.load(path)
    assert isinstance(cfg, Config)
    raw = yaml.safe_load(path.read_text()) or {}
    # Values in the file arrive in the typed config.
    flat = C.flatten(cfg)
    for section, values in raw.items():
        if isinstance(values, dict):
            for key, value in values.items():
                assert flat[f"{section}.{key}"] == value, f"{section}.{key}"
        else:
            assert flat[section] == values


def test_inverted_pendulum_values():
    cfg = C.load(CONFIG_DIR / "inverted_pendulum.yaml")
    assert cfg.env.id == "InvertedPendulum-v5"
    assert cfg.model.ensemble_size == 5 and cfg.model.elites == 4
    assert isinstance(cfg.train.model_updates_per_step, float)
    # Unset keys keep their defaults.
    assert cfg.replay.sampling == "linear"
    assert cfg.policy.horizon == Config().policy.horizon


def test_defaults_are_valid_and_dump_round_trips():
    cfg = C.from_dict({})
    assert cfg == Config()
    again = C.from_dict(yaml.safe_load(C.dump(cfg)))
    assert again == cfg
    flat = C.flatten(cfg)
    assert flat["model.ensemble_size"] == 7 and flat["runtime"] == "ray"


# -- bad input: one test per class ---------------------------------------------------------------------
def test_unknown_key_names_the_dotted_key_and_suggests():
    with pytest.raises(ConfigError, match=esc("'model.ensemble_sise'")) as info:
        C.from_dict({"model": {"ensemble_sise": 3}})
    assert "did you mean 'model.ensemble_size'" in str(info.value)
    with pytest.raises(ConfigError, match=esc("unknown config key 'trian'")) as info:
        C.from_dict({"trian": {}})
    assert "'train'" in str(info.value)
    with pytest.raises(ConfigError, match=esc("'policy.horizn'")):
        C.from_dict({}, ["policy.horizn=3"])


@pytest.mark.parametrize(
    "data, key, type_name",
    [
        ({"model": {"ensemble_size": "seven"}}, "model.ensemble_size", "int"),
        ({"model": {"ensemble_size": 3.5}}, "model.ensemble_size", "int"),
        ({"model": {"ensemble_size": True}}, "model.ensemble_size", "int"),
        ({"policy": {"gamma": "high"}}, "policy.gamma", "float"),
        ({"env": {"id": 5}}, "env.id", "str"),
        ({"train": {"stop_at_return": "x"}}, "train.stop_at_return", "float"),
    ],
)
def test_wrong_type_names_key_and_type(data, key, type_name):
    with pytest.raises(ConfigError, match=esc(f"config key '{key}' must be of type {type_name}")):
        C.from_dict(data)


def test_ints_are_accepted_for_floats():
    cfg = C.from_dict({"model": {"lr": 1}, "train": {"stop_at_return": 950}})
    assert cfg.model.lr == 1.0 and isinstance(cfg.model.lr, float)
    assert cfg.train.stop_at_return == 950.0 and isinstance(cfg.train.stop_at_return, float)


@pytest.mark.parametrize(
    "data, key",
    [
        ({"model": {"ensemble_size": 0}}, "model.ensemble_size"),
        ({"policy": {"gamma": 1.5}}, "policy.gamma"),
        ({"model": {"lr": 0}}, "model.lr"),
        ({"model": {"holdout_fraction": 0.9}}, "model.holdout_fraction"),
        ({"policy": {"horizon": 0}}, "policy.horizon"),
        ({"train": {"seed": -1}}, "train.seed"),
        ({"mean_variance": {"risk_lambda": float("nan")}}, "mean_variance.risk_lambda"),
        ({"mean_variance": {"risk_lambda": -0.1}}, "mean_variance.risk_lambda"),
    ],
)
def test_out_of_range_names_key(data, key):
    with pytest.raises(ConfigError, match=esc(f"config key '{key}'") + ".*out of range"):
        C.from_dict(data)


def test_unknown_env_id_names_env_id_and_the_bad_id():
    with pytest.raises(ConfigError, match=esc("config key 'env.id' = 'NoSuchEnv-v0'")):
        C.from_dict({"env": {"id": "NoSuchEnv-v0"}})
    with pytest.raises(ConfigError, match=esc("'env.id' = 'InvertedPendulum-v9'")) as info:
        C.from_dict({}, ["env.id=InvertedPendulum-v9"])
    assert "InvertedPendulum-v5" in str(info.value)
    # The env check can be skipped (e.g. for envs registered later by a plug-in).
    assert C.from_dict({"env": {"id": "NoSuchEnv-v0"}}, check_env=False).env.id == "NoSuchEnv-v0"


def test_bad_choice_names_key_and_choices():
    with pytest.raises(ConfigError, match=esc("config key 'replay.sampling' = 'prioritized'")) as info:
        C.from_dict({"replay": {"sampling": "prioritized"}})
    assert "linear" in str(info.value) and "uniform" in str(info.value)
    with pytest.raises(ConfigError, match=esc("config key 'runtime' = 'k8s'")):
        C.from_dict({"runtime": "k8s"})
    with pytest.raises(ConfigError, match=esc("'resources.learner_gpus'")):
        C.from_dict({"resources": {"learner_gpus": "many"}})
    with pytest.raises(ConfigError, match=esc("config key 'model.rollout_members' = 'best'")) as info:
        C.from_dict({}, ["model.rollout_members=best"])
    assert "all" in str(info.value) and "elites" in str(info.value)
    assert C.from_dict({}, ["model.rollout_members=elites"]).model.rollout_members == "elites"


def test_moved_key_names_its_new_place(tmp_path):
    moved = esc("config key 'policy.risk_lambda' is now 'mean_variance.risk_lambda'")
    with pytest.raises(ConfigError, match=moved):
        C.from_dict({"policy": {"risk_lambda": 0.5}})
    with pytest.raises(ConfigError, match=moved):
        C.from_dict({}, ["policy.risk_lambda=0.5"])
    old = tmp_path / "old.yaml"
    old.write_text("policy:\n  horizon: 5\n  risk_lambda: 1.0\n")
    with pytest.raises(ConfigError, match=moved):
        C.load(old)
    assert C.from_dict({"mean_variance": {"risk_lambda": 1.0}}).mean_variance.risk_lambda == 1.0


def test_objective_must_be_registered():
    from umpo_dist.objectives import registered_objectives

    assert C.from_dict({}).policy.objective == "mean_variance" and "mean_variance" in registered_objectives()
    with pytest.raises(ConfigError, match=esc("config key 'policy.objective' = 'no_such_objective'")) as info:
        C.from_dict({"policy": {"objective": "no_such_objective"}})
    assert "mean_variance" in str(info.value)  # the registered names are listed
    with pytest.raises(ConfigError, match=esc("'policy.objective'")):
        C.from_dict({}, ["policy.objective=mean-variance"])


def test_shuffled_propagation_cannot_be_combined_with_elite_rollouts():
    with pytest.raises(ConfigError, match=esc("'policy.propagation' = 'shuffled'") + ".*" + esc("'model.rollout_members'")):
        C.from_dict({}, ["policy.propagation=shuffled", "model.rollout_members=elites"])
    assert C.from_dict({}, ["policy.propagation=shuffled"]).policy.propagation == "shuffled"
    with pytest.raises(ConfigError, match=esc("config key 'policy.propagation' = 'random'")):
        C.from_dict({}, ["policy.propagation=random"])


def test_elites_cannot_exceed_ensemble_size():
    with pytest.raises(ConfigError, match=esc("'model.elites'") + ".*" + esc("'model.ensemble_size'")):
        C.from_dict({"model": {"ensemble_size": 3, "elites": 4}})
    with pytest.raises(ConfigError, match=esc("'model.elites' = 5")):
        C.from_dict({}, ["model.ensemble_size=3"])  # default elites 5 > 3
    assert C.from_dict({"model": {"ensemble_size": 3, "elites": 3}}).model.elites == 3


def test_section_and_file_must_be_mappings():
    with pytest.raises(ConfigError, match=esc("section 'model")):
        C.from_dict({"model": 5})
    with pytest.raises(ConfigError, match="the config file must be a mapping"):
        C.from_dict([1, 2])


# -- overrides ---------------------------------------------------------------------------------------------
def test_set_overrides_parse_as_yaml_values():
    cfg = C.from_dict(
        {"model": {"ensemble_size": 5, "elites": 4}},
        ["model.ensemble_size=3", "model.elites=2", "train.stop_at_return=null", "mean_variance.risk_lambda=0",
         "replay.sampling=uniform", "tracking.run_name=my run", "model.lr=0.002", "runtime=inline"],
    )
    assert cfg.model.ensemble_size == 3 and type(cfg.model.ensemble_size) is int
    assert cfg.model.elites == 2
    assert cfg.train.stop_at_return is None
    assert cfg.mean_variance.risk_lambda == 0.0 and isinstance(cfg.mean_variance.risk_lambda, float)
    assert cfg.replay.sampling == "uniform"
    assert cfg.tracking.run_name == "my run"
    assert cfg.model.lr == pytest.approx(0.002)
    assert cfg.runtime == "inline"
    # A later override wins; values with '=' keep everything after the first '='.
    assert C.from_dict({}, ["train.stop_at_return=100", "train.stop_at_return=900"]).train.stop_at_return == 900.0
    assert C.parse_override("tracking.run_name=a=b") == ("tracking.run_name", "a=b")
    assert C.parse_override(" model.hidden_size = 64") == ("model.hidden_size", 64)


def test_overrides_are_validated_like_the_file():
    with pytest.raises(ConfigError, match=esc("'model.ensemble_size'")):
        C.from_dict({}, ["model.ensemble_size=three"])
    with pytest.raises(ConfigError, match=esc("'policy.gamma'")):
        C.from_dict({}, ["policy.gamma=2"])
    with pytest.raises(ConfigError, match="section.key=value"):
        C.from_dict({}, ["model.ensemble_size"])
    with pytest.raises(ConfigError, match="empty key"):
        C.from_dict({}, ["=3"])
    with pytest.raises(ConfigError, match=esc("'id' is not a section")):
        C.from_dict({"env": {"id": "InvertedPendulum-v5"}}, ["env.id.version=3"])
    with pytest.raises(ConfigError, match=esc("'env.id'")):
        C.from_dict({}, ["env.id.version=3"])


def test_load_applies_overrides(tmp_path):
    cfg = C.load(CONFIG_DIR / "inverted_pendulum.yaml", ["model.ensemble_size=3", "model.elites=3"])
    assert cfg.model.ensemble_size == 3 and cfg.model.elites == 3
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing\n")
    assert C.load(empty) == Config()


def test_missing_and_invalid_files(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=esc(f"config file '{missing}' does not exist")):
        C.load(missing)
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        C.load(bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text("model:\n  ensemble_sise: 3\n")
    with pytest.raises(ConfigError, match=esc("'model.ensemble_sise'")):
        C.load(typo)


# -- known gaps (see the report) ------------------------------------------------------------------------------
def test_learner_gpus_accepts_a_number():
    assert float(C.from_dict({}, ["resources.learner_gpus=1"]).resources.learner_gpus) == 1.0


def test_float_in_exponent_notation():
    assert C.from_dict({}, ["model.lr=3e-4"]).model.lr == pytest.approx(3e-4)


def test_from_dict_does_not_mutate_its_input():
    data = {"model": {"ensemble_size": 5, "elites": 2}}
    before = copy.deepcopy(data)
    C.from_dict(data, ["model.ensemble_size=3"])
    assert data == before


def test_real_critic_batch_needs_a_q_critic():
    with pytest.raises(ConfigError, match=esc("'policy.real_critic_batch' = 64 needs 'policy.critic' = 'q'")):
        C.from_dict({}, ["policy.real_critic_batch=64"])
    assert C.from_dict({}, ["policy.real_critic_batch=64", "policy.critic=q"]).policy.real_critic_batch == 64


def test_ray_rounds_must_be_longer_than_the_ratio_tolerance():
    # Shorter rounds are what the continuous rate limiter already does: they would silently not happen.
    with pytest.raises(ConfigError, match=esc("'train.train_every' = 50") + ".*"
                       + esc("'resources.ratio_tolerance' = 100")):
        C.from_dict({"runtime": "ray", "train": {"train_every": 50}})
    assert C.from_dict({"runtime": "ray", "train": {"train_every": 500}}).train.train_every == 500
    assert C.from_dict({"runtime": "inline", "train": {"train_every": 50}}).train.train_every == 50
    assert C.from_dict({"runtime": "ray", "train": {"train_every": 10}}).runtime == "ray"  # the default: no rounds
