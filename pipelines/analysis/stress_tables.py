"""Issue 11's stress results for REPORT.md's "Where FP8 breaks": the precision ladder, outlier injection,
quantized norm gains and the FP8 second moment, from the ``stress`` profile's runs.

``build_tables`` turns ``results/summary.csv`` (and each run's ``metrics.jsonl`` for the injected layer's
telemetry) into ``results/stress_ladder.csv``, ``stress_outliers.csv``, ``stress_norm_gains.csv`` and
``stress_second_moment.csv``; every number a subsection prints comes from those CSVs. Each subsection is a
callable ``(results_dir, fig_dir, report_dir) -> str`` (``STRESS_SUBSECTIONS``), for the report's section.

    python -m pipelines.analysis.stress_tables --results results      # writes the four CSVs and prints the text
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pandas as pd

from common.atomic import write_csv
from pipelines.analysis.markdown import md_table
from pipelines.run.events import read_events
from pipelines.analysis.stats import paired_gap_pct, t_interval
from pipelines.run import stress_variants as sv

PROFILE = "stress"
#: where the stress runs are read: the stability profile carries them beside its frontier; stress runs them alone
PROFILES = ("stability", "stress")
REFERENCE = "bf16-amp"
HOW = "`snakemake --cores all --config profile=stability` (or `profile=stress` for the stress tests alone)"
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
    gaps = [paired_gap_pct(v, ref[s][1]) for s, (st, v) in sorted(runs.items())
            if st == "ok" and s in ref and ref[s][0] == "ok" and math.isfinite(v)]
    ci = t_interval(gaps)
    return {"n_seeds": len(runs), "n_diverged": sum(st == "diverged" for st, _ in runs.values()),
            "gap_mean_pct": ci.mean, "gap_ci_lo_pct": ci.lo, "gap_ci_hi_pct": ci.hi,
            "gap_min_pct": min(gaps) if gaps else math.nan, "gap_max_pct": max(gaps) if gaps else math.nan}


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
            rows.append({"format": fmt, "method": name, "exponent_bits_removed": de, "mantissa_bits_removed": dm,
                         **_paired(df, name, REFERENCE)})
    return pd.DataFrame(rows)


def outliers_table(df: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for gran, base in sv.GRANULARITY_METHODS.items():
        for k in (1, *sv.OUTLIER_KS):
            name = base if k == 1 else sv.outlier_name(gran, k)
            if name not in set(df["method"]):
                continue
            p = _paired(df, name, base)
            rows.append({"granularity": gran, "k": k, "method": name, "n_seeds": p["n_seeds"],
                         "n_diverged": p["n_diverged"], "gap_vs_uninjected_pct": p["gap_mean_pct"],
                         "gap_vs_bf16_amp_pct": _paired(df, name, REFERENCE)["gap_mean_pct"],
                         **_layer_fractions(df[df["method"] == name]["run_dir"], sv.OUTLIER_LAYER)})
    return pd.DataFrame(rows)


def norm_gains_table(df: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for mode, name in (("hp", "fp8-own-tensorwise"), *((m, sv.norm_gain_name(m)) for m in sv.NORM_GAIN_MODES)):
        if name in set(df["method"]):
            p = _paired(df, name, REFERENCE)
            rows.append({"norm_gains": mode, "method": name, "n_seeds": p["n_seeds"], "n_diverged": p["n_diverged"],
                         "gap_vs_bf16_amp_pct": p["gap_mean_pct"],
                         "gap_vs_hp_gains_pct": _paired(df, name, "fp8-own-tensorwise")["gap_mean_pct"],
                         # the largest share of a norm's gains any telemetry window saw clipped (train's digest)
                         "gain_clipped_frac_max": _col_max(df, name, "telemetry_max_clipped_frac_window")})
    return pd.DataFrame(rows)


def second_moment_table(df: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for eps in sv.EPS:
        for b2 in sv.BETA2:
            for storage in sv.V_STORAGE:
                name = sv.second_moment_name(eps, b2, storage)
                if name in set(df["method"]):
                    p = _paired(df, name, REFERENCE)
                    rows.append({"eps": eps, "beta2": b2, "v": storage, "method": name, "n_seeds": p["n_seeds"],
                                 "n_diverged": p["n_diverged"], "gap_vs_bf16_amp_pct": p["gap_mean_pct"],
                                 "gap_vs_dre_same_hp_pct": _paired(df, name, sv.second_moment_name(eps, b2, "dre"))[
                                     "gap_mean_pct"]})
    return pd.DataFrame(rows)


BUILDERS = {"ladder": ladder_table, "outliers": outliers_table, "norm_gains": norm_gains_table,
            "second_moment": second_moment_table}


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


def _table(results_dir: Path, name: str) -> pd.DataFrame:
    """One stress CSV (rule ``stress_tables`` writes them); empty where it is absent or has no rows."""
    path = csv_path(results_dir, name)
    try:
        return pd.read_csv(path) if path.is_file() else pd.DataFrame()
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def _figure_line(fig_dir: Path, report_dir: Path, name: str) -> str:
    """The figure as the workflow drew it (``pipelines.report.figures``: FIGURES), or nothing where it was not."""
    png = Path(fig_dir) / f"{name}.png"
    return f"![{name}]({_rel(png, report_dir)})" if png.is_file() else ""


def _absent(title: str) -> str:
    return f"### {title}\n\nNo runs yet: {HOW} produces them.\n"


def _rel(path: Path, report_dir: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(report_dir).resolve()))
    except ValueError:
        return str(path)


# -- figures ---------------------------------------------------------------------------------------------
def _plt():
    import matplotlib.pyplot as plt

    return plt


def ladder_figure(t: pd.DataFrame):
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, col, label in ((axes[0], "exponent_bits_removed", "exponent bits removed"),
                           (axes[1], "mantissa_bits_removed", "mantissa bits removed")):
        lo = (t["gap_mean_pct"] - t["gap_min_pct"]).clip(lower=0)
        hi = (t["gap_max_pct"] - t["gap_mean_pct"]).clip(lower=0)
        ax.errorbar(t[col], t["gap_mean_pct"], yerr=[lo, hi], fmt="o", capsize=3)
        for r in t.itertuples():
            ax.annotate(r.format + (" (div)" if r.n_diverged else ""), (getattr(r, col), r.gap_mean_pct),
                        textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xlabel(f"{label} (from bf16 = E8M7)")
    axes[0].set_ylabel(f"final val-loss gap vs {REFERENCE} (%)")
    fig.suptitle("Precision ladder: every GEMM operand of fp8-own-tensorwise in one format (mean, seed range)")
    return fig


def outliers_figure(t: pd.DataFrame):
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for gran, g in t.groupby("granularity", sort=False):
        g = g.sort_values("k")
        axes[0].plot(g["k"], g["input_underflow_frac_max"], "o-", label=gran)
        axes[1].plot(g["k"], g["input_saturated_frac_max"], "o-", label=gran)
        axes[2].plot(g["k"], g["gap_vs_uninjected_pct"], "o-", label=gran)
    for ax, title in zip(axes, (f"{sv.OUTLIER_LAYER} input: max underflowed fraction",
                                f"{sv.OUTLIER_LAYER} input: max saturated fraction", "loss gap vs no injection (%)")):
        ax.set_xscale("log")
        ax.set_xlabel("outlier scale k (k = 1: no injection)")
        ax.set_title(title, fontsize=9)
    axes[0].legend()
    fig.suptitle("Outlier injection: 4 channels of block 0's MLP input x k, weight columns / k")
    return fig


def fig_stress_ladder(d):
    """``pipelines.report.figures`` entry: the ladder from results/stress_ladder.csv, or why there is none."""
    t = d.stress.get("ladder", pd.DataFrame())
    return ladder_figure(t) if len(t) else f"no precision-ladder runs in these results ({HOW})"


def fig_stress_outliers(d):
    t = d.stress.get("outliers", pd.DataFrame())
    return outliers_figure(t) if len(t) else f"no outlier-injection runs in these results ({HOW})"


# -- subsections -------------------------------------------------------------------------------------------
def ladder(results_dir: Path, fig_dir: Path, report_dir: Path) -> str:
    title = "Precision ladder"
    results_dir, fig_dir = Path(results_dir), Path(fig_dir)
    t = _table(results_dir, "ladder")
    if t.empty:
        return _absent(title)
    from pipelines.analysis.comparison import load_analysis

    margin = load_analysis().margin_pct
    broken = lambda r: r.n_diverged > 0 or (r.gap_min_pct > margin)  # noqa: E731 - every seed beyond the margin
    lines = [f"### {title}", "",
             f"Every GEMM operand (x, W, dy) of fp8-own-tensorwise in one format, from bf16's E8M7 down; final "
             f"val-loss gap against {REFERENCE} paired by seed. A step *breaks* when a seed diverges or every "
             f"seed's gap exceeds the margin ({margin:g}%).", ""]
    for label, rows in (("mantissa only (E8, bf16's range)", t[t["exponent_bits_removed"] == 0]),
                        ("exponent and mantissa (the FP8 / 6-bit formats)", t[t["exponent_bits_removed"] > 0])):
        if rows.empty:
            continue
        rows = rows.sort_values(["exponent_bits_removed", "mantissa_bits_removed"])
        first = next((r.format for r in rows.itertuples() if broken(r)), None)
        lines.append(f"- {label}: " + (f"first to break: **{first}**" if first else
                                       f"none of {', '.join(rows['format'])} breaks"))
    cols = ["format", "exponent_bits_removed", "mantissa_bits_removed", "n_seeds", "n_diverged", "gap_mean_pct",
            "gap_min_pct", "gap_max_pct"]
    lines += ["", md_table(t[cols], source="results/stress_ladder.csv"), "",
              _figure_line(fig_dir, report_dir, "stress_ladder"), ""]
    return "\n".join(lines)


def outliers(results_dir: Path, fig_dir: Path, report_dir: Path) -> str:
    title = "Outlier injection"
    t = _table(Path(results_dir), "outliers")
    if t.empty:
        return _absent(title)
    cols = ["granularity", "k", "n_seeds", "n_diverged", "gap_vs_uninjected_pct", "gap_vs_bf16_amp_pct",
            "input_saturated_frac_max", "input_underflow_frac_max", "weight_underflow_frac_max"]
    return "\n".join([
        f"### {title}", "",
        f"{sv.OUTLIER_CHANNELS} input channels of block {sv.OUTLIER_BLOCK}'s MLP input (after its norm) are "
        f"multiplied by k and the matching columns of w1 and w3 divided by k: the exact function is unchanged, "
        f"so a loss change is the quantization's alone. Gap against the same recipe without injection, paired "
        f"by seed; fractions are the largest any telemetry window of {sv.OUTLIER_LAYER} saw. These recipes scale "
        f"currently (from the tensor's own amax), so nothing saturates by construction: outliers show as small "
        f"values flushed to zero (underflowed), since the outlier sets the scale for the whole group.", "",
        md_table(t[cols], source="results/stress_outliers.csv"), "", _figure_line(fig_dir, report_dir, "stress_outliers"), ""])


def norm_gains(results_dir: Path, fig_dir: Path, report_dir: Path) -> str:
    title = "Quantized norm gains"
    t = _table(Path(results_dir), "norm_gains")
    if t.empty:
        return _absent(title)
    cols = ["norm_gains", "n_seeds", "n_diverged", "gap_vs_bf16_amp_pct", "gap_vs_hp_gains_pct", "gain_clipped_frac_max"]
    return "\n".join([
        f"### {title}", "",
        "fp8-own-tensorwise with the blocks' RMSNorm gains used in E4M3 with an MX shared scale per 32 values: "
        "`fp8` takes the exponent from floor(log2 amax), which clips the largest gains (Su et al.'s mechanism); "
        "`fp8-bump` rounds it up (their fix); `hp` keeps them in high precision. Gaps paired by seed; `gain_clipped_frac_max`: the largest share of one "
        "norm's gains clipped in any telemetry window.", "",
        md_table(t[cols], source="results/stress_norm_gains.csv"), ""])


def second_moment(results_dir: Path, fig_dir: Path, report_dir: Path) -> str:
    title = "FP8 second moment"
    t = _table(Path(results_dir), "second_moment")
    if t.empty:
        return _absent(title)
    view = t[["eps", "beta2", "v", "n_seeds", "n_diverged", "gap_vs_bf16_amp_pct", "gap_vs_dre_same_hp_pct"]].copy()
    view["eps"] = view["eps"].map(lambda v: f"{v:g}")
    view["beta2"] = view["beta2"].map(lambda v: f"{v:g}")
    return "\n".join([
        f"### {title}", "",
        f"fp8-optim with v stored plainly in E4M3, with DRE (its default) or in E5M2, at eps x beta2. eps and beta2 "
        f"change the optimizer for {REFERENCE} too (which runs at the defaults, 1e-8 / 0.95), so the storage effect "
        f"is the gap against DRE at the same eps and beta2; the gap against {REFERENCE} mixes both.", "",
        md_table(view, source="results/stress_second_moment.csv"), ""])


STRESS_SUBSECTIONS = [ladder, outliers, norm_gains, second_moment]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines.analysis.stress_tables", description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default="results")
    ap.add_argument("--figures", default="reports/figures")
    ap.add_argument("--report-dir", default="reports")
    args = ap.parse_args(argv)
    for name, path in build_tables(args.results).items():
        print(f"{path}")
    for fn in STRESS_SUBSECTIONS:
        print(fn(Path(args.results), Path(args.figures), Path(args.report_dir)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
