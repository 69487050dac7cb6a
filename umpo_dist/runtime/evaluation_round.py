"""An evaluation round, the same in both runtimes: episodes, model diagnostics, bookkeeping.

`evaluation_round` runs where the evaluation runs (in the inline process, or in a Ray
task off the learners' path); `record_round` runs in the runner and tells the
schedule, the exporter (`on_best`), the metrics log and the user (`on_warning`).
"""

from __future__ import annotations

import logging
from typing import Callable

from umpo_dist.config import Config
from umpo_dist.diagnostics.check import check_model
from umpo_dist.envs.evaluation import evaluate_policy
from umpo_dist.models.ensemble import EnsembleDynamics
from umpo_dist.models.policy import TanhGaussianPolicy

log = logging.getLogger(__name__)


def evaluation_round(policy: TanhGaussianPolicy, model: EnsembleDynamics | None, cfg: Config, seed: int) -> dict:
    """The policy's evaluation return; with a (trained) `model` and diagnostics on, also `"diagnostics"`."""
    diagnose = model is not None and cfg.diagnostics.enabled
    result = evaluate_policy(policy, cfg.env.id, cfg.env.eval_episodes, seed, cfg.env.max_episode_steps, record=diagnose)
    if diagnose:
        result["diagnostics"] = check_model(model, policy, result.pop("episodes"), cfg)
    return result


def record_round(runner, step: int, result: dict, weights: Callable[[], dict], policy_updates: int) -> None:
    """Book an evaluation of the policy at env step `step`, after `policy_updates` updates, with the runner.

    `weights()` gives the evaluated policy's weights; it is called only if they score the run's best."""
    s, ret = runner.schedule, result["return_mean"]
    if s.record_evaluation(step, ret) and runner.on_best:
        runner.on_best(weights(), step, ret)
    metrics = {"eval/return": ret, "eval/return_std": result["return_std"], "eval/length": result["length_mean"],
               "eval/policy_updates": policy_updates}
    diag = result.get("diagnostics")
    if diag:
        metrics.update({f"diagnostics/{k}": float(v) for k, v in diag.items() if isinstance(v, (int, float))})
        warning = s.record_diagnostics(step, diag)
        if warning:
            log.warning("at env step %d: %s", step, warning)
            if runner.on_warning:
                runner.on_warning(step, warning)
    runner.log(metrics, step)
