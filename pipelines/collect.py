"""Run summaries → ``results/summary.csv``: one tidy row per run, with the loss gap and speedup
against ``bf16-amp`` at the same profile, model and seed.

    python -m pipelines.collect --out results/summary.csv results/runs/cpu/*/*/seed*/summary.json
    python -m pipelines.collect --out results/summary.csv --profile cpu      # finds them itself
"""
from __future__ import annotations

import argparse
import glob
import json
from pathlib import Path

import pandas as pd

from pipelines.atomic import atomic_path

REFERENCE = "bf16-amp"
COLUMNS = [
    "profile", "model", "method", "seed", "lr", "device", "world_size", "n_params", "steps", "tokens", "status", "reason",
    "diverged_step", "initial_val_loss", "final_train_loss", "final_val_loss", "loss_gap_pct", "tokens_per_s",
    "speedup", "step_time_s", "state_bytes_per_param", "weights_bytes", "master_bytes", "grads_bytes",
    "optim_bytes", "meta_bytes", "state_bytes", "peak_mem_bytes", "peak_mem_kind", "wall_time_s", "run_dir",
]


def load_summaries(paths: list[str | Path]) -> pd.DataFrame:
    rows = []
    for p in paths:
        with open(p, encoding="utf-8") as f:
            row = json.load(f)
        row.setdefault("run_dir", str(Path(p).parent))
        rows.append(row)
    df = pd.DataFrame(rows)
    for c in COLUMNS:
        if c not in df:
            df[c] = pd.NA
    return df


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
    extra = [c for c in df.columns if c not in COLUMNS]
    df = df[COLUMNS + sorted(extra)]
    return df.sort_values(["profile", "model", "method", "seed"], kind="stable").reset_index(drop=True)


def write_csv(df: pd.DataFrame, path: str | Path) -> None:
    with atomic_path(path, suffix=".csv") as tmp:
        df.to_csv(tmp, index=False)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines.collect", description=__doc__.split("\n\n")[0])
    ap.add_argument("summaries", nargs="*")
    ap.add_argument("--profile", help="collect every results/runs/<profile>/*/*/*/summary.json")
    ap.add_argument("--results-dir", default="results")
    ap.add_argument("--out", default="results/summary.csv")
    args = ap.parse_args(argv)
    paths = list(args.summaries)
    if args.profile:
        paths += sorted(glob.glob(f"{args.results_dir}/runs/{args.profile}/*/*/*/summary.json"))
    df = collect(paths)
    write_csv(df, args.out)
    print(f"{args.out}: {len(df)} runs ({', '.join(f'{k} {v}' for k, v in df['status'].value_counts().items())})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
