"""The weight store keeps the newest version of each weight set; readers get it only when it changed."""

from umpo_dist.runtime.weight_store import WeightStore


def test_readers_get_weights_only_when_a_newer_version_exists():
    store = WeightStore()
    assert store.latest("policy") is None
    assert store.publish("policy", 3, "w3") == 3
    assert store.latest("policy", -1) == (3, "w3")
    assert store.latest("policy", 3) is None  # unchanged: nothing to fetch
    assert store.publish("policy", 2, "w2") == 3  # an older publication never replaces a newer one
    assert store.latest("policy", 2) == (3, "w3")
    store.publish("policy", 5, "w5")
    assert store.latest("policy", 3) == (5, "w5")
    assert store.latest("model") is None  # weight sets are independent
