"""Wall-clock to a target return: the distributed runtime (Ray actors) against the inline runner.

Both runs go through `umpo_dist.ops.train.train` with the same config and seed; only
`runtime` differs (`ray`: env workers, replay actor, model and policy learners as Ray
actors, design §2; `inline`: the same classes in one process). The task is
InvertedPendulum-v5 from `configs/inverted_pendulum.yaml` with
`train.stop_at_return=900, train.total_env_steps=10000, train.eval_every=500`; each
run stops at the first evaluation that reaches 900.

"Wall-clock to 900" is measured from the start of the runtime's loop (the driver's
first scheduling round; the inline runner's `run`) to the moment the evaluation that
reached 900 was recorded. Start-up (Ray, actors, MLflow run) and the end of the run
(final checkpoint, artifacts) are shown apart, as is the whole `train()` call. The
distributed driver evaluates concurrently (a Ray task) and so keeps training while an
evaluation runs; the inline runner evaluates in line.

With `--halfcheetah-steps N` it also runs HalfCheetah-v5 (`configs/halfcheetah.yaml`) to a
fixed budget of N env steps in each runtime and compares the final and best evaluation
returns and the loop's wall-clock (rows in `runtime.csv` too). With `--halfcheetah-minutes M` it also runs HalfCheetah-v5 (`configs/halfcheetah.yaml`)
for M minutes of wall-clock in each runtime and reports the highest evaluation return
reached. The distributed run is capped by a driver callback (`Driver.request_stop`, which
sets the driver's stop step); the inline run by a log callback that raises once the time is up (then one final
evaluation of the policy as it stands).

Rows go to `benchmarks/results/runtime.csv` (ray's figure as the value, inline's as the
baseline, their ratio): wall-clock and env steps to the target, and the Ray run's
utilisation of the policy learner (share of wall-clock inside updates since its first call), and
the milliseconds per policy update in each runtime, the update's compute alone (`UpdateTimer`):
the Ray actor's against the inline runner's.

Everything is written to a temp working directory (runs/, MLflow's SQLite store via
`MLFLOW_TRACKING_URI`), removed at the end unless `--keep`.

    PYTHONPATH=. .venv/bin/python benchmarks/distributed_vs_inline.py [--seed 0] [--order inline,ray] \
        [--halfcheetah-steps 10000 | --halfcheetah-minutes 10] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from learning import append_rows, git_commit  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "runtime.csv"
COLUMNS = ["benchmark", "figure", "value", "baseline", "ratio", "commit"]
PENDULUM_OVERRIDES = ["train.stop_at_return=900", "train.total_env_steps=10000", "train.eval_every=500"]


def start_local_ray(cfg) -> None:
    """A fresh local Ray instance, sized as `umpo train` sizes it (`init_ray` starts its own with `address="local"`)."""
    from umpo_dist.runtime.ray.cluster import init_ray

    init_ray(cfg)


def pendulum_run(runtime: str, overrides: list[str], target: float) -> dict:
    from umpo_dist.config import load
    from umpo_dist.ops.train import train

    cfg = load(ROOT / "configs" / "inverted_pendulum.yaml", PENDULUM_OVERRIDES + overrides + [f"runtime={runtime}"])
    marks: dict = {}

    def on_round(driver) -> None:  # distributed only: called once per scheduling round
        now = time.perf_counter()
        marks.setdefault("loop_start", now)
        if "hit" not in marks:
            s = driver.schedule
            for step, ret in s.evaluations:
                if ret >= target:
                    marks["hit"] = (now, step, s.model_updates, s.policy_updates)
                    break

    t0 = time.perf_counter()
    if runtime == "ray":
        start_local_ray(cfg)
    summary = train(cfg, progress=False, callbacks=[on_round] if runtime == "ray" else ())
    total = time.perf_counter() - t0
    out = {"runtime": runtime, "cfg": cfg, "summary": summary, "total_s": total}
    evals = summary["evaluations"]
    first = next(((s, r) for s, r in evals if r >= target), None)
    if runtime == "ray":
        loop_s = summary["wall_s"]
        if "hit" in marks:
            now, step, mu, pu = marks["hit"]
            out.update(to_target_s=now - marks["loop_start"], target_step=step, updates_at_target=(mu, pu))
        elif first is not None:
            # Reached only by the evaluation after the loop ended (at the step budget): its time is the loop's.
            out.update(to_target_s=loop_s, target_step=first[0],
                       updates_at_target=(summary["model_updates"], summary["policy_updates"]), final_eval=True)
    else:
        loop_s = summary["wall_s"]
        if summary.get("reached_stop_return_at") is not None:
            # The inline loop stops at the evaluation that reached the target: its wall_s is the time to it.
            out.update(to_target_s=loop_s, target_step=summary["reached_stop_return_at"],
                       updates_at_target=(summary["model_updates"], summary["policy_updates"]))
    out["loop_s"] = loop_s
    out["first_reaching"] = first
    out["startup_and_end_s"] = total - loop_s
    return out


def halfcheetah_ray(overrides: list[str], cap_s: float | None) -> dict:
    from umpo_dist.config import load
    from umpo_dist.ops.train import train

    cfg = load(ROOT / "configs" / "halfcheetah.yaml", overrides + ["runtime=ray"])
    marks: dict = {}

    def cap(driver) -> None:
        now = time.perf_counter()
        marks.setdefault("loop_start", now)
        if cap_s is not None and "capped_at" not in marks and now - marks["loop_start"] > cap_s:
            driver.request_stop()
            marks["capped_at"] = driver.schedule.env_steps

    t0 = time.perf_counter()
    start_local_ray(cfg)
    summary = train(cfg, progress=False, callbacks=[cap])
    return {"runtime": "ray", "summary": summary, "total_s": time.perf_counter() - t0, "cfg": cfg,
            "capped": "capped_at" in marks}


def halfcheetah_inline(overrides: list[str], cap_s: float | None) -> dict:
    from umpo_dist.config import load
    from umpo_dist.runtime.inline import InlineRunner

    cfg = load(ROOT / "configs" / "halfcheetah.yaml", overrides + ["runtime=inline"])
    torch.set_num_threads(max(1, int(cfg.resources.learner_cpus)))
    runner = InlineRunner(cfg)
    start = time.perf_counter()

    def cap(r) -> None:
        if cap_s is not None and time.perf_counter() - start > cap_s:
            r.request_stop()

    runner.callbacks.append(cap)
    summary = runner.run()
    wall = time.perf_counter() - start
    return {"runtime": "inline", "summary": summary, "total_s": wall, "cfg": cfg,
            "capped": summary["env_steps"] < cfg.train.total_env_steps}


def fmt_s(x) -> str:
    return f"{x:.1f}" if x is not None else "-"


def update_ms(results: dict) -> list[dict]:
    """Print each learner's milliseconds per update (the update's compute alone) in both runtimes;
    the policy learner's as a row (ray actor vs inline)."""
    ms = {runtime: results[runtime]["summary"].get("update_ms", {}) for runtime in ("inline", "ray")}
    roles = [role for role in sorted(ms["ray"]) if role in ms["inline"]]
    print("  ms per update, the update's compute only (ray actor / inline): "
          + ", ".join(f"{role} {ms['ray'][role]:.1f} / {ms['inline'][role]:.1f}" for role in roles))
    if "policy_learner" not in roles:
        return []
    r, i = ms["ray"]["policy_learner"], ms["inline"]["policy_learner"]
    return [{"figure": "ms per policy update, compute only (ray actor vs inline)", "value": f"{r:.1f}",
             "baseline": f"{i:.1f}", "ratio": f"{r / i:.2f}"}]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--target", type=float, default=900.0, help="evaluation return to reach (also stop_at_return)")
    p.add_argument("--order", default="inline,ray", help="which runtime runs first, e.g. ray,inline")
    p.add_argument("--halfcheetah-minutes", type=float, default=0.0, help="also run HalfCheetah-v5 for M minutes each")
    p.add_argument("--halfcheetah-steps", type=int, default=0, help="also run HalfCheetah-v5 to N env steps each")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every run")
    p.add_argument("--keep", action="store_true", help="keep the temp working directory")
    p.add_argument("--no-csv", action="store_true", help="print only")
    args = p.parse_args()

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    order = [r.strip() for r in args.order.split(",")]
    if sorted(order) != ["inline", "ray"]:
        p.error("--order must name inline and ray once each")
    if args.halfcheetah_minutes > 0 and args.halfcheetah_steps > 0:
        p.error("--halfcheetah-minutes or --halfcheetah-steps, not both")
    overrides = list(args.overrides) + [f"train.seed={args.seed}"]
    PENDULUM_OVERRIDES[0] = f"train.stop_at_return={args.target:g}"

    work = tempfile.mkdtemp(prefix="umpo-bench-dvi-")
    here = os.getcwd()
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work}/mlflow.db"
    os.chdir(work)
    loads: dict[str, tuple] = {"start": os.getloadavg()}
    try:
        import ray

        pendulum: dict[str, dict] = {}
        for runtime in order:
            print(f"InvertedPendulum-v5, {runtime}: running (seed {args.seed})", flush=True)
            pendulum[runtime] = res = pendulum_run(runtime, overrides, args.target)
            print(f"  done: {res['summary']['env_steps']:,} env steps, loop {res['loop_s']:.1f} s, "
                  f"time to {args.target:g}: {fmt_s(res.get('to_target_s'))} s", flush=True)
            if ray.is_initialized():
                ray.shutdown()
        loads["after pendulum"] = os.getloadavg()

        cheetah: dict[str, dict] = {}
        if args.halfcheetah_minutes > 0 or args.halfcheetah_steps > 0:
            cap_s = args.halfcheetah_minutes * 60 or None
            budget = [f"train.total_env_steps={args.halfcheetah_steps}"] if args.halfcheetah_steps else []
            for runtime in order:
                what = f"{args.halfcheetah_steps:,} env steps" if budget else f"{args.halfcheetah_minutes:g} min"
                print(f"HalfCheetah-v5, {runtime}: running {what}", flush=True)
                cheetah[runtime] = (halfcheetah_ray if runtime == "ray" else halfcheetah_inline)(budget + overrides, cap_s)
                if ray.is_initialized():
                    ray.shutdown()
            loads["after halfcheetah"] = os.getloadavg()
    finally:
        os.chdir(here)
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    cfg = pendulum[order[0]]["cfg"]
    r = cfg.resources
    print()
    print(f"== InvertedPendulum-v5 to evaluation return {args.target:g}, seed {args.seed} "
          f"(configs/inverted_pendulum.yaml + {' '.join(PENDULUM_OVERRIDES + args.overrides)})")
    print(f"   ray: {r.num_env_workers} env workers x {r.worker_cpus:g} CPU, learners {r.learner_cpus:g} CPU each, "
          f"chunk {r.chunk_size}, {cfg.train.updates_per_call} updates/call, ratio tolerance {r.ratio_tolerance}; "
          f"inline: train_every {cfg.train.train_every}; {os.cpu_count()} cores, torch threads 1 per process")
    header = (f"{'runtime':<9}{'env steps at target':>21}{'model upd.':>12}{'policy upd.':>13}{'to target s':>13}"
              f"{'loop s':>9}{'steps/s':>9}{'start+end s':>13}{'train() s':>11}{'best':>8}")
    print(header)
    print("-" * len(header))
    for runtime in ("inline", "ray"):
        res = pendulum[runtime]
        s = res["summary"]
        step = res.get("target_step")
        mu, pu = res.get("updates_at_target", (None, None))
        upd = f"{mu:,}" if mu is not None else "-"
        pupd = f"{pu:,}" if pu is not None else "-"
        at = (f"{step:,}" + (" (final eval)" if res.get("final_eval") else "")) if step is not None else "not reached"
        print(f"{runtime:<9}{at:>21}{upd:>12}{pupd:>13}"
              f"{fmt_s(res.get('to_target_s')):>13}{res['loop_s']:>9.1f}{s['env_steps'] / res['loop_s']:>9.0f}"
              f"{res['startup_and_end_s']:>13.1f}{res['total_s']:>11.1f}{s['best_return']:>8.1f}")
    for runtime in ("inline", "ray"):
        s = pendulum[runtime]["summary"]
        evals = ", ".join(f"{st}:{ret:.0f}" for st, ret in s["evaluations"])
        print(f"  {runtime}: run ended at {s['env_steps']:,} env steps, {s['model_updates']:,} model / "
              f"{s['policy_updates']:,} policy updates (achieved ratios {s['model_ratio']:.2f} / {s['policy_ratio']:.2f}); "
              f"evaluations (step:return) {evals}")
    use = pendulum["ray"]["summary"].get("utilisation", {})
    print("  ray utilisation (share of wall-clock in useful work since each role's first call): "
          + ", ".join(f"{k} {v:.2f}" for k, v in sorted(use.items())))
    update_ms_rows = update_ms(pendulum)
    di, dr = pendulum["inline"].get("to_target_s"), pendulum["ray"].get("to_target_s")
    settings = "".join(f"; {o}" for o in args.overrides)  # a row's label names the settings it ran with
    bench = f"distributed_vs_inline (InvertedPendulum-v5 to {args.target:g}, seed {args.seed}, {os.cpu_count()} cores{settings})"
    rows = []
    if di is not None and dr is not None:
        si, sr = pendulum["inline"]["target_step"], pendulum["ray"]["target_step"]
        print(f"ratio distributed/inline: wall-clock to {args.target:g} {dr / di:.2f}x; env steps to it {sr / si:.2f}x; "
              f"whole train() call {pendulum['ray']['total_s'] / pendulum['inline']['total_s']:.2f}x")
        rows += [{"benchmark": bench, "figure": "wall-clock to target s (ray vs inline)", "value": f"{dr:.1f}",
                  "baseline": f"{di:.1f}", "ratio": f"{dr / di:.2f}"},
                 {"benchmark": bench, "figure": "env steps to target (ray vs inline)", "value": sr,
                  "baseline": si, "ratio": f"{sr / si:.2f}"}]
    else:
        print(f"ratio distributed/inline: not available (a run did not reach {args.target:g})")
        rows.append({"benchmark": bench, "figure": "reached target (ray, inline)",
                     "value": dr is not None, "baseline": di is not None, "ratio": ""})
    rows += [{"benchmark": bench, **row} for row in update_ms_rows]
    if "policy_learner" in use:
        rows.append({"benchmark": bench, "figure": "policy learner utilisation (ray)",
                     "value": f"{use['policy_learner']:.2f}", "baseline": "", "ratio": ""})
        rows.append({"benchmark": bench, "figure": "policy learner blocked on replay answers (ray, share of wall-clock)",
                     "value": f"{use['policy_learner_data_wait']:.3f}", "baseline": "", "ratio": ""})

    if cheetah:
        print()
        limit = f"{args.halfcheetah_steps:,} env steps" if args.halfcheetah_steps else f"{args.halfcheetah_minutes:g} min wall-clock"
        print(f"== HalfCheetah-v5, {limit} each, seed {args.seed} "
              f"(configs/halfcheetah.yaml{' + ' + ' '.join(args.overrides) if args.overrides else ''})")
        header = f"{'runtime':<9}{'env steps':>11}{'model upd.':>12}{'policy upd.':>13}{'loop s':>9}{'best return':>13}{'final':>9}"
        print(header)
        print("-" * len(header))
        for runtime in ("inline", "ray"):
            s = cheetah[runtime]["summary"]
            print(f"{runtime:<9}{s['env_steps']:>11,}{s['model_updates']:>12,}{s['policy_updates']:>13,}"
                  f"{s['wall_s']:>9.1f}{s['best_return']:>13.1f}{s['final_return']:>9.1f}")
        bi, br = cheetah["inline"]["summary"]["best_return"], cheetah["ray"]["summary"]["best_return"]
        print(f"best return distributed - inline: {br - bi:+.1f}")
        cheetah_ms_rows = update_ms(cheetah)
        if args.halfcheetah_steps:
            si, sr = cheetah["inline"]["summary"], cheetah["ray"]["summary"]
            hc = (f"distributed_vs_inline (HalfCheetah-v5, {args.halfcheetah_steps} env steps, seed {args.seed}, "
                  f"{os.cpu_count()} cores{settings})")
            rows += [{"benchmark": hc, "figure": "final return (ray vs inline)", "value": f"{sr['final_return']:.1f}",
                      "baseline": f"{si['final_return']:.1f}", "ratio": ""},
                     {"benchmark": hc, "figure": "best return (ray vs inline)", "value": f"{sr['best_return']:.1f}",
                      "baseline": f"{si['best_return']:.1f}", "ratio": ""},
                     {"benchmark": hc, "figure": "loop wall-clock s (ray vs inline)", "value": f"{sr['wall_s']:.1f}",
                      "baseline": f"{si['wall_s']:.1f}", "ratio": f"{sr['wall_s'] / si['wall_s']:.2f}"}]
            rows += [{"benchmark": hc, **row} for row in cheetah_ms_rows]
            if "policy_learner" in sr.get("utilisation", {}):
                rows.append({"benchmark": hc, "figure": "policy learner utilisation (ray)",
                             "value": f"{sr['utilisation']['policy_learner']:.2f}", "baseline": "", "ratio": ""})
    print()
    print("load average (1/5/15 min): " + "; ".join(f"{k} {v[0]:.2f}/{v[1]:.2f}/{v[2]:.2f}" for k, v in loads.items()))
    if not args.no_csv:
        commit = git_commit()
        append_rows([{**row, "commit": commit} for row in rows], RESULTS, COLUMNS)
        print(f"{len(rows)} rows appended to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
