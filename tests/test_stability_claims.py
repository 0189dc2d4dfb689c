"""The stability claims (pipelines/analysis/stability_claims.py) decided from the tables the stability tests write:
a frontier, a long horizon and an outlier table built here by the real analyses from runs whose answers are
worked out by hand; each claim is decided by its configuration's recipes, never by one reported beside it."""

import numpy as np
import pandas as pd
import pytest

from pipelines.analysis import stability_claims as sc
from pipelines.analysis.frontier import frontier
from pipelines.analysis.long_horizon import long_horizon, runs_on_disk
from pipelines.analysis.stats import Analysis
from tests.test_frontier import DIV, summary_of
from tests.test_long_horizon import DEFAULT, with_gaps, write_run

AN = Analysis(margin_pct=0.5, min_seeds=3)
OK3 = (5.0, 5.1, 5.05)


def grid_table(naive_breaks, e2e_breaks, seeds=3):
    """Per recipe the final losses over the grid (1e-3, 1e-2, 0.1, 1): bf16-amp diverges at 1 on every seed;
    fp8-naive / fp8-e2e at the grid index given per seed; fp8-own-tensorwise never."""

    def row(breaks):
        return [tuple(DIV if i >= b else OK3[s] + 0.01 * i for s, b in enumerate(breaks[:seeds])) for i in range(4)]

    ref = [3] * seeds
    return {
        "bf16-amp": row(ref),
        "fp8-naive": row(naive_breaks),
        "fp8-e2e": row(e2e_breaks),
        "fp8-own-tensorwise": row([9] * seeds),
        "fp8-optim": row([2] * seeds),
    }


def tables(naive_breaks=(2, 2, 2), e2e_breaks=(3, 3, 3), seeds=3, lh=None, outliers=None):
    fr, _ = frontier(summary_of(grid_table(list(naive_breaks), list(e2e_breaks), seeds)), AN)
    return sc.StabilityTables(
        frontier=fr,
        long_horizon=lh if lh is not None else pd.DataFrame(),
        outliers=outliers if outliers is not None else pd.DataFrame(),
    )


def test_pace_is_decided_by_the_articles_fp8_configurations_paired_by_seed():
    lower = sc.pace_row(tables(naive_breaks=(2, 2, 2)), AN)
    assert lower["verdict"] == "holds" and lower["decided_by"] == "fp8-naive, fp8-e2e" and lower["n_seeds"] == 3
    assert "fp8-naive: 0.1 (seed 0: -1; seed 1: -1; seed 2: -1: lower)" in lower["measured"]
    assert lower["measured"].startswith("bf16-amp diverges from lr 1;")
    assert "fp8-naive diverges earlier than bf16-amp: from lr 0.1" in lower["reading"]
    # fp8-optim diverges a step earlier too, but it puts only the optimizer states in FP8: beside, not deciding
    assert lower["beside"].startswith("fp8-own-tensorwise (keeps an fp32 master copy")
    assert (
        "fp8-optim (puts only the optimizer states in FP8: neither weights nor gradients): 0.1 (lower)"
        in lower["beside"]
    )
    same = sc.pace_row(tables(naive_breaks=(3, 3, 3)), AN)
    assert same["verdict"] == "does not hold" and "fp8-e2e diverges where bf16-amp does" in same["reading"]
    # seeds that disagree: no claim about every seed
    assert sc.pace_row(tables(naive_breaks=(2, 3, 3)), AN)["verdict"] == "inconclusive"
    assert sc.pace_row(tables(seeds=2), AN)["verdict"] == "inconclusive (2 seeds)"
    assert (
        "holds if any diverges at a lower lr than bf16-amp on every seed (lower, paired by seed in grid steps)"
        in lower["rule"]
    )
    # bf16-amp not diverging at the top: nothing compared with it means anything
    calm = {**grid_table([2, 2, 2], [3, 3, 3]), "bf16-amp": [OK3] * 4}
    fr, _ = frontier(summary_of(calm), AN)
    assert sc.pace_row(sc.StabilityTables(frontier=fr), AN)["verdict"] == "inconclusive (the frontier is not bounded)"
    assert sc.pace_row(sc.StabilityTables(), AN)["verdict"].startswith("not measured")


def naive_long_horizon(tmp_path, naive=((2.0, 5.0), (2.1, 5.3), (1.9, 4.8)), unchanged=(0.9, 0.95, 0.97)):
    for s in range(3):
        write_run(tmp_path, "bf16-amp", s)
        write_run(tmp_path, "fp32", s, with_gaps(s, 0.02, (0.1, -0.05, 0.08)[s]))
        write_run(tmp_path, "fp8-naive", s, with_gaps(s, *naive[s]), unchanged=dict(zip((100, 500, 1000), unchanged)))
        write_run(tmp_path, "fp8-naive-sr", s, with_gaps(s, 0.1, 0.05 * s))
    return long_horizon(runs_on_disk(tmp_path), DEFAULT, AN)[0]


def comp_rows(verdict="equivalent", n=3, unchanged=0.896):
    return pd.DataFrame(
        [
            {
                "method": "fp8-naive",
                "verdict": verdict,
                "n_judged": n,
                "n_seeds": n,
                "status": "ok",
                "gap_mean_pct": 0.2,
                "gap_ci_lo_pct": -0.1,
                "gap_ci_hi_pct": 0.4,
                "diverged_step": np.nan,
                "weight_codes_unchanged_frac_mean": unchanged,
                "weight_codes_unchanged_frac_max": 0.993,
            }
        ]
    )


def test_weights_claim_reads_the_main_runs_the_frontier_and_the_long_horizon(tmp_path):
    grows = naive_long_horizon(tmp_path)
    row = sc.weights_row(comp_rows(), tables(naive_breaks=(3, 3, 3), lh=grows), AN)
    # the main runs and the frontier show nothing, the long horizon shows the gap growing: holds
    assert row["verdict"] == "holds" and row["decided_by"] == "fp8-naive" and row["n_seeds"] == 3
    assert (
        "long horizon (1000 steps): gap +2.00% at step 100 -> +5.03%" in row["measured"]
        and ": grows" in row["measured"]
    )
    assert (
        "frontier: diverges from lr 1, paired by seed seed 0: +0; seed 1: +0; seed 2: +0 grid steps" in row["measured"]
    )
    assert row["reading"] == (
        "fp8-naive stalls: 89.6% of its FP8 weight codes unchanged by a step on average in the "
        "main runs (up to 99.3%); 90.0% -> 97.0% over the long horizon"
    )
    assert row["beside"].startswith("fp8-naive-sr (adds stochastic rounding of the FP8 weight update")
    assert "frontier (bounded) diverges at a lower lr than bf16-amp on every seed" in row["rule"]
    assert (
        "its divergence lr, paired by seed" in row["rule"] and "gap(end) - gap(default horizon) above 0" in row["rule"]
    )


def test_weights_claim_does_not_hold_only_when_every_test_says_so(tmp_path):
    holding = naive_long_horizon(tmp_path, naive=((0.1, 0.12), (0.2, 0.15), (0.05, 0.1)), unchanged=(0.2, 0.2, 0.3))
    st = tables(naive_breaks=(3, 3, 3), lh=holding)
    assert sc.weights_row(comp_rows(unchanged=0.2), st, AN)["verdict"] == "does not hold"
    assert (
        sc.weights_row(comp_rows(unchanged=0.2), st, AN)["reading"] == "fp8-naive neither: 20.0% of its FP8 weight "
        "codes unchanged by a step on average in the main runs (up to 99.3%); 20.0% -> 30.0% over the long horizon"
    )
    # one test missing: no "does not hold"
    no_lh = tables(naive_breaks=(3, 3, 3))
    assert sc.weights_row(comp_rows(), no_lh, AN)["verdict"] == "inconclusive"
    # the frontier alone shows it: fp8-naive diverges a grid step below bf16-amp on every seed
    row = sc.weights_row(comp_rows(), tables(naive_breaks=(2, 2, 2), lh=holding), AN)
    assert row["verdict"] == "holds" and row["reading"].startswith(
        "fp8-naive diverges and stalls: diverges on the frontier below bf16-amp's lr on some seed"
    )
    # too few seeds everywhere
    few = sc.weights_row(comp_rows(n=2), tables(naive_breaks=(2, 2), seeds=2), AN)
    assert few["verdict"] == "inconclusive (2 seeds)"


def outlier_table(gaps_k1000, n_paired=3, diverged=0):
    rows = []
    for k, lo, hi in ((10, -0.2, 0.2), (100, -0.3, 0.3), (1000, *gaps_k1000)):
        rows.append(
            {
                "granularity": "tensorwise",
                "k": k,
                "method": f"fp8-own-tensorwise-outlier-k{k}",
                "n_seeds": n_paired,
                "n_diverged": diverged if k == 1000 else 0,
                "gap_vs_uninjected_pct": (lo + hi) / 2,
                "gap_vs_uninjected_ci_lo_pct": lo,
                "gap_vs_uninjected_ci_hi_pct": hi,
                "n_paired": n_paired,
                "input_underflow_frac_max": 0.42,
            }
        )
    rows.append(
        {
            "granularity": "rowwise",
            "k": 1000,
            "method": "fp8-own-rowwise-outlier-k1000",
            "n_seeds": 1,
            "n_diverged": 0,
            "gap_vs_uninjected_pct": 0.01,
            "n_paired": 1,
        }
    )
    return pd.DataFrame(rows)


def test_outliers_claim_is_decided_by_per_tensor_scaling_paired_against_itself_uninjected():
    worse = sc.outliers_row(sc.StabilityTables(outliers=outlier_table((1.2, 2.0))), AN)
    assert worse["verdict"] == "holds" and worse["n_seeds"] == 3
    assert "x1000: +1.60% [+1.20, +2.00]" in worse["measured"]
    assert worse["reading"] == (
        "fp8-own-tensorwise with outliers x1000 neither: its paired gap against itself "
        "uninjected +1.60% [+1.20, +2.00]; up to 42.0% of the injected layer's input "
        "underflows to 0"
    )
    assert worse["beside"] == "rowwise (adds finer scaling (one scale per row)): x1000 +0.01% (1 seeds)"
    assert sc.outliers_row(sc.StabilityTables(outliers=outlier_table((-0.3, 0.4))), AN)["verdict"] == "does not hold"
    assert sc.outliers_row(sc.StabilityTables(outliers=outlier_table((0.2, 0.9))), AN)["verdict"] == "inconclusive"
    assert (
        sc.outliers_row(sc.StabilityTables(outliers=outlier_table((1.2, 2.0), n_paired=2)), AN)["verdict"]
        == "inconclusive (2 seeds)"
    )
    div = sc.outliers_row(sc.StabilityTables(outliers=outlier_table((-0.3, 0.4), diverged=1)), AN)
    assert div["verdict"] == "holds" and div["reading"].startswith("fp8-own-tensorwise with outliers x1000 diverges")
    assert sc.outliers_row(sc.StabilityTables(), AN)["verdict"].startswith("not measured")


def test_the_stability_tables_are_read_from_the_results_folder(tmp_path):
    fr, _ = frontier(summary_of(grid_table([2, 2, 2], [3, 3, 3])), AN)
    fr.to_csv(tmp_path / "frontier.csv", index=False)
    (tmp_path / "stress_outliers.csv").write_text("\n")  # headers only or nothing: an empty table
    st = sc.StabilityTables.load(tmp_path)
    assert len(st.frontier) == len(fr) and st.long_horizon.empty and st.outliers.empty
    assert sc.pace_row(st, AN)["verdict"] == "holds"


@pytest.mark.parametrize(
    "paired, lower",
    [
        ("seed 0: -1; seed 1: +0", True),
        ("seed 0: >= +1; seed 1: +0", False),
        ("seed 0: <= -2", True),
        ("reference", False),
    ],
)
def test_a_lower_divergence_lr_on_any_seed_reads_as_diverging(paired, lower):
    fr = pd.DataFrame([{"method": "fp8-x", "divergence_paired_grid_steps": paired}])
    assert sc.how_it_fails("fp8-x", None, fr, pd.DataFrame()).startswith("fp8-x diverges") == lower
