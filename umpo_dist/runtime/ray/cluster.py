"""Joining or starting the Ray cluster a run uses, sizing the actors' requests to it, and on a small local
machine keeping a core for the policy learner."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

import ray

from umpo_dist.config import Config, ResourcesConfig

log = logging.getLogger(__name__)
_started: dict[str, float] = {}  # "cpus": the CPU count of the local cluster `init_ray` started in this process;
# "policy_core": the core it keeps for the policy learner (small machines: `core_plan`)
SMALL_MACHINE_CORES = 4
_affinity_before_pinning: set[int] | None = None  # this process's cores before `init_ray` pinned it


def init_ray(cfg: Config, address: str | None = None) -> None:
    """Join `address` (or `RAY_ADDRESS`), else start a local cluster of our own with this machine's
    real CPU count (the actors' requests are fitted to it: `cpu_requests`)."""
    global _affinity_before_pinning
    if ray.is_initialized():
        return
    _started.clear()
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
        return
    # A local run starts the dashboard bound to loopback only (Ray prints its address).
    # address="local": a new cluster of our own, even if another one runs on this machine.
    cpus = os.cpu_count() or 1
    plan = core_plan() if cfg.resources.pin_policy_core else None
    if plan is not None:  # Ray's daemons and every worker process inherit this: all but the policy learner's core
        _affinity_before_pinning = _affinity_before_pinning or os.sched_getaffinity(0)
        os.sched_setaffinity(0, plan[1])
        log.info("small machine: core %d kept for the policy learner, cores %s for the rest", plan[0][0], plan[1])
    ray.init(address="local", num_cpus=cpus, dashboard_host="127.0.0.1", include_dashboard=True)
    _started["cpus"] = cpus
    if plan is not None:
        _started["policy_core"] = plan[0][0]


def core_plan(max_cores: int = SMALL_MACHINE_CORES, claim=None) -> tuple[list[int], list[int]] | None:
    """On a machine with 2 to `max_cores` usable cores (Linux): (the policy learner's core, the others);
    else None. On a bigger machine the learner's CPU request already keeps it from being crowded.

    The core is the first one no other local run keeps (`claim_core`, a lock held while this process lives or
    until its next plan): two runs side by side on two cores keep one each, each run's other processes on the
    other's core, not both learners on the first core at half speed each. None if every core is kept."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    cores = sorted(_affinity_before_pinning or os.sched_getaffinity(0))
    if not 2 <= len(cores) <= max_cores:
        return None
    claim = claim or claim_core
    release_cores()  # this process's earlier cluster is gone: its core is free again
    for core in cores:
        if claim(core):
            return [core], [c for c in cores if c != core]
    log.warning("every core (%s) is kept for another local run's policy learner: this run pins none", cores)
    return None


_core_locks: dict[int, int] = {}  # core -> the open lock file this process keeps it with


def claim_core(core: int, lock_dir: str | None = None) -> bool:
    """Keep `core` for this process's policy learner unless another process on this machine keeps it: an
    exclusive lock on a file named after the core, which the system lets go when the process ends."""
    import fcntl
    import tempfile

    path = os.path.join(lock_dir or tempfile.gettempdir(), f"umpo-dist-policy-core-{core}.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    _core_locks[core] = fd
    return True


def release_cores() -> None:
    """Let go of the cores this process keeps (`claim_core`)."""
    while _core_locks:
        os.close(_core_locks.popitem()[1])


def policy_learner_cores() -> list[int] | None:
    """The core the local cluster `init_ray` started keeps for the policy learner, if it keeps one."""
    core = _started.get("policy_core") if ray.is_initialized() else None
    return [int(core)] if core is not None else None


def pin_to(cores: list[int] | None) -> None:
    """Inside an actor: run on these cores only (None: wherever it was started)."""
    if cores:
        os.sched_setaffinity(0, cores)


def local_cluster_cpus() -> float | None:
    """The CPUs of the local cluster `init_ray` started (and is still up), else None: a cluster someone
    else started may be autoscaled (KubeRay, the cluster launcher), so its present size says nothing."""
    return _started.get("cpus") if ray.is_initialized() else None


@dataclass(frozen=True)
class CpuRequests:
    policy_learner: float
    model_learner: float
    env_worker: float  # each

    def total(self, workers: int) -> float:
        return self.policy_learner + self.model_learner + workers * self.env_worker


def cpu_requests(r: ResourcesConfig, cpus: float | None) -> CpuRequests:
    """The CPUs each actor asks Ray for, fitted to a local cluster of `cpus` CPUs (None: as configured).

    Requests that fit are kept as configured, and so are all of them on a cluster we did
    not start (`cpus` None): there Ray, and its autoscaler, place the actors by them. On a machine too small for them, the policy learner (every run's critical
    path) keeps a whole core (its configured share, at most 1 when only 2 cores
    exist), and the model learner and the env workers share the rest in proportion to
    their configured requests, so all of them start and the other cores stay busy.
    """
    asked = CpuRequests(r.learner_cpus, r.learner_cpus, r.worker_cpus)
    if cpus is None or asked.total(r.num_env_workers) <= cpus + 1e-9:
        return asked
    policy = min(r.learner_cpus, max(cpus / 2, min(1.0, cpus - 0.5)))
    scale = (cpus - policy) / (r.learner_cpus + r.num_env_workers * r.worker_cpus)
    down = lambda x: math.floor(x * 1e4) / 1e4  # Ray's resource granularity: the parts must not add up past `cpus`
    fitted = CpuRequests(down(policy), down(r.learner_cpus * scale), down(r.worker_cpus * scale))
    log.warning("the run asks for %.2f CPUs and the cluster has %g: policy learner %.2f, model learner %.2f, "
                "%d env workers %.2f each", asked.total(r.num_env_workers), cpus, fitted.policy_learner,
                fitted.model_learner, r.num_env_workers, fitted.env_worker)
    return fitted


def assigned_cpus(default: float = 1.0) -> float:
    """Inside an actor: the CPUs Ray assigned to it (its fitted request), else `default`."""
    if not ray.is_initialized():
        return default
    return ray.get_runtime_context().get_assigned_resources().get("CPU", default)


def learner_gpus(setting: str) -> float:
    """GPUs per learner: 'auto' shares what the cluster has between the two learners (at most 1 each)."""
    if setting != "auto":
        return float(setting)
    total = ray.cluster_resources().get("GPU", 0.0)
    return min(1.0, total / 2) if total >= 1 else 0.0
