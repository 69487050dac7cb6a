"""Joining or starting the Ray cluster a run uses, and sizing the learners' GPU requests."""

from __future__ import annotations

import logging
import os

import ray

from umpo_dist.config import Config

log = logging.getLogger(__name__)


def init_ray(cfg: Config, address: str | None = None) -> None:
    """Join `address` (or `RAY_ADDRESS`), else start a local cluster of our own sized for the run."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
        return
    r = cfg.resources
    needed = r.num_env_workers * r.worker_cpus + 2 * r.learner_cpus
    cores = os.cpu_count() or 1
    if needed > cores:
        log.warning("the run asks for %.1f CPUs and this machine has %d: actors will share cores", needed, cores)
    # A local run starts the dashboard bound to loopback only (Ray prints its address).
    # address="local": a new cluster of our own, even if another one runs on this machine.
    ray.init(address="local", num_cpus=max(cores, int(needed + 0.999)), dashboard_host="127.0.0.1",
             include_dashboard=True)


def learner_gpus(setting: str) -> float:
    """GPUs per learner: 'auto' shares what the cluster has between the two learners (at most 1 each)."""
    if setting != "auto":
        return float(setting)
    total = ray.cluster_resources().get("GPU", 0.0)
    return min(1.0, total / 2) if total >= 1 else 0.0
