"""`benchmarks/report.py`: the methods side by side, built only from the rows of the compared runs."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import report  # noqa: E402


def curve_rows(env: str, variant: str, runtime: str, term: str, seed: int, curve: list) -> list[dict]:
    return [{"env": env, "variant": variant, "runtime": runtime, "termination": term, "seed": str(seed),
             "commit": "abc", "env_steps": str(step), "eval_return": str(ret), "wall_s": str(wall)}
            for step, ret, wall in curve]


def test_methods_side_by_side_pick_each_objective_on_the_tasks_config(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "DOC", tmp_path / "results.md")
    monkeypatch.setattr(report, "IMG", tmp_path / "img")
    env, base = "Hopper-v5", report.METHOD_BASES["Hopper-v5"]
    rows = []
    for seed, top in ((0, 900.0), (1, 1100.0)):  # mean–variance: 1,100 reaches the threshold at 20k only
        rows += curve_rows(env, base, "inline", "learned", seed, [(5000, 100.0, 60), (10000, 300.0, 120), (20000, top, 240)])
    rows += curve_rows(env, report.method_variant(base, "policy.objective=mnm"), "inline", "learned", 0,
                       [(5000, 400.0, 60), (10000, 1200.0, 120), (20000, 800.0, 240)])
    rows += curve_rows(env, report.method_variant(base, report.METHODS[2][1]), "ray", "learned", 0,
                       [(5000, 50.0, 30), (10000, 60.0, 60)])
    rows += curve_rows(env, "sac", "sb3", "model-free", 0, [(5000, 10.0, 5), (10000, 20.0, 10), (20000, 30.0, 20)])
    # neither one of the objectives on the task's config nor the peer: not in the comparison
    rows += curve_rows(env, base + ",policy.gamma=0.995", "inline", "learned", 0, [(5000, 5000.0, 60)])
    rows += curve_rows("Walker2d-v5", "aligned", "inline", "learned", 0, [(5000, 7.0, 60)])

    lines = report.methods_section(rows, [])

    table = [line for line in lines if line.startswith("| ") and not line.startswith("| method")]
    assert table == [
        "| mean–variance | inline | learned | 100 ± 0 (n=2, 1.0 min) | 300 ± 0 (n=2, 2.0 min) "
        "| 1,000 ± 141 (n=2, 4.0 min) | 20,000 steps, 4.0 min (1/2) |",
        "| mnm | inline | learned | 400 (n=1, 1.0 min) | 1,200 (n=1, 2.0 min) | 800 (n=1, 4.0 min) "
        "| 10,000 steps, 2.0 min (1/1) |",
        "| dyna | ray | learned | 50 (n=1, 0.5 min) | 60 (n=1, 1.0 min) | – "
        "| not reached (0/0; 1 shorter run not counted) |",
        "| SAC (SB3) | sb3 | model-free | 10 (n=1, 0.1 min) | 20 (n=1, 0.2 min) | 30 (n=1, 0.3 min) "
        "| not reached (0/1) |",
    ]
    assert f"### {env} (config variant `{base}`)" in lines
    assert not any(line.startswith("### Walker2d") for line in lines)  # not a compared task
    best = next(line for line in lines if line.startswith("Highest mean"))
    assert best == ("Highest mean at each budget: 5k: mnm / inline (400; runner-up 100); "
                    "10k: mnm / inline (1,200; runner-up 300); 20k: mean–variance / inline (1,000; runner-up 800).")
    assert (tmp_path / "img" / "learning_hopper_methods.png").stat().st_size > 0
    assert "![Hopper-v5: methods side by side](img/learning_hopper_methods.png)" in lines


def test_time_to_threshold_counts_a_shorter_run_only_if_it_reached_the_threshold():
    # seed: [(env steps, return, wall s)]; the budget is 20k
    seeds = {0: [(5000, 100.0, 60), (10000, 1200.0, 120), (20000, 900.0, 240)],  # reached at 10k
             1: [(5000, 100.0, 60), (10000, 200.0, 120), (20000, 300.0, 240)],  # ran the whole budget, never
             2: [(5000, 1500.0, 50), (10000, 200.0, 100)],  # stopped at 10k, reached at 5k: counted
             3: [(5000, 100.0, 60), (10000, 200.0, 120)]}  # stopped at 10k without reaching it: says nothing
    assert report.to_threshold(seeds, 1000.0) == "7,500 steps, 1.4 min (2/3; 1 shorter run not counted)"
    assert report.to_threshold({1: seeds[1]}, 1000.0) == "not reached (0/1)"
    assert report.to_threshold({3: seeds[3], 4: seeds[3]}, 1000.0) == "not reached (0/0; 2 shorter runs not counted)"


def test_a_task_without_compared_runs_has_no_section(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "DOC", tmp_path / "results.md")
    monkeypatch.setattr(report, "IMG", tmp_path / "img")
    rows = curve_rows("Hopper-v5", "shipped", "inline", "learned", 0, [(5000, 100.0, 60)])
    assert not any(line.startswith("###") for line in report.methods_section(rows, []))


def test_an_ablation_is_measured_against_the_variant_it_is_defined_on():
    # heavy_audited is heavy_defaults plus the audit's settings: measured against heavy_defaults (not today's
    # shipped) when that has runs, and its `--set` extensions against it in turn
    seeds = {(0, "abc"): [(5000, 100.0, 60), (10000, 200.0, 120), (20000, 400.0, 240)]}
    better = {(0, "abc"): [(5000, 150.0, 60), (10000, 260.0, 120), (20000, 300.0, 240)]}
    groups = {("shipped", "inline", "learned"): {(0, "abc"): [(5000, 900.0, 60), (10000, 900.0, 120),
                                                            (20000, 900.0, 240)]},
              ("heavy_defaults", "inline", "learned"): seeds, ("heavy_audited", "inline", "learned"): better,
              ("heavy_audited+policy.horizon=9", "inline", "learned"): seeds,
              ("audited", "ray", "learned"): better}
    rows = report.ablation_rows(groups)
    assert "| heavy_audited | inline | learned | heavy_defaults | +50 (n=1) | +60 (n=1) | -100 (n=1) |" in rows
    assert ("| heavy_audited+policy.horizon=9 | inline | learned | heavy_audited | -50 (n=1) | -60 (n=1) | +100 (n=1) |"
            in rows)
    assert "| heavy_defaults | inline | learned | shipped | -800 (n=1) | -700 (n=1) | -500 (n=1) |" in rows
    assert not any(r.startswith("| audited |") for r in rows)  # no baseline in its runtime: no row
    assert report.lineage("dhmbpo_critic+policy.horizon=9") == ["dhmbpo_critic", "aligned", "reference", "shipped"]
    assert report.lineage("sac") == ["shipped"]


def test_ablation_differences_pair_the_seeds_both_ran():
    """Seed noise is most of the spread: a variant run on seed 0 only is measured against its base's seed 0, not
    against the mean of every seed the base ran; a seed run twice counts once, at its mean; no shared seed: the
    difference of the means, marked unpaired."""
    curve = lambda ret: [(5000, ret, 60), (10000, ret, 120), (20000, ret, 240)]
    base = {(0, "a"): curve(1000.0), (0, "b"): curve(800.0), (1, "a"): curve(300.0), (2, "a"): curve(2800.0)}
    assert report.difference({(0, "c"): curve(400.0)}, base, 20000) == "-500 (n=1)"  # 400 - mean(1000, 800)
    assert report.difference({(0, "c"): curve(400.0), (1, "c"): curve(500.0)}, base, 20000) == "-150 (n=2)"
    # seeds 3 and 4 only: 450 against the mean of the base's seeds 0-2, (900 + 300 + 2800) / 3
    assert report.difference({(3, "c"): curve(400.0), (4, "c"): curve(500.0)}, base, 20000) == "-883 (unpaired)"
    assert report.difference({(0, "c"): [(5000, 10.0, 60)]}, base, 20000) == "–"  # not run that far


def test_rank_test_is_the_exact_mann_whitney_p():
    # two runs below all of eight: 2 of the 45 splits are as extreme (both lowest or both highest)
    assert abs(report.rank_test([1.0, 2.0], [3.0 + i for i in range(8)]) - 2 / 45) < 1e-12
    assert report.rank_test([3.0, 7.0], [1.0, 5.0, 9.0]) == 1.0  # U = 3 = n·m/2: no evidence either way
    # ties count half: [1, 2] against [2, 3] gives U = 0.5; of the 6 splits of [1, 2, 2, 3], those with a 1 or
    # a 3 but not both (U 0.5 or 3.5) are as far from n·m/2 = 2, those with both or neither (U 2) are not
    assert abs(report.rank_test([1.0, 2.0], [2.0, 3.0]) - 4 / 6) < 1e-12
    # beyond 200,000 splits, the normal approximation: identical groups give p 1, separated ones a tiny p
    assert report.rank_test([0.0] * 12, [0.0] * 12) == 1.0
    assert report.rank_test([float(i) for i in range(12)], [100.0 + i for i in range(12)]) < 1e-4


def test_parity_compares_only_variants_run_in_both_runtimes():
    env, rows = "Hopper-v5", []
    for seed, top in ((0, 1000.0), (1, 3000.0), (2, 1000.0)):
        rows += curve_rows(env, "shipped", "inline", "learned", seed, [(5000, 100.0, 60), (10000, 800.0, 120), (20000, top, 240)])
    for seed, top in ((0, 700.0), (1, 600.0)):
        rows += curve_rows(env, "shipped", "ray", "learned", seed, [(5000, 100.0, 60), (10000, 400.0, 120), (20000, top, 240)])
    rows += curve_rows(env, "aligned", "inline", "learned", 0, [(5000, 5.0, 60)])  # inline only: not compared
    rows += curve_rows(env, "shipped", "ray", "known", 0, [(5000, 5.0, 60)])  # another termination rule: not compared

    lines = report.parity_section(rows)

    table = [line for line in lines if line.startswith("| Hopper")]
    # both Ray runs below the three inline ones: of the 10 splits, only the observed one is as extreme (the ties
    # among the inline runs make the opposite split, U 5.5 at 20k, less so than U 0)
    assert table == ["| Hopper-v5 | shipped | learned | 100 (n=2) vs 100 (n=3): +0, p 1.00 "
                     "| 400 (n=2) vs 800 (n=3): -400, p 0.10 | 650 (n=2) vs 1,667 (n=3): -1,017, p 0.10 |"]
    assert report.parity_section(curve_rows(env, "shipped", "inline", "learned", 0, [(5000, 1.0, 1)])) == []


def test_a_seed_run_again_on_the_same_commit_is_a_run_of_its_own():
    """A cut run's rows (booked as they came) and the same seed's rerun on one commit are two runs, not one curve
    with two returns at a step; rows of one run out of step order stay one run."""
    env = "Hopper-v5"
    cut = curve_rows(env, "shipped", "inline", "learned", 0, [(0, 40.0, 1), (2500, 900.0, 60)])
    again = curve_rows(env, "shipped", "inline", "learned", 0, [(0, 40.0, 1), (2500, 100.0, 60), (5000, 300.0, 120)])
    reordered = curve_rows(env, "shipped", "inline", "learned", 1, [(2500, 200.0, 60), (5000, 400.0, 120), (0, 50.0, 1)])
    seeds = report.runs(cut + again + reordered)[(env, "shipped", "inline", "learned")]
    assert seeds == {(0, "abc", 0): [(0, 40.0, 1.0), (2500, 900.0, 60.0)],
                     (0, "abc", 1): [(0, 40.0, 1.0), (2500, 100.0, 60.0), (5000, 300.0, 120.0)],
                     (1, "abc", 0): [(2500, 200.0, 60.0), (5000, 400.0, 120.0), (0, 50.0, 1.0)]}
    assert sorted(report.budget_points(seeds, 5000)) == [(300.0, 120.0), (400.0, 120.0)]
    assert report.per_seed_at(seeds, 2500) == {0: 500.0, 1: 200.0}
