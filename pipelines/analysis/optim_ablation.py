"""The FP8 optimizer-state ablation table (``results/optim_ablation.csv``): ``fp8-optim``, its profile variants
(other m / v formats and transforms) and the torchao low-bit optimizers, with their paired verdicts and what
the stored moments looked like."""

from __future__ import annotations

import numpy as np
import pandas as pd

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
    torchao low-bit optimizers, with the paired gap and its verdict, optimizer bytes and what the stored moments looked
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

            def worst(col, gg=gg):
                return gg[col].max() if col in gg and gg[col].notna().any() else np.nan

            rows.append(
                {
                    "profile": r.profile,
                    "model": r.model,
                    "method": method,
                    "lr": r.lr,
                    "optimizer_state": fmt,
                    "status": r.status,
                    "n_seeds": r.n_seeds,
                    "val_loss_mean": r.val_loss_mean,
                    "gap_mean_pct": r.gap_mean_pct,
                    "gap_ci_lo_pct": r.gap_ci_lo_pct,
                    "gap_ci_hi_pct": r.gap_ci_hi_pct,
                    "verdict": r.verdict,
                    "margin_pct": r.margin_pct,
                    "optim_bpp": r.optim_bpp,
                    "v_flush_frac_max": worst("telemetry_max_v_flush_frac"),
                    "max_m_over_sqrt_v": worst("telemetry_max_max_m_over_sqrt_v"),
                    "reason": r.reason,
                }
            )
    cols = [
        "profile",
        "model",
        "method",
        "lr",
        "optimizer_state",
        "status",
        "n_seeds",
        "val_loss_mean",
        "gap_mean_pct",
        "gap_ci_lo_pct",
        "gap_ci_hi_pct",
        "verdict",
        "margin_pct",
        "optim_bpp",
        "v_flush_frac_max",
        "max_m_over_sqrt_v",
        "reason",
    ]
    return (
        pd.DataFrame(rows, columns=cols).sort_values(["profile", "model", "lr"], kind="stable").reset_index(drop=True)
    )
