"""What a run leaves for its user: the exported policy, its README, the learning-curve plot."""

from __future__ import annotations

from pathlib import Path

import torch

from umpo_dist.config import PolicyConfig
from umpo_dist.envs.spec import EnvSpec, env_spec
from umpo_dist.models.policy import TanhGaussianPolicy, build_policy
from umpo_dist.ops.checkpoint import CheckpointError, first_line, load_checkpoint, resolve_checkpoint, torch_save


def export_policy(path: str | Path, policy_weights: dict, spec: EnvSpec, cfg: PolicyConfig,
                  evaluation: tuple[int, float] | None = None) -> Path:
    """A self-describing policy file: `load_policy(path).act(obs)` gives actions.

    `evaluation`: the (env step, return) the run's evaluation gave these weights, kept in the file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "env_id": spec.env_id,
        "obs_dim": spec.obs_dim,
        "action_low": [float(x) for x in spec.action_low],
        "action_high": [float(x) for x in spec.action_high],
        "hidden_layers": cfg.hidden_layers,
        "hidden_size": cfg.hidden_size,
        "state_dict": policy_weights,
    }
    if evaluation is not None:
        payload["eval_step"], payload["eval_return"] = int(evaluation[0]), float(evaluation[1])
    return torch_save(payload, path)


def load_policy(path: str | Path) -> TanhGaussianPolicy:
    """A policy on the CPU, from an exported `policy.pt`, a checkpoint or a run directory; `.env_id` names its env."""
    path = Path(path)
    if path.is_dir():
        ckpt = load_checkpoint(resolve_checkpoint(path))
        meta = ckpt["manifest"]["meta"]
        layers, size = meta["policy_hidden"]
        spec = env_spec(meta["env_id"])
        policy = build_policy(spec, PolicyConfig(hidden_layers=layers, hidden_size=size))
        policy.load_state_dict(ckpt["policy"]["policy"])
        policy.env_id = spec.env_id
        return policy.eval()
    if not path.is_file():
        raise CheckpointError(f"no policy file, checkpoint or run directory at '{path}'")
    try:
        payload = torch.load(path, weights_only=True, map_location="cpu")
        spec = EnvSpec(payload["env_id"], payload["obs_dim"], tuple(payload["action_low"]), tuple(payload["action_high"]))
        policy = build_policy(spec, PolicyConfig(hidden_layers=payload["hidden_layers"], hidden_size=payload["hidden_size"]))
        policy.load_state_dict(payload["state_dict"])
    except Exception as exc:
        raise CheckpointError(f"policy file '{path}' could not be read: {first_line(exc)}") from None
    policy.env_id = payload["env_id"]
    return policy.eval()


def exported_evaluation(path: str | Path) -> tuple[int, float] | tuple[None, None]:
    """The (env step, return) of the evaluation an exported policy scored; (None, None) if it holds none."""
    payload = torch.load(Path(path), weights_only=True, map_location="cpu")
    return payload.get("eval_step"), payload.get("eval_return")


def learning_curve_png(path: Path, evaluations, episodes, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    if episodes:
        xs, ys = zip(*episodes)
        ax.plot(xs, ys, ".", alpha=0.3, markersize=3, label="training episodes")
    if evaluations:
        xs, ys = zip(*evaluations)
        ax.plot(xs, ys, "o-", label="evaluation (mean action)")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


POLICY_README = """# The trained policy

`policy.pt` holds the weights of the policy that scored the run's best evaluation
({eval_return:.1f} at env step {eval_step}) and the sizes it was built with
(environment `{env_id}`); the checkpoint holds the policy as it was when the run ended.
The same file is the run's MLflow model `policy`: a pyfunc model whose signature takes a
float32 batch of observations `(n, obs_dim)` and returns the deterministic (mean) actions
`(n, action_dim)`, float32, within the action bounds. Both ways need `umpo-dist` installed.

As an MLflow model (with `MLFLOW_TRACKING_URI` pointing at this run's tracking server):

```python
import gymnasium as gym
import mlflow
import numpy as np

model = mlflow.pyfunc.load_model("runs:/{run_id}/policy")
env = gym.make("{env_id}")
obs, _ = env.reset(seed=0)
action = model.predict(np.asarray(obs, np.float32)[None])[0]
```

With the file alone:

```python
import gymnasium as gym
from umpo_dist import load_policy

policy = load_policy("policy.pt")
env = gym.make("{env_id}")
obs, _ = env.reset(seed=0)
action = policy.act(obs[None], deterministic=True)[0]
```

or run evaluation episodes from the command line:
`umpo evaluate path/to/policy.pt --episodes 10` (a checkpoint directory works too).
Either way the file is read with `torch.load(weights_only=True)`: loading it runs no code
stored with the run.
"""
