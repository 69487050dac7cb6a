"""`umpo submit`: job construction (no cluster), errors, and one real submission.

The end-to-end test starts a real Ray head (`ray start --head`, token authentication
on, as Ray 2.60 does by default) and a real `mlflow server` with proxied artifacts,
both on loopback, submits a short InvertedPendulum-v5 run through the Jobs API with
`umpo submit`, and reads the run's metrics and artifacts back from the server.
Everything it starts runs with its own HOME (so its own ~/.ray/auth_token) and its
own Ray temp dir, and is stopped at the end: the process groups it started, then
any process still carrying those markers, by pid. It never runs `ray stop`, which
would stop every Ray on the machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import yaml

from umpo_dist.config import ConfigError
from umpo_dist.ops.submit import (
    SubmitError,
    build_job,
    enable_token_auth_if_available,
    job_env_vars,
    resolve_address,
    train_command,
)

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the venv's bin: ray, mlflow, umpo, python
CONFIG = "configs/inverted_pendulum.yaml"
SCRUB = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "MLFLOW_TRACKING_URI", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN",
         "RAY_AUTH_TOKEN_PATH")


def _args(**kw) -> argparse.Namespace:
    base = dict(config=CONFIG, address=None, set=[], working_dir=str(REPO), installed=False, wait=False)
    base.update(kw)
    return argparse.Namespace(**base)


def _umpo() -> list[str]:
    script = BIN / "umpo"
    return [str(script)] if script.exists() else [sys.executable, "-m", "umpo_dist"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- no cluster needed -----------------------------------------------------------------
def test_default_job_ships_the_working_directory(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    job = build_job(_args(set=["model.hidden_size=64", "tracking.run_name=a b"]))
    assert job["entrypoint"] == (f"python -m umpo_dist train {CONFIG} --no-progress "
                                 "--set model.hidden_size=64 --set 'tracking.run_name=a b'")
    env = job["runtime_env"]
    assert Path(env["working_dir"]) == REPO
    for pattern in (".venv", ".git", "runs", "mlruns", "mlflow.db"):
        assert pattern in env["excludes"]
    assert env["env_vars"]["MLFLOW_TRACKING_URI"] == "http://tracking.example:5000"


def test_tracking_uri_passed_only_when_set(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert "MLFLOW_TRACKING_URI" not in job_env_vars()
    assert job_env_vars({"MLFLOW_TRACKING_URI": "http://h:5000"})["MLFLOW_TRACKING_URI"] == "http://h:5000"


def test_config_is_validated_before_submission():
    with pytest.raises(ConfigError, match="model.nope"):
        build_job(_args(set=["model.nope=1"]))
    with pytest.raises(ConfigError, match="does not exist"):
        build_job(_args(config="configs/missing.yaml"))


def test_config_outside_the_working_directory_is_refused(tmp_path):
    outside = tmp_path / "x.yaml"
    outside.write_text("env: {id: InvertedPendulum-v5}\n")
    with pytest.raises(SubmitError, match="outside the shipped working directory"):
        build_job(_args(config=str(outside)))


def test_installed_mode_runs_umpo_and_ships_only_the_config(tmp_path):
    job = build_job(_args(installed=True, set=["train.seed=3"], config=str(REPO / CONFIG)), str(tmp_path))
    assert job["entrypoint"] == "umpo train inverted_pendulum.yaml --no-progress --set train.seed=3"
    assert job["runtime_env"]["working_dir"] == str(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["inverted_pendulum.yaml"]
    # A config that is not here is a path on the cluster (e.g. inside the image).
    job = build_job(_args(installed=True, config="/home/ray/umpo-dist/configs/hopper.yaml"))
    assert job["entrypoint"].startswith("umpo train /home/ray/umpo-dist/configs/hopper.yaml")
    assert "working_dir" not in job["runtime_env"]
    assert train_command("c.yaml", [], installed=False)[:3] == ["python", "-m", "umpo_dist"]


def test_address_resolution(monkeypatch):
    for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SubmitError, match="no cluster address"):
        resolve_address(None)
    assert resolve_address("10.0.0.5:8265") == "http://10.0.0.5:8265"
    assert resolve_address("https://head:8265/") == "https://head:8265"
    with pytest.raises(SubmitError, match="not a Jobs API address"):
        resolve_address("ray://head:10001")
    monkeypatch.setenv("RAY_ADDRESS", "http://from-env:8265")
    assert resolve_address(None) == "http://from-env:8265"


def test_explicit_auth_mode_is_respected(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert enable_token_auth_if_available() is False
    assert os.environ["RAY_AUTH_MODE"] == "disabled"


def test_token_mode_turned_on_when_a_token_exists(tmp_path):
    """In a child process: RAY_AUTH_MODE unset + ~/.ray/auth_token -> token mode, seen by Ray."""
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("x" * 64)
    env = {k: v for k, v in os.environ.items() if k not in SCRUB}
    code = ("import ray, os\n"
            "from umpo_dist.ops.submit import enable_token_auth_if_available as f\n"
            "from ray._private.authentication.authentication_utils import is_token_auth_enabled\n"
            "print(f(), os.environ.get('RAY_AUTH_MODE'), is_token_auth_enabled())\n")
    out = subprocess.run([sys.executable, "-c", code], env={**env, "HOME": str(tmp_path)}, capture_output=True,
                         text=True, timeout=120)
    assert out.stdout.split() == ["True", "token", "True"], out.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    out = subprocess.run([sys.executable, "-c", code], env={**env, "HOME": str(empty)}, capture_output=True,
                         text=True, timeout=120)
    assert out.stdout.split()[:2] == ["False", "None"], out.stderr


def test_unreachable_address_is_a_clear_error():
    address = f"http://127.0.0.1:{_free_port()}"
    env = {k: v for k, v in os.environ.items() if k not in SCRUB}
    out = subprocess.run([*_umpo(), "submit", CONFIG, "--address", address], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "umpo: error:" in out.stderr and address in out.stderr
    assert "Traceback" not in out.stderr


# -- a real head, a real tracking server ------------------------------------------------
def _wait(predicate, timeout_s: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-4000:] if log and log.exists() else ""
            raise AssertionError(f"{what}: the process exited with {proc.returncode}\n{tail}")
        try:
            if predicate():
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(1.0)
    tail = log.read_text()[-4000:] if log and log.exists() else ""
    raise AssertionError(f"{what}: not ready after {timeout_s:.0f} s\n{tail}")


def _http_status(url: str) -> int:
    import requests

    return requests.get(url, timeout=5).status_code


def _ours(pid: int, markers: list[bytes]) -> bool:
    """Whether a process carries one of our markers (its cmdline, or its environment)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    entries = environ.split(b"\0")
    return any(m in cmdline or m in entries for m in markers)


def _stop_groups(procs: list[subprocess.Popen | None], grace_s: float = 15.0) -> None:
    """SIGTERM the process groups we started (all at once), then SIGKILL what is left."""
    procs = [p for p in procs if p is not None]
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for proc in procs:  # the group may outlive its leader
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def _sweep(markers: list[bytes]) -> list[int]:
    """SIGKILL, by pid, every process that carries our markers (not this one)."""
    killed = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        if _ours(pid, markers):
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
    return killed


@pytest.fixture(scope="module")
def stack():
    """A Ray head (Jobs API) and an MLflow server on loopback; yields their addresses and env."""
    if not (BIN / "ray").exists() or not (BIN / "mlflow").exists():
        pytest.skip("needs the venv's ray and mlflow executables")
    root = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: unix socket paths are limited
    home, ray_tmp, work = root / "h", root / "t", root / "w"
    for d in (home, ray_tmp, work):
        d.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in SCRUB}
    env.update(HOME=str(home), PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", RAY_USAGE_STATS_ENABLED="0",
               PYTHONUNBUFFERED="1")
    ports = {name: _free_port() for name in ("gcs", "dash", "agent", "client", "mlflow")}
    dash = f"http://127.0.0.1:{ports['dash']}"
    mlflow_uri = f"http://127.0.0.1:{ports['mlflow']}"
    markers = [f"HOME={home}".encode(), str(ray_tmp).encode()]
    head = mlflow_proc = None
    head_log, mlflow_log = root / "head.log", root / "mlflow.log"
    try:
        # The documented set-up: a token (~/.ray/auth_token), and token mode required on the head.
        subprocess.run([str(BIN / "ray"), "get-auth-token", "--generate"], env=env, cwd=work, check=True,
                       capture_output=True, timeout=120)
        head = subprocess.Popen(
            [str(BIN / "ray"), "start", "--head", "--block", f"--port={ports['gcs']}",
             "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", f"--dashboard-port={ports['dash']}",
             f"--dashboard-agent-listen-port={ports['agent']}", f"--ray-client-server-port={ports['client']}",
             "--num-cpus=4", "--num-gpus=0", "--object-store-memory=200000000", f"--temp-dir={ray_tmp}",
             "--disable-usage-stats"],
            cwd=work, env={**env, "RAY_AUTH_MODE": "token"}, stdout=head_log.open("w"), stderr=subprocess.STDOUT,
            start_new_session=True)
        mlflow_proc = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
             "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1",
             "--port", str(ports["mlflow"]), "--workers", "1"],
            cwd=work, env=env, stdout=mlflow_log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
        _wait(lambda: "Ray runtime started" in head_log.read_text(), 180, "ray head", head, head_log)
        _wait(lambda: _http_status(f"{dash}/api/version") in (200, 401, 403), 120, "ray dashboard", head, head_log)
        _wait(lambda: _http_status(f"{mlflow_uri}/health") == 200, 120, "mlflow server", mlflow_proc, mlflow_log)
        yield {"root": root, "home": home, "env": env, "dash": dash, "mlflow": mlflow_uri, "ports": ports,
               "head_log": head_log, "artifacts": root / "artifacts"}
    finally:
        _stop_groups([head, mlflow_proc])
        time.sleep(1.0)
        leftovers = _sweep(markers)
        if leftovers:
            print(f"stopped {len(leftovers)} leftover processes: {leftovers}")
        shutil.rmtree(root, ignore_errors=True)


def _jobs_client(stack):
    """A Jobs API client with the head's token passed explicitly (no process-wide auth state)."""
    from ray.job_submission import JobSubmissionClient

    token = (stack["home"] / ".ray" / "auth_token").read_text().strip()
    return JobSubmissionClient(stack["dash"], headers={"Authorization": f"Bearer {token}"})


def _artifact_paths(client, run_id: str, path: str | None = None) -> set[str]:
    out = set()
    for item in client.list_artifacts(run_id, path):
        out |= _artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return out


@pytest.mark.e2e
def test_submit_runs_a_job_that_tracks_to_the_server(stack, monkeypatch):
    from mlflow.tracking import MlflowClient
    from ray.job_submission import JobStatus

    # The head requires its token: an unauthenticated Jobs API request is refused.
    assert _http_status(f"{stack['dash']}/api/jobs/") == 401
    experiment = f"umpo-submit-e2e-{uuid.uuid4().hex[:8]}"
    sets = [
        "resources.num_env_workers=2", "resources.worker_cpus=0.5", "train.total_env_steps=800",
        "train.random_steps=300", "train.model_warmup_updates=50", "train.eval_every=400",
        "env.eval_episodes=1", "model.hidden_size=64", "model.hidden_layers=2", "policy.hidden_size=64",
        "policy.start_states=32", "train.model_updates_per_step=0.2", "train.policy_updates_per_step=0.2",
        f"tracking.experiment={experiment}",
    ]
    # RAY_AUTH_MODE is unset here: `umpo submit` must find the token by itself.
    out = subprocess.run(
        [*_umpo(), "submit", CONFIG, "--address", stack["dash"], *[a for s in sets for a in ("--set", s)]],
        cwd=REPO, env={**stack["env"], "MLFLOW_TRACKING_URI": stack["mlflow"]}, capture_output=True, text=True,
        timeout=300)
    print(out.stdout, out.stderr)
    assert out.returncode == 0, out.stderr
    job_id = re.search(r"submitted job (\S+)", out.stdout).group(1)
    assert f"ray job logs --follow {job_id} --address {stack['dash']}" in out.stdout
    assert "RAY_AUTH_MODE=token" in out.stdout

    jobs = _jobs_client(stack)
    status, deadline = None, time.monotonic() + 600
    try:
        while time.monotonic() < deadline:
            status = jobs.get_job_status(job_id)
            if status.is_terminal():
                break
            time.sleep(3)
        logs = jobs.get_job_logs(job_id)
        if status != JobStatus.SUCCEEDED:
            print(logs)
            print(stack["head_log"].read_text()[-3000:])
        assert status == JobStatus.SUCCEEDED, f"job {job_id} ended {status}: {jobs.get_job_info(job_id).message}"
    finally:
        if status is None or not status.is_terminal():
            jobs.stop_job(job_id)

    info = jobs.get_job_info(job_id)
    # The entrypoint ran the shipped code and its driver joined this cluster (RAY_ADDRESS from the job).
    assert info.entrypoint.startswith(f"python -m umpo_dist train {CONFIG} --no-progress")
    assert info.runtime_env["env_vars"]["MLFLOW_TRACKING_URI"] == stack["mlflow"]
    assert info.driver_info is not None, "the job's driver did not connect to the cluster"
    assert "== umpo-dist run summary ==" in logs

    client = MlflowClient(stack["mlflow"])
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment} on the tracking server"
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    run_id = run.info.run_id
    assert run.info.status == "FINISHED"
    assert run_id in logs  # the summary names the run the driver logged to
    assert run.data.params["resources.num_env_workers"] == "2"

    evals = client.get_metric_history(run_id, "eval/return")
    assert len(evals) >= 2 and all(math.isfinite(m.value) for m in evals)
    assert max(m.step for m in evals) >= 400
    nll = client.get_metric_history(run_id, "model/train_nll")
    assert nll and all(math.isfinite(m.value) for m in nll)

    # Listing a run's artifacts also lists its logged models' (the `policy` model); MLflow 3.17 looks
    # those up through the process-wide tracking URI, not the client's: point it at the server, as a
    # user of that server would.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", stack["mlflow"])
    paths = _artifact_paths(client, run_id)
    assert {"config.yaml", "policy/policy.pt", "learning_curve.png", "checkpoint/manifest.json"} <= paths, paths
    # Artifacts went through the server (proxied) into its --artifacts-destination.
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    stored = {p.name for p in stack["artifacts"].rglob("*") if p.is_file()}
    assert {"policy.pt", "manifest.json", "learning_curve.png", "config.yaml"} <= stored
    local = Path(client.download_artifacts(run_id, "config.yaml", str(stack["root"])))
    cfg = yaml.safe_load(local.read_text())
    assert cfg["model"]["hidden_size"] == 64 and cfg["tracking"]["experiment"] == experiment
    manifest = json.loads(Path(client.download_artifacts(run_id, "checkpoint/manifest.json",
                                                         str(stack["root"]))).read_text())
    assert manifest["env_steps"] >= 800

    # The job wrote its run data into Ray's copy of the working directory, not into the repo.
    assert not (REPO / "runs" / run_id).exists()


@pytest.mark.e2e
def test_submit_wait_follows_a_failing_job_and_returns_nonzero(stack):
    """--wait streams the logs and exits 1 when the job fails (here: a config the cluster does not have)."""
    out = subprocess.run(
        [*_umpo(), "submit", "/nonexistent/umpo.yaml", "--installed", "--wait", "--address", stack["dash"]],
        cwd=REPO, env=stack["env"], capture_output=True, text=True, timeout=600)
    print(out.stdout, out.stderr)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "umpo train /nonexistent/umpo.yaml --no-progress" in out.stdout
    assert "does not exist" in out.stdout  # the job's own error, streamed back
    assert re.search(r"job \S+ FAILED", out.stdout)


@pytest.mark.e2e
def test_submit_without_the_token_is_refused_with_a_clear_error(stack):
    out = subprocess.run(
        [*_umpo(), "submit", CONFIG, "--address", stack["dash"]],
        cwd=REPO, env={**stack["env"], "RAY_AUTH_MODE": "disabled"}, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "umpo: error:" in out.stderr and stack["dash"] in out.stderr and "RAY_AUTH_MODE=token" in out.stderr
    assert "Traceback" not in out.stderr
