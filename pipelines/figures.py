"""Figures from ``results/summary.csv`` and the runs' ``metrics.jsonl`` (seaborn, PNG + SVG).

    python -m pipelines.figures --summary results/summary.csv --out reports/figures

Each figure is one function ``fig_<name>(data) -> matplotlib Figure | None`` registered in ``FIGURES``
with a caption; ``None`` means the data holds nothing to plot (e.g. no diverged runs), and the report
says so instead of showing an empty axis.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from pipelines.atomic import atomic_path  # noqa: E402
from pipelines.metrics import read_events  # noqa: E402

REFERENCE = "bf16-amp"
COMPONENTS = ["weights", "master", "grads", "optim", "meta"]


@dataclass
class FigureData:
    summary: pd.DataFrame
    curves: pd.DataFrame  # one row per (run, step): method, seed, step, loss, kind (train|val)

    @classmethod
    def load(cls, summary_csv: str | Path) -> "FigureData":
        summary = pd.read_csv(summary_csv)
        return cls(summary, load_curves(summary))


def load_curves(summary: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for r in summary.itertuples():
        path = Path(str(r.run_dir)) / "metrics.jsonl"
        if not path.is_file():
            continue
        for ev in read_events(path):
            base = {"method": r.method, "seed": r.seed, "model": r.model, "lr": getattr(r, "lr", None),
                    "status": r.status}
            if ev["event"] == "train_step":
                rows.append({**base, "step": ev["step"] + 1, "loss": ev["loss"], "kind": "train"})
            elif ev["event"] == "eval":
                rows.append({**base, "step": ev["step"], "loss": ev["val_loss"], "kind": "val"})
    return pd.DataFrame(rows, columns=["method", "seed", "model", "lr", "status", "step", "loss", "kind"])


def _save(fig, out_dir: Path, name: str) -> list[Path]:
    paths = []
    for ext in ("png", "svg"):
        path = out_dir / f"{name}.{ext}"
        with atomic_path(path, suffix=f".{ext}") as tmp:
            fig.savefig(tmp, format=ext, dpi=120, bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    return paths


def _ok(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"] == "ok"]


def fig_loss_curves(d: FigureData):
    """Validation loss vs step per method (mean over seeds); the bf16-amp seed range is shaded."""
    val = d.curves[d.curves["kind"] == "val"].dropna(subset=["loss"])
    if val.empty:
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    ref = val[val["method"] == REFERENCE].groupby("step")["loss"]
    if not ref.size().empty:
        lo, hi = ref.min(), ref.max()
        ax.fill_between(lo.index, lo.values, hi.values, color="grey", alpha=0.3,
                        label=f"{REFERENCE} seed range (n={val[val['method'] == REFERENCE]['seed'].nunique()})")
    sns.lineplot(data=val, x="step", y="loss", hue="method", errorbar=None, ax=ax, marker="o", markersize=3)
    ax.set(xlabel="optimizer step", ylabel="validation loss (nats/token)", title="Validation loss")
    ax.legend(fontsize=7, ncol=2)
    return fig


def fig_memory(d: FigureData):
    """Persistent bytes per parameter by component (measured after step 1), per method."""
    s = d.summary.dropna(subset=["state_bytes_per_param"]).copy()
    if s.empty:
        return None
    s = s.groupby("method", sort=False).first().reset_index()
    per = pd.DataFrame({c: s[f"{c}_bytes"].fillna(0) / s["n_params"] for c in COMPONENTS})
    per.index = s["method"]
    per = per.loc[per.sum(axis=1).sort_values(ascending=False).index]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(per) + 1.5))
    per.plot.barh(stacked=True, ax=ax, color=sns.color_palette("deep", len(COMPONENTS)))
    for ref in (16, 12, 6):
        ax.axvline(ref, color="black", ls=":", lw=0.8)
    ax.set(xlabel="bytes per parameter (measured from live tensors)", ylabel="",
           title="Training state per parameter (dotted: the seed's 16 / 12 / 6)")
    ax.invert_yaxis()
    return fig


def fig_throughput(d: FigureData):
    """Median tokens/s per method (dots: seeds) with the speedup vs bf16-amp in the labels."""
    s = _ok(d.summary).dropna(subset=["tokens_per_s"])
    if s.empty:
        return None
    order = s.groupby("method")["tokens_per_s"].median().sort_values(ascending=False).index
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(order) + 1.5))
    sns.barplot(data=s, y="method", x="tokens_per_s", order=order, errorbar=None, ax=ax, color="C0", alpha=0.6)
    sns.stripplot(data=s, y="method", x="tokens_per_s", order=order, ax=ax, color="black", size=3)
    sp = s.groupby("method")["speedup"].median()
    ax.set_yticks(range(len(order)), [f"{m} ({sp.get(m, float('nan')):.2f}x)" for m in order])
    device = ", ".join(sorted(s["device"].dropna().astype(str).unique()))
    ax.set(xlabel=f"tokens/s, median over timed steps ({device})", ylabel="", title="Throughput (speedup vs bf16-amp)")
    return fig


FIGURES = {
    "loss_curves": (fig_loss_curves, "Validation loss against step for each method (mean over seeds); grey: "
                                     "the range of the bf16-amp reference over its seeds."),
    "memory": (fig_memory, "Persistent training state per parameter, measured from the live tensors after the "
                           "first optimizer step, split into weights, master weights, gradients, optimizer "
                           "state and FP8 metadata."),
    "throughput": (fig_throughput, "Median training throughput per method; the label gives the speedup over "
                                   "bf16-amp in the same workflow run."),
}


def build_all(summary_csv: str | Path, out_dir: str | Path, only: list[str] | None = None) -> dict[str, list[Path]]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sns.set_theme(style="whitegrid", context="notebook")
    data = FigureData.load(summary_csv)
    made = {}
    for name, (fn, _caption) in FIGURES.items():
        if only and name not in only:
            continue
        fig = fn(data)
        if fig is None:
            fig, ax = plt.subplots(figsize=(6, 1.5))
            ax.axis("off")
            ax.text(0.5, 0.5, f"{name}: nothing to plot in these results", ha="center", va="center")
        made[name] = _save(fig, out_dir, name)
    return made


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines.figures", description=__doc__.split("\n\n")[0])
    ap.add_argument("--summary", default="results/summary.csv")
    ap.add_argument("--out", default="reports/figures")
    ap.add_argument("--only", nargs="*", help=f"subset of: {', '.join(FIGURES)}")
    args = ap.parse_args(argv)
    made = build_all(args.summary, args.out, args.only)
    print("figures:", ", ".join(str(p[0]) for p in made.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
