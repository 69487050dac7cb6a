"""The Ray runtime learns what the inline runner learns: with rounds and one env worker, a whole run
through real actors (env worker, replay, both learners, weight store, evaluator) ends with the inline
runner's replay, model and policy, bit for bit.

The inline runner collects as env worker 0 (its seeds, a `NumpyPolicy` of the newest policy) and gives
each learner a torch stream of its own, as its actor process has; with one worker sending each round
as one chunk, the replay's draws come in the same order in both runtimes. So any difference in what
the runtimes do with the data (which policy acts, which model the policy learns on, when a restart
falls, what a batch is drawn from) shows up here as different weights. Both files that ship this layout
run, at small sizes: Hopper's features (restart with critic-only updates, model start states, a Q critic
learning from real transitions, homoscedastic model noise) and Walker2d's model regularisers (layer norm,
dropout, which draws from the model learner's stream, per-input noise).
"""

from pathlib import Path

import numpy as np
import pytest

from test_learner_parity import SMALL, assert_same
from umpo_dist.config import load
from umpo_dist.ops.checkpoint import load_checkpoint
from umpo_dist.ops.train import train

pytestmark = pytest.mark.e2e

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

EVERY, TOTAL = 200, 800
# One torch thread per learner, on the CPU (inline computes there), as bit-identical sums need.
RUN = [*SMALL, "resources.num_env_workers=1", f"resources.chunk_size={EVERY}", "resources.learner_cpus=1",
       "resources.learner_gpus=0", f"train.train_every={EVERY}", f"train.total_env_steps={TOTAL}", "train.checkpoint_every=0",
       "train.eval_every=400", "env.eval_episodes=1"]


def run(path: Path, runtime: str) -> tuple[dict, dict]:
    summary = train(load(path, [*RUN, f"runtime={runtime}"]), progress=False)
    return summary, load_checkpoint(summary["run_dir"])


@pytest.mark.parametrize("config", ["hopper.yaml", "walker2d.yaml"])
def test_one_env_worker_with_rounds_learns_exactly_what_the_inline_runner_learns(local_ray, workdir, config):
    path = CONFIGS / config
    ray_summary, ray_end = run(path, "ray")
    inline_summary, inline_end = run(path, "inline")

    assert ray_summary["env_steps"] == inline_summary["env_steps"] == TOTAL
    for name in ("obs", "action", "reward", "next_obs", "terminated", "bootstrap", "holdout"):
        np.testing.assert_array_equal(ray_end["replay"][name], inline_end["replay"][name], err_msg=name)
    assert ray_end["replay"]["rng_state"] == inline_end["replay"]["rng_state"]  # the same draws, in the same order
    assert_same(ray_end["model"], inline_end["model"], "model")
    assert_same(ray_end["policy"], inline_end["policy"], "policy")
    assert ray_summary["evaluations"] == inline_summary["evaluations"]
    t = load(path, RUN).train
    assert ray_end["policy"]["updates"] == round(t.policy_updates_per_step * (TOTAL - t.random_steps))
