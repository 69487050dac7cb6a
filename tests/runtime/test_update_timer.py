"""`UpdateTimer`: the seconds inside gradient updates, per learner, as both runtimes count them."""

from pytest import approx

from umpo_dist.runtime.update_timer import UpdateTimer


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_timer_counts_each_update_under_its_role_and_hands_totals_over_once():
    clock = FakeClock()
    timer = UpdateTimer(clock)

    def update(seconds):  # an update that takes `seconds` on the fake clock
        clock.now += seconds
        return {"loss": seconds}

    assert timer.run("policy_learner", update, 0.030) == {"loss": 0.030}  # the update's own result
    timer.run("policy_learner", update, 0.050)
    timer.run("model_learner", update, 0.010)
    assert timer.ms_per_update() == approx({"policy_learner": 40.0, "model_learner": 10.0})

    # An actor hands its totals over per call; the driver adds what each call reports.
    driver = UpdateTimer()
    driver.add("policy_learner", *timer.take("policy_learner"))
    assert timer.take("policy_learner") == (0.0, 0)  # taken: the next call starts from nothing
    timer.run("policy_learner", update, 0.020)
    driver.add("policy_learner", *timer.take("policy_learner"))
    assert driver.count["policy_learner"] == 3
    assert driver.ms_per_update() == approx({"policy_learner": 100.0 / 3})
    assert timer.ms_per_update() == approx({"model_learner": 10.0})  # a role with nothing timed is left out
