"""`umpo submit`: run `umpo train` on a Ray cluster through Ray's Jobs API.

Two ways to get the code onto the cluster:

- default: the working directory is shipped (`runtime_env.working_dir`, without
  `.venv`, `.git`, run data and MLflow files) and the job runs
  `python -m umpo_dist train CONFIG --no-progress --set ...` inside Ray's copy of
  it, so the code you have here is the code that runs;
- `--installed`: the job runs the `umpo` installed in the cluster's image
  (`umpo train CONFIG ...`); only the config file is shipped, or, when the config
  does not exist here, its path is read on the cluster.

The job's driver runs on the head node and joins the cluster through the
`RAY_ADDRESS` the Jobs API gives it. `MLFLOW_TRACKING_URI`, when set here, is passed
to the job (`runtime_env.env_vars`): the driver logs every metric and artifact of the
run to that one tracking server. Unset, the job uses the cluster's own setting.

Ray >= 2.52 enables token authentication on `ray start --head`. A Jobs API client
then needs `RAY_AUTH_MODE=token` and the cluster's token (`RAY_AUTH_TOKEN`,
`RAY_AUTH_TOKEN_PATH` or `~/.ray/auth_token`). When `RAY_AUTH_MODE` is unset and a
token is available, this command turns token mode on for itself. The token is never
put into the job's runtime environment.

`ray job submit --address ADDR --working-dir . -- python -m umpo_dist train CONFIG`
(or `-- umpo train CONFIG` against an image with the package installed) is the
equivalent plain Ray command.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

from umpo_dist.config import ConfigError

# Never shipped with the working directory (gitignore-style patterns, relative to it).
# Ray also honours the directory's .gitignore files.
EXCLUDES = [
    ".venv",
    "venv",
    ".git",
    "runs",
    "mlruns",
    "mlartifacts",
    "mlflow.db",
    "mlflow.db-journal",
    "__pycache__",
    ".pytest_cache",
    "*.egg-info",
    "MUJOCO_LOG.TXT",
]

AUTH_MODE_ENV = "RAY_AUTH_MODE"


class SubmitError(RuntimeError):
    """A problem with a submission, with a message that says what to do."""


# -- pieces that need no cluster ---------------------------------------------------
def resolve_address(address: str | None) -> str:
    """The Jobs API address (the head's dashboard): `--address`, else RAY_API_SERVER_ADDRESS / RAY_ADDRESS."""
    address = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
    if not address:
        raise SubmitError("no cluster address: pass --address http://HEAD:8265 (the Ray dashboard of the head node) "
                          "or set RAY_ADDRESS")
    address = address.strip().rstrip("/")
    if address == "auto" or address.startswith("ray://"):
        raise SubmitError(f"address '{address}' is not a Jobs API address: pass the head's dashboard, "
                          "e.g. --address http://HEAD:8265")
    if "://" not in address:
        address = f"http://{address}"
    if not address.startswith(("http://", "https://")):
        raise SubmitError(f"address '{address}' must be an http:// or https:// URL of the head's dashboard "
                          "(default port 8265)")
    return address


def token_available() -> bool:
    """Whether Ray would find an authentication token (env var, token path, or ~/.ray/auth_token)."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        return Path(path).expanduser().is_file()
    return (Path.home() / ".ray" / "auth_token").is_file()


def enable_token_auth_if_available() -> bool:
    """Set RAY_AUTH_MODE=token for this process when it is unset and a token exists.

    Returns True when it was turned on here. An explicit RAY_AUTH_MODE (token or
    disabled) is left as it is.
    """
    if os.environ.get(AUTH_MODE_ENV) or not token_available():
        return False
    os.environ[AUTH_MODE_ENV] = "token"
    try:  # Ray caches its config on first read: refresh it in case ray was imported already
        from ray._raylet import Config

        Config.initialize("")
    except Exception:  # noqa: BLE001 - older/newer Ray without this hook read the env var at import
        pass
    return True


def train_command(config: str, overrides, installed: bool) -> list[str]:
    """The job's entrypoint as an argument list."""
    head = ["umpo"] if installed else ["python", "-m", "umpo_dist"]
    cmd = head + ["train", config, "--no-progress"]
    for item in overrides:
        cmd += ["--set", item]
    return cmd


def job_env_vars(environ=None) -> dict[str, str]:
    """Environment variables passed to the job: unbuffered output and the tracking server."""
    environ = os.environ if environ is None else environ
    env = {"PYTHONUNBUFFERED": "1"}
    uri = environ.get("MLFLOW_TRACKING_URI")
    if uri:
        env["MLFLOW_TRACKING_URI"] = uri
    return env


def shipped_config(working_dir: Path, config: str) -> str:
    """The config's path relative to the shipped working directory (POSIX form)."""
    given = Path(config)
    candidates = [given] if given.is_absolute() else [working_dir / given, Path.cwd() / given]
    for candidate in candidates:
        if candidate.is_file():
            try:
                return candidate.resolve().relative_to(working_dir.resolve()).as_posix()
            except ValueError:
                raise SubmitError(f"config file '{config}' is outside the shipped working directory "
                                  f"'{working_dir}': put it inside, or pass --working-dir") from None
    raise ConfigError(f"config file '{config}' does not exist (looked in '{working_dir}')")


def build_job(args, tmp_dir: str | None = None) -> dict:
    """Entrypoint, runtime_env and metadata for `args`; validates the config here first.

    With --installed and a config that exists here, the config is copied into
    `tmp_dir`, which becomes the (tiny) shipped working directory.
    """
    from umpo_dist import config as config_mod

    overrides = list(args.set or [])
    env_vars = job_env_vars()
    notes: list[str] = []
    if args.installed:
        local = Path(args.config)
        if local.is_file():
            config_mod.load(local, overrides)  # a bad key fails here, not on the cluster
            if tmp_dir is None:
                raise ValueError("build_job needs tmp_dir for --installed with a local config")
            shutil.copyfile(local, Path(tmp_dir) / local.name)
            config = local.name
            runtime_env = {"working_dir": tmp_dir, "env_vars": env_vars}
            notes.append(f"code        the cluster's installed umpo (config {args.config} shipped)")
        else:
            config = args.config
            runtime_env = {"env_vars": env_vars}
            notes.append(f"code        the cluster's installed umpo; config '{config}' is read on the cluster")
    else:
        working_dir = Path(args.working_dir or ".").resolve()
        if not working_dir.is_dir():
            raise SubmitError(f"working directory '{args.working_dir}' does not exist")
        config = shipped_config(working_dir, args.config)
        config_mod.load(working_dir / config, overrides)
        if not (working_dir / "umpo_dist").is_dir():
            notes.append(f"warning     '{working_dir}' has no umpo_dist/: the cluster's installed package will run")
        runtime_env = {"working_dir": str(working_dir), "excludes": list(EXCLUDES), "env_vars": env_vars}
        notes.append(f"code        {working_dir} (shipped without {', '.join(EXCLUDES[:6])}, ...)")
    entrypoint = shlex.join(train_command(config, overrides, args.installed))
    uri = env_vars.get("MLFLOW_TRACKING_URI")
    if uri:
        notes.append(f"tracking    MLFLOW_TRACKING_URI={uri} (passed to the job; it must be reachable from the head)")
        if not uri.startswith(("http://", "https://", "databricks")):
            notes.append("warning     that tracking URI is a local store: it is resolved on the head node "
                         "(a relative path lands in the job's copy of the working directory)")
    else:
        notes.append("tracking    MLFLOW_TRACKING_URI is not set here: the job uses the cluster's setting, "
                     "else sqlite:///mlflow.db in its working directory on the head")
    metadata = {"umpo.command": "train", "umpo.config": config, "umpo.installed": str(bool(args.installed))}
    return {"entrypoint": entrypoint, "runtime_env": runtime_env, "metadata": metadata, "notes": notes}


# -- talking to the cluster ----------------------------------------------------------
def connect(address: str):
    """A JobSubmissionClient for `address`, or a SubmitError that names the address."""
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except Exception as exc:  # noqa: BLE001 - requests/aiohttp/Ray raise many kinds here
        text = str(exc).strip() or type(exc).__name__
        if "auth" in text.lower() or "token" in text.lower() or type(exc).__name__ == "AuthenticationError":
            raise SubmitError(
                f"the Ray cluster at {address} refused the request: {text} "
                f"(token authentication: set RAY_AUTH_MODE=token and the cluster's token in RAY_AUTH_TOKEN "
                f"or ~/.ray/auth_token)") from None
        raise SubmitError(f"cannot reach the Ray Jobs API at {address}: {text} "
                          "(is it the head node's dashboard address, default port 8265, and is the cluster up?)") from None


def wait_for_job(client, job_id: str, poll_s: float = 2.0, timeout_s: float | None = None):
    """Poll until the job is terminal; returns its JobStatus (or None on timeout)."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        status = client.get_job_status(job_id)
        if status.is_terminal():
            return status
        if deadline is not None and time.monotonic() > deadline:
            return None
        time.sleep(poll_s)


def follow_logs(client, job_id: str, out=None):
    """Stream the job's logs to `out` until the job ends; returns its final JobStatus."""
    import asyncio

    out = out or sys.stdout

    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            out.write(lines)
            out.flush()

    try:
        asyncio.run(tail())
    except Exception as exc:  # noqa: BLE001 - a dropped stream is not the job's failure
        print(f"umpo: the log stream ended early ({exc}); waiting for the job to end", file=sys.stderr)
    return wait_for_job(client, job_id)


def submit(args) -> int:
    """`umpo submit`: 0 when submitted (or, with --wait, when the job SUCCEEDED)."""
    try:
        return _submit(args)
    except (SubmitError, ConfigError) as exc:
        print(f"umpo: error: {exc}", file=sys.stderr)
        return 2


def _submit(args) -> int:
    address = resolve_address(args.address)
    with tempfile.TemporaryDirectory(prefix="umpo-submit-") as tmp:
        job = build_job(args, tmp)
        auto_token = enable_token_auth_if_available()
        client = connect(address)
        try:
            job_id = client.submit_job(entrypoint=job["entrypoint"], runtime_env=job["runtime_env"],
                                       metadata=job["metadata"])
        except Exception as exc:  # noqa: BLE001
            raise SubmitError(f"job submission to {address} failed: {exc}") from None

    prefix = "RAY_AUTH_MODE=token " if auto_token else ""
    where = f"--address {shlex.quote(address)}"
    print(f"submitted job {job_id} to {address}")
    print(f"  entrypoint  {job['entrypoint']}")
    for note in job["notes"]:
        print(f"  {note}")
    if auto_token:
        print("  auth        token authentication (RAY_AUTH_MODE=token, token found on this machine)")
    print("follow it with:")
    print(f"  {prefix}ray job logs --follow {job_id} {where}")
    print(f"  {prefix}ray job status {job_id} {where}")
    print(f"  {prefix}ray job stop {job_id} {where}")
    sys.stdout.flush()
    if not args.wait:
        return 0

    try:
        status = follow_logs(client, job_id)
    except KeyboardInterrupt:
        print(f"\nstopped following; the job keeps running (stop it: {prefix}ray job stop {job_id} {where})",
              file=sys.stderr)
        return 130
    from ray.job_submission import JobStatus

    message = ""
    try:
        message = client.get_job_info(job_id).message or ""
    except Exception:  # noqa: BLE001
        pass
    print(f"job {job_id} {status.value}" + (f": {message}" if message else ""))
    return 0 if status == JobStatus.SUCCEEDED else 1
