"""Two Ray nodes on one machine: env workers spread over both and the run completes."""

import pytest
import ray
from ray.cluster_utils import Cluster

from test_distributed import FAST, ip_config
from test_faults import RUN, finished_consistently
from umpo_dist.ops.train import train

pytestmark = pytest.mark.e2e


def test_env_workers_land_on_both_nodes(workdir):
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    cluster.add_node(num_cpus=2)
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        cfg = ip_config(
            *FAST,
            "resources.num_env_workers=2", "resources.worker_cpus=1", "resources.learner_cpus=1",
            "train.total_env_steps=800", "train.random_steps=300", "train.model_warmup_updates=50",
            "train.eval_every=800", "env.eval_episodes=1",
        )
        summary = train(cfg, progress=False)
        assert summary["env_steps"] == 800
        assert len(summary["worker_nodes"]) == 2
        alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        assert set(summary["worker_nodes"]) <= alive
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_lost_node_actors_are_rescheduled(workdir):
    # The head holds the learners (0.5 CPU each) and one env worker (1 CPU): full. The other worker
    # can only go to the extra node. When that node goes, a new one joins, where it is rescheduled.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    extra = cluster.add_node(num_cpus=1)
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        removed = []

        def remove_node(driver):
            if not removed and driver.schedule.env_steps >= 800:
                assert extra.node_id in driver.worker_nodes.values()  # a worker did run there
                cluster.add_node(num_cpus=1)
                cluster.remove_node(extra)
                removed.append(driver.schedule.env_steps)

        summary = train(ip_config(*RUN, "resources.worker_cpus=1"), progress=False, callbacks=[remove_node])
        assert removed
        assert summary["failures"].get("worker"), "the env worker on the removed node should have failed"
        alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        assert extra.node_id not in alive
        finished_consistently(summary)
    finally:
        ray.shutdown()
        cluster.shutdown()
