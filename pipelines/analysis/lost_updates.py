"""The lost-update mechanism over training: whether fp8-naive's stall grows as the lr decays, whether the loss gap
follows it, and whether stochastic rounding removes the lost updates' bias.

Recipes whose weights live in a low-precision format lose every update smaller than half the format's spacing
(``methods.fp8.lost_updates``). On probed steps the training loop records, for the whole model, the share of
weights whose update was **predicted** lost (``lost_pred_frac``), the share **measured** unchanged
(``unchanged_frac``) and the **lost-update bias** (``lost_bias``) in its ``train_step`` events. This module reads
them from every run that has them (the ``long_horizon`` runs on disk and the runs of the summary), pairs them by
seed with ``bf16-amp``'s evaluations, and writes ``results/lost_updates.csv``: one row per (profile, model, lr,
recipe), headers only where no run was probed. Per recipe:

- **stall vs lr**: per seed the mean lost share (predicted; and measured) over the probes of the *early* window
  (after the warmup, up to the default horizon) and of the *late* window (the last quarter of training, where
  the cosine lr is lowest), the change late - early and its Student-t interval over seeds: ``grows as the lr
  decays`` where it lies above 0, ``shrinks as the lr decays`` where below, ``holds`` where it contains 0 (a
  run no longer than 4/3 of the default horizon ends its early window where the late one starts). Beside it the
  Spearman correlation between the step's lr and the lost share over the probes after the warmup, per seed,
  mean over seeds (negative: the lower the lr, the more updates are lost).
- **gap tracks lost share**: per seed, the Spearman correlation over the evaluations after the warmup between
  the paired loss gap against bf16-amp and the predicted lost share at the nearest probe; its mean and interval
  over seeds (bounds held to [-1, 1]): ``tracks`` where the interval lies above 0, ``moves against it`` where
  below, ``not shown`` otherwise. Both follow the lr schedule, so a correlation says they move together, not
  that one causes the other.
- **bias**: per seed the mean ``lost_bias`` over the probes after step 0, its interval over seeds: ``positive``,
  ``negative`` or ``zero within the interval``. On a stochastic-rounding variant (``<base>-sr`` beside
  ``<base>``): ``SR removes the bias`` only where the base's interval lies above 0 and the variant's contains 0.
- **predicted vs measured**: the mean |lost_pred_frac - unchanged_frac| over the probes. They agree bit for bit
  only for bf16 weights rounded to nearest: FP8 codes with a per-tensor scale also move when the scale is
  recomputed, and stochastic rounding moves a lost update with probability |u|/d; ``agreement_note`` says which.

Fewer than ``analysis.min_seeds`` seeds give ``inconclusive (n seeds)`` for every decision. The rules are
printed in the ``rule`` column.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.analysis.stats import Analysis, t_interval
from pipelines.run.events import read_events

CSV = "lost_updates.csv"
REFERENCE = "bf16-amp"
LONG_PROFILE = "long_horizon"
KEYS = ("lost_pred_frac", "unchanged_frac", "lost_bias")
LATE_SHARE = 0.25  # the last quarter of training: where the cosine lr is lowest
MIN_POINTS = 3  # a correlation over fewer points says nothing
GROUP = ["profile", "model", "lr", "method"]
COLUMNS = [
    "profile",
    "model",
    "lr",
    "method",
    "n_seeds",
    "seeds",
    "n_diverged",
    "steps",
    "warmup_steps",
    "early_steps",
    "late_steps",
    "n_probes",
    "lost_pred_early_frac",
    "lost_pred_late_frac",
    "lost_pred_changes_frac",
    "lost_pred_change_mean_frac",
    "lost_pred_change_ci_lo_frac",
    "lost_pred_change_ci_hi_frac",
    "stall",
    "unchanged_early_frac",
    "unchanged_late_frac",
    "unchanged_change_mean_frac",
    "unchanged_change_ci_lo_frac",
    "unchanged_change_ci_hi_frac",
    "stall_measured",
    "lr_corr_pred_rho",
    "lr_corr_measured_rho",
    "n_evals",
    "gap_corrs_rho",
    "gap_corr_mean_rho",
    "gap_corr_ci_lo_rho",
    "gap_corr_ci_hi_rho",
    "gap_tracks",
    "biases_frac",
    "bias_mean_frac",
    "bias_ci_lo_frac",
    "bias_ci_hi_frac",
    "bias",
    "sr_statement",
    "pred_vs_measured_abs_diff_frac",
    "formats",
    "rounding",
    "agreement_note",
    "rule",
]


def rule(an: Analysis) -> str:
    ci = f"{an.confidence:.0%} Student-t interval over seeds"
    return (
        f"stall: per seed the mean lost share over the probes after the warmup up to the default horizon "
        f"(early) and over the last {LATE_SHARE:.0%} of the steps (late); grows as the lr decays if the {ci} of "
        f"late - early lies above 0, shrinks if below, holds if it contains 0; gap tracks: per seed the "
        f"Spearman correlation over the evaluations after the warmup between the paired gap vs {REFERENCE} "
        f"and the predicted lost share at the nearest probe; tracks if its {ci} lies above 0, moves against "
        f"it if below, not shown otherwise; bias: the mean lost_bias per seed, positive / negative if its "
        f"{ci} lies above / below 0, zero within the interval otherwise; SR removes the bias only if the base "
        f"recipe's bias is positive and its -sr variant's interval contains 0; fewer than {an.min_seeds} "
        f"seeds: inconclusive"
    )


def read_run(run_dir: str | Path) -> dict:
    """A run's probed steps (a frame of step, step_lr and ``KEYS``; step 0, Adam's sign step, left out), its
    warmup steps (from its run_start config) and the formats and roundings of its probed tensors (telemetry)."""
    path = Path(str(run_dir)) / "metrics.jsonl"
    rows, warmup, formats, rounding = [], None, set(), set()
    if path.is_file():
        for ev in read_events(path):
            kind = ev["event"]
            if kind == "train_step" and ev.get("probed") and ev["step"] > 0:
                rows.append({"step": ev["step"], "step_lr": ev.get("lr"), **{k: ev.get(k) for k in KEYS}})
            elif kind == "run_start":
                warmup = (ev.get("config") or {}).get("train", {}).get("warmup_steps")
            elif kind == "telemetry":
                for r in ev.get("layers", []):
                    if r.get("tensor") == "weight_update":
                        formats.add(str(r.get("format", "")))
                        rounding.add(str(r.get("rounding", "")))
    p = pd.DataFrame(rows, columns=["step", "step_lr", *KEYS]).astype(float)
    if warmup is None and len(p) and p["step_lr"].notna().any():  # no config: the warmup ends at the peak lr
        warmup = int(p.loc[p["step_lr"].idxmax(), "step"])
    return {"probes": p, "warmup": int(warmup or 0), "formats": formats - {""}, "rounding": rounding - {""}}


def spearman(x, y) -> float:
    """Spearman's rank correlation (average ranks for ties; NaN on fewer than ``MIN_POINTS`` pairs or a constant
    side)."""
    d = pd.DataFrame({"x": list(x), "y": list(y)}).astype(float).dropna()
    if len(d) < MIN_POINTS:
        return float("nan")
    rx, ry = d["x"].rank().to_numpy(), d["y"].rank().to_numpy()
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def windows(steps: int, warmup: int, default_steps: int) -> tuple[tuple[int, int], int]:
    """((first, last) step of the early window, first step of the late one)."""
    late = int(np.ceil(steps * (1 - LATE_SHARE)))
    return (warmup + 1, min(default_steps, late - 1)), late


def _mean(s: pd.Series) -> float:
    s = s.dropna()
    return float(s.mean()) if len(s) else float("nan")


def per_run(run, info: dict, gaps: pd.DataFrame, default_steps: int) -> dict:
    """One run's numbers: the windows' lost shares, the correlations with the lr and with its paired gaps (the
    rows of ``collect.eval_gaps`` of this run), its mean bias and the predicted vs measured difference."""
    p, warmup = info["probes"], info["warmup"]
    steps = int(run.steps) if pd.notna(run.steps) else int(p["step"].max() if len(p) else 0)
    (e0, e1), late = windows(steps, warmup, default_steps)
    early, tail, after = p[(p["step"] >= e0) & (p["step"] <= e1)], p[p["step"] >= late], p[p["step"] > warmup]
    out = {"steps": steps, "warmup": warmup, "early": (e0, e1), "late": late, "n_probes": len(p)}
    for key, name in (("lost_pred_frac", "pred"), ("unchanged_frac", "measured")):
        out[f"{name}_early"], out[f"{name}_late"] = _mean(early[key]), _mean(tail[key])
        out[f"{name}_change"] = out[f"{name}_late"] - out[f"{name}_early"]
        out[f"lr_corr_{name}"] = spearman(after["step_lr"], after[key])
    g = gaps[(gaps["step"] > warmup)].dropna(subset=["gap_pct"]) if len(gaps) else gaps
    ap = after.dropna(subset=["lost_pred_frac"])
    if len(g) and len(ap):
        idx = np.abs(ap["step"].to_numpy()[None, :] - g["step"].to_numpy()[:, None]).argmin(axis=1)
        out["gap_corr"], out["n_evals"] = spearman(g["gap_pct"], ap["lost_pred_frac"].to_numpy()[idx]), len(g)
    else:
        out["gap_corr"], out["n_evals"] = float("nan"), 0
    out["bias"] = _mean(p["lost_bias"])
    out["abs_diff"] = _mean((p["lost_pred_frac"] - p["unchanged_frac"]).abs())
    return out


def _decide(values, an: Analysis, above: str, below: str, within: str) -> tuple[str, object]:
    x = [float(v) for v in values if v is not None and np.isfinite(v)]
    ci = t_interval(x, an.confidence)
    if not x:
        return "n/a", ci
    if len(x) < an.min_seeds:
        return f"inconclusive ({len(x)} seed{'s' * (len(x) > 1)})", ci
    return (above if ci.lo > 0 else below if ci.hi < 0 else within), ci


def _decide_corr(values, an: Analysis, above: str, below: str, within: str) -> tuple[str, object]:
    """``_decide`` for correlations: the t interval of the mean rho, its bounds held to [-1, 1], the range a
    correlation can take (with few seeds near 1 the plain bound passes it). The word is ``_decide``'s."""
    word, ci = _decide(values, an, above, below, within)
    return word, replace(ci, lo=max(-1.0, ci.lo), hi=min(1.0, ci.hi)) if np.isfinite(ci.lo) else ci


def _join(values, digits: int = 3) -> str:
    return " / ".join("–" if not np.isfinite(v) else f"{v:+.{digits}f}" for v in values)


def agreement_note(formats: set, rounding: set) -> str:
    notes = []
    if formats - {"bf16"}:
        notes.append(
            f"{'/'.join(sorted(formats - {'bf16'}))} codes with a per-tensor scale: a code also moves (or "
            f"stays) when the scale is recomputed, so measured unchanged departs from predicted lost"
        )
    if "stochastic" in rounding:
        notes.append(
            "stochastic rounding moves a lost update with probability |u|/d and keeps a kept one with "
            "1 - |u|/d, so measured departs from predicted by design"
        )
    return "; ".join(notes) or "rounding to nearest of bf16 weights: predicted and measured agree"


def _sr_statements(table: pd.DataFrame) -> pd.Series:
    """On each ``<base>-sr`` row with its base in the same (profile, model, lr): whether SR removes the bias."""
    out = pd.Series("", index=table.index, dtype=object)
    for i, r in table.iterrows():
        base = r["method"][:-3] if r["method"].endswith("-sr") else None
        b = table[
            (table["method"] == base)
            & (table["profile"] == r["profile"])
            & (table["model"] == r["model"])
            & ((table["lr"] == r["lr"]) | (table["lr"].isna() & pd.isna(r["lr"])))
        ]
        if base is None or b.empty:
            continue
        b = b.iloc[0]
        nums = (
            f"{base} {b['bias_mean_frac']:+.3f} [{b['bias_ci_lo_frac']:+.3f}, {b['bias_ci_hi_frac']:+.3f}], "
            f"{r['method']} {r['bias_mean_frac']:+.3f} [{r['bias_ci_lo_frac']:+.3f}, {r['bias_ci_hi_frac']:+.3f}]"
        )
        if b["bias"] == "positive" and r["bias"] == "zero within the interval":
            out[i] = f"SR removes the bias ({nums})"
        elif b["bias"] == "positive" and r["bias"] in ("positive", "negative"):
            out[i] = f"SR leaves a {r['bias']} bias ({nums})"
        elif b["bias"] == "positive":
            out[i] = f"not shown whether SR removes the bias: {r['bias']} ({nums})"
        else:
            out[i] = f"no bias of {base} shown to remove: {b['bias']} ({nums})"
    return out


def lost_updates(runs: pd.DataFrame, default_steps: int, an: Analysis) -> pd.DataFrame:
    """One row per (profile, model, lr, recipe) with probed runs in ``runs`` (summary rows: profile, model,
    method, seed, lr, status, steps, run_dir); the paired gaps come from ``runs``' bf16-amp at the same seed."""
    from pipelines.analysis.collect import eval_gaps

    if runs.empty:
        return pd.DataFrame(columns=COLUMNS)
    infos = {r.run_dir: read_run(r.run_dir) for r in runs.itertuples()}
    probed = runs[[len(infos[d]["probes"]) > 0 for d in runs["run_dir"]]]
    if probed.empty:
        return pd.DataFrame(columns=COLUMNS)
    pair = ["profile", "model", "lr", "seed"]
    key = probed[pair].drop_duplicates()
    needed = runs.merge(key, on=pair)
    needed = needed[needed["method"].isin([*probed["method"].unique(), REFERENCE])]
    gaps = eval_gaps(needed)
    rows = []
    for (profile, model, lr, method), g in probed.groupby(GROUP, sort=False, dropna=False):
        per = []
        for r in g.sort_values("seed").itertuples():
            mine = gaps[
                (gaps["profile"] == profile)
                & (gaps["model"] == model)
                & (gaps["method"] == method)
                & (gaps["seed"] == r.seed)
                & ((gaps["lr"] == lr) | (gaps["lr"].isna() & pd.isna(lr)))
            ]
            per.append({"seed": int(r.seed), "status": r.status, **per_run(r, infos[r.run_dir], mine, default_steps)})
        per = pd.DataFrame(per)
        ok = per[per["status"] == "ok"]
        stall, pc = _decide(ok["pred_change"], an, "grows as the lr decays", "shrinks as the lr decays", "holds")
        stall_m, mc = _decide(ok["measured_change"], an, "grows as the lr decays", "shrinks as the lr decays", "holds")
        tracks, gc = _decide_corr(per["gap_corr"], an, "tracks", "moves against it", "not shown")
        if not np.isfinite(per["gap_corr"]).any():
            tracks = (
                f"n/a (no {REFERENCE} evaluations at the same seed)"
                if not per["n_evals"].any()
                else f"n/a (fewer than {MIN_POINTS} evaluations after the warmup, or a constant side)"
            )
        bias, bc = _decide(per["bias"], an, "positive", "negative", "zero within the interval")
        first = ok.iloc[0] if len(ok) else per.iloc[0]
        formats = set().union(*(infos[d]["formats"] for d in g["run_dir"]))
        rounding = set().union(*(infos[d]["rounding"] for d in g["run_dir"]))
        rows.append(
            {
                "profile": profile,
                "model": model,
                "lr": lr,
                "method": method,
                "n_seeds": len(per),
                "seeds": ",".join(str(s) for s in per["seed"]),
                "n_diverged": int((per["status"] == "diverged").sum()),
                "steps": int(per["steps"].max()),
                "warmup_steps": int(first["warmup"]),
                "early_steps": f"{first['early'][0]}-{first['early'][1]}",
                "late_steps": f"{first['late']}-{first['steps']}",
                "n_probes": int(per["n_probes"].min()),
                "lost_pred_early_frac": _mean(ok["pred_early"]),
                "lost_pred_late_frac": _mean(ok["pred_late"]),
                "lost_pred_changes_frac": _join(ok["pred_change"]),
                "lost_pred_change_mean_frac": pc.mean,
                "lost_pred_change_ci_lo_frac": pc.lo,
                "lost_pred_change_ci_hi_frac": pc.hi,
                "stall": stall,
                "unchanged_early_frac": _mean(ok["measured_early"]),
                "unchanged_late_frac": _mean(ok["measured_late"]),
                "unchanged_change_mean_frac": mc.mean,
                "unchanged_change_ci_lo_frac": mc.lo,
                "unchanged_change_ci_hi_frac": mc.hi,
                "stall_measured": stall_m,
                "lr_corr_pred_rho": _mean(per["lr_corr_pred"]),
                "lr_corr_measured_rho": _mean(per["lr_corr_measured"]),
                "n_evals": int(per["n_evals"].min()),
                "gap_corrs_rho": _join(per["gap_corr"], 2),
                "gap_corr_mean_rho": gc.mean,
                "gap_corr_ci_lo_rho": gc.lo,
                "gap_corr_ci_hi_rho": gc.hi,
                "gap_tracks": tracks,
                "biases_frac": _join(per["bias"]),
                "bias_mean_frac": bc.mean,
                "bias_ci_lo_frac": bc.lo,
                "bias_ci_hi_frac": bc.hi,
                "bias": bias,
                "sr_statement": "",
                "pred_vs_measured_abs_diff_frac": _mean(per["abs_diff"]),
                "formats": "/".join(sorted(formats)),
                "rounding": "/".join(sorted(rounding)),
                "agreement_note": agreement_note(formats, rounding),
                "rule": rule(an),
            }
        )
    table = pd.DataFrame(rows, columns=COLUMNS)
    table = table.sort_values(GROUP, kind="stable", na_position="first").reset_index(drop=True)  # base before -sr
    table["sr_statement"] = _sr_statements(table)
    return table


def runs_with_probes(results: str | Path, summary_csv: str | Path | None = None) -> pd.DataFrame:
    """The long_horizon runs on disk and the summary's runs (one row per profile, model, method, seed, lr)."""
    from pipelines.analysis.collect import runs_on_disk

    parts = [runs_on_disk(results, LONG_PROFILE)]
    if summary_csv and Path(summary_csv).is_file():
        try:
            parts.append(pd.read_csv(summary_csv))
        except pd.errors.EmptyDataError:
            pass
    parts = [p for p in parts if len(p)]
    if not parts:
        return pd.DataFrame()
    cols = ["profile", "model", "method", "seed", "lr", "status", "steps", "run_dir"]
    df = pd.concat([p[cols] for p in parts], ignore_index=True)
    df["lr"] = pd.to_numeric(df["lr"], errors="coerce")
    return df.drop_duplicates(["profile", "model", "method", "seed", "lr"]).reset_index(drop=True)


def probe_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """The probed steps of ``runs`` as one frame (the figures' input): profile, model, method, seed, lr, status,
    step, step_lr and ``KEYS``."""
    frames = []
    for r in runs.itertuples():
        p = read_run(r.run_dir)["probes"]
        if len(p):
            frames.append(
                p.assign(profile=r.profile, model=r.model, method=r.method, seed=r.seed, lr=r.lr, status=r.status)
            )
    cols = ["profile", "model", "method", "seed", "lr", "status", "step", "step_lr", *KEYS]
    return pd.concat(frames, ignore_index=True)[cols] if frames else pd.DataFrame(columns=cols)
