"""Fitting the actors' CPU requests to the cluster (Ray-free: the sizing rule alone)."""

import pytest

from umpo_dist.config import ResourcesConfig
from umpo_dist.runtime.ray import cluster
from umpo_dist.runtime.ray.cluster import cpu_requests


def resources(**kw) -> ResourcesConfig:
    return ResourcesConfig(**kw)


@pytest.mark.parametrize("cpus", [16, None])
def test_requests_that_fit_and_on_a_cluster_we_did_not_start_are_kept_as_configured(cpus):
    """None: a cluster started elsewhere (perhaps autoscaled): its present size must not shrink the requests."""
    r = resources(num_env_workers=4, worker_cpus=1.0, learner_cpus=2.0)
    fitted = cpu_requests(r, cpus)
    assert (fitted.policy_learner, fitted.model_learner, fitted.env_worker) == (2.0, 2.0, 1.0)


@pytest.mark.parametrize("cpus", [1, 2, 3, 4])
@pytest.mark.parametrize("workers", [1, 2, 4, 8])
def test_on_a_small_machine_everything_fits_and_the_policy_learner_keeps_the_most(cpus, workers):
    r = resources(num_env_workers=workers, worker_cpus=1.0, learner_cpus=1.0)
    fitted = cpu_requests(r, cpus)
    if workers + 2 <= cpus:
        assert fitted.total(workers) == workers + 2
        return
    assert fitted.total(workers) <= cpus
    assert fitted.total(workers) > cpus - 0.01  # the other cores are handed out, not left idle
    assert fitted.policy_learner >= max(fitted.model_learner, fitted.env_worker)
    if cpus >= 2:
        assert fitted.policy_learner == 1.0  # a whole core for the critical path
    # the rest keeps the configured proportions (model learner : env worker = 1 : 1 here)
    assert fitted.model_learner == pytest.approx(fitted.env_worker, abs=1e-4)


def test_the_defaults_on_two_cores_give_the_policy_learner_one_and_share_the_other():
    fitted = cpu_requests(resources(), 2)  # 2 env workers, 1 CPU each asked
    assert fitted.policy_learner == 1.0
    assert fitted.model_learner == fitted.env_worker == pytest.approx(1 / 3, abs=1e-4)


@pytest.mark.parametrize("usable, expected", [({0, 1}, ([0], [1])), ({2, 5, 7}, ([2], [5, 7])),
                                              ({0, 1, 2, 3}, ([0], [1, 2, 3])), ({3}, None), (set(range(8)), None)])
def test_a_small_machine_keeps_one_core_for_the_policy_learner(monkeypatch, usable, expected):
    """2 to 4 usable cores (whatever their numbers, e.g. a cgroup's cpuset): the first is the policy
    learner's, the rest everyone else's; one core, or a bigger machine: no pinning."""
    monkeypatch.setattr(cluster.os, "sched_getaffinity", lambda pid: set(usable), raising=False)
    monkeypatch.setattr(cluster, "_affinity_before_pinning", None)
    assert cluster.core_plan(claim=lambda core: True) == expected  # no other local run keeps a core


def test_the_plan_is_taken_from_the_cores_before_this_process_pinned_itself(monkeypatch):
    """A second local cluster in the same process (a benchmark's next run) plans from the original cores,
    not from the ones `init_ray` left the process on."""
    monkeypatch.setattr(cluster.os, "sched_getaffinity", lambda pid: {1}, raising=False)
    monkeypatch.setattr(cluster, "_affinity_before_pinning", {0, 1})
    assert cluster.core_plan(claim=lambda core: True) == ([0], [1])


@pytest.mark.parametrize("kept, expected", [({0}, ([1], [0])), ({1}, ([0], [1])), ({0, 1}, None)])
def test_a_second_local_run_keeps_a_core_no_other_run_keeps(monkeypatch, kept, expected):
    """Two runs side by side on two cores: the second keeps the other core for its policy learner (its own
    other processes go to the first run's learner's core); with every core kept, it pins nothing."""
    monkeypatch.setattr(cluster, "_affinity_before_pinning", {0, 1})
    assert cluster.core_plan(claim=lambda core: core not in kept) == expected


def test_a_core_is_kept_by_a_lock_the_system_lets_go_with_its_process(tmp_path):
    """`claim_core` fails while another process keeps the core, and succeeds once that process has ended
    (no stale lock to clean up after a crash); this process may claim it again after letting it go."""
    import subprocess
    import sys

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from umpo_dist.runtime.ray import cluster; "
         f"print(cluster.claim_core(0, {str(tmp_path)!r}), flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "True"
        assert not cluster.claim_core(0, str(tmp_path))
        assert cluster.claim_core(1, str(tmp_path))  # another core is free
    finally:
        holder.communicate("")  # the holder ends
    assert cluster.claim_core(0, str(tmp_path))
    cluster.release_cores()
    assert cluster.claim_core(0, str(tmp_path)) and cluster.claim_core(1, str(tmp_path))
    cluster.release_cores()
