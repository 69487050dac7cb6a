"""`benchmarks/anchors.py`: the published per-seed curves at this project's budgets, and their rows in the report."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import anchors  # noqa: E402
import report  # noqa: E402


def write_curves(checkout: Path, method_dir: str, task: str, seeds: dict) -> None:
    path = checkout / "results" / "main" / "gym" / method_dir / f"{task}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["step,time,reward,seed"] + [f"{float(step)},1.0,{ret},{seed}" for seed, curve in seeds.items()
                                          for step, ret in curve]
    path.write_text("\n".join(lines) + "\n")


def test_budgets_take_the_last_evaluation_at_or_just_before_them(tmp_path):
    for method_dir in anchors.METHODS:
        for task in anchors.TASKS:
            write_curves(tmp_path, method_dir, task, {0: [(0, -5.0), (5000, 10.0), (10000, 30.0)],
                                                      1: [(0, -5.0), (4800, 20.0), (10000, 50.0), (20000, 70.0)]})
    # MBPO-like: no evaluation between 0 and 6,000, so no 5k figure (the step-0 one is not taken for it)
    write_curves(tmp_path, "mbpo", "Hopper", {0: [(0, -5.0), (6019, 100.0), (9019, 150.0), (10019, 200.0)]})
    rows = {(r["method"], r["env"], r["env_steps"]): r for r in anchors.anchor_rows(tmp_path, "abc1234567890")}

    five = rows[("DHMBPO", "Hopper-v4", 5000)]
    assert (five["mean"], five["std"], five["min"], five["max"], five["seeds"]) == (15.0, 7.1, 10.0, 20.0, 2)
    assert five["source"] == "github.com/4kubo/erl_lib@abc1234567:results/main/gym/esvg/Hopper.csv"
    assert rows[("DHMBPO", "Hopper-v4", 10000)]["mean"] == 40.0
    twenty = rows[("SAC", "Walker2d-v4", 20000)]  # seed 0 stops at 10k: only seed 1 counts
    assert (twenty["mean"], twenty["std"], twenty["seeds"]) == (70.0, "", 1)
    assert ("MBPO", "Hopper-v4", 5000) not in rows
    assert rows[("MBPO", "Hopper-v4", 10000)]["mean"] == 150.0  # 9,019: the last at or before 10k

    lines = report.anchor_lines("Hopper-v5", list(rows.values()), threshold_column=True)
    mbpo = next(line for line in lines if line.startswith("| MBPO (published, Hopper-v4)"))
    assert mbpo == "| MBPO (published, Hopper-v4) | – | known | – | 150 (n=1, 150 to 150) | – | – |"
    assert len(lines) == 3 and not report.anchor_lines("Ant-v5", list(rows.values()), threshold_column=False)


def test_a_missing_result_file_names_the_checkout(tmp_path):
    with pytest.raises(SystemExit, match="is .* a checkout of 4kubo/erl_lib"):
        anchors.anchor_rows(tmp_path, "abc")
