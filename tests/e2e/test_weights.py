"""Weight exchange and prefetching on real Ray: `WeightSubscriber.poll()/wait()` and the learners' `Prefetcher`."""

import threading
import time

import pytest
import ray
import torch

from umpo_dist.runtime.ray.learners import Prefetcher
from umpo_dist.runtime.ray.weights import WeightStoreActor, WeightSubscriber, publish
from umpo_dist.runtime.weight_store import WeightStore

pytestmark = pytest.mark.e2e


def weights(value: float) -> dict:
    return {"layer.weight": torch.full((3, 2), value), "layer.bias": torch.full((3,), -value)}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def poll_answered(sub: WeightSubscriber):
    """`sub.poll()` at a moment the store has answered the request poll keeps in flight.

    `poll` never waits, so whether one call sees the answer depends on timing; this waits for
    the answer first (with `ray.wait`, outside `poll`), so that the test does not.
    """
    if sub._pending is None:
        result = sub.poll()  # sends the request, and takes the answer if it is already there
        if result is not None or sub._pending is None:
            return result
    ray.wait([sub._pending])
    return sub.poll()


def test_poll_returns_each_newer_version_once(local_ray):
    store = WeightStoreActor.remote()
    sub = WeightSubscriber(store, "policy")
    # Nothing published: None, however often it asks.
    for _ in range(3):
        assert poll_answered(sub) is None and sub.version == -1

    publish(store, "policy", 1, weights(1.0))
    got = poll_answered(sub)
    assert got is not None and same(got, weights(1.0)) and sub.version == 1
    # The same version is never transferred twice.
    for _ in range(3):
        assert poll_answered(sub) is None and sub.version == 1

    publish(store, "policy", 5, weights(5.0))
    got = poll_answered(sub)
    assert same(got, weights(5.0)) and sub.version == 5
    assert poll_answered(sub) is None
    # An older version published late (a restarted learner) does not replace the newer one.
    publish(store, "policy", 3, weights(3.0))
    assert poll_answered(sub) is None and sub.version == 5
    # Other weight sets are separate.
    publish(store, "model", 9, weights(9.0))
    assert poll_answered(sub) is None
    assert same(WeightSubscriber(store, "model").wait(timeout_s=60), weights(9.0))


def test_wait_blocks_until_a_version_is_published_and_times_out_otherwise(local_ray):
    store = WeightStoreActor.remote()
    sub = WeightSubscriber(store, "model")
    assert ray.get(store.latest.remote("model", -1)) is None
    publisher = threading.Timer(0.5, publish, (store, "model", 2, weights(2.0)))
    publisher.start()
    try:
        got = sub.wait(timeout_s=60)  # returns only once version 2 exists
    finally:
        publisher.join()
    assert same(got, weights(2.0)) and sub.version == 2
    # Nothing newer than what it holds comes: a TimeoutError naming the weight set.
    with pytest.raises(TimeoutError, match="'model'"):
        sub.wait(timeout_s=0.3)
    # Already newer in the store: returns at once with it; then poll has nothing more.
    publish(store, "model", 4, weights(4.0))
    assert same(sub.wait(timeout_s=60), weights(4.0)) and sub.version == 4
    assert poll_answered(sub) is None


def test_fetch_asks_now_where_poll_would_take_an_answer_given_before_the_newer_version(local_ray):
    """`poll` keeps one request in flight, so its answer can predate what the store holds now; `fetch` asks
    afresh (a learner's or worker's call start, a round's first steps), and no answer to an older question
    ever takes a subscriber back to an older version."""
    store = WeightStoreActor.remote()
    sub = WeightSubscriber(store, "model")
    publish(store, "model", 1, weights(1.0))
    assert sub.version == -1 and same(poll_answered(sub), weights(1.0))
    ray.wait([sub._pending])  # "anything newer than 1?" answered: no
    publish(store, "model", 2, weights(2.0))
    assert sub.fetch() is not None and sub.version == 2  # poll would have said None here, from that answer
    assert poll_answered(sub) is None and sub.version == 2

    # An answer in flight ("newer than 2": 3) overtaken by a fetch of 4 is not taken afterwards.
    sub._pending = store.latest.remote("model", 2)
    publish(store, "model", 3, weights(3.0))
    ray.wait([sub._pending])
    publish(store, "model", 4, weights(4.0))
    assert same(sub.fetch(), weights(4.0)) and sub.version == 4
    assert poll_answered(sub) is None and sub.version == 4
    stale = sub._take(ray.get(store.latest.remote("model", 2)))  # an answer to "newer than 2", taken late
    assert stale is None and sub.version == 4


@pytest.fixture
def sequencer(local_ray):
    class Sequencer:  # defined here, so that it travels to the worker by value
        """Answers each request with (its arrival number since the actor started, the caller's tag)."""

        def __init__(self):
            self.arrived = 0

        def next(self, tag, delay_s=0.0):
            self.arrived += 1
            time.sleep(delay_s)
            return self.arrived, tag

        def many(self, tag, k):
            self.arrived += 1
            return [(self.arrived, tag, i) for i in range(k)]

        def count(self):
            return self.arrived

    return ray.remote(max_restarts=-1)(Sequencer).remote()


def test_prefetcher_keeps_one_request_in_flight_and_answers_in_order(sequencer):
    issued = []

    def request():
        issued.append(len(issued))
        return sequencer.next.remote(issued[-1])

    prefetch = Prefetcher(request, "sequence")
    assert issued == []  # nothing is asked before the first `next()`
    for k in range(5):
        # The answer to the k-th request, in order; the (k+1)-th is already asked for.
        assert prefetch.next() == (k + 1, k)
        assert len(issued) == k + 2
    assert ray.get(sequencer.count.remote()) == 6  # five answered, one in flight (actor calls run in order)


def test_batched_prefetcher_hands_out_each_answer_item_by_item_in_order(sequencer):
    """`batched`: every answer is a list (`ReplayActor.many`); one request is in flight while it is used up."""
    issued = []

    def request():
        issued.append(len(issued))
        return sequencer.many.remote(issued[-1], 3)

    prefetch = Prefetcher(request, "sequence", batched=True)
    got = [prefetch.next() for _ in range(7)]
    assert [(tag, i) for _, tag, i in got] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0)]
    assert issued == [0, 1, 2, 3]  # three answers used, the fourth asked for ahead


def test_a_prefetchers_last_answer_leaves_nothing_ahead(sequencer):
    """`next(last=True)` (a round's last update) asks nothing ahead and keeps nothing: the next `next()` is
    answered by a request asked then, after whatever changed meanwhile (the next round's data)."""
    issued = []

    def request():
        issued.append(len(issued))
        return sequencer.next.remote(issued[-1])

    prefetch = Prefetcher(request, "sequence")
    assert [prefetch.next(), prefetch.next(last=True)] == [(1, 0), (2, 1)]
    assert issued == [0, 1]  # the second answer was the prefetched one; nothing asked after it
    assert prefetch.next() == (3, 2) and issued == [0, 1, 2, 3]

    def request_many():
        issued.append(len(issued))
        return sequencer.many.remote(issued[-1], 3)

    issued.clear()
    batched = Prefetcher(request_many, "sequence", batched=True)
    got = [batched.next(), batched.next(last=True), batched.next()]
    # The first answer's third item and the request asked ahead with it (tag 1) are dropped unused.
    assert [(tag, i) for _, tag, i in got] == [(0, 0), (0, 1), (2, 0)] and issued == [0, 1, 2, 3]


def test_replay_many_answers_k_samples_in_one_call(local_ray):
    import numpy as np

    from umpo_dist.runtime.ray.replay_actor import ReplayActor

    replay = ReplayActor.remote(2, 1, 100, 3, "linear", 0.0, 0)
    m = 50
    ray.get(replay.insert.remote({"obs": np.zeros((m, 2), np.float32), "action": np.zeros((m, 1), np.float32),
                                  "reward": np.arange(m, dtype=np.float32), "next_obs": np.zeros((m, 2), np.float32),
                                  "terminated": np.zeros(m, np.float32), "truncated": np.zeros(m, np.float32)}))
    batches = ray.get(replay.many.remote(4, "sample", 16))
    assert len(batches) == 4 and all(b["reward"].shape == (16,) for b in batches)
    assert len({b["reward"].tobytes() for b in batches}) == 4  # four draws, not one repeated
    with pytest.raises(ValueError, match="'insert' is not a sampling method"):
        ray.get(replay.many.remote(2, "insert", {}))


def test_prefetcher_drops_the_prefetch_of_a_dead_actor_and_asks_the_restarted_one(sequencer):
    issued = []

    def request():
        tag = len(issued)
        issued.append(tag)
        # The fourth request (tag 3, prefetched by the third `next()`) is still running when the actor dies.
        return sequencer.next.remote(tag, 600.0 if tag == 3 else 0.0)

    prefetch = Prefetcher(request, "sequence")
    before = [prefetch.next() for _ in range(3)]
    assert before == [(1, 0), (2, 1), (3, 2)] and issued == [0, 1, 2, 3]
    ray.kill(sequencer, no_restart=False)
    after = [prefetch.next() for _ in range(3)]
    tags = [tag for _, tag in after]
    # The prefetched request died with the actor: it is never answered, and neither is the one sent
    # while the actor was going down; the next answer is to a request asked again (call_with_retry) ...
    assert 3 not in tags and tags[0] >= 5, (after, issued)
    # ... by the restarted actor (its arrival count started again; the old one would say tag + 1) ...
    assert all(arrived <= tag for arrived, tag in after), after
    # ... and answers still come in the order asked, each request at most once, one more in flight.
    assert tags == sorted(set(tags)) and set(tags) <= set(issued) and len(issued) == tags[-1] + 2, (after, issued)


def replay_with_data(cfg, n: int = 200):
    """The config's env spec, and a replay actor holding `n` random transitions of that shape."""
    import numpy as np

    from umpo_dist.envs.spec import env_spec
    from umpo_dist.runtime.ray.replay_actor import ReplayActor

    spec = env_spec(cfg.env.id)
    replay = ReplayActor.remote(spec.obs_dim, spec.action_dim, 1000, cfg.model.ensemble_size, "linear", 0.1, 0)
    rng = np.random.default_rng(0)
    f32 = np.float32
    chunk = {"obs": rng.normal(size=(n, spec.obs_dim)).astype(f32), "action": rng.uniform(-1, 1, (n, spec.action_dim)).astype(f32),
             "reward": rng.normal(size=n).astype(f32), "next_obs": rng.normal(size=(n, spec.obs_dim)).astype(f32),
             "terminated": np.zeros(n, bool), "truncated": np.zeros(n, bool)}
    assert ray.get(replay.insert_chunk.remote(chunk, "test", 0)) == n
    return spec, replay


def test_model_realism_the_mnm_policy_learner_publishes_its_classifier_and_the_model_learner_trains_against_it(local_ray):
    """`mnm.model_realism` on Ray: no realism term before a classifier exists; once the policy learner's call has
    published one, the model learner's next call takes it (waited for) and trains against it."""
    from test_distributed import FAST, ip_config
    from umpo_dist.runtime.ray.learners import ModelLearnerActor, PolicyLearnerActor

    cfg = ip_config(*FAST, "policy.objective=mnm", "mnm.model_realism=0.5", "mnm.batch_size=32", "mnm.hidden_size=16")
    spec, replay = replay_with_data(cfg)
    store = WeightStoreActor.remote()
    model_learner = ModelLearnerActor.options(num_cpus=0.5).remote(cfg, spec, replay, store)
    before = ray.get(model_learner.train.remote(3))
    assert "model/realism_loss" not in before["metrics"] and "model/train_nll" in before["metrics"]
    policy_learner = PolicyLearnerActor.options(num_cpus=0.5).remote(cfg, spec, replay, store)
    assert ray.get(policy_learner.train.remote(4))["updates"] == 4
    assert ray.get(store.latest.remote("classifier", -1))[0] == 4
    after = ray.get(model_learner.train.remote(3))
    assert after["metrics"]["model/realism_loss"] > 0


@ray.remote(num_cpus=0)
class RecordingStore(WeightStore):
    """The weight store's protocol, noting every publication it receives."""

    def __init__(self):
        super().__init__()
        self.received = []

    def publish(self, name, version, weights):
        self.received.append((name, version))
        return super().publish(name, version, [ray.put(weights)])

    def log(self):
        return self.received


def test_learners_publish_every_publish_every_updates_within_a_call(local_ray):
    """Env workers act with the newest published policy and the policy learner imagines with the newest
    model, so a 30-update call with `publish_every=10` must publish versions 10 and 20 on its way (not
    waited for) and 30 at its end, in that order, from either learner (the policy learner version 0 first, as
    it starts)."""
    from test_distributed import FAST, ip_config
    from umpo_dist.runtime.ray.learners import ModelLearnerActor, PolicyLearnerActor

    cfg = ip_config(*FAST, "train.publish_every=10")
    spec, replay = replay_with_data(cfg)
    store = RecordingStore.remote()
    model_learner = ModelLearnerActor.options(num_cpus=0.5).remote(cfg, spec, replay, store)
    assert ray.get(model_learner.train.remote(30))["updates"] == 30
    learner = PolicyLearnerActor.options(num_cpus=0.5).remote(cfg, spec, replay, store)

    result = ray.get(learner.train.remote(30))
    assert result["updates"] == 30 and result["busy_s"] > 0 and 0 <= result["data_wait_s"] <= result["busy_s"]
    assert result["model_version"] == 30
    log = ray.get(store.log.remote())
    # The policy learner's initial policy as version 0 when it starts (workers act with it after the random steps).
    for name, first in (("model", []), ("policy", [0])):
        assert [version for who, version in log if who == name] == [*first, 10, 20, 30], (name, log)
    assert ray.get(store.latest.remote("policy", -1))[0] == 30


def test_policy_learner_takes_a_newer_model_within_a_call(local_ray):
    """The model published while the policy learner is between calls reaches it within its next call, at one
    of its looks every `publish_every` updates, not only at the start of the call after (where a look sent at
    the start of the call would first be answered)."""
    from test_distributed import FAST, ip_config
    from umpo_dist.models.ensemble import build_ensemble
    from umpo_dist.runtime.ray.learners import PolicyLearnerActor

    cfg = ip_config(*FAST, "train.publish_every=5")
    spec, replay = replay_with_data(cfg)
    store = RecordingStore.remote()
    ray.get(store.publish.remote("model", 1, build_ensemble(spec, cfg.model).state_dict()))
    learner = PolicyLearnerActor.options(num_cpus=0.5).remote(cfg, spec, replay, store)
    assert ray.get(learner.train.remote(10))["model_version"] == 1
    ray.get(store.publish.remote("model", 2, build_ensemble(spec, cfg.model).state_dict()))
    # 19 looks in 100 updates: the store answers the first within milliseconds
    assert ray.get(learner.train.remote(100))["model_version"] == 2


def test_policy_learner_starts_each_call_with_the_model_published_before_it(local_ray):
    """With rounds the policy learner's call follows the round's last model publication, and each of its updates
    must use that model: the call asks the store at its start rather than take the answer to a look sent during
    the call before (which said "nothing newer"). A one-update call makes no look within it."""
    from test_distributed import FAST, ip_config
    from umpo_dist.models.ensemble import build_ensemble
    from umpo_dist.runtime.ray.learners import PolicyLearnerActor

    cfg = ip_config(*FAST, "train.publish_every=5")
    spec, replay = replay_with_data(cfg)
    store = RecordingStore.remote()
    ray.get(store.publish.remote("model", 1, build_ensemble(spec, cfg.model).state_dict()))
    learner = PolicyLearnerActor.options(num_cpus=0.5).remote(cfg, spec, replay, store)
    assert ray.get(learner.train.remote(7))["model_version"] == 1  # a look at update 5 is in flight, then answered
    time.sleep(0.5)
    for version in (2, 3):
        ray.get(store.publish.remote("model", version, build_ensemble(spec, cfg.model).state_dict()))
        assert ray.get(learner.train.remote(1))["model_version"] == version


def test_env_worker_asks_for_the_policy_when_the_learners_let_it_go_on(local_ray):
    """A worker held back by the learners (a round's end) asks the store for the policy, and waits for the
    answer, before its first step after the hold, as at the start of each call."""
    import numpy as np

    from test_distributed import FAST, ip_config
    from umpo_dist.envs.spec import env_spec
    from umpo_dist.runtime.admission import Grant
    from umpo_dist.runtime.ray import env_worker

    cfg = ip_config(*FAST)
    spec = env_spec(cfg.env.id)
    worker = env_worker.EnvWorker.options(num_cpus=0.25).remote(cfg, spec, 0, None, WeightStoreActor.remote())

    def run_with(self, grants: list) -> list:
        events = []
        answers = iter(grants)
        self._ask = lambda n: ray.put(next(answers))

        class Replay:
            class release:
                @staticmethod
                def remote(stream):
                    events.append("release")

        class Sender:
            acknowledged, total = 0, 0

            def send(self, batch):
                events.append(("send", len(batch["reward"])))

            def flush(self):
                pass

        self.replay, self.sender = Replay(), Sender()
        self.policy_weights.version = 0  # it holds a policy: it acts with it
        self.policy_weights.fetch = lambda: events.append("fetch")
        self.policy_weights.poll = lambda: events.append("poll")
        self.collector.collect = lambda n, act: (events.append(("collect", n)) or {"reward": np.zeros(n)}, [])
        self.run(100, max_seconds=30.0)
        return events

    # Held back twice at the call's start (a worker that has sent something ends its call instead), then two
    # chunks: one more fetch, before the first of them only.
    grants = [Grant(0, False), Grant(0, False), Grant(4, False), Grant(3, False), Grant(0, False, closed=True)]
    events = ray.get(worker.__ray_call__.remote(run_with, grants))
    assert events == ["fetch", "fetch", ("collect", 4), ("send", 4), ("collect", 3), ("send", 3), "release"], events


@pytest.mark.parametrize("train_every, longest", [(10, 0.02), (100, 0.25)])
def test_a_held_back_worker_s_pauses_grow_across_calls_to_the_mode_s_longest(local_ray, train_every, longest):
    """While the learners hold it back, a worker's pauses between asks double from 1 ms up to 20 ms for
    continuous learners and 250 ms in rounds (`train.train_every` 100 here: a round's updates take seconds);
    a new call goes on from the pause it reached, and a granted chunk starts them again at 1 ms."""
    import numpy as np

    from test_distributed import FAST, ip_config
    from umpo_dist.envs.spec import env_spec
    from umpo_dist.runtime.admission import Grant
    from umpo_dist.runtime.ray import env_worker

    cfg = ip_config(*FAST, f"train.train_every={train_every}", "resources.ratio_tolerance=20")
    spec = env_spec(cfg.env.id)
    worker = env_worker.EnvWorker.options(num_cpus=0.25).remote(cfg, spec, 0, None, WeightStoreActor.remote())

    def pauses(self, calls: list) -> list:
        import time as clock

        slept = []
        clock.sleep = slept.append  # this actor's process only
        self.replay = type("Replay", (), {"release": type("R", (), {"remote": staticmethod(lambda stream: None)})})()
        self.sender = type("Sender", (), {"acknowledged": 0, "total": 0, "send": lambda s, b: None,
                                          "flush": lambda s: None})()
        self.policy_weights.fetch = lambda: None
        self.collector.collect = lambda n, act: ({"reward": np.zeros(n)}, [])
        out = []
        for grants in calls:
            answers = iter(grants)
            self._ask = lambda n: ray.put(next(answers))
            self.run(100, max_seconds=30.0)
            out.append(slept[:])
            slept.clear()
        return out

    closed, wait = Grant(0, False, closed=True), Grant(0, False)
    calls = [[wait] * 9 + [closed], [wait] * 2 + [Grant(4, False), wait], [wait, closed]]
    first, second, third = ray.get(worker.__ray_call__.remote(pauses, calls))
    doubling = [min(0.001 * 2 ** k, longest) for k in range(9)]  # the longest reached by the last
    assert first == pytest.approx(doubling)
    assert second == pytest.approx([longest, longest])  # goes on from where the last call left off
    assert third == pytest.approx([0.001])  # the grant between started them again


def test_env_worker_looks_for_policy_weights_by_the_clock_not_every_step(local_ray):
    """Within a call a worker polls the weight store at most every `WEIGHT_POLL_S`, however many steps it takes
    meanwhile: with steps 4 ms apart on its clock and 10 ms between looks, every third step looks (the first at
    once), so 100 steps look 34 times, 12 ms apart."""
    import numpy as np

    from test_distributed import FAST, ip_config
    from umpo_dist.envs.spec import env_spec
    from umpo_dist.runtime.ray import env_worker

    assert env_worker.WEIGHT_POLL_S == 0.01
    cfg = ip_config(*FAST)
    spec = env_spec(cfg.env.id)
    worker = env_worker.EnvWorker.options(num_cpus=0.25).remote(cfg, spec, 0, None, WeightStoreActor.remote())

    def steps_and_looks(self, steps: int, dt: float) -> list:
        now, looks = [0.0], []
        self._clock = lambda: now[0]
        self.policy_weights.poll = lambda: looks.append(now[0])  # None: nothing newer
        for k in range(1, steps + 1):
            now[0] = k * dt
            assert self._act(np.zeros((1, spec.obs_dim), np.float32)).shape == (1, spec.action_dim)
        return looks

    looks = ray.get(worker.__ray_call__.remote(steps_and_looks, 100, 0.004))
    assert len(looks) == 34 and looks[0] == pytest.approx(0.004)
    assert np.allclose(np.diff(looks), 0.012)
