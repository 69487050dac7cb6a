"""Runtimes: the inline runner (one process) and the Ray driver, over one shared `Schedule`.

Both are runners: `run(checkpoint, progress)`, `state()`/`load_state(...)`, `drain()`,
`checkpoint_written(replay_total)`, `request_stop()`, `callbacks`, `on_best` and a `schedule`
holding the counters, evaluations and episodes. `make_runner` picks one by `cfg.runtime`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol

from umpo_dist.config import Config
from umpo_dist.envs.spec import EnvSpec
from umpo_dist.runtime.schedule import Schedule

LogFn = Callable[[dict, int], None]
BestFn = Callable[[dict, int, float], None]  # (policy weights, env step, evaluation return)


class Runner(Protocol):
    schedule: Schedule
    devices: dict[str, str]  # role -> the torch device it computes on
    callbacks: list[Callable[["Runner"], None]]  # called with the runner once per scheduling round
    on_best: BestFn | None  # called with the evaluated policy whenever an evaluation beats all earlier ones

    def run(self, checkpoint: Callable[["Runner"], object] | None = None, progress=None) -> dict: ...

    def state(self) -> dict:
        """`{"replay", "model", "policy", "counters"}`: a checkpoint's contents, consistent."""

    def load_state(self, replay_state: dict, model_state: dict, policy_state: dict, counters: dict) -> None: ...

    def drain(self) -> None:
        """Finish the work in flight, so that `state()` is consistent (after an interrupt)."""

    def checkpoint_written(self, replay_total: int) -> None: ...

    def request_stop(self) -> None: ...


def make_runner(cfg: Config, spec: EnvSpec, run_dir: Path, log: LogFn, address: str | None = None) -> Runner:
    """The runtime `cfg.runtime` names; `ray` joins `address` or starts a local Ray cluster."""
    if cfg.runtime == "inline":
        from umpo_dist.runtime.inline import InlineRunner

        return InlineRunner(cfg, log)
    from umpo_dist.runtime.ray.cluster import init_ray
    from umpo_dist.runtime.ray.driver import Driver

    init_ray(cfg, address)
    return Driver(cfg, spec, run_dir, log)
