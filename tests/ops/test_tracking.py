"""Tracker against a real SQLite MLflow store: params, buffered metrics, unreachable and failing stores."""

from __future__ import annotations

import re
import threading
import time
import socket

import pytest
import torch
from mlflow.entities import Metric

from umpo_dist.ops import cli
from umpo_dist.ops import tracking as tracking_mod
from umpo_dist.config import flatten, from_dict
from umpo_dist.devices import cpu_model
from umpo_dist.ops.tracking import Tracker, TrackingError, check_reachable

torch.set_num_threads(1)

EXPERIMENT = "umpo-test-tracking"
NEVER = 1e9  # log_every_s: only explicit flushes write


def make_cfg(log_every_s: float = NEVER, run_name: str | None = None):
    cfg = from_dict({"tracking": {"experiment": EXPERIMENT, "log_every_s": log_every_s}}, check_env=False)
    cfg.tracking.run_name = run_name
    return cfg


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    """One SQLite store for the module (creating its schema takes seconds)."""
    return tmp_path_factory.mktemp("mlflow-store")


@pytest.fixture
def store(store_dir, monkeypatch):
    monkeypatch.chdir(store_dir)  # artifacts go under ./mlruns here
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store_dir}/mlflow.db")
    # Tracker sets these with setdefault; pin them so the test leaves the environment as it found it.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    return store_dir


def history(tracker: Tracker, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in tracker.client.get_metric_history(tracker.run_id, key))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- a healthy store ---------------------------------------------------------------------------------------
def test_params_tags_and_config_are_logged(store):
    cfg = make_cfg(run_name="params-run")
    tracker = Tracker(cfg)
    assert tracker.uri == f"sqlite:///{store}/mlflow.db" and not tracker.resumed
    run = tracker.client.get_run(tracker.run_id)
    assert run.data.params == {k: str(v) for k, v in flatten(cfg).items()}
    assert run.data.params["tracking.experiment"] == EXPERIMENT
    assert run.data.tags["env_id"] == cfg.env.id and run.data.tags["runtime"] == cfg.runtime
    assert run.data.tags["mlflow.runName"] == "params-run"
    # the kind of CPU (a seed repeats to the bit only on the same kind)
    assert run.data.tags["host.cpu"] == cpu_model() != "unknown"
    assert run.data.tags["torch.cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    experiment = tracker.client.get_experiment_by_name(EXPERIMENT)
    assert run.info.experiment_id == experiment.experiment_id
    assert [a.path for a in tracker.client.list_artifacts(tracker.run_id)] == ["config.yaml"]
    tracker.end()
    assert tracker.client.get_run(tracker.run_id).info.status == "FINISHED"


def test_metrics_are_buffered_then_flushed_by_step(store):
    tracker = Tracker(make_cfg())
    tracker.log({"loss": 1.0, "skipped": None}, step=10)
    tracker.log({"loss": 0.5, "return": 7.0}, step=20)
    tracker.log({"loss": 0.25}, step=30)
    assert history(tracker, "loss") == []  # nothing written yet: one batch per flush
    assert len(tracker._pending) == 4
    assert tracker.flush() is True
    assert history(tracker, "loss") == [(10, 1.0), (20, 0.5), (30, 0.25)]
    assert history(tracker, "return") == [(20, 7.0)]
    assert history(tracker, "skipped") == []  # None values are dropped
    assert tracker._pending == [] and tracker.flush() is True  # an empty flush is a no-op
    tracker.log({"loss": 0.125}, step=40)
    tracker.end()  # end flushes what is left
    assert history(tracker, "loss")[-1] == (40, 0.125)


def test_a_key_logged_twice_at_a_step_stays_distinct_for_the_model_that_links_them(store):
    """MLflow links a logged model to the run's metrics at its step, keyed by (name, timestamp, step):
    two points of one key at one step must not share a millisecond (they did once `log` only buffered)."""
    import mlflow

    tracker = Tracker(make_cfg())
    for i in range(50):  # far faster than one call per millisecond
        tracker.log({"eval/return": float(i), "other": 1.0}, step=3000)
    tracker.stop_writer()
    points = tracker.client.get_metric_history(tracker.run_id, "eval/return")
    assert len(points) == 50 and len({(m.timestamp, m.step) for m in points}) == 50
    model = mlflow.initialize_logged_model(name="policy", source_run_id=tracker.run_id,
                                           experiment_id=tracker.client.get_run(tracker.run_id).info.experiment_id)
    linked = [Metric(m.key, m.value, m.timestamp, m.step, model_id=model.model_id, run_id=tracker.run_id)
              for key in ("eval/return", "other") for m in tracker.client.get_metric_history(tracker.run_id, key)]
    tracker.client.log_batch(tracker.run_id, metrics=linked)  # what `Model.log(..., step=3000)` does
    assert len(tracker.client.get_logged_model(model.model_id).metrics) == 100
    tracker.end()


def test_log_every_zero_writes_at_once(store):
    tracker = Tracker(make_cfg(log_every_s=0.0))
    tracker.log({"x": 3.0}, step=1)
    assert history(tracker, "x") == [(1, 3.0)] and tracker._pending == []
    tracker.end()


def test_background_writer_writes_without_the_caller(store, monkeypatch):
    """With `log_every_s > 0` the loop's `log` only buffers; the writer thread calls the store."""
    tracker = Tracker(make_cfg(log_every_s=0.05))
    callers = []
    real = tracker.client.log_batch
    monkeypatch.setattr(tracker.client, "log_batch",
                        lambda *a, **k: callers.append(threading.current_thread().name) or real(*a, **k))
    for step in range(20):
        tracker.log({"y": float(step)}, step)
    for _ in range(1000):  # the writer runs every 50 ms; allow 10 s on a loaded machine
        if len(history(tracker, "y")) == 20:
            break
        time.sleep(0.01)
    assert history(tracker, "y") == [(s, float(s)) for s in range(20)]
    assert callers and set(callers) == {"mlflow-writer"}
    tracker.log({"y": 99.0}, step=99)
    tracker.end()  # stops the writer and writes what is left, in the caller
    assert history(tracker, "y")[-1] == (99, 99.0) and tracker._writer is None


def test_one_log_batch_per_flush(store, monkeypatch):
    tracker = Tracker(make_cfg())
    calls = []
    real = tracker.client.log_batch
    monkeypatch.setattr(tracker.client, "log_batch", lambda *a, **k: calls.append(len(k["metrics"])) or real(*a, **k))
    for step in range(50):
        tracker.log({"a": step, "b": -step}, step)
    assert calls == []
    tracker.flush()
    assert calls == [100]
    assert len(history(tracker, "a")) == 50


def test_resume_appends_to_the_same_run(store):
    first = Tracker(make_cfg())
    first.log({"loss": 1.0}, step=5)
    first.end("KILLED")
    resumed = Tracker(make_cfg(), run_id=first.run_id)
    assert resumed.resumed and resumed.run_id == first.run_id
    assert resumed.client.get_run(first.run_id).info.status == "RUNNING"
    resumed.log({"loss": 0.5}, step=6)
    resumed.end()
    assert history(resumed, "loss") == [(5, 1.0), (6, 0.5)]


# -- an unreachable server -----------------------------------------------------------------------------
def test_unreachable_server_fails_at_start_naming_the_uri(store, monkeypatch):
    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    expected = f"MLflow tracking server at '{uri}' (MLFLOW_TRACKING_URI) is unreachable: "
    with pytest.raises(TrackingError, match=re.escape(expected)):
        Tracker(make_cfg())
    with pytest.raises(TrackingError, match=re.escape(f"MLflow tracking server at '{uri}/' ")):
        check_reachable(uri + "/", timeout_s=2.0)  # a trailing slash: still probes {uri}/health
    check_reachable(f"sqlite:///{store}/other.db")  # a local store is not probed


def test_cli_train_with_unreachable_server_is_a_one_line_error(store, monkeypatch, capsys):
    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    config = store / "tiny.yaml"
    config.write_text(f"runtime: inline\ntracking:\n  experiment: {EXPERIMENT}\n  runs_dir: {store / 'runs'}\n")
    assert cli.main(["train", str(config), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"umpo: error: MLflow tracking server at '{uri}' (MLFLOW_TRACKING_URI) is unreachable" in err
    assert "Traceback" not in err
    assert not (store / "runs").exists()  # nothing started


# -- a store that fails mid-run ------------------------------------------------------------------------
class FlakyLogBatch:
    """`log_batch` that fails `failures` times, then passes calls through."""

    def __init__(self, real, failures: int):
        self.real, self.failures, self.calls = real, failures, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError("store went away")
        return self.real(*args, **kwargs)


def test_store_failing_mid_run_keeps_points_and_records_the_gap(store, monkeypatch, caplog):
    tracker = Tracker(make_cfg(log_every_s=0.0))  # every log() flushes: log() itself must not raise
    tracker.log({"loss": 4.0}, step=1)
    flaky = FlakyLogBatch(tracker.client.log_batch, failures=2)
    monkeypatch.setattr(tracker.client, "log_batch", flaky)
    tracker.log({"loss": 3.0}, step=2)  # fails
    assert tracker.failed_flushes == 1 and len(tracker._pending) == 1
    tracker.log({"loss": 2.0, "return": 9.0}, step=3)  # fails again
    assert tracker.failed_flushes == 2 and len(tracker._pending) == 3
    assert "MLflow store unreachable" in caplog.text
    assert history(tracker, "loss") == [(1, 4.0)]
    tracker.log({"loss": 1.0}, step=4)  # the store is back
    assert tracker._pending == []
    assert history(tracker, "loss") == [(1, 4.0), (2, 3.0), (3, 2.0), (4, 1.0)]
    assert history(tracker, "return") == [(3, 9.0)]
    assert [v for _, v in history(tracker, "tracking/failed_flushes")][-1] == 2.0
    tracker.end()
    assert tracker.client.get_run(tracker.run_id).info.status == "FINISHED"


def test_explicit_flush_reports_failure_without_raising(store, monkeypatch):
    tracker = Tracker(make_cfg())
    tracker.log({"v": 1.0}, step=1)
    monkeypatch.setattr(tracker.client, "log_batch", FlakyLogBatch(tracker.client.log_batch, failures=1))
    assert tracker.flush() is False
    assert tracker.flush() is True
    assert history(tracker, "v") == [(1, 1.0)]
    assert history(tracker, "tracking/failed_flushes") == [(0, 1.0)]


def test_pending_points_are_bounded_keeping_the_newest(store, monkeypatch):
    monkeypatch.setattr(tracking_mod, "MAX_PENDING", 5)
    tracker = Tracker(make_cfg(log_every_s=0.0))
    flaky = FlakyLogBatch(tracker.client.log_batch, failures=8)
    monkeypatch.setattr(tracker.client, "log_batch", flaky)
    for step in range(8):
        tracker.log({"x": float(step)}, step)
    assert tracker.failed_flushes == 8 and [m.step for m in tracker._pending] == [3, 4, 5, 6, 7]
    assert tracker.flush() is True
    assert history(tracker, "x") == [(s, float(s)) for s in range(3, 8)]
