"""Inputs saved for backward in FP8: COAT's "precision flow" for the non-linear layers (RMSNorm, SwiGLU).

An FP8 linear already keeps only FP8 copies of its inputs for backward (``methods.fp8.linear``). The
layers between the linears still keep theirs in bf16 or fp32: an RMSNorm its fp32 residual-stream input,
the SwiGLU its gate and up projections. COAT (arXiv 2410.19313) stores those in FP8 too, with one scale
per group of values, because non-linear inputs have outliers a per-tensor scale would flush to zero.

:func:`save_inputs_in_fp8` makes a module do that. Its forward runs the module without building a graph
and keeps each floating-point input as E4M3 codes with one fp32 scale per ``1 × group`` values of the
last dimension (``1 + 4 / group`` bytes per value, against 2 for bf16 and 4 for fp32), quantized by the
same code as the FP8 linears (``methods.fp8.quantize``). Backward decodes them to their dtype, runs the
module again with a graph and takes the gradients of its inputs and parameters from it. The gradients are
therefore the module's exact gradients *at the decoded inputs*: one E4M3 rounding per input value
(relative error at most 2^-4), the error an FP8 linear accepts on its own inputs. The forward output is
the unquantized one. The recomputation costs one more elementwise pass in backward, as activation
checkpointing of these layers would, and the autocast state of the forward is restored for it.
"""

from __future__ import annotations

import torch
from torch import nn

from methods.fp8.quantize import quantize
from methods.fp8.scaling import Blocks, expand_scales

#: the format of saved inputs: COAT keeps activations in E4M3 (precision over range; the group scales
#: give the range)
SAVED_FORMAT = "e4m3"


def _pack(x: torch.Tensor, group: int) -> tuple:
    q = quantize(x.detach().reshape(-1, x.shape[-1]), SAVED_FORMAT, Blocks(1, group), backend="torch")
    # only what decoding needs is kept (codes, inverse scales); the scales and amax of q go with it
    return q.data, q.scale_inv, q.blocks, x.shape, x.dtype


def _unpack(packed: tuple) -> torch.Tensor:
    data, scale_inv, blocks, shape, dtype = packed
    return (data.to(torch.float32) * expand_scales(scale_inv, blocks, tuple(data.shape))).to(dtype).reshape(shape)


class _SavedInFP8(torch.autograd.Function):
    @staticmethod
    def forward(ctx, run, group: int, n_inputs: int, *args):
        inputs, params = args[:n_inputs], args[n_inputs:]
        device = inputs[0].device.type
        ctx.run, ctx.n_inputs = run, n_inputs
        ctx.autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        with torch.no_grad():
            out = run(*inputs)
        ctx.packed = [_pack(x, group) for x in inputs]
        ctx.needs = [x.requires_grad for x in inputs]
        ctx.save_for_backward(*params)
        return out

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        params = ctx.saved_tensors
        xs = [_unpack(p).requires_grad_(need) for p, need in zip(ctx.packed, ctx.needs)]
        ctx.packed = None  # the FP8 copies go as soon as they are decoded
        device, enabled, dtype = ctx.autocast
        with torch.enable_grad(), torch.autocast(device_type=device, dtype=dtype, enabled=enabled):
            out = ctx.run(*xs)
        wrt = [x for x in xs if x.requires_grad] + [p for p in params if p.requires_grad]
        grads = iter(torch.autograd.grad(out, wrt, dy, allow_unused=True))
        in_grads = [next(grads) if x.requires_grad else None for x in xs]
        param_grads = [next(grads) if p.requires_grad else None for p in params]
        return (None, None, None, *in_grads, *param_grads)


class _SavesInputsInFP8:
    """Mixin put in front of a module's class by :func:`save_inputs_in_fp8` (names and state unchanged)."""

    fp8_saved_group: int = 128

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        base_forward = super().forward  # the module's own forward
        if not torch.is_grad_enabled() or not any(x.requires_grad for x in inputs):
            return base_forward(*inputs)
        params = tuple(p for p in self.parameters() if p.requires_grad)
        return _SavedInFP8.apply(base_forward, self.fp8_saved_group, len(inputs), *inputs, *params)


_CLASSES: dict[type, type] = {}


def save_inputs_in_fp8(module: nn.Module, group: int = 128) -> nn.Module:
    """Make ``module`` (in place; its forward takes tensors only) save its inputs for backward in FP8 with
    one scale per ``1 × group`` values of their last dimension. Returns the module."""
    if group < 1:
        raise ValueError(f"group must be a positive number of values, got {group}")
    base = type(module)
    if issubclass(base, _SavesInputsInFP8):
        module.fp8_saved_group = group
        return module
    if base not in _CLASSES:
        _CLASSES[base] = type(f"{base.__name__}SavedInFP8", (_SavesInputsInFP8, base), {"__module__": base.__module__})
    module.__class__ = _CLASSES[base]
    module.fp8_saved_group = group
    return module


def saves_inputs_in_fp8(module: nn.Module) -> bool:
    return isinstance(module, _SavesInputsInFP8)
