import os

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "1")
os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh working directory with its own MLflow SQLite store."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    return tmp_path


@pytest.fixture(scope="module")
def local_ray():
    """A real local Ray cluster for one test module, always a new one of its own.

    `address="local"`: with no address, `ray.init` joins any cluster it finds alive on the
    machine (one an earlier test is still tearing down), and then refuses `num_cpus`.
    """
    import ray

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
