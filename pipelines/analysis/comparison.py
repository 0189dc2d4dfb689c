"""Per-method comparison (paired by seed against ``bf16-amp``) and the noise floor, from ``results/summary.csv``;
its command also writes the tables built on them (the claims, the memory model, the optimizer ablation).

    python -m pipelines.analysis.comparison --summary results/summary.csv --out-dir results [--analysis JSON]

writes ``comparison.csv`` + ``comparison.md``, ``noise_floor.csv``, ``claims.csv``, ``memory_model.csv`` and
``optim_ablation.csv``; the claims also read the stability tables already in ``--out-dir`` (``frontier.csv``,
``long_horizon.csv``, ``stress_outliers.csv``). Every registered method gets a comparison row, also when it did
not run (status ``not run``) or was skipped; the numbers the report prints are these files' numbers.

Per method and lr: the paired gaps of its seeds against ``bf16-amp`` at the same seed (``loss_gap_pct`` of
summary.csv), their mean with a Student-t interval, the noise floor of that lr (fp32 against bf16-amp) and
a verdict against the equivalence margin (``pipelines/analysis/stats.py`` states the rules; ``analysis:`` in
``pipelines/config.yaml`` sets margin, confidence and the minimum number of seeds).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from common.atomic import write_csv, write_text
from pipelines.analysis.claims import claims
from pipelines.analysis.markdown import md_table  # one table renderer for every markdown table
from pipelines.analysis.memory_model import COMPONENTS, memory_model
from pipelines.analysis.optim_ablation import optim_ablation
from pipelines.analysis.stats import Analysis, noise_floor, seeds_to_decide, t_interval, verdict

REFERENCE = "bf16-amp"
SEVERITY = ["failed", "diverged", "skipped", "ok"]
KEYS = ["profile", "model", "method", "lr"]
LR_KEYS = ["profile", "model", "lr"]


def registry_rows() -> pd.DataFrame:
    """Every registered method with family, availability here, summary and stored dtypes."""
    from methods.registry import get_method, method_names

    rows = []
    for name in method_names():
        m = get_method(name)
        unmet = m.unmet()
        rows.append(
            {
                "method": name,
                "family": m.family,
                "available_here": not unmet,
                "unavailable_reason": "; ".join(unmet),
                "summary": m.summary,
                **{f"stores_{k}": v for k, v in m.stores.items()},
            }
        )
    return pd.DataFrame(rows)


def _status(statuses: list[str]) -> str:
    uniq = set(statuses)
    if len(uniq) == 1:
        return statuses[0]
    return "mixed: " + ", ".join(f"{s}×{statuses.count(s)}" for s in SEVERITY if s in uniq)


def _std(x: pd.Series) -> float:
    x = x.dropna()
    return float(x.std(ddof=1)) if len(x) >= 2 else float("nan")


def _gaps(g: pd.DataFrame) -> pd.Series:
    """The paired gaps of a group's finished seeds (NaN where bf16-amp did not finish at that seed)."""
    return pd.to_numeric(g[g["status"] == "ok"].sort_values("seed")["loss_gap_pct"], errors="coerce").dropna()


def noise_floors(summary: pd.DataFrame, an: Analysis) -> pd.DataFrame:
    """Per profile, model and lr: the null methods' paired gaps (changes that should not matter), the noise
    floor (largest |gap|), and how the reference itself behaves over its seeds (spread, fall from step 0)."""
    s = summary.copy()
    s["lr"] = s["lr"].astype(float)
    rows = []
    for key, g in s.groupby(LR_KEYS, sort=False):
        ref = g[(g["method"] == an.reference) & (g["status"] == "ok")]
        if ref.empty:
            continue
        val, init = ref["final_val_loss"].astype(float), ref["initial_val_loss"].astype(float)
        base = {
            **dict(zip(LR_KEYS, key)),
            "ref_seeds": len(ref),
            "ref_val_mean": val.mean(),
            "ref_spread_pct": 100 * (val.max() - val.min()) / val.mean() if len(ref) > 1 else np.nan,
            "ref_fall_pct": 100 * float((1 - val / init).min()),
            "margin_pct": an.margin_pct,
        }
        for null in an.null_methods:
            gaps = _gaps(g[g["method"] == null])
            if gaps.empty:
                continue
            ci = t_interval(gaps, an.confidence)
            rows.append(
                {
                    **base,
                    "null_method": null,
                    "n_seeds": ci.n,
                    "gaps_pct": " / ".join(f"{v:+.2f}" for v in gaps),
                    "noise_floor_pct": noise_floor(gaps),
                    "gap_mean_pct": ci.mean,
                    "gap_ci_lo_pct": ci.lo,
                    "gap_ci_hi_pct": ci.hi,
                }
            )
    cols = [
        *LR_KEYS,
        "null_method",
        "n_seeds",
        "gaps_pct",
        "noise_floor_pct",
        "gap_mean_pct",
        "gap_ci_lo_pct",
        "gap_ci_hi_pct",
        "margin_pct",
        "ref_seeds",
        "ref_val_mean",
        "ref_spread_pct",
        "ref_fall_pct",
    ]
    return pd.DataFrame(rows, columns=cols)


def aggregate(summary: pd.DataFrame, an: Analysis | None = None, floors: pd.DataFrame | None = None) -> pd.DataFrame:
    an = an or Analysis()
    s = summary.copy()
    s["lr"] = s["lr"].astype(float)
    floors = noise_floors(s, an) if floors is None else floors
    floor_at = floors.groupby(LR_KEYS)["noise_floor_pct"].max().to_dict()
    rows = []
    for key, g in s.groupby(KEYS, sort=False):
        gok = g[g["status"] == "ok"]
        mem = g.dropna(subset=["state_bytes_per_param"])
        first = mem.iloc[0] if len(mem) else None
        statuses = g.sort_values("seed")["status"].tolist()
        reasons = [r for r in dict.fromkeys(g["reason"].fillna("").astype(str)) if r]
        row = dict(zip(KEYS, key))
        gaps = _gaps(g)
        ci = t_interval(gaps, an.confidence)
        floor = floor_at.get((row["profile"], row["model"], row["lr"]), np.nan)
        if row["method"] == an.reference:
            v, ci = "reference", t_interval([], an.confidence)  # its gap to itself is 0 by construction
        elif "diverged" in statuses:
            v = "diverged"
        elif gaps.empty:
            v = "n/a (" + (_status(statuses) if statuses else "no runs") + ")"
        else:
            v = verdict(gaps, an, floor)
        row.update(
            {
                "status": _status(statuses),
                "runs": len(g),
                "seeds": ",".join(str(int(x)) for x in sorted(g["seed"])),
                "n_ok": len(gok),
                "reason": "; ".join(reasons),
                "diverged_step": g["diverged_step"].min() if "diverged_step" in g else np.nan,
                "val_loss_mean": gok["final_val_loss"].mean() if len(gok) else np.nan,
                "val_loss_std": _std(gok["final_val_loss"]),
                "n_seeds": len(gaps),  # the reference too: its seeds, though its gap to itself has no interval
                "n_judged": int(g["status"].isin(["ok", "diverged"]).sum()),  # seeds a verdict rests on
                "gap_mean_pct": ci.mean,
                "gap_ci_lo_pct": ci.lo,
                "gap_ci_hi_pct": ci.hi,
                "gap_sd_pct": ci.sd,
                "noise_floor_pct": floor,
                "margin_pct": an.margin_pct,
                "verdict": v,
                # seeds at which the interval would be decided, were the mean and spread to stay as observed
                "seeds_to_decide": np.nan if row["method"] == an.reference else seeds_to_decide(gaps, an),
                # the verdict on its first min_seeds seeds: what a fixed design would say (adaptive seeds add more)
                "verdict_at_min_seeds": v
                if len(gaps) <= an.min_seeds or v in ("reference", "diverged")
                else verdict(gaps.iloc[: an.min_seeds], an, floor),
                "verdict_rule": an.rule(),
                "tokens_per_s_median": gok["tokens_per_s"].median() if len(gok) else np.nan,
                "speedup_median": gok["speedup"].median() if len(gok) else np.nan,
                "peak_mem_bytes": g["peak_mem_bytes"].max(),
                "peak_mem_mib": g["peak_mem_bytes"].max() / 2**20,
                "peak_mem_kind": ",".join(sorted(g["peak_mem_kind"].dropna().astype(str).unique())),
                "world_size": g["world_size"].max() if "world_size" in g else 1,
                "weight_codes_unchanged_frac_mean": (
                    g["weight_codes_unchanged_frac_mean"].mean() if "weight_codes_unchanged_frac_mean" in g else np.nan
                ),
                "weight_codes_unchanged_frac_max": (
                    g["telemetry_max_unchanged_frac"].max() if "telemetry_max_unchanged_frac" in g else np.nan
                ),
            }
        )
        for c in COMPONENTS:
            row[f"{c}_bpp"] = first[f"{c}_bytes"] / first["n_params"] if first is not None else np.nan
        row["state_bytes_per_param"] = first["state_bytes_per_param"] if first is not None else np.nan
        bpp = g["state_bytes_per_param"].dropna()
        row["state_bpp_spread"] = float(bpp.max() - bpp.min()) if len(bpp) else np.nan
        row["n_measured"] = len(bpp)
        rows.append(row)
    return pd.DataFrame(rows)


def comparison(
    summary: pd.DataFrame,
    registry: pd.DataFrame | None = None,
    an: Analysis | None = None,
    floors: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Aggregated rows, plus a ``not run`` row for every registered method absent from the results."""
    registry = registry_rows() if registry is None else registry
    agg = aggregate(summary, an, floors)
    extra = []
    for (profile, model), _ in summary.groupby(["profile", "model"], sort=False):
        present = set(agg[(agg["profile"] == profile) & (agg["model"] == model)]["method"])
        for r in registry.itertuples():
            if r.method not in present:
                why = f"not in profile {profile}" + (
                    f"; unavailable here: {r.unavailable_reason}" if not r.available_here else ""
                )
                extra.append(
                    {
                        "profile": profile,
                        "model": model,
                        "method": r.method,
                        "status": "not run",
                        "runs": 0,
                        "n_ok": 0,
                        "n_seeds": 0,
                        "verdict": "not run",
                        "reason": why,
                    }
                )
    out = pd.concat([agg, pd.DataFrame(extra)], ignore_index=True) if extra else agg
    out = out.merge(registry[["method", "family"]], on="method", how="left")
    order = {m: i for i, m in enumerate(registry["method"])}
    out["_o"] = out["method"].map(order).fillna(len(order))
    out = out.sort_values(["profile", "model", "lr", "_o"], kind="stable").drop(columns="_o").reset_index(drop=True)
    front = ["profile", "model", "method", "family", "lr", "status", "runs", "seeds", "n_ok", "reason"]
    return out[front + [c for c in out.columns if c not in front]]


def load_analysis(text: str | None = None) -> Analysis:
    """The analysis settings: ``--analysis`` JSON as the workflow passes it, else pipelines/config.yaml's."""
    if text:
        return Analysis.from_config(json.loads(text))
    from pipelines.run.config import load

    return Analysis.from_config(load().get("analysis"))


def write_outputs(
    summary_csv: str | Path, out_dir: str | Path, an: Analysis | None = None, traced_csv: str | Path | None = None
) -> dict[str, Path]:

    an = an or load_analysis()
    out_dir = Path(out_dir)
    summary = pd.read_csv(summary_csv)
    floors = noise_floors(summary, an)
    comp = comparison(summary, an=an, floors=floors)
    traced = pd.read_csv(traced_csv) if traced_csv and Path(traced_csv).is_file() else None
    # the stability claims read the frontier, long-horizon and outlier tables written beside (empty if absent)
    from pipelines.analysis.stability_claims import StabilityTables

    cl = claims(comp, an, traced=traced, stability=StabilityTables.load(out_dir))
    mm = memory_model(comp)
    ab = optim_ablation(summary, comp)
    paths = {
        "comparison": out_dir / "comparison.csv",
        "comparison_md": out_dir / "comparison.md",
        "noise_floor": out_dir / "noise_floor.csv",
        "claims": out_dir / "claims.csv",
        "memory_model": out_dir / "memory_model.csv",
        "optim_ablation": out_dir / "optim_ablation.csv",
    }
    for key, df in (
        ("comparison", comp),
        ("noise_floor", floors),
        ("claims", cl),
        ("memory_model", mm),
        ("optim_ablation", ab),
    ):
        write_csv(df, paths[key])
    write_text(paths["comparison_md"], "# Per-method comparison\n\n" + md_table(comparison_view(comp)) + "\n")
    return paths


def comparison_view(comp: pd.DataFrame) -> pd.DataFrame:
    """The columns a reader scans, as printed in comparison.md and REPORT.md."""
    cols = [
        "profile",
        "model",
        "method",
        "lr",
        "status",
        "n_seeds",
        "val_loss_mean",
        "gap_mean_pct",
        "gap_ci_lo_pct",
        "gap_ci_hi_pct",
        "verdict",
        "seeds_to_decide",
        "margin_pct",
        "tokens_per_s_median",
        "speedup_median",
        "state_bytes_per_param",
        "weights_bpp",
        "master_bpp",
        "grads_bpp",
        "optim_bpp",
        "meta_bpp",
        "peak_mem_mib",
        "reason",
    ]
    view = comp[[c for c in cols if c in comp]].copy()
    if view["profile"].nunique() == 1:
        view = view.drop(columns="profile")
    if view["model"].nunique() == 1:
        view = view.drop(columns="model")
    if view["lr"].nunique(dropna=True) <= 1:
        view = view.drop(columns="lr")
    return view


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines.analysis.comparison", description=__doc__.split("\n\n")[0])
    ap.add_argument("--summary", default="results/summary.csv")
    ap.add_argument("--out-dir", default="results")
    ap.add_argument("--analysis", help="analysis settings as JSON (default: pipelines/config.yaml's analysis)")
    ap.add_argument("--traced", help="results/memory_traced.csv: the 10B claim from the full-size trace")
    args = ap.parse_args(argv)
    for p in write_outputs(args.summary, args.out_dir, load_analysis(args.analysis), args.traced).values():
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
