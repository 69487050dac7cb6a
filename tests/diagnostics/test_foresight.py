"""The model's termination probability where real episodes ended, against elsewhere."""

import numpy as np
import pytest
import torch

from umpo_dist import config
from umpo_dist.diagnostics.check import check_model
from umpo_dist.diagnostics.foresight import termination_foresight
from umpo_dist.envs.evaluation import evaluate_policy
from umpo_dist.envs.spec import env_spec
from umpo_dist.models.ensemble import build_ensemble
from umpo_dist.models.policy import build_policy


class EdgeModel:
    """Members that predict the next position x + a; member e ends an episode there with probability
    `p_edge[e]` past the edge x > 1 and `p_inside` before it."""

    def __init__(self, p_edge, p_inside):
        self.p_edge, self.p_inside = torch.as_tensor(p_edge, dtype=torch.float32), p_inside
        self.ensemble_size = len(p_edge)

    def step(self, s, a, sample=True):
        nxt = s + a
        past = (nxt[..., 0] > 1.0).float().expand(self.ensemble_size, -1)
        p_end = past * self.p_edge[:, None] + (1 - past) * self.p_inside
        return nxt.expand(self.ensemble_size, -1, -1), torch.zeros_like(p_end), 1.0 - p_end, torch.zeros_like(nxt)


def walk(steps, terminated):
    """Steps of +0.1 from x = 0; ended by crossing the edge (terminated) or cut short by a time limit."""
    obs = np.arange(steps, dtype=np.float32)[:, None] * 0.1 + 0.05
    return {"obs": obs, "action": np.full_like(obs, 0.1), "terminated": terminated}


def test_a_model_that_sees_the_edge_puts_its_probability_where_the_episodes_ended():
    episodes = [walk(10, True), walk(10, True), walk(5, False)]  # the two falls: their 10th step crosses x = 1
    seeing = termination_foresight(EdgeModel([1.0, 0.8, 0.9], 0.01), episodes)
    assert seeing["ends"] == 2
    assert seeing["termination_at_ends"] == pytest.approx(0.9)  # the members' mean
    assert seeing["termination_elsewhere"] == pytest.approx(0.01)
    blind = termination_foresight(EdgeModel([0.01, 0.01, 0.01], 0.01), episodes)
    assert blind["termination_at_ends"] == pytest.approx(0.01) and blind["ends"] == 2


def test_episodes_cut_short_by_the_time_limit_have_no_end_to_foresee():
    figures = termination_foresight(EdgeModel([1.0], 0.0), [walk(12, False)])  # crosses x = 1 but was not ended
    assert figures["ends"] == 0 and figures["termination_at_ends"] is None
    assert figures["termination_elsewhere"] == pytest.approx(3 / 12)  # the model's own view of steps 10 to 12


def test_the_evaluation_diagnostics_count_the_real_environments_terminations():
    """InvertedPendulum-v5 with an untrained policy: every evaluation episode falls."""
    cfg = config.from_dict({"env": {"id": "InvertedPendulum-v5"}, "model": {"termination": "known"}})
    spec = env_spec(cfg.env.id)
    torch.manual_seed(0)
    model, policy = build_ensemble(spec, cfg.model), build_policy(spec, cfg.policy)
    episodes = evaluate_policy(policy, cfg.env.id, 3, seed=0, record=True)["episodes"]
    assert all(ep["terminated"] for ep in episodes)
    figures = check_model(model, policy, episodes, cfg)
    assert figures["ends"] == 3
    for key in ("termination_at_ends", "termination_elsewhere"):
        assert 0.0 <= figures[key] <= 1.0, figures
