"""Long horizon: whether a recipe's early behaviour holds when training runs ten times longer.

    python -m pipelines.analysis.long_horizon --results results

The default profile trains 200 steps; fp8-naive's telemetry there shows most of its FP8 weight codes
unchanged by a step (the update is below half an E4M3 spacing), yet it finishes ``ok``. The
``long_horizon`` profile trains bf16-amp, fp32 (the null: a change that should not matter), fp8-naive (plain
and with its weight update rounded stochastically), fp8-e2e and fp8-optim for 10x the tokens on 3 seeds, to
show whether that stall turns into a loss gap that grows as the cosine schedule lowers the lr, or a divergence.

Everything is paired by seed against bf16-amp (same initial weights, same batches). Writes

- ``results/long_horizon.csv``: one row per recipe: the paired gap at the evaluation nearest the default
  horizon and at the end (per seed, mean, Student-t interval), the verdict at the end against the margin
  (``pipelines.analysis.stats.verdict``, with this horizon's own noise floor), and the **trend**;
- ``results/long_horizon_runs.csv``: one row per run (status, reason, both gaps, the share of unchanged FP8
  weight codes early and late);
- ``results/long_horizon_curve.csv``: one row per recipe and evaluation step: the paired gaps over seeds,
  their mean and Student-t interval (the figure's band).
- ``results/lost_updates.csv`` (``pipelines.analysis.lost_updates``): per recipe with probed runs, whether the
  lost-update share grows as the lr decays, whether the loss gap tracks it, and the lost updates' bias with and
  without stochastic rounding.

The **noise floor** of this horizon is fp32's largest |paired gap| at the end (``analysis.null_methods``): the
default horizon's floor says nothing about how far two harmless recipes drift apart in 2000 steps.

**Trend** (per recipe): the per-seed change gap(end) - gap(default horizon), its mean and Student-t interval
over seeds: ``grows`` where the interval lies above 0, ``shrinks`` where below, ``holds`` where it contains 0;
``diverged`` where any seed diverged; ``inconclusive (n seeds)`` on fewer than ``analysis.min_seeds`` seeds.

Reads the runs of the ``long_horizon`` profile on disk, so any profile's report shows them once they ran.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from common.atomic import write_csv
from pipelines.analysis.stats import Analysis, noise_floor, t_interval, verdict
from pipelines.run.events import read_events

PROFILE = "long_horizon"
COMMAND = f"snakemake --cores all --config profile={PROFILE}"
REFERENCE = "bf16-amp"
LONG_CSV, RUNS_CSV, CURVE_CSV = "long_horizon.csv", "long_horizon_runs.csv", "long_horizon_curve.csv"
COLUMNS = [
    "model",
    "method",
    "n_seeds",
    "seeds",
    "status",
    "n_diverged",
    "diverged_steps",
    "steps",
    "default_steps",
    "tokens_ratio",
    "horizon_step",
    "gaps_default_pct",
    "gap_default_mean_pct",
    "gap_default_ci_lo_pct",
    "gap_default_ci_hi_pct",
    "gaps_end_pct",
    "gap_end_mean_pct",
    "gap_end_ci_lo_pct",
    "gap_end_ci_hi_pct",
    "verdict_end",
    "changes_pct",
    "change_mean_pct",
    "change_ci_lo_pct",
    "change_ci_hi_pct",
    "trend",
    "noise_floor_pct",
    "null_method",
    "null_gaps_end_pct",
    "margin_pct",
    "unchanged_early",
    "unchanged_late",
    "verdict_rule",
    "trend_rule",
]
RUN_COLUMNS = [
    "model",
    "method",
    "seed",
    "status",
    "reason",
    "diverged_step",
    "steps",
    "tokens",
    "default_steps",
    "tokens_ratio",
    "horizon_step",
    "gap_at_default_pct",
    "gap_final_pct",
    "gap_change_pct",
    "unchanged_early",
    "unchanged_late",
    "final_val_loss",
]
CURVE_COLUMNS = ["model", "method", "step", "n_seeds", "gaps_pct", "gap_mean_pct", "gap_ci_lo_pct", "gap_ci_hi_pct"]


def trend_rule(an: Analysis) -> str:
    return (
        f"trend: per seed the change gap(end) - gap(default horizon) of the paired gap vs {REFERENCE}; grows "
        f"if the {an.confidence:.0%} Student-t interval of its mean over seeds lies above 0, shrinks if below, "
        f"holds if it contains 0; diverged if any seed diverged; fewer than {an.min_seeds} seeds: inconclusive"
    )


def runs_on_disk(results: Path) -> pd.DataFrame:
    """The long_horizon profile's finished runs (their summary.json), with the paired columns; empty if none."""
    from pipelines.analysis.collect import runs_on_disk as on_disk

    return on_disk(results, PROFILE)


def unchanged_by_step(run_dir: str | Path) -> pd.Series:
    """fp8-naive's ``unchanged_frac`` telemetry (share of FP8 weight codes a step left as they were), mean over
    its E4M3 weight layers (as ``collect.run_events`` counts them), per logged step after the first; empty for a
    recipe without it."""
    path = Path(str(run_dir)) / "metrics.jsonl"
    out = {}
    if path.is_file():
        for ev in read_events(path):
            if ev["event"] == "telemetry" and ev["step"] > 0:
                vals = [
                    r["unchanged_frac"]
                    for r in ev.get("layers", [])
                    if r.get("unchanged_frac") is not None and r.get("format", "e4m3") == "e4m3"
                ]
                if vals:
                    out[ev["step"]] = float(np.mean(vals))
    return pd.Series(out, dtype=float).sort_index()


def _at(series: pd.Series, step: int) -> float:
    """The value at the logged step nearest ``step`` (NaN where nothing was logged)."""
    if series.empty:
        return float("nan")
    return float(series.iloc[int(np.argmin(np.abs(series.index.to_numpy() - step)))])


def trend(changes, an: Analysis, diverged: bool = False) -> str:
    """The trend of a recipe's gap from its per-seed changes (``trend_rule``)."""
    if diverged:
        return "diverged"
    x = [float(v) for v in changes if v is not None and np.isfinite(v)]
    if not x:
        return "n/a"
    if len(x) < an.min_seeds:
        return f"inconclusive ({len(x)} seed{'s' * (len(x) > 1)})"
    ci = t_interval(x, an.confidence)
    return "grows" if ci.lo > 0 else "shrinks" if ci.hi < 0 else "holds"


def _join(values, digits: int = 2) -> str:
    return " / ".join("–" if not np.isfinite(v) else f"{v:+.{digits}f}" for v in values)


def _per_run(runs: pd.DataFrame, curve_runs: pd.DataFrame, default_steps: int) -> pd.DataFrame:
    rows = []
    for r in runs.itertuples():
        c = curve_runs[
            (curve_runs["method"] == r.method) & (curve_runs["seed"] == r.seed) & (curve_runs["model"] == r.model)
        ]
        c = c.dropna(subset=["gap_pct"]).set_index("step")["gap_pct"].sort_index()
        horizon = int(c.index[np.argmin(np.abs(c.index.to_numpy() - default_steps))]) if len(c) else default_steps
        at_default = _at(c, default_steps)
        final = float(r.loss_gap_pct) if pd.notna(r.loss_gap_pct) else float("nan")
        unchanged = unchanged_by_step(r.run_dir)
        rows.append(
            {
                "model": r.model,
                "method": r.method,
                "seed": int(r.seed),
                "status": r.status,
                "reason": r.reason,
                "diverged_step": r.diverged_step,
                "steps": r.steps,
                "tokens": r.tokens,
                "default_steps": default_steps,
                "tokens_ratio": float(r.steps) / default_steps if pd.notna(r.steps) else float("nan"),
                "horizon_step": horizon,
                "gap_at_default_pct": at_default,
                "gap_final_pct": final,
                "gap_change_pct": final - at_default,
                "unchanged_early": _at(unchanged, default_steps),
                "unchanged_late": _at(unchanged, int(r.steps or 0)),
                "final_val_loss": r.final_val_loss,
            }
        )
    table = pd.DataFrame(rows, columns=RUN_COLUMNS)
    first = [REFERENCE] if REFERENCE in set(table["method"]) else []
    order = first + sorted(set(table["method"]) - set(first))
    table["_o"] = table["method"].map(order.index)
    return table.sort_values(["model", "_o", "seed"], kind="stable").drop(columns="_o").reset_index(drop=True)


def _curve(curve_runs: pd.DataFrame, an: Analysis) -> pd.DataFrame:
    rows = []
    c = curve_runs[curve_runs["method"] != REFERENCE].dropna(subset=["gap_pct"])
    for (model, method, step), g in c.groupby(["model", "method", "step"], sort=True):
        g = g.sort_values("seed")
        ci = t_interval(g["gap_pct"], an.confidence)
        rows.append(
            {
                "model": model,
                "method": method,
                "step": int(step),
                "n_seeds": ci.n,
                "gaps_pct": _join(g["gap_pct"]),
                "gap_mean_pct": ci.mean,
                "gap_ci_lo_pct": ci.lo,
                "gap_ci_hi_pct": ci.hi,
            }
        )
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)


def _null_floor(per_run: pd.DataFrame, an: Analysis) -> tuple[float, str, str]:
    """This horizon's noise floor: the largest |paired gap| at the end of the null methods' finished runs."""
    for null in an.null_methods:
        r = per_run[(per_run["method"] == null) & (per_run["status"] == "ok")].sort_values("seed")
        if len(r):
            return noise_floor(r["gap_final_pct"]), null, _join(r["gap_final_pct"])
    return float("nan"), "", ""


def long_horizon(
    runs: pd.DataFrame, default_steps: int, an: Analysis
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(per-recipe table, per-run table, per-step curve) of the long_horizon runs; ``default_steps`` is the
    default profile's horizon, where the gap is read a second time."""
    from pipelines.analysis.collect import eval_gaps

    if runs.empty:
        return (pd.DataFrame(columns=COLUMNS), pd.DataFrame(columns=RUN_COLUMNS), pd.DataFrame(columns=CURVE_COLUMNS))
    curve_runs = eval_gaps(runs)
    per_run = _per_run(runs, curve_runs, default_steps)
    floor, null, null_gaps = _null_floor(per_run, an)
    rows = []
    for (model, method), g in per_run.groupby(["model", "method"], sort=False):
        ok = g[g["status"] == "ok"]
        diverged = bool((g["status"] == "diverged").any())
        d_ci = t_interval(ok["gap_at_default_pct"], an.confidence)
        e_ci = t_interval(ok["gap_final_pct"], an.confidence)
        changes = ok["gap_change_pct"]
        c_ci = t_interval(changes, an.confidence)
        is_ref = method == REFERENCE
        statuses = g["status"].tolist()
        rows.append(
            {
                "model": model,
                "method": method,
                "n_seeds": int(g["seed"].nunique()),
                "seeds": ",".join(str(int(s)) for s in g["seed"]),
                "status": ", ".join(f"{k}×{statuses.count(k)}" for k in dict.fromkeys(statuses)),
                "n_diverged": int((g["status"] == "diverged").sum()),
                "diverged_steps": " / ".join(f"{int(s)}" for s in g["diverged_step"].dropna()),
                "steps": int(g["steps"].max()) if g["steps"].notna().any() else np.nan,
                "default_steps": default_steps,
                "tokens_ratio": g["tokens_ratio"].max(),
                "horizon_step": int(g["horizon_step"].mode().iloc[0]),
                "gaps_default_pct": "reference" if is_ref else _join(ok["gap_at_default_pct"]),
                "gap_default_mean_pct": np.nan if is_ref else d_ci.mean,
                "gap_default_ci_lo_pct": np.nan if is_ref else d_ci.lo,
                "gap_default_ci_hi_pct": np.nan if is_ref else d_ci.hi,
                "gaps_end_pct": "reference" if is_ref else _join(ok["gap_final_pct"]),
                "gap_end_mean_pct": np.nan if is_ref else e_ci.mean,
                "gap_end_ci_lo_pct": np.nan if is_ref else e_ci.lo,
                "gap_end_ci_hi_pct": np.nan if is_ref else e_ci.hi,
                "verdict_end": "reference" if is_ref else verdict(ok["gap_final_pct"], an, floor, diverged),
                "changes_pct": "reference" if is_ref else _join(changes),
                "change_mean_pct": np.nan if is_ref else c_ci.mean,
                "change_ci_lo_pct": np.nan if is_ref else c_ci.lo,
                "change_ci_hi_pct": np.nan if is_ref else c_ci.hi,
                "trend": "reference" if is_ref else trend(changes, an, diverged),
                "noise_floor_pct": floor,
                "null_method": null,
                "null_gaps_end_pct": null_gaps,
                "margin_pct": an.margin_pct,
                "unchanged_early": g["unchanged_early"].mean(),
                "unchanged_late": g["unchanged_late"].mean(),
                "verdict_rule": an.rule(),
                "trend_rule": trend_rule(an),
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS), per_run, _curve(curve_runs, an)


def default_steps() -> int:
    from pipelines.run.config import load

    return int(load()["train"]["steps"])


def write_outputs(
    results: str | Path, an: Analysis | None = None, default: int | None = None, summary: str | Path | None = None
) -> dict[str, Path]:
    """The three CSVs under ``results`` and the lost-update mechanism's (``pipelines.analysis.lost_updates``, from
    these runs and those of ``summary``); ``default``: the default horizon in steps (pipelines/config.yaml's)."""
    from pipelines.analysis import lost_updates as lu
    from pipelines.analysis.comparison import load_analysis

    results, an, default = Path(results), an or load_analysis(), default or default_steps()
    tables = long_horizon(runs_on_disk(results), default, an)
    paths = {"table": results / LONG_CSV, "runs": results / RUNS_CSV, "curve": results / CURVE_CSV}
    for path, df in zip(paths.values(), tables):
        write_csv(df, path)
    paths["lost_updates"] = results / lu.CSV
    write_csv(lu.lost_updates(lu.runs_with_probes(results, summary), default, an), paths["lost_updates"])
    return paths


def main(argv=None) -> int:
    from pipelines.analysis.comparison import load_analysis

    ap = argparse.ArgumentParser(prog="python -m pipelines.analysis.long_horizon", description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default="results", help="results folder: reads runs/long_horizon/, writes the CSVs")
    ap.add_argument("--analysis", help="analysis settings as JSON (default: pipelines/config.yaml's analysis)")
    ap.add_argument("--summary", help="results/summary.csv: its probed runs join the lost-update table")
    args = ap.parse_args(argv)
    paths = write_outputs(args.results, load_analysis(args.analysis), summary=args.summary)
    for p in paths.values():
        print(f"wrote {p}")
    table = pd.read_csv(paths["table"])
    if table.empty:
        print(f"no long-horizon runs on disk; run: {COMMAND}")
    else:
        print(
            table[
                [
                    "method",
                    "n_seeds",
                    "status",
                    "gap_default_mean_pct",
                    "gap_end_mean_pct",
                    "gap_end_ci_lo_pct",
                    "gap_end_ci_hi_pct",
                    "verdict_end",
                    "change_mean_pct",
                    "trend",
                    "noise_floor_pct",
                ]
            ].to_string(index=False)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
