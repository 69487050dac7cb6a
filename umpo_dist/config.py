"""Typed run configuration: nested dataclasses loaded from YAML, validated on load.

Every field carries its meaning in a comment; `configs/*.yaml` hold per-task
overrides, and `--set section.key=value` overrides single fields on the command
line. Any unknown key, wrong type, out-of-range value or unknown environment id is
a `ConfigError` that names it, raised before anything starts.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration problem, with a message that names the offending key."""


def ranged(default: Any, low: float, high: float = math.inf, open_low: bool = False) -> Any:
    """A field whose value must lie in [low, high] — (low, high] with `open_low` — checked on load."""
    return field(default=default, metadata={"range": (low, high, not open_low)})


def choice(default: str, *options: str) -> Any:
    """A field that takes one of a few words, checked on load."""
    return field(default=default, metadata={"choices": options})

@dataclass
class EnvConfig:
    id: str = "InvertedPendulum-v5"  # Gymnasium environment id
    max_episode_steps: int = ranged(1000, 1)  # episode step limit (truncation)
    eval_episodes: int = ranged(5, 1)  # evaluation episodes per evaluation round


@dataclass
class ReplayConfig:
    capacity: int = ranged(1_000_000, 1)  # ring buffer size: the window is the `capacity` newest items
    sampling: str = choice("linear", "linear", "uniform")  # "linear" (newer weighted up, rank-proportional) or "uniform"
    # Group commit of the replay's log (Ray runtime): fsync at most this often (and at each checkpoint); a
    # whole-node crash may lose the chunks acknowledged in this window, a killed process nothing. 0: every chunk.
    sync_every_ms: float = ranged(50.0, 0)


@dataclass
class ModelConfig:
    ensemble_size: int = ranged(7, 1)  # E, number of bootstrap members
    hidden_layers: int = ranged(4, 1)  # hidden layers per member
    hidden_size: int = ranged(200, 1)  # units per hidden layer
    elites: int = ranged(5, 1)  # members with the best held-out loss, tracked and reported
    lr: float = ranged(1e-3, 0, 1, open_low=True)  # Adam learning rate
    weight_decay: float = ranged(1e-5, 0, 1)  # L2 penalty on the weights
    layer_norm: bool = False  # layers after the first see layer-normalised inputs (soft ε: 1, 0.1, …; no weights)
    # dropout of hidden units in the training loss only: hidden layer k of L at dropout·(L−k)/(L+1) (DHMBPO: 0.01)
    dropout: float = ranged(0.0, 0, 1)
    batch_size: int = ranged(256, 1)  # samples per member per update
    holdout_fraction: float = ranged(0.1, 0, 0.5)  # share of transitions kept out of training for validation
    holdout_capacity: int = ranged(5000, 1)  # newest held-out transitions kept for validation
    validate_every: int = ranged(250, 1)  # model updates between held-out evaluations
    grad_clip: float | None = ranged(None, 0, open_low=True)  # global gradient-norm clip of a model update (null: none)
    rollout_members: str = choice("all", "all", "elites")  # members that imagine: "all", or "elites" (the best held-out ones)
    # where imagined rollouts end: "learned" (the model's termination head), "known" (the task's own rule,
    # umpo_dist/envs/termination.py: Hopper, Walker2d, Ant, InvertedPendulum; a hard 0/1 mask, as MBPO and
    # DHMBPO do) or "known_soft" (the same rule, continuing with probability σ(margin to its limits))
    termination: str = choice("learned", "learned", "known", "known_soft")
    # the input/target statistics the model normalises with: "running" (a merge of every training batch,
    # which under linear sampling counts old data most) or "replay" (recomputed, unweighted, over the replay's
    # whole window before each round of model updates, as the compact reference does)
    normalizer: str = choice("running", "running", "replay")
    # a member's aleatoric variance: "heteroscedastic" (predicted per input by the head) or "homoscedastic" (one
    # learned log-variance per member and target dim, as DHMBPO's models; inside the same soft bounds)
    noise: str = choice("heteroscedastic", "heteroscedastic", "homoscedastic")


@dataclass
class PolicyConfig:
    objective: str = "mean_variance"  # how the policy learns from the model: a name in umpo_dist.objectives, or module:name
    hidden_layers: int = ranged(2, 1)  # hidden layers of actor and value networks
    hidden_size: int = ranged(128, 1)  # units per hidden layer
    horizon: int = ranged(5, 1, 100)  # H, imagined steps per rollout
    gamma: float = ranged(0.99, 0, 1)  # discount
    lambda_return: float = ranged(0.95, 0, 1)  # λ of the value targets' λ-returns
    start_states: int = ranged(128, 1)  # start states per policy update
    actor_lr: float = ranged(3e-4, 0, 1, open_low=True)
    value_lr: float = ranged(3e-4, 0, 1, open_low=True)
    alpha_lr: float = ranged(3e-4, 0, 1)
    init_temperature: float = ranged(1.0, 0, open_low=True)  # initial entropy temperature α (auto-tuned)
    target_entropy_scale: float = ranged(1.0, -math.inf)  # target entropy = −scale · action_dim
    target_tau: float = ranged(0.01, 0, 1, open_low=True)  # Polyak rate of the slow value target
    grad_clip: float = ranged(10.0, 0, open_low=True)  # global gradient-norm clip
    state_clip_sigmas: float = ranged(5.0, 0, open_low=True)  # imagined states kept within this many σ of the data
    # the box imagined states are clamped to: "mean" (mean ± state_clip_sigmas·σ) or "range" (from the smallest
    # value seen − state_clip_sigmas·σ to the largest + state_clip_sigmas·σ, as the compact reference does)
    state_clip: str = choice("mean", "mean", "range")
    normalize_obs: bool = False  # policy and value see observations normalised with the model's input statistics
    init_std: float | None = ranged(None, 0.007, 7.3)  # the policy's initial action std before tanh (null: whatever the init gives, ≈ 0.22)
    entropy_in_return: bool = False  # −α·log π inside each particle's return and the value targets (a soft value)
    mean_rewards: bool = False  # imagined rewards are the members' predicted means, not samples
    # Double horizon (design §1.4): a share of each update's start states drawn from model states that
    # no-gradient rollouts of the current policy reached (0: replay states only, plain UMPO).
    model_start_share: float = ranged(0.0, 0, 1)
    model_start_horizon: int = ranged(20, 1, 1000)  # steps of those distribution rollouts
    model_start_refresh: int = ranged(10, 1)  # policy updates between distribution rollouts (one per update's starts)
    model_start_buffer: int = ranged(20000, 1)  # model states kept (oldest dropped first)
    # An ensemble of value functions (REDQ, DHMBPO's critics): every member regresses on the same λ-returns,
    # whose bootstrap values are the smallest of `value_target_min` target members drawn at random per update;
    # the particle returns' tail is the members' mean. 1: one value function.
    value_members: int = ranged(1, 1)
    value_target_min: int = ranged(2, 1)  # target members the bootstrap takes the minimum of (capped at value_members)
    # Scaled, bounded value (DHMBPO's critic): the value network's output spans [low, high], 1/(1 − γ) times the
    # 1% and 99% quantiles of the imagined rewards (entropy bonus included where it is in the return) widened to
    # include 0, tracked at the rate `value_lr` per update; bootstrap values are clamped to it. false: the raw output.
    value_bounds: bool = False
    # What carries the tail beyond H: "value", V(s_H); "q", Q(s_H, a_H) with a_H the policy's reparameterised
    # action, so the tail's gradient reaches the policy through that action too (DHMBPO's critic), trained on
    # the imagined (s_t, a_t) with the same λ-returns (soft values: the entropy bonus of a_t is not in Q's target).
    critic: str = choice("value", "value", "q")
    # The critic's linear layers after the first see their inputs layer-normalised (ε 1e-5, no learned scale
    # or shift; DHMBPO's and DroQ's critics): a regulariser of value functions trained on moving targets.
    value_layer_norm: bool = False
    # The critic's hidden units dropped at this rate, before the activation, in its regression losses only
    # (imagined and real targets); the actor's tail and the bootstrap targets see the whole network. DroQ's
    # regulariser of an ensemble critic on moving targets; DHMBPO's critic: 0.001. 0: none.
    value_dropout: float = ranged(0.0, 0, 1)
    # Where the critic learns: "lambda", at every imagined state on its λ-return; "start", at the start states
    # only, on each particle's H-step (soft) return with the target critic's tail (DHMBPO's model-based value
    # expansion: the critic is fitted to what the actor's objective itself sees from the states it starts at).
    value_targets: str = choice("lambda", "lambda", "start")
    # Replay transitions per update on which the Q critic also regresses, on the one-step soft target
    # r + γ(1 − terminated)(Q_target(s′, a′) − α·log π(a′|s′)), a′ from the policy (SAC's critic step; the
    # pessimistic target members and the value bounds as for the imagined targets): the critic learns where the
    # real policy goes as well as where the model takes it. 0: imagined targets only. Needs `critic: q`.
    real_critic_batch: int = ranged(0, 0)
    # Which member steps each imagined particle: "member", particle e is member e's throughout (the particle
    # returns' spread is the members' disagreement over whole rollouts); "shuffled", the E particles of each
    # start state are dealt to the members in a new random order at every step (MBPO's and DHMBPO's random
    # member per step; the spread mixes the members' disagreement at every step).
    propagation: str = choice("member", "member", "shuffled")
    # DHMBPO's restart after each model fit: once the model the learner is handed has taken `restart_every`
    # updates since the last restart, the policy learner's Adam moments (actor, critic, temperature) start
    # afresh, its buffer of model start states is emptied (the older model's states), and its next
    # `critic_warmup` updates train the critic alone on the new model's rollouts, the actor and α held. The
    # trigger is the model's update count, so both runtimes restart alike (with `train.train_every` rounds,
    # once per round whose model updates reach `restart_every`). 0: never. Not for `dyna`.
    restart_every: int = ranged(0, 0)
    critic_warmup: int = ranged(0, 0)  # critic-only updates after each restart (needs `restart_every`)


@dataclass
class MeanVarianceConfig:
    """The `mean_variance` objective: J = mean_e R_e − λ·std_e R_e over the members' particle returns."""

    risk_lambda: float = ranged(0.5, 0)  # λ (0 = risk-neutral; > 0 avoids states where the members disagree)


@dataclass
class MnmConfig:
    """The `mnm` objective (Mismatched No More): mean_variance on rewards r + w·log(C/(1−C)), where the
    classifier C(s, a, s′) tells replay transitions (real) from the model's (fake)."""

    classifier_weight: float = ranged(0.1, 0)  # w: weight of the classifier's log-ratio in the imagined rewards
    log_ratio_clip: float = ranged(10.0, 0, open_low=True)  # the log-ratio is clipped to ± this (a saturated classifier)
    batch_size: int = ranged(128, 1)  # real transitions per classifier step, and as many model transitions
    hidden_layers: int = ranged(2, 1)  # hidden layers of the classifier
    hidden_size: int = ranged(128, 1)  # units per hidden layer of the classifier
    lr: float = ranged(3e-4, 0, 1, open_low=True)  # Adam learning rate of the classifier (one step per policy update)
    # weight of −log C(s, a, ŝ′) in the model's loss, ŝ′ the model's own sampled next state: the model is also
    # trained to make its transitions look real to the classifier (0: off, the model fits the data only)
    model_realism: float = ranged(0.0, 0)


@dataclass
class DynaConfig:
    """The `dyna` objective (MBPO): SAC on real and model transitions; the model only simulates.
    Networks, learning rates (critics: `policy.value_lr`), γ, τ and the temperature come from `policy`."""

    real_ratio: float = ranged(0.05, 0, 1)  # share of each SAC batch from the replay; the rest from the model buffer
    batch_size: int = ranged(256, 1)  # transitions per SAC update, real and model together
    rollout_length: int = ranged(1, 1, 100)  # model steps of each branched rollout
    rollouts_per_update: int = ranged(64, 1)  # branched rollouts started from replay states at every update
    model_buffer_size: int = ranged(100_000, 1)  # model transitions kept, oldest dropped first (rebuilt after a resume)


@dataclass
class DiagnosticsConfig:
    """Model diagnostics at every evaluation (`umpo_dist.diagnostics`): one-step calibration on the
    evaluation episodes' transitions, and the return the model imagines against the real one."""

    enabled: bool = True  # compute them (in the evaluation, off the learners' path)
    horizon: int | None = ranged(None, 1, 1000)  # imagined steps compared with the real ones (null: policy.horizon)
    start_every: int = ranged(10, 1)  # evaluation-episode steps between the comparison's start states
    max_starts: int = ranged(200, 1)  # start states per evaluation, at most
    max_transitions: int = ranged(2000, 1)  # evaluation transitions the calibration uses, at most (evenly spread)
    calibration_bins: int = ranged(10, 2)  # equal-count bins of predicted variance
    warn_margin: float = ranged(0.5, 0, open_low=True)  # warn when the imagined return exceeds the real by this share
    warn_after: int = ranged(3, 1)  # ... at this many evaluations in a row


@dataclass
class TrainConfig:
    total_env_steps: int = ranged(20_000, 1)  # environment-step budget of the run
    random_steps: int = ranged(500, 0)  # initial steps with uniformly random actions
    model_warmup_updates: int = ranged(300, 0)  # model updates before the first policy update
    model_updates_per_step: float = ranged(0.5, 0, open_low=True)  # target model updates per env step
    policy_updates_per_step: float = ranged(1.0, 0, open_low=True)  # target policy updates per env step
    # env steps per round: collect them, then take all the updates they allow (model first, then policy), then
    # the next round. The inline runner always works in rounds; the Ray runtime does when this is longer than
    # `resources.ratio_tolerance` and than the default (the env workers wait for the learners at each round's
    # end), and otherwise runs its learners continuously under the rate limiter (other values are refused)
    train_every: int = ranged(10, 1)
    updates_per_call: int = ranged(50, 1)  # learner updates per actor call (Ray runtime)
    # learner updates between publications of a learner's weights (and at each call's end), and between the
    # policy learner's looks for a newer model (Ray runtime)
    publish_every: int = ranged(10, 1)
    eval_every: int = ranged(1000, 1)  # env steps between evaluations
    checkpoint_every: int = ranged(5000, 0)  # env steps between checkpoints (0: only at the end)
    stop_at_return: float | None = None  # stop once an evaluation reaches this return
    seed: int = ranged(0, 0, 2**31 - 1)  # seeds envs, replay draws and network initialisation

    def round_steps(self, tolerance: int) -> int:
        """The rounds' length, or 0 for continuous learners: rounds need a `train_every` longer than the
        env steps the workers may run ahead (`tolerance`) and than its default."""
        return self.train_every if self.train_every > max(tolerance, TrainConfig.train_every) else 0


@dataclass
class ResourcesConfig:
    num_env_workers: int = ranged(2, 1)  # Ray env-worker actors
    envs_per_worker: int = ranged(1, 1)  # environments stepped inside each worker
    worker_cpus: float = ranged(1.0, 0, open_low=True)  # CPUs each env worker requests
    learner_cpus: float = ranged(1.0, 0, open_low=True)  # CPUs each learner requests (also its torch threads)
    learner_gpus: str = "auto"  # "auto" (1 each if the cluster has GPUs), or a number per learner
    chunk_size: int = ranged(100, 1)  # transitions an env worker pushes per message
    ratio_tolerance: int = ranged(100, 1)  # env steps the workers may run ahead of the learners (about one chunk)
    # Replay batches a learner fetches per call: one round trip for several (raise it for GPU learners, whose
    # call rate the replay feels; on a CPU the prefetched call is never waited for, and batches drawn ahead are older).
    batches_per_call: int = ranged(1, 1)
    # On a local run on a machine with 2 to 4 usable cores (Linux): the policy learner, every run's critical path,
    # gets a core of its own (CPU affinity), and Ray's daemons, the driver and the other actors share the rest.
    pin_policy_core: bool = True


@dataclass
class TrackingConfig:
    experiment: str = "umpo-dist"  # MLflow experiment name
    run_name: str | None = None  # MLflow run name (default: env id and seed)
    log_every_s: float = ranged(5.0, 0)  # seconds between metric flushes
    runs_dir: str = "runs"  # local directory for run data and checkpoints
    register_model: str | None = None  # also register the run's policy model under this name (MLflow registry)


@dataclass
class Config:
    runtime: str = choice("ray", "ray", "inline")  # "ray" (distributed actors) or "inline" (one process, no Ray)
    env: EnvConfig = field(default_factory=EnvConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    mean_variance: MeanVarianceConfig = field(default_factory=MeanVarianceConfig)
    mnm: MnmConfig = field(default_factory=MnmConfig)
    dyna: DynaConfig = field(default_factory=DynaConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


# Keys that were renamed: an old config gets the new name in its error.
_MOVED = {"policy.risk_lambda": "mean_variance.risk_lambda"}

# String fields that also take a number (`learner_gpus: auto` or `learner_gpus: 1`).
_NUMBER_OR_WORD = {"resources.learner_gpus"}


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check `value` against the field's type; ints are accepted where floats are."""
    args = typing.get_args(hint)
    if type(None) in args:  # Optional[X]
        if value is None:
            return None
        (hint,) = [a for a in args if a is not type(None)]
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads `3e-4` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
        if key in _NUMBER_OR_WORD and isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    name = getattr(hint, "__name__", str(hint))
    raise ConfigError(f"config key '{key}' must be of type {name}, got {type(value).__name__} {value!r}")


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        where = f"section '{prefix}'" if prefix else "the config file"
        raise ConfigError(f"{where} must be a mapping of keys to values, got {type(data).__name__}")
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if dotted in _MOVED:
            raise ConfigError(f"config key '{dotted}' is now '{_MOVED[dotted]}'")
        if not isinstance(key, str) or key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown config key '{dotted}'{hint}; valid keys here: {', '.join(names)}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, f"{dotted}.")
        else:
            kwargs[key] = _coerce(value, hint, dotted)
    return cls(**kwargs)


def _walk(obj: Any, prefix: str = ""):
    """`(dotted key, value, field)` of every leaf setting."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _walk(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", value, f


def validate(cfg: Config, check_env: bool = True) -> Config:
    """Range and choice checks, cross-field checks, the objective's name and the env id; returns `cfg`."""
    for key, value, f in _walk(cfg):
        if "range" in f.metadata and value is not None:
            low, high, inclusive = f.metadata["range"]
            ok = (value >= low if inclusive else value > low) and value <= high
            if not ok:
                bracket = "[" if inclusive else "("
                raise ConfigError(f"config key '{key}' = {value!r} is out of range {bracket}{low}, {high}]")
        if "choices" in f.metadata and value not in f.metadata["choices"]:
            raise ConfigError(f"config key '{key}' = {value!r} must be one of {', '.join(f.metadata['choices'])}")
    _check_objective(cfg.policy.objective)
    if cfg.model.elites > cfg.model.ensemble_size:
        raise ConfigError(
            f"config key 'model.elites' = {cfg.model.elites} exceeds 'model.ensemble_size' = {cfg.model.ensemble_size}"
        )
    if cfg.policy.propagation == "shuffled" and cfg.model.rollout_members == "elites":
        raise ConfigError("config key 'policy.propagation' = 'shuffled' mixes every member into every particle: "
                          "it cannot be combined with 'model.rollout_members' = 'elites'")
    if cfg.policy.critic_warmup and not cfg.policy.restart_every:
        raise ConfigError(f"config key 'policy.critic_warmup' = {cfg.policy.critic_warmup} counts updates after "
                          f"a restart, but 'policy.restart_every' = 0 never restarts")
    if cfg.policy.restart_every and cfg.policy.objective == "dyna":  # dyna's SAC learner has no restart
        raise ConfigError(f"config key 'policy.restart_every' = {cfg.policy.restart_every} restarts the "
                          f"mean_variance policy learner (and mnm's); 'policy.objective' = 'dyna' does not restart")
    if cfg.policy.value_dropout and cfg.policy.objective == "dyna":  # dyna's SAC critics are its own
        raise ConfigError(f"config key 'policy.value_dropout' = {cfg.policy.value_dropout} regularises the "
                          f"mean_variance critic (and mnm's); 'policy.objective' = 'dyna' has no dropout")
    if cfg.policy.real_critic_batch and cfg.policy.critic != "q":
        raise ConfigError(f"config key 'policy.real_critic_batch' = {cfg.policy.real_critic_batch} needs "
                          f"'policy.critic' = 'q' (a real transition's action is not the policy's), got "
                          f"{cfg.policy.critic!r}")
    every, default, tolerance = cfg.train.train_every, TrainConfig.train_every, cfg.resources.ratio_tolerance
    if cfg.runtime == "ray" and every != default and not cfg.train.round_steps(tolerance):
        raise ConfigError(f"config key 'train.train_every' = {every} asks for rounds of collection and updates; with "
                          f"'runtime' = 'ray' a round must be longer than 'resources.ratio_tolerance' = {tolerance} "
                          f"and than {default} (shorter ones are what the continuous rate limiter already does, and "
                          f"would be ignored): use more than {max(tolerance, default)}, or leave it at {default}")
    gpus = cfg.resources.learner_gpus
    if gpus != "auto":
        try:
            ok = float(gpus) >= 0
        except ValueError:
            ok = False
        if not ok:
            raise ConfigError(f"config key 'resources.learner_gpus' = {gpus!r} must be 'auto' or a number >= 0")
    if check_env:
        _check_env_id(cfg.env.id)
        _check_termination(cfg)
    return cfg


def _check_termination(cfg: Config) -> None:
    from umpo_dist.envs.termination import known_termination, tasks_with_known_termination

    if cfg.model.termination != "learned" and known_termination(cfg.env.id) is None:
        raise ConfigError(f"config key 'model.termination' = {cfg.model.termination!r}: no known termination rule for "
                          f"'env.id' = {cfg.env.id!r}; rules exist for {', '.join(tasks_with_known_termination())} "
                          f"(use 'learned' elsewhere)")


def _check_objective(name: str) -> None:
    from umpo_dist.objectives import registered_objectives, resolve_objective

    if ":" in name:  # `module:name`: an objective registered by importing `module`
        try:
            resolve_objective(name)
        except ValueError as exc:
            raise ConfigError(f"config key 'policy.objective' = {name!r}: {exc}") from None
        return
    names = registered_objectives()
    if name not in names:
        raise ConfigError(f"config key 'policy.objective' = {name!r} must be one of {', '.join(names)}")


def _check_env_id(env_id: str) -> None:
    import gymnasium as gym

    if env_id not in gym.registry:
        close = difflib.get_close_matches(env_id, list(gym.registry), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"config key 'env.id' = {env_id!r} is not a registered Gymnasium environment{hint}")


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b=value` with the value parsed as YAML (so 5 is an int and 'null' is None)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except (yaml.YAMLError, ValueError, RecursionError):
        # PyYAML raises plain ValueError for scalars it recognises but cannot build ('0x_', '2020-13-45').
        value = raw
    return key, value


def _apply_override(data: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{key}': '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def from_dict(data: dict, overrides: list[str] | tuple[str, ...] = (), check_env: bool = True) -> Config:
    data = copy.deepcopy(data) if data is not None else {}
    for text in overrides:
        if not isinstance(data, dict):
            break
        key, value = parse_override(text)
        _apply_override(data, key, value)
    return validate(_build(Config, data if data is not None else {}, ""), check_env=check_env)


def load(path: str | Path, overrides: list[str] | tuple[str, ...] = (), check_env: bool = True) -> Config:
    """Load a YAML config file, apply `--set` overrides and validate."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file '{path}' cannot be read as UTF-8 text: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError, RecursionError) as exc:
        raise ConfigError(f"config file '{path}' is not valid YAML: {exc}") from None
    return from_dict(data if data is not None else {}, overrides, check_env=check_env)


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def flatten(cfg: Config) -> dict[str, Any]:
    """Dotted key → value, for MLflow params."""
    return {key: value for key, value, _ in _walk(cfg)}


def dump(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
