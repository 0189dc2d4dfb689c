"""REPORT.md's stress subsections of "Where FP8 breaks" and their figures: the precision ladder, outlier
injection, quantized norm gains and the FP8 second moment, printed from the stress tables
(``pipelines.analysis.stress_tables`` writes them). Each subsection is a callable
``(results_dir, fig_dir, report_dir) -> str`` (``STRESS_SUBSECTIONS``)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipelines.analysis.markdown import md_table
from pipelines.analysis.stress_tables import HOW, REFERENCE, csv_path
from pipelines.run import stress_variants as sv


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
    for ax, col, label in (
        (axes[0], "exponent_bits_removed", "exponent bits removed"),
        (axes[1], "mantissa_bits_removed", "mantissa bits removed"),
    ):
        lo = (t["gap_mean_pct"] - t["gap_min_pct"]).clip(lower=0)
        hi = (t["gap_max_pct"] - t["gap_mean_pct"]).clip(lower=0)
        ax.errorbar(t[col], t["gap_mean_pct"], yerr=[lo, hi], fmt="o", capsize=3)
        for r in t.itertuples():
            ax.annotate(
                r.format + (" (div)" if r.n_diverged else ""),
                (getattr(r, col), r.gap_mean_pct),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=8,
            )
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
    for ax, title in zip(
        axes,
        (
            f"{sv.OUTLIER_LAYER} input: max underflowed fraction",
            f"{sv.OUTLIER_LAYER} input: max saturated fraction",
            "loss gap vs no injection (%)",
        ),
    ):
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
    lines = [
        f"### {title}",
        "",
        f"Every GEMM operand (x, W, dy) of fp8-own-tensorwise in one format, from bf16's E8M7 down; final "
        f"val-loss gap against {REFERENCE} paired by seed. A step *breaks* when a seed diverges or every "
        f"seed's gap exceeds the margin ({margin:g}%).",
        "",
    ]
    for label, rows in (
        ("mantissa only (E8, bf16's range)", t[t["exponent_bits_removed"] == 0]),
        ("exponent and mantissa (the FP8 / 6-bit formats)", t[t["exponent_bits_removed"] > 0]),
    ):
        if rows.empty:
            continue
        rows = rows.sort_values(["exponent_bits_removed", "mantissa_bits_removed"])
        first = next((r.format for r in rows.itertuples() if broken(r)), None)
        lines.append(
            f"- {label}: "
            + (f"first to break: **{first}**" if first else f"none of {', '.join(rows['format'])} breaks")
        )
    cols = [
        "format",
        "exponent_bits_removed",
        "mantissa_bits_removed",
        "n_seeds",
        "n_diverged",
        "gap_mean_pct",
        "gap_min_pct",
        "gap_max_pct",
    ]
    lines += [
        "",
        md_table(t[cols], source="results/stress_ladder.csv"),
        "",
        _figure_line(fig_dir, report_dir, "stress_ladder"),
        "",
    ]
    return "\n".join(lines)


def outliers(results_dir: Path, fig_dir: Path, report_dir: Path) -> str:
    title = "Outlier injection"
    t = _table(Path(results_dir), "outliers")
    if t.empty:
        return _absent(title)
    cols = [
        "granularity",
        "k",
        "n_seeds",
        "n_diverged",
        "gap_vs_uninjected_pct",
        "gap_vs_bf16_amp_pct",
        "input_saturated_frac_max",
        "input_underflow_frac_max",
        "weight_underflow_frac_max",
    ]
    return "\n".join(
        [
            f"### {title}",
            "",
            f"{sv.OUTLIER_CHANNELS} input channels of block {sv.OUTLIER_BLOCK}'s MLP input (after its norm) are "
            f"multiplied by k and the matching columns of w1 and w3 divided by k: the exact function is unchanged, "
            f"so a loss change is the quantization's alone. Gap against the same recipe without injection, paired "
            f"by seed; fractions are the largest any telemetry window of {sv.OUTLIER_LAYER} saw. These recipes scale "
            f"currently (from the tensor's own amax), so nothing saturates by construction: outliers show as small "
            f"values flushed to zero (underflowed), since the outlier sets the scale for the whole group.",
            "",
            md_table(t[cols], source="results/stress_outliers.csv"),
            "",
            _figure_line(fig_dir, report_dir, "stress_outliers"),
            "",
        ]
    )


def norm_gains(results_dir: Path, fig_dir: Path, report_dir: Path) -> str:
    title = "Quantized norm gains"
    t = _table(Path(results_dir), "norm_gains")
    if t.empty:
        return _absent(title)
    cols = [
        "norm_gains",
        "n_seeds",
        "n_diverged",
        "gap_vs_bf16_amp_pct",
        "gap_vs_hp_gains_pct",
        "gain_clipped_frac_max",
    ]
    return "\n".join(
        [
            f"### {title}",
            "",
            "fp8-own-tensorwise with the blocks' RMSNorm gains used in E4M3 with an MX shared scale per 32 values: "
            "`fp8` takes the exponent from floor(log2 amax), which clips the largest gains (Su et al.'s mechanism); "
            "`fp8-bump` rounds it up (their fix); `hp` keeps them in high precision. Gaps paired by seed; "
            "`gain_clipped_frac_max`: the largest share of one "
            "norm's gains clipped in any telemetry window.",
            "",
            md_table(t[cols], source="results/stress_norm_gains.csv"),
            "",
        ]
    )


def second_moment(results_dir: Path, fig_dir: Path, report_dir: Path) -> str:
    title = "FP8 second moment"
    t = _table(Path(results_dir), "second_moment")
    if t.empty:
        return _absent(title)
    view = t[["eps", "beta2", "v", "n_seeds", "n_diverged", "gap_vs_bf16_amp_pct", "gap_vs_dre_same_hp_pct"]].copy()
    view["eps"] = view["eps"].map(lambda v: f"{v:g}")
    view["beta2"] = view["beta2"].map(lambda v: f"{v:g}")
    return "\n".join(
        [
            f"### {title}",
            "",
            "fp8-optim with v stored plainly in E4M3, with DRE (its default) or in E5M2, at eps x beta2. "
            f"eps and beta2 change the optimizer for {REFERENCE} too (which runs at the defaults, 1e-8 / 0.95), "
            "so the storage effect "
            f"is the gap against DRE at the same eps and beta2; the gap against {REFERENCE} mixes both.",
            "",
            md_table(view, source="results/stress_second_moment.csv"),
            "",
        ]
    )


STRESS_SUBSECTIONS = [ladder, outliers, norm_gains, second_moment]
