"""Per-method comparison (aggregated over seeds) and the seed's claims, from ``results/summary.csv``.

    python -m pipelines.compare --summary results/summary.csv --out-dir results

writes ``comparison.csv`` + ``comparison.md``, ``claims.csv``, ``memory_model.csv`` and ``optim_ablation.csv``. Every registered method gets a
comparison row, also when it did not run (status ``not run``) or was skipped; the numbers the report
prints are these files' numbers.

Noise band: the final validation losses of ``bf16-amp`` over its seeds at the same profile, model and
lr, [min, max]. A method is ``inside`` when its mean final val loss over its seeds lies in that range,
``above``/``below`` otherwise; ``n/a`` without at least two reference seeds.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.atomic import atomic_path, write_text

REFERENCE = "bf16-amp"
COMPONENTS = ["weights", "master", "grads", "optim", "meta"]
SEVERITY = ["failed", "diverged", "skipped", "ok"]
KEYS = ["profile", "model", "method", "lr"]


def registry_rows() -> pd.DataFrame:
    """Every registered method with family, availability here, summary and stored dtypes."""
    from methods.registry import get_method, method_names

    rows = []
    for name in method_names():
        m = get_method(name)
        unmet = m.unmet()
        rows.append({"method": name, "family": m.family, "available_here": not unmet, "unavailable_reason": "; ".join(unmet),
                     "summary": m.summary, **{f"stores_{k}": v for k, v in m.stores.items()}})
    return pd.DataFrame(rows)


def _status(statuses: list[str]) -> str:
    uniq = set(statuses)
    if len(uniq) == 1:
        return statuses[0]
    return "mixed: " + ", ".join(f"{s}×{statuses.count(s)}" for s in SEVERITY if s in uniq)


def _std(x: pd.Series) -> float:
    x = x.dropna()
    return float(x.std(ddof=1)) if len(x) >= 2 else float("nan")


def aggregate(summary: pd.DataFrame) -> pd.DataFrame:
    s = summary.copy()
    s["lr"] = s["lr"].astype(float)
    ok = s[s["status"] == "ok"]
    ref = ok[ok["method"] == REFERENCE].groupby(["profile", "model", "lr"])["final_val_loss"]
    band = pd.DataFrame({"ref_seeds": ref.count(), "ref_val_mean": ref.mean(), "ref_band_lo": ref.min(),
                         "ref_band_hi": ref.max()}).reset_index()
    rows = []
    for key, g in s.groupby(KEYS, sort=False):
        gok = g[g["status"] == "ok"]
        mem = g.dropna(subset=["state_bytes_per_param"])
        first = mem.iloc[0] if len(mem) else None
        statuses = g.sort_values("seed")["status"].tolist()
        reasons = [r for r in dict.fromkeys(g["reason"].fillna("").astype(str)) if r]
        row = dict(zip(KEYS, key))
        row.update({
            "status": _status(statuses),
            "runs": len(g),
            "seeds": ",".join(str(int(x)) for x in sorted(g["seed"])),
            "n_ok": len(gok),
            "reason": "; ".join(reasons),
            "diverged_step": g["diverged_step"].min() if "diverged_step" in g else np.nan,
            "val_loss_mean": gok["final_val_loss"].mean() if len(gok) else np.nan,
            "val_loss_std": _std(gok["final_val_loss"]),
            "loss_gap_pct_mean": gok["loss_gap_pct"].mean() if len(gok) else np.nan,
            "loss_gap_pct_std": _std(gok["loss_gap_pct"]),
            "tokens_per_s_median": gok["tokens_per_s"].median() if len(gok) else np.nan,
            "speedup_median": gok["speedup"].median() if len(gok) else np.nan,
            "peak_mem_bytes": g["peak_mem_bytes"].max(),
            "peak_mem_mib": g["peak_mem_bytes"].max() / 2**20,
            "peak_mem_kind": ",".join(sorted(g["peak_mem_kind"].dropna().astype(str).unique())),
            "world_size": g["world_size"].max() if "world_size" in g else 1,
        })
        for c in COMPONENTS:
            row[f"{c}_bpp"] = first[f"{c}_bytes"] / first["n_params"] if first is not None else np.nan
        row["state_bytes_per_param"] = first["state_bytes_per_param"] if first is not None else np.nan
        rows.append(row)
    out = pd.DataFrame(rows)
    out = out.merge(band, on=["profile", "model", "lr"], how="left")
    out["seed_band_pct"] = 100 * (out["ref_band_hi"] - out["ref_band_lo"]) / out["ref_val_mean"]

    def where(r):
        if pd.isna(r["val_loss_mean"]):
            return "n/a"
        if pd.isna(r["ref_seeds"]) or r["ref_seeds"] < 2:
            return "n/a (fewer than 2 reference seeds)"
        if r["val_loss_mean"] > r["ref_band_hi"]:
            return "above"
        if r["val_loss_mean"] < r["ref_band_lo"]:
            return "below"
        return "inside"

    out["vs_seed_band"] = out.apply(where, axis=1)
    return out


def comparison(summary: pd.DataFrame, registry: pd.DataFrame | None = None) -> pd.DataFrame:
    """Aggregated rows, plus a ``not run`` row for every registered method absent from the results."""
    registry = registry_rows() if registry is None else registry
    agg = aggregate(summary)
    extra = []
    for (profile, model), _ in summary.groupby(["profile", "model"], sort=False):
        present = set(agg[(agg["profile"] == profile) & (agg["model"] == model)]["method"])
        for r in registry.itertuples():
            if r.method not in present:
                why = f"not in profile {profile}" + (f"; unavailable here: {r.unavailable_reason}"
                                                       if not r.available_here else "")
                extra.append({"profile": profile, "model": model, "method": r.method, "status": "not run",
                              "runs": 0, "n_ok": 0, "reason": why})
    out = pd.concat([agg, pd.DataFrame(extra)], ignore_index=True) if extra else agg
    out = out.merge(registry[["method", "family"]], on="method", how="left")
    order = {m: i for i, m in enumerate(registry["method"])}
    out["_o"] = out["method"].map(order).fillna(len(order))
    out = out.sort_values(["profile", "model", "lr", "_o"], kind="stable").drop(columns="_o").reset_index(drop=True)
    front = ["profile", "model", "method", "family", "lr", "status", "runs", "seeds", "n_ok", "reason"]
    return out[front + [c for c in out.columns if c not in front]]


# ------------------------------------------------------------------------------------------ claims

def _one(comp: pd.DataFrame, method: str, profile: str | None = None) -> pd.Series | None:
    rows = comp[comp["method"] == method]
    if profile is not None:
        rows = rows[rows["profile"] == profile]
    rows = rows[rows["status"] != "not run"]
    return rows.iloc[0] if len(rows) else None


def _bpp(comp, method):
    r = _one(comp, method)
    return None if r is None or pd.isna(r["state_bytes_per_param"]) else float(r["state_bytes_per_param"])


def claims(comp: pd.DataFrame, gap_tolerance_pct: float = 1.0, bpp_tolerance: float = 0.1) -> pd.DataFrame:
    """The seed's four claims with the measured values and a verdict (the rule is in ``rule``)."""
    rows = []
    triple = [("fp32", 16.0), ("bf16-pure", 12.0), ("fp8-optim", 6.0)]
    measured = [_bpp(comp, m) for m, _ in triple]
    have = [m is not None for m in measured]

    def fmt_triple(vals, digits):
        return " / ".join("–" if v is None else f"{v:.{digits}f}" for v in vals)

    if all(have):
        holds = all(abs(m - e) <= bpp_tolerance for m, (_, e) in zip(measured, triple))
        verdict = "holds" if holds else "does not hold"
    else:
        verdict = "not measured (missing: " + ", ".join(m for (m, _), h in zip(triple, have) if not h) + ")"
    amp = _bpp(comp, REFERENCE)
    rows.append({
        "claim": "fp32 / bf16 mixed precision / FP8 optimizer states keep 16 / 12 / 6 bytes per parameter",
        "seed_value": "16 / 12 / 6", "measured": fmt_triple(measured, 2),
        "basis": "state_bytes_per_param of fp32 / bf16-pure / fp8-optim, measured from live tensors after step 1",
        "verdict": verdict,
        "rule": f"each within ±{bpp_tolerance} B/param",
        "note": ("bf16 mixed precision as usually run (bf16-amp: fp32 weights and grads) measures "
                 f"{amp:.2f} B/param, not 12" if amp is not None else ""),
    })
    gb = [None if m is None else m * 10e9 / 1e9 for m in measured]
    rows.append({
        "claim": "a 10B-parameter model needs 160 / 120 / 60 GB",
        "seed_value": "160 / 120 / 60", "measured": fmt_triple(gb, 1),
        "basis": "measured bytes/param × 1e10 parameters (GB = 1e9 bytes; activations not included)",
        "verdict": ("holds" if all(have) and all(abs(g - e) <= 0.02 * e for g, e in zip(gb, (160, 120, 60)))
                    else "does not hold" if all(have) else verdict),
        "rule": "each within ±2%",
        "note": "",
    })
    naive = _one(comp, "fp8-naive")
    if naive is None:
        v, m = "not measured (fp8-naive did not run)", "–"
    else:
        m = naive["status"] + (f" at step {int(naive['diverged_step'])}" if naive["status"] == "diverged" else "")
        if naive["status"] == "ok":
            m += f", loss gap {naive['loss_gap_pct_mean']:+.2f}%, {naive['vs_seed_band']} the bf16-amp seed band"
        unstable = naive["status"] == "diverged" or (naive["status"] == "ok" and naive["loss_gap_pct_mean"] > gap_tolerance_pct)
        v = ("holds" if unstable else "does not hold here") if naive["status"] in ("ok", "diverged") else \
            f"not measured ({naive['status']}: {naive['reason']})"
    rows.append({
        "claim": "FP8 weights and gradients (no high-precision copy) are unstable",
        "seed_value": "unstable", "measured": m,
        "basis": "fp8-naive: weights and grads stored in FP8 with one per-tensor scale, no master copy",
        "verdict": v,
        "rule": f"holds if the run diverges or its loss gap exceeds {gap_tolerance_pct}%",
        "note": "",
    })
    stable = []
    for name in ("fp8-optim", "fp8-e2e", "fp8-lean"):
        r = _one(comp, name)
        if r is not None:
            stable.append((name, r))
    if not stable:
        v, m = "not measured (no FP8-optimizer method ran)", "–"
    else:
        parts, ok = [], True
        for name, r in stable:
            if r["status"] == "ok":
                parts.append(f"{name}: ok, gap {r['loss_gap_pct_mean']:+.2f}%")
                ok &= abs(r["loss_gap_pct_mean"]) <= gap_tolerance_pct
            else:
                parts.append(f"{name}: {r['status']}")
                ok = False
        m, v = "; ".join(parts), "holds" if ok else "does not hold"
    rows.append({
        "claim": "FP8 optimizer states keep training stable",
        "seed_value": "stable", "measured": m,
        "basis": "fp8-optim (FP8 m, v), fp8-e2e (plus FP8 linears), fp8-lean (plus step-in-backward)",
        "verdict": v,
        "rule": f"holds if every one finishes ok within {gap_tolerance_pct}% of bf16-amp's val loss",
        "note": "",
    })
    return pd.DataFrame(rows)


def memory_model(comp: pd.DataFrame, n_params: float = 10e9) -> pd.DataFrame:
    """The analytic model at ``n_params`` (the seed's rows, every method, reference recipes) next to the
    bytes/param measured in these results."""
    from methods.memory import analytic_table

    measured = comp[comp["status"] != "not run"].dropna(subset=["state_bytes_per_param"])
    measured = measured.drop_duplicates("method").set_index("method")
    rows = []
    for r in analytic_table(n_params):
        row = {"row": r["row"], "kind": r["kind"], **{f"{c}_bpp": r["bytes_per_param"][c] for c in COMPONENTS},
               "analytic_bpp": r["total_bytes_per_param"], "gb_at_n": r["gb"], "n_params": n_params,
               "measured_bpp": measured["state_bytes_per_param"].get(r["row"], np.nan) if r["kind"] == "method" else np.nan,
               "note": r["note"]}
        row["measured_gb_at_n"] = row["measured_bpp"] * n_params / 1e9
        rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ FP8 optimizer-state ablation

OPTIM_ANCHORS = ("fp8-optim-torchao", "int8-optim-torchao")


def _options(v) -> dict:
    """A run's method options as read back from summary.csv (a dict written as its repr), or {}."""
    import ast

    if isinstance(v, dict):
        return v
    if isinstance(v, str) and v.startswith("{"):
        return ast.literal_eval(v)
    return {}


def optim_state_format(method: str, options: dict) -> str:
    """How Adam's m and v are stored, e.g. ``m e4m3, v e4m3 dre, block 256``."""
    from methods.registry import get_method

    m = get_method(method, **options)
    if not hasattr(m, "v_transform"):
        return f"m {m.stores.get('m', '?')}, v {m.stores.get('v', '?')}"

    def one(fmt, tr):
        return f"{fmt}" + ("" if tr == "none" else f" {tr}")

    return f"m {one(m.m_format, m.m_transform)}, v {one(m.v_format, m.v_transform)}, block {m.block_size}"


def optim_ablation(summary: pd.DataFrame, comp: pd.DataFrame) -> pd.DataFrame:
    """``fp8-optim`` (its default), every profile variant of it (other m/v formats and transforms) and the
    torchao low-bit optimizers, with loss gap, seed band, optimizer bytes and what the stored moments looked
    like (the worst ``v_flush_frac``, the fraction of v stored as 0 under a nonzero m, and the worst
    ``max_m_over_sqrt_v``, the largest step in units of lr, over layers and logged steps)."""
    s = summary.copy()
    base = s["base_method"] if "base_method" in s else pd.Series(np.nan, index=s.index)
    s["_base"] = base.where(base.notna(), s["method"])
    picked = s[(s["_base"] == "fp8-optim") | s["method"].isin(OPTIM_ANCHORS)]
    methods = list(dict.fromkeys([*picked["method"], *[m for m in OPTIM_ANCHORS if m in set(comp["method"])]]))
    rows = []
    for method in methods:
        g = picked[picked["method"] == method]
        first = g.iloc[0] if len(g) else {"_base": method, "method": method}
        opts = _options(first.get("method_options")) if first["_base"] != first["method"] else {}
        fmt = optim_state_format(first["_base"], opts)
        for r in comp[comp["method"] == method].itertuples():
            gg = g[(g["profile"] == r.profile) & (g["model"] == r.model)]

            def worst(col):
                return gg[col].max() if col in gg and gg[col].notna().any() else np.nan

            rows.append({"profile": r.profile, "model": r.model, "method": method, "lr": r.lr,
                         "optimizer_state": fmt, "status": r.status,
                         "seeds": r.seeds, "val_loss_mean": r.val_loss_mean, "loss_gap_pct_mean": r.loss_gap_pct_mean,
                         "vs_seed_band": r.vs_seed_band, "optim_bpp": r.optim_bpp,
                         "v_flush_frac_max": worst("telemetry_max_v_flush_frac"),
                         "max_m_over_sqrt_v": worst("telemetry_max_max_m_over_sqrt_v"), "reason": r.reason})
    cols = ["profile", "model", "method", "lr", "optimizer_state", "status", "seeds", "val_loss_mean", "loss_gap_pct_mean",
            "vs_seed_band", "optim_bpp", "v_flush_frac_max", "max_m_over_sqrt_v", "reason"]
    return pd.DataFrame(rows, columns=cols).sort_values(["profile", "model", "lr"], kind="stable").reset_index(drop=True)


def write_outputs(summary_csv: str | Path, out_dir: str | Path) -> dict[str, Path]:
    from pipelines.report import md_table  # one table renderer for every markdown table

    out_dir = Path(out_dir)
    summary = pd.read_csv(summary_csv)
    comp = comparison(summary)
    cl = claims(comp)
    mm = memory_model(comp)
    ab = optim_ablation(summary, comp)
    paths = {"comparison": out_dir / "comparison.csv", "comparison_md": out_dir / "comparison.md",
             "claims": out_dir / "claims.csv", "memory_model": out_dir / "memory_model.csv",
             "optim_ablation": out_dir / "optim_ablation.csv"}
    for key, df in (("comparison", comp), ("claims", cl), ("memory_model", mm), ("optim_ablation", ab)):
        with atomic_path(paths[key], suffix=".csv") as tmp:
            df.to_csv(tmp, index=False)
    write_text(paths["comparison_md"], "# Per-method comparison\n\n" + md_table(comparison_view(comp)) + "\n")
    return paths


def comparison_view(comp: pd.DataFrame) -> pd.DataFrame:
    """The columns a reader scans, as printed in comparison.md and REPORT.md."""
    cols = ["profile", "model", "method", "lr", "status", "seeds", "val_loss_mean", "val_loss_std", "loss_gap_pct_mean",
            "vs_seed_band", "tokens_per_s_median", "speedup_median", "state_bytes_per_param", "weights_bpp",
            "master_bpp", "grads_bpp", "optim_bpp", "meta_bpp", "peak_mem_mib", "reason"]
    view = comp[[c for c in cols if c in comp]].copy()
    if view["profile"].nunique() == 1:
        view = view.drop(columns="profile")
    if view["model"].nunique() == 1:
        view = view.drop(columns="model")
    if view["lr"].nunique(dropna=True) <= 1:
        view = view.drop(columns="lr")
    return view


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines.compare", description=__doc__.split("\n\n")[0])
    ap.add_argument("--summary", default="results/summary.csv")
    ap.add_argument("--out-dir", default="results")
    args = ap.parse_args(argv)
    for p in write_outputs(args.summary, args.out_dir).values():
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
