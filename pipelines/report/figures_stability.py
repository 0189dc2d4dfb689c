"""Stability figures (registered in ``pipelines.report.figures.FIGURES``): the learning-rate frontier heatmap.

Each takes the ``FigureData`` of ``pipelines.report.figures`` and returns a figure, or the sentence saying why there
is nothing to draw (another profile's results hold no frontier), so that no profile breaks on them.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from pipelines.analysis.frontier import COMMAND, REFERENCE


def fig_lr_frontier(d):
    """Recipe x lr: colour the mean paired gap against bf16-amp (%); cells where a seed diverged hatched and
    marked with how many (``div k/n``; failed runs likewise), each recipe's divergence lr (the smallest lr at
    which any seed diverged) framed in black, its max within-margin lr outlined in green."""
    cells = d.frontier_cells
    if cells is None or cells.empty:
        return f"no learning-rate frontier in these results ({COMMAND})"
    key = cells.groupby(["profile", "model"]).size().idxmax()  # one profile and model: the largest grid
    c = cells[(cells["profile"] == key[0]) & (cells["model"] == key[1])]
    methods = list(dict.fromkeys([REFERENCE] * (REFERENCE in set(c["method"])) + sorted(set(c["method"]))))
    lrs = sorted(c["lr"].astype(float).unique())
    grid = np.full((len(methods), len(lrs)), np.nan)
    for r in c.itertuples():
        grid[methods.index(r.method), lrs.index(float(r.lr))] = r.gap_mean_pct
    finite = np.abs(grid[np.isfinite(grid)])
    lim = max(float(np.percentile(finite, 95)) if finite.size else 1.0, 0.5)  # one outlier must not wash out the rest
    fig, ax = plt.subplots(figsize=(1.5 * len(lrs) + 3, 0.45 * len(methods) + 1.8), layout="constrained")
    im = ax.imshow(grid, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    fig.colorbar(im, ax=ax, label=f"paired gap vs {REFERENCE} (%)", extend="both")
    for r in c.itertuples():
        i, j = methods.index(r.method), lrs.index(float(r.lr))
        broken = r.n_diverged + r.n_failed
        if broken:
            ax.add_patch(
                Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor="lightgrey", hatch="///", edgecolor="grey", lw=0)
            )
            text = "\n".join(f"{word} {n}/{r.n_runs}" for word, n in (("div", r.n_diverged), ("fail", r.n_failed)) if n)
        elif r.method == REFERENCE:
            text = "ref"
        else:
            text = "–" if np.isnan(r.gap_mean_pct) else f"{r.gap_mean_pct:+.1f}"
        dark = np.isfinite(r.gap_mean_pct) and abs(r.gap_mean_pct) > 0.6 * lim and not broken
        ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if dark else "black")
        if r.max_within_margin:  # inset, so that the axes do not clip it; green reads on red, blue and white alike
            ax.add_patch(Rectangle((j - 0.45, i - 0.42), 0.9, 0.84, fill=False, edgecolor="#00b000", lw=2.5))
        if r.first_divergence:
            ax.add_patch(Rectangle((j - 0.47, i - 0.45), 0.94, 0.9, fill=False, edgecolor="black", lw=2.5))
    ax.set_xticks(range(len(lrs)), [f"{x:g}" for x in lrs])
    ax.set_yticks(range(len(methods)), methods, fontsize=8)
    ax.set(
        xlabel="peak learning rate",
        title=f"Where each recipe breaks ({key[0]}/{key[1]})\n"
        "paired gap; hatched: diverged (div k/n) or failed; black frame: divergence lr; "
        "green: max within-margin lr",
    )
    ax.grid(False)
    return fig


def fig_long_horizon(d):
    """The paired gap against bf16-amp over training steps in the long_horizon profile, one line per recipe
    (mean over seeds) with its Student-t interval as a band, the default profile's horizon marked: does an
    early gap grow, hold or close? fp32 (the null) is drawn in grey: its band is this horizon's noise."""
    from pipelines.analysis.long_horizon import COMMAND as LONG_COMMAND
    from pipelines.analysis.long_horizon import default_steps

    c = d.long_horizon_curve
    if c is None or c.empty or c["gap_mean_pct"].notna().sum() == 0:
        return f"no long-horizon runs in these results ({LONG_COMMAND})"
    fig, ax = plt.subplots(figsize=(7.5, 4.2), layout="constrained")
    for (_model, method), g in c.groupby(["model", "method"], sort=True):
        g = g.sort_values("step")
        n = int(g["n_seeds"].max())
        null = method == "fp32"
        (line,) = ax.plot(
            g["step"],
            g["gap_mean_pct"],
            marker="o",
            ms=3,
            color="grey" if null else None,
            ls="--" if null else "-",
            label=f"{method} (n={n}{', the null' if null else ''})",
        )
        band = g.dropna(subset=["gap_ci_lo_pct", "gap_ci_hi_pct"])
        ax.fill_between(
            band["step"], band["gap_ci_lo_pct"], band["gap_ci_hi_pct"], color=line.get_color(), alpha=0.15, lw=0
        )
        short = g[g["n_seeds"] < n]  # a run of this recipe ended early (diverged or failed) before these steps
        if len(short):
            ax.scatter(
                short["step"].iloc[:1], short["gap_mean_pct"].iloc[:1], marker="x", s=60, color="black", zorder=3
            )
    ax.axhline(0, color="grey", lw=0.8)
    ax.axvline(default_steps(), color="grey", ls=":", lw=1, label="default horizon")
    ax.set(
        xlabel="step",
        ylabel=f"paired val-loss gap vs {REFERENCE} (%)",
        title=(
            "Long horizon: 10x the default tokens\n"
            "mean over seeds, band: Student-t interval over seeds; x: fewer seeds from here"
        ),
    )
    ax.legend(fontsize=7)
    return fig


# The stress figures are drawn by pipelines.report.stress_section, imported only when one of them is drawn: it reads
# the stress variants, which import the recipes (and torch), several seconds every figure job would pay.
def fig_stress_ladder(d):
    from pipelines.report.stress_section import fig_stress_ladder as draw

    return draw(d)


def fig_stress_outliers(d):
    from pipelines.report.stress_section import fig_stress_outliers as draw

    return draw(d)
