"""The learning-rate frontier: where each recipe stops training well, and where it breaks, as the peak lr grows.

    python -m pipelines.analysis.frontier --results results [--summary results/summary.csv] [--analysis JSON]

writes ``results/frontier.csv`` (one row per recipe), ``results/frontier_cells.csv`` (one row per recipe and
grid lr) and ``results/frontier_seeds.csv`` (one row per recipe and seed), and prints what they say. A
**frontier recipe** is a method or variant that ran at two or more learning rates in one profile and model
(stress variants pinned to one lr by ``lrs_for`` are not); the **grid** is the union of their lrs.

Everything is paired by seed, as every loss verdict of the suite is: runs at the same seed share initial
weights and batches, so a seed's luck cancels.

- **Divergence lr** (per recipe and seed): the smallest grid lr at which the run ``diverged``
  (``pipelines.run.divergence`` defines it: a non-finite value; a final val loss above the step-0 one; or a
  loss spike that did not recover); none when no grid lr diverged (the seed breaks above the grid). Per
  recipe: the smallest over its seeds. Against bf16-amp, in grid steps and **paired by seed**: ``lower``
  when every seed diverges at least one grid step below bf16-amp's divergence lr at the same seed,
  ``higher`` when every seed diverges at least one step above it (a seed that never diverges on the grid
  counts above its top), ``same`` when every seed diverges at bf16-amp's, ``mixed`` otherwise, ``n/a``
  where no seed can be compared (bf16-amp did not diverge there and neither did the recipe). A seed with a
  run missing or failed below its divergence lr (or anywhere on the grid when it never diverged) is not
  ``complete``: that run might have diverged, so the comparison says ``incomplete``, never ``higher``.
- **Max within-margin lr** (per recipe): the largest grid lr at which every one of the recipe's seeds finishes
  ``ok`` with a final val loss within ``analysis.margin_pct`` (relative %) of best_s, the lowest final val
  loss any frontier recipe reached at any grid lr at the same seed s. None when no grid lr qualifies. It
  says where a recipe's optimum lies, not where training breaks.
- **Lr sensitivity** (Wortsman et al. 2023, "Small-scale proxies for large-scale Transformer training
  instabilities"): per seed, the mean over the grid of min(L, L0) - min over the grid of that recipe's
  min(L, L0), where L is the final val loss and L0 the step-0 val loss; a run that diverged or failed counts
  at L0. Then the mean over the recipe's seeds with a complete grid (``n_sensitivity_seeds``). In nats; 0
  means the lr does not matter on this grid.
- **Cells**: per recipe and lr the paired gap against bf16-amp at the same seed and lr (mean, per-seed
  values, Student-t interval from 2 seeds on), the status counts, which divergence rule fired, and each
  seed's excess over best_s.
- **Bounded**: the frontier is bounded when bf16-amp itself diverges on every seed at the top of the grid and
  on none at its bottom; only then does a divergence lr compared with bf16-amp's mean anything.
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
FRONTIER_CSV, CELLS_CSV, SEEDS_CSV = "frontier.csv", "frontier_cells.csv", "frontier_seeds.csv"
GROUP = ["profile", "model"]
FRONTIER_COLUMNS = [
    "profile",
    "model",
    "method",
    "is_fp8",
    "n_seeds",
    "divergence_lr",
    "divergence_index",
    "divergence_grid_steps",
    "divergence_vs_reference",
    "divergence_paired_grid_steps",
    "divergence_lr_by_seed",
    "n_diverging_seeds",
    "divergence_kinds",
    "within_margin_lr",
    "within_margin_index",
    "within_margin_grid_steps",
    "within_margin_differs",
    "lr_sensitivity",
    "lr_sensitivity_sd",
    "n_sensitivity_seeds",
    "best_lr",
    "best_loss",
    "grid",
    "n_grid",
    "margin_pct",
    "bounded",
    "bounded_note",
    "reference_points_between",
    "rule",
    "divergence_rule",
    "divergence_definition",
    "sensitivity_rule",
    "source",
]
CELL_COLUMNS = [
    "profile",
    "model",
    "method",
    "lr",
    "lr_index",
    "n_runs",
    "n_ok",
    "n_diverged",
    "n_failed",
    "status",
    "seeds",
    "diverged",
    "divergence_kinds",
    "first_divergence",
    "within_margin",
    "max_within_margin",
    "val_loss_mean",
    "excess_pct_max",
    "excess_pct",
    "gaps_pct",
    "n_gaps",
    "gap_mean_pct",
    "gap_ci_lo_pct",
    "gap_ci_hi_pct",
    "diverged_step_min",
]
SEED_COLUMNS = [
    "profile",
    "model",
    "method",
    "seed",
    "divergence_lr",
    "divergence_index",
    "diverged_on_grid",
    "divergence_kinds",
    "diverged_step",
    "reason",
    "reference_divergence_index",
    "paired_grid_steps",
    "vs_reference",
    "n_lrs",
    "n_failed",
    "complete",
    "not_ok_below",
]


def within_margin_rule(margin_pct: float) -> str:
    return (
        f"max within-margin lr: the largest grid lr at which every seed finishes ok with final val loss within "
        f"{margin_pct:g}% (analysis.margin_pct) of best_s, the lowest final val loss any frontier recipe reached "
        f"at any grid lr at the same seed s"
    )


DIVERGENCE_RULE = (
    f"divergence lr: per seed the smallest grid lr at which the run diverged; per recipe the smallest "
    f"over its seeds. Against {REFERENCE}, paired by seed in grid steps: lower when every seed diverges "
    f"at least one grid step below {REFERENCE}'s divergence lr at the same seed, higher when every "
    f"seed at least one step above (a seed that does not diverge on the grid counts above its top), "
    f"same when every seed at {REFERENCE}'s, mixed when seeds disagree, incomplete where a run below a "
    f"seed's divergence lr (its own or {REFERENCE}'s) is missing or failed, n/a where a seed cannot be "
    f"compared (neither diverged on the grid there)"
)

SENSITIVITY_RULE = (
    "lr sensitivity (Wortsman et al. 2023): per seed, mean over the grid of min(L, L0) minus the "
    "recipe's lowest min(L, L0) on the grid (L final val loss, L0 step-0 val loss; a diverged or "
    "failed run counts at L0), then the mean over seeds with a complete grid; nats"
)


def is_fp8(method: str, base: str | None = None) -> bool:
    return str(base if isinstance(base, str) else method).startswith("fp8")


def lr_text(v) -> str:
    """An lr as the tables print it (``pipelines.analysis.markdown.cell``: ``%g``), or ``none``."""
    return "none" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{float(v):g}"


def steps_text(steps, censored: bool = False) -> str:
    """Grid steps as the tables print them: ``-1``, ``+0``, ``>= +2`` (a bound: one side never diverged)."""
    if steps is None or (isinstance(steps, float) and math.isnan(steps)):
        return "n/a"
    return f"{'>= ' if censored and steps > 0 else '<= ' if censored else ''}{int(steps):+d}"


def definition_of(runs: pd.DataFrame) -> str:
    """The divergence definition the runs were judged by (their config.json's train settings; the config's
    defaults where a run folder has none). Runs judged by different settings list each."""
    from pipelines.run.config import load
    from pipelines.run.divergence import Divergence

    default = load()["train"]
    seen = {}
    for d in runs.get("run_dir", pd.Series(dtype=object)).dropna().unique():
        path = Path(str(d)) / "config.json"
        train = default
        if path.is_file():
            train = {**default, **json.loads(path.read_text()).get("train", {})}
        rule = Divergence.from_train(train)
        seen[rule] = rule.text()
    if not seen:
        seen[None] = Divergence.from_train(default).text()
    return " | ".join(seen.values())


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


def _kinds(reasons) -> str:
    """The divergence rules that fired over some runs' reasons (``pipelines.run.divergence.kinds``)."""
    from pipelines.run.divergence import kinds

    found = [k for r in reasons for k in kinds(r)]
    return ", ".join(dict.fromkeys(found))


def _cells_one(runs: pd.DataFrame, grid: list[float], an: Analysis) -> pd.DataFrame:
    """Cells of one profile and model: per recipe x grid lr."""
    ok = runs[runs["status"] == "ok"]
    best = ok.groupby("seed")["final_val_loss"].min()  # best_s, over every frontier recipe and lr
    rows = []
    for (method, lr), g in runs.groupby(["method", "lr"], sort=False):
        g = g.sort_values("seed")
        st = g["status"].tolist()
        excess = [
            100.0 * (r.final_val_loss - best[r.seed]) / best[r.seed] if r.status == "ok" else np.nan
            for r in g.itertuples()
        ]
        gaps = pd.to_numeric(g[g["status"] == "ok"]["loss_gap_pct"], errors="coerce").dropna()
        if method == REFERENCE:  # its gap to itself is 0 by construction: no interval to print
            gaps = gaps.iloc[0:0]
        ci = t_interval(gaps, an.confidence)
        recipe_seeds = set(runs[runs["method"] == method]["seed"])
        within = (
            set(g["seed"]) == recipe_seeds and all(s == "ok" for s in st) and all(e <= an.margin_pct for e in excess)
        )
        counts = {s: st.count(s) for s in dict.fromkeys(st)}
        div = g[g["status"] == "diverged"]
        rows.append(
            {
                "profile": g["profile"].iloc[0],
                "model": g["model"].iloc[0],
                "method": method,
                "lr": float(lr),
                "lr_index": grid.index(float(lr)),
                "n_runs": len(g),
                "n_ok": st.count("ok"),
                "n_diverged": st.count("diverged"),
                "n_failed": len(st) - st.count("ok") - st.count("diverged"),
                "status": ", ".join(f"{k}×{v}" for k, v in counts.items()),
                "seeds": ",".join(str(int(s)) for s in g["seed"]),
                "diverged": "diverged" in st,
                "divergence_kinds": _kinds(div["reason"]) if len(div) else "",
                "first_divergence": False,
                "within_margin": within,
                "max_within_margin": False,
                "val_loss_mean": ok[(ok["method"] == method) & (ok["lr"] == lr)]["final_val_loss"].mean(),
                "excess_pct_max": max(excess) if excess and not any(np.isnan(excess)) else np.nan,
                "excess_pct": " / ".join("–" if np.isnan(e) else f"{e:+.2f}" for e in excess),
                "gaps_pct": "reference" if method == REFERENCE else " / ".join(f"{v:+.2f}" for v in gaps),
                "n_gaps": ci.n,
                "gap_mean_pct": ci.mean,
                "gap_ci_lo_pct": ci.lo,
                "gap_ci_hi_pct": ci.hi,
                "diverged_step_min": (
                    pd.to_numeric(g["diverged_step"], errors="coerce").min() if "diverged_step" in g else np.nan
                ),
            }
        )
    return pd.DataFrame(rows, columns=CELL_COLUMNS)


# ------------------------------------------------------------------------------------------ seeds


def _seeds_one(runs: pd.DataFrame, grid: list[float]) -> pd.DataFrame:
    """Per recipe and seed: the smallest grid lr that diverged (index len(grid) where none did: above the
    grid), and the comparison with bf16-amp's at the same seed in grid steps. A seed is ``complete`` when every
    grid lr below that one ran and ended ok: a run missing or failed there might have diverged, so its
    divergence lr is then only an upper bound and its comparison ``incomplete``."""
    n = len(grid)
    rows = []
    for (method, seed), g in runs.groupby(["method", "seed"], sort=False):
        g = g.sort_values("lr")
        div = g[g["status"] == "diverged"]
        first = div.iloc[0] if len(div) else None
        below = grid[: grid.index(float(first["lr"]))] if first is not None else grid
        ok_lrs = set(g.loc[g["status"] == "ok", "lr"].astype(float))
        missing = [lr for lr in below if lr not in ok_lrs]
        rows.append(
            {
                "profile": g["profile"].iloc[0],
                "model": g["model"].iloc[0],
                "method": method,
                "seed": int(seed),
                "divergence_lr": float(first["lr"]) if first is not None else np.nan,
                "divergence_index": grid.index(float(first["lr"])) if first is not None else n,
                "diverged_on_grid": first is not None,
                "divergence_kinds": _kinds([first["reason"]]) if first is not None else "",
                "diverged_step": first["diverged_step"] if first is not None and "diverged_step" in g else np.nan,
                "reason": str(first["reason"]) if first is not None and isinstance(first["reason"], str) else "",
                "n_lrs": int(g["lr"].nunique()),
                "n_failed": int((~g["status"].isin(["ok", "diverged"])).sum()),
                "complete": not missing,
                "not_ok_below": " / ".join(f"{lr:g}" for lr in missing),
            }
        )
    seeds = pd.DataFrame(rows)
    ref = seeds[seeds["method"] == REFERENCE].set_index("seed")
    ref_idx, ref_on = ref["divergence_index"].to_dict(), ref["diverged_on_grid"].to_dict()
    ref_complete = ref["complete"].to_dict()
    paired, words = [], []
    for r in seeds.itertuples():
        if not r.complete or not ref_complete.get(r.seed, True):
            paired.append(np.nan)  # a run below the first divergence is missing or failed, here or in bf16-amp
            words.append("incomplete")
            continue
        if r.seed not in ref_idx or (not ref_on[r.seed] and not r.diverged_on_grid):
            paired.append(np.nan)  # nothing to compare: bf16-amp did not run there, or neither diverged
            words.append("n/a")
            continue
        d = int(r.divergence_index) - int(ref_idx[r.seed])
        paired.append(d)
        words.append("lower" if d < 0 else "higher" if d > 0 else "same")
    seeds["reference_divergence_index"] = [ref_idx.get(s, np.nan) for s in seeds["seed"]]
    seeds["paired_grid_steps"], seeds["vs_reference"] = paired, words
    return seeds[SEED_COLUMNS]


def _vs_reference(words: list[str]) -> str:
    """One recipe's comparison over its seeds (``DIVERGENCE_RULE``): lower / same / higher where every seed
    says so, mixed where the seeds that can be compared disagree, incomplete where they agree but some seed's
    grid has a missing or failed run below its divergence (its own or bf16-amp's), n/a where one cannot be
    compared (neither it nor bf16-amp diverged on the grid at that seed) and the others agree."""
    known = set(w for w in words if w not in ("n/a", "incomplete"))
    if len(known) > 1:
        return "mixed"
    if "incomplete" in words:
        return "incomplete"  # a seed's missing or failed run below its divergence could change the word
    if not known or len(known) == 1 and "n/a" in words:
        return "n/a"
    return known.pop()


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


def _reference_bounds(cells: pd.DataFrame, grid: list[float], n_ref_seeds: int) -> tuple[bool, str]:
    """Whether bf16-amp diverges on every seed at the top of the grid and on none at its bottom, and the
    sentence that says so. Every one of its ``n_ref_seeds`` seeds (those it ran at any grid lr) must have run at
    both ends: a run not on disk (yet) is not a seed that did not diverge."""
    ref = cells[cells["method"] == REFERENCE]
    top, bottom = ref[ref["lr"] == grid[-1]], ref[ref["lr"] == grid[0]]
    if top.empty or bottom.empty:
        return False, f"{REFERENCE} did not run at both ends of the grid ({grid[0]:g}, {grid[-1]:g}): not bounded"
    t, b = top.iloc[0], bottom.iloc[0]
    if min(int(t["n_runs"]), int(b["n_runs"])) < n_ref_seeds:
        return False, (
            f"{REFERENCE} ran on {int(t['n_runs'])} of its {n_ref_seeds} seeds at the top of the grid (lr "
            f"{grid[-1]:g}) and on {int(b['n_runs'])} at its bottom (lr {grid[0]:g}): not bounded until every "
            f"seed ran at both ends"
        )
    at_top = int(t["n_diverged"]) == int(t["n_runs"])
    at_bottom = int(b["n_diverged"]) > 0
    if at_top and not at_bottom:
        return True, (
            f"{REFERENCE} diverges on every seed at the top of the grid (lr {grid[-1]:g}: {t['status']}) "
            f"and on none at its bottom (lr {grid[0]:g}: {b['status']})"
        )
    if at_bottom:
        return False, (
            f"{REFERENCE} diverges already at the bottom of the grid (lr {grid[0]:g}: {b['status']}): "
            f"the grid starts too high"
        )
    return False, (
        f"{REFERENCE} does not diverge on every seed at the top of the grid (lr {grid[-1]:g}: "
        f"{t['status']}): the grid does not reach its breaking point, so a recipe that does not diverge "
        f"on it is not shown to break later than {REFERENCE}"
    )


def _frontier_one(runs: pd.DataFrame, an: Analysis, source: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    grid = sorted(float(x) for x in runs["lr"].unique())
    n = len(grid)
    cells = _cells_one(runs, grid, an)
    seeds = _seeds_one(runs, grid)
    bounded, note = _reference_bounds(cells, grid, runs.loc[runs["method"] == REFERENCE, "seed"].nunique())
    definition = definition_of(runs)
    rows = []
    for method, g in runs.groupby("method", sort=False):
        c = cells[cells["method"] == method]
        st = c[c["within_margin"]]
        idx = int(st["lr_index"].max()) if len(st) else -1  # -1: below the grid
        if idx >= 0:
            cells.loc[(cells["method"] == method) & (cells["lr_index"] == idx), "max_within_margin"] = True
        sd_rows = seeds[seeds["method"] == method].sort_values("seed")
        div_idx = int(sd_rows["divergence_index"].min())  # n: no seed diverged on the grid
        if div_idx < n:
            cells.loc[(cells["method"] == method) & (cells["lr_index"] == div_idx), "first_divergence"] = True
        sens, sd, n_sens = _sensitivity(g, n)
        means = c.dropna(subset=["val_loss_mean"])
        base = g["base_method"].dropna().iloc[0] if "base_method" in g and g["base_method"].notna().any() else None
        on_grid = sd_rows[sd_rows["diverged_on_grid"].astype(bool)]
        rows.append(
            {
                "profile": g["profile"].iloc[0],
                "model": g["model"].iloc[0],
                "method": method,
                "is_fp8": is_fp8(method, base),
                "n_seeds": int(g["seed"].nunique()),
                "divergence_lr": grid[div_idx] if div_idx < n else np.nan,
                "divergence_index": div_idx,
                "divergence_vs_reference": (
                    "reference" if method == REFERENCE else _vs_reference(sd_rows["vs_reference"].tolist())
                ),
                "divergence_paired_grid_steps": "reference"
                if method == REFERENCE
                else "; ".join(
                    f"seed {r.seed}: "
                    + (
                        steps_text(
                            r.paired_grid_steps,
                            censored=not (r.diverged_on_grid and r.reference_divergence_index < n),
                        )
                        if r.vs_reference != "incomplete"
                        else "incomplete"
                    )
                    for r in sd_rows.itertuples()
                ),
                "divergence_lr_by_seed": "; ".join(
                    f"seed {r.seed}: {lr_text(r.divergence_lr)}" for r in sd_rows.itertuples()
                ),
                "n_diverging_seeds": len(on_grid),
                "divergence_kinds": _kinds(on_grid["reason"]) if len(on_grid) else "",
                "within_margin_lr": grid[idx] if idx >= 0 else np.nan,
                "within_margin_index": idx,
                "lr_sensitivity": sens,
                "lr_sensitivity_sd": sd,
                "n_sensitivity_seeds": n_sens,
                "best_lr": means.loc[means["val_loss_mean"].idxmin(), "lr"] if len(means) else np.nan,
                "best_loss": means["val_loss_mean"].min() if len(means) else np.nan,
                "grid": " / ".join(f"{x:g}" for x in grid),
                "n_grid": n,
                "margin_pct": an.margin_pct,
                "bounded": bounded,
                "bounded_note": note,
                "rule": within_margin_rule(an.margin_pct),
                "divergence_rule": DIVERGENCE_RULE,
                "divergence_definition": definition,
                "sensitivity_rule": SENSITIVITY_RULE,
                "source": source,
            }
        )
    fr = pd.DataFrame(rows)
    fr = pd.concat([fr[fr["method"] == REFERENCE], fr[fr["method"] != REFERENCE]], ignore_index=True)
    ref = fr[fr["method"] == REFERENCE]
    if len(ref):
        r = ref.iloc[0]
        fr["within_margin_grid_steps"] = fr["within_margin_index"] - int(r["within_margin_index"])
        fr["within_margin_differs"] = fr["within_margin_grid_steps"].abs() >= 1
        # where neither diverged on the grid the difference is unknown, not 0
        both_above = (fr["divergence_index"] == n) & (int(r["divergence_index"]) == n)
        fr["divergence_grid_steps"] = (fr["divergence_index"] - int(r["divergence_index"])).where(~both_above)
        fr["reference_points_between"] = (
            int(r["divergence_index"]) - int(r["within_margin_index"]) - 1 if int(r["divergence_index"]) < n else np.nan
        )
    else:
        fr["within_margin_grid_steps"], fr["within_margin_differs"] = np.nan, pd.NA
        fr["divergence_grid_steps"], fr["reference_points_between"] = np.nan, np.nan
    return fr[FRONTIER_COLUMNS], cells, seeds


def frontier(
    summary: pd.DataFrame, an: Analysis | None = None, source: str = "results/summary.csv", with_seeds: bool = False
):
    """(frontier, cells) of every profile and model in ``summary`` that has frontier recipes; with
    ``with_seeds`` also the per-seed divergence table: (frontier, cells, seeds)."""
    an = an or Analysis()
    runs = frontier_runs(summary)
    for col in ("reason", "diverged_step", "run_dir"):  # a summary written before these columns existed
        if col not in runs:
            runs = runs.assign(**{col: np.nan})
    frs, cls, sds = [], [], []
    for _, g in runs.groupby(GROUP, sort=False):
        g = g.assign(_step0=_step0(g)).reset_index(drop=True)
        fr, ce, sd = _frontier_one(g, an, source)
        frs.append(fr)
        cls.append(ce)
        sds.append(sd)
    fr = pd.concat(frs, ignore_index=True) if frs else pd.DataFrame(columns=FRONTIER_COLUMNS)
    ce = pd.concat(cls, ignore_index=True) if cls else pd.DataFrame(columns=CELL_COLUMNS)
    sd = pd.concat(sds, ignore_index=True) if sds else pd.DataFrame(columns=SEED_COLUMNS)
    ce = ce.sort_values([*GROUP, "method", "lr"], kind="stable").reset_index(drop=True)
    sd = sd.sort_values([*GROUP, "method", "seed"], kind="stable").reset_index(drop=True)
    return (fr, ce, sd) if with_seeds else (fr, ce)


def divergence_statement(r, ref_lr: str) -> str:
    """One FP8 recipe's divergence lr against bf16-amp's, in grid steps, from its frontier.csv row."""
    word = r["divergence_vs_reference"]
    steps = r["divergence_grid_steps"]
    where = (
        f"diverges from lr {lr_text(r['divergence_lr'])}"
        if int(r["n_diverging_seeds"])
        else "does not diverge on the grid"
    )
    if pd.isna(steps):
        rel = "not comparable with " + REFERENCE + "'s"
    elif int(r["n_diverging_seeds"]) == 0:
        rel = f"at least {int(steps)} grid step(s) above {REFERENCE}'s {ref_lr}"
    else:
        rel = (
            f"{abs(int(steps))} grid step(s) {'below' if steps < 0 else 'above'} {REFERENCE}'s {ref_lr}"
            if steps
            else f"at {REFERENCE}'s {ref_lr}"
        )
    return (
        f"{r['method']} {where} ({r['divergence_lr_by_seed']}), {rel}; paired by seed: "
        f"{r['divergence_paired_grid_steps']} -> {word}"
    )


def statements(fr: pd.DataFrame) -> list[str]:
    """What the frontier says, from frontier.csv's values alone: per profile and model, whether it is bounded,
    then per FP8 recipe its divergence lr relative to bf16-amp's in grid steps, then the within-margin lrs."""
    out = []
    for (profile, model), g in fr.groupby(GROUP, sort=False):
        first = g.iloc[0]
        where = f"{profile}/{model}, grid {first['grid']}"
        out.append(
            f"{where}: the frontier is {'bounded' if bool(first['bounded']) else 'not bounded'}: "
            f"{first['bounded_note']}."
        )
        ref = g[g["method"] == REFERENCE]
        if ref.empty:
            out.append(f"{where}: {REFERENCE} did not run on the grid, so no recipe's frontier is compared with it.")
            continue
        r0 = ref.iloc[0]
        ref_lr = lr_text(r0["divergence_lr"])
        out.append(
            f"{where}: {REFERENCE} diverges from lr {ref_lr} ({r0['divergence_lr_by_seed']}); its max "
            f"within-margin lr is {lr_text(r0['within_margin_lr'])}, "
            f"{fmt_count(r0['reference_points_between'])} grid point(s) between the two."
        )
        fp8 = g[g["is_fp8"].astype(bool)]
        for r in fp8.itertuples():
            out.append(f"{where}: {divergence_statement(fp8.loc[r.Index], ref_lr)}.")
        differ = fp8[fp8["within_margin_differs"].astype(bool)]
        if len(fp8) and differ.empty:
            out.append(
                f"{where}: no FP8 recipe's max within-margin lr differs from {REFERENCE}'s "
                f"({lr_text(r0['within_margin_lr'])}) by a grid step."
            )
        elif len(fp8):
            parts = [
                f"{r.method} {lr_text(r.within_margin_lr)} ({int(r.within_margin_grid_steps):+d} grid steps)"
                for r in differ.itertuples()
            ]
            out.append(
                f"{where}: FP8 recipes whose max within-margin lr differs from {REFERENCE}'s "
                f"({lr_text(r0['within_margin_lr'])}): " + "; ".join(parts) + "."
            )
    return out


def fmt_count(v) -> str:
    return "no" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{int(v)}"


def write_outputs(summary_csv: str | Path, results: str | Path, an: Analysis | None = None) -> dict[str, Path]:
    """frontier.csv, frontier_cells.csv and frontier_seeds.csv under ``results`` (headers only where there is no
    frontier). From the summary; where it holds none, from the stability profile's runs on disk, so that
    another profile's report still shows them (``source`` says which)."""
    results = Path(results)
    summary = pd.read_csv(summary_csv) if Path(summary_csv).is_file() else pd.DataFrame()
    fr, cells, seeds = frontier(summary, an, source=str(summary_csv), with_seeds=True)
    if fr.empty:
        disk = stability_runs_on_disk(results)
        if not disk.empty:
            fr, cells, seeds = frontier(
                disk, an, source=f"{results}/runs/{PROFILE}/ (finished runs on disk)", with_seeds=True
            )
    paths = {"frontier": results / FRONTIER_CSV, "cells": results / CELLS_CSV, "seeds": results / SEEDS_CSV}
    for key, df in (("frontier", fr), ("cells", cells), ("seeds", seeds)):
        write_csv(df, paths[key])
    return paths


def main(argv=None) -> int:
    from pipelines.analysis.comparison import load_analysis

    ap = argparse.ArgumentParser(prog="python -m pipelines.analysis.frontier", description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default="results", help="results folder: reads summary.csv, writes the CSVs")
    ap.add_argument("--summary", help="default: RESULTS/summary.csv")
    ap.add_argument("--analysis", help="analysis settings as JSON (default: pipelines/config.yaml's analysis)")
    args = ap.parse_args(argv)
    paths = write_outputs(
        args.summary or Path(args.results) / "summary.csv", args.results, load_analysis(args.analysis)
    )
    fr = pd.read_csv(paths["frontier"])
    for p in paths.values():
        print(f"wrote {p}")
    if fr.empty:
        print(f"no learning-rate frontier in these results (no recipe ran at >= 2 lrs); run: {COMMAND}")
        return 0
    print(
        fr[
            [
                "profile",
                "model",
                "method",
                "n_seeds",
                "divergence_lr",
                "divergence_vs_reference",
                "within_margin_lr",
                "lr_sensitivity",
            ]
        ].to_string(index=False)
    )
    print(
        json.dumps(
            {
                "divergence": fr["divergence_definition"].iloc[0],
                "divergence_rule": fr["divergence_rule"].iloc[0],
                "rule": fr["rule"].iloc[0],
                "sensitivity_rule": fr["sensitivity_rule"].iloc[0],
            },
            indent=1,
        )
    )
    for s in statements(fr):
        print(s)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
