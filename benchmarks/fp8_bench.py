"""``python -m benchmarks.fp8_bench [--out FILE.json] [--csv FILE.csv]``: how fast the own FP8 path is. A benchmark,
not a test.

CPU section (always): tokens/s of the tiny model's training step (the cpu profile's batch and sequence
length) under ``fp8-own-tensorwise``, torchao's tensorwise float8 training and ``bf16-amp``, all in
this one process, on the same initial weights and the same batch. The methods take turns, a few steps
each, for several rounds, so load from other processes hits all of them alike; the median step time
per method gives tokens/s, reported as ratios. A second table times the FP8 linears alone (the seven
projections of one block, forward + backward, no bf16 head around them), where the methods differ;
and the bytes autograd saves for backward in one forward of the model, per method.

GPU section (only with a CUDA device and Triton; otherwise recorded as skipped with the reason): own
Triton FP8 GEMM (tensorwise and 1×128/128×128 block scaling) vs ``torch._scaled_mm`` vs bf16
``torch.mm`` at 4096³ and 8192³ in TFLOP/s; the quantization kernels in GB/s (bytes read + written)
against a plain device copy of the same tensor.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time

import torch
from torch import nn


# ------------------------------------------------------------------------------------------ CPU
def _train_shape() -> tuple[int, int]:
    try:
        from pipelines.run.config import load

        t = load()["train"]
        return int(t["batch_size"]), int(t["seq_len"])
    except Exception:  # noqa: BLE001 - the bench runs without the workflow too
        return 8, 64


def _torchao_trainee(model, hp, ctx):
    """torchao tensorwise float8 training on the same filter as ours: a registered method if a helper
    provides one, else torchao's own conversion around bf16-amp (bf16 autocast, fp32 AdamW)."""
    from methods.registry import get_method, method_names

    for name in ("fp8-torchao-tensorwise", "torchao-tensorwise", "torchao-float8-tensorwise"):
        if name in method_names():
            m = get_method(name)
            if not m.unmet():
                return name, m.build(model, hp, ctx)
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training

    convert_to_float8_training(
        model,
        config=Float8LinearConfig.from_recipe_name("tensorwise"),
        module_filter_fn=lambda mod, fqn: fqn.startswith("layers."),
    )
    return "torchao tensorwise (convert_to_float8_training + bf16-amp)", get_method("bf16-amp").build(model, hp, ctx)


def bench_cpu_step(rounds: int = 6, steps_per_round: int = 3, threads: int = 1) -> dict:
    from methods.base import HParams, RunContext
    from methods.registry import get_method
    from models import build_model, get_model_config

    torch.set_num_threads(threads)
    batch, seq = _train_shape()
    cfg = get_model_config("tiny").with_vocab(4096)
    ctx = RunContext(device=torch.device("cpu"), seed=0, threads=threads)
    hp = HParams(lr=3e-3)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, cfg.vocab_size, (batch, seq + 1), generator=g)
    x, y = tokens[:, :-1], tokens[:, 1:]
    trainees = {
        "fp8-own-tensorwise": get_method("fp8-own-tensorwise").build(build_model(cfg, 0), hp, ctx),
        "bf16-amp": get_method("bf16-amp").build(build_model(cfg, 0), hp, ctx),
    }
    notes = {}
    try:
        label, tr = _torchao_trainee(build_model(cfg, 0), hp, ctx)
        trainees["torchao-tensorwise"] = tr
        notes["torchao-tensorwise"] = label
    except Exception as e:  # noqa: BLE001 - reported, the rest still runs
        notes["torchao-tensorwise"] = f"unavailable: {type(e).__name__}: {e}"
    times: dict[str, list[float]] = {k: [] for k in trainees}
    failed: dict[str, str] = {}
    for k, tr in list(trainees.items()):  # warm-up (allocator, first-use paths)
        try:
            for _ in range(2):
                tr.train_step(x, y, 1e-3)
        except Exception as e:  # noqa: BLE001
            failed[k] = f"{type(e).__name__}: {e}"
            del trainees[k]
    for _ in range(rounds):
        for k, tr in trainees.items():
            for _ in range(steps_per_round):
                t0 = time.perf_counter()
                tr.train_step(x, y, 1e-3)
                times[k].append(time.perf_counter() - t0)
    ntok = batch * seq
    res = {
        k: {"median_step_s": statistics.median(v), "tokens_per_s": ntok / statistics.median(v), "steps_timed": len(v)}
        for k, v in times.items()
        if v
    }
    out = {"batch_size": batch, "seq_len": seq, "threads": threads, "methods": res, "notes": notes, "failed": failed}
    own = res.get("fp8-own-tensorwise", {}).get("tokens_per_s")
    for ref in ("torchao-tensorwise", "bf16-amp"):
        if own and ref in res:
            out[f"fp8-own-tensorwise_vs_{ref}"] = own / res[ref]["tokens_per_s"]
    return out


def activation_memory() -> dict:
    """Bytes autograd saves for backward in one forward of the tiny model (cpu-profile batch), by
    method: the FP8 linears keep FP8 copies, the reference keeps bf16 ones. Measured with the CPU bf16
    GEMM emulation off (``FP8BENCH_CPU_BF16=native``): the emulation saves fp32 copies of bf16 operands,
    which a GPU (and a CPU with native bf16) would not."""
    import os

    from methods.base import RunContext
    from models import get_model_config

    batch, seq = _train_shape()
    cfg = get_model_config("tiny").with_vocab(4096)
    ctx = RunContext(device=torch.device("cpu"), seed=0)
    tokens = torch.randint(0, cfg.vocab_size, (batch, seq + 1), generator=torch.Generator().manual_seed(0))
    out = {}
    before = os.environ.get("FP8BENCH_CPU_BF16")
    os.environ["FP8BENCH_CPU_BF16"] = "native"
    try:
        _saved_per_method(cfg, ctx, tokens, out)
    finally:
        if before is None:
            os.environ.pop("FP8BENCH_CPU_BF16", None)
        else:
            os.environ["FP8BENCH_CPU_BF16"] = before
    return {
        "batch_size": batch,
        "seq_len": seq,
        "bf16_emulation": "off",
        "saved_bytes": out,
        "fp8-own-tensorwise_vs_bf16-amp": out["fp8-own-tensorwise"]["total"] / out["bf16-amp"]["total"],
    }


def _saved_per_method(cfg, ctx, tokens, out):
    from methods.base import HParams
    from methods.fp8.linear import saved_activation_bytes
    from methods.registry import get_method
    from models import build_model

    for name in (
        "bf16-amp",
        "fp8-own-tensorwise",
        "fp8-own-rowwise",
        "fp8-own-blockwise",
        "fp8-own-delayed-smooth",
        "fp8-naive",
    ):
        tr = get_method(name).build(build_model(cfg, 0), HParams(lr=1e-3), ctx)
        out[name] = saved_activation_bytes(
            lambda tr=tr: tr.forward_loss(tokens[:, :-1], tokens[:, 1:]), *tr.model.parameters()
        )


def _block_linears() -> nn.ModuleDict:
    d, f = 256, 688
    shapes = {"wq": (d, d), "wk": (d, d), "wv": (d, d), "wo": (d, d), "w1": (d, f), "w3": (d, f), "w2": (f, d)}
    return nn.ModuleDict({k: nn.Linear(i, o, bias=False) for k, (i, o) in shapes.items()})


def _run_block(m: nn.ModuleDict, x: torch.Tensor) -> torch.Tensor:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a = m["wq"](x) + m["wk"](x) + m["wv"](x)
        b = m["wo"](a)
        return m["w2"](m["w1"](b) * m["w3"](b))


def bench_cpu_linears(tokens: int = 512, rounds: int = 8) -> dict:
    """The seven projections of one tiny block, forward + backward (random grad), bf16 autocast around."""
    from methods.bf16_emulation import bf16_matmul_mode
    from methods.fp8.linear import FP8Recipe, convert_to_fp8

    torch.manual_seed(0)
    base = _block_linears()
    variants = {
        "fp8-own-tensorwise": convert_to_fp8(copy.deepcopy(base), FP8Recipe(), keep_high_precision=()),
        "fp8-own-rowwise": convert_to_fp8(
            copy.deepcopy(base), FP8Recipe(granularity="rowwise", pow2_scales=True), keep_high_precision=()
        ),
        "fp8-own-blockwise": convert_to_fp8(
            copy.deepcopy(base), FP8Recipe(granularity="blockwise", grad_format="e4m3"), keep_high_precision=()
        ),
        "nn.Linear bf16-autocast": copy.deepcopy(base),
    }
    try:
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training

        variants["torchao-tensorwise"] = convert_to_float8_training(
            copy.deepcopy(base), config=Float8LinearConfig.from_recipe_name("tensorwise")
        )
    except Exception:  # noqa: BLE001
        pass
    x = torch.randn(tokens, 256, requires_grad=True)
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(rounds + 2):
        for k, m in variants.items():
            t0 = time.perf_counter()
            with bf16_matmul_mode(torch.device("cpu")):
                out = _run_block(m, x)
            out.backward(torch.randn_like(out))
            if r >= 2:
                times[k].append(time.perf_counter() - t0)
    res = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    out = {"tokens": tokens, "rounds": rounds, "median_ms": res}
    if "torchao-tensorwise" in res:
        out["fp8-own-tensorwise_vs_torchao-tensorwise"] = res["torchao-tensorwise"] / res["fp8-own-tensorwise"]
    return out


# ------------------------------------------------------------------------------------------ GPU
def _cuda_time(fn, iters: int = 20) -> float:
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / iters


def bench_gpu(sizes=(4096, 8192)) -> dict:
    from methods.fp8.formats import E4M3
    from methods.fp8.kernels import quantize_triton_t, scaled_mm_triton, unavailable_reason
    from methods.fp8.quantize import quantize
    from methods.fp8.scaling import COLWISE, ROWWISE, TENSORWISE, BLOCK_128x128, TILE_1x128, TILE_128x1

    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device"}
    why = unavailable_reason()
    if why:
        return {"skipped": why}
    dev = torch.device("cuda")
    out = {
        "device": torch.cuda.get_device_name(dev),
        "capability": list(torch.cuda.get_device_capability(dev)),
        "gemm_tflops": {},
        "quantize_gbps": {},
    }
    for n in sizes:
        a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
        b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
        flop = 2 * n**3
        row = {"bf16 torch.mm": flop / _cuda_time(lambda a=a, b=b: a @ b.t()) / 1e12}
        for label, ga, gb in (
            ("tensorwise", TENSORWISE, TENSORWISE),
            ("rowwise", ROWWISE, ROWWISE),
            ("blockwise 1x128 x 128x128", TILE_1x128, BLOCK_128x128),
        ):
            qa = quantize(a, E4M3, ga, backend="triton")
            qb = quantize(b, E4M3, gb, backend="triton")
            try:
                t = _cuda_time(lambda qa=qa, qb=qb: scaled_mm_triton(qa, qb.t(), torch.bfloat16))
                row[f"own triton {label}"] = flop / t / 1e12
            except Exception as e:  # noqa: BLE001
                row[f"own triton {label}"] = f"failed: {type(e).__name__}: {e}"
            if label in ("tensorwise", "rowwise"):
                sa = qa.scale_inv.reshape(()) if label == "tensorwise" else qa.scale_inv.reshape(n, 1).contiguous()
                sb = qb.scale_inv.reshape(()) if label == "tensorwise" else qb.scale_inv.reshape(1, n).contiguous()
                try:
                    row[f"torch._scaled_mm {label}"] = (
                        flop
                        / _cuda_time(
                            lambda qa=qa, qb=qb, sa=sa, sb=sb: torch._scaled_mm(
                                qa.data, qb.data.t(), sa, sb, out_dtype=torch.bfloat16
                            )
                        )
                        / 1e12
                    )
                except Exception as e:  # noqa: BLE001
                    row[f"torch._scaled_mm {label}"] = f"failed: {type(e).__name__}: {e}"
        out["gemm_tflops"][str(n)] = row
    x = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    nbytes_copy = 2 * x.numel() * x.element_size()
    qrow = {"device copy (bf16 clone)": nbytes_copy / _cuda_time(lambda: x.clone()) / 1e9}
    for label, blocks in (
        ("tensorwise", TENSORWISE),
        ("rowwise", ROWWISE),
        ("colwise", COLWISE),
        ("1x128", TILE_1x128),
        ("128x1", TILE_128x1),
        ("128x128", BLOCK_128x128),
    ):
        for write_t in (False, True):
            nbytes = x.numel() * (x.element_size() + (2 if write_t else 1))
            resolved = type(blocks)(*blocks.resolve(tuple(x.shape)))

            def fn(bl=resolved, wt=write_t):
                return quantize_triton_t(x, E4M3, bl, write_t=wt)

            try:
                qrow[f"{label}{' +transpose' if write_t else ''}"] = nbytes / _cuda_time(fn) / 1e9
            except Exception as e:  # noqa: BLE001
                qrow[f"{label}{' +transpose' if write_t else ''}"] = f"failed: {type(e).__name__}: {e}"
    out["quantize_gbps"] = qrow
    return out


# ------------------------------------------------------------------------------------------ CSV
#: the bf16 row each section's speedups are against, and the FP8 path the report is about
BF16 = {"train_step": "bf16-amp", "linears": "nn.Linear bf16-autocast"}
OWN = "fp8-own-tensorwise"


def csv_rows(res: dict) -> list[dict]:
    """One tidy row per (section, method). Every ratio is formed from medians of the same interleaved run, so
    load from other processes hits numerator and denominator alike: ``speedup_vs_bf16`` = bf16's time / this
    one's, ``own_speedup_vs_this`` = this one's time / fp8-own-tensorwise's (above 1: the own path is faster)."""
    out = []
    step = res.get("cpu_step")
    if step:
        m = step["methods"]
        shape = {
            "batch_size": step["batch_size"],
            "seq_len": step["seq_len"],
            "tokens": step["batch_size"] * step["seq_len"],
        }
        for name, r in m.items():
            out.append(
                {
                    "section": "train_step",
                    "method": name,
                    "status": "ok",
                    "time_ms": 1e3 * r["median_step_s"],
                    "tokens_per_s": r["tokens_per_s"],
                    "n_timed": r["steps_timed"],
                    **shape,
                    "note": step["notes"].get(name, ""),
                }
            )
        for name, why in step.get("failed", {}).items():
            out.append({"section": "train_step", "method": name, "status": "failed", "note": why, **shape})
        for name, why in step.get("notes", {}).items():
            if why.startswith("unavailable") and name not in m:
                out.append({"section": "train_step", "method": name, "status": "skipped", "note": why, **shape})
    lin = res.get("cpu_linears")
    if lin:
        for name, ms in lin["median_ms"].items():
            out.append(
                {
                    "section": "linears",
                    "method": name,
                    "status": "ok",
                    "time_ms": ms,
                    "tokens_per_s": lin["tokens"] / (ms / 1e3),
                    "n_timed": lin.get("rounds"),
                    "tokens": lin["tokens"],
                    "note": "the 7 projections of one tiny block, fwd + bwd",
                }
            )
    for sec, ref in BF16.items():
        rows = {r["method"]: r for r in out if r["section"] == sec and r["status"] == "ok"}
        for r in rows.values():
            if ref in rows:
                r["speedup_vs_bf16"] = rows[ref]["time_ms"] / r["time_ms"]
            if OWN in rows:
                r["own_speedup_vs_this"] = r["time_ms"] / rows[OWN]["time_ms"]
    act = res.get("activation_memory")
    if act:
        ref = act["saved_bytes"]["bf16-amp"]["total"]
        for name, b in act["saved_bytes"].items():
            out.append(
                {
                    "section": "saved_activations",
                    "method": name,
                    "status": "ok",
                    "saved_bytes": b["total"],
                    "saved_vs_bf16": b["total"] / ref,
                    "batch_size": act["batch_size"],
                    "seq_len": act["seq_len"],
                    "note": "bytes autograd saves in one forward; CPU bf16 emulation off",
                }
            )
    gpu = res.get("gpu", {})
    if "skipped" in gpu:
        out.append({"section": "gpu", "method": "all", "status": "skipped", "note": gpu["skipped"]})
    for n, row in gpu.get("gemm_tflops", {}).items():
        for name, v in row.items():
            ok = isinstance(v, float)
            out.append(
                {
                    "section": "gpu_gemm",
                    "method": name,
                    "status": "ok" if ok else "failed",
                    "size": int(n),
                    "tflops": v if ok else None,
                    "note": "" if ok else v,
                    "device_name": gpu.get("device"),
                }
            )
    for name, v in gpu.get("quantize_gbps", {}).items():
        ok = isinstance(v, float)
        out.append(
            {
                "section": "gpu_quantize",
                "method": name,
                "status": "ok" if ok else "failed",
                "gb_per_s": v if ok else None,
                "note": "" if ok else v,
                "device_name": gpu.get("device"),
            }
        )
    return out


# ------------------------------------------------------------------------------------------ CLI
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.fp8_bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="write the numbers as JSON here")
    ap.add_argument("--csv", help="write one row per section and method as CSV here (what the report reads)")
    ap.add_argument("--job-cores", type=int, default=0, help="cores the workflow reserved for this job (recorded)")
    ap.add_argument("--rounds", type=int, default=6, help="interleaved rounds of the CPU step benchmark")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-cpu", action="store_true")
    args = ap.parse_args(argv)
    res = {"python": platform.python_version(), "torch": torch.__version__, "machine": platform.machine()}
    if not args.skip_cpu:
        if args.rounds < 1 or args.threads < 1:
            ap.error("--rounds and --threads must be at least 1")
        res["cpu_step"] = bench_cpu_step(rounds=args.rounds, threads=args.threads)
        res["cpu_linears"] = bench_cpu_linears()
        res["activation_memory"] = activation_memory()
    res["gpu"] = bench_gpu()
    print(json.dumps(res, indent=2))
    if "gpu" in res and "skipped" in res["gpu"]:
        print(f"GPU section skipped: {res['gpu']['skipped']}", file=sys.stderr)
    if args.out:
        from common.atomic import write_json  # a reader never sees half a file

        write_json(args.out, res)
    if args.csv:
        from benchmarks.bench_csv import run_env, write_csv

        env = run_env(args.job_cores)
        write_csv(args.csv, [{**r, **env} for r in csv_rows(res)])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
