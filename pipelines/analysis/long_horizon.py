"""Long horizon: whether a recipe's early behaviour holds when training runs ten times longer.

    python -m pipelines.analysis.long_horizon --results results

The default profile trains 200 steps; fp8-naive's telemetry there shows most of its FP8 weight codes
unchanged by a step (the update is below half an E4M3 spacing), yet it finishes ``ok``. The
``long_horizon`` profile trains bf16-amp, fp8-naive (plain and with its weight update rounded
stochastically), fp8-e2e, fp8-optim and fp8-own-tensorwise for 10x the tokens, to show whether that stall
turns into a growing loss gap or a divergence.

Writes ``results/long_horizon.csv`` (one row per run: status, the paired gap against bf16-amp at the same
seed at the default horizon and at the end, the share of unchanged FP8 weight codes early and late) and
``results/long_horizon_curve.csv`` (the paired gap at every evaluation). Reads the runs of the
``long_horizon`` profile on disk, so any profile's report shows them once they ran.

A gap **grows** when its change from the default horizon to the end exceeds the margin
(``analysis.margin_pct``) and, with fewer than ``analysis.min_seeds`` seeds, also ``far_factor`` x the noise
floor (the suite's rule for a verdict on few seeds); it **shrinks** symmetrically; otherwise it holds.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from common.atomic import write_csv
from pipelines.run.events import read_events
from pipelines.analysis.stats import Analysis

PROFILE = "long_horizon"
COMMAND = f"snakemake --cores all --config profile={PROFILE}"
REFERENCE = "bf16-amp"
LONG_CSV, CURVE_CSV = "long_horizon.csv", "long_horizon_curve.csv"
COLUMNS = ["model", "method", "seed", "status", "reason", "diverged_step", "steps", "tokens", "default_steps",
           "tokens_ratio", "horizon_step", "gap_at_default_pct", "gap_final_pct", "gap_change_pct", "trend",
           "unchanged_early", "unchanged_late", "final_val_loss"]
CURVE_COLUMNS = ["profile", "model", "method", "lr", "seed", "status", "step", "val_loss", "ref_val_loss", "gap_pct"]


def runs_on_disk(results: Path) -> pd.DataFrame:
    """The long_horizon profile's finished runs (their summary.json), with the paired columns; empty if none."""
    from pipelines.analysis.collect import runs_on_disk as on_disk

    return on_disk(results, PROFILE)


def unchanged_by_step(run_dir: str | Path) -> pd.Series:
    """fp8-naive's ``unchanged_frac`` telemetry (share of FP8 weight codes a step left as they were), mean over
    layers, per logged step after the first; empty for a recipe without it."""
    path = Path(str(run_dir)) / "metrics.jsonl"
    out = {}
    if path.is_file():
        for ev in read_events(path):
            if ev["event"] == "telemetry" and ev["step"] > 0:
                vals = [r["unchanged_frac"] for r in ev.get("layers", []) if r.get("unchanged_frac") is not None]
                if vals:
                    out[ev["step"]] = float(np.mean(vals))
    return pd.Series(out, dtype=float).sort_index()


def _at(series: pd.Series, step: int) -> float:
    """The value at the logged step nearest ``step`` (NaN where nothing was logged)."""
    if series.empty:
        return float("nan")
    return float(series.iloc[int(np.argmin(np.abs(series.index.to_numpy() - step)))])


def trend(change: float, n_seeds: int, an: Analysis, noise_floor_pct: float | None) -> str:
    if not np.isfinite(change):
        return "n/a"
    bar = an.margin_pct
    if n_seeds < an.min_seeds and noise_floor_pct is not None and np.isfinite(noise_floor_pct):
        bar = max(bar, an.far_factor * noise_floor_pct)
    return "grows" if change > bar else "shrinks" if change < -bar else "holds"


def long_horizon(runs: pd.DataFrame, default_steps: int, an: Analysis,
                 noise_floor_pct: float | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-run table, per-eval curve) of the long_horizon runs; ``default_steps`` is the default profile's
    horizon, where the gap is read a second time."""
    from pipelines.analysis.collect import eval_gaps

    if runs.empty:
        return pd.DataFrame(columns=COLUMNS), pd.DataFrame(columns=CURVE_COLUMNS)
    curve = eval_gaps(runs)[CURVE_COLUMNS]
    n_seeds = runs.groupby("method")["seed"].nunique()
    rows = []
    for r in runs.itertuples():
        c = curve[(curve["method"] == r.method) & (curve["seed"] == r.seed) & (curve["model"] == r.model)]
        c = c.dropna(subset=["gap_pct"]).set_index("step")["gap_pct"].sort_index()
        horizon = int(c.index[np.argmin(np.abs(c.index.to_numpy() - default_steps))]) if len(c) else default_steps
        at_default = _at(c, default_steps)
        final = float(r.loss_gap_pct) if pd.notna(r.loss_gap_pct) else float("nan")
        change = final - at_default
        unchanged = unchanged_by_step(r.run_dir)
        rows.append({
            "model": r.model, "method": r.method, "seed": int(r.seed), "status": r.status, "reason": r.reason,
            "diverged_step": r.diverged_step, "steps": r.steps, "tokens": r.tokens, "default_steps": default_steps,
            "tokens_ratio": float(r.steps) / default_steps if pd.notna(r.steps) else float("nan"),
            "horizon_step": horizon, "gap_at_default_pct": at_default, "gap_final_pct": final,
            "gap_change_pct": change,
            "trend": "diverged" if r.status == "diverged" else trend(change, int(n_seeds[r.method]), an, noise_floor_pct),
            "unchanged_early": _at(unchanged, default_steps), "unchanged_late": _at(unchanged, int(r.steps or 0)),
            "final_val_loss": r.final_val_loss})
    table = pd.DataFrame(rows, columns=COLUMNS)
    first = [REFERENCE] if REFERENCE in set(table["method"]) else []
    order = first + sorted(set(table["method"]) - set(first))
    table["_o"] = table["method"].map(order.index)
    table = table.sort_values(["model", "_o", "seed"], kind="stable").drop(columns="_o").reset_index(drop=True)
    return table, curve


def _noise_floor(results: Path) -> float | None:
    """The largest noise floor measured in these results (the default lr's), for the few-seed rule."""
    path = results / "noise_floor.csv"
    if not path.is_file():
        return None
    nf = pd.read_csv(path)
    return float(nf["noise_floor_pct"].max()) if len(nf) else None


def default_steps() -> int:
    from pipelines.run.config import load

    return int(load()["train"]["steps"])


def write_outputs(results: str | Path, an: Analysis | None = None, default: int | None = None) -> dict[str, Path]:
    """The two CSVs under ``results``; ``default``: the default horizon in steps (pipelines/config.yaml's)."""
    from pipelines.analysis.comparison import load_analysis

    results = Path(results)
    table, curve = long_horizon(runs_on_disk(results), default or default_steps(), an or load_analysis(),
                                _noise_floor(results))
    paths = {"table": results / LONG_CSV, "curve": results / CURVE_CSV}
    for key, df in (("table", table), ("curve", curve)):
        write_csv(df, paths[key])
    return paths


def main(argv=None) -> int:
    from pipelines.analysis.comparison import load_analysis

    ap = argparse.ArgumentParser(prog="python -m pipelines.analysis.long_horizon", description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default="results", help="results folder: reads runs/long_horizon/, writes the CSVs")
    ap.add_argument("--analysis", help="analysis settings as JSON (default: pipelines/config.yaml's analysis)")
    args = ap.parse_args(argv)
    paths = write_outputs(args.results, load_analysis(args.analysis))
    for p in paths.values():
        print(f"wrote {p}")
    table = pd.read_csv(paths["table"])
    if table.empty:
        print(f"no long-horizon runs on disk; run: {COMMAND}")
    else:
        print(table[["method", "seed", "status", "gap_at_default_pct", "gap_final_pct", "trend",
                     "unchanged_early", "unchanged_late"]].to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
