"""Run summaries → ``results/summary.csv``: one tidy row per run, with the paired loss gap and speedup
against ``bf16-amp`` at the same profile, model, seed and lr; and ``results/eval_gaps.csv``: the paired gap
at every evaluation step, from the runs' ``metrics.jsonl``.

    python -m pipelines.analysis.collect --out results/summary.csv results/runs/cpu/*/*/seed*/summary.json
    python -m pipelines.analysis.collect --out results/summary.csv --profile cpu      # finds them itself
"""

from __future__ import annotations

import argparse
import glob
import json
from pathlib import Path

import pandas as pd

from common.atomic import write_csv
from pipelines.run.events import read_events

REFERENCE = "bf16-amp"
COLUMNS = [
    "profile",
    "model",
    "method",
    "seed",
    "lr",
    "device",
    "world_size",
    "n_params",
    "steps",
    "tokens",
    "status",
    "reason",
    "diverged_step",
    "initial_val_loss",
    "final_train_loss",
    "final_val_loss",
    "loss_gap_pct",
    "tokens_per_s",
    "speedup",
    "step_time_s",
    "state_bytes_per_param",
    "weights_bytes",
    "master_bytes",
    "grads_bytes",
    "optim_bytes",
    "meta_bytes",
    "state_bytes",
    "peak_mem_bytes",
    "peak_mem_kind",
    "wall_time_s",
    "run_dir",
    "weight_codes_unchanged_frac_mean",
    "saturated_frac_max",
    "saturated_frac_mean",
    "underflow_frac_max",
    "underflow_frac_mean",
    "lost_pred_frac_mean",
    "unchanged_frac_mean",
    "lost_bias_mean",
]
#: FP8 linear telemetry fractions summarized per run (max and mean over layers, tensors and logged steps)
FRACTIONS = {"saturated": "saturated_frac_window", "underflow": "underflow_frac_window"}


def load_summaries(paths: list[str | Path]) -> pd.DataFrame:
    rows = []
    for p in paths:
        with open(p, encoding="utf-8") as f:
            row = json.load(f)
        # the folder the summary lies in: the run_dir it records is relative to where the workflow ran, and
        # the report reads runs on disk from elsewhere too (another profile's results, a copy)
        row["run_dir"] = str(Path(p).parent)
        rows.append(row)
    df = pd.DataFrame(rows)
    for c in COLUMNS:
        if c not in df:
            df[c] = pd.NA
    return df


def run_events(run_dir: str | Path) -> tuple[list[dict], float]:
    """A run's evaluations (step, val_loss) and the mean share of FP8 weight codes a step left unchanged
    (``unchanged_frac`` telemetry of fp8-naive's E4M3 weights, over layers and logged steps after the first; NaN
    without)."""
    path = Path(str(run_dir)) / "metrics.jsonl"
    evals, unchanged = [], []
    if path.is_file():
        for ev in read_events(path):
            if ev["event"] == "eval" and ev.get("val_loss") is not None:
                evals.append({"step": ev["step"], "val_loss": ev["val_loss"]})
            elif ev["event"] == "telemetry" and ev["step"] > 0:
                unchanged += [
                    r["unchanged_frac"]
                    for r in ev.get("layers", [])
                    if r.get("unchanged_frac") is not None and r.get("format", "e4m3") == "e4m3"
                ]
    return evals, (sum(unchanged) / len(unchanged) if unchanged else float("nan"))


def fp8_fractions(run_dir: str | Path) -> dict[str, float]:
    """Max and mean, over FP8 layers, quantized tensors and logged steps, of the saturated and underflowed
    fractions each telemetry window saw (``saturated_frac_max`` ...); NaN for runs without FP8 linears."""
    path = Path(str(run_dir)) / "metrics.jsonl"
    seen: dict[str, list[float]] = {k: [] for k in FRACTIONS}
    if path.is_file():
        for ev in read_events(path):
            if ev["event"] == "telemetry":
                for r in ev.get("layers", []):
                    for k, field in FRACTIONS.items():
                        if r.get(field) is not None:
                            seen[k].append(float(r[field]))
    out = {}
    for k, v in seen.items():
        out[f"{k}_frac_max"] = max(v) if v else float("nan")
        out[f"{k}_frac_mean"] = sum(v) / len(v) if v else float("nan")
    return out


def runs_on_disk(results: str | Path, *profiles: str) -> pd.DataFrame:
    """The finished runs of ``profiles`` under ``results/runs/`` (their summary.json), with the paired
    columns; empty if none. What a report shows of a study while another profile's summary is current."""
    paths = sorted(p for prof in profiles for p in glob.glob(f"{results}/runs/{prof}/*/*/*/summary.json"))
    return add_reference_columns(load_summaries(paths)) if paths else pd.DataFrame()


def eval_gaps(df: pd.DataFrame, reference: str = REFERENCE) -> pd.DataFrame:
    """One row per (run, eval step): its val loss, the reference's at the same seed, lr and step, and the
    paired gap in %. Runs that stopped early (diverged, failed) keep the evaluations they reached."""
    rows = []
    for r in df.itertuples():
        for ev in run_events(r.run_dir)[0]:
            rows.append(
                {
                    "profile": r.profile,
                    "model": r.model,
                    "method": r.method,
                    "lr": r.lr,
                    "seed": r.seed,
                    "status": r.status,
                    **ev,
                }
            )
    cols = ["profile", "model", "method", "lr", "seed", "status", "step", "val_loss"]
    ev = pd.DataFrame(rows, columns=cols)
    keys = ["profile", "model", "lr", "seed", "step"]
    ref = ev[(ev["method"] == reference) & (ev["status"] == "ok")][keys + ["val_loss"]]
    ref = ref.drop_duplicates(keys).rename(columns={"val_loss": "ref_val_loss"})
    out = ev.merge(ref, on=keys, how="left")
    out["gap_pct"] = 100.0 * (out["val_loss"] - out["ref_val_loss"]) / out["ref_val_loss"]
    return out.sort_values(["profile", "model", "method", "lr", "seed", "step"], kind="stable").reset_index(drop=True)


def add_reference_columns(df: pd.DataFrame, reference: str = REFERENCE) -> pd.DataFrame:
    """``loss_gap_pct`` = 100 (val - ref) / ref and ``speedup`` = tokens/s / ref tokens/s, where ref is
    ``reference`` at the same (profile, model, seed, lr) and finished ok; NaN where there is none."""
    keys = ["profile", "model", "seed", "lr"]
    ref = df[(df["method"] == reference) & (df["status"] == "ok")][keys + ["final_val_loss", "tokens_per_s"]]
    ref = ref.drop_duplicates(keys)
    ref = ref.rename(columns={"final_val_loss": "_ref_val", "tokens_per_s": "_ref_tps"})
    out = df.drop(columns=["loss_gap_pct", "speedup"], errors="ignore").merge(ref, on=keys, how="left")
    val = pd.to_numeric(out["final_val_loss"], errors="coerce")
    out["loss_gap_pct"] = 100.0 * (val - out["_ref_val"]) / out["_ref_val"]
    out["speedup"] = pd.to_numeric(out["tokens_per_s"], errors="coerce") / out["_ref_tps"]
    return out.drop(columns=["_ref_val", "_ref_tps"])


def collect(paths: list[str | Path]) -> pd.DataFrame:
    if not paths:
        raise SystemExit("no summary.json files to collect")
    df = add_reference_columns(load_summaries(paths))
    df["weight_codes_unchanged_frac_mean"] = [run_events(d)[1] for d in df["run_dir"]]
    fr = pd.DataFrame([fp8_fractions(d) for d in df["run_dir"]], index=df.index)
    for c in fr.columns:
        df[c] = fr[c]
    extra = [c for c in df.columns if c not in COLUMNS]
    df = df[COLUMNS + sorted(extra)]
    return df.sort_values(["profile", "model", "method", "seed"], kind="stable").reset_index(drop=True)


def write_all(df: pd.DataFrame, summary_csv: str | Path) -> Path:
    """summary.csv and, beside it, eval_gaps.csv; returns the latter's path."""
    summary_csv = Path(summary_csv)
    gaps = summary_csv.parent / "eval_gaps.csv"
    write_csv(eval_gaps(df), gaps)
    write_csv(df, summary_csv)
    return gaps


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines.analysis.collect", description=__doc__.split("\n\n")[0])
    ap.add_argument("summaries", nargs="*")
    ap.add_argument("--profile", help="collect every results/runs/<profile>/*/*/*/summary.json")
    ap.add_argument("--results-dir", default="results")
    ap.add_argument("--out", default="results/summary.csv")
    args = ap.parse_args(argv)
    paths = list(args.summaries)
    if args.profile:
        paths += sorted(glob.glob(f"{args.results_dir}/runs/{args.profile}/*/*/*/summary.json"))
    df = collect(paths)
    write_all(df, args.out)
    print(f"{args.out}: {len(df)} runs ({', '.join(f'{k} {v}' for k, v in df['status'].value_counts().items())})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
