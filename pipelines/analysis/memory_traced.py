"""Traced memory at full size for the workflow: one table per (model, seq_len), merged, and "does it fit".

    python -m pipelines.analysis.memory_traced trace --model 10b --seq-len 2048 4096 --out results/memory_traced/10b.csv
    python -m pipelines.analysis.memory_traced merge --out results/memory_traced.csv \
        --fit results/memory_fit.csv PART...

``trace`` runs ``methods.memory_trace.trace_steps`` (real training steps under fake tensors: one to make the
optimizer state, then one per sequence length) for every registered method at micro-batch 1, in one
process, and writes one row per method and length: ``status`` ``ok`` with
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
import dataclasses
import math
import sys
from pathlib import Path

import pandas as pd

from common.atomic import atomic_path

GIB = 2**30


def trace_rows(
    model: str, seq_lens: list[int], methods: list[str] | None = None, batch_size: int = 1, variants: dict | None = None
) -> list[dict]:
    """Every method (or ``methods``), then each of ``variants`` (name → {method, options}) whose method is
    among them."""
    from methods.memory import COMPONENTS
    from methods.memory_trace import UntraceableError, peak_rss_bytes, trace_steps, untraceable_row
    from methods.registry import get_method, method_names
    from models.config import get_model_config

    cfg = get_model_config(model)
    names = list(methods or method_names())
    todo = [(n, get_method(n)) for n in names] + [
        (n, get_method(v["method"], **v.get("options", {})))
        for n, v in (variants or {}).items()
        if v["method"] in names
    ]
    rows = []
    for name, m in todo:
        try:
            traces = trace_steps(m, cfg, batch_size, seq_lens, model_name=model)
        except UntraceableError as e:
            rows += [untraceable_row(name, model, batch_size, s, str(e)) for s in seq_lens]
            print(f"{name}: untraceable: {e}", flush=True)
            continue
        analytic = float(sum(m.analytic_bytes(cfg).get(c, 0.0) for c in COMPONENTS))
        for t in traces:
            row = {**t.row(), "method": name}  # a variant's rows carry its own name, not its method's
            row["analytic_bytes"] = analytic
            row["persistent_vs_analytic_pct"] = 100 * (row["persistent_bytes"] - analytic) / analytic
            row["rss_after_bytes"] = peak_rss_bytes()
            rows.append(row)
            print(
                f"{name} seq {t.seq_len}: persistent {t.persistent / GIB:.2f} GiB, peak {t.peak_total / GIB:.2f} GiB "
                f"({t.peak_phase}), traced in {t.trace_s:.1f} s",
                flush=True,
            )
    return rows


def rank_rows(
    model: str, seq_lens: list[int], methods: list[str] | None = None, batch_size: int = 1, ranks: int = 8
) -> list[dict]:
    """Rank 0 of ``ranks`` for every multi-rank method (or ``methods``): traced (FSDP2 itself, ZeRO-2/3
    through their FSDP2 stand-ins) or untraceable with the reason, plus DeepSpeed's own analytic estimate
    of its model states where it has one. ``batch_size`` is the micro-batch per rank."""
    from dataclasses import replace

    from methods._ranks import MultiRank
    from methods.memory import COMPONENTS
    from methods.memory_trace import UntraceableError, peak_rss_bytes, rank_stand_in, trace_rank_steps, untraceable_row
    from methods.registry import get_method, method_names
    from models.config import get_model_config

    cfg = get_model_config(model)
    rows = []
    done: dict = {}  # one trace per FSDP2 configuration: ZeRO-3's stand-in is fsdp2-bf16 itself
    for name in methods or method_names():
        m = get_method(name)
        if not isinstance(m, MultiRank):
            continue
        own = float(sum(replace(m, ranks=ranks).analytic_bytes(cfg).get(c, 0.0) for c in COMPONENTS))
        estimate = getattr(m, "deepspeed_estimate", lambda *_: None)(cfg, ranks)
        base = {
            "ranks": ranks,
            "method_analytic_bytes": own,
            "deepspeed_estimate_bytes": float("nan") if estimate is None else float(estimate),
        }
        try:
            traced, label = rank_stand_in(m)
            key = (traced.name, tuple(sorted(traced.options().items())))
            if key not in done:
                done[key] = trace_rank_steps(m, cfg, batch_size, seq_lens, model_name=model, ranks=ranks)
            traces = [dataclasses.replace(t, method=name, extra={**t.extra, "traced_as": label}) for t in done[key]]
        except UntraceableError as e:
            rows += [{**untraceable_row(name, model, batch_size, s, str(e)), **base} for s in seq_lens]
            print(f"{name}: untraceable per rank: {e}", flush=True)
            continue
        analytic = float(sum(replace(traced, ranks=ranks).analytic_bytes(cfg).get(c, 0.0) for c in COMPONENTS))
        for t in traces:
            row = {
                **t.row(),
                **base,
                "analytic_bytes": analytic,
                "persistent_vs_analytic_pct": 100 * (t.persistent - analytic) / analytic,
                "rss_after_bytes": peak_rss_bytes(),
            }
            rows.append(row)
            print(
                f"{name} seq {t.seq_len}, rank 0 of {ranks} ({t.extra['traced_as']}): persistent "
                f"{t.persistent / GIB:.2f} GiB, peak {t.peak_total / GIB:.2f} GiB ({t.peak_phase}), "
                f"traced in {t.trace_s:.1f} s",
                flush=True,
            )
    return rows


PHASES = ("forward", "backward", "optimizer", "loop")


def phase_lines(short: pd.Series, long: pd.Series) -> dict[str, tuple[float, float]]:
    """Per phase, (fixed bytes, bytes per token) of its traced peak, from two traces of one method and size
    that differ only in tokens per micro-batch (micro-batch 1 at two sequence lengths)."""
    t1, t2 = (int(r["batch_size"]) * int(r["seq_len"]) for r in (short, long))
    if t1 == t2:
        raise ValueError(
            f"two traces of {short['method']} at {short['model']} with the same {t1} tokens: "
            "each (method, model, seq_len) must be traced once"
        )
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


def fit_table(
    traced: pd.DataFrame, devices: dict[str, float], seq_len: int, reserve_gib: float, margin: float
) -> pd.DataFrame:
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
            rows.append(
                {
                    "method": method,
                    "model": model,
                    "seq_len": seq_len,
                    "device": dev,
                    "capacity_gib": cap_gib,
                    "usable_gib": usable / GIB,
                    "max_micro_batch": max_micro_batch(lines, seq_len, usable),
                    "peak_b1_gib": float(at["peak_bytes"]) / GIB,
                    "per_sample_gib": max(pt for _, pt in lines.values()) * seq_len / GIB,
                    "persistent_gib": float(at["persistent_bytes"]) / GIB,
                }
            )
    return pd.DataFrame(rows)


def write_csv(df: pd.DataFrame, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".csv") as tmp:
        df.to_csv(tmp, index=False)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m pipelines.analysis.memory_traced", description=__doc__.split("\n\n")[0]
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("trace", help="trace every method (or --methods) at one model size and its seq_lens")
    t.add_argument("--model", required=True)
    t.add_argument("--seq-len", type=int, nargs="+", required=True)
    t.add_argument("--batch-size", type=int, default=1)
    t.add_argument("--methods", nargs="*")
    t.add_argument("--out", required=True)
    t.add_argument("--variants", default="{}", help="JSON: variant name -> {method, options}, traced too")
    t.add_argument(
        "--ranks",
        type=int,
        default=0,
        help="0: the single-process methods; N: rank 0 of N for the multi-rank ones (fake process group)",
    )
    mg = sub.add_parser("merge", help="merge the per-size tables and derive the fit table")
    mg.add_argument("parts", nargs="+")
    mg.add_argument("--out", required=True)
    mg.add_argument("--fit", required=True)
    mg.add_argument("--settings", help="memory_trace settings as JSON (default: pipelines/config.yaml's)")
    mg.add_argument("--ranks-out", help="the per-rank traces, merged (written empty of rows when none ran)")
    mg.add_argument("--rank-parts", nargs="*", default=[])
    args = ap.parse_args(argv)
    import json

    if args.cmd == "trace":
        from methods.registry import method_names
        from models.config import SIZES

        if args.model not in SIZES:
            ap.error(f"unknown model {args.model!r}; valid: {', '.join(SIZES)}")
        if min(args.seq_len) < 1:
            ap.error("--seq-len must be >= 1")
        if args.batch_size < 1:
            ap.error("--batch-size must be >= 1")
        bad = sorted(set(args.methods or []) - set(method_names()))
        if bad:
            ap.error(f"unknown method(s) {bad}; valid: {', '.join(method_names())}")
        if args.ranks < 0 or args.ranks == 1:
            ap.error("--ranks must be 0 (single process) or >= 2")
        rows = (
            rank_rows(args.model, args.seq_len, args.methods, args.batch_size, args.ranks)
            if args.ranks
            else trace_rows(args.model, args.seq_len, args.methods, args.batch_size, json.loads(args.variants))
        )
        # no rows (no method of the list is of this kind): the header alone, which the merge reads
        write_csv(
            pd.DataFrame(rows) if rows else pd.DataFrame(columns=["method", "model", "seq_len", "status"]), args.out
        )
        return 0
    from pipelines.run.config import load

    settings = json.loads(args.settings) if args.settings else load()["memory_trace"]
    traced = pd.concat([pd.read_csv(p) for p in args.parts], ignore_index=True)
    write_csv(traced, args.out)
    fit_args = (settings["devices"], settings["fit_seq_len"], settings["reserve_gib"], settings["margin"])
    fit = fit_table(traced, *fit_args).assign(ranks=1)
    if args.ranks_out:
        ranks = (
            pd.concat([pd.read_csv(p) for p in args.rank_parts], ignore_index=True)
            if args.rank_parts
            else pd.DataFrame(columns=["method", "model", "ranks", "seq_len", "status", "reason"])
        )
        write_csv(ranks, args.ranks_out)
        if not ranks.empty and (ranks["status"] == "ok").any():  # micro-batch per rank, each rank its device
            per_rank = [fit_table(g, *fit_args).assign(ranks=int(r)) for r, g in ranks.groupby("ranks")]
            fit = pd.concat([fit, *per_rank], ignore_index=True)
    write_csv(fit, args.fit)
    print(f"wrote {args.out} ({len(traced)} rows) and {args.fit}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
