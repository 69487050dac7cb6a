"""Several Ray nodes on one machine: env workers spread over them, a node is lost, and the run completes."""

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
    # Three nodes. The head holds the learners (0.5 CPU each) and one env worker (1 CPU): full. The
    # two other workers can only go to the two other nodes, one each. When the extra node goes, a new
    # one joins, where its worker is rescheduled; nothing a worker had acknowledged is lost.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    stable = cluster.add_node(num_cpus=1)
    extra = cluster.add_node(num_cpus=1)
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        removed, lost, added = [], [], []

        def remove_node_under_a_call(driver):
            """Once the worker on the extra node has reported from there: right after the driver puts a
            call in flight to it, remove the extra node and add another. Whether that call fails (the
            driver counts a failure) or finishes first depends on timing; either way the worker is
            restarted on the new node and says so with its next answer."""
            if "_schedule_workers" in vars(driver):
                return
            on_extra = [i for i, node in driver.worker_nodes.items() if node == extra.node_id]
            if not on_extra:
                return
            schedule = driver._schedule_workers

            def schedule_then_remove():
                schedule()
                if not removed and driver._calls("worker", on_extra[0]):
                    cluster.remove_node(extra)
                    added.append(cluster.add_node(num_cpus=1))
                    removed.append(driver.schedule.env_steps)
                    lost.append(on_extra[0])

            driver._schedule_workers = schedule_then_remove
            holder.append(driver)

        holder = []
        summary = train(ip_config(*RUN, "resources.worker_cpus=1", "resources.num_env_workers=3"), progress=False,
                        callbacks=[remove_node_under_a_call])
        assert removed
        print("failures:", summary["failures"], "recoveries:", summary["recoveries"])
        assert summary["recoveries"].get("worker"), "the env worker of the removed node should have come back"
        alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        assert extra.node_id not in alive
        # The lost worker was rescheduled on the node that joined, and collected there.
        assert holder[0].worker_nodes[lost[0]] == added[0].node_id
        assert set(holder[0].worker_nodes.values()) == {cluster.head_node.node_id, stable.node_id, added[0].node_id}
        # Every transition a worker reported acknowledged is in the replay (it may hold more: chunks
        # acknowledged to a worker that died before it could report them).
        assert 0 < summary["acknowledged_in_session"] <= summary["env_steps"]
        finished_consistently(summary)
    finally:
        ray.shutdown()
        cluster.shutdown()
