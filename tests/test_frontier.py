"""The learning-rate frontier (pipelines/analysis/frontier.py), its report section and the per-method lr grid
(``lrs_for``) of the config, on synthetic summary tables whose answers are worked out by hand."""

import copy
import re

import numpy as np
import pandas as pd
import pytest

from pipelines.analysis.collect import add_reference_columns
from pipelines.analysis.frontier import COMMAND, frontier, statements, write_outputs
from pipelines.analysis.markdown import cell
from pipelines.analysis.stats import Analysis
from pipelines.report.stability_section import SUBSECTIONS, stability_section
from pipelines.run import config as config_mod

GRID = [1e-3, 1e-2, 1e-1, 1.0]
L0 = 8.0  # every run's step-0 val loss
DIV, NAN, FAIL = "diverged", "nan", "failed"  # NAN: diverged on a non-finite value
REASONS = {
    DIV: "step 9: final val loss 40.000 above the step-0 val loss 8.000; mean loss of the last 10 steps 50.0 "
    "> 1.5 x 8.000 (the lower of the step-0 loss and the lowest 10-step mean): a spike that did not recover",
    NAN: "step 12: infinite gradient norm",
    FAIL: "RuntimeError: boom",
}

# final val loss per seed (0, 1) at each grid lr; DIV / NAN / FAIL mark runs that did not finish ok
BOUNDED = {
    "bf16-amp": [(5.0, 5.1), (4.0, 4.015), (4.5, 4.6), (DIV, DIV)],  # best at seed 0; diverges at the top
    "fp32": [(5.0, 5.1), (4.01, 4.0), (4.3, 4.4), (DIV, NAN)],  # best at seed 1; same frontier
    "fp8-own-tensorwise": [(5.2, 5.3), (4.01, 4.015), (4.019, 4.0), (4.8, 4.9)],  # never diverges: higher
    "fp8-naive": [(5.5, 5.6), (4.5, 4.6), (NAN, 4.7), (FAIL, DIV)],  # seed 0 one step lower, seed 1 the same
    "fp8-e2e": [(5.0, 5.1), (4.1, 4.1), (DIV, NAN), (DIV, DIV)],  # one step lower on both seeds
}


def summary_of(table: dict, profile: str = "stability", extra_rows=(), grid=GRID) -> pd.DataFrame:
    rows = []
    for method, per_lr in table.items():
        for lr, losses in zip(grid, per_lr):
            for seed, v in enumerate(losses):
                status = "diverged" if v in (DIV, NAN) else v if isinstance(v, str) else "ok"
                rows.append(
                    {
                        "profile": profile,
                        "model": "tiny",
                        "method": method,
                        "seed": seed,
                        "lr": lr,
                        "status": status,
                        "final_val_loss": np.nan if status != "ok" else v,
                        "reason": REASONS.get(v, "") if isinstance(v, str) else "",
                        # a run that failed before its first evaluation has no step-0 loss of its own
                        "initial_val_loss": np.nan if status == FAIL else L0,
                        "diverged_step": (12.0 if v == NAN else 9.0) if status == "diverged" else np.nan,
                        "tokens_per_s": 1000.0,
                    }
                )
    rows += list(extra_rows)
    return add_reference_columns(pd.DataFrame(rows))


@pytest.fixture(scope="module")
def bounded():
    # a stress variant at one lr with a far lower loss: not a frontier recipe, so not the best loss either
    stress = {
        "profile": "stability",
        "model": "tiny",
        "method": "fp8-optim-v-e4m3",
        "seed": 0,
        "lr": 1e-2,
        "status": "ok",
        "final_val_loss": 3.0,
        "initial_val_loss": L0,
        "diverged_step": np.nan,
        "tokens_per_s": 1000.0,
        "reason": "",
    }
    return frontier(summary_of(BOUNDED, extra_rows=[stress]), Analysis(margin_pct=0.5), with_seeds=True)


def test_divergence_lr_per_seed_and_per_recipe_paired_with_bf16_amp(bounded):
    fr, cells, seeds = bounded
    fr = fr.set_index("method")
    assert set(fr.index) == set(BOUNDED)  # the one-lr stress variant is no frontier recipe
    assert fr.loc["bf16-amp", "divergence_lr"] == 1.0 and fr.loc["bf16-amp", "divergence_index"] == 3
    # fp8-naive: seed 0 diverges at 0.1 (non-finite; its failed run at 1 changes nothing), seed 1 at 1
    sd = seeds.set_index(["method", "seed"])
    assert (
        sd.loc[("fp8-naive", 0), "divergence_lr"] == 0.1
        and sd.loc[("fp8-naive", 0), "divergence_kinds"] == "non-finite"
    )
    assert sd.loc[("fp8-naive", 1), "divergence_lr"] == 1.0 and sd.loc[("fp8-naive", 0), "n_failed"] == 1
    assert sd.loc[("fp8-naive", 0), "paired_grid_steps"] == -1 and sd.loc[("fp8-naive", 1), "paired_grid_steps"] == 0
    assert fr.loc["fp8-naive", "divergence_lr"] == 0.1 and fr.loc["fp8-naive", "divergence_grid_steps"] == -1
    assert fr.loc["fp8-naive", "divergence_vs_reference"] == "mixed"  # the seeds disagree: no claim on both
    assert fr.loc["fp8-naive", "divergence_paired_grid_steps"] == "seed 0: -1; seed 1: +0"
    assert fr.loc["fp8-e2e", "divergence_vs_reference"] == "lower"
    assert fr.loc["fp8-e2e", "divergence_kinds"] == "above start, unrecovered spike, non-finite"
    assert fr.loc["fp32", "divergence_vs_reference"] == "same" and fr.loc["fp32", "n_diverging_seeds"] == 2
    # never diverging on the grid counts above its top: a bound
    ow = fr.loc["fp8-own-tensorwise"]
    assert np.isnan(ow["divergence_lr"]) and ow["divergence_index"] == 4 and ow["n_diverging_seeds"] == 0
    assert ow["divergence_vs_reference"] == "higher" and ow["divergence_grid_steps"] == 1
    assert ow["divergence_paired_grid_steps"] == "seed 0: >= +1; seed 1: >= +1"
    assert ow["divergence_lr_by_seed"] == "seed 0: none; seed 1: none"
    assert fr.loc["bf16-amp", "divergence_vs_reference"] == "reference"
    c = cells.set_index(["method", "lr"])
    assert c.loc[("fp8-e2e", 0.1), "first_divergence"] and not c.loc[("fp8-e2e", 1.0), "first_divergence"]
    assert cells["first_divergence"].sum() == 4  # every recipe but fp8-own-tensorwise
    assert "spike that did not recover" in fr.loc["fp8-e2e", "divergence_definition"]


def test_bounded_when_bf16_amp_diverges_on_every_seed_at_the_top_only(bounded):
    fr = bounded[0]
    assert (
        fr["bounded"].all()
        and "diverges on every seed at the top of the grid (lr 1: diverged×2)" in fr["bounded_note"].iloc[0]
    )
    # within-margin at 0.01, divergence at 1: one grid point (0.1) between
    assert (fr["reference_points_between"] == 1).all()
    top_ok = {**BOUNDED, "bf16-amp": [(5.0, 5.1), (4.0, 4.015), (4.5, 4.6), (DIV, 4.9)]}
    fr2, _ = frontier(summary_of(top_ok), Analysis(margin_pct=0.5))
    assert not fr2["bounded"].any() and "does not diverge on every seed at the top" in fr2["bounded_note"].iloc[0]
    low = {**BOUNDED, "bf16-amp": [(NAN, 5.1), (4.0, 4.015), (4.5, 4.6), (DIV, DIV)]}
    fr3, _ = frontier(summary_of(low), Analysis(margin_pct=0.5))
    assert not fr3["bounded"].any() and "already at the bottom" in fr3["bounded_note"].iloc[0]
    # a grid still running: seed 1's run at the top is not on disk, so seed 0's divergence alone does not bound it
    partial = summary_of(BOUNDED)
    partial = partial[~((partial["method"] == "bf16-amp") & (partial["lr"] == GRID[-1]) & (partial["seed"] == 1))]
    fr4, _ = frontier(partial, Analysis(margin_pct=0.5))
    assert not fr4["bounded"].any()
    assert "ran on 1 of its 2 seeds at the top of the grid (lr 1)" in fr4["bounded_note"].iloc[0]


def test_max_within_margin_lr_follows_the_stated_rule(bounded):
    fr, cells, _ = bounded
    fr = fr.set_index("method")
    assert fr.loc["bf16-amp", "within_margin_lr"] == 1e-2  # 4.0 / 4.015: 0% and 0.375% above best
    assert fr.loc["fp32", "within_margin_lr"] == 1e-2  # 4.3 at 0.1 is 7.5% above
    assert fr.loc["fp8-own-tensorwise", "within_margin_lr"] == 1e-1  # 4.019 is 0.475% above 4.0
    assert np.isnan(fr.loc["fp8-naive", "within_margin_lr"]) and fr.loc["fp8-naive", "within_margin_index"] == -1
    assert list(fr["within_margin_grid_steps"]) == [0, 0, 1, -2, -2]
    assert "within 0.5% (analysis.margin_pct) of best_s" in fr["rule"].iloc[0]
    assert fr["grid"].iloc[0] == "0.001 / 0.01 / 0.1 / 1" and (fr["n_seeds"] == 2).all()
    c = cells.set_index(["method", "lr"])
    assert c.loc[("fp8-own-tensorwise", 1e-1), "excess_pct"] == "+0.48 / +0.00"
    assert c.loc[("fp8-own-tensorwise", 1e-1), "max_within_margin"]
    assert not c.loc[("fp8-own-tensorwise", 1e-2), "max_within_margin"]
    assert c.loc[("fp8-naive", 1.0), "status"] == "failed×1, diverged×1"
    assert c.loc[("fp8-naive", 1.0), "diverged"] and c.loc[("fp8-naive", 1.0), "n_failed"] == 1
    assert cells["max_within_margin"].sum() == 3


def test_paired_gap_per_cell_against_bf16_amp_at_the_same_seed_and_lr(bounded):
    c = bounded[1].set_index(["method", "lr"])
    g = c.loc[("fp32", 1e-2)]
    per_seed = [100 * (4.01 - 4.0) / 4.0, 100 * (4.0 - 4.015) / 4.015]
    assert g["gap_mean_pct"] == pytest.approx(np.mean(per_seed))
    assert g["gaps_pct"] == " / ".join(f"{v:+.2f}" for v in per_seed) and g["n_gaps"] == 2
    half = 12.706204736 * np.std(per_seed, ddof=1) / np.sqrt(2)  # t(0.975, 1 df)
    assert g["gap_ci_lo_pct"] == pytest.approx(np.mean(per_seed) - half, rel=1e-6)
    # fp8-naive diverged at seed 0 and lr 0.1: only seed 1 has a pair there, and no interval
    top = c.loc[("fp8-naive", 1e-1)]
    assert top["n_gaps"] == 1 and top["gap_mean_pct"] == pytest.approx(100 * (4.7 - 4.6) / 4.6)
    assert np.isnan(top["gap_ci_lo_pct"])


def test_sensitivity_counts_broken_runs_at_their_step0_loss(bounded):
    fr = bounded[0].set_index("method")
    # per seed: mean over the grid of min(L, L0) - the recipe's lowest; a diverged/failed run counts at L0 = 8
    amp = np.mean([np.mean([1.0, 0.0, 0.5, 4.0]), np.mean([5.1 - 4.015, 0.0, 4.6 - 4.015, 8 - 4.015])])
    naive = np.mean([np.mean([1.0, 0.0, 3.5, 3.5]), np.mean([1.0, 0.0, 0.1, 3.4])])  # the failed run: its seed's L0
    assert fr.loc["bf16-amp", "lr_sensitivity"] == pytest.approx(amp)
    assert fr.loc["fp8-naive", "lr_sensitivity"] == pytest.approx(naive)
    assert (fr["n_sensitivity_seeds"] == 2).all()


def test_statements_give_each_fp8_recipes_divergence_lr_in_grid_steps(bounded):
    text = statements(bounded[0])
    where = "stability/tiny, grid 0.001 / 0.01 / 0.1 / 1"
    assert text[0].startswith(f"{where}: the frontier is bounded")
    assert (
        f"{where}: bf16-amp diverges from lr 1 (seed 0: 1; seed 1: 1); its max within-margin lr is 0.01, 1 grid "
        f"point(s) between the two."
    ) in text
    assert (
        f"{where}: fp8-e2e diverges from lr 0.1 (seed 0: 0.1; seed 1: 0.1), 1 grid step(s) below bf16-amp's 1; "
        f"paired by seed: seed 0: -1; seed 1: -1 -> lower."
    ) in text
    assert (
        f"{where}: fp8-own-tensorwise does not diverge on the grid (seed 0: none; seed 1: none), at least 1 grid "
        f"step(s) above bf16-amp's 1; paired by seed: seed 0: >= +1; seed 1: >= +1 -> higher."
    ) in text
    assert any(s.startswith(f"{where}: fp8-naive diverges from lr 0.1") and s.endswith("-> mixed.") for s in text)
    assert not any(s.startswith(f"{where}: fp32 ") for s in text)  # the statements are about the FP8 recipes
    assert (
        "max within-margin lr differs from bf16-amp's (0.01): fp8-own-tensorwise 0.1 (+1 grid steps); "
        "fp8-naive none (-2 grid steps); fp8-e2e none (-2 grid steps)"
    ) in text[-1]


def test_unbounded_grid_and_no_fp8_difference_are_said_plainly():
    calm = {m: [(5.0, 5.1), (4.1, 4.1), (4.0, 4.0)] for m in ("bf16-amp", "fp8-e2e", "fp8-optim")}
    fr, cells = frontier(summary_of(calm, grid=GRID[:3]), Analysis(margin_pct=0.5))
    assert not fr["bounded"].any() and (fr["within_margin_lr"] == 1e-1).all()
    assert (fr["n_diverging_seeds"] == 0).all() and fr["divergence_grid_steps"].isna().all()
    assert list(fr["divergence_vs_reference"]) == ["reference", "n/a", "n/a"]
    text = " ".join(statements(fr))
    assert (
        "the frontier is not bounded: bf16-amp does not diverge on every seed at the top of the grid (lr 0.1: "
        "ok×2): the grid does not reach its breaking point"
    ) in text
    assert "fp8-optim does not diverge on the grid (seed 0: none; seed 1: none), not comparable with bf16-amp's" in text
    assert ("no FP8 recipe's max within-margin lr differs from bf16-amp's (0.1) by a grid step") in text
    # at a margin below the spread of the finishing losses nothing but the best cells is within it
    fr2, _ = frontier(summary_of(calm, grid=GRID[:3]), Analysis(margin_pct=1e-9))
    assert (fr2["within_margin_lr"] == 1e-1).all()


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
    for row in lines[i + 3 :]:
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
    # fp32 vs bf16-amp: 0.0 and 0.0 at 1e-3; 0.25 and 0.37 at 1e-2; 4.44 and 4.35 at 1e-1; none at 1
    assert (
        "lr 0.001: 0.00% (fp32, 2 seeds); lr 0.01: 0.37% (fp32, 2 seeds); lr 0.1: 4.44% (fp32, 2 seeds). "
        "At lr 0.1 it is not below the margin"
    ) in text
    assert text.startswith("## Where FP8 breaks") and "### Learning-rate frontier" in text
    assert "Definition: diverged: a non-finite loss, gradient norm or val loss" in text
    checked = 0
    for name, key in (
        ("frontier.csv", ["method"]),
        ("frontier_seeds.csv", ["method", "seed"]),
        ("frontier_cells.csv", ["method", "lr"]),
    ):
        table = pd.read_csv(res / name)
        rows = parse_table(text, f"results/{name}")
        assert len(rows) == len(table)
        for r, (_, t) in zip(rows, table.iterrows()):
            assert all(r[k] == cell(k, t[k].item() if hasattr(t[k], "item") else t[k]) for k in key)
            for col, printed in r.items():
                v = t[col]
                assert printed == cell(col, v.item() if hasattr(v, "item") else v), (name, col, printed)
                checked += 1
    assert checked == 5 * 14 + 10 * 8 + 20 * 11
    fr = pd.read_csv(res / "frontier.csv")
    assert [r["divergence_lr"] for r in parse_table(text, "results/frontier.csv")] == ["1", "1", "–", "0.1", "0.1"]
    for s in statements(fr):
        assert s in text
    assert "Grid: 0.001 / 0.01 / 0.1 / 1; margin 0.5%." in text


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
    assert len(fr) == 5 and fr["source"].iloc[0].endswith("runs/stability/ (finished runs on disk)")
    assert dict(zip(fr["method"], fr["within_margin_lr"].fillna(-1))) == {
        "bf16-amp": 0.01,
        "fp32": 0.01,
        "fp8-own-tensorwise": 0.1,
        "fp8-naive": -1,
        "fp8-e2e": -1,
    }
    assert dict(zip(fr["method"], fr["divergence_vs_reference"])) == {
        "bf16-amp": "reference",
        "fp32": "same",
        "fp8-own-tensorwise": "higher",
        "fp8-naive": "mixed",
        "fp8-e2e": "lower",
    }
    assert len(pd.read_csv(res / "frontier_seeds.csv")) == 10


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
    # half-decades from the default lr to where bf16-amp diverges on every seed (3.16), with points between its
    # best lr and that one
    assert ps["lrs"] == [1e-3, 3.16e-3, 1e-2, 3.16e-2, 1e-1, 3.16e-1, 1.0, 3.16]
    assert set(ps["methods"]) == {
        "bf16-amp",
        "fp32",
        "bf16-pure",
        "fp8-own-tensorwise",
        "fp8-torchao-tensorwise",
        "fp8-naive",
        "fp8-optim",
        "fp8-e2e",
    }
    runs = config_mod.runs(cfg, "stability")
    seeds = {m: sorted({config_mod.parse_run_id(r)[0] for _, me, r in runs if me == m}) for m in ps["methods"]}
    # bf16-amp and the recipes that decide the pace claim run the seeds a claim needs; every recipe >= 2
    assert all(seeds[m] == [0, 1, 2] for m in ("bf16-amp", "fp8-naive", "fp8-e2e"))
    assert all(len(v) >= 2 for v in seeds.values()) and len(runs) == 152
    assert all(len([r for _, me, r in runs if me == m]) == 8 * len(seeds[m]) for m in ps["methods"])
    assert ps["train"]["steps"] == 80 and ps["train"]["warmup_steps"] == 8 and not ps["bench"]["enabled"]
    assert not ps["variants"]  # the stress tests run in their own profile
    assert ps["memory_trace"]["models"] == ["tiny"]
    seed, lr = config_mod.parse_run_id(config_mod.run_id(0, 3.16e-3))
    assert lr == 3.16e-3  # the run folder's name gives the lr back exactly


def test_lrs_for_pins_a_method_to_its_own_lrs(cfg):
    c = with_stability(cfg, lrs_for={"fp32": [1e-2]})
    runs = config_mod.runs(c, "stability")
    assert [r for m, me, r in runs if me == "fp32"] == ["seed0_lr0.01", "seed1_lr0.01"]
    assert len([r for m, me, r in runs if me == "bf16-amp"]) == 24
    rc = config_mod.resolve_run(c, "stability", "tiny", "fp32", 0, lr=1e-2)
    assert rc["train"]["lr"] == 1e-2


@pytest.mark.parametrize(
    "lrs_for, message",
    [
        (
            {"fp8-nope": [1e-2]},
            "profile stability: unknown lrs_for method 'fp8-nope'; valid lrs_for methods: bf16-amp, fp32, bf16-pure",
        ),
        ({"fp32": [1e-2, 1e-3]}, "lrs_for.fp32: [0.01, 0.001] must be ascending without repeats; valid: [0.001, 0.01]"),
        ({"fp32": [1e-2, 1e-2]}, "must be ascending without repeats"),
        ({"fp32": [3.1622777e-3]}, "more than 6 significant digits; valid: e.g. 0.00316228"),
        ({"fp32": []}, "lrs_for.fp32: empty"),
    ],
)
def test_bad_lrs_for_is_refused_naming_what_is_valid(cfg, lrs_for, message):
    with pytest.raises(config_mod.ConfigError, match=re.escape(message)):
        config_mod.profile_settings(with_stability(cfg, lrs_for=lrs_for), "stability")


def test_bad_lrs_are_refused(cfg):
    with pytest.raises(
        config_mod.ConfigError, match=re.escape("profile stability: lrs: [0.1, 0.01] must be ascending")
    ):
        config_mod.profile_settings(with_stability(cfg, lrs=[0.1, 0.01]), "stability")
    with pytest.raises(config_mod.ConfigError, match="lrs_for.fp32.0"):  # the schema, before any work
        config_mod.validate(with_stability(cfg, lrs_for={"fp32": [-1.0]}))


def test_heatmap_marks_diverged_cells_and_frames_the_divergence_lr(bounded, tmp_path):
    import matplotlib.patches as mpatches

    from pipelines.report.figures import FigureData
    from pipelines.report.figures_stability import fig_lr_frontier

    cells = bounded[1]
    fig = fig_lr_frontier(FigureData(pd.DataFrame(), frontier_cells=cells))
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.texts]
    assert texts.count("div 2/2") == 4  # bf16-amp, fp32 and fp8-e2e at the top, fp8-e2e at 0.1
    assert "div 1/2\nfail 1/2" in texts and texts.count("div 1/2") == 1  # fp8-naive at 1 and at 0.1
    frames = [p for p in ax.patches if isinstance(p, mpatches.Rectangle) and not p.get_fill()]
    green = [p for p in frames if p.get_edgecolor()[:3] != (0.0, 0.0, 0.0)]
    black = [p for p in frames if p.get_edgecolor()[:3] == (0.0, 0.0, 0.0)]
    assert len(green) == int(cells["max_within_margin"].sum()) == 3
    assert len(black) == int(cells["first_divergence"].sum()) == 4
    hatched = [p for p in ax.patches if isinstance(p, mpatches.Rectangle) and p.get_hatch()]
    assert len(hatched) == int((cells["n_diverged"] + cells["n_failed"] > 0).sum()) == 6
    assert [t.get_text() for t in ax.get_yticklabels()][0] == "bf16-amp"
    assert "stability" in fig_lr_frontier(FigureData(pd.DataFrame()))  # no frontier: the sentence, no figure


def test_a_run_missing_or_failed_below_the_divergence_makes_the_seed_incomplete_not_higher():
    table = {
        "bf16-amp": [(5.0, 5.1), (4.0, 4.0), (4.5, 4.6), (DIV, DIV)],
        # never diverges, but seed 1's top run is not on disk (yet): it may diverge there
        "fp8-own-tensorwise": [(5.2, 5.3), (4.0, 4.0), (4.1, 4.2), (4.8, "missing")],
        # seed 0 diverges at the top, but its run one step below failed for another reason
        "fp8-e2e": [(5.0, 5.1), (4.1, 4.1), (FAIL, 4.3), (DIV, DIV)],
        "fp8-optim": [(5.0, 5.1), (4.1, 4.1), (4.3, 4.3), (DIV, DIV)],  # complete: same as bf16-amp
    }
    summary = summary_of(table)
    summary = summary[summary["status"] != "missing"]
    fr, _, seeds = frontier(summary, Analysis(margin_pct=0.5), with_seeds=True)
    fr, sd = fr.set_index("method"), seeds.set_index(["method", "seed"])
    assert (
        not sd.loc[("fp8-own-tensorwise", 1), "complete"] and sd.loc[("fp8-own-tensorwise", 1), "not_ok_below"] == "1"
    )
    assert (
        sd.loc[("fp8-own-tensorwise", 0), "complete"] and sd.loc[("fp8-own-tensorwise", 0), "vs_reference"] == "higher"
    )
    assert sd.loc[("fp8-own-tensorwise", 1), "vs_reference"] == "incomplete"
    assert np.isnan(sd.loc[("fp8-own-tensorwise", 1), "paired_grid_steps"])
    assert fr.loc["fp8-own-tensorwise", "divergence_vs_reference"] == "incomplete"
    assert fr.loc["fp8-own-tensorwise", "divergence_paired_grid_steps"] == "seed 0: >= +1; seed 1: incomplete"
    assert sd.loc[("fp8-e2e", 0), "not_ok_below"] == "0.1" and sd.loc[("fp8-e2e", 1), "complete"]
    assert fr.loc["fp8-e2e", "divergence_vs_reference"] == "incomplete"
    assert fr.loc["fp8-optim", "divergence_vs_reference"] == "same"
    # bf16-amp's own gap makes every recipe's comparison at that seed incomplete
    summary = summary_of(table)
    summary = summary[(summary["status"] != "missing") & ~((summary["method"] == "bf16-amp") & (summary["lr"] == 0.1))]
    fr, _, seeds = frontier(summary, Analysis(margin_pct=0.5), with_seeds=True)
    assert (seeds["vs_reference"] == "incomplete").all()
    assert set(fr.set_index("method").drop("bf16-amp")["divergence_vs_reference"]) == {"incomplete"}
