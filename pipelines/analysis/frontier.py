"""The learning-rate frontier: where each recipe stops training well as the peak lr grows.

    python -m pipelines.analysis.frontier --results results [--summary results/summary.csv] [--analysis JSON]

writes ``results/frontier.csv`` (one row per recipe) and ``results/frontier_cells.csv`` (one row per recipe
and grid lr), and prints what they say. A **frontier recipe** is a method or variant that ran at two or
more learning rates in one profile and model (stress variants pinned to one lr by ``lrs_for`` are not);
the **grid** is the union of their lrs.

Everything is paired by seed, as every loss verdict of the suite is: runs at the same seed share initial
weights and batches, so a seed's luck cancels.

- **Max stable lr** (per recipe): the largest grid lr at which every one of the recipe's seeds finishes
  ``ok`` with a final val loss within ``analysis.margin_pct`` (relative %) of best_s, the lowest final val
  loss any frontier recipe reached at any grid lr at the same seed s. None when no grid lr qualifies.
- **Lr sensitivity** (Wortsman et al. 2023, "Small-scale proxies for large-scale Transformer training
  instabilities"): per seed, the mean over the grid of min(L, L0) - min over the grid of that recipe's
  min(L, L0), where L is the final val loss and L0 the step-0 val loss; a run that diverged or failed counts
  at L0. Then the mean over the recipe's seeds with a complete grid (``n_seeds``). In nats; 0 means the lr
  does not matter on this grid.
- **Cells**: per recipe and lr the paired gap against bf16-amp at the same seed and lr (mean, per-seed
  values, Student-t interval from 2 seeds on), the status counts, and each seed's excess over best_s.
- **Bounded**: the frontier is bounded only when bf16-amp itself breaks at the top of the grid (a seed
  diverged or failed there, or landed outside the margin); otherwise the top of the grid is a lower bound
  on every max stable lr that reaches it.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from common.atomic import write_csv
from pipelines.analysis.stats import Analysis, t_interval

REFERENCE = "bf16-amp"
PROFILE = "stability"  # the profile that runs the frontier (REPORT.md points to it when absent)
COMMAND = f"snakemake --cores all --config profile={PROFILE}"
FRONTIER_CSV, CELLS_CSV = "frontier.csv", "frontier_cells.csv"
GROUP = ["profile", "model"]
FRONTIER_COLUMNS = [
    "profile", "model", "method", "is_fp8", "n_seeds", "max_stable_lr", "max_stable_index", "steps_vs_reference",
    "differs_from_reference", "lr_sensitivity", "lr_sensitivity_sd", "n_sensitivity_seeds", "best_lr", "best_loss", "grid", "n_grid",
    "margin_pct", "bounded", "bounded_note", "rule", "sensitivity_rule", "source",
]
CELL_COLUMNS = [
    "profile", "model", "method", "lr", "lr_index", "n_runs", "n_ok", "n_diverged", "n_failed", "status", "seeds",
    "diverged", "stable", "max_stable", "val_loss_mean", "excess_pct_max", "excess_pct", "gaps_pct", "n_gaps",
    "gap_mean_pct", "gap_ci_lo_pct", "gap_ci_hi_pct", "diverged_step_min",
]


def stable_rule(margin_pct: float) -> str:
    return (f"max stable lr: the largest grid lr at which every seed finishes ok with final val loss within "
            f"{margin_pct:g}% (analysis.margin_pct) of best_s, the lowest final val loss any frontier recipe reached "
            f"at any grid lr at the same seed s")


SENSITIVITY_RULE = ("lr sensitivity (Wortsman et al. 2023): per seed, mean over the grid of min(L, L0) minus the "
                    "recipe's lowest min(L, L0) on the grid (L final val loss, L0 step-0 val loss; a diverged or "
                    "failed run counts at L0), then the mean over seeds with a complete grid; nats")


def is_fp8(method: str, base: str | None = None) -> bool:
    return str(base if isinstance(base, str) else method).startswith("fp8")


def lr_text(v) -> str:
    """An lr as the tables print it (``pipelines.analysis.markdown.cell``: ``%g``), or ``none``."""
    return "none" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{float(v):g}"


# ------------------------------------------------------------------------------------------- runs

def frontier_runs(summary: pd.DataFrame) -> pd.DataFrame:
    """The runs of frontier recipes: per profile and model, the methods that ran at >= 2 learning rates."""
    if summary.empty or "lr" not in summary:
        return summary.iloc[0:0]
    s = summary.copy()
    s["lr"] = pd.to_numeric(s["lr"], errors="coerce")
    s = s.dropna(subset=["lr"])
    n_lrs = s.groupby([*GROUP, "method"])["lr"].transform("nunique")
    return s[n_lrs >= 2].reset_index(drop=True)


def stability_runs_on_disk(results: Path) -> pd.DataFrame:
    """The stability profile's finished runs under ``results/runs/`` (what the report shows while another
    profile's summary is current), with their paired gaps; empty if none."""
    from pipelines.analysis.collect import runs_on_disk

    return runs_on_disk(results, PROFILE)


def _step0(runs: pd.DataFrame) -> pd.Series:
    """Each run's step-0 val loss; where a run has none (failed before its first evaluation), that of the
    other runs at the same seed (they start from the same initial weights)."""
    own = pd.to_numeric(runs["initial_val_loss"], errors="coerce")
    same_seed = own.groupby([runs[k] for k in [*GROUP, "seed"]]).transform("median")
    return own.fillna(same_seed)


# ------------------------------------------------------------------------------------------ cells

def _cells_one(runs: pd.DataFrame, grid: list[float], an: Analysis) -> pd.DataFrame:
    """Cells of one profile and model: per recipe x grid lr."""
    ok = runs[runs["status"] == "ok"]
    best = ok.groupby("seed")["final_val_loss"].min()  # best_s, over every frontier recipe and lr
    rows = []
    for (method, lr), g in runs.groupby(["method", "lr"], sort=False):
        g = g.sort_values("seed")
        st = g["status"].tolist()
        excess = [100.0 * (r.final_val_loss - best[r.seed]) / best[r.seed] if r.status == "ok" else np.nan
                  for r in g.itertuples()]
        gaps = pd.to_numeric(g[g["status"] == "ok"]["loss_gap_pct"], errors="coerce").dropna()
        if method == REFERENCE:  # its gap to itself is 0 by construction: no interval to print
            gaps = gaps.iloc[0:0]
        ci = t_interval(gaps, an.confidence)
        recipe_seeds = set(runs[runs["method"] == method]["seed"])
        stable = (set(g["seed"]) == recipe_seeds and all(s == "ok" for s in st)
                  and all(e <= an.margin_pct for e in excess))
        counts = {s: st.count(s) for s in dict.fromkeys(st)}
        rows.append({
            "profile": g["profile"].iloc[0], "model": g["model"].iloc[0], "method": method, "lr": float(lr),
            "lr_index": grid.index(float(lr)), "n_runs": len(g), "n_ok": st.count("ok"),
            "n_diverged": st.count("diverged"), "n_failed": len(st) - st.count("ok") - st.count("diverged"),
            "status": ", ".join(f"{k}×{v}" for k, v in counts.items()),
            "seeds": ",".join(str(int(s)) for s in g["seed"]), "diverged": "diverged" in st, "stable": stable,
            "max_stable": False,
            "val_loss_mean": ok[(ok["method"] == method) & (ok["lr"] == lr)]["final_val_loss"].mean(),
            "excess_pct_max": max(excess) if excess and not any(np.isnan(excess)) else np.nan,
            "excess_pct": " / ".join("–" if np.isnan(e) else f"{e:+.2f}" for e in excess),
            "gaps_pct": "reference" if method == REFERENCE else " / ".join(f"{v:+.2f}" for v in gaps), "n_gaps": ci.n, "gap_mean_pct": ci.mean,
            "gap_ci_lo_pct": ci.lo, "gap_ci_hi_pct": ci.hi,
            "diverged_step_min": (pd.to_numeric(g["diverged_step"], errors="coerce").min()
                                  if "diverged_step" in g else np.nan),
        })
    return pd.DataFrame(rows, columns=CELL_COLUMNS)


# ---------------------------------------------------------------------------------------- frontier

def _sensitivity(runs: pd.DataFrame, n_grid: int) -> tuple[float, float, int]:
    """Mean and sd over seeds of the per-seed lr sensitivity, and the number of seeds with a complete grid."""
    loss = pd.to_numeric(runs["final_val_loss"], errors="coerce")
    l0 = runs["_step0"]
    counted = np.fmin(loss, l0).where(runs["status"] == "ok", l0)  # diverged / failed: at L0
    per_seed = []
    for _, idx in runs.groupby("seed").groups.items():
        c = counted.loc[idx]
        if runs.loc[idx, "lr"].nunique() == n_grid and c.notna().all():
            per_seed.append(float((c - c.min()).mean()))
    if not per_seed:
        return np.nan, np.nan, 0
    sd = float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else np.nan
    return float(np.mean(per_seed)), sd, len(per_seed)


def _reference_top(cells: pd.DataFrame, grid: list[float], margin: float) -> tuple[bool, str]:
    """Whether bf16-amp breaks at the top of the grid, and the sentence that says how."""
    top = cells[(cells["method"] == REFERENCE) & (cells["lr"] == grid[-1])]
    if top.empty:
        return False, f"{REFERENCE} did not run at the top of the grid (lr {grid[-1]:g}): not bounded"
    t = top.iloc[0]
    if t["n_diverged"] or t["n_failed"]:
        return True, (f"{REFERENCE} breaks at the top of the grid: at lr {grid[-1]:g} status {t['status']}")
    if not t["stable"]:
        return True, (f"{REFERENCE} breaks at the top of the grid: at lr {grid[-1]:g} its seeds end "
                      f"{t['excess_pct']}% from the best loss, outside the {margin:g}% margin")
    return False, (f"{REFERENCE} is still stable at the top of the grid (lr {grid[-1]:g}, seeds {t['excess_pct']}% "
                   f"from the best loss): the grid does not reach its breaking point, so a max stable lr at the top "
                   f"is only a lower bound")


def _frontier_one(runs: pd.DataFrame, an: Analysis, source: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    grid = sorted(float(x) for x in runs["lr"].unique())
    cells = _cells_one(runs, grid, an)
    bounded, note = _reference_top(cells, grid, an.margin_pct)
    rows = []
    for method, g in runs.groupby("method", sort=False):
        c = cells[cells["method"] == method]
        st = c[c["stable"]]
        idx = int(st["lr_index"].max()) if len(st) else -1  # -1: below the grid
        if idx >= 0:
            cells.loc[(cells["method"] == method) & (cells["lr_index"] == idx), "max_stable"] = True
        sens, sd, n = _sensitivity(g, len(grid))
        means = c.dropna(subset=["val_loss_mean"])
        base = g["base_method"].dropna().iloc[0] if "base_method" in g and g["base_method"].notna().any() else None
        rows.append({
            "profile": g["profile"].iloc[0], "model": g["model"].iloc[0], "method": method,
            "is_fp8": is_fp8(method, base), "n_seeds": int(g["seed"].nunique()),
            "max_stable_lr": grid[idx] if idx >= 0 else np.nan, "max_stable_index": idx,
            "lr_sensitivity": sens, "lr_sensitivity_sd": sd, "n_sensitivity_seeds": n,
            "best_lr": means.loc[means["val_loss_mean"].idxmin(), "lr"] if len(means) else np.nan,
            "best_loss": means["val_loss_mean"].min() if len(means) else np.nan,
            "grid": " / ".join(f"{x:g}" for x in grid), "n_grid": len(grid), "margin_pct": an.margin_pct,
            "bounded": bounded, "bounded_note": note, "rule": stable_rule(an.margin_pct),
            "sensitivity_rule": SENSITIVITY_RULE, "source": source,
        })
    fr = pd.DataFrame(rows)
    fr = pd.concat([fr[fr["method"] == REFERENCE], fr[fr["method"] != REFERENCE]], ignore_index=True)
    ref = fr[fr["method"] == REFERENCE]
    if len(ref):
        ref_idx = int(ref["max_stable_index"].iloc[0])
        fr["steps_vs_reference"] = fr["max_stable_index"] - ref_idx
        fr["differs_from_reference"] = fr["steps_vs_reference"].abs() >= 1
    else:
        fr["steps_vs_reference"], fr["differs_from_reference"] = np.nan, pd.NA
    return fr[FRONTIER_COLUMNS], cells


def frontier(summary: pd.DataFrame, an: Analysis | None = None,
             source: str = "results/summary.csv") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(frontier, cells) of every profile and model in ``summary`` that has frontier recipes."""
    an = an or Analysis()
    runs = frontier_runs(summary)
    frs, cls = [], []
    for _, g in runs.groupby(GROUP, sort=False):
        g = g.assign(_step0=_step0(g)).reset_index(drop=True)
        fr, ce = _frontier_one(g, an, source)
        frs.append(fr)
        cls.append(ce)
    fr = pd.concat(frs, ignore_index=True) if frs else pd.DataFrame(columns=FRONTIER_COLUMNS)
    ce = pd.concat(cls, ignore_index=True) if cls else pd.DataFrame(columns=CELL_COLUMNS)
    return fr, ce.sort_values([*GROUP, "method", "lr"], kind="stable").reset_index(drop=True)


def statements(fr: pd.DataFrame) -> list[str]:
    """What the frontier says, one sentence per profile and model, from frontier.csv's values alone."""
    out = []
    for (profile, model), g in fr.groupby(GROUP, sort=False):
        first = g.iloc[0]
        where = f"{profile}/{model}, grid {first['grid']}"
        out.append(f"{where}: the frontier is {'bounded' if bool(first['bounded']) else 'not bounded'}: "
                   f"{first['bounded_note']}.")
        ref = g[g["method"] == REFERENCE]
        if ref.empty:
            out.append(f"{where}: {REFERENCE} did not run on the grid, so no recipe's frontier is compared with it.")
            continue
        ref_lr = lr_text(ref["max_stable_lr"].iloc[0])
        fp8 = g[g["is_fp8"].astype(bool)]
        differ = fp8[fp8["differs_from_reference"].astype(bool)]
        if fp8.empty:
            continue
        if differ.empty:
            out.append(f"{where}: no FP8 recipe's frontier differs from {REFERENCE}'s by at least one grid step "
                       f"(every FP8 recipe's max stable lr equals {REFERENCE}'s, {ref_lr}).")
        else:
            parts = [f"{r.method} {lr_text(r.max_stable_lr)} ({int(r.steps_vs_reference):+d} grid steps)"
                     for r in differ.itertuples()]
            out.append(f"{where}: FP8 recipes whose frontier differs from {REFERENCE}'s (max stable lr {ref_lr}) by "
                       f"at least one grid step: " + "; ".join(parts) + ".")
    return out


def write_outputs(summary_csv: str | Path, results: str | Path, an: Analysis | None = None) -> dict[str, Path]:
    """frontier.csv and frontier_cells.csv under ``results`` (headers only where there is no frontier). From
    the summary; where it holds none, from the stability profile's runs on disk, so that another profile's
    report still shows them (``source`` says which)."""
    results = Path(results)
    summary = pd.read_csv(summary_csv) if Path(summary_csv).is_file() else pd.DataFrame()
    fr, cells = frontier(summary, an, source=str(summary_csv))
    if fr.empty:
        disk = stability_runs_on_disk(results)
        if not disk.empty:
            fr, cells = frontier(disk, an, source=f"{results}/runs/{PROFILE}/ (finished runs on disk)")
    paths = {"frontier": results / FRONTIER_CSV, "cells": results / CELLS_CSV}
    for key, df in (("frontier", fr), ("cells", cells)):
        write_csv(df, paths[key])
    return paths


def main(argv=None) -> int:
    from pipelines.analysis.comparison import load_analysis

    ap = argparse.ArgumentParser(prog="python -m pipelines.analysis.frontier", description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default="results", help="results folder: reads summary.csv, writes the CSVs")
    ap.add_argument("--summary", help="default: RESULTS/summary.csv")
    ap.add_argument("--analysis", help="analysis settings as JSON (default: pipelines/config.yaml's analysis)")
    args = ap.parse_args(argv)
    paths = write_outputs(args.summary or Path(args.results) / "summary.csv", args.results, load_analysis(args.analysis))
    fr = pd.read_csv(paths["frontier"])
    for p in paths.values():
        print(f"wrote {p}")
    if fr.empty:
        print(f"no learning-rate frontier in these results (no recipe ran at >= 2 lrs); run: {COMMAND}")
        return 0
    print(fr[["profile", "model", "method", "n_seeds", "max_stable_lr", "steps_vs_reference", "lr_sensitivity"]]
          .to_string(index=False))
    print(json.dumps({"rule": fr["rule"].iloc[0], "sensitivity_rule": fr["sensitivity_rule"].iloc[0]}, indent=1))
    for s in statements(fr):
        print(s)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
