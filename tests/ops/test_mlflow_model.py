"""The run's policy as an MLflow pyfunc model: it loads in a fresh process by `runs:/<run id>/policy`
(and by its registered name) and acts like the exported `policy.pt`, within the action bounds."""

import json
import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from umpo_dist import config

# A short inline run: tiny networks, a few hundred env steps (see tests/runtime/test_inline.py).
FAST = ["runtime=inline", "env.id=InvertedPendulum-v5", "env.eval_episodes=1",
        "model.ensemble_size=3", "model.elites=2", "model.hidden_size=32", "model.hidden_layers=2", "policy.hidden_size=32",
        "policy.start_states=32", "train.random_steps=200", "train.model_warmup_updates=20", "train.total_env_steps=400",
        "train.eval_every=200", "train.checkpoint_every=0", "tracking.log_every_s=0", "tracking.experiment=umpo-test-pyfunc"]

# Runs in a fresh interpreter: nothing of the training process (imports, torch state) helps it load.
PREDICT = """
import json, sys
import mlflow
import numpy as np

obs = np.load(sys.argv[1])
out = {}
for uri in sys.argv[2:]:
    model = mlflow.pyfunc.load_model(uri)
    actions = model.predict(obs)
    try:
        model.predict(obs.astype(np.float64))
        refused = None
    except mlflow.exceptions.MlflowException as exc:
        refused = str(exc)
    out[uri] = {"dtype": str(actions.dtype), "actions": actions.tolist(), "float64_refused": refused,
                "inputs": model.metadata.get_input_schema().to_dict(),
                "outputs": model.metadata.get_output_schema().to_dict()}
print(json.dumps(out))
"""


def observations(n: int = 64) -> np.ndarray:
    """Observations InvertedPendulum really produces: along random-action episodes, float32."""
    env = gym.make("InvertedPendulum-v5")
    obs, _ = env.reset(seed=3)
    rows = []
    rng = np.random.default_rng(3)
    while len(rows) < n:
        rows.append(obs)
        obs, _, terminated, truncated, _ = env.step(rng.uniform(-3, 3, size=1))
        if terminated or truncated:
            obs, _ = env.reset()
    env.close()
    return np.asarray(rows, np.float32)


def predict_in_fresh_process(uris: list[str], obs: np.ndarray, tmp_path) -> dict:
    obs_file = tmp_path / "obs.npy"
    np.save(obs_file, obs)
    out = subprocess.run([sys.executable, "-c", PREDICT, str(obs_file), *uris], capture_output=True, text=True,
                         timeout=180, env=os.environ | {"PYTHONWARNINGS": "ignore"})
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One short inline run, its policy registered under a name. The module's tests work in its
    directory, against its MLflow store (a temporary SQLite file)."""
    from umpo_dist.ops.train import train

    import mlflow
    from mlflow.tracking._tracking_service import utils

    root = tmp_path_factory.mktemp("pyfunc")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        uri = f"sqlite:///{root}/mlflow.db"
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        torch.set_num_threads(1)
        before = utils._tracking_uri
        summary = train(config.from_dict({}, FAST + ["tracking.register_model=umpo-test-pendulum"]), progress=False)
        # Logging the model left MLflow's process-wide store as it was: a later run or client in this
        # process (another test, a notebook cell) still goes where MLFLOW_TRACKING_URI says.
        assert utils._tracking_uri == before and os.environ["MLFLOW_TRACKING_URI"] == uri
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/other.db")
        assert mlflow.get_tracking_uri() == f"sqlite:///{root}/other.db"
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        yield summary, root


@pytest.fixture(scope="module")
def loaded(finished_run):
    """The run's model loaded and asked in one fresh process, by its run URI and by its registered name."""
    summary, root = finished_run
    obs = observations()
    got = predict_in_fresh_process([f"runs:/{summary['run_id']}/policy", "models:/umpo-test-pendulum/1"], obs, root)
    return summary, obs, got


def test_the_runs_policy_model_acts_like_the_exported_file_in_a_fresh_process(loaded):
    from umpo_dist.ops.artifacts import load_policy

    summary, obs, got = loaded
    run_model = got[f"runs:/{summary['run_id']}/policy"]
    actions = np.asarray(run_model["actions"], np.float32)
    assert run_model["dtype"] == "float32"
    assert actions.shape == (len(obs), 1)
    env = gym.make("InvertedPendulum-v5")
    assert np.all(actions >= env.action_space.low) and np.all(actions <= env.action_space.high)
    assert np.ptp(actions) > 0  # the observations differ, so do the actions: not a constant
    expected = load_policy(summary["policy_file"]).act(obs, deterministic=True)
    np.testing.assert_array_equal(actions, expected)
    # The signature says observation -> action, float32, batched; a float64 batch is refused, not guessed at.
    assert run_model["inputs"] == [{"name": "observation", "type": "tensor",
                                    "tensor-spec": {"dtype": "float32", "shape": [-1, 4]}}]
    assert run_model["outputs"] == [{"name": "action", "type": "tensor",
                                     "tensor-spec": {"dtype": "float32", "shape": [-1, 1]}}]
    assert run_model["float64_refused"] and "float32" in run_model["float64_refused"]


def test_a_configured_name_registers_the_policy_and_the_version_loads(loaded):
    from mlflow.tracking import MlflowClient

    from umpo_dist.ops.artifacts import load_policy

    summary, obs, got = loaded
    versions = MlflowClient().search_model_versions("name = 'umpo-test-pendulum'")
    assert [str(v.version) for v in versions] == ["1"] and str(summary["policy_registered_version"]) == "1"
    assert versions[0].run_id == summary["run_id"]
    expected = load_policy(summary["policy_file"]).act(obs, deterministic=True)
    np.testing.assert_array_equal(np.asarray(got["models:/umpo-test-pendulum/1"]["actions"], np.float32), expected)


def test_the_runs_policy_path_holds_the_file_the_readme_and_the_model(finished_run):
    from mlflow.artifacts import download_artifacts

    summary, root = finished_run
    local = download_artifacts(f"runs:/{summary['run_id']}/policy", dst_path=str(root / "download"))
    names = set(os.listdir(local))
    assert {"policy.pt", "README.md", "MLmodel"} <= names, names
    readme = (Path(local) / "README.md").read_text()
    assert f'mlflow.pyfunc.load_model("runs:/{summary["run_id"]}/policy")' in readme
    assert 'load_policy("policy.pt")' in readme
