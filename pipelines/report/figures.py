"""Figures from ``results/summary.csv``, the runs' ``metrics.jsonl`` and ``results/reference/`` (seaborn,
PNG + SVG under ``reports/figures/``).

    python -m pipelines.report.figures --summary results/summary.csv --out reports/figures [--only NAME ...]

Each figure is a function ``fig_<name>(data) -> Figure | str`` registered in ``FIGURES`` with its
caption (``pipelines/report/captions/<name>.rst``, which the HTML report shows too). A string instead of a
figure says why there is nothing to plot (no diverged run, no sweep, no GPU results); the figure file
then shows that sentence, and the report repeats it, rather than an empty axis.
"""

from __future__ import annotations

import argparse
import glob
import math
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from common.atomic import atomic_path  # noqa: E402
from pipelines.analysis.stats import base_verdict, t_interval  # noqa: E402
from pipelines.report.figures_stability import fig_long_horizon, fig_lr_frontier, fig_stress_ladder, fig_stress_outliers  # noqa: E402
from pipelines.run.events import read_events  # noqa: E402

REFERENCE = "bf16-amp"
COMPONENTS = ["weights", "master", "grads", "optim", "meta"]
CAPTIONS = Path(__file__).resolve().parent / "captions"
ARTICLE_BPP = {"fp32 (article: 16)": 16, "bf16 mixed (article: 12)": 12, "FP8 optimizer (article: 6)": 6}
TRAIN_LOSS_WINDOW = 10  # steps of the trailing moving average in the train_loss figure (its caption says so)


@dataclass
class FigureData:
    summary: pd.DataFrame
    curves: pd.DataFrame = field(default_factory=pd.DataFrame)  # method, seed, lr, step, loss, kind
    telemetry: pd.DataFrame = field(default_factory=pd.DataFrame)  # method, seed, step, layer, tensor, amax, ...
    probes: pd.DataFrame = field(default_factory=pd.DataFrame)  # method, seed, step, lr, lost_pred_frac, ...
    reference: pd.DataFrame = field(default_factory=pd.DataFrame)  # committed GPU summaries, with 'device_dir'
    comparison: pd.DataFrame = field(default_factory=pd.DataFrame)  # results/comparison.csv (verdicts, CIs)
    eval_gaps: pd.DataFrame = field(default_factory=pd.DataFrame)  # results/eval_gaps.csv (paired gap per step)
    noise_floor: pd.DataFrame = field(default_factory=pd.DataFrame)  # results/noise_floor.csv
    traced: pd.DataFrame = field(default_factory=pd.DataFrame)  # results/memory_traced.csv (full-size traces)
    predicted: pd.DataFrame = field(default_factory=pd.DataFrame)  # results/bench/gpu_predicted.csv (on paper)
    frontier_cells: pd.DataFrame = field(default_factory=pd.DataFrame)  # results/frontier_cells.csv (lr frontier)
    long_horizon_curve: pd.DataFrame = field(default_factory=pd.DataFrame)  # results/long_horizon_curve.csv
    long_probes: pd.DataFrame = field(default_factory=pd.DataFrame)  # the long_horizon runs' probed steps on disk
    stress: dict = field(default_factory=dict)  # name -> results/stress_<name>.csv (pipelines.analysis.stress_tables)

    @classmethod
    def load(cls, summary_csv: str | Path, reference_glob: str = "results/reference/*/summary.csv") -> FigureData:
        """The summary and, beside it, the tables the workflow derives from it (where they exist)."""
        summary = pd.read_csv(summary_csv)
        curves, telemetry, probes = load_events(summary)
        refs = [pd.read_csv(p).assign(device_dir=Path(p).parent.name) for p in sorted(glob.glob(reference_glob))]
        here = Path(summary_csv).parent

        def table(name):
            try:
                return pd.read_csv(here / name) if (here / name).is_file() else pd.DataFrame()
            except pd.errors.EmptyDataError:  # written with no columns: nothing of that kind ran
                return pd.DataFrame()

        return cls(
            summary,
            curves,
            telemetry,
            probes,
            pd.concat(refs, ignore_index=True) if refs else pd.DataFrame(),
            table("comparison.csv"),
            table("eval_gaps.csv"),
            table("noise_floor.csv"),
            table("memory_traced.csv"),
            table("bench/gpu_predicted.csv"),
            table("frontier_cells.csv"),
            table("long_horizon_curve.csv"),
            long_probes(here),
            {p.stem.removeprefix("stress_"): table(p.name) for p in sorted(here.glob("stress_*.csv"))},
        )


#: what a probed step measured of the low-precision weights' update (train_step events; methods.fp8.lost_updates)
PROBE_KEYS = ("lost_pred_frac", "unchanged_frac", "lost_bias")


def load_events(summary: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The runs' loss curves, per-layer telemetry rows and probed steps, from their metrics.jsonl."""
    curves, tele, probes = [], [], []
    for r in summary.itertuples():
        path = Path(str(r.run_dir)) / "metrics.jsonl"
        if not path.is_file():
            continue
        base = {
            "profile": r.profile,
            "model": r.model,
            "method": r.method,
            "seed": r.seed,
            "lr": getattr(r, "lr", np.nan),
            "status": r.status,
        }
        for ev in read_events(path):
            kind = ev["event"]
            if kind == "train_step":
                curves.append({**base, "step": ev["step"] + 1, "loss": ev["loss"], "kind": "train"})
                if ev.get("probed"):
                    probes.append(
                        {**base, "step": ev["step"], "step_lr": ev["lr"], **{k: ev.get(k) for k in PROBE_KEYS}}
                    )
            elif kind == "eval":
                curves.append({**base, "step": ev["step"], "loss": ev["val_loss"], "kind": "val"})
            elif kind == "telemetry":
                for row in ev.get("layers", []):
                    tele.append({**base, "step": ev["step"], **row})
    cols = ["profile", "model", "method", "seed", "lr", "status", "step", "loss", "kind"]
    probe_cols = ["profile", "model", "method", "seed", "lr", "status", "step", "step_lr", *PROBE_KEYS]
    return pd.DataFrame(curves, columns=cols), pd.DataFrame(tele), pd.DataFrame(probes, columns=probe_cols)


def long_probes(results: Path) -> pd.DataFrame:
    """The probed steps of the long_horizon runs on disk under ``results`` (empty where none ran)."""
    from pipelines.analysis.collect import runs_on_disk
    from pipelines.analysis.lost_updates import LONG_PROFILE, probe_frame

    runs = runs_on_disk(results, LONG_PROFILE)
    return probe_frame(runs) if len(runs) else pd.DataFrame()


def _ok(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"] == "ok"]


def _main_profile(df: pd.DataFrame) -> pd.DataFrame:
    """Curves and bars compare one profile and model (the most common one in the data)."""
    if df.empty:
        return df
    key = df.groupby(["profile", "model"]).size().idxmax()
    return df[(df["profile"] == key[0]) & (df["model"] == key[1])]


# --------------------------------------------------------------------------------------- figures


def _main_lr(d: FigureData, df: pd.DataFrame) -> pd.DataFrame:
    """Rows of ``df`` at the (profile, model, lr) with the most runs in the summary: the comparison the
    verdicts are about (a sweep's other lrs have their own figure)."""
    s = d.summary.dropna(subset=["lr"])
    if df.empty or s.empty:
        return df
    profile, model, lr = s.groupby(["profile", "model", "lr"]).size().idxmax()
    keep = (df["profile"] == profile) & (df["model"] == model)
    if "lr" in df:
        keep &= np.isclose(pd.to_numeric(df["lr"], errors="coerce"), lr)
    return df[keep]


VERDICT_COLORS = {"equivalent": "C2", "worse": "C3", "better": "C0", "inconclusive": "C7", "diverged": "black"}


def _floor_and_margin(d: FigureData, comp: pd.DataFrame) -> tuple[float, float]:
    floor = pd.to_numeric(comp.get("noise_floor_pct"), errors="coerce").max() if "noise_floor_pct" in comp else np.nan
    margin = pd.to_numeric(comp.get("margin_pct"), errors="coerce").max() if "margin_pct" in comp else np.nan
    return float(floor), float(margin)


def fig_forest(d: FigureData):
    comp = _main_lr(d, d.comparison)
    if comp.empty:
        return "no comparison table (results/comparison.csv)"
    rows = comp[(comp["method"] != REFERENCE) & (comp["n_seeds"].fillna(0) > 0) | (comp["verdict"] == "diverged")]
    if rows.empty:
        return f"no method shares a seed with {REFERENCE}"
    rows = rows.assign(_div=rows["verdict"] == "diverged").sort_values(["_div", "gap_mean_pct"], na_position="last")
    rows = rows.reset_index(drop=True)
    floor, margin = _floor_and_margin(d, comp)
    gaps = _main_lr(d, d.summary)
    finite = pd.concat([rows["gap_ci_hi_pct"], rows["gap_mean_pct"], gaps["loss_gap_pct"]]).dropna()
    x_div = max([margin * 1.2 if np.isfinite(margin) else 0.5, *finite.abs()]) * 1.1  # where diverged rows sit
    fig, ax = plt.subplots(figsize=(9, 0.34 * len(rows) + 2.0), layout="constrained")
    if np.isfinite(floor):
        ax.axvspan(-floor, floor, color="grey", alpha=0.3, label=f"noise floor ±{floor:.2f}% (fp32 vs {REFERENCE})")
    if np.isfinite(margin):
        for x in (-margin, margin):
            ax.axvline(x, color="black", ls="--", lw=0.9, label=f"margin ±{margin:g}%" if x > 0 else None)
    ax.axvline(0, color="black", lw=0.6)
    for i, r in rows.iterrows():
        vb = base_verdict(r["verdict"])
        color = VERDICT_COLORS.get(vb, "C7")
        seeds = gaps[(gaps["method"] == r["method"]) & (gaps["status"] == "ok")]["loss_gap_pct"].dropna()
        ax.scatter(seeds, [i] * len(seeds), s=10, color=color, alpha=0.5, zorder=3)
        if vb == "diverged":
            ax.scatter([x_div], [i], marker="X", s=70, color="black", zorder=4)
        elif r["n_seeds"] >= 2 and np.isfinite(r["gap_ci_lo_pct"]):
            ax.errorbar(
                r["gap_mean_pct"],
                i,
                xerr=[[r["gap_mean_pct"] - r["gap_ci_lo_pct"]], [r["gap_ci_hi_pct"] - r["gap_mean_pct"]]],
                fmt="o",
                color=color,
                ms=5,
                capsize=3,
                zorder=4,
            )
        else:
            ax.scatter([r["gap_mean_pct"]], [i], marker="D", s=25, color=color, zorder=4)
    ax.set_yticks(range(len(rows)), [f"{r.method}  [{r.verdict}]" for r in rows.itertuples()], fontsize=8)
    ax.invert_yaxis()
    ax.set(
        xlabel=f"final val loss gap vs {REFERENCE} at the same seed (%): mean, 95% CI; dots: seeds",
        title="Paired loss gap per method (X at the right: diverged; diamond: one seed, no interval)",
    )
    fig.legend(fontsize=7, loc="outside lower center", ncol=2)
    return fig


def fig_loss_curves(d: FigureData):
    val = _main_lr(d, d.curves[d.curves["kind"] == "val"].dropna(subset=["loss"]))
    if val.empty:
        return "no evaluation events in these results"
    n = val.groupby("method")["seed"].nunique()
    multi = val[val["method"].isin(n[n >= max(2, n.max())].index)]  # the methods run on every seed
    fig, ax = plt.subplots(figsize=(9, 5.5))
    sns.lineplot(data=multi, x="step", y="loss", hue="method", errorbar=None, ax=ax, marker="o", markersize=3, lw=1)
    ax.set(
        xlabel="optimizer step",
        ylabel="validation loss (nats/token)",
        yscale="log",
        title=f"Validation loss, mean over {int(n.max())} seeds (methods run on every seed)",
    )
    ax.legend(fontsize=7, ncol=2)
    return fig


def smoothed_train_loss(curves: pd.DataFrame, window: int = TRAIN_LOSS_WINDOW) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per run (method, seed) the training loss as a trailing moving average over ``window`` steps (fewer at
    the start), and per method the mean of those curves over its seeds at each step.

    Returns ``(per_seed, mean)``: per_seed has method, seed, step, loss (smoothed); mean has method, step,
    loss, n_seeds. Non-finite losses are left out before smoothing."""
    tr = curves[curves["kind"] == "train"]
    tr = tr[np.isfinite(pd.to_numeric(tr["loss"], errors="coerce"))].sort_values(["method", "seed", "step"])
    if tr.empty:
        return tr[["method", "seed", "step", "loss"]], pd.DataFrame(columns=["method", "step", "loss", "n_seeds"])
    per_seed = tr[["method", "seed", "step"]].copy()
    per_seed["loss"] = tr.groupby(["method", "seed"])["loss"].transform(
        lambda x: x.astype(float).rolling(window, min_periods=1).mean()
    )
    mean = per_seed.groupby(["method", "step"])["loss"].agg(loss="mean", n_seeds="size").reset_index()
    return per_seed, mean


def fig_train_loss(d: FigureData):
    """Training loss per method, one panel each: every seed faint, the mean over seeds bold, and bf16-amp's
    mean dashed grey in every panel; the verdicts' profile, model and lr; finished runs (status ok) only."""
    train = _main_lr(d, _ok(d.curves[d.curves["kind"] == "train"]))
    per_seed, mean = smoothed_train_loss(train)
    if mean.empty:
        return "no training steps of a finished run in these results"
    methods = sorted(mean["method"].unique(), key=lambda m: (m != REFERENCE, m))
    ref = mean[mean["method"] == REFERENCE]
    cols = min(4, len(methods))
    rowsn = math.ceil(len(methods) / cols)
    fig, axes = plt.subplots(
        rowsn, cols, figsize=(3.2 * cols + 1, 2.5 * rowsn + 0.8), sharex=True, sharey=True, squeeze=False
    )
    for ax, m in zip(axes.flat, methods):
        for _, one in per_seed[per_seed["method"] == m].groupby("seed"):
            ax.plot(one["step"], one["loss"], color="C0", lw=0.7, alpha=0.35)
        mm = mean[mean["method"] == m]
        if m != REFERENCE and not ref.empty:
            ax.plot(ref["step"], ref["loss"], color="grey", ls="--", lw=1.0)
        ax.plot(mm["step"], mm["loss"], color="C0", lw=1.8)
        n = int(mm["n_seeds"].max())
        ax.set_title(f"{m} ({n} seed{'s' if n > 1 else ''})", fontsize=9)
    for ax in list(axes.flat)[len(methods) :]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("training loss (nats/token)", fontsize=9)
    fig.supxlabel("optimizer step")
    fig.suptitle(
        f"Training loss per method, moving average over {TRAIN_LOSS_WINDOW} steps: mean over seeds (bold), "
        f"each seed (faint); dashed grey: {REFERENCE}'s mean",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def fig_loss_gap(d: FigureData):
    g = _main_lr(d, d.eval_gaps.dropna(subset=["gap_pct"])) if not d.eval_gaps.empty else d.eval_gaps
    if g.empty:
        return f"no evaluation shares a seed and step with {REFERENCE}"
    g = g[g["method"] != REFERENCE]
    n = g.groupby("method")["seed"].nunique()
    methods = [m for m in n.sort_values(ascending=False).index if n[m] >= max(2, n.max())]
    if not methods:
        return "no method has more than one paired seed"
    comp = _main_lr(d, d.comparison)
    floor, margin = _floor_and_margin(d, comp)
    null_methods = set(d.noise_floor["null_method"]) if "null_method" in d.noise_floor else {"fp32"}
    nulls = g[g["method"].isin(null_methods)].groupby("step")["gap_pct"].apply(lambda x: x.abs().max())
    cols = 3
    rowsn = math.ceil(len(methods) / cols)
    fig, axes = plt.subplots(rowsn, cols, figsize=(12, 2.6 * rowsn + 0.6), sharex=True, sharey=True, squeeze=False)
    for ax, m in zip(axes.flat, methods):
        gm = g[g["method"] == m]
        for _, one in gm.groupby("seed"):
            ax.plot(one["step"], one["gap_pct"], color="C0", lw=0.6, alpha=0.4)
        stats = [(step, t_interval(x["gap_pct"])) for step, x in gm.groupby("step")]
        steps = [s for s, _ in stats]
        ax.plot(steps, [c.mean for _, c in stats], color="C0", lw=1.6, marker="o", ms=3)
        ax.fill_between(steps, [c.lo for _, c in stats], [c.hi for _, c in stats], color="C0", alpha=0.2)
        if not nulls.empty:
            ax.fill_between(nulls.index, -nulls.values, nulls.values, color="grey", alpha=0.3)
        if np.isfinite(margin):
            ax.axhline(margin, color="black", ls="--", lw=0.8)
            ax.axhline(-margin, color="black", ls="--", lw=0.8)
        ax.axhline(0, color="black", lw=0.5)
        v = comp[comp["method"] == m]["verdict"]
        ax.set_title(f"{m} [{v.iloc[0] if len(v) else '?'}]", fontsize=9)
    for ax in list(axes.flat)[len(methods) :]:
        ax.axis("off")
    lim = np.nanpercentile(np.abs(g[g["method"].isin(methods)]["gap_pct"]), 98) * 1.3 + 0.2
    axes[0, 0].set_ylim(-lim, lim)
    fig.supxlabel("optimizer step")
    fig.supylabel(f"val loss gap vs {REFERENCE}, same seed (%)")
    fig.suptitle(
        f"Paired gap per eval step: mean and 95% CI over seeds (thin: seeds); grey: noise floor "
        f"(|fp32 gap|, max over seeds); dashed: margin ±{margin:g}%",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def _per_method_bpp(summary: pd.DataFrame) -> pd.DataFrame:
    s = _main_profile(summary.dropna(subset=["state_bytes_per_param"]))
    s = s.groupby("method", sort=False).first().reset_index()
    per = pd.DataFrame({c: s[f"{c}_bytes"].fillna(0) / s["n_params"] for c in COMPONENTS})
    per.index = s["method"]
    return per


def fig_memory(d: FigureData):
    per = _per_method_bpp(d.summary)
    if per.empty:
        return "no run reached the end of its first step (nothing measured)"
    per = per.loc[per.sum(axis=1).sort_values(ascending=False).index]
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(per) + 1.6))
    per.plot.barh(stacked=True, ax=ax, color=sns.color_palette("deep", len(COMPONENTS)), width=0.75)
    for v in ARTICLE_BPP.values():
        ax.axvline(v, color="black", ls=":", lw=0.8)
    ax.set(
        xlabel="bytes per parameter, measured from live tensors after step 1 (per rank for ZeRO)",
        ylabel="",
        title="Training state per parameter (dotted: the article's 16 / 12 / 6)",
    )
    ax.legend(loc="lower right", fontsize=8)
    ax.invert_yaxis()
    return fig


def fig_throughput(d: FigureData):
    s = _main_profile(_ok(d.summary).dropna(subset=["tokens_per_s"]))
    if s.empty:
        return "no finished run"
    order = s.groupby("method")["tokens_per_s"].median().sort_values(ascending=False).index
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(order) + 1.6))
    sns.barplot(data=s, y="method", x="tokens_per_s", order=order, errorbar=None, ax=ax, color="C0", alpha=0.6)
    sns.stripplot(data=s, y="method", x="tokens_per_s", order=order, ax=ax, color="black", size=3)
    sp = s.groupby("method")["speedup"].median()
    ax.set_yticks(range(len(order)), [f"{m} ({sp.get(m, float('nan')):.2f}x)" for m in order])
    device = ", ".join(sorted(s["device"].dropna().astype(str).unique()))
    ax.set(
        xlabel=f"tokens/s, median over timed steps ({device})",
        ylabel="",
        title=f"Throughput (label: speedup vs {REFERENCE})",
    )
    return fig


def fig_memory_scaling(d: FigureData):
    from methods.memory import analytic_table
    from methods.registry import method_names

    sizes = np.logspace(math.log10(125e6), math.log10(175e9), 24)
    measured = _per_method_bpp(d.summary)
    # lines for registered methods; a variant (other options or train settings) is shown by its measured point
    methods = [m for m in measured.index if m in method_names()] or None
    rows = []
    for n in sizes:
        for r in analytic_table(n, methods=methods, include_reference=False, include_seed=False):
            rows.append({"method": r["row"], "params": n, "GB": r["gb"]})
    if not rows:
        return "no method to model"
    lines = pd.DataFrame(rows)
    fig, ax = plt.subplots(figsize=(9, 6))
    sns.lineplot(data=lines, x="params", y="GB", hue="method", ax=ax, lw=1)
    for label, bpp in ARTICLE_BPP.items():
        ax.plot(sizes, bpp * sizes / 1e9, color="black", ls=":", lw=1)
        ax.annotate(label, (sizes[-1], bpp * sizes[-1] / 1e9), fontsize=7, ha="right", va="bottom")
    if not measured.empty:
        n_meas = _main_profile(d.summary.dropna(subset=["state_bytes_per_param"])).groupby("method")["n_params"].first()
        pts = pd.DataFrame(
            {
                "method": measured.index,
                "params": n_meas.reindex(measured.index).values,
                "GB": measured.sum(axis=1).values * n_meas.reindex(measured.index).values / 1e9,
            }
        )
        ax.scatter(pts["params"], pts["GB"], color="black", marker="x", zorder=5, label="measured (this run)")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="parameters",
        ylabel="persistent training state (GB = 1e9 B)",
        title=(
            "Memory vs model size: analytic model (lines), measured runs (x), "
            "the article's 16 / 12 / 6 B/param (dotted)"
        ),
    )
    ax.legend(fontsize=7, ncol=2)
    return fig


TRACED_PARTS = ["weights", "master", "grads", "optim", "meta", "activations", "temporaries", "other"]


def fig_memory_traced(d: FigureData):
    t = d.traced
    if t.empty or not (t["status"] == "ok").any():
        return "no traced step (results/memory_traced.csv is missing or empty)"
    ok = t[t["status"] == "ok"]
    model = ok.sort_values("n_params")["model"].iloc[-1]
    at = ok[ok["model"] == model]
    seq = int(at["seq_len"].max())
    at = at[at["seq_len"] == seq].set_index("method")
    parts = pd.DataFrame({c: at[f"peak_{c}_bytes"] / 2**30 for c in TRACED_PARTS})
    parts = parts.loc[parts.sum(axis=1).sort_values(ascending=False).index]
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(parts) + 1.8))
    parts.plot.barh(stacked=True, ax=ax, color=sns.color_palette("deep", len(TRACED_PARTS)), width=0.75)
    for m, (peak, phase) in at[["peak_bytes", "peak_phase"]].iterrows():
        if m in parts.index:
            ax.annotate(f" {phase}", (peak / 2**30, list(parts.index).index(m)), va="center", fontsize=7)
    for name, gib in (("H100 80 GB", 79.6), ("H200 141 GB", 139.0)):
        ax.axvline(gib, color="black", ls=":", lw=0.8)
        ax.annotate(name, (gib, -0.6), fontsize=7, ha="right")
    ax.set(
        xlabel=f"GiB at the step's traced peak, by what each live storage was (micro-batch 1 × seq {seq})",
        ylabel="",
        title=f"Peak memory of one training step at {model} ({at['n_params'].iloc[0] / 1e9:.2f}B params), "
        "traced (label: the phase of the peak)",
    )
    ax.legend(loc="lower right", fontsize=7)
    ax.invert_yaxis()
    return fig


def fig_activation_seq(d: FigureData):
    t = d.traced
    if t.empty:
        return "no traced step (results/memory_traced.csv is missing)"
    ok = t[(t["status"] == "ok") & (t["batch_size"] == 1)].assign(act_gib=lambda x: x["act_peak_bytes"] / 2**30)
    models = [m for m, g in ok.sort_values("n_params").groupby("model", sort=False) if g["seq_len"].nunique() >= 2]
    if not models:
        return "no model was traced at two or more sequence lengths"
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models) + 1.5, 5), sharey=False, squeeze=False)
    for ax, model in zip(axes[0], models):
        sns.lineplot(
            data=ok[ok["model"] == model],
            x="seq_len",
            y="act_gib",
            hue="method",
            style="method",
            markers=True,
            dashes=False,
            ax=ax,
            legend=ax is axes[0][-1],
        )
        ax.set(
            xscale="log", xlabel="sequence length (micro-batch 1)", ylabel="largest activation total (GiB)", title=model
        )
    axes[0][-1].legend(fontsize=6, ncol=1, loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.suptitle("Activation memory against sequence length, traced: what each recipe keeps for backward")
    return fig


def fig_divergence(d: FigureData):
    div = d.summary[d.summary["status"] == "diverged"]
    if div.empty:
        return "no run diverged in these results"
    tr = d.curves[d.curves["kind"] == "train"]
    fig, ax = plt.subplots(figsize=(9, 5))
    ref = tr[(tr["method"] == REFERENCE) & (tr["profile"].isin(div["profile"]))]
    if not ref.empty:
        sns.lineplot(
            data=ref, x="step", y="loss", color="grey", errorbar=None, ax=ax, label=f"{REFERENCE} (train)", lw=1
        )
    for r in div.itertuples():
        c = tr[(tr["method"] == r.method) & (tr["seed"] == r.seed) & (tr["profile"] == r.profile) & (tr["lr"] == r.lr)]
        line = ax.plot(c["step"], c["loss"].clip(upper=50), lw=1, label=f"{r.method} s{r.seed} lr{r.lr:g}")
        step = int(r.diverged_step) + 1 if not pd.isna(r.diverged_step) else (int(c["step"].max()) if len(c) else 0)
        last = c[c["step"] == step]["loss"]
        y = float(last.iloc[0]) if len(last) and np.isfinite(last.iloc[0]) else float(ax.get_ylim()[1])
        ax.scatter([step], [min(y, 50)], marker="X", s=80, color=line[0].get_color(), zorder=5)
    ax.set(
        xlabel="optimizer step",
        ylabel="training loss (clipped at 50)",
        title="Diverged runs (X: the step each diverged at)",
    )
    ax.legend(fontsize=7)
    return fig


def fig_lr_sweep(d: FigureData):
    s = d.summary[d.summary["profile"] == "sweep"]
    if s.empty:
        return "no sweep-profile results (snakemake --cores all --config profile=sweep)"
    s = s.assign(gap=pd.to_numeric(s["loss_gap_pct"], errors="coerce"))
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (m, gm) in enumerate(s[(s["method"] != REFERENCE) & (s["status"] == "ok")].groupby("method")):
        pts = [(lr, t_interval(x["gap"].dropna())) for lr, x in gm.groupby("lr")]
        lrs = [lr for lr, _ in pts]
        ax.errorbar(
            lrs,
            [c.mean for _, c in pts],
            yerr=[[c.mean - c.lo for _, c in pts], [c.hi - c.mean for _, c in pts]],
            marker="o",
            capsize=3,
            label=m,
            color=f"C{i % 10}",
        )
    div = s[s["status"] == "diverged"]
    if not div.empty:
        ax.scatter(div["lr"], np.zeros(len(div)), marker="X", color="red", s=60, label="diverged", zorder=5)
    ax.axhline(0, color="black", lw=0.8)
    ax.set(
        xscale="log",
        xlabel="peak learning rate",
        ylabel=f"final val loss gap vs {REFERENCE} (%)",
        title="Learning-rate robustness (paired gap: mean and 95% CI over seeds)",
    )
    ax.legend(fontsize=7)
    return fig


def fig_gpu_scaling(d: FigureData):
    """The cost model's predicted speedup per recipe as lines labelled "predicted", and measured speedups from
    committed GPU reference results as points where they exist (none until a GPU run is committed)."""
    p, r = d.predicted, d.reference
    if not r.empty:
        r = _ok(r).dropna(subset=["speedup"]) if "speedup" in r else r.iloc[0:0]
        r = r[r["method"] != REFERENCE]
    if p.empty and r.empty:
        return (
            "no prediction (results/bench/gpu_predicted.csv) and no GPU reference results committed "
            "(results/reference/<device>/summary.csv)"
        )
    fig, ax = plt.subplots(figsize=(8, 5))
    if not p.empty:
        seq = int(p["seq_len"].min())  # one sequence length: the lines differ little between them
        for i, (recipe, g) in enumerate(p[p["seq_len"] == seq].groupby("recipe", sort=False)):
            g = g.sort_values("n_params")
            ax.plot(g["n_params"], g["speedup"], ls="--", color=f"C{i}", label=f"predicted: {recipe} (seq {seq})")
    for j, ((method, dev), g) in enumerate(r.groupby(["method", "device_dir"], sort=False) if not r.empty else []):
        g = g.sort_values("n_params")
        ax.plot(g["n_params"], g["speedup"], "o-", color=f"C{j + 3}", label=f"measured: {method} ({dev})")
    ax.axhline(1, color="black", lw=0.8)
    ax.axhline(2, color="grey", lw=0.8, ls=":", label="FP8/bf16 peak ratio (2x)")
    ax.set(
        xscale="log",
        xlabel="parameters",
        ylabel="speedup vs bf16 (measured: tokens/s vs bf16-amp)",
        title="FP8 speedup vs model size on GPU (predicted on paper; measured where committed)",
    )
    if r.empty:
        ax.text(0.02, 0.97, "no measured GPU points committed yet", transform=ax.transAxes, va="top", fontsize=8)
    ax.legend(fontsize=8, loc="lower right")
    return fig


def fig_fp8_telemetry(d: FigureData):
    t = d.telemetry
    if t.empty:
        return "no FP8 telemetry in these results"
    t = t[t["tensor"] == "input"] if "tensor" in t else t
    if t.empty:  # only weight-update rows (recipes with low-precision weights but no FP8 linears)
        return "no FP8 linear in these results"
    methods = list(dict.fromkeys(t["method"]))[:3]
    fig, axes = plt.subplots(2, len(methods), figsize=(5 * len(methods), 8), squeeze=False)
    for j, m in enumerate(methods):
        tm = t[(t["method"] == m) & (t["seed"] == t[t["method"] == m]["seed"].min())]
        for i, (col, title, log) in enumerate(
            (("amax", "input amax", True), ("saturated_frac", "saturated fraction", False))
        ):
            if col not in tm:
                axes[i, j].axis("off")
                continue
            grid = tm.pivot_table(index="layer", columns="step", values=col, aggfunc="max")
            data = np.log10(grid.clip(lower=1e-12)) if log else grid
            sns.heatmap(
                data,
                ax=axes[i, j],
                cmap="viridis" if log else "magma",
                cbar_kws={"label": ("log10 " if log else "") + col},
            )
            axes[i, j].set(title=f"{m}: {title}", xlabel="step", ylabel="layer" if j == 0 else "")
            axes[i, j].tick_params(axis="y", labelsize=6)
    fig.suptitle("FP8 telemetry per layer (inputs of the FP8 linears)")
    fig.tight_layout()
    return fig


def fig_lost_updates(d: FigureData):
    """Per recipe with low-precision weights: the share of weight updates predicted to round away (|update| below
    half the format's spacing at the weight) and the share of weights measured unchanged, over training (mean over
    seeds, each seed faint), with the lr schedule beside them."""
    p = _main_lr(d, d.probes)
    if p.empty:
        return "no recipe with low-precision weights was probed in these results"
    return _lost_updates_figure(
        p, "Weight updates lost to rounding: predicted from the update vs measured after it (grey: lr)"
    )


def fig_lost_updates_long(d: FigureData):
    """:func:`fig_lost_updates` for the long_horizon runs on disk (2000 steps: the cosine lr decays far enough to
    show whether the stall grows as it falls), with the late window (last quarter) shaded."""
    from pipelines.analysis.lost_updates import LATE_SHARE

    p = d.long_probes
    if p.empty:
        return "no long-horizon run with low-precision weights on disk (profile long_horizon)"
    return _lost_updates_figure(
        p,
        "Long horizon: weight updates lost to rounding over training (grey: lr; shaded: "
        "the last quarter, where the lr is lowest)",
        late_share=LATE_SHARE,
    )


def _lost_updates_figure(p: pd.DataFrame, title: str, late_share: float | None = None):
    """One panel per recipe: predicted lost and measured unchanged per seed (faint) and their mean, the lr on a twin
    axis; ``late_share``: shade that last share of the steps."""
    methods = list(dict.fromkeys(p["method"]))[:6]
    fig, axes = plt.subplots(1, len(methods), figsize=(max(8.0, 4.2 * len(methods)), 3.6), squeeze=False, sharey=True)
    for ax, m in zip(axes[0], methods):
        pm = p[p["method"] == m]
        for col, style, label in (
            ("lost_pred_frac", "-", "predicted lost"),
            ("unchanged_frac", "--", "measured unchanged"),
        ):
            for _, one in pm.groupby("seed"):
                ax.plot(
                    one["step"], one[col], style, color="C0" if col == "lost_pred_frac" else "C3", alpha=0.25, lw=0.8
                )
            mean = pm.groupby("step")[col].mean()
            ax.plot(mean.index, mean.values, style, color="C0" if col == "lost_pred_frac" else "C3", lw=2, label=label)
        ax.set(title=m, xlabel="step", ylim=(0, 1.02))
        if late_share:
            end = float(pm["step"].max())
            ax.axvspan(end * (1 - late_share), end, color="C1", alpha=0.1, lw=0)
        lr = ax.twinx()
        sched = pm.groupby("step")["step_lr"].mean()
        lr.plot(sched.index, sched.values, color="grey", lw=1, alpha=0.7)
        lr.set_ylabel("lr", color="grey")
        lr.tick_params(axis="y", colors="grey", labelsize=7)
    axes[0, 0].set_ylabel("share of low-precision weights")
    axes[0, 0].legend(fontsize=8, loc="lower left")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _caption(name: str) -> str:
    path = CAPTIONS / f"{name}.rst"
    return path.read_text(encoding="utf-8").strip() if path.is_file() else name


FIGURES = {
    name: (fn, _caption(name))
    for name, fn in (
        ("forest", fig_forest),
        ("loss_curves", fig_loss_curves),
        ("train_loss", fig_train_loss),
        ("loss_gap", fig_loss_gap),
        ("memory", fig_memory),
        ("throughput", fig_throughput),
        ("memory_scaling", fig_memory_scaling),
        ("memory_traced", fig_memory_traced),
        ("activation_seq", fig_activation_seq),
        ("divergence", fig_divergence),
        ("lr_sweep", fig_lr_sweep),
        ("gpu_scaling", fig_gpu_scaling),
        ("fp8_telemetry", fig_fp8_telemetry),
        ("lost_updates", fig_lost_updates),
        ("lost_updates_long", fig_lost_updates_long),
        ("lr_frontier", fig_lr_frontier),
        ("long_horizon", fig_long_horizon),
        ("stress_ladder", fig_stress_ladder),
        ("stress_outliers", fig_stress_outliers),
    )
}


def _save(fig, out_dir: Path, name: str) -> list[Path]:
    paths = []
    for ext in ("png", "svg"):
        path = out_dir / f"{name}.{ext}"
        with atomic_path(path, suffix=f".{ext}") as tmp:
            fig.savefig(tmp, format=ext, dpi=110, bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    return paths


def empty_note(out_dir: Path, name: str) -> Path:
    return out_dir / f"{name}.empty.txt"


def build(data: FigureData, out_dir: str | Path, only: list[str] | None = None) -> dict[str, str | None]:
    """Draw the figures; returns name → None (drawn) or the sentence saying why there was nothing to draw."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sns.set_theme(style="whitegrid", context="notebook")
    notes = {}
    for name, (fn, _caption) in FIGURES.items():
        if only and name not in only:
            continue
        fig = fn(data)
        note = empty_note(out_dir, name)
        if isinstance(fig, str):
            text = fig
            fig, ax = plt.subplots(figsize=(7, 1.2))
            ax.axis("off")
            ax.text(0.5, 0.5, f"{name}: {text}", ha="center", va="center", wrap=True)
            notes[name] = text
            with atomic_path(note) as tmp:
                tmp.write_text(text + "\n")
        else:
            notes[name] = None
            note.unlink(missing_ok=True)
        _save(fig, out_dir, name)
    return notes


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines.report.figures", description=__doc__.split("\n\n")[0])
    ap.add_argument("--summary", default="results/summary.csv")
    ap.add_argument("--out", default="reports/figures")
    ap.add_argument("--reference", default="results/reference/*/summary.csv", help="glob of GPU reference summaries")
    ap.add_argument("--only", nargs="*", help=f"subset of: {', '.join(FIGURES)}")
    args = ap.parse_args(argv)
    unknown = set(args.only or []) - set(FIGURES)
    if unknown:
        ap.error(f"unknown figure(s) {sorted(unknown)}; valid: {', '.join(FIGURES)}")
    notes = build(FigureData.load(args.summary, args.reference), args.out, args.only)
    for name, note in notes.items():
        print(f"{name}: {'drawn' if note is None else 'nothing to plot: ' + note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
