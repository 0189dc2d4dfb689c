"""The stress tables: the precision ladder, outlier injection, quantized norm gains and the FP8 second moment,
from the ``stress`` profile's runs (or a profile that runs the stress variants at one lr beside a learning-rate
grid); REPORT.md's stress subsections
(``pipelines.report.stress_section``) print them.

``build_tables`` turns ``results/summary.csv`` (and each run's ``metrics.jsonl`` for the injected layer's
telemetry) into ``results/stress_ladder.csv``, ``stress_outliers.csv``, ``stress_norm_gains.csv`` and
``stress_second_moment.csv``; every number a subsection prints comes from those CSVs.

    python -m pipelines.analysis.stress_tables --results results      # writes the four CSVs
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pandas as pd

from common.atomic import write_csv
from pipelines.analysis.stats import paired_gap_pct, t_interval
from pipelines.run import stress_variants as sv
from pipelines.run.events import read_events

PROFILE = "stress"
#: where the stress runs are read: the stress profile runs them; a frontier profile may carry them at one lr
PROFILES = ("stability", "stress")
REFERENCE = "bf16-amp"
HOW = "`snakemake --cores all --config profile=stress`"
TABLES = ("ladder", "outliers", "norm_gains", "second_moment")


# -- tables --------------------------------------------------------------------------------------------
def _stress_runs(df: pd.DataFrame) -> pd.DataFrame:
    """The stress cells and their baselines: the profile (stability or stress) where the stress variants ran,
    at the lr they ran at (in the stability profile the baselines also ran over the frontier's grid; pairing
    is by seed at that one lr)."""
    if df.empty or "profile" not in df:
        return df.iloc[0:0]
    df = df[df["profile"].isin(PROFILES)]
    cells = df[df["method"].isin(set(sv.variants()))]
    if cells.empty:
        return df.iloc[0:0]
    profile = cells["profile"].value_counts().idxmax()
    df, cells = df[df["profile"] == profile], cells[cells["profile"] == profile]
    lr = pd.to_numeric(cells["lr"], errors="coerce")
    if lr.notna().any():
        df = df[np.isclose(pd.to_numeric(df["lr"], errors="coerce"), lr.mode().iloc[0])]
    return df


def _summary(results_dir: Path) -> pd.DataFrame:
    """The stress runs from summary.csv; where it holds none (another profile's results), from the stability
    or stress profile's runs on disk."""
    path = results_dir / "summary.csv"
    df = _stress_runs(pd.read_csv(path)) if path.is_file() else pd.DataFrame()
    if df.empty:
        from pipelines.analysis.collect import runs_on_disk

        df = _stress_runs(runs_on_disk(results_dir, *PROFILES))
    return df


def _final(df: pd.DataFrame, method: str) -> dict[int, tuple[str, float]]:
    """seed → (status, final val loss) of one method's runs."""
    return {int(r.seed): (str(r.status), float(r.final_val_loss)) for r in df[df["method"] == method].itertuples()}


def _paired(df: pd.DataFrame, method: str, reference: str) -> dict:
    """Per-seed paired gaps (%) of ``method`` against ``reference`` (same seed, both ok), their mean and
    t interval; seeds that diverged are counted, not averaged."""
    runs, ref = _final(df, method), _final(df, reference)
    gaps = [
        paired_gap_pct(v, ref[s][1])
        for s, (st, v) in sorted(runs.items())
        if st == "ok" and s in ref and ref[s][0] == "ok" and math.isfinite(v)
    ]
    ci = t_interval(gaps)
    return {
        "n_seeds": len(runs),
        "n_diverged": sum(st == "diverged" for st, _ in runs.values()),
        "n_paired": ci.n,
        "gap_mean_pct": ci.mean,
        "gap_ci_lo_pct": ci.lo,
        "gap_ci_hi_pct": ci.hi,
        "gap_min_pct": min(gaps) if gaps else math.nan,
        "gap_max_pct": max(gaps) if gaps else math.nan,
    }


def _layer_fractions(run_dirs, layer: str) -> dict:
    """Max over runs and logged steps of the windowed saturated / underflowed fractions of ``layer``'s
    input and weight (the tensors the injection scales)."""
    out = {f"{t}_{k}_frac_max": math.nan for t in ("input", "weight") for k in ("saturated", "underflow")}
    for d in run_dirs:
        path = Path(str(d)) / "metrics.jsonl"
        if not path.is_file():
            continue
        for ev in read_events(path):
            if ev["event"] != "telemetry":
                continue
            for r in ev.get("layers", []):
                if r.get("layer") == layer and r.get("tensor") in ("input", "weight"):
                    for k in ("saturated", "underflow"):
                        v = r.get(f"{k}_frac_window")
                        key = f"{r['tensor']}_{k}_frac_max"
                        if v is not None and not (out[key] >= v):  # NaN-safe max
                            out[key] = float(v)
    return out


def _col_max(df: pd.DataFrame, method: str, col: str) -> float:
    if col not in df:
        return 0.0 if method == "fp8-own-tensorwise" else math.nan  # hp gains: nothing is quantized
    v = pd.to_numeric(df[df["method"] == method][col], errors="coerce").dropna()
    return float(v.max()) if len(v) else (0.0 if method == "fp8-own-tensorwise" else math.nan)


def ladder_table(df: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for fmt, de, dm in sv.LADDER:
        name = sv.ladder_name(fmt)
        if name in set(df["method"]):
            rows.append(
                {
                    "format": fmt,
                    "method": name,
                    "exponent_bits_removed": de,
                    "mantissa_bits_removed": dm,
                    **_paired(df, name, REFERENCE),
                }
            )
    return pd.DataFrame(rows)


def outliers_table(df: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for gran, base in sv.GRANULARITY_METHODS.items():
        for k in (1, *sv.OUTLIER_KS):
            name = base if k == 1 else sv.outlier_name(gran, k)
            if name not in set(df["method"]):
                continue
            p = _paired(df, name, base)
            rows.append(
                {
                    "granularity": gran,
                    "k": k,
                    "method": name,
                    "n_seeds": p["n_seeds"],
                    "n_diverged": p["n_diverged"],
                    "gap_vs_uninjected_pct": p["gap_mean_pct"],
                    # the interval over the paired seeds (the outlier claim's rule reads it)
                    "gap_vs_uninjected_ci_lo_pct": p["gap_ci_lo_pct"],
                    "gap_vs_uninjected_ci_hi_pct": p["gap_ci_hi_pct"],
                    "n_paired": p["n_paired"],
                    "gap_vs_bf16_amp_pct": _paired(df, name, REFERENCE)["gap_mean_pct"],
                    **_layer_fractions(df[df["method"] == name]["run_dir"], sv.OUTLIER_LAYER),
                }
            )
    return pd.DataFrame(rows)


def norm_gains_table(df: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for mode, name in (("hp", "fp8-own-tensorwise"), *((m, sv.norm_gain_name(m)) for m in sv.NORM_GAIN_MODES)):
        if name in set(df["method"]):
            p = _paired(df, name, REFERENCE)
            rows.append(
                {
                    "norm_gains": mode,
                    "method": name,
                    "n_seeds": p["n_seeds"],
                    "n_diverged": p["n_diverged"],
                    "gap_vs_bf16_amp_pct": p["gap_mean_pct"],
                    "gap_vs_hp_gains_pct": _paired(df, name, "fp8-own-tensorwise")["gap_mean_pct"],
                    # the largest share of a norm's gains any telemetry window saw clipped (train's digest)
                    "gain_clipped_frac_max": _col_max(df, name, "telemetry_max_clipped_frac_window"),
                }
            )
    return pd.DataFrame(rows)


def second_moment_table(df: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for eps in sv.EPS:
        for b2 in sv.BETA2:
            for storage in sv.V_STORAGE:
                name = sv.second_moment_name(eps, b2, storage)
                if name in set(df["method"]):
                    p = _paired(df, name, REFERENCE)
                    rows.append(
                        {
                            "eps": eps,
                            "beta2": b2,
                            "v": storage,
                            "method": name,
                            "n_seeds": p["n_seeds"],
                            "n_diverged": p["n_diverged"],
                            "gap_vs_bf16_amp_pct": p["gap_mean_pct"],
                            "gap_vs_dre_same_hp_pct": _paired(df, name, sv.second_moment_name(eps, b2, "dre"))[
                                "gap_mean_pct"
                            ],
                        }
                    )
    return pd.DataFrame(rows)


BUILDERS = {
    "ladder": ladder_table,
    "outliers": outliers_table,
    "norm_gains": norm_gains_table,
    "second_moment": second_moment_table,
}


def csv_path(results_dir: Path, name: str) -> Path:
    return Path(results_dir) / f"stress_{name}.csv"


def build_tables(results_dir: str | Path) -> dict[str, Path]:
    """Write the four stress CSVs from summary.csv (empty tables, header only, where the runs are absent)."""
    results_dir = Path(results_dir)
    df = _summary(results_dir)
    out = {}
    for name, fn in BUILDERS.items():
        t = fn(df) if len(df) else pd.DataFrame()
        path = csv_path(results_dir, name)
        write_csv(t, path)
        out[name] = path
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m pipelines.analysis.stress_tables", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--results", default="results")
    args = ap.parse_args(argv)
    for path in build_tables(args.results).values():
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
