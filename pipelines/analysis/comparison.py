"""Per-method comparison (paired by seed against ``bf16-amp``), the noise floor and the seed's claims,
from ``results/summary.csv``.

    python -m pipelines.analysis.comparison --summary results/summary.csv --out-dir results [--analysis JSON]

writes ``comparison.csv`` + ``comparison.md``, ``noise_floor.csv``, ``claims.csv``, ``memory_model.csv`` and
``optim_ablation.csv``. Every registered method gets a comparison row, also when it did not run (status
``not run``) or was skipped; the numbers the report prints are these files' numbers.

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
from pipelines.analysis.markdown import md_table  # one table renderer for every markdown table
from pipelines.analysis.stats import Analysis, base_verdict, noise_floor, t_interval, verdict

REFERENCE = "bf16-amp"
COMPONENTS = ["weights", "master", "grads", "optim", "meta"]
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
        base = {**dict(zip(LR_KEYS, key)), "ref_seeds": len(ref), "ref_val_mean": val.mean(),
                "ref_spread_pct": 100 * (val.max() - val.min()) / val.mean() if len(ref) > 1 else np.nan,
                "ref_fall_pct": 100 * float((1 - val / init).min()), "margin_pct": an.margin_pct}
        for null in an.null_methods:
            gaps = _gaps(g[g["method"] == null])
            if gaps.empty:
                continue
            ci = t_interval(gaps, an.confidence)
            rows.append({**base, "null_method": null, "n_seeds": ci.n,
                         "gaps_pct": " / ".join(f"{v:+.2f}" for v in gaps), "noise_floor_pct": noise_floor(gaps),
                         "gap_mean_pct": ci.mean, "gap_ci_lo_pct": ci.lo, "gap_ci_hi_pct": ci.hi})
    cols = [*LR_KEYS, "null_method", "n_seeds", "gaps_pct", "noise_floor_pct", "gap_mean_pct", "gap_ci_lo_pct",
            "gap_ci_hi_pct", "margin_pct", "ref_seeds", "ref_val_mean", "ref_spread_pct", "ref_fall_pct"]
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
        row.update({
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
            "verdict_rule": an.rule(),
            "tokens_per_s_median": gok["tokens_per_s"].median() if len(gok) else np.nan,
            "speedup_median": gok["speedup"].median() if len(gok) else np.nan,
            "peak_mem_bytes": g["peak_mem_bytes"].max(),
            "peak_mem_mib": g["peak_mem_bytes"].max() / 2**20,
            "peak_mem_kind": ",".join(sorted(g["peak_mem_kind"].dropna().astype(str).unique())),
            "world_size": g["world_size"].max() if "world_size" in g else 1,
            "weight_codes_unchanged_frac_mean": (g["weight_codes_unchanged_frac_mean"].mean()
                                                 if "weight_codes_unchanged_frac_mean" in g else np.nan),
            "weight_codes_unchanged_frac_max": (g["telemetry_max_unchanged_frac"].max()
                                                if "telemetry_max_unchanged_frac" in g else np.nan),
        })
        for c in COMPONENTS:
            row[f"{c}_bpp"] = first[f"{c}_bytes"] / first["n_params"] if first is not None else np.nan
        row["state_bytes_per_param"] = first["state_bytes_per_param"] if first is not None else np.nan
        bpp = g["state_bytes_per_param"].dropna()
        row["state_bpp_spread"] = float(bpp.max() - bpp.min()) if len(bpp) else np.nan
        row["n_measured"] = len(bpp)
        rows.append(row)
    return pd.DataFrame(rows)


def comparison(summary: pd.DataFrame, registry: pd.DataFrame | None = None, an: Analysis | None = None,
               floors: pd.DataFrame | None = None) -> pd.DataFrame:
    """Aggregated rows, plus a ``not run`` row for every registered method absent from the results."""
    registry = registry_rows() if registry is None else registry
    agg = aggregate(summary, an, floors)
    extra = []
    for (profile, model), _ in summary.groupby(["profile", "model"], sort=False):
        present = set(agg[(agg["profile"] == profile) & (agg["model"] == model)]["method"])
        for r in registry.itertuples():
            if r.method not in present:
                why = f"not in profile {profile}" + (f"; unavailable here: {r.unavailable_reason}"
                                                       if not r.available_here else "")
                extra.append({"profile": profile, "model": model, "method": r.method, "status": "not run",
                              "runs": 0, "n_ok": 0, "n_seeds": 0, "verdict": "not run", "reason": why})
    out = pd.concat([agg, pd.DataFrame(extra)], ignore_index=True) if extra else agg
    out = out.merge(registry[["method", "family"]], on="method", how="left")
    order = {m: i for i, m in enumerate(registry["method"])}
    out["_o"] = out["method"].map(order).fillna(len(order))
    out = out.sort_values(["profile", "model", "lr", "_o"], kind="stable").drop(columns="_o").reset_index(drop=True)
    front = ["profile", "model", "method", "family", "lr", "status", "runs", "seeds", "n_ok", "reason"]
    return out[front + [c for c in out.columns if c not in front]]


# ------------------------------------------------------------------------------------------ claims

def _main_rows(comp: pd.DataFrame) -> pd.DataFrame:
    """The rows claims are judged on: the most common profile, and its most common lr (a sweep's other lrs
    are its own question), excluding methods that did not run."""
    ran = comp[comp["status"] != "not run"]
    if ran.empty:
        return ran
    ran = ran[ran["profile"] == ran["profile"].mode().iloc[0]]
    lr = ran["lr"].mode()
    return ran[ran["lr"] == lr.iloc[0]] if len(lr) else ran


def _one(rows: pd.DataFrame, method: str) -> pd.Series | None:
    r = rows[rows["method"] == method]
    return r.iloc[0] if len(r) else None


def _ci_text(r) -> str:
    if r["n_seeds"] >= 2:
        return (f"{r['gap_mean_pct']:+.2f}% [{r['gap_ci_lo_pct']:+.2f}, {r['gap_ci_hi_pct']:+.2f}] over "
                f"{int(r['n_seeds'])} seeds")
    if r["n_seeds"] == 1:
        return f"{r['gap_mean_pct']:+.2f}% (1 seed, no interval)"
    return "no paired seeds"


def _method_text(name: str, r) -> str:
    if r is None:
        return f"{name}: not run"
    if base_verdict(r["verdict"]) == "diverged":
        return f"{name}: diverged at step {int(r['diverged_step'])} ({r['status']})"
    return f"{name}: {r['verdict']}, gap {_ci_text(r)}"


def traced_10b(traced: pd.DataFrame, methods: list[str], model: str = "10b", expected=(160, 120, 60)) -> dict | None:
    """The 10B claim from the full-size trace (results/memory_traced.csv): persistent state of ``methods``
    traced at ``model``, scaled to exactly 1e10 parameters, with activations and the step's peak beside it
    (at the longest traced sequence, micro-batch 1). None if any of them was not traced there."""
    t = traced[(traced["model"] == model) & (traced["status"] == "ok")]
    if t.empty:
        return None
    seq = int(t["seq_len"].max())
    t = t[t["seq_len"] == seq].set_index("method")
    if any(m not in t.index for m in methods):
        return None
    rows = [t.loc[m] for m in methods]
    n = float(rows[0]["n_params"])
    per10 = [float(r["persistent_bytes"]) * 1e10 / float(r["n_params"]) / 1e9 for r in rows]
    at = [float(r["persistent_bytes"]) / 1e9 for r in rows]
    act = [float(r["act_peak_bytes"]) / 1e9 for r in rows]
    peak = [float(r["peak_bytes"]) / 1e9 for r in rows]
    trip = lambda vals: " / ".join(f"{v:.1f}" for v in vals)  # noqa: E731
    ok = all(abs(g - e) <= 0.02 * e for g, e in zip(per10, expected))
    return {
        "claim": "a 10B-parameter model needs 160 / 120 / 60 GB",
        "seed_value": " / ".join(str(e) for e in expected),
        "measured": f"{trip(per10)} (per 1e10 parameters; at {model}, {n / 1e9:.2f}B parameters: {trip(at)})",
        "n_seeds": np.nan,
        "basis": (f"persistent state of {' / '.join(methods)} traced at {model} over two real training steps "
                  "under fake tensors (results/memory_traced.csv), scaled to 1e10 parameters; GB = 1e9 bytes"),
        "verdict": "holds" if ok else "does not hold",
        "rule": "holds if each is within ±2% (the trace is deterministic: no seeds)",
        "activations": f"{trip(act)} GB at micro-batch 1 × seq {seq} (largest activation total of the step)",
        "peak": f"{trip(peak)} GB, the step's traced peak at micro-batch 1 × seq {seq}",
        "note": "",
    }


def claims(comp: pd.DataFrame, an: Analysis | None = None, bpp_tolerance: float = 0.1,
           traced: pd.DataFrame | None = None) -> pd.DataFrame:
    """The seed's four claims with the measured values and a verdict (holds / does not hold / inconclusive),
    each derived from per-seed measurements by the rule printed beside it; none rests on fewer than
    ``an.min_seeds`` seeds (``n_seeds``: the fewest seeds of the methods it rests on)."""
    an = an or Analysis()
    rows_main = _main_rows(comp)
    rows = []
    triple = [("fp32", 16.0), ("bf16-pure", 12.0), ("fp8-optim", 6.0)]
    picked = [_one(rows_main, m) for m, _ in triple]
    measured = [None if r is None or pd.isna(r["state_bytes_per_param"]) else float(r["state_bytes_per_param"])
                for r in picked]
    n_mem = min(int(r["n_measured"]) if r is not None else 0 for r in picked)
    spread = max(float(r["state_bpp_spread"]) if r is not None and not pd.isna(r["state_bpp_spread"]) else 0.0
                 for r in picked)

    def fmt_triple(vals, digits):
        return " / ".join("–" if v is None else f"{v:.{digits}f}" for v in vals)

    def memory_verdict(ok: bool) -> str:
        if any(m is None for m in measured):
            return "not measured (missing: " + ", ".join(m for (m, _), v in zip(triple, measured) if v is None) + ")"
        if n_mem < an.min_seeds:
            return f"inconclusive ({n_mem} seeds)"
        return "holds" if ok else "does not hold"

    amp = _one(rows_main, REFERENCE)
    mem_rule = (f"at every one of ≥ {an.min_seeds} seeds (the bytes are deterministic: their spread over seeds is "
                f"{spread:.2f} B/param)")
    rows.append({
        "claim": "fp32 / bf16 mixed precision / FP8 optimizer states keep 16 / 12 / 6 bytes per parameter",
        "seed_value": "16 / 12 / 6", "measured": fmt_triple(measured, 2), "n_seeds": n_mem,
        "basis": "state_bytes_per_param of fp32 / bf16-pure / fp8-optim, measured from live tensors after step 1",
        "verdict": memory_verdict(all(m is not None and abs(m - e) <= bpp_tolerance + spread
                                      for m, (_, e) in zip(measured, triple))),
        "rule": f"holds if each is within ±{bpp_tolerance} B/param {mem_rule}",
        "note": ("bf16 mixed precision as usually run (bf16-amp: fp32 weights and grads) measures "
                 f"{amp['state_bytes_per_param']:.2f} B/param, not 12" if amp is not None else ""),
    })
    ten_b = traced_10b(traced, [m for m, _ in triple]) if traced is not None else None
    if ten_b is not None:
        rows.append(ten_b)
    else:
        gb = [None if m is None else m * 10e9 / 1e9 for m in measured]
        rows.append({
            "claim": "a 10B-parameter model needs 160 / 120 / 60 GB",
            "seed_value": "160 / 120 / 60", "measured": fmt_triple(gb, 1), "n_seeds": n_mem,
            "basis": "measured bytes/param × 1e10 parameters (GB = 1e9 bytes; activations not included: "
                     "results/memory_traced.csv was not available)",
            "verdict": memory_verdict(all(g is not None and abs(g - e) <= 0.02 * e for g, e in zip(gb, (160, 120, 60)))),
            "rule": f"holds if each is within ±2% {mem_rule}",
            "note": "",
        })

    naive = _one(rows_main, "fp8-naive")
    if naive is None:
        v, m, n = "not measured (fp8-naive did not run)", "–", 0
    else:
        n = int(naive["n_judged"])
        vb = base_verdict(naive["verdict"])
        m = _method_text("fp8-naive", naive)
        if not pd.isna(naive.get("weight_codes_unchanged_frac_mean", np.nan)):
            m += (f"; FP8 weight codes unchanged by a step: {100 * naive['weight_codes_unchanged_frac_mean']:.1f}% "
                  f"on average, up to {100 * naive['weight_codes_unchanged_frac_max']:.1f}%")
        if n < an.min_seeds:
            v = f"inconclusive ({n} seeds)"
        elif vb in ("diverged", "worse"):
            v = "holds"
        else:
            v = {"equivalent": "does not hold", "better": "does not hold"}.get(vb, "inconclusive")
    rows.append({
        "claim": "FP8 weights and gradients (no high-precision copy) are unstable: training diverges or ends worse",
        "seed_value": "unstable", "measured": m, "n_seeds": n,
        "basis": "fp8-naive: weights and grads stored in FP8 with one per-tensor scale, no master copy",
        "verdict": v,
        "rule": (f"with at least {an.min_seeds} seeds run: holds if any seed diverges or the verdict is worse (CI "
                 f"above +{an.margin_pct:g}%), does not hold if equivalent or better, otherwise inconclusive; with fewer "
                 f"seeds, inconclusive"),
        "note": ("the share of FP8 weight codes a step leaves unchanged (telemetry, per layer) shows whether "
                 "fp8-naive stalls rather than diverges"),
    })

    names = ("fp8-optim", "fp8-e2e", "fp8-lean")
    picked = [(name, _one(rows_main, name)) for name in names]
    judged = [(name, r) for name, r in picked if r is not None and int(r["n_judged"]) >= an.min_seeds]
    refuters = [int(r["n_judged"]) for _, r in judged if base_verdict(r["verdict"]) in ("diverged", "worse")]
    m = "; ".join(_method_text(name, r) for name, r in picked)
    if refuters:
        v, n = "does not hold", min(refuters)
    else:
        n = min(int(r["n_judged"]) if r is not None else 0 for _, r in picked)
        if n < an.min_seeds:
            v = f"inconclusive ({n} seeds)"
        elif all(base_verdict(r["verdict"]) in ("equivalent", "better") for _, r in picked):
            v = "holds"
        else:
            v = "inconclusive"
    verdicts = {name: base_verdict(r["verdict"]) for name, r in picked if r is not None}
    note = ""
    if verdicts.get("fp8-lean") in ("worse", "diverged") and verdicts.get("fp8-optim") in ("equivalent", "better"):
        # fp8-lean holds the same FP8 states as fp8-optim; it differs in stepping inside backward
        note = ("fp8-lean is " + verdicts["fp8-lean"] + " while fp8-optim, with the same FP8 states but global-norm "
                "clipping and gradients held until the step, is " + verdicts["fp8-optim"] + ": the gap comes from "
                "stepping inside backward (per-tensor clipping), not from storing the moments in FP8")
    rows.append({
        "claim": "FP8 optimizer states keep training stable",
        "seed_value": "stable", "measured": m, "n_seeds": n,
        "basis": "fp8-optim (FP8 m, v), fp8-e2e (plus FP8 linears), fp8-lean (plus step-in-backward)",
        "verdict": v,
        "rule": (f"does not hold if any of them, run on at least {an.min_seeds} seeds, diverges or is worse; holds if "
                 f"all three, each on at least {an.min_seeds} seeds, are equivalent or better (CI inside "
                 f"±{an.margin_pct:g}% or below it); otherwise inconclusive"),
        "note": note,
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

            def worst(col):
                return gg[col].max() if col in gg and gg[col].notna().any() else np.nan

            rows.append({"profile": r.profile, "model": r.model, "method": method, "lr": r.lr,
                         "optimizer_state": fmt, "status": r.status,
                         "n_seeds": r.n_seeds, "val_loss_mean": r.val_loss_mean, "gap_mean_pct": r.gap_mean_pct,
                         "gap_ci_lo_pct": r.gap_ci_lo_pct, "gap_ci_hi_pct": r.gap_ci_hi_pct, "verdict": r.verdict,
                         "margin_pct": r.margin_pct, "optim_bpp": r.optim_bpp,
                         "v_flush_frac_max": worst("telemetry_max_v_flush_frac"),
                         "max_m_over_sqrt_v": worst("telemetry_max_max_m_over_sqrt_v"), "reason": r.reason})
    cols = ["profile", "model", "method", "lr", "optimizer_state", "status", "n_seeds", "val_loss_mean", "gap_mean_pct",
            "gap_ci_lo_pct", "gap_ci_hi_pct", "verdict", "margin_pct", "optim_bpp", "v_flush_frac_max", "max_m_over_sqrt_v", "reason"]
    return pd.DataFrame(rows, columns=cols).sort_values(["profile", "model", "lr"], kind="stable").reset_index(drop=True)


def load_analysis(text: str | None = None) -> Analysis:
    """The analysis settings: ``--analysis`` JSON as the workflow passes it, else pipelines/config.yaml's."""
    if text:
        return Analysis.from_config(json.loads(text))
    from pipelines.run.config import load

    return Analysis.from_config(load().get("analysis"))


def write_outputs(summary_csv: str | Path, out_dir: str | Path, an: Analysis | None = None,
                  traced_csv: str | Path | None = None) -> dict[str, Path]:

    an = an or load_analysis()
    out_dir = Path(out_dir)
    summary = pd.read_csv(summary_csv)
    floors = noise_floors(summary, an)
    comp = comparison(summary, an=an, floors=floors)
    traced = pd.read_csv(traced_csv) if traced_csv and Path(traced_csv).is_file() else None
    cl = claims(comp, an, traced=traced)
    mm = memory_model(comp)
    ab = optim_ablation(summary, comp)
    paths = {"comparison": out_dir / "comparison.csv", "comparison_md": out_dir / "comparison.md",
             "noise_floor": out_dir / "noise_floor.csv", "claims": out_dir / "claims.csv",
             "memory_model": out_dir / "memory_model.csv", "optim_ablation": out_dir / "optim_ablation.csv"}
    for key, df in (("comparison", comp), ("noise_floor", floors), ("claims", cl), ("memory_model", mm),
                    ("optim_ablation", ab)):
        write_csv(df, paths[key])
    write_text(paths["comparison_md"], "# Per-method comparison\n\n" + md_table(comparison_view(comp)) + "\n")
    return paths


def comparison_view(comp: pd.DataFrame) -> pd.DataFrame:
    """The columns a reader scans, as printed in comparison.md and REPORT.md."""
    cols = ["profile", "model", "method", "lr", "status", "n_seeds", "val_loss_mean", "gap_mean_pct", "gap_ci_lo_pct",
            "gap_ci_hi_pct", "verdict", "margin_pct", "tokens_per_s_median", "speedup_median", "state_bytes_per_param", "weights_bpp",
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
