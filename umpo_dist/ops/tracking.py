"""MLflow tracking: params, tags, buffered metrics by env step, artifacts.

The tracking URI is MLflow's own resolution: `MLFLOW_TRACKING_URI` if set, else the
default `sqlite:///mlflow.db` in the working directory. A `log_metric` call to a
SQLite store costs ~10 ms and one to a tracking server a round trip (seconds when it
is slow or down), so metrics are buffered and written with one `log_batch` every
`log_every_s` seconds by a background writer thread: the training loop only appends
to the buffer and never waits for the store (`log_every_s: 0` writes at each `log`
call instead, in the caller). A store that fails mid-run does not stop the run: the
batch is kept and retried, and the gap is counted. `flush` (checkpoints, the end)
writes what is buffered before it returns.
"""

from __future__ import annotations

import logging
import os
import platform
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
import torch

from umpo_dist import __version__
from umpo_dist.config import Config, dump, flatten
from umpo_dist.devices import cpu_model

log = logging.getLogger(__name__)
MAX_PENDING = 100_000  # metric points kept while the store is unreachable


class TrackingError(RuntimeError):
    pass


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast on a tracking server that is not there (MLflow's own client would retry for minutes)."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as response:
            response.read()
    except (OSError, urllib.error.URLError) as exc:
        raise TrackingError(f"MLflow tracking server at '{uri}' (MLFLOW_TRACKING_URI) is unreachable: {exc}") from None


class Tracker:
    def __init__(self, cfg: Config, run_id: str | None = None):
        self.uri = tracking_uri()
        # Bounded retries: a server that blips mid-run delays a flush by seconds, not minutes.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        check_reachable(self.uri)
        self.client = MlflowClient(self.uri)
        self.log_every_s = cfg.tracking.log_every_s
        try:
            experiment = self.client.get_experiment_by_name(cfg.tracking.experiment)
        except Exception as exc:
            raise TrackingError(f"MLflow tracking store '{self.uri}' is unreachable: {exc}") from None
        if run_id is not None:
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")
            self.resumed = True
        else:
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(cfg.tracking.experiment)
            import ray

            tags = {
                "umpo.version": __version__,
                "ray.version": ray.__version__,
                "runtime": cfg.runtime,
                "env_id": cfg.env.id,
                "host": platform.node(),
                # which arithmetic the run did: a seed repeats to the bit only on the same kind of CPU
                "host.cpu": cpu_model(),
                "torch.cpu_capability": torch.backends.cpu.get_cpu_capability(),
            }
            commit = _git_commit()
            if commit:
                tags["mlflow.source.git.commit"] = commit
            name = cfg.tracking.run_name or f"{cfg.env.id}-seed{cfg.train.seed}"
            run = self.client.create_run(experiment_id, run_name=name, tags=tags)
            self.run_id = run.info.run_id
            self.resumed = False
            params = [Param(k, str(v)) for k, v in flatten(cfg).items()]
            for i in range(0, len(params), 100):
                self.client.log_batch(self.run_id, params=params[i : i + 100])
            self.log_text(dump(cfg), "config.yaml")
        self._pending: list[Metric] = []
        self._pending_lock = threading.Lock()  # the buffer, shared by the loop and the writer
        self._last_ms = 0  # the timestamp of the last `log` call
        self._flush_lock = threading.Lock()  # one flush at a time
        self.failed_flushes = 0
        self._gaps_logged = 0
        self._stop = threading.Event()
        self._writer = None
        if self.log_every_s > 0:
            self._writer = threading.Thread(target=self._write_periodically, name="mlflow-writer", daemon=True)
            self._writer.start()

    def log(self, metrics: dict[str, float], step: int) -> None:
        # Every call gets its own millisecond: MLflow keys the metrics it links to a logged model by
        # (name, timestamp, step), so one key logged twice at a step within a millisecond (easy once `log`
        # only buffers) made logging the policy model fail with a UNIQUE constraint at the end of a run.
        with self._pending_lock:
            now_ms = self._last_ms = max(int(time.time() * 1000), self._last_ms + 1)
            self._pending.extend(Metric(key, float(value), now_ms, int(step))
                                 for key, value in metrics.items() if value is not None)
        if self._writer is None:
            self.flush()

    def _write_periodically(self) -> None:
        while not self._stop.wait(self.log_every_s):
            self.flush()

    def flush(self) -> bool:
        """Write every buffered point; False (and the points kept, the newest `MAX_PENDING`) if the store failed."""
        with self._flush_lock:
            with self._pending_lock:
                batch, self._pending = self._pending, []
            while batch:
                try:
                    self.client.log_batch(self.run_id, metrics=batch[:1000])
                except Exception as exc:
                    self.failed_flushes += 1
                    with self._pending_lock:
                        self._pending = (batch + self._pending)[-MAX_PENDING:]
                        kept = len(self._pending)
                    log.warning("MLflow store unreachable (%s); keeping %d metric points to retry", exc, kept)
                    return False
                batch = batch[1000:]
            return self._record_gap()

    def _record_gap(self) -> bool:
        if self.failed_flushes != self._gaps_logged:
            # Record the gap, so a reader of the run knows some points arrived late.
            gap = Metric("tracking/failed_flushes", float(self.failed_flushes), int(time.time() * 1000), 0)
            try:
                self.client.log_batch(self.run_id, metrics=[gap])
                self._gaps_logged = self.failed_flushes
            except Exception:
                pass
        return True

    def set_tags(self, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def stop_writer(self) -> None:
        """Stop the background writer and write what is buffered; later `log` calls write at once.

        Before the policy model is logged: it links the run's metrics at its step, so they must all be
        in the store by then.
        """
        self._stop.set()
        if self._writer is not None:
            self._writer.join(timeout=60)
            self._writer = None
        self.flush()

    def end(self, status: str = "FINISHED") -> None:
        self.stop_writer()
        self.client.set_terminated(self.run_id, status=status)

