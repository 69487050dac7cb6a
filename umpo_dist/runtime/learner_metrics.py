"""What a learner's updates report to the log, the same way in both runtimes.

A learner's `update` returns its figures (losses, temperature, entropy, ...); an inline round and a Ray
learner call each report, per key, their mean over its updates that reported the key (a held-out
evaluation comes with some updates only). The Ray driver logs, per key, the mean over the calls that
ended since its last report. One update's figures are noisy, and the Ray runtime's calls and the inline
runner's rounds end at different updates: means over each make the two runtimes' curves comparable.
"""

from __future__ import annotations

import numpy as np


def mean_metrics(rows: list[dict]) -> dict:
    """Per key, the mean over the rows that have it."""
    keys = {k for row in rows for k in row}
    return {k: float(np.mean([row[k] for row in rows if k in row])) for k in keys}
