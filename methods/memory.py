"""Analytic memory model: persistent bytes per component for every method, at any model size.

``Trainee.memory()`` measures what a run holds (``methods.ledger``); this module predicts the same
components from a model config without allocating anything, so the two can be checked against each
other on the tiny model (``tests/test_memory_model.py``) and the prediction extended to sizes no
machine here can hold. Each method states its own bytes through ``Method.analytic_bytes(cfg)``; the
default (below) reads the dtypes in ``Method.stores``, and methods with scales, quantized states,
FP8 weight copies or amax histories override it.

Next to the methods stand the article's rows (16 / 12 / 6 B per parameter: fp32, bf16 "mixed precision",
FP8 optimizer states; no master copy, no scales) and a few reference recipes that are not run here but
that the article's arithmetic is usually compared with, labelled as such.

``python -m methods.memory --params 10e9 [--json]`` prints the table; :func:`analytic_table` returns it
as data for the report and its figures. ``python -m methods.memory trace --model 10b --method fp8-e2e
--batch-size 1 --seq-len 4096`` traces the real step instead (``methods.memory_trace``): persistent state
and the peak with activations, measured.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass

from methods.analytic import (  # noqa: F401 - the analytic model's per-method pieces, re-exported
    COMPONENTS,
    STEP_BYTES,
    converted_buffer_bytes,
    default_analytic_bytes,
    dtype_bytes,
    param_numels,
)
from models.config import ModelConfig


# ---- sizes ---------------------------------------------------------------------------------------
def config_for_params(n_params: float, vocab_size: int = 32000) -> ModelConfig:
    """A Llama-shaped config near ``n_params``: width/depth 128 (as GPT-3 175B, Llama-2 7B/13B), heads
    of 128, SwiGLU width 8/3 d. Only the small terms (per-tensor counters, block padding) depend on
    the shape; bytes per parameter times ``n_params`` is what the table reports."""
    d = max(256, 128 * round((n_params * 128 / 12) ** (1 / 3) / 128))
    n_layers = max(1, round((n_params - 2 * vocab_size * d) / (12 * d * d)))
    ffn = 256 * max(1, round(8 * d / 3 / 256))
    return ModelConfig(dim=d, n_layers=n_layers, n_heads=d // 128, ffn_dim=ffn, vocab_size=vocab_size, max_seq_len=4096)


# ---- rows that are not registered methods -----------------------------------------------------
@dataclass(frozen=True)
class FixedRow:
    """A row with bytes per parameter fixed by its source rather than computed from tensors."""

    name: str
    kind: str  # "article" or "reference"
    bpp: dict  # component -> bytes per parameter
    note: str


SEED_ROWS = (
    FixedRow("article: fp32", "article", {"weights": 4, "grads": 4, "optim": 8}, "fp32 weights, grads, Adam m and v"),
    FixedRow(
        "article: bf16 mixed precision",
        "article",
        {"weights": 2, "grads": 2, "optim": 8},
        "bf16 weights and grads, fp32 m and v; no master copy",
    ),
    FixedRow(
        "article: FP8 optimizer states",
        "article",
        {"weights": 2, "grads": 2, "optim": 2},
        "bf16 weights and grads, FP8 m and v; no master copy, no scales",
    ),
)

REFERENCE_ROWS = (
    FixedRow(
        "ref: bf16 + fp32 master (typical mixed precision)",
        "reference",
        {"weights": 2, "master": 4, "grads": 2, "optim": 8},
        "what mixed precision usually keeps (apex O2, DeepSpeed bf16): the article's 12 B omits the 4 B master",
    ),
    FixedRow(
        "ref: Megatron bf16 (fp32 main grads)",
        "reference",
        {"weights": 2, "master": 4, "grads": 4, "optim": 8},
        "Megatron-LM accumulates gradients in an fp32 main_grad buffer",
    ),
    FixedRow(
        "ref: FP8-LM O2 (paper)",
        "reference",
        {"weights": 2, "grads": 1, "optim": 3},
        "FP16 master-as-weights with tensor scaling, FP8 grads, FP8 m, FP16 v (arXiv 2310.18313)",
    ),
    FixedRow(
        "ref: TE fp8_autocast on fp32 model",
        "reference",
        {"weights": 4, "grads": 4, "optim": 8, "meta": 2},
        "fp32 weights plus an FP8 copy and its transpose per linear (~1+1 B); amax histories "
        "(1024 x fp32 per tensor) are negligible per parameter",
    ),
)


# ---- the table ---------------------------------------------------------------------------------
def _row(name: str, kind: str, bpp: dict, n_params: float, note: str = "", **extra) -> dict:
    comp = {c: float(bpp.get(c, 0.0)) for c in COMPONENTS}
    total = sum(comp.values())
    return {
        "row": name,
        "kind": kind,
        "bytes_per_param": comp,
        "total_bytes_per_param": total,
        "gb": total * n_params / 1e9,
        "note": note,
        **extra,
    }


def method_bytes_per_param(method, cfg: ModelConfig) -> dict[str, float]:
    comp = method.analytic_bytes(cfg)
    n = sum(param_numels(cfg))
    return {c: comp.get(c, 0.0) / n for c in COMPONENTS}


def analytic_table(
    n_params: float,
    methods: list[str] | None = None,
    cfg: ModelConfig | None = None,
    include_seed: bool = True,
    include_reference: bool = True,
) -> list[dict]:
    """Rows of bytes per parameter by component and GB (1e9 bytes) at ``n_params``.

    Each row: ``row`` (name), ``kind`` ("article" | "method" | "reference"), ``bytes_per_param`` (dict by
    component), ``total_bytes_per_param``, ``gb``, ``note``; method rows also carry ``family`` and the
    stored dtypes (``stores``). ``methods`` defaults to every registered method (available here or not:
    the model needs no hardware). ``cfg`` overrides the shape used for the small per-tensor terms.
    """
    from methods.registry import get_method, method_names

    cfg = cfg or config_for_params(n_params)
    rows = []
    if include_seed:
        rows += [_row(r.name, r.kind, r.bpp, n_params, r.note) for r in SEED_ROWS]
    for name in methods if methods is not None else method_names():
        m = get_method(name)
        rows.append(
            _row(
                name,
                "method",
                method_bytes_per_param(m, cfg),
                n_params,
                m.summary,
                family=m.family,
                stores=dict(m.stores),
                world_size=m.world_size,
            )
        )
    if include_reference:
        rows += [_row(r.name, r.kind, r.bpp, n_params, r.note) for r in REFERENCE_ROWS]
    return rows


def format_table(rows: list[dict], n_params: float) -> str:
    w = max(len(r["row"]) for r in rows)
    head = f"{'':<{w}}  " + "  ".join(f"{c:>7}" for c in COMPONENTS) + f"  {'B/param':>8}  {'GB':>9}"
    lines = [
        f"Persistent memory at {n_params:.3g} parameters (bytes per parameter by component; "
        "GB = 1e9 bytes; activations and workspace not included)",
        head,
    ]
    kind = None
    for r in rows:
        if r["kind"] != kind:
            kind = r["kind"]
            lines.append(
                {
                    "article": "-- the article's accounting",
                    "method": "-- methods in fp8bench (analytic; checked against measured tensors on the tiny model)",
                    "reference": "-- reference recipes (not run here)",
                }[kind]
            )
        comp = "  ".join(f"{r['bytes_per_param'][c]:>7.3f}" for c in COMPONENTS)
        lines.append(f"{r['row']:<{w}}  {comp}  {r['total_bytes_per_param']:>8.3f}  {r['gb']:>9.1f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    import sys

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["trace"]:  # the full-size step, traced (methods/memory_trace.py)
        from methods.memory_trace import main as trace_main

        return trace_main(argv[1:])
    ap = argparse.ArgumentParser(
        prog="python -m methods.memory",
        description=__doc__.split("\n\n")[0],
        epilog="python -m methods.memory trace --help: trace a real step at full size",
    )
    ap.add_argument("--params", type=float, default=10e9, help="parameter count (default 10e9)")
    ap.add_argument("--model", help="use a named size from models.config for the shape (and its count)")
    ap.add_argument("--methods", nargs="*", help="only these registered methods")
    ap.add_argument("--json", action="store_true", help="machine-readable rows")
    args = ap.parse_args(argv)
    cfg = None
    n = args.params
    if args.model:
        from models.config import get_model_config

        cfg = get_model_config(args.model)
        n = float(cfg.n_params())
    if not (n > 0 and math.isfinite(n)):
        ap.error("--params must be a positive number")
    rows = analytic_table(n, methods=args.methods, cfg=cfg)
    print(json.dumps(rows, indent=2) if args.json else format_table(rows, n))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
