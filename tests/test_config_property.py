"""Property tests of the config loader: any document and any `--set` give a Config or a ConfigError.

Never another exception: a user's typo must end in one line that names the problem, not a traceback.
"""

from __future__ import annotations

import dataclasses
import re
import tempfile
import typing
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from umpo_dist import config as C
from umpo_dist.config import Config, ConfigError

torch.set_num_threads(1)

SETTINGS = settings(max_examples=250, deadline=None, derandomize=True, database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# -- what the real config looks like -------------------------------------------------------------------
SECTIONS: dict[str, type] = {
    f.name: typing.get_type_hints(Config)[f.name]
    for f in dataclasses.fields(Config) if dataclasses.is_dataclass(typing.get_type_hints(Config)[f.name])
}
FIELDS: dict[str, dict[str, typing.Any]] = {s: typing.get_type_hints(cls) for s, cls in SECTIONS.items()}
TOP_KEYS = [f.name for f in dataclasses.fields(Config)]  # "runtime" and the sections
DOTTED = ["runtime"] + [f"{s}.{k}" for s, fields in FIELDS.items() for k in fields]
LEAF_NAMES = sorted({k for fields in FIELDS.values() for k in fields})

ENV_IDS = ["InvertedPendulum-v5", "HalfCheetah-v5", "Hopper-v5", "Pendulum-v1", "CartPole-v1",
           "NoSuchEnv-v0", "invertedpendulum-v5", "InvertedPendulum", "HalfCheetah-v99", "", "ALE/Pong-v5"]

# Scalars as YAML text that PyYAML's resolver recognises and its constructor may fail to build,
# and other text that has tripped YAML loaders.
TRICKY_TEXT = ["0x_", "0b_", "2020-13-45", "0000-01-01", "2021-02-30", "1" * 4400, "[" * 600,
               "!!python/object/apply:os.system ['true']", "!!binary 'not base64'", "&a [*a]", "*undefined",
               "'unterminated", '"\\x"', "{a: 1", "a: b: c", "- [", "\t", "%YAML 9.9", "---\n---", "? x", "@", "`",
               "1e-3", "3e-4", ".nan", "-.inf", "1_000", "0o17", "017", "1:30", "0x1F", "yes", "off", "~", "null",
               "[1, 2]", "{id: Hopper-v5}", "auto", "linear", "uniform", "ray", "inline", "1.5", "-1", "0", "",
               "mean_variance", "all", "elites"]

junk_text = st.text(max_size=12)
numbers = st.one_of(st.integers(-10, 10), st.integers(-(2**40), 2**40),
                    st.floats(allow_nan=True, allow_infinity=True), st.floats(-2, 2))
scalars = st.one_of(st.none(), st.booleans(), numbers, junk_text, st.sampled_from(TRICKY_TEXT + ENV_IDS))


def plausible(hint) -> st.SearchStrategy:
    """Values a user would plausibly write for a field of type `hint` (valid or near-valid)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if args:
        return st.one_of(st.none(), plausible(args[0]))
    if hint is bool:
        return st.one_of(st.booleans(), st.sampled_from(["true", "no", "1"]))
    if hint is int:
        return st.one_of(st.integers(-2, 2_000_000), st.integers(0, 20))
    if hint is float:
        return st.one_of(st.floats(-1, 2), st.floats(0, 1, exclude_min=True), st.integers(0, 5),
                         st.sampled_from(["3e-4", "1e-3", "0.5", ".inf", "x"]))
    return st.one_of(st.sampled_from(["ray", "inline", "linear", "uniform", "auto", "1", "0.5", "-1", "mean_variance",
                                      "all", "elites"] + ENV_IDS),
                     st.integers(0, 3), junk_text)


values = st.one_of(scalars, st.lists(scalars, max_size=3), st.dictionaries(junk_text, scalars, max_size=2))


@st.composite
def section_bodies(draw, section: str):
    fields = FIELDS[section]
    body = {}
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.integers(0, 9))
        if kind < 7:
            key = draw(st.sampled_from(sorted(fields)))
            body[key] = draw(st.one_of(plausible(fields[key]), values) if kind < 6 else values)
        elif kind == 7:
            body[draw(st.sampled_from(LEAF_NAMES))] = draw(values)  # a real key in the wrong section
        else:
            body[draw(st.one_of(junk_text, st.integers(), st.none(), st.booleans()))] = draw(values)
    return body


@st.composite
def documents(draw):
    doc = {}
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.integers(0, 9))
        if kind < 7:
            section = draw(st.sampled_from(sorted(SECTIONS)))
            doc[section] = draw(section_bodies(section)) if kind < 6 else draw(values)
        elif kind == 7:
            doc["runtime"] = draw(st.one_of(st.sampled_from(["ray", "inline"]), values))
        else:
            doc[draw(st.one_of(junk_text, st.sampled_from(LEAF_NAMES + DOTTED), st.integers()))] = draw(values)
    return doc


override_keys = st.one_of(
    st.sampled_from(DOTTED),
    st.sampled_from(TOP_KEYS),
    st.builds(lambda s, k: f"{s}.{k}", st.sampled_from(TOP_KEYS), junk_text),
    st.builds(lambda k, j: f"{k}.{j}", st.sampled_from(DOTTED), junk_text),  # below a leaf
    st.sampled_from(["", " ", ".", "env.", ".id", "env..id", "a.b.c.d"]),
    junk_text,
)
override_values = st.one_of(st.sampled_from(TRICKY_TEXT + ENV_IDS), junk_text,
                            st.integers(-(2**40), 2**40).map(str), st.floats().map(repr))
overrides = st.lists(
    st.one_of(st.builds(lambda k, v: f"{k}={v}", override_keys, override_values), junk_text),
    max_size=4,
)

# -- the property ---------------------------------------------------------------------------------------
_DIR = Path(tempfile.mkdtemp(prefix="umpo-config-property-"))


def config_file(text: str | bytes) -> Path:
    path = _DIR / "config.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def outcome(load) -> Config | None:
    """A valid Config, or None for a ConfigError with a message; any other exception fails the test."""
    try:
        cfg = load()
    except ConfigError as exc:
        assert str(exc).strip(), "a ConfigError without a message"
        return None
    assert isinstance(cfg, Config)
    return cfg


def assert_reloads(cfg: Config) -> None:
    """A valid config survives `dump` and `load` unchanged (a resumed run reads the dumped config.yaml)."""
    again = C.load(config_file(C.dump(cfg)), check_env=False)
    assert repr(again) == repr(cfg)


@SETTINGS
@given(doc=documents(), sets=overrides)
@example(doc={"train": {"seed": 3}}, sets=["train.seed=0x_"])
@example(doc={}, sets=["train.seed=2020-13-45"])
@example(doc={"model": {"ensemble_size": 5, "elites": 3}}, sets=["policy.horizon=[" + "[" * 600])
@example(doc={"policy": {"risk_lambda": 0.5}}, sets=[])  # a moved key
@example(doc={}, sets=["policy.risk_lambda=0.5"])
@example(doc={"policy": {"objective": "mean_variance"}, "model": {"rollout_members": "elites"}}, sets=[])
def test_documents_and_overrides(doc, sets):
    text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    cfg = outcome(lambda: C.load(config_file(text), sets, check_env=False))
    same = outcome(lambda: C.from_dict(yaml.safe_load(text), sets, check_env=False))
    assert (cfg is None) == (same is None)
    if cfg is not None:
        assert repr(cfg) == repr(same)
        assert_reloads(cfg)


@SETTINGS
@given(sets=overrides)
@example(sets=["model.lr=0b_"])
@example(sets=["env.id=0000-01-01"])
@example(sets=["train.seed=" + "1" * 4400])
def test_overrides_on_an_empty_config(sets):
    cfg = outcome(lambda: C.from_dict({}, sets, check_env=False))
    if cfg is not None:
        assert_reloads(cfg)


@SETTINGS
@given(doc=documents(), env_id=st.sampled_from(ENV_IDS), via_override=st.booleans())
def test_env_ids_are_checked(doc, env_id, via_override):
    if via_override:
        sets = [f"env.id={env_id}"]
    else:
        env = doc.get("env") if isinstance(doc.get("env"), dict) else {}
        doc = {**doc, "env": {**env, "id": env_id}}
        sets = []
    cfg = outcome(lambda: C.load(config_file(yaml.safe_dump(doc, sort_keys=False)), sets, check_env=True))
    if cfg is not None:
        import gymnasium as gym

        assert cfg.env.id in gym.registry


@st.composite
def yaml_texts(draw):
    """Raw YAML text: random text, or a real section/key with a raw (unquoted) value."""
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(st.text(max_size=60))
    value = draw(st.one_of(st.sampled_from(TRICKY_TEXT), st.text(max_size=20)))
    if kind == 1:
        key = draw(st.sampled_from(DOTTED))
        if "." not in key:
            return f"{key}: {value}\n"
        section, leaf = key.split(".")
        return f"{section}:\n  {leaf}: {value}\n"
    if kind == 2:
        return f"- {value}\n- {draw(st.text(max_size=10))}\n"
    return value


@SETTINGS
@given(text=yaml_texts())
@example(text="train:\n  seed: 0x_\n")
@example(text="model:\n  lr: 2020-13-45\n")
@example(text="env: " + "[" * 600)
def test_raw_yaml_text(text):
    outcome(lambda: C.load(config_file(text), check_env=False))


@SETTINGS
@given(data=st.binary(max_size=64))
@example(data=b"env:\n  id: Inverted\xe9Pendulum-v5\n")  # Latin-1, not UTF-8
def test_raw_bytes(data):
    outcome(lambda: C.load(config_file(data), check_env=False))


# -- documents that are not mappings: the exact messages -------------------------------------------------
@pytest.mark.parametrize("text, kind", [("- a\n- b\n", "list"), ("42\n", "int"), ("just words\n", "str"),
                                        ("3.5\n", "float"), ("true\n", "bool")])
def test_non_mapping_document(tmp_path, text, kind):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(f"the config file must be a mapping of keys to values, got {kind}")):
        C.load(path, check_env=False)
    # Overrides do not turn a list into a config either.
    with pytest.raises(ConfigError, match="must be a mapping"):
        C.load(path, ["train.seed=1"], check_env=False)


def test_empty_document_is_the_default_config(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("# nothing but a comment\n")
    assert C.load(path) == Config()


def test_invalid_yaml_names_the_file(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("model:\n  lr: [1, 2\n")
    with pytest.raises(ConfigError, match=re.escape(f"config file '{path}' is not valid YAML")):
        C.load(path)


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(ConfigError, match=re.escape(f"config file '{tmp_path / 'nope.yaml'}' does not exist")):
        C.load(tmp_path / "nope.yaml")
