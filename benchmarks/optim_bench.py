"""Time one optimizer step: own FP8 AdamW (fused and reference) vs torchao's AdamWFp8 and the fp32-state AdamW,
same parameters, same gradients, one process; with a roofline against the machine's copy bandwidth.

    python -m benchmarks.optim_bench [--shapes tiny small 7b-layer] [--steps 10] [--threads N]
                                      [--optimizers NAME ...] [--out FILE.json] [--csv FILE.csv]

Shapes: a named model size (its parameter tensors, ``models/config.py``) or ``7b-layer``, one 4096 x 11008
bf16 parameter (a Llama-7B MLP weight), where the step is plainly memory-bound.

CPU section: own FP8AdamW as ``impl="native"`` (``methods.fp8.optim_native``: one hand-written C pass
per block, the CPU default; the headline ``own_fp8_adamw_native``), ``impl="fused"``
(``methods.fp8.optim_fused``: one compiled pass per chunk of blocks) and ``impl="torch"`` (the
reference path), torchao ``AdamWFp8`` as torchao ships it (its
update is ``torch.compile``d per tensor shape), and the fp32-state AdamW of ``bf16-pure``, all on bf16
parameters with stochastic rounding; and that AdamW once more with round-to-nearest
(``fp32_state_adamw_nearest``: ``bf16-pure``'s default; ``bf16-pure-sr`` rounds stochastically); and
``torch.optim.AdamW(fused=True)`` on fp32 weights, grads and states (``torch_fused_adamw_fp32``: the
fp32/bf16-amp recipes' optimizer, torch's own fused CPU kernel). ``--optimizers`` times a subset.
Compilation happens in the warm-up and is not timed. The headlines are ``own / fp32_state_nearest`` (the
optimizer bf16-pure trains with), ``own / fp32_state`` and ``own / torchao`` (lower is better).

Roofline. Bytes moved per parameter, from the tensors each optimizer holds: it reads the weight, the
gradient and its state and writes the weight and its state, so ``read = w + g + S`` and ``write = w + S``
with ``S`` the state bytes per parameter (codes, scales, DRE exponents; the step counter is left out).
bf16 weights and grads: FP8 states (S = 2.04) read 6.04 and write 4.04 B/param, fp32 states (S = 8) read
12 and write 10. ``GB/s = bytes/param * params / step time``, shown as a fraction of the copy bandwidth
measured in the same process (``Tensor.copy_`` of 256 MiB, read + write bytes, median; measured before
and after the timed steps, the larger kept). A step that streams its data once at copy speed is 1.0.

GPU section (CUDA only; skipped with a reason otherwise): the fused Triton kernel vs torchao
``AdamWFp8`` vs ``torch.optim.AdamW(fused=True)`` with fp32 weights and states.

Timing is a median over steps after warm-up, round-robin over the optimizers; absolute times on a shared
CPU are noisy, the ratios within one process are the numbers to read. Not a test: nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from methods.base import param_groups
from models import SIZES, build_model, get_model_config

#: shapes that are not a model size: one Llama-7B MLP weight (4096 x 11008), where the step is memory-bound
LAYER_SHAPES = {"7b-layer": (4096, 11008)}
#: the copy that measures the machine's bandwidth
COPY_BYTES = 256 << 20


def _model(shape_name: str, seed: int) -> torch.nn.Module:
    if shape_name in LAYER_SHAPES:
        layer = torch.nn.Module()
        g = torch.Generator().manual_seed(seed)
        layer.weight = torch.nn.Parameter(torch.randn(LAYER_SHAPES[shape_name], generator=g) * 0.02)
        return layer
    try:
        cfg = get_model_config(shape_name)
    except ValueError:
        raise ValueError(
            f"unknown shape {shape_name!r}; valid: model sizes ({', '.join(SIZES)}) or {', '.join(LAYER_SHAPES)}"
        ) from None
    return build_model(cfg, seed)


def _params_and_grads(shape_name: str, dtype: torch.dtype, device: torch.device, seed: int = 0):
    model = _model(shape_name, seed).to(device=device, dtype=dtype)
    g = torch.Generator(device="cpu").manual_seed(seed + 1)
    grads = [(torch.randn(p.shape, generator=g) * 1e-3).to(device=device, dtype=dtype) for p in model.parameters()]
    return model, grads


def _tensor_bytes(t) -> int:
    """Bytes of a state entry; torchao's low-bit states are tensor subclasses holding codes and scales."""
    if not isinstance(t, torch.Tensor):
        return 0
    if hasattr(t, "__tensor_flatten__") and type(t) is not torch.Tensor and not isinstance(t, torch.nn.Parameter):
        names, _ = t.__tensor_flatten__()
        return sum(_tensor_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def bytes_per_param(opt, params) -> dict:
    """The byte model of one step (see the module docstring), from the tensors ``opt`` holds."""
    n = sum(p.numel() for p in params)
    state = sum(_tensor_bytes(v) for p in params for k, v in opt.state[p].items() if k != "step") / n
    w = sum(p.numel() * p.element_size() for p in params) / n
    g = sum(p.grad.numel() * p.grad.element_size() for p in params) / n
    return {
        "state_bytes_per_param": state,
        "read_bytes_per_param": w + g + state,
        "write_bytes_per_param": w + state,
        "bytes_per_param": 2 * w + g + 2 * state,
    }


def copy_bandwidth(nbytes: int = COPY_BYTES, reps: int = 7, device: torch.device | None = None) -> float:
    """Median bytes/s of ``dst.copy_(src)`` over a ``nbytes`` buffer, counting the read and the write."""
    device = device or torch.device("cpu")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    src = torch.ones(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # first touch of the pages is not bandwidth
    ts = []
    for _ in range(reps):
        sync()
        t = time.perf_counter()
        dst.copy_(src)
        sync()
        ts.append(time.perf_counter() - t)
    return 2 * nbytes / statistics.median(ts)


def _time_interleaved(makers: dict, shape_name: str, device: torch.device, steps: int, warmup: int) -> dict:
    """Build every optimizer on its own copy of the same parameters and gradients, warm each up, then
    time their steps round-robin (A, B, C, A, B, C, ...) so load from other processes hits all alike."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    opts, out = {}, {}
    for name, (make, dtype) in makers.items():
        try:
            model, grads = _params_and_grads(shape_name, dtype, device)
            for p, g in zip(model.parameters(), grads):
                p.grad = g
            opt = make(model)
            t0 = time.perf_counter()
            for _ in range(warmup):
                opt.step()
            sync()
            params = list(model.parameters())
            out[name] = {
                "warmup_s": time.perf_counter() - t0,
                "param_dtype": str(dtype).replace("torch.", ""),
                "n_params": sum(p.numel() for p in params),
                **bytes_per_param(opt, params),
            }
            if getattr(opt, "fallback", None):
                out[name]["fallback"] = dict(opt.fallback)
            opts[name] = opt
        except Exception as e:  # an anchor that cannot run here is reported, not fatal
            out[name] = {"skipped": f"{type(e).__name__}: {e}"}
    times = {name: [] for name in opts}
    for _ in range(steps):
        for name, opt in opts.items():
            t = time.perf_counter()
            opt.step()
            sync()
            times[name].append(time.perf_counter() - t)
    for name, ts in times.items():
        med = statistics.median(ts)
        r = out[name]
        r.update(
            median_s=med,
            min_s=min(ts),
            steps=steps,
            ns_per_param=med / r["n_params"] * 1e9,
            gb_per_s=r["bytes_per_param"] * r["n_params"] / med / 1e9,
        )
    return out


def _own(impl: str, **kw):
    def make(model):
        from methods.fp8.adamw import FP8AdamW

        return FP8AdamW(param_groups(model, 0.1), lr=1e-3, impl=impl, **kw)

    return make


def _torchao_fp8(model):
    from torchao.optim import AdamWFp8

    sr = next(model.parameters()).dtype == torch.bfloat16
    return AdamWFp8(param_groups(model, 0.1), lr=1e-3, bf16_stochastic_round=sr)


def _fp32_state(model, stochastic_rounding: bool = True):
    from methods.fp8.adamw_base import AdamW

    return AdamW(param_groups(model, 0.1), lr=1e-3, stochastic_rounding=stochastic_rounding)


def _fp32_state_nearest(model):
    return _fp32_state(model, stochastic_rounding=False)


#: the own step that the ratios are about, and what it is compared with
OWN, ANCHORS = (
    "own_fp8_adamw_native",
    (
        "own_fp8_adamw_fused",
        "fp32_state_adamw",
        "fp32_state_adamw_nearest",
        "torchao_adamw_fp8",
        "torch_fused_adamw_fp32",
        "own_fp8_adamw_torch",
    ),
)


def _ratios(results: dict, own: str, others) -> dict:
    mine = results.get(own, {}).get("median_s")
    return {
        f"{own}_over_{o}": mine / results[o]["median_s"] for o in others if mine and "median_s" in results.get(o, {})
    }


def _torch_fused_fp32(model):
    return torch.optim.AdamW(param_groups(model, 0.1), lr=1e-3, fused=True)


#: the CPU section's optimizers: name -> (constructor, parameter dtype)
CPU_OPTIMIZERS = {
    OWN: (_own("native"), torch.bfloat16),
    "own_fp8_adamw_fused": (_own("fused"), torch.bfloat16),
    "own_fp8_adamw_torch": (_own("torch"), torch.bfloat16),
    "torchao_adamw_fp8": (_torchao_fp8, torch.bfloat16),
    "fp32_state_adamw": (_fp32_state, torch.bfloat16),
    "fp32_state_adamw_nearest": (_fp32_state_nearest, torch.bfloat16),
    "torch_fused_adamw_fp32": (_torch_fused_fp32, torch.float32),
}


def cpu_section(shape_name: str, steps: int, warmup: int, optimizers=None) -> dict:
    dev = torch.device("cpu")
    out = {"device": "cpu", "threads": torch.get_num_threads(), "model": shape_name, "param_dtype": "bf16"}
    bw_before = copy_bandwidth()
    makers = {k: v for k, v in CPU_OPTIMIZERS.items() if optimizers is None or k in optimizers}
    r = _time_interleaved(makers, shape_name, dev, steps, warmup)
    # the larger of two measurements: a copy slowed by another process's burst would flatter every step
    bw = max(bw_before, copy_bandwidth())
    out.update(copy_gb_per_s=bw / 1e9, copy_gb_per_s_before=bw_before / 1e9, results=r)
    if "median_s" in r.get(OWN, {}):  # which build of the native kernel ran: its AVX-512 lanes or plain loops
        from methods.fp8 import optim_native

        r[OWN]["kernel"] = optim_native.simd()
    for row in r.values():
        if "gb_per_s" in row:
            row["frac_of_copy"] = row["gb_per_s"] * 1e9 / bw
    out.update(_ratios(r, OWN, ANCHORS))
    return out


def rows(res: dict) -> list[dict]:
    """One flat row per (section, shape, optimizer): what a report table reads."""
    out = []
    for sec in res.get("cpu", []) + [res.get("gpu", {})]:
        results = sec.get("results", {})
        own = next(
            (results[k]["median_s"] for k in (OWN, "own_fp8_adamw_triton") if "median_s" in results.get(k, {})), None
        )
        for name, r in results.items():
            row = {
                "device": sec.get("device"),
                "threads": sec.get("threads"),
                "shape": sec.get("model"),
                "optimizer": name,
                "copy_gb_per_s": sec.get("copy_gb_per_s"),
            }
            row.update({k: v for k, v in r.items() if not isinstance(v, dict)})
            if "median_s" in r:
                row["median_ms"] = 1e3 * r["median_s"]
            # the headline ratio on every row, from the same interleaved run: own step time / this one's
            row["own_over_this"] = own / r["median_s"] if own and "median_s" in r else None
            out.append(row)
    return out


def gpu_section(model_name: str, steps: int, warmup: int) -> dict:
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device: the fused Triton kernel and torchao's CUDA path need a GPU"}
    try:
        import triton  # noqa: F401
    except ImportError:
        return {"skipped": "triton is not installed"}
    dev = torch.device("cuda")
    out = {"device": torch.cuda.get_device_name(), "model": model_name}

    def fused_fp32(model):
        return torch.optim.AdamW(param_groups(model, 0.1), lr=1e-3, fused=True)

    r = _time_interleaved(
        {
            "own_fp8_adamw_triton": (_own("triton"), torch.bfloat16),
            "torchao_adamw_fp8": (_torchao_fp8, torch.bfloat16),
            "torch_fused_adamw_fp32": (fused_fp32, torch.float32),
        },
        model_name,
        dev,
        steps,
        warmup,
    )
    bw = copy_bandwidth(device=dev)
    out.update(copy_gb_per_s=bw / 1e9, results=r)
    for row in r.values():
        if "gb_per_s" in row:
            row["frac_of_copy"] = row["gb_per_s"] * 1e9 / bw
    out.update(_ratios(r, "own_fp8_adamw_triton", ("torchao_adamw_fp8", "torch_fused_adamw_fp32")))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.optim_bench", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--shapes",
        "--model",
        nargs="+",
        default=["tiny", "small", "7b-layer"],
        help="model sizes and/or 7b-layer (CPU)",
    )
    ap.add_argument("--gpu-model", default="1b", help="model size for the GPU section")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (the compiled steps compile here)")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (0: leave as is); 1 is the least "
        "noisy on a shared machine, and the cpu profile's setting",
    )
    ap.add_argument("--optimizers", nargs="+", help=f"CPU subset of: {', '.join(CPU_OPTIMIZERS)} (default: all)")
    ap.add_argument("--no-cpu", action="store_true")
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--csv", help="write one row per shape and optimizer as CSV here")
    ap.add_argument("--job-cores", type=int, default=0, help="cores the workflow reserved for this job (recorded)")
    args = ap.parse_args(argv)
    for name in args.shapes:
        if name not in LAYER_SHAPES and name not in SIZES:
            ap.error(f"unknown shape {name!r}; valid: {', '.join(list(SIZES) + list(LAYER_SHAPES))}")
    for name in args.optimizers or []:
        if name not in CPU_OPTIMIZERS:
            ap.error(f"unknown optimizer {name!r}; valid: {', '.join(CPU_OPTIMIZERS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    import torchao

    res = {
        "torch": torch.__version__,
        "torchao": torchao.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "byte_model": "read = w + g + S, write = w + S; S = optimizer state bytes per parameter",
    }
    if not args.no_cpu:
        res["cpu"] = [cpu_section(name, args.steps, args.warmup, args.optimizers) for name in args.shapes]
    res["gpu"] = gpu_section(args.gpu_model, args.steps, args.warmup)
    for s in res.get("cpu", []) + [res["gpu"]]:
        if "skipped" in s:
            print(f"[gpu] skipped: {s['skipped']}")
            continue
        kernel = s["results"].get(OWN, {}).get("kernel")
        print(
            f"[{s['device']}] {s['model']}, {s.get('threads', '-')} thread(s), copy {s['copy_gb_per_s']:.1f} GB/s"
            + (f", native kernel: {kernel}" if kernel else "")
        )
        print(f"  {'optimizer':<24} {'ms/step':>9} {'ns/param':>9} {'B/param':>8} {'GB/s':>6} {'of copy':>8}")
        for name, r in s["results"].items():
            if "skipped" in r:
                print(f"  {name:<24} skipped: {r['skipped']}")
            else:
                print(
                    f"  {name:<24} {r['median_s'] * 1e3:9.2f} {r['ns_per_param']:9.2f} {r['bytes_per_param']:8.2f} "
                    f"{r['gb_per_s']:6.2f} {r['frac_of_copy']:8.1%}"
                    + (f"  fallback: {r['fallback']}" if r.get("fallback") else "")
                )
        for k, v in s.items():
            if "_over_" in k:
                print(f"  {k} = {v:.3f}")
    if args.out:
        from common.atomic import write_json  # a reader never sees half a file

        write_json(args.out, res)
    if args.csv:
        from benchmarks.bench_csv import run_env, write_csv

        env = {k: v for k, v in run_env(args.job_cores).items() if k != "torch_threads"}  # rows carry `threads`
        write_csv(args.csv, [{**r, **env} for r in rows(res)])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
