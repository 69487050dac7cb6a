"""The published anchors at this project's budgets: `benchmarks/results/anchors.csv` from per-seed result files.

    .venv/bin/python benchmarks/anchors.py ERL_LIB_CHECKOUT [--commit SHA]

DHMBPO's repository (github.com/4kubo/erl_lib) keeps the evaluation curve of every seed
of DHMBPO (its `esvg` directory), MBPO and SAC on Gymnasium MuJoCo v4 under
`results/main/gym/<method>/<Task>.csv` (columns step, time, reward, seed). For each
method, task and budget of `report.py` this writes the mean, std, min and max over
seeds of the return at the last evaluation at or before the budget (a seed counts only
if its curve reaches the budget and that evaluation is within 10% of it: MBPO's first
evaluation after its random steps is at ≈ 6k, so it has no 5k figure), so `docs/results.md` sets the runs here beside the
published ones at the same env steps, not only at 20k (design §6). Nothing is typed by
hand; rerun it on a newer checkout to refresh the rows.
"""

from __future__ import annotations

import argparse
import csv
import statistics
from collections import defaultdict
from pathlib import Path

from report import BUDGETS, at_budget

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "anchors.csv"
COLUMNS = ["method", "env", "env_steps", "mean", "std", "min", "max", "seeds", "source"]
METHODS = {"esvg": "DHMBPO", "mbpo": "MBPO", "sac": "SAC"}  # erl_lib's directory names: DHMBPO's is `esvg`
TASKS = ("HalfCheetah", "Hopper", "Walker2d")


def curves(path: Path) -> dict[str, list[tuple[int, float, float]]]:
    """seed -> [(env step, return, 0.0)] (the shape `report.at_budget` reads)."""
    out: dict = defaultdict(list)
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            out[str(int(float(row["seed"])))].append((round(float(row["step"])), float(row["reward"]), 0.0))
    return out


def anchor_rows(checkout: Path, commit: str) -> list[dict]:
    rows = []
    for directory, method in METHODS.items():
        for task in TASKS:
            rel = f"results/main/gym/{directory}/{task}.csv"
            path = checkout / rel
            if not path.exists():
                raise SystemExit(f"{path}: not found (is {checkout} a checkout of 4kubo/erl_lib?)")
            seeds = curves(path)
            for budget in BUDGETS:
                values = [p[1] for curve in seeds.values()
                          if (p := at_budget(curve, budget)) is not None and p[0] >= 0.9 * budget]
                if not values:
                    continue
                rows.append({"method": method, "env": f"{task}-v4", "env_steps": budget,
                             "mean": round(statistics.fmean(values), 1),
                             "std": round(statistics.stdev(values), 1) if len(values) > 1 else "",
                             "min": round(min(values), 1), "max": round(max(values), 1), "seeds": len(values),
                             "source": f"github.com/4kubo/erl_lib@{commit[:10]}:{rel}"})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkout", type=Path, help="a checkout of github.com/4kubo/erl_lib (its results/ directory)")
    p.add_argument("--commit", default="unknown", help="the checkout's commit, recorded in each row's source")
    args = p.parse_args()
    rows = anchor_rows(args.checkout, args.commit)
    with open(OUT, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    for r in rows:
        print(f"{r['method']:>7} {r['env']:<15} {r['env_steps']:>6,}: {r['mean']:>8,.0f} ± {r['std'] or 0:>6,.0f} "
              f"(n={r['seeds']}, {r['min']:,.0f}–{r['max']:,.0f})")
    print(f"wrote {OUT.relative_to(ROOT)} ({len(rows)} rows)")


if __name__ == "__main__":
    main()
