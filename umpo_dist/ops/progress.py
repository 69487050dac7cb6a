"""Progress display: a one-line bar on a terminal, plain log lines otherwise."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total_steps: int, stream=None, log_every_s: float = 10.0):
        self.total = total_steps
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.log_every_s = log_every_s
        self._last = 0.0

    def update(self, env_steps: int, eval_return: float | None, rates: dict) -> None:
        now = time.monotonic()
        if not self.tty and now - self._last < self.log_every_s:
            return
        self._last = now
        frac = min(1.0, env_steps / self.total)
        ret = f"{eval_return:.1f}" if eval_return is not None else "-"
        text = (
            f"{env_steps}/{self.total} env steps | eval return {ret} | "
            f"{rates.get('rate/env_steps_per_s', 0):.0f} steps/s, "
            f"{rates.get('rate/model_updates_per_s', 0):.1f} model upd/s, "
            f"{rates.get('rate/policy_updates_per_s', 0):.1f} policy upd/s"
        )
        if self.tty:
            bar = "#" * int(30 * frac) + "." * (30 - int(30 * frac))
            self.stream.write(f"\r[{bar}] {text}\033[K")
        else:
            self.stream.write(f"[umpo] {text}\n")
        self.stream.flush()

    def note(self, text: str) -> None:
        """A line of its own that stays on screen (a warning), without breaking the bar."""
        self.stream.write(("\r\033[K" if self.tty else "") + f"[umpo] {text}\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
