"""Traced memory at full size for the workflow: one table per (model, seq_len), merged, and "does it fit".

    python -m pipelines.memory_traced trace --model 10b --seq-len 4096 --out results/memory_traced/10b_s4096.csv
    python -m pipelines.memory_traced merge --out results/memory_traced.csv --fit results/memory_fit.csv PART...

``trace`` runs ``methods.memory_trace.trace_step`` (two real training steps under fake tensors) for every
registered method at micro-batch 1, in one process, and writes one row per method: ``status`` ``ok`` with
bytes by component, or ``untraceable`` with the reason (multi-rank engines, CUDA-only engines). Each row
carries the analytic model's persistent bytes (``methods.memory``) and the traced-vs-analytic difference.

``merge`` concatenates the parts and derives the fit table: for each device (``memory_trace.devices``
in pipelines/config.yaml) the largest micro-batch at ``fit_seq_len`` whose traced peak fits. Activations
and temporaries grow linearly with the tokens of a micro-batch (every saved tensor and every temporary of
the step is (batch, seq, ...)-shaped or independent of the batch; ``tests/test_memory_trace.py`` checks
the phase peaks at micro-batches 1-3 against this exactly), so each phase's peak at micro-batch b is its
traced fixed part plus b times its traced activations and temporaries.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd

from pipelines.atomic import atomic_path

GIB = 2 ** 30


def trace_rows(model: str, seq_len: int, methods: list[str] | None = None, batch_size: int = 1) -> list[dict]:
    from methods.memory import COMPONENTS
    from methods.memory_trace import UntraceableError, peak_rss_bytes, trace_step, untraceable_row
    from methods.registry import get_method, method_names
    from models.config import get_model_config

    cfg = get_model_config(model)
    rows = []
    for name in methods or method_names():
        m = get_method(name)
        try:
            t = trace_step(m, cfg, batch_size, seq_len, model_name=model)
        except UntraceableError as e:
            rows.append(untraceable_row(name, model, batch_size, seq_len, str(e)))
            print(f"{name}: untraceable: {e}", flush=True)
            continue
        row = t.row()
        analytic = m.analytic_bytes(cfg)
        row["analytic_bytes"] = float(sum(analytic.get(c, 0.0) for c in COMPONENTS))
        row["persistent_vs_analytic_pct"] = 100 * (row["persistent_bytes"] - row["analytic_bytes"]) / row["analytic_bytes"]
        row["rss_after_bytes"] = peak_rss_bytes()
        rows.append(row)
        print(f"{name}: persistent {t.persistent / GIB:.2f} GiB, peak {t.peak_total / GIB:.2f} GiB "
              f"({t.peak_phase}), traced in {t.trace_s:.1f} s", flush=True)
    return rows


PHASES = ("forward", "backward", "optimizer", "loop")


def phase_lines(short: pd.Series, long: pd.Series) -> dict[str, tuple[float, float]]:
    """Per phase, (fixed bytes, bytes per token) of its traced peak, from two traces of one method and size
    that differ only in tokens per micro-batch (micro-batch 1 at two sequence lengths)."""
    t1, t2 = (int(r["batch_size"]) * int(r["seq_len"]) for r in (short, long))
    out = {}
    for phase in PHASES:
        p1, p2 = float(short[f"peak_{phase}_bytes"]), float(long[f"peak_{phase}_bytes"])
        per_token = max(0.0, (p2 - p1) / (t2 - t1))
        out[phase] = (p2 - per_token * t2, per_token)
    return out


def max_micro_batch(lines: dict[str, tuple[float, float]], seq_len: int, usable_bytes: float) -> int:
    """Largest micro-batch at ``seq_len`` whose every phase peak fits ``usable_bytes``; 0 if none does."""
    best = math.inf
    for fixed, per_token in lines.values():
        if fixed + per_token * seq_len > usable_bytes:
            return 0
        if per_token > 0:
            best = min(best, math.floor((usable_bytes - fixed) / (per_token * seq_len)))
    return int(best) if math.isfinite(best) else 1 << 20


def fit_table(traced: pd.DataFrame, devices: dict[str, float], seq_len: int, reserve_gib: float,
              margin: float) -> pd.DataFrame:
    """Per (method, model, device): the largest micro-batch at ``seq_len`` that fits. Each phase's peak is
    linear in the tokens of a micro-batch (activations and temporaries are (batch, seq, ...)-shaped; flash
    attention keeps none that grows with seq²), so the two traced sequence lengths at micro-batch 1 give
    it at any micro-batch. A device's usable bytes are (capacity − reserve) / (1 + margin): the reserve for
    what no trace sees (CUDA context, cuBLAS workspaces), the margin for allocator rounding and
    fragmentation."""
    ok = traced[(traced["status"] == "ok") & (traced["batch_size"] == 1)]
    rows = []
    for (method, model), g in ok.groupby(["method", "model"], sort=False):
        g = g.sort_values("seq_len")
        if len(g) < 2 or seq_len not in set(g["seq_len"]):
            continue
        lines = phase_lines(g.iloc[-2], g.iloc[-1])
        at = g[g["seq_len"] == seq_len].iloc[0]
        for dev, cap_gib in devices.items():
            usable = (cap_gib - reserve_gib) * GIB / (1 + margin)
            rows.append({"method": method, "model": model, "seq_len": seq_len, "device": dev,
                         "capacity_gib": cap_gib, "usable_gib": usable / GIB,
                         "max_micro_batch": max_micro_batch(lines, seq_len, usable),
                         "peak_b1_gib": float(at["peak_bytes"]) / GIB,
                         "per_sample_gib": max(pt for _, pt in lines.values()) * seq_len / GIB,
                         "persistent_gib": float(at["persistent_bytes"]) / GIB})
    return pd.DataFrame(rows)


def write_csv(df: pd.DataFrame, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".csv") as tmp:
        df.to_csv(tmp, index=False)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines.memory_traced", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("trace", help="trace every method (or --methods) at one model size and seq_len")
    t.add_argument("--model", required=True)
    t.add_argument("--seq-len", type=int, required=True)
    t.add_argument("--batch-size", type=int, default=1)
    t.add_argument("--methods", nargs="*")
    t.add_argument("--out", required=True)
    mg = sub.add_parser("merge", help="merge the per-size tables and derive the fit table")
    mg.add_argument("parts", nargs="+")
    mg.add_argument("--out", required=True)
    mg.add_argument("--fit", required=True)
    mg.add_argument("--settings", help="memory_trace settings as JSON (default: pipelines/config.yaml's)")
    args = ap.parse_args(argv)
    if args.cmd == "trace":
        from methods.registry import method_names
        from models.config import SIZES

        if args.model not in SIZES:
            ap.error(f"unknown model {args.model!r}; valid: {', '.join(SIZES)}")
        if args.seq_len < 1:
            ap.error("--seq-len must be >= 1")
        if args.batch_size < 1:
            ap.error("--batch-size must be >= 1")
        bad = sorted(set(args.methods or []) - set(method_names()))
        if bad:
            ap.error(f"unknown method(s) {bad}; valid: {', '.join(method_names())}")
        write_csv(pd.DataFrame(trace_rows(args.model, args.seq_len, args.methods, args.batch_size)), args.out)
        return 0
    import json

    from pipelines.config import load

    settings = json.loads(args.settings) if args.settings else load()["memory_trace"]
    traced = pd.concat([pd.read_csv(p) for p in args.parts], ignore_index=True)
    write_csv(traced, args.out)
    write_csv(fit_table(traced, settings["devices"], settings["fit_seq_len"], settings["reserve_gib"],
                        settings["margin"]), args.fit)
    print(f"wrote {args.out} ({len(traced)} rows) and {args.fit}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
