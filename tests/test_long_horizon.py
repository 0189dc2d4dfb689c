"""The long-horizon study (pipelines/analysis/long_horizon.py) and its report subsection, on run folders written here
with evaluations and telemetry whose answers are worked out by hand."""
import json

import numpy as np
import pandas as pd
import pytest

from pipelines.run import config as config_mod
from pipelines.analysis.long_horizon import PROFILE, long_horizon, runs_on_disk, trend, write_outputs
from pipelines.analysis.markdown import fmt
from pipelines.report.stability_section import long_horizon_subsection
from pipelines.analysis.stats import Analysis

STEPS, DEFAULT = 1000, 100
AN = Analysis(margin_pct=0.5, min_seeds=3, far_factor=5.0)
REF = {0: 8.0, 100: 5.0, 500: 4.2, 1000: 4.0}  # bf16-amp's val loss per evaluation step


def write_run(results, method, seed=0, losses=None, status="ok", unchanged=None, diverged_step=None):
    d = results / "runs" / PROFILE / "tiny" / method / f"seed{seed}"
    d.mkdir(parents=True)
    losses = losses or REF
    events = [{"event": "eval", "step": s, "val_loss": v} for s, v in losses.items()]
    for step, frac in (unchanged or {}).items():  # two layers whose mean is frac
        events.append({"event": "telemetry", "step": step, "layers": [
            {"layer": "a", "unchanged_frac": frac - 0.1}, {"layer": "b", "unchanged_frac": frac + 0.1}]})
    (d / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    last = max(losses)
    summary = {"profile": PROFILE, "model": "tiny", "method": method, "seed": seed, "lr": None, "status": status,
               "reason": "ok" if status == "ok" else f"step {diverged_step}: loss is nan",
               "diverged_step": diverged_step, "steps": STEPS, "tokens": STEPS * 512,
               "initial_val_loss": losses[0], "final_val_loss": losses[last] if status == "ok" else None,
               "tokens_per_s": 1000.0}
    (d / "summary.json").write_text(json.dumps(summary))


@pytest.fixture
def results(tmp_path):
    write_run(tmp_path, "bf16-amp")
    # +2% at the default horizon, +5% at the end: the stall turned into a growing gap
    write_run(tmp_path, "fp8-naive", losses={0: 8.0, 100: 5.1, 500: 4.3, 1000: 4.2},
              unchanged={100: 0.9, 500: 0.95, 1000: 0.97})
    # +0.2% at both: holds
    write_run(tmp_path, "fp8-own-tensorwise", losses={0: 8.0, 100: 5.01, 500: 4.21, 1000: 4.008})
    # diverged after the default horizon
    write_run(tmp_path, "fp8-e2e", losses={0: 8.0, 100: 5.02, 500: 4.5}, status="diverged", diverged_step=600)
    return tmp_path


def test_gaps_at_the_default_horizon_and_at_the_end(results):
    table, curve = long_horizon(runs_on_disk(results), DEFAULT, AN)
    t = table.set_index("method")
    assert list(table["method"])[0] == "bf16-amp"
    assert t.loc["fp8-naive", "gap_at_default_pct"] == pytest.approx(2.0)
    assert t.loc["fp8-naive", "gap_final_pct"] == pytest.approx(5.0)
    assert t.loc["fp8-naive", "gap_change_pct"] == pytest.approx(3.0)
    assert t.loc["fp8-naive", "trend"] == "grows"
    assert t.loc["fp8-own-tensorwise", "trend"] == "holds"
    assert t.loc["fp8-e2e", "trend"] == "diverged"
    assert t.loc["fp8-naive", "tokens_ratio"] == pytest.approx(STEPS / DEFAULT)
    # the telemetry's mean over layers, at the logged step nearest the default horizon and at the end
    assert t.loc["fp8-naive", "unchanged_early"] == pytest.approx(0.9)
    assert t.loc["fp8-naive", "unchanged_late"] == pytest.approx(0.97)
    assert np.isnan(t.loc["bf16-amp", "unchanged_early"])
    # the curve: the paired gap at every evaluation, kept up to the last one of a run that diverged
    e2e = curve[curve["method"] == "fp8-e2e"].set_index("step")["gap_pct"]
    assert e2e.loc[500] == pytest.approx(100 * (4.5 - 4.2) / 4.2)
    assert 1000 not in e2e.index


def test_few_seeds_need_a_change_beyond_the_noise_floor():
    assert trend(3.0, 1, AN, noise_floor_pct=0.2) == "grows"     # 3 > max(0.5, 5 x 0.2)
    assert trend(3.0, 1, AN, noise_floor_pct=1.0) == "holds"     # 3 < 5 x 1.0
    assert trend(3.0, 3, AN, noise_floor_pct=1.0) == "grows"     # enough seeds: the margin alone
    assert trend(-0.6, 3, AN, noise_floor_pct=None) == "shrinks"
    assert trend(float("nan"), 3, AN, None) == "n/a"


def test_subsection_prints_the_csv(results, tmp_path):
    write_outputs(results, AN, DEFAULT)
    table = pd.read_csv(results / "long_horizon.csv")
    text = long_horizon_subsection(results, tmp_path / "figs", tmp_path)
    assert text.startswith("### Long horizon")
    naive = table[table["method"] == "fp8-naive"].iloc[0]
    assert (f"- fp8-naive (seed 0): gap {fmt(naive.gap_at_default_pct, 2)}% at step 100 -> "
            f"{fmt(naive.gap_final_pct, 2)}% at step 1000: grows; unchanged FP8 codes 0.900 -> 0.970.") in text
    assert "- fp8-e2e (seed 0): diverged (step 600: loss is nan)." in text
    assert f"{STEPS // DEFAULT:g}x the default profile's {DEFAULT}" in text


def test_subsection_without_runs_names_the_profile(tmp_path):
    write_outputs(tmp_path, AN)  # headers only
    assert pd.read_csv(tmp_path / "long_horizon.csv").empty
    assert pd.read_csv(tmp_path / "long_horizon_curve.csv").empty
    text = long_horizon_subsection(tmp_path, tmp_path, tmp_path)
    assert "No long-horizon runs on disk" in text and f"profile={PROFILE}" in text


def test_figure_draws_the_curve(results, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from pipelines.report.figures import FigureData
    from pipelines.report.figures_stability import fig_long_horizon

    write_outputs(results, AN, DEFAULT)
    data = FigureData(summary=pd.DataFrame(), long_horizon_curve=pd.read_csv(results / "long_horizon_curve.csv"))
    fig = fig_long_horizon(data)
    lines = {ln.get_label(): ln for ln in fig.axes[0].get_lines()}
    naive = lines["fp8-naive (n=1)"]
    assert list(naive.get_xdata()) == [0, 100, 500, 1000]
    assert naive.get_ydata()[-1] == pytest.approx(5.0)
    assert "bf16-amp (n=1)" not in lines
    assert isinstance(fig_long_horizon(FigureData(summary=pd.DataFrame())), str)


def test_the_profile_trains_ten_times_the_default_tokens():
    cfg = config_mod.load()
    base, prof = cfg["train"], config_mod.profile_settings(cfg, PROFILE)
    train = {**base, **prof.get("train", {})}
    assert train["steps"] * train["batch_size"] * train["seq_len"] >= 10 * base["steps"] * base["batch_size"] * base["seq_len"]
    runs = {m for _, m, _ in config_mod.runs(cfg, PROFILE)}
    assert {"bf16-amp", "fp8-naive", "fp8-naive-sr", "fp8-e2e", "fp8-optim", "fp8-own-tensorwise"} <= runs


def _claims(tmp_path, verdict):
    pd.DataFrame([{"claim": "FP8 weights and gradients (no high-precision copy) are unstable: ...",
                   "verdict": verdict}]).to_csv(tmp_path / "claims.csv", index=False)


def test_the_weights_claim_reads_all_three_tests(results, tmp_path):
    from pipelines.report.stability_section import weights_claim_evidence

    _claims(results, "does not hold")
    # only the default run: its verdict alone cannot settle "does not hold" for all three
    text = weights_claim_evidence(results)
    assert "**inconclusive**" in text and "Learning-rate frontier: not run" in text and "Long horizon: not run" in text
    # the long horizon shows fp8-naive's gap growing (2% -> 5%): the claim holds on that test
    write_outputs(results, AN, DEFAULT)
    text = weights_claim_evidence(results)
    assert "**holds**" in text and "seed 0: 2.00% -> 5.00% (grows)" in text
    # every test ran and none shows it
    pd.DataFrame([{"method": "fp8-naive", "max_stable_lr": 0.01, "steps_vs_reference": 0, "n_seeds": 2,
                   "grid": "0.001, 0.01, 0.1"}]).to_csv(results / "frontier.csv", index=False)
    lh = pd.read_csv(results / "long_horizon.csv")
    lh.loc[lh["method"] == "fp8-naive", "trend"] = "holds"
    lh.to_csv(results / "long_horizon.csv", index=False)
    text = weights_claim_evidence(results)
    assert "**does not hold**" in text and "max stable lr 0.01, 0 grid step(s)" in text
    # a frontier a grid step below bf16-amp's shows it
    pd.DataFrame([{"method": "fp8-naive", "max_stable_lr": 0.001, "steps_vs_reference": -1, "n_seeds": 2,
                   "grid": "0.001, 0.01, 0.1"}]).to_csv(results / "frontier.csv", index=False)
    assert "**holds**" in weights_claim_evidence(results)
    assert weights_claim_evidence(tmp_path / "nothing") == ""
