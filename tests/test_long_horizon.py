"""The long-horizon study (pipelines/analysis/long_horizon.py) and its report subsection, on run folders written here
with evaluations and telemetry whose answers are worked out by hand: three seeds per recipe, paired by seed."""

import json

import numpy as np
import pandas as pd
import pytest

from pipelines.analysis.long_horizon import PROFILE, long_horizon, runs_on_disk, trend, write_outputs
from pipelines.analysis.markdown import fmt
from pipelines.analysis.stats import Analysis, t_interval
from pipelines.report.stability_section import long_horizon_subsection
from pipelines.run import config as config_mod

STEPS, DEFAULT = 1000, 100
AN = Analysis(margin_pct=0.5, min_seeds=3, far_factor=5.0)
SEEDS = (0, 1, 2)
REF = {0: 8.0, 100: 5.0, 500: 4.2, 1000: 4.0}  # bf16-amp's val loss per evaluation step (seed 0)
SEED_SCALE = (1.0, 1.01, 0.99)  # the seeds' luck: the pairs share it


def ref_losses(seed):
    return {s: v * SEED_SCALE[seed] for s, v in REF.items()}


def with_gaps(seed, at_default, at_end, at_500=None):
    """Val losses whose paired gaps against bf16-amp at the same seed are these (%)."""
    ref = ref_losses(seed)
    mid = at_500 if at_500 is not None else (at_default + at_end) / 2
    gaps = {0: 0.0, 100: at_default, 500: mid, 1000: at_end}
    return {s: ref[s] * (1 + gaps[s] / 100) for s in ref}


def write_run(results, method, seed=0, losses=None, status="ok", unchanged=None, diverged_step=None):
    d = results / "runs" / PROFILE / "tiny" / method / f"seed{seed}"
    d.mkdir(parents=True)
    losses = losses or ref_losses(seed)
    events = [{"event": "eval", "step": s, "val_loss": v} for s, v in losses.items()]
    for step, frac in (unchanged or {}).items():  # two layers whose mean is frac
        events.append(
            {
                "event": "telemetry",
                "step": step,
                "layers": [{"layer": "a", "unchanged_frac": frac - 0.1}, {"layer": "b", "unchanged_frac": frac + 0.1}],
            }
        )
    (d / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    last = max(losses)
    summary = {
        "profile": PROFILE,
        "model": "tiny",
        "method": method,
        "seed": seed,
        "lr": None,
        "status": status,
        "reason": "" if status == "ok" else f"step {diverged_step}: infinite gradient norm",
        "diverged_step": diverged_step,
        "steps": STEPS if status == "ok" else diverged_step,
        "tokens": STEPS * 512,
        "initial_val_loss": losses[0],
        "final_val_loss": losses[last] if status == "ok" else None,
        "tokens_per_s": 1000.0,
    }
    (d / "summary.json").write_text(json.dumps(summary))


NULL_END = (0.1, -0.05, 0.08)  # fp32 at the end: this horizon's noise floor is 0.1%
NAIVE = ((2.0, 5.0), (2.1, 5.3), (1.9, 4.8))  # (default, end): the stall turned into a growing gap
OPTIM = ((0.2, 0.2), (0.1, 0.15), (0.3, 0.25))  # holds, equivalent at the end
SR = ((1.0, 0.2), (1.1, 0.3), (0.9, 0.1))  # shrinks


@pytest.fixture
def results(tmp_path):
    for s in SEEDS:
        write_run(tmp_path, "bf16-amp", s)
        write_run(tmp_path, "fp32", s, with_gaps(s, 0.02, NULL_END[s]))
        write_run(tmp_path, "fp8-naive", s, with_gaps(s, *NAIVE[s]), unchanged={100: 0.9, 500: 0.95, 1000: 0.97})
        write_run(tmp_path, "fp8-optim", s, with_gaps(s, *OPTIM[s]))
        write_run(tmp_path, "fp8-naive-sr", s, with_gaps(s, *SR[s]))
    # fp8-e2e diverged after the default horizon on seed 1
    for s in SEEDS:
        if s == 1:
            write_run(
                tmp_path,
                "fp8-e2e",
                s,
                {k: v for k, v in with_gaps(s, 0.4, 0.5, 3.0).items() if k <= 500},
                status="diverged",
                diverged_step=600,
            )
        else:
            write_run(tmp_path, "fp8-e2e", s, with_gaps(s, 0.3, 0.4))
    return tmp_path


def test_paired_intervals_verdict_and_trend_per_recipe(results):
    table, per_run, curve = long_horizon(runs_on_disk(results), DEFAULT, AN)
    t = table.set_index("method")
    assert list(table["method"])[0] == "bf16-amp" and t.loc["bf16-amp", "trend"] == "reference"
    assert (t["n_seeds"] == 3).all()
    naive = t.loc["fp8-naive"]
    ends = [e for _, e in NAIVE]
    ci = t_interval(ends)
    assert naive["gap_end_mean_pct"] == pytest.approx(ci.mean) and naive["gap_end_ci_lo_pct"] == pytest.approx(ci.lo)
    assert naive["gaps_end_pct"] == "+5.00 / +5.30 / +4.80"
    assert naive["gap_default_mean_pct"] == pytest.approx(2.0)
    ch = t_interval([e - d for d, e in NAIVE])
    assert naive["change_mean_pct"] == pytest.approx(ch.mean) and naive["change_ci_lo_pct"] == pytest.approx(ch.lo)
    assert naive["trend"] == "grows" and naive["verdict_end"] == "worse"
    assert t.loc["fp8-optim", "trend"] == "holds" and t.loc["fp8-optim", "verdict_end"] == "equivalent"
    assert t.loc["fp8-naive-sr", "trend"] == "shrinks"
    e2e = t.loc["fp8-e2e"]
    assert e2e["trend"] == "diverged" and e2e["verdict_end"] == "diverged" and e2e["n_diverged"] == 1
    assert e2e["diverged_steps"] == "600" and e2e["status"] == "ok×2, diverged×1"
    # this horizon's own noise floor: fp32's largest |gap| at the end, printed on every row
    assert np.allclose(t["noise_floor_pct"], 0.1) and (t["null_method"] == "fp32").all()
    assert t.loc["fp32", "null_gaps_end_pct"] == "+0.10 / -0.05 / +0.08"
    assert naive["horizon_step"] == 100 and naive["steps"] == STEPS and naive["tokens_ratio"] == STEPS / DEFAULT
    # the telemetry's mean over layers and seeds, at the logged step nearest the default horizon and at the end
    assert naive["unchanged_early"] == pytest.approx(0.9) and naive["unchanged_late"] == pytest.approx(0.97)
    assert np.isnan(t.loc["bf16-amp", "unchanged_early"])
    assert "grows if the 95% Student-t interval" in naive["trend_rule"]
    # per run: both gaps, kept for a run that diverged up to its last evaluation
    r = per_run.set_index(["method", "seed"])
    assert r.loc[("fp8-naive", 1), "gap_change_pct"] == pytest.approx(3.2)
    assert np.isnan(r.loc[("fp8-e2e", 1), "gap_final_pct"]) and r.loc[("fp8-e2e", 1), "status"] == "diverged"
    # the curve: per recipe and evaluation the gaps over seeds, their mean and interval (the figure's band)
    c = curve.set_index(["method", "step"])
    assert c.loc[("fp8-e2e", 500), "n_seeds"] == 3 and c.loc[("fp8-e2e", 1000), "n_seeds"] == 2
    band = t_interval([(d + e) / 2 for d, e in NAIVE])
    assert c.loc[("fp8-naive", 500), "gap_ci_hi_pct"] == pytest.approx(band.hi)
    assert "bf16-amp" not in set(curve["method"])


def test_trend_needs_an_interval_that_excludes_zero():
    assert trend([3.0, 3.2, 2.9], AN) == "grows"
    assert trend([3.0, -1.0, 2.9], AN) == "holds"  # a wide interval contains 0
    assert trend([-0.6, -0.7, -0.65], AN) == "shrinks"
    assert trend([3.0, 3.2], AN) == "inconclusive (2 seeds)"  # fewer seeds than the verdicts need
    assert trend([3.0, 3.2, 2.9], AN, diverged=True) == "diverged"
    assert trend([float("nan")], AN) == "n/a"


def test_subsection_prints_the_csv(results, tmp_path):
    write_outputs(results, AN, DEFAULT)
    table = pd.read_csv(results / "long_horizon.csv")
    text = long_horizon_subsection(results, tmp_path / "figs", tmp_path)
    assert text.startswith("### Long horizon")
    naive = table[table["method"] == "fp8-naive"].iloc[0]
    assert (
        f"- fp8-naive: gap {fmt(naive.gap_default_mean_pct, 2)}% [{fmt(naive.gap_default_ci_lo_pct, 2)}, "
        f"{fmt(naive.gap_default_ci_hi_pct, 2)}] at step 100 -> {fmt(naive.gap_end_mean_pct, 2)}% "
        f"[{fmt(naive.gap_end_ci_lo_pct, 2)}, {fmt(naive.gap_end_ci_hi_pct, 2)}] at step 1000 (worse); change "
        f"{fmt(naive.change_mean_pct, 2)} [{fmt(naive.change_ci_lo_pct, 2)}, {fmt(naive.change_ci_hi_pct, 2)}]: "
        f"grows; share of FP8 weight codes unchanged by a step 0.900 at the default horizon, 0.970 at the "
        f"end."
    ) in text
    assert "- fp8-e2e: diverged on 1 of 3 seeds (at step 600; ok×2, diverged×1)." in text
    assert (
        "This horizon's own noise floor: 0.10%, the largest |paired gap| of `fp32` at the end (per seed "
        "+0.10 / -0.05 / +0.08), beside the margin 0.50%."
    ) in text
    assert f"{STEPS // DEFAULT:g}x the default profile's {DEFAULT}" in text
    assert f"Rules: verdict at the end: {table.iloc[0].verdict_rule}; {table.iloc[0].trend_rule}." in text
    assert "<!-- source: results/long_horizon_runs.csv -->" in text


def test_a_gap_that_turns_sign_between_the_horizons_is_said(tmp_path):
    """A recipe ahead of bf16-amp at the default horizon (interval below 0) and behind at the end (above 0) is
    named as such; one whose early interval contains 0 is not, and neither is one ahead at both horizons."""
    turning = ((-1.8, 2.8), (-0.9, 4.0), (-1.0, 5.6))  # fp8-naive's shape over the long horizon
    early_noise = ((0.4, 2.8), (-0.4, 4.0), (-0.3, 5.6))
    ahead = ((-1.8, -1.0), (-0.9, -0.8), (-1.0, -1.2))
    for s in SEEDS:
        write_run(tmp_path, "bf16-amp", s)
        write_run(tmp_path, "fp32", s, with_gaps(s, 0.02, NULL_END[s]))
        write_run(tmp_path, "fp8-naive", s, with_gaps(s, *turning[s]))
        write_run(tmp_path, "fp8-e2e", s, with_gaps(s, *early_noise[s]))
        write_run(tmp_path, "fp8-optim", s, with_gaps(s, *ahead[s]))
    write_outputs(tmp_path, AN, DEFAULT)
    t = pd.read_csv(tmp_path / "long_horizon.csv").set_index("method")
    assert t.loc["fp8-naive", "gap_default_ci_hi_pct"] < 0 < t.loc["fp8-naive", "gap_end_ci_lo_pct"]
    lines = {
        ln.split(":")[0][2:]: ln
        for ln in long_horizon_subsection(tmp_path, tmp_path, tmp_path).splitlines()
        if ln.startswith("- ")
    }
    turn = "ahead of bf16-amp at step 100, behind it at the end: the gap turns as the lr decays."
    assert lines["fp8-naive"].endswith(turn)
    assert "turns" not in lines["fp8-e2e"] and "turns" not in lines["fp8-optim"]


def test_subsection_without_runs_names_the_profile(tmp_path):
    write_outputs(tmp_path, AN)  # headers only
    for name in ("long_horizon.csv", "long_horizon_runs.csv", "long_horizon_curve.csv"):
        assert pd.read_csv(tmp_path / name).empty
    text = long_horizon_subsection(tmp_path, tmp_path, tmp_path)
    assert "No long-horizon runs on disk" in text and f"profile={PROFILE}" in text


def test_figure_draws_the_mean_with_its_interval_as_a_band(results, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.collections import PolyCollection

    from pipelines.report.figures import FigureData
    from pipelines.report.figures_stability import fig_long_horizon

    write_outputs(results, AN, DEFAULT)
    curve = pd.read_csv(results / "long_horizon_curve.csv")
    fig = fig_long_horizon(FigureData(summary=pd.DataFrame(), long_horizon_curve=curve))
    ax = fig.axes[0]
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    naive = lines["fp8-naive (n=3)"]
    assert list(naive.get_xdata()) == [0, 100, 500, 1000]
    assert naive.get_ydata()[-1] == pytest.approx(np.mean([e for _, e in NAIVE]))
    assert "fp32 (n=3, the null)" in lines and not any(k.startswith("bf16-amp") for k in lines)
    bands = [p for p in ax.collections if isinstance(p, PolyCollection)]
    assert len(bands) == 5  # one per recipe but the reference
    top = bands[[k for k in lines if "(n=" in k].index("fp8-naive (n=3)")].get_paths()[0].vertices[:, 1].max()
    assert top == pytest.approx(curve[curve["method"] == "fp8-naive"]["gap_ci_hi_pct"].max())
    assert isinstance(fig_long_horizon(FigureData(summary=pd.DataFrame())), str)


def test_the_profile_trains_ten_times_the_default_tokens_on_three_seeds():
    cfg = config_mod.load()
    base, prof = cfg["train"], config_mod.profile_settings(cfg, PROFILE)
    train = {**base, **prof.get("train", {})}
    assert (
        train["steps"] * train["batch_size"] * train["seq_len"]
        >= 10 * base["steps"] * base["batch_size"] * base["seq_len"]
    )
    assert base["steps"] % train["eval_every"] == 0  # an evaluation at the default horizon
    runs = config_mod.runs(cfg, PROFILE)
    recipes = {"bf16-amp", "fp32", "fp8-naive", "fp8-naive-sr", "fp8-e2e", "fp8-optim"}
    assert {m for _, m, _ in runs} == recipes
    for m in recipes:
        assert sorted(config_mod.parse_run_id(r)[0] for _, me, r in runs if me == m) == [0, 1, 2]
