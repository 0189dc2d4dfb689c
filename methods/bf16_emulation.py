"""bf16 matrix products on CPUs that have no bf16 matrix instructions.

On an AVX2-only CPU, PyTorch's bf16 GEMM runs ~30x slower than fp32 (measured here: 2.9 vs 84 GFLOP/s
on a 512x256x688 product), which would make every bf16 recipe unrunnable on the CPU profile. A bf16
GEMM with fp32 accumulation, which is what GPU tensor cores and oneDNN compute, can be reproduced at
fp32 speed: round the operands to bf16, multiply in fp32 (a product of two 8-bit significands is exact
in fp32's 24), accumulate in fp32, round the output to bf16. Only the summation order differs.

:func:`bf16_matmul_mode` is a ``TorchFunctionMode`` doing that for the matrix-product family when
either bf16 autocast is on or an operand is bf16; everything else (elementwise ops in bf16, fp32 ops)
runs as usual. Backward is autograd's own fp32 backward of the same products, with the casts' backward
rounding the gradients to bf16 where the forward had bf16 tensors.
"""

from __future__ import annotations

import contextlib
import os
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

_BF16 = torch.bfloat16
_MATMULS = {
    F.linear,
    torch.matmul,
    torch.Tensor.matmul,
    torch.Tensor.__matmul__,
    torch.mm,
    torch.Tensor.mm,
    torch.bmm,
    torch.Tensor.bmm,
    F.scaled_dot_product_attention,
}


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True on CPUs with AVX512-BF16 or AMX-BF16 (there oneDNN's bf16 GEMM is fast)."""
    try:
        flags = open("/proc/cpuinfo", encoding="ascii", errors="ignore").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def emulate_bf16_on(device: torch.device) -> bool:
    """Whether bf16 products are emulated for this device. ``FP8BENCH_CPU_BF16=native|emulated`` overrides."""
    if device.type != "cpu":
        return False
    choice = os.environ.get("FP8BENCH_CPU_BF16", "auto")
    if choice not in ("auto", "native", "emulated"):
        raise ValueError(f"FP8BENCH_CPU_BF16={choice!r}; valid: auto, native, emulated")
    return choice == "emulated" or (choice == "auto" and not cpu_has_native_bf16())


def _round(t):
    if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype in (torch.float32, _BF16):
        return t.to(_BF16).float()
    return t


class _Bf16Matmul(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _MATMULS:
            tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
            autocast_bf16 = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == _BF16
            # Tensor subclasses (torchao's Float8TrainingTensor) run their own GEMM: leave them alone.
            plain = all(type(t) in (torch.Tensor, torch.nn.Parameter) for t in tensors)
            if (
                tensors
                and plain
                and all(t.device.type == "cpu" for t in tensors)
                and (autocast_bf16 or any(t.dtype == _BF16 for t in tensors))
            ):
                with torch.autocast("cpu", enabled=False):
                    out = func(*[_round(a) for a in args], **{k: _round(v) for k, v in kwargs.items()})
                return out.to(_BF16)
        return func(*args, **kwargs)


def bf16_matmul_mode(device: torch.device):
    return _Bf16Matmul() if emulate_bf16_on(device) else contextlib.nullcontext()
