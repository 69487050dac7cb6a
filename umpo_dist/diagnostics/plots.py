"""The run's model-diagnostics PNG: the newest calibration curve, and the gap and calibration by env step."""

from __future__ import annotations

from pathlib import Path


def model_diagnostics_png(path: Path, history: list[dict], curve: list, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    if curve:
        rmv, rmse = [b[0] for b in curve], [b[1] for b in curve]
        lo, hi = min(rmv + rmse), max(rmv + rmse)
        left.plot([lo, hi], [lo, hi], "k--", lw=1, label="calibrated")
        left.plot(rmv, rmse, "o-", label=f"newest evaluation (step {history[-1]['step'] if history else '?'})")
        left.set_xscale("log")
        left.set_yscale("log")
    left.set_xlabel("predicted RMS error (model target std units)")
    left.set_ylabel("observed RMS error")
    left.set_title("one-step calibration on evaluation transitions")
    left.legend()
    left.grid(alpha=0.3)
    gaps = [d for d in history if "gap_share" in d]
    if gaps:
        steps = [d["step"] for d in gaps]
        right.plot(steps, [d["imagined_return"] for d in gaps], "o-", label="imagined (model)")
        right.plot(steps, [d["real_return"] for d in gaps], "s-", label="real (same steps)")
        right.set_ylabel("H-step return from evaluation states")
        twin = right.twinx()
        twin.plot([d["step"] for d in history], [d["calibration_error"] for d in history], "g:", label="calibration error")
        twin.set_ylabel("calibration error (ENCE)", color="g")
    right.set_xlabel("environment steps")
    right.set_title(title)
    right.legend(loc="upper left")
    right.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
