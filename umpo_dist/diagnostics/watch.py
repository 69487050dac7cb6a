"""The warning a user notices: the model's imagined return keeps beating the real one.

A single evaluation with a large gap can be noise (few episodes, a fresh model); the
warning fires when the imagined return exceeds the real one by more than `margin` (a
share of the real return's magnitude) for `after` evaluations in a row, and once more
each time a new streak reaches that length. The run goes on either way.
"""

from __future__ import annotations


class ExploitationWatch:
    def __init__(self, margin: float, after: int):
        self.margin = margin
        self.after = after
        self.streak: list[tuple[int, dict]] = []  # (env step, gap figures) of the current run of large gaps
        self.fired_at: list[int] = []  # env steps at which the warning fired

    def record(self, step: int, gap: dict | None) -> str | None:
        """Note an evaluation's gap figures (`imagination_gap`); the warning's text when it fires, else None."""
        if gap is None:
            return None
        if gap["gap_share"] <= self.margin:
            self.streak = []
            return None
        self.streak.append((step, gap))
        if len(self.streak) != self.after:
            return None
        self.fired_at.append(step)
        figures = ", ".join(f"{s}: imagined {g['imagined_return']:.1f} vs real {g['real_return']:.1f} "
                            f"(+{100 * g['gap_share']:.0f}%, member spread {g['member_spread']:.2f})"
                            for s, g in self.streak)
        return (f"the model may be exploited: for {self.after} evaluations in a row the return it imagines "
                f"exceeds the real one by more than {100 * self.margin:.0f}% ({figures})")

    def state(self) -> dict:
        return {"streak": [[s, g] for s, g in self.streak], "fired_at": list(self.fired_at)}

    def load_state(self, state: dict) -> None:
        self.streak = [(int(s), dict(g)) for s, g in state.get("streak", [])]
        self.fired_at = [int(s) for s in state.get("fired_at", [])]
