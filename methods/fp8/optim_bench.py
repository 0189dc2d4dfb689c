"""Time one optimizer step: own FP8 AdamW vs torchao's AdamWFp8 (and fp32-state AdamW), same parameters,
same gradients, one process.

    python -m methods.fp8.optim_bench [--model tiny] [--steps 10] [--threads N] [--out FILE.json]

CPU section: own FP8AdamW (PyTorch path) vs torchao ``AdamWFp8`` as torchao ships it (its update is
``torch.compile``d per tensor shape; compilation happens in the warm-up and is not timed), plus the
fp32-state AdamW that ``bf16-pure`` uses, all on bf16 parameters with stochastic rounding. The
headline is ``own / torchao`` (lower is better).

GPU section (CUDA only; skipped with a reason otherwise): the fused Triton kernel vs torchao
``AdamWFp8`` vs ``torch.optim.AdamW(fused=True)`` with fp32 weights and states.

Timing is a median over steps after warm-up; absolute times on a shared CPU are noisy, the ratio
within one process is the number to read. Not a test: nothing here passes or fails.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from methods.base import param_groups
from models import build_model, get_model_config


def _params_and_grads(model_name: str, dtype: torch.dtype, device: torch.device, seed: int = 0):
    cfg = get_model_config(model_name)
    model = build_model(cfg, seed).to(device=device, dtype=dtype)
    g = torch.Generator(device="cpu").manual_seed(seed + 1)
    grads = [(torch.randn(p.shape, generator=g) * 1e-3).to(device=device, dtype=dtype) for p in model.parameters()]
    return model, grads


def _time_interleaved(makers: dict, model_name: str, device: torch.device, steps: int, warmup: int) -> dict:
    """Build every optimizer on its own copy of the same parameters and gradients, warm each up, then
    time their steps round-robin (A, B, C, A, B, C, ...) so load from other processes hits all alike."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    opts, out = {}, {}
    for name, (make, dtype) in makers.items():
        try:
            model, grads = _params_and_grads(model_name, dtype, device)
            for p, g in zip(model.parameters(), grads):
                p.grad = g
            opt = make(model)
            t0 = time.perf_counter()
            for _ in range(warmup):
                opt.step()
            sync()
            out[name] = {"warmup_s": time.perf_counter() - t0, "param_dtype": str(dtype).replace("torch.", ""),
                         "n_params": sum(p.numel() for p in model.parameters())}
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
        out[name].update(median_s=med, min_s=min(ts), steps=steps, ns_per_param=med / out[name]["n_params"] * 1e9)
    return out


def _own(impl: str, **kw):
    def make(model):
        from methods.fp8.adamw import FP8AdamW

        return FP8AdamW(param_groups(model, 0.1), lr=1e-3, impl=impl, **kw)
    return make


def _torchao_fp8(model):
    from torchao.optim import AdamWFp8

    return AdamWFp8(param_groups(model, 0.1), lr=1e-3, bf16_stochastic_round=model.tok_emb.weight.dtype == torch.bfloat16)


def _fp32_state(model):
    from methods.adamw import AdamW

    return AdamW(param_groups(model, 0.1), lr=1e-3, stochastic_rounding=True)


def cpu_section(model_name: str, steps: int, warmup: int) -> dict:
    dev = torch.device("cpu")
    out = {"device": "cpu", "threads": torch.get_num_threads(), "model": model_name, "param_dtype": "bf16",
           "results": {}}
    bf = torch.bfloat16
    out["results"] = _time_interleaved({"own_fp8_adamw": (_own("torch"), bf), "torchao_adamw_fp8": (_torchao_fp8, bf),
                                        "fp32_state_adamw": (_fp32_state, bf)}, model_name, dev, steps, warmup)
    r = out["results"]
    if "median_s" in r.get("own_fp8_adamw", {}) and "median_s" in r.get("torchao_adamw_fp8", {}):
        out["own_over_torchao"] = r["own_fp8_adamw"]["median_s"] / r["torchao_adamw_fp8"]["median_s"]
    return out


def gpu_section(model_name: str, steps: int, warmup: int) -> dict:
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device: the fused Triton kernel and torchao's CUDA path need a GPU"}
    try:
        import triton  # noqa: F401
    except ImportError:
        return {"skipped": "triton is not installed"}
    dev = torch.device("cuda")
    out = {"device": torch.cuda.get_device_name(), "model": model_name, "results": {}}

    def fused_fp32(model):
        return torch.optim.AdamW(param_groups(model, 0.1), lr=1e-3, fused=True)

    out["results"] = _time_interleaved({"own_fp8_adamw_triton": (_own("triton"), torch.bfloat16),
                                        "torchao_adamw_fp8": (_torchao_fp8, torch.bfloat16),
                                        "torch_fused_adamw_fp32": (fused_fp32, torch.float32)},
                                       model_name, dev, steps, warmup)
    r = out["results"]
    own = r.get("own_fp8_adamw_triton", {}).get("median_s")
    for other in ("torchao_adamw_fp8", "torch_fused_adamw_fp32"):
        if own and "median_s" in r.get(other, {}):
            out[f"own_over_{other}"] = own / r[other]["median_s"]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m methods.fp8.optim_bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny", help="model size whose parameter shapes are used (CPU)")
    ap.add_argument("--gpu-model", default="1b", help="model size for the GPU section")
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: leave as is); 1 is the least "
                    "noisy on a shared machine")
    ap.add_argument("--no-cpu", action="store_true")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import torchao

    res = {"torch": torch.__version__, "torchao": torchao.__version__, "python": platform.python_version(),
           "machine": platform.machine(), "processor": platform.processor() or platform.machine()}
    if not args.no_cpu:
        res["cpu"] = cpu_section(args.model, args.steps, args.warmup)
    res["gpu"] = gpu_section(args.gpu_model, args.steps, args.warmup)
    for sec in ("cpu", "gpu"):
        s = res.get(sec)
        if not s:
            continue
        if "skipped" in s:
            print(f"[{sec}] skipped: {s['skipped']}")
            continue
        print(f"[{sec}] {s['device']}, model {s['model']}")
        for name, r in s["results"].items():
            if "skipped" in r:
                print(f"  {name:<26} skipped: {r['skipped']}")
            else:
                print(f"  {name:<26} {r['median_s'] * 1e3:9.2f} ms/step  ({r['ns_per_param']:.2f} ns/param, "
                      f"warm-up {r['warmup_s']:.1f} s)")
        for k, v in s.items():
            if k.startswith("own_over"):
                print(f"  {k} = {v:.3f}")
    if args.out:
        from pipelines.atomic import write_json  # a reader never sees half a file

        write_json(args.out, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
