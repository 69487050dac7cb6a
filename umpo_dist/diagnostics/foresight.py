"""Does the model see the episode's end coming? Its termination probability where the real episodes ended.

A policy optimised through the model fears a fall only as much as the model predicts one. On
every transition of the evaluation episodes, the model gives the probability that the episode
ends there (1 − the continuation probability its rollouts use: the termination head's, or the
task's rule on each member's predicted next state with `model.termination: known | known_soft`),
averaged over the members. The figures are its mean on the transitions where the real episode terminated, and
on all the others. A model whose head has seen few terminations (a policy that seldom falls
gives it few) can put ≈ 0 on the very steps where the policy falls: its rollouts then promise
the policy a future the real environment does not give it.
"""

from __future__ import annotations

import numpy as np
import torch

from umpo_dist.models.ensemble import EnsembleDynamics


@torch.no_grad()
def termination_foresight(model: EnsembleDynamics, episodes: list[dict]) -> dict:
    """`termination_at_ends` (None when no episode terminated), `termination_elsewhere` and `ends` (a count).

    `episodes`: per episode `obs` and `action` arrays and `terminated` (whether its last transition
    ended it by termination rather than by the time limit)."""
    at_end, elsewhere = [], []
    for ep in episodes:
        obs, action = (torch.as_tensor(np.asarray(ep[k], np.float32)) for k in ("obs", "action"))
        if not len(obs):
            continue
        _, _, cont, _ = model.step(obs, action, sample=False)
        p_end = (1.0 - cont).mean(0).double().numpy()  # members' mean, per transition
        if ep["terminated"]:
            at_end.append(p_end[-1])
            p_end = p_end[:-1]
        elsewhere.append(p_end)
    rest = np.concatenate(elsewhere) if elsewhere else np.zeros(0)
    return {
        "termination_at_ends": float(np.mean(at_end)) if at_end else None,
        "termination_elsewhere": float(rest.mean()) if len(rest) else None,
        "ends": len(at_end),
    }
