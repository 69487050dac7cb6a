"""The exported policy as an MLflow pyfunc model: a batch of observations in, deterministic actions out.

Logged with MLflow's loader-module workflow: the model holds a copy of `policy.pt` and names
this module, whose `_load_pyfunc` reads the file with `load_policy` (`torch.load(weights_only=True)`).
Nothing is pickled: loading the model imports this module from the installed package and reads
tensors, it never runs code or unpickles objects stored with the run.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.models import Model, ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.types import Schema, TensorSpec

from umpo_dist import __version__
from umpo_dist.envs.spec import EnvSpec, make_env
from umpo_dist.ops.artifacts import load_policy

MODEL_NAME = "policy"  # `runs:/<run id>/policy`
INPUT, OUTPUT = "observation", "action"  # the signature's tensor names


class PolicyModel:
    """What `mlflow.pyfunc.load_model(...)` wraps: `predict(obs)` with obs of shape (n, obs_dim), float32."""

    def __init__(self, path: str | Path):
        self.policy = load_policy(path)

    def predict(self, model_input, params=None) -> np.ndarray:
        if isinstance(model_input, dict):  # MLflow hands over the signature's named input as {name: array}
            model_input = model_input[INPUT]
        obs = np.asarray(model_input, dtype=np.float32)
        return self.policy.act(obs, deterministic=True).astype(np.float32, copy=False)


def _load_pyfunc(data_path: str) -> PolicyModel:
    """MLflow's entry point for a loader-module model: `data_path` is the model's copy of `policy.pt`."""
    return PolicyModel(data_path)


def policy_signature(obs_dim: int, action_dim: int) -> ModelSignature:
    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, obs_dim), INPUT)]),
                          outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, action_dim), OUTPUT)]))


def first_observation(env_id: str) -> np.ndarray:
    """The input example: the environment's first observation (seed 0), as a batch of one."""
    env = make_env(env_id)
    try:
        obs, _ = env.reset(seed=0)
    finally:
        env.close()
    return np.asarray(obs, np.float32)[None]


def requirements() -> list[str]:
    """Pinned from this process, so logging never infers them (MLflow would load the model in a subprocess)."""
    # A local version label (`+cpu`) names a wheel index, not a version a requirement can ask for.
    return [f"umpo-dist=={__version__}", f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}"]


@contextmanager
def _tracking_store(uri: str):
    """MLflow's fluent API (which model logging goes through) pointed at `uri` for a moment, then
    exactly as it was: `mlflow.set_tracking_uri` alone would stay set for the rest of the process
    (and in `MLFLOW_TRACKING_URI`), so a later run or client in the same process would use this store."""
    from mlflow.tracking._tracking_service import utils

    saved_uri, saved_env = utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        utils._tracking_uri = saved_uri
        if saved_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved_env


def log_policy_model(policy_file: str | Path, run_id: str, spec: EnvSpec, evaluation: tuple[int, float],
                     tracking_uri: str, registered_model_name: str | None = None) -> ModelInfo:
    """Log `policy_file` as the run's `policy` model (and register it if a name is given); returns MLflow's `ModelInfo`.

    `evaluation`: the (env step, return) the policy scored; the model is linked to the run's metrics
    at that step and carries both as tags.
    """
    with _tracking_store(tracking_uri):  # the run's store
        return _log(policy_file, run_id, spec, evaluation, tracking_uri, registered_model_name)


def _log(policy_file, run_id: str, spec: EnvSpec, evaluation: tuple[int, float], tracking_uri: str,
         registered_model_name: str | None) -> ModelInfo:
    step, ret = evaluation
    tags = {"env_id": spec.env_id, "eval_step": str(step), "eval_return": f"{ret:.1f}"}
    # Created here in the run's experiment, with the run's params (the config): left to itself, MLflow 3
    # puts a model logged without a fluent active run into the default experiment, where
    # `runs:/<run id>/policy` does not find it.
    run = mlflow.MlflowClient(tracking_uri).get_run(run_id)
    model = mlflow.initialize_logged_model(name=MODEL_NAME, source_run_id=run_id, tags=tags, params=run.data.params,
                                           experiment_id=run.info.experiment_id)
    # `Model.log` rather than `mlflow.pyfunc.log_model`: it takes the run id, so the model becomes an
    # output of the run without a fluent active run (the tracker drives runs through `MlflowClient`).
    # `artifact_path` is its deprecated spelling of `name`, still a required argument.
    return Model.log(
        artifact_path=None, flavor=mlflow.pyfunc, run_id=run_id, model_id=model.model_id, step=step,
        loader_module=__name__, data_path=str(policy_file),
        signature=policy_signature(spec.obs_dim, spec.action_dim), input_example=first_observation(spec.env_id),
        pip_requirements=requirements(),
        registered_model_name=registered_model_name, tags=tags,
    )
