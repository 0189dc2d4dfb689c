"""bf16 GEMM emulation for the *backward* of Python autograd functions (engines' custom linears).

``methods.bf16_emulation.bf16_matmul_mode`` is a TorchFunctionMode: it covers the forward, and autograd's
own backward of the products it computed in fp32 needs nothing. But torch-function modes are not active
while autograd runs backward, so a custom ``autograd.Function`` whose backward multiplies bf16 tensors
(DeepSpeed ZeRO-3's memory-efficient linear; torchao float8's high-precision weight-gradient GEMM) would
run PyTorch's bf16 GEMM, ~30x slower on an AVX2 CPU. Dispatch modes *are* active in backward:
:func:`bf16_backward_mode` computes those products the same way the forward emulation does — bf16
operands (exact in fp32), fp32 products and sums, output rounded to bf16. Only summation order differs
from a native bf16 GEMM. Off wherever ``bf16_matmul_mode`` is off (GPUs, CPUs with native bf16).
"""

from __future__ import annotations

import contextlib

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from methods.bf16_emulation import emulate_bf16_on

_aten = torch.ops.aten
_GEMMS = {_aten.mm.default, _aten.bmm.default, _aten.addmm.default, _aten.baddbmm.default}
_PLAIN = (torch.Tensor, torch.nn.Parameter)


class _Bf16GemmDispatch(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _GEMMS:
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            if tensors and all(
                type(t) in _PLAIN and t.device.type == "cpu" and t.dtype == torch.bfloat16 for t in tensors
            ):
                up = [a.float() if isinstance(a, torch.Tensor) else a for a in args]
                return func(*up, **kwargs).to(torch.bfloat16)
        return func(*args, **kwargs)


def bf16_backward_mode(device: torch.device):
    return _Bf16GemmDispatch() if emulate_bf16_on(device) else contextlib.nullcontext()
