"""The learning-rate frontier (pipelines/analysis/frontier.py), its report section and the per-method lr grid
(``lrs_for``) of the config, on synthetic summary tables whose answers are worked out by hand."""
import copy
import re

import numpy as np
import pandas as pd
import pytest

from pipelines.run import config as config_mod
from pipelines.analysis.collect import add_reference_columns
from pipelines.analysis.frontier import COMMAND, frontier, statements, write_outputs
from pipelines.analysis.markdown import cell
from pipelines.report.stability_section import SUBSECTIONS, stability_section
from pipelines.analysis.stats import Analysis

GRID = [1e-3, 1e-2, 1e-1]
L0 = 8.0  # every run's step-0 val loss
DIV, FAIL = "diverged", "failed"

# final val loss per seed (0, 1) at each grid lr; DIV / FAIL mark runs that did not finish
BOUNDED = {
    "bf16-amp": [(5.0, 5.1), (4.0, 4.015), (DIV, 4.5)],     # best at seed 0; breaks at the top
    "fp32": [(5.0, 5.1), (4.01, 4.0), (4.3, 4.4)],          # best at seed 1; same frontier as bf16-amp
    "fp8-own-tensorwise": [(5.2, 5.3), (4.01, 4.015), (4.019, 4.0)],  # stable one step higher
    "fp8-naive": [(5.5, 5.6), (4.5, 4.6), (DIV, FAIL)],    # never within the margin
}


def summary_of(table: dict, profile: str = "stability", extra_rows=()) -> pd.DataFrame:
    rows = []
    for method, per_lr in table.items():
        for lr, losses in zip(GRID, per_lr):
            for seed, v in enumerate(losses):
                status = v if isinstance(v, str) else "ok"
                rows.append({"profile": profile, "model": "tiny", "method": method, "seed": seed, "lr": lr,
                             "status": status, "final_val_loss": np.nan if status != "ok" else v,
                             # a run that failed before its first evaluation has no step-0 loss of its own
                             "initial_val_loss": np.nan if status == FAIL else L0,
                             "diverged_step": 12.0 if status == DIV else np.nan, "tokens_per_s": 1000.0})
    rows += list(extra_rows)
    return add_reference_columns(pd.DataFrame(rows))


@pytest.fixture(scope="module")
def bounded():
    # a stress variant at one lr with a far lower loss: not a frontier recipe, so not the best loss either
    stress = {"profile": "stability", "model": "tiny", "method": "fp8-optim-v-e4m3", "seed": 0, "lr": 1e-2,
              "status": "ok", "final_val_loss": 3.0, "initial_val_loss": L0, "diverged_step": np.nan,
              "tokens_per_s": 1000.0}
    return frontier(summary_of(BOUNDED, extra_rows=[stress]), Analysis(margin_pct=0.5))


def test_max_stable_lr_follows_the_stated_rule(bounded):
    fr, cells = bounded
    fr = fr.set_index("method")
    assert set(fr.index) == set(BOUNDED)  # the one-lr stress variant is no frontier recipe
    assert fr.loc["bf16-amp", "max_stable_lr"] == 1e-2      # 4.0 / 4.015: 0% and 0.375% above best
    assert fr.loc["fp32", "max_stable_lr"] == 1e-2          # 4.3 at the top is 7.5% above
    assert fr.loc["fp8-own-tensorwise", "max_stable_lr"] == 1e-1  # 4.019 is 0.475% above 4.0
    assert np.isnan(fr.loc["fp8-naive", "max_stable_lr"]) and fr.loc["fp8-naive", "max_stable_index"] == -1
    assert list(fr["steps_vs_reference"]) == [0, 0, 1, -2]
    assert "within 0.5% (analysis.margin_pct) of best_s" in fr["rule"].iloc[0]
    assert fr["grid"].iloc[0] == "0.001 / 0.01 / 0.1" and (fr["n_seeds"] == 2).all()
    c = cells.set_index(["method", "lr"])
    assert c.loc[("fp8-own-tensorwise", 1e-1), "excess_pct"] == "+0.48 / +0.00"
    assert c.loc[("fp8-own-tensorwise", 1e-1), "max_stable"] and not c.loc[("fp8-own-tensorwise", 1e-2), "max_stable"]
    assert c.loc[("fp8-naive", 1e-1), "status"] == "diverged×1, failed×1"
    assert c.loc[("fp8-naive", 1e-1), "diverged"] and c.loc[("fp8-naive", 1e-1), "n_failed"] == 1
    assert cells["max_stable"].sum() == 3


def test_paired_gap_per_cell_against_bf16_amp_at_the_same_seed_and_lr(bounded):
    c = bounded[1].set_index(["method", "lr"])
    g = c.loc[("fp32", 1e-2)]
    per_seed = [100 * (4.01 - 4.0) / 4.0, 100 * (4.0 - 4.015) / 4.015]
    assert g["gap_mean_pct"] == pytest.approx(np.mean(per_seed))
    assert g["gaps_pct"] == " / ".join(f"{v:+.2f}" for v in per_seed) and g["n_gaps"] == 2
    half = 12.706204736 * np.std(per_seed, ddof=1) / np.sqrt(2)  # t(0.975, 1 df)
    assert g["gap_ci_lo_pct"] == pytest.approx(np.mean(per_seed) - half, rel=1e-6)
    # bf16-amp diverged at seed 0 and lr 0.1: only seed 1 has a pair there, and no interval
    top = c.loc[("fp32", 1e-1)]
    assert top["n_gaps"] == 1 and top["gap_mean_pct"] == pytest.approx(100 * (4.4 - 4.5) / 4.5)
    assert np.isnan(top["gap_ci_lo_pct"])


def test_sensitivity_counts_broken_runs_at_their_step0_loss(bounded):
    fr = bounded[0].set_index("method")
    # per seed: mean over the grid of min(L, L0) - the recipe's lowest; a diverged/failed run counts at L0 = 8
    amp = np.mean([np.mean([1.0, 0.0, 4.0]), np.mean([5.1 - 4.015, 0.0, 4.5 - 4.015])])
    naive = np.mean([np.mean([1.0, 0.0, 3.5]), np.mean([1.0, 0.0, 3.4])])  # the failed run: its seed's L0
    assert fr.loc["bf16-amp", "lr_sensitivity"] == pytest.approx(amp)
    assert fr.loc["fp8-naive", "lr_sensitivity"] == pytest.approx(naive)
    assert (fr["n_sensitivity_seeds"] == 2).all()


def test_bounded_and_differs_statements(bounded):
    fr = bounded[0]
    assert fr["bounded"].all() and "status diverged×1, ok×1" in fr["bounded_note"].iloc[0]
    text = statements(fr)
    assert text[0].startswith("stability/tiny, grid 0.001 / 0.01 / 0.1: the frontier is bounded")
    assert ("differs from bf16-amp's (max stable lr 0.01) by at least one grid step: fp8-own-tensorwise 0.1 "
            "(+1 grid steps); fp8-naive none (-2 grid steps)") in text[1]


def test_unbounded_grid_and_no_fp8_difference_are_said_plainly():
    calm = {m: [(5.0, 5.1), (4.1, 4.1), (4.0, 4.0)] for m in ("bf16-amp", "fp8-e2e", "fp8-optim")}
    fr, cells = frontier(summary_of(calm), Analysis(margin_pct=0.5))
    assert not fr["bounded"].any() and (fr["max_stable_lr"] == 1e-1).all()
    text = " ".join(statements(fr))
    assert "the frontier is not bounded: bf16-amp is still stable at the top of the grid (lr 0.1" in text
    assert "lower bound" in text
    assert ("no FP8 recipe's frontier differs from bf16-amp's by at least one grid step (every FP8 recipe's max "
            "stable lr equals bf16-amp's, 0.1)") in text
    # at a margin below the spread of the finishing losses nothing but the best cells is stable
    fr2, _ = frontier(summary_of(calm), Analysis(margin_pct=1e-9))
    assert (fr2["max_stable_lr"] == 1e-1).all()


def test_no_frontier_in_a_one_lr_profile():
    s = summary_of({"bf16-amp": [(5.0, 5.1)], "fp32": [(5.0, 5.1)]}, profile="cpu")
    fr, cells = frontier(s)
    assert fr.empty and cells.empty and list(fr.columns)[:3] == ["profile", "model", "method"]


# ------------------------------------------------------------------------------- report section

def parse_table(text: str, source: str):
    lines = text.splitlines()
    i = lines.index(f"<!-- source: {source} -->")
    header = [c.strip() for c in lines[i + 1].strip("|").split("|")]
    rows = []
    for row in lines[i + 3:]:
        if not row.startswith("|"):
            break
        rows.append(dict(zip(header, (c.strip() for c in row.strip("|").split("|")))))
    return rows


def test_report_section_prints_the_csv(tmp_path):
    res = tmp_path / "results"
    res.mkdir()
    summary_of(BOUNDED).to_csv(res / "summary.csv", index=False)
    write_outputs(res / "summary.csv", res, Analysis(margin_pct=0.5))
    from pipelines.analysis.comparison import noise_floors

    noise_floors(summary_of(BOUNDED), Analysis(margin_pct=0.5)).to_csv(res / "noise_floor.csv", index=False)
    text = stability_section(res, tmp_path / "figures", tmp_path)
    # fp32 vs bf16-amp: 0.0 and 0.0 at 1e-3; 0.25 and 0.37 at 1e-2; at 1e-1 only seed 1 pairs (2.22)
    assert ("lr 0.001: 0.00% (fp32, 2 seeds); lr 0.01: 0.37% (fp32, 2 seeds); lr 0.1: 2.22% (fp32, 1 seeds). "
            "At lr 0.1 it is not below the margin") in text
    assert text.startswith("## Where FP8 breaks") and "### Learning-rate frontier" in text
    fr = pd.read_csv(res / "frontier.csv").set_index("method")
    rows = parse_table(text, "results/frontier.csv")
    assert [r["method"] for r in rows] == list(fr.index)
    checked = 0
    for r in rows:
        for col, printed in r.items():
            if col != "method":
                assert printed == cell(col, fr.loc[r["method"], col].item()), (r["method"], col, printed)
                checked += 1
    assert checked == 4 * 8
    assert [r["max_stable_lr"] for r in rows] == ["0.01", "0.01", "0.1", "–"]
    cells = pd.read_csv(res / "frontier_cells.csv")
    crow = parse_table(text, "results/frontier_cells.csv")
    assert len(crow) == len(cells) == 12
    for r, (_, c) in zip(crow, cells.iterrows()):
        assert all(printed == cell(col, c[col].item() if hasattr(c[col], "item") else c[col])
                   for col, printed in r.items())
    for s in statements(fr.reset_index()):
        assert s in text
    assert "Grid: 0.001 / 0.01 / 0.1; margin 0.5%." in text


def test_report_section_points_to_the_profile_without_a_frontier(tmp_path):
    res = tmp_path / "results"
    res.mkdir()
    summary_of({"bf16-amp": [(5.0, 5.1)]}, profile="cpu").to_csv(res / "summary.csv", index=False)
    write_outputs(res / "summary.csv", res)
    assert pd.read_csv(res / "frontier.csv").empty
    text = stability_section(res, tmp_path / "figures", tmp_path)
    assert COMMAND in text and "No learning-rate frontier" in text
    # a plugged-in subsection is appended after the frontier
    SUBSECTIONS.append(lambda r, f, d: "### Stress tests\n\nplugged in")
    try:
        assert stability_section(res, tmp_path, tmp_path).endswith("### Stress tests\n\nplugged in")
    finally:
        SUBSECTIONS.pop()


def test_report_section_falls_back_to_stability_runs_on_disk(tmp_path):
    from pipelines.run.events import RunWriter

    res = tmp_path / "results"
    s = summary_of(BOUNDED)
    for r in s.to_dict("records"):
        out = res / "runs" / "stability" / "tiny" / r["method"] / config_mod.run_id(r["seed"], r["lr"])
        RunWriter(out).finish({k: v for k, v in r.items() if k not in ("loss_gap_pct", "speedup")})
    summary_of({"bf16-amp": [(5.0, 5.1)]}, profile="cpu").to_csv(res / "summary.csv", index=False)
    write_outputs(res / "summary.csv", res, Analysis(margin_pct=0.5))
    fr = pd.read_csv(res / "frontier.csv")
    assert len(fr) == 4 and fr["source"].iloc[0].endswith("runs/stability/ (finished runs on disk)")
    assert dict(zip(fr["method"], fr["max_stable_lr"].fillna(-1))) == {
        "bf16-amp": 0.01, "fp32": 0.01, "fp8-own-tensorwise": 0.1, "fp8-naive": -1}


# ---------------------------------------------------------------------------------- lrs_for config

@pytest.fixture(scope="module")
def cfg():
    return config_mod.load()


def with_stability(cfg, **changes):
    c = copy.deepcopy(cfg)
    c["profiles"]["stability"].update(changes)
    return c


def test_stability_profile_is_the_frontier_grid(cfg):
    ps = config_mod.profile_settings(cfg, "stability")
    assert ps["lrs"] == [1e-3, 3.16e-3, 1e-2, 3.16e-2, 1e-1] and ps["seeds"] == [0, 1]
    assert {"bf16-amp", "fp32", "bf16-pure", "fp8-own-tensorwise", "fp8-own-delayed", "fp8-own-blockwise",
            "fp8-torchao-tensorwise", "fp8-naive", "fp8-optim", "fp8-e2e"} <= set(ps["methods"])
    assert ps["train"]["steps"] == 80 and not ps["bench"]["enabled"]
    assert ps["memory_trace"]["models"] == ["tiny"]
    seed, lr = config_mod.parse_run_id(config_mod.run_id(0, 3.16e-3))
    assert lr == 3.16e-3  # the run folder's name gives the lr back exactly


def test_lrs_for_pins_a_method_to_its_own_lrs(cfg):
    c = with_stability(cfg, lrs_for={"fp32": [1e-2]})
    runs = config_mod.runs(c, "stability")
    assert [r for m, me, r in runs if me == "fp32"] == ["seed0_lr0.01", "seed1_lr0.01"]
    assert len([r for m, me, r in runs if me == "bf16-amp"]) == 10
    rc = config_mod.resolve_run(c, "stability", "tiny", "fp32", 0, lr=1e-2)
    assert rc["train"]["lr"] == 1e-2


@pytest.mark.parametrize("lrs_for, message", [
    ({"fp8-nope": [1e-2]}, "profile stability: unknown lrs_for method 'fp8-nope'; valid lrs_for methods: "
                           "bf16-amp, fp32, bf16-pure"),
    ({"fp32": [1e-2, 1e-3]}, "lrs_for.fp32: [0.01, 0.001] must be ascending without repeats; valid: [0.001, 0.01]"),
    ({"fp32": [1e-2, 1e-2]}, "must be ascending without repeats"),
    ({"fp32": [3.1622777e-3]}, "more than 6 significant digits; valid: e.g. 0.00316228"),
    ({"fp32": []}, "lrs_for.fp32: empty"),
])
def test_bad_lrs_for_is_refused_naming_what_is_valid(cfg, lrs_for, message):
    with pytest.raises(config_mod.ConfigError, match=re.escape(message)):
        config_mod.profile_settings(with_stability(cfg, lrs_for=lrs_for), "stability")


def test_bad_lrs_are_refused(cfg):
    with pytest.raises(config_mod.ConfigError, match=re.escape("profile stability: lrs: [0.1, 0.01] must be ascending")):
        config_mod.profile_settings(with_stability(cfg, lrs=[0.1, 0.01]), "stability")
    with pytest.raises(config_mod.ConfigError, match="lrs_for.fp32.0"):  # the schema, before any work
        config_mod.validate(with_stability(cfg, lrs_for={"fp32": [-1.0]}))


def test_heatmap_marks_broken_cells_and_outlines_the_frontier(bounded, tmp_path):
    import matplotlib.patches as mpatches

    from pipelines.report.figures import FigureData
    from pipelines.report.figures_stability import fig_lr_frontier

    fig = fig_lr_frontier(FigureData(pd.DataFrame(), frontier_cells=bounded[1]))
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.texts]
    assert "div 1/2" in texts and "div 1/2\nfail 1/2" in texts  # bf16-amp and fp8-naive at the top
    outlined = [p for p in ax.patches if isinstance(p, mpatches.Rectangle) and not p.get_fill()]
    assert len(outlined) == int(bounded[1]["max_stable"].sum()) == 3
    assert [t.get_text() for t in ax.get_yticklabels()][0] == "bf16-amp"
    assert "stability" in fig_lr_frontier(FigureData(pd.DataFrame()))  # no frontier: the sentence, no figure
