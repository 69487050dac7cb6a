"""The model-exploitation warning: fires on a run whose imagination keeps beating reality, not on a healthy one."""

import pytest

from umpo_dist import config
from umpo_dist.config import TrainConfig
from umpo_dist.diagnostics.watch import ExploitationWatch
from umpo_dist.runtime.schedule import Schedule


def figures(share, real=100.0):
    return {"imagined_return": real * (1 + share), "real_return": real, "gap_share": share, "member_spread": 0.5}


def test_the_warning_fires_after_enough_large_gaps_in_a_row_and_names_the_figures():
    watch = ExploitationWatch(margin=0.5, after=3)
    said = [watch.record(step, figures(share)) for step, share in
            [(1000, 0.9), (2000, 0.8), (3000, 0.1), (4000, 0.7), (5000, 0.6), (6000, 1.2), (7000, 2.0)]]
    assert said[:5] == [None] * 5 and said[6] is None  # a streak broken at 3000; one warning per streak
    assert watch.fired_at == [6000]
    text = said[5]
    assert "4000: imagined 170.0 vs real 100.0 (+70%" in text and "6000: imagined 220.0" in text
    assert "3 evaluations in a row" in text and "more than 50%" in text


def test_a_healthy_run_never_warns():
    watch = ExploitationWatch(margin=0.5, after=3)
    healthy = [0.1, -0.2, 0.45, 0.5, 0.3, -0.6, 0.49, 0.2] * 5  # noisy, at or below the margin, sometimes pessimistic
    assert all(watch.record(1000 * i, figures(s)) is None for i, s in enumerate(healthy))
    assert watch.record(99_000, None) is None  # an evaluation without a comparison breaks nothing
    assert watch.fired_at == []


def test_the_schedule_counts_only_evaluations_after_warm_up_and_keeps_the_streak_across_a_resume():
    cfg = TrainConfig(random_steps=100, model_warmup_updates=50, eval_every=100)
    s = Schedule(cfg, watch=ExploitationWatch(margin=0.5, after=2))
    diag = {**figures(1.0), "calibration_error": 0.3, "seconds": 0.01, "curve": [[0.1, 0.2, 10]]}
    assert s.record_diagnostics(100, diag) is None  # model not warmed up: the policy has not learned through it
    s.model_updates = 50
    assert s.record_diagnostics(200, diag) is None
    resumed = Schedule(cfg, watch=ExploitationWatch(margin=0.5, after=2))
    resumed.load_counters(s.counters())
    resumed.model_updates = 50
    assert "200: imagined 200.0" in resumed.record_diagnostics(300, diag)
    assert [d["step"] for d in resumed.diagnostics] == [100, 200, 300]
    assert resumed.calibration_curve == [[0.1, 0.2, 10]]
    assert resumed.summary(10.0)["model_warnings"] == [300]
    assert resumed.summary(10.0)["diagnostics_share"] == pytest.approx(0.01 / 10.0)  # this process's share only


FAST = ["runtime=inline", "env.id=InvertedPendulum-v5", "env.eval_episodes=1", "model.ensemble_size=3", "model.elites=2",
        "model.hidden_size=32", "model.hidden_layers=2", "policy.hidden_size=32", "policy.start_states=32",
        "train.random_steps=100", "train.model_warmup_updates=10", "train.total_env_steps=500", "train.eval_every=100",
        "train.checkpoint_every=0", "tracking.log_every_s=0", "diagnostics.warn_after=2"]


def summary_diagnostics(summary):
    from umpo_dist.ops.checkpoint import load_checkpoint

    return load_checkpoint(summary["checkpoint"])["counters"]["diagnostics"]


@pytest.mark.parametrize("share", [3.0, 0.2])
def test_a_run_warns_on_screen_and_in_mlflow_and_goes_on(workdir, monkeypatch, capfd, share):
    """A constructed run: the diagnostics report a gap of `share` at every evaluation."""
    from mlflow.tracking import MlflowClient

    from umpo_dist.ops.train import train
    from umpo_dist.runtime import evaluation_round

    def constructed(model, policy, episodes, cfg):
        assert model is not None and episodes and len(episodes[0]["reward"]) == len(episodes[0]["obs"]) > 0
        return {**figures(share), "calibration_error": 0.2, "seconds": 0.0, "curve": [[0.1, 0.1, 5]]}

    monkeypatch.setattr(evaluation_round, "check_model", constructed)
    summary = train(config.from_dict({}, FAST), progress=True)
    assert summary["env_steps"] == 500  # the run went on to its end
    run = MlflowClient().get_run(summary["run_id"])
    assert run.data.metrics["diagnostics/gap_share"] == share
    err = capfd.readouterr().err
    if share > 0.5:
        # step 0: no trained model, no diagnostics; the model warms up at step 100; 100 and 200 make the streak of 2
        assert summary["model_warnings"] == [200]
        assert "WARNING at env step 200: the model may be exploited" in err
        assert run.data.tags["umpo.warning.model_exploitation"].startswith("env step 200: the model may be exploited")
        assert [d["step"] for d in summary_diagnostics(summary)] == [100, 200, 300, 400, 500]
    else:
        assert summary["model_warnings"] == [] and "WARNING" not in err
        assert "umpo.warning.model_exploitation" not in run.data.tags
