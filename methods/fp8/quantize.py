"""Quantize a 2-D tensor to FP8 codes + scales, at any granularity: the PyTorch path and the dispatch.

``quantize(x, fmt, blocks)`` returns a :class:`Quantized`: the FP8 codes, the fp32 scale of every
group, the groups' amax (for telemetry and delayed-scaling history) and the number of values that
saturated. ``Quantized.t()`` is free (a view of codes and scales), which is why the linear layer can
reuse a tensorwise or 128×128-block quantization for the transposed GEMM of the backward pass.

The PyTorch path reads x twice (amax, then scale-and-cast) and writes fp32 once in between; the Triton
path (``methods.fp8.kernels``) does amax, scale and cast in one kernel for group granularities (two
launches for tensorwise, whose amax is a global reduction). Both round with saturate-then-RNE and agree
bit for bit (``tests/fp8/test_kernels.py``).

A simulated format (``fmt.simulated``: any ExMy without a torch dtype, ``methods.fp8.formats``) takes the
same path with the same scales; only the last step differs: :func:`~methods.fp8.formats.round_to_format`
instead of ``.to(float8)``, its values carried in ``fmt.carrier``. There is no Triton kernel for them:
``backend="auto"`` takes the PyTorch path on a GPU too, ``backend="triton"`` is refused.
"""

from __future__ import annotations

import torch

from methods.fp8.device import host_readable
from methods.fp8.formats import FP8Format, get_format, saturating_cast
from methods.fp8.quantized import Quantized
from methods.fp8.scaling import Blocks, DelayedScaler, _padded_view, block_amax, group_amax, scale_from_amax


def use_triton(backend: str, x: torch.Tensor, fmt: FP8Format | None = None) -> bool:
    """Whether to take the Triton path; never for a simulated ``fmt`` (refused if asked for by name)."""
    if fmt is not None and fmt.simulated:
        if backend == "triton":
            raise ValueError(
                f"backend 'triton' needs a torch float8 format; {fmt} is simulated "
                "(use backend auto, dequant or reference)"
            )
        return False
    if backend == "triton":
        return True
    if backend == "auto" and x.is_cuda:
        from methods.fp8.kernels import triton_available

        return triton_available()
    return False


def quantize(
    x: torch.Tensor,
    fmt: str | FP8Format,
    blocks: Blocks,
    *,
    scaler: DelayedScaler | None = None,
    record: bool = True,
    pow2: bool = False,
    margin: int = 0,
    backend: str = "auto",
) -> Quantized:
    """x (R, C) → :class:`Quantized`. Current scaling unless a ``scaler`` (delayed, tensorwise) is given;
    ``record`` pushes this tensor's amax into the scaler's history."""
    fmt = get_format(fmt)
    if x.dim() != 2:
        raise ValueError(f"quantize expects a 2-D tensor, got shape {tuple(x.shape)}")
    br, bc = blocks.resolve(tuple(x.shape))
    resolved = Blocks(br, bc)
    if scaler is not None and (br < x.shape[0] or bc < x.shape[1]):
        raise ValueError("delayed scaling is per-tensor; use current scaling for row/block granularities")
    if use_triton(backend, x, fmt):
        from methods.fp8.kernels import quantize_triton

        q = quantize_triton(x, fmt, resolved, scaler=scaler, pow2=pow2, margin=margin)
    else:
        q = _quantize_torch(x, fmt, resolved, scaler, pow2, margin)
    if scaler is not None and record:
        scaler.record(q.amax)
    return q


def _quantize_torch(x: torch.Tensor, fmt: FP8Format, blocks: Blocks, scaler, pow2: bool, margin: int) -> Quantized:
    R, C = x.shape
    br, bc = blocks.rows, blocks.cols
    grouped = not ((br >= R and bc >= C) or (br == 1 and bc >= C) or (bc == 1 and br >= R))
    if grouped:  # 2-D blocks: one zero-padded (Rb, br, Cb, bc) view serves amax and scaling
        xv = _padded_view(x, br, bc)
        amax = block_amax(xv)
    else:
        amax = group_amax(x, blocks)
    scale = scaler.scale_for(amax) if scaler is not None else scale_from_amax(amax, fmt, margin, pow2)
    scale = scale.reshape(amax.shape)
    # x (bf16 or fp32) times a dimensioned fp32 tensor promotes to fp32: one rounding, at the cast.
    y = (xv * scale[:, None, :, None]) if grouped else x * scale
    n_sat: torch.Tensor | int = 0
    if scaler is not None:  # a delayed scale may be too large for this tensor: clamp and count
        if not host_readable(y) or float(amax.max()) * float(scale.max()) > fmt.max:
            n_sat = (y.abs() > fmt.overflow_threshold).sum()
            y = y.clamp_(-fmt.max, fmt.max)
    # round to nearest even; current scaling needs no clamp (amax*scale <= max). A simulated format's
    # rounding saturates by itself and gives values the carrier dtype holds exactly.
    q = saturating_cast(y, fmt, clamp=False)
    if grouped:
        q = q.view(xv.shape[0] * br, xv.shape[2] * bc)
        if q.shape != (R, C):  # drop the padding (a copy: a view would keep the padded storage alive)
            q = q[:R, :C].clone(memory_format=torch.contiguous_format)
    return Quantized(q, scale, torch.ones_like(scale) / scale, blocks, fmt, amax, n_sat)


def count_underflow(x: torch.Tensor, q: Quantized) -> torch.Tensor:
    """How many values of ``x`` were nonzero but quantized to (signed) zero in ``q`` (same shape): the
    values a scale too small for them flushed, the counterpart of ``n_sat`` at the bottom of the range.
    Zero stays zero through scaling and rounding, so it is (nonzeros of x) - (nonzero codes): two counting
    reads and no boolean temporaries (this runs on every quantization). Read from the codes themselves
    (magnitude bits; float8 has no comparison kernels everywhere), so it holds for every path that made
    ``q``; a device tensor, so the GPU path need not sync per step."""
    d = q.data
    nonzero_codes = torch.count_nonzero(d) if q.fmt.simulated else torch.count_nonzero(d.view(torch.uint8) & 0x7F)
    return torch.count_nonzero(x) - nonzero_codes
