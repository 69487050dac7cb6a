"""`benchmarks/learning.py` books each evaluation in the CSV as soon as the run has made it."""

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_killed_run_keeps_the_rows_of_the_evaluations_it_reached(tmp_path):
    """A run killed mid-way (a session's end) keeps a row per evaluation it printed; nothing waits for the run's end."""
    out = tmp_path / "learning.csv"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "learning.py"), "--env", "inverted_pendulum", "--seeds", "3",
           "--steps", "5000", "--csv", str(out), "--keep", str(tmp_path / "keep"),
           "--set", "train.eval_every=250", "--set", "train.random_steps=500", "--set", "env.eval_episodes=1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    printed = []
    try:
        for line in proc.stdout:
            if " return " in line and "inverted_pendulum inline seed 3: step" in line:
                printed.append(int(line.split("step")[1].split("return")[0].replace(",", "")))
                if len(printed) == 2:  # the random-data phase's evaluations: well before the run's end
                    break
        else:
            raise AssertionError(f"the run ended before two evaluations (rc {proc.wait()})")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL  # killed, not ended
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["env_steps"]) for r in rows][:2] == printed == [0, 250]
    for r in rows:
        assert r["env"] == "InvertedPendulum-v5" and r["runtime"] == "inline" and r["seed"] == "3"
        assert r["variant"] == "shipped+train.eval_every=250,train.random_steps=500,env.eval_episodes=1"
        assert float(r["eval_return"]) > 0 and float(r["wall_s"]) >= 0 and r["termination"] == "learned"
        assert "--seeds 3" in r["command"] and "--set train.eval_every=250" in r["command"]
    assert max(int(r["env_steps"]) for r in rows) < 5000
