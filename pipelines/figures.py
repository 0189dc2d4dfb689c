"""Figures from ``results/summary.csv``, the runs' ``metrics.jsonl`` and ``results/reference/`` (seaborn,
PNG + SVG under ``reports/figures/``).

    python -m pipelines.figures --summary results/summary.csv --out reports/figures [--only NAME ...]

Each figure is a function ``fig_<name>(data) -> Figure | str`` registered in ``FIGURES`` with its
caption (``pipelines/captions/<name>.rst``, which the HTML report shows too). A string instead of a
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

from pipelines.atomic import atomic_path  # noqa: E402
from pipelines.metrics import read_events  # noqa: E402

REFERENCE = "bf16-amp"
COMPONENTS = ["weights", "master", "grads", "optim", "meta"]
CAPTIONS = Path(__file__).resolve().parent / "captions"
SEED_BPP = {"fp32 (seed: 16)": 16, "bf16 mixed (seed: 12)": 12, "FP8 optimizer (seed: 6)": 6}


@dataclass
class FigureData:
    summary: pd.DataFrame
    curves: pd.DataFrame = field(default_factory=pd.DataFrame)      # method, seed, lr, step, loss, kind
    telemetry: pd.DataFrame = field(default_factory=pd.DataFrame)   # method, seed, step, layer, tensor, amax, ...
    reference: pd.DataFrame = field(default_factory=pd.DataFrame)   # committed GPU summaries, with 'device_dir'

    @classmethod
    def load(cls, summary_csv: str | Path, reference_glob: str = "results/reference/*/summary.csv") -> "FigureData":
        summary = pd.read_csv(summary_csv)
        curves, telemetry = load_events(summary)
        refs = [pd.read_csv(p).assign(device_dir=Path(p).parent.name) for p in sorted(glob.glob(reference_glob))]
        return cls(summary, curves, telemetry, pd.concat(refs, ignore_index=True) if refs else pd.DataFrame())


def load_events(summary: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    curves, tele = [], []
    for r in summary.itertuples():
        path = Path(str(r.run_dir)) / "metrics.jsonl"
        if not path.is_file():
            continue
        base = {"profile": r.profile, "model": r.model, "method": r.method, "seed": r.seed,
                "lr": getattr(r, "lr", np.nan), "status": r.status}
        for ev in read_events(path):
            kind = ev["event"]
            if kind == "train_step":
                curves.append({**base, "step": ev["step"] + 1, "loss": ev["loss"], "kind": "train"})
            elif kind == "eval":
                curves.append({**base, "step": ev["step"], "loss": ev["val_loss"], "kind": "val"})
            elif kind == "telemetry":
                for row in ev.get("layers", []):
                    tele.append({**base, "step": ev["step"], **row})
    cols = ["profile", "model", "method", "seed", "lr", "status", "step", "loss", "kind"]
    return pd.DataFrame(curves, columns=cols), pd.DataFrame(tele)


def _ok(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"] == "ok"]


def _main_profile(df: pd.DataFrame) -> pd.DataFrame:
    """Curves and bars compare one profile and model (the most common one in the data)."""
    if df.empty:
        return df
    key = df.groupby(["profile", "model"]).size().idxmax()
    return df[(df["profile"] == key[0]) & (df["model"] == key[1])]


# --------------------------------------------------------------------------------------- figures

def fig_loss_curves(d: FigureData):
    val = _main_profile(d.curves[d.curves["kind"] == "val"].dropna(subset=["loss"]))
    val = val[val["lr"] == val["lr"].mode().iloc[0]] if not val.empty else val
    if val.empty:
        return "no evaluation events in these results"
    fig, ax = plt.subplots(figsize=(9, 5.5))
    ref = val[val["method"] == REFERENCE].groupby("step")["loss"]
    if ref.ngroups:
        lo, hi = ref.min(), ref.max()
        n = val[val["method"] == REFERENCE]["seed"].nunique()
        ax.fill_between(lo.index, lo.values, hi.values, color="grey", alpha=0.35, label=f"{REFERENCE} seed range (n={n})")
    sns.lineplot(data=val, x="step", y="loss", hue="method", errorbar=None, ax=ax, marker="o", markersize=3, lw=1)
    ax.set(xlabel="optimizer step", ylabel="validation loss (nats/token)", title="Validation loss")
    ax.legend(fontsize=7, ncol=2)
    return fig


def fig_loss_gap(d: FigureData):
    val = _main_profile(d.curves[d.curves["kind"] == "val"].dropna(subset=["loss"]))
    if val.empty or REFERENCE not in set(val["method"]):
        return f"no {REFERENCE} evaluation to compare against"
    keys = ["profile", "model", "lr", "seed", "step"]
    ref = val[val["method"] == REFERENCE][keys + ["loss"]].rename(columns={"loss": "ref"})
    gap = val[val["method"] != REFERENCE].merge(ref, on=keys)
    gap["gap_pct"] = 100 * (gap["loss"] - gap["ref"]) / gap["ref"]
    gap = gap[gap["step"] > 0]
    if gap.empty:
        return "no method shares a seed and lr with the reference"
    fig, ax = plt.subplots(figsize=(9, 5.5))
    rv = val[val["method"] == REFERENCE].groupby("step")["loss"]
    band = 100 * (rv.max() - rv.mean()) / rv.mean()
    if rv.ngroups and val[val["method"] == REFERENCE]["seed"].nunique() > 1:
        ax.fill_between(band.index, -band.values, band.values, color="grey", alpha=0.35,
                        label=f"{REFERENCE} seed half-range")
    sns.lineplot(data=gap, x="step", y="gap_pct", hue="method", errorbar=None, ax=ax, lw=1, marker="o", markersize=3)
    ax.axhline(0, color="black", lw=0.8)
    ax.set(xlabel="optimizer step", ylabel=f"val loss gap vs {REFERENCE} at the same seed (%)",
           title="Relative loss gap (paired by seed)")
    lim = np.nanpercentile(np.abs(gap["gap_pct"]), 95) * 1.5 + 0.5
    ax.set_ylim(-lim, lim)
    ax.legend(fontsize=7, ncol=2)
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
    for v in SEED_BPP.values():
        ax.axvline(v, color="black", ls=":", lw=0.8)
    ax.set(xlabel="bytes per parameter, measured from live tensors after step 1 (per rank for ZeRO)", ylabel="",
           title="Training state per parameter (dotted: the seed's 16 / 12 / 6)")
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
    ax.set(xlabel=f"tokens/s, median over timed steps ({device})", ylabel="",
           title=f"Throughput (label: speedup vs {REFERENCE})")
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
    for label, bpp in SEED_BPP.items():
        ax.plot(sizes, bpp * sizes / 1e9, color="black", ls=":", lw=1)
        ax.annotate(label, (sizes[-1], bpp * sizes[-1] / 1e9), fontsize=7, ha="right", va="bottom")
    if not measured.empty:
        n_meas = _main_profile(d.summary.dropna(subset=["state_bytes_per_param"])).groupby("method")["n_params"].first()
        pts = pd.DataFrame({"method": measured.index, "params": n_meas.reindex(measured.index).values,
                            "GB": measured.sum(axis=1).values * n_meas.reindex(measured.index).values / 1e9})
        ax.scatter(pts["params"], pts["GB"], color="black", marker="x", zorder=5, label="measured (this run)")
    ax.set(xscale="log", yscale="log", xlabel="parameters", ylabel="persistent training state (GB = 1e9 B)",
           title="Memory vs model size: analytic model (lines), measured runs (x), seed's 16 / 12 / 6 B/param (dotted)")
    ax.legend(fontsize=7, ncol=2)
    return fig


def fig_divergence(d: FigureData):
    div = d.summary[d.summary["status"] == "diverged"]
    if div.empty:
        return "no run diverged in these results"
    tr = d.curves[d.curves["kind"] == "train"]
    fig, ax = plt.subplots(figsize=(9, 5))
    ref = tr[(tr["method"] == REFERENCE) & (tr["profile"].isin(div["profile"]))]
    if not ref.empty:
        sns.lineplot(data=ref, x="step", y="loss", color="grey", errorbar=None, ax=ax, label=f"{REFERENCE} (train)", lw=1)
    for r in div.itertuples():
        c = tr[(tr["method"] == r.method) & (tr["seed"] == r.seed) & (tr["profile"] == r.profile)
               & (tr["lr"] == r.lr)]
        line = ax.plot(c["step"], c["loss"].clip(upper=50), lw=1, label=f"{r.method} s{r.seed} lr{r.lr:g}")
        step = int(r.diverged_step) + 1 if not pd.isna(r.diverged_step) else (int(c["step"].max()) if len(c) else 0)
        last = c[c["step"] == step]["loss"]
        y = float(last.iloc[0]) if len(last) and np.isfinite(last.iloc[0]) else float(ax.get_ylim()[1])
        ax.scatter([step], [min(y, 50)], marker="X", s=80, color=line[0].get_color(), zorder=5)
    ax.set(xlabel="optimizer step", ylabel="training loss (clipped at 50)", title="Diverged runs (X: where the run was stopped)")
    ax.legend(fontsize=7)
    return fig


def fig_lr_sweep(d: FigureData):
    s = d.summary[d.summary["profile"] == "sweep"]
    if s.empty:
        return "no sweep-profile results (snakemake --cores all --config profile=sweep)"
    s = s.assign(gap=pd.to_numeric(s["loss_gap_pct"], errors="coerce"))
    fig, ax = plt.subplots(figsize=(8, 5))
    sns.lineplot(data=s[s["method"] != REFERENCE], x="lr", y="gap", hue="method", marker="o", errorbar="sd", ax=ax)
    div = s[s["status"] == "diverged"]
    if not div.empty:
        ax.scatter(div["lr"], np.zeros(len(div)), marker="X", color="red", s=60, label="diverged", zorder=5)
    ax.axhline(0, color="black", lw=0.8)
    ax.set(xscale="log", xlabel="peak learning rate", ylabel=f"final val loss gap vs {REFERENCE} (%)",
           title="Learning-rate robustness (mean ± sd over seeds)")
    ax.legend(fontsize=7)
    return fig


def fig_gpu_scaling(d: FigureData):
    r = d.reference
    if r.empty:
        return "no GPU reference results committed (results/reference/<device>/summary.csv)"
    r = _ok(r).dropna(subset=["speedup"])
    if r.empty or r["model"].nunique() < 2:
        return "GPU reference results cover fewer than two model sizes"
    fig, ax = plt.subplots(figsize=(8, 5))
    sns.lineplot(data=r[r["method"] != REFERENCE], x="n_params", y="speedup", hue="method", style="device_dir",
                 marker="o", ax=ax)
    ax.axhline(1, color="black", lw=0.8)
    ax.set(xscale="log", xlabel="parameters", ylabel=f"tokens/s speedup vs {REFERENCE}",
           title="FP8 speedup vs model size on GPU (below 1: FP8 does not pay)")
    return fig


def fig_fp8_telemetry(d: FigureData):
    t = d.telemetry
    if t.empty:
        return "no FP8 telemetry in these results"
    t = t[t["tensor"] == "input"] if "tensor" in t else t
    methods = list(dict.fromkeys(t["method"]))[:3]
    fig, axes = plt.subplots(2, len(methods), figsize=(5 * len(methods), 8), squeeze=False)
    for j, m in enumerate(methods):
        tm = t[(t["method"] == m) & (t["seed"] == t[t["method"] == m]["seed"].min())]
        for i, (col, title, log) in enumerate((("amax", "input amax", True), ("saturated_frac", "saturated fraction", False))):
            if col not in tm:
                axes[i, j].axis("off")
                continue
            grid = tm.pivot_table(index="layer", columns="step", values=col, aggfunc="max")
            data = np.log10(grid.clip(lower=1e-12)) if log else grid
            sns.heatmap(data, ax=axes[i, j], cmap="viridis" if log else "magma", cbar_kws={"label": ("log10 " if log else "") + col})
            axes[i, j].set(title=f"{m}: {title}", xlabel="step", ylabel="layer" if j == 0 else "")
            axes[i, j].tick_params(axis="y", labelsize=6)
    fig.suptitle("FP8 telemetry per layer (inputs of the FP8 linears)")
    fig.tight_layout()
    return fig


def _caption(name: str) -> str:
    path = CAPTIONS / f"{name}.rst"
    return path.read_text(encoding="utf-8").strip() if path.is_file() else name


FIGURES = {name: (fn, _caption(name)) for name, fn in (
    ("loss_curves", fig_loss_curves), ("loss_gap", fig_loss_gap), ("memory", fig_memory),
    ("throughput", fig_throughput), ("memory_scaling", fig_memory_scaling), ("divergence", fig_divergence),
    ("lr_sweep", fig_lr_sweep), ("gpu_scaling", fig_gpu_scaling), ("fp8_telemetry", fig_fp8_telemetry))}


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
    ap = argparse.ArgumentParser(prog="python -m pipelines.figures", description=__doc__.split("\n\n")[0])
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
