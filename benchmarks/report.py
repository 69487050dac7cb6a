"""Regenerate `docs/results.md` (and its plots) from `benchmarks/results/*.csv`; nothing in it is typed by hand.

    .venv/bin/python benchmarks/report.py

Learning (`learning.csv`, written by `benchmarks/learning.py`; `anchors.csv`, the published
methods' per-seed results at the same budgets, by `benchmarks/anchors.py`): per task, evaluation
return as mean ± std over seeds at 5k, 10k and 20k env steps, with the mean
wall-clock to that point, for every (variant, runtime, termination rule); the
ablation table (each variant against the variant it adds to, in the same runtime);
a learning-curve PNG per task; the command that reproduces each group. Ray against inline: each variant run in
both runtimes, the difference of the means and a rank test of the runs at each budget.
The model diagnostics recorded with the same evaluations (imagined-vs-real gap as a share
of the real return, one-step calibration error) at the same budgets. Runtime figures
(`runtime.csv`, when present) are listed as measured.
"""

from __future__ import annotations

import csv
import itertools
import math
import statistics
from collections import defaultdict
from pathlib import Path

import learning  # the variants' definitions, for the ablation table's baselines

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "results.md"
IMG = ROOT / "docs" / "img"
BUDGETS = (5_000, 10_000, 20_000)
TASK_ORDER = ("InvertedPendulum-v5", "HalfCheetah-v5", "Hopper-v5", "Walker2d-v5")
# The return each task's "time to threshold" column asks for: solved (InvertedPendulum), or a
# level every compared method reaches on these budgets in the published anchors (design §6).
THRESHOLDS = {"InvertedPendulum-v5": 900.0, "HalfCheetah-v5": 3000.0, "Hopper-v5": 1000.0, "Walker2d-v5": 1000.0}
# The methods compared side by side (design §3): per task, the config variant the other objectives ran on
# (its own rows are the mean–variance objective), and what each objective adds to that variant's name.
METHOD_BASES = {"InvertedPendulum-v5": "unaligned", "HalfCheetah-v5": "aligned",
                "Hopper-v5": "aligned+train.eval_every=2500"}
METHODS = (("mean–variance", ""), ("mnm", "policy.objective=mnm"),
           ("dyna", "policy.objective=dyna,train.policy_updates_per_step=5"))


def read(name: str) -> list[dict]:
    path = RESULTS / name
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def run_keys(rows: list[dict]) -> list[tuple[tuple, tuple]]:
    """Per row, in the CSV's order: its group (env, variant, runtime, termination) and its run (seed, commit, k).
    `benchmarks/learning.py` appends a run's evaluations as they come, so a seed run again on the same commit
    (after a run cut short, say) books a step its run k already has: that row starts run k + 1."""
    current: dict = {}  # (group, seed, commit) -> (k, the steps run k has)
    out = []
    for r in rows:
        group, step = (r["env"], r["variant"], r["runtime"], r["termination"]), int(r["env_steps"])
        k, steps = current.setdefault((group, r["seed"], r["commit"]), (0, set()))
        if step in steps:
            k, steps = k + 1, set()
            current[(group, r["seed"], r["commit"])] = (k, steps)
        steps.add(step)
        out.append((group, (int(r["seed"]), r["commit"], k)))
    return out


def runs(rows: list[dict]) -> dict:
    """(env, variant, runtime, termination) -> {(seed, commit, k): [(step, return, wall)]} (`run_keys`)."""
    out: dict = defaultdict(lambda: defaultdict(list))
    for r, (group, run) in zip(rows, run_keys(rows)):
        out[group][run].append((int(r["env_steps"]), float(r["eval_return"]), float(r["wall_s"])))
    return out


def at_budget(curve: list[tuple[int, float, float]], budget: int):
    """The last evaluation at or before `budget`, if the run got that far (within one evaluation)."""
    curve = sorted(curve)
    if not curve or curve[-1][0] < budget:
        return None
    before = [p for p in curve if p[0] <= budget]
    return before[-1] if before else None


def budget_points(seeds: dict, budget: int) -> list[tuple[float, float]]:
    """(return, wall-clock) of each seed's evaluation at `budget` (`at_budget`), over the seeds that got there."""
    return [(p[1], p[2]) for curve in seeds.values() if (p := at_budget(curve, budget)) is not None]


def cell(values: list[tuple[float, float]]) -> str:
    if not values:
        return "–"
    rets = [v for v, _ in values]
    wall = statistics.fmean(w for _, w in values)
    spread = f" ± {statistics.stdev(rets):,.0f}" if len(rets) > 1 else ""
    return f"{statistics.fmean(rets):,.0f}{spread} (n={len(rets)}, {wall / 60:.1f} min)"


def to_threshold(seeds: dict, threshold: float, budget: int = BUDGETS[-1]) -> str:
    """Env steps and wall-clock to the first evaluation at or above `threshold`: mean over the seeds
    that reached it, and how many did of the seeds that reached it or ran the whole `budget` (a run
    that stopped earlier without reaching it says nothing either way: it is counted apart)."""
    hits = {seed: next((p for p in sorted(curve) if p[1] >= threshold), None) for seed, curve in seeds.items()}
    reached = [p for p in hits.values() if p is not None]
    shorter = sum(1 for seed, p in hits.items() if p is None and max(q[0] for q in seeds[seed]) < budget)
    count = f"{len(reached)}/{len(hits) - shorter}" + (f"; {shorter} shorter run{'s' * (shorter > 1)} not counted"
                                                         if shorter else "")
    if not reached:
        return f"not reached ({count})"
    steps = statistics.fmean(p[0] for p in reached)
    wall = statistics.fmean(p[2] for p in reached)
    return f"{steps:,.0f} steps, {wall / 60:.1f} min ({count})"


def plot(env: str, groups: dict, name: str | None = None, labels: dict | None = None) -> str | None:
    """Mean curves of `groups` into docs/img/learning_<task>[_<name>].png; `labels`: legend text per group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for (variant, runtime, term), seeds in sorted(groups.items()):
        steps = sorted({p[0] for curve in seeds.values() for p in curve})
        means = []
        for step in steps:
            vals = [ret for curve in seeds.values() for s, ret, _ in curve if s == step]
            means.append(statistics.fmean(vals))
        label = (labels or {}).get((variant, runtime, term), f"{variant} / {runtime} / {term}")
        ax.plot(steps, means, "o-", markersize=3, label=f"{label} (n={len(seeds)})")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("evaluation return (mean over seeds)")
    ax.set_title(env)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    IMG.mkdir(parents=True, exist_ok=True)
    path = IMG / f"learning_{env.split('-')[0].lower()}{'_' + name if name else ''}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path.relative_to(DOC.parent))


def anchor_lines(env: str, anchors: list[dict], threshold_column: bool) -> list[str]:
    """The published methods' rows for a task (`anchors.csv`, Gymnasium v4: matched on the task's name)."""
    task = env.split("-")[0]
    by_method: dict = defaultdict(dict)
    for r in anchors:
        if r["env"].split("-")[0] == task:
            by_method[r["method"]][int(r["env_steps"])] = r
    out = []
    for method, at in by_method.items():
        cells = []
        for b in BUDGETS:
            r = at.get(b)
            spread = f" ± {float(r['std']):,.0f}" if r and r["std"] else ""
            cells.append(f"{float(r['mean']):,.0f}{spread} (n={r['seeds']}, {float(r['min']):,.0f} to "
                         f"{float(r['max']):,.0f})" if r else "–")
        term = "model-free" if method == "SAC" else "known"
        out.append(f"| {method} (published, {next(iter(at.values()))['env']}) | – | {term} | " + " | ".join(cells)
                   + " |" + (" – |" if threshold_column else ""))
    return out


def learning_section(rows: list[dict], anchors: list[dict] | None = None) -> list[str]:
    anchors = anchors or []
    grouped = runs(rows)
    commands: dict = defaultdict(set)
    for r in rows:
        commands[(r["env"], r["variant"], r["runtime"], r["termination"])].add(r["command"])
    envs = sorted({k[0] for k in grouped}, key=lambda e: (TASK_ORDER.index(e) if e in TASK_ORDER else 99, e))
    lines = ["## Learning: evaluation return by env steps", "",
             "Mean ± std over seeds of the evaluation return (deterministic policy) at the last evaluation at or "
             "before each budget, the number "
             "of seeds, and the mean wall-clock of the training loop to that point (2-core machine, one torch "
             "thread inline). `termination`: learned (the model's termination head) or known (the task's rule); "
             "`model-free` for the SAC peer (Stable-Baselines3, `runtime` sb3). The last column: env steps and "
             "wall-clock to the first evaluation at or above the task's threshold, over the seeds that reached it, "
             "and how many reached it of the runs that did or ran all 20k steps (a shorter run is counted apart). "
             "Variants `mnm` and `dyna` are the other objectives on the task's shipped config (design §3). "
             "Rows marked *published* are DHMBPO's, MBPO's and SAC's own per-seed results on Gymnasium v4 "
             "(`benchmarks/anchors.py` → `anchors.csv`: mean ± std, seeds, and the lowest to the highest seed), "
             "at the same budgets.", ""]
    for env in envs:
        groups = {k[1:]: v for k, v in grouped.items() if k[0] == env}
        threshold = THRESHOLDS.get(env)
        extra = f" to {threshold:,.0f} |" if threshold is not None else ""
        lines += [f"### {env}", "", "| variant | runtime | termination | " + " | ".join(f"{b // 1000}k" for b in BUDGETS)
                  + " |" + extra, "|---|---|---|" + "---|" * (len(BUDGETS) + bool(extra))]
        for (variant, runtime, term), seeds in sorted(groups.items()):
            cells = []
            for b in BUDGETS:
                cells.append(cell(budget_points(seeds, b)))
            if threshold is not None:
                cells.append(to_threshold(seeds, threshold))
            lines.append(f"| {variant} | {runtime} | {term} | " + " | ".join(cells) + " |")
        lines += anchor_lines(env, anchors, bool(extra))
        lines.append("")
        ablation = ablation_rows(groups)
        if ablation:
            lines += ["Ablations: each variant against the variant it adds to (the longest prefix of its name, cut at "
                      "'+' or ',', or else the named variant it is defined on, with runs in the same runtime; "
                      "`shipped` last): at the same budgets, the mean over the seeds both ran of the per-seed "
                      "difference (n: those seeds), or the difference of the means where they share none "
                      "(unpaired):", "",
                      "| variant | runtime | termination | against | " + " | ".join(f"Δ at {b // 1000}k" for b in BUDGETS)
                      + " |", "|---|---|---|---|" + "---|" * len(BUDGETS), *ablation, ""]
        png = plot(env, groups)
        if png:
            lines += [f"![{env} learning curves]({png})", ""]
        lines += ["Reproduce:", ""]
        for key in sorted(k for k in commands if k[0] == env):
            for command in sorted(commands[key]):
                lines.append(f"- `{command}`")
        lines.append("")
    return lines


def method_variant(base: str, extra: str) -> str:
    """The name `benchmarks/learning.py` gives a run of variant `base` with the overrides `extra` added."""
    return base if not extra else base + ("," if "+" in base else "+") + extra


def methods_section(rows: list[dict], anchors: list[dict]) -> list[str]:
    """Per task: the objectives on one config, the model-free peer and the published anchors, side by side."""
    grouped = runs(rows)
    lines = ["## Methods side by side", "",
             "The three objectives on the same model, replay and runtime (design §3) — mean–variance (the shipped "
             "objective), `mnm` (Mismatched No More's classifier bound) and `dyna` (MBPO: SAC on model "
             "transitions) — each on the task's config named below, beside the model-free SAC peer "
             "(Stable-Baselines3) on the same protocol and the published anchors. Cells as above; the last "
             "column: env steps and wall-clock to the task's threshold. Wall-clock is comparable only between rows "
             "measured in the same session (the `commit` column of `learning.csv`): the machines' CPUs differed.", ""]
    for env, base in METHOD_BASES.items():
        threshold = THRESHOLDS[env]
        picked: dict = {}
        labels: dict = {}
        for method, extra in METHODS:
            name = method_variant(base, extra)
            for key in sorted(k for k in grouped if k[0] == env and k[1] == name):
                picked[key[1:]], labels[key[1:]] = grouped[key], f"{method} / {key[2]}"
        for key in sorted(k for k in grouped if k[0] == env and k[2] == "sb3"):
            picked[key[1:]], labels[key[1:]] = grouped[key], "SAC (SB3)"
        if not picked:
            continue
        lines += [f"### {env} (config variant `{base}`)", "",
                  "| method | runtime | termination | " + " | ".join(f"{b // 1000}k" for b in BUDGETS)
                  + f" | to {threshold:,.0f} |", "|---|---|---|" + "---|" * (len(BUDGETS) + 1)]
        means: dict = defaultdict(dict)
        for key, seeds in picked.items():
            cells = []
            for b in BUDGETS:
                vals = budget_points(seeds, b)
                cells.append(cell(vals))
                if vals:
                    means[b][labels[key]] = statistics.fmean(v for v, _ in vals)
            lines.append(f"| {labels[key].split(' / ')[0]} | {key[1]} | {key[2]} | " + " | ".join(cells)
                         + f" | {to_threshold(seeds, threshold)} |")
        lines += anchor_lines(env, anchors, True)
        lines += ["", "Highest mean at each budget: " + "; ".join(
            f"{b // 1000}k: {max(means[b], key=means[b].get)} ({max(means[b].values()):,.0f}; runner-up "
            + (f"{sorted(means[b].values())[-2]:,.0f}" if len(means[b]) > 1 else "none") + ")"
            for b in BUDGETS if means[b]) + ".", ""]
        png = plot(env, picked, "methods", labels)
        if png:
            lines += [f"![{env}: methods side by side]({png})", ""]
    return lines


def lineage(variant: str) -> list[str]:
    """The variants `variant` adds to, nearest first: its own prefixes (cut at '+' or ','), then the named
    variants its first part is built on (`learning.parent`), `shipped` last."""
    cuts = [i for i, ch in enumerate(variant) if ch in "+,"]
    names = [variant[:i] for i in reversed(cuts)]
    name = names[-1] if names else variant
    while (name := learning.parent(name)) is not None:
        names.append(name)
    return names if names[-1:] == ["shipped"] else [*names, "shipped"]


def base_of(variant: str, runtime: str, term: str, groups: dict):
    """The group a variant is measured against: the nearest of its `lineage` that has runs in the same
    runtime, with the same termination rule or else the learned one."""
    for name in lineage(variant):
        for rule in (term, "learned"):
            if (name, runtime, rule) in groups and (name, rule) != (variant, term):
                return name, runtime, rule
    return None


def per_seed_at(seeds: dict, budget: int) -> dict[int, float]:
    """seed -> return at `budget` (`at_budget`), the mean over that seed's runs where it ran more than once."""
    by_seed: dict = defaultdict(list)
    for (seed, *_), curve in seeds.items():
        if (p := at_budget(curve, budget)) is not None:
            by_seed[seed].append(p[1])
    return {seed: statistics.fmean(v) for seed, v in by_seed.items()}


def difference(seeds: dict, base: dict, budget: int) -> str:
    """A variant against its base at `budget`: the mean per-seed difference over the seeds both ran, with their
    count (a pair shares its random steps and initial states; runs from different machines share no more than
    that, design.md); the difference of the means, marked unpaired, where they share no seed; '–' where either
    has no run there."""
    mine, theirs = per_seed_at(seeds, budget), per_seed_at(base, budget)
    if not mine or not theirs:
        return "–"
    shared = sorted(mine.keys() & theirs.keys())
    if shared:
        return f"{statistics.fmean(mine[s] - theirs[s] for s in shared):+,.0f} (n={len(shared)})"
    return f"{statistics.fmean(mine.values()) - statistics.fmean(theirs.values()):+,.0f} (unpaired)"


def ablation_rows(groups: dict) -> list[str]:
    out = []
    for (variant, runtime, term), seeds in sorted(groups.items()):
        base_key = base_of(variant, runtime, term, groups)
        if base_key is None:
            continue
        cells = [difference(seeds, groups[base_key], b) for b in BUDGETS]
        against = base_key[0] + (f" ({base_key[2]})" if base_key[2] != term else "")
        out.append(f"| {variant} | {runtime} | {term} | {against} | " + " | ".join(cells) + " |")
    return out


def diagnostics_section(rows: list[dict]) -> list[str]:
    """Per task: the mean over seeds of the gap share and the calibration error at each budget's evaluation."""
    rows = [r for r in rows if r.get("gap_share") or r.get("calibration_error")]
    if not rows:
        return []
    lines = ["## Does the model know what it doesn't know?", "",
             "At the evaluation at or before each budget (mean over seeds): **gap** — how far the H-step return the "
             "model imagines for the policy, from states along the evaluation episodes, exceeds the real return over "
             "the same steps, as a share of the real one's magnitude (positive: the model is optimistic); **cal** — "
             "the one-step calibration error (ENCE; 0 calibrated, 0.5 for variances 4× too large) on the evaluation "
             "episodes' transitions, which the model never trained on.", ""]
    by_env: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r, (group, run) in zip(rows, run_keys(rows)):
        by_env[group[0]][group[1:]][run].append(r)
    for env in sorted(by_env, key=lambda e: (TASK_ORDER.index(e) if e in TASK_ORDER else 99, e)):
        lines += [f"### {env}", "", "| variant | runtime | termination | " + " | ".join(f"{b // 1000}k gap / cal" for b in BUDGETS) + " |",
                  "|---|---|---|" + "---|" * len(BUDGETS)]
        for key, seeds in sorted(by_env[env].items()):
            cells = []
            for b in BUDGETS:
                picked = []
                for seed_rows in seeds.values():
                    before = sorted((int(r["env_steps"]), r) for r in seed_rows if int(r["env_steps"]) <= b)
                    if before and max(int(r["env_steps"]) for r in seed_rows) >= b:
                        picked.append(before[-1][1])
                gaps = [float(r["gap_share"]) for r in picked if r["gap_share"]]
                cals = [float(r["calibration_error"]) for r in picked if r["calibration_error"]]
                cells.append(f"{100 * statistics.fmean(gaps):+.0f}% / {statistics.fmean(cals):.2f} (n={len(picked)})"
                             if gaps and cals else "–")
            lines.append("| " + " | ".join(key) + " | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def rank_test(a: list[float], b: list[float]) -> float:
    """Two-sided p of the Mann–Whitney U test of `a` against `b`: exact (every split of the pooled runs into
    groups of their sizes, ties counted half) up to 200,000 splits, the normal approximation beyond."""
    def u(xs, ys):
        return sum((x > y) + 0.5 * (x == y) for x in xs for y in ys)

    n, m = len(a), len(b)
    centre, observed = n * m / 2, abs(u(a, b) - n * m / 2)
    if math.comb(n + m, n) > 200_000:
        z = observed / math.sqrt(n * m * (n + m + 1) / 12)
        return math.erfc(z / math.sqrt(2))
    pooled = a + b
    extreme = 0
    for picked in itertools.combinations(range(n + m), n):
        rest = sorted(set(range(n + m)) - set(picked))
        extreme += abs(u([pooled[i] for i in picked], [pooled[i] for i in rest]) - centre) >= observed - 1e-9
    return extreme / math.comb(n + m, n)


def parity_cell(ray: dict, inline: dict, budget: int) -> str:
    """Ray against inline at `budget`: each runtime's mean over its runs (n), the difference of the means and
    the rank test's p; '–' where either has no run there."""
    mine, theirs = [v for v, _ in budget_points(ray, budget)], [v for v, _ in budget_points(inline, budget)]
    if not mine or not theirs:
        return "–"
    diff, p = statistics.fmean(mine) - statistics.fmean(theirs), rank_test(mine, theirs)
    return (f"{statistics.fmean(mine):,.0f} (n={len(mine)}) vs {statistics.fmean(theirs):,.0f} (n={len(theirs)}): "
            f"{diff:+,.0f}, p {p:.{2 if p >= 0.01 else 3}f}")


def parity_section(rows: list[dict]) -> list[str]:
    """Per task, every (variant, termination) run in both runtimes: does the Ray runtime learn per env step
    like the inline one?"""
    grouped = runs(rows)
    pairs = sorted(k for k in grouped if k[2] == "ray" and (k[0], k[1], "inline", k[3]) in grouped)
    if not pairs:
        return []
    lines = ["## Ray against inline", "",
             "Each variant run in both runtimes, at each budget: the Ray runs' mean return against the inline runs' "
             "(n: runs; a seed run twice counts twice, as runs from different sessions' machines differ, design.md), "
             "the difference, and the two-sided p of the Mann–Whitney rank test of the runs (no normality assumed: "
             "Hopper's returns gather at ~1,000, standing, and ~3,000, hopping). A small p says the runtimes differ "
             "beyond seed noise; with 2 runs against 8 the smallest p possible is 0.04.", "",
             "| task | variant | termination | " + " | ".join(f"{b // 1000}k: ray vs inline" for b in BUDGETS) + " |",
             "|---|---|---|" + "---|" * len(BUDGETS)]
    for env, variant, _, term in sorted(pairs, key=lambda k: (TASK_ORDER.index(k[0]) if k[0] in TASK_ORDER else 99, k)):
        ray, inline = grouped[(env, variant, "ray", term)], grouped[(env, variant, "inline", term)]
        lines.append(f"| {env} | {variant} | {term} | " + " | ".join(parity_cell(ray, inline, b) for b in BUDGETS) + " |")
    return lines + [""]


def runtime_section(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    lines = ["## Runtime", "", "| benchmark | figure | value | baseline | ratio | commit |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['benchmark']} | {r['figure']} | {r['value']} | {r['baseline']} | {r['ratio']} | {r['commit']} |")
    return lines + [""]


def main() -> None:
    lines = ["# Results", "",
             "Generated by `benchmarks/report.py` from `benchmarks/results/*.csv`; do not edit by hand.", ""]
    lines += learning_section(read("learning.csv"), read("anchors.csv"))
    lines += parity_section(read("learning.csv"))
    lines += methods_section(read("learning.csv"), read("anchors.csv"))
    lines += diagnostics_section(read("learning.csv"))
    lines += runtime_section(read("runtime.csv"))
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text("\n".join(lines).rstrip() + "\n")
    print(f"wrote {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
