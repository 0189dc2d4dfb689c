"""FP8 GEMM backends: ``C = dequant(A) @ dequant(B)`` with fp32 accumulation, for every granularity.

A is logically (M, K) and B (K, N), each a :class:`~methods.fp8.quantize.Quantized` whose groups along K
are either the whole of K (tensorwise, row/column-wise: the scales factor out of the sum) or 128 long
(1×128 tiles, 128×128 blocks: the scales change along K). In the second case the sum is split into
K-chunks of 128, each chunk's partial product is scaled by its two scales and accumulated in fp32 —
DeepSeek-V3's "promote to fp32 every 128 elements", which is what makes fine-grained scaling work on
tensor cores that accumulate FP8 products with ~14 bits.

Backends:

- ``torch``: ``torch._scaled_mm``. On the CPU (torch 2.13) it accepts tensorwise scales (one-element
  tensors) and row-wise scales (scale_a (M, 1), scale_b (1, N)), any memory layout and any shape, with
  fp32 or bf16 output; it refuses block scales, so blocks run as one row-wise call per K-chunk.
- ``dequant``: decode both operands to fp32 through a 256-entry table (one gather; a tensorwise scale
  is folded into the table, group scales are one multiply), then one fp32 ``torch.mm``. Every product
  of two FP8 values is exact in fp32 and the sum is accumulated in fp32, so this *is* an FP8 GEMM with
  fp32 accumulation, just not on FP8 hardware. Measured on this project's 2-core AVX2 CPU at the tiny
  model's shapes (1024 × 256 × 688): 4.2-4.8 ms per GEMM against 5.5-7.6 ms for ``torch._scaled_mm``,
  which converts FP8 to fp32 element by element first — so this is the CPU default.
- ``reference``: dequantize with ``.to(fp32 or fp64)`` and ``torch.matmul``. Defines the result the
  others are tested against.
- ``triton``: ``methods.fp8.kernels.scaled_mm_triton`` (one kernel for all granularities).
- ``auto``: Triton on a CUDA device when Triton is importable; ``dequant`` on the CPU; elsewhere
  ``torch``, falling back to ``reference`` for what ``torch._scaled_mm`` refuses.

An operand in a *simulated* format (``fmt.simulated``: an ExMy with no torch dtype) holds its values,
not codes: ``dequant`` reads them as fp32 (exact: the carrier holds each value exactly) and multiplies
by the inverse scale, so the product is the same fp32-accumulated GEMM of the format's values. ``auto``
takes that path on every device; ``torch`` and ``triton`` need float8 codes and refuse, naming the
format (``FP8Recipe`` refuses the combination before any work).
"""

from __future__ import annotations

import torch

from methods.fp8.device import is_fake
from methods.fp8.formats import decode, decode_table
from methods.fp8.quantize import use_triton
from methods.fp8.quantized import Quantized, k_chunk  # noqa: F401 - k_chunk: part of this module's API

#: the GEMM paths ``fp8_mm`` can take (a method's ``backend`` option)
BACKENDS = ("auto", "torch", "dequant", "triton", "reference")


def fp8_mm(
    a: Quantized, b: Quantized, out_dtype: torch.dtype = torch.float32, backend: str = "auto", keep_a: bool = False
) -> torch.Tensor:
    if backend == "reference":
        return mm_reference(a, b, out_dtype)
    if is_fake(a.data):
        # A memory trace (methods.memory_trace): a fake tensor stands for a device tensor, where one kernel
        # (Triton, or torch._scaled_mm when the scales are constant along K) writes only the (M, N)
        # output. Traced as that allocation; the per-K-chunk loop below would add partial sums no GPU
        # kernel makes, and thousands of ops to the trace.
        k_chunk(a, b)
        return a.data.new_empty((a.shape[0], b.shape[1]), dtype=out_dtype)
    sim = [q.fmt for q in (a, b) if q.fmt.simulated]
    if sim:
        if backend in ("torch", "triton"):
            raise ValueError(
                f"GEMM backend {backend!r} needs torch float8 operands; {sim[0]} is simulated "
                "(use backend auto, dequant or reference)"
            )
        if backend not in ("auto", "dequant"):
            raise ValueError(f"unknown GEMM backend {backend!r}; valid: {', '.join(BACKENDS)}")
        return mm_dequant(a, b, out_dtype, keep_a)
    if use_triton(backend, a.data):
        from methods.fp8.kernels import scaled_mm_triton

        return scaled_mm_triton(a, b, out_dtype)
    # the CPU default reads no values (a fake tensor returned above): compiled code takes it too
    if backend == "dequant" or (backend == "auto" and a.data.device.type == "cpu"):
        return mm_dequant(a, b, out_dtype, keep_a)
    if backend == "auto":
        try:
            return mm_scaled(a, b, out_dtype)
        except RuntimeError:  # a device/shape/dtype torch._scaled_mm does not take
            return mm_reference(a, b, out_dtype)
    if backend != "torch":
        raise ValueError(f"unknown GEMM backend {backend!r}; valid: {', '.join(BACKENDS)}")
    return mm_scaled(a, b, out_dtype)


def mm_reference(
    a: Quantized, b: Quantized, out_dtype: torch.dtype = torch.float32, acc_dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    k_chunk(a, b)  # same compatibility rule as the fast paths
    return (a.dequantize(acc_dtype) @ b.dequantize(acc_dtype)).to(out_dtype)


def dequantize_fast(q: Quantized, keep: bool = False) -> torch.Tensor:
    """fp32 values of q: one table gather (+ one multiply by the group scales unless tensorwise).
    ``keep`` stores them on q (``q.decoded``) for a second GEMM reading the same tensor."""
    if q.decoded is not None:
        return q.decoded
    x = _dequantize_fast(q)
    if keep:
        q.decoded = x
    return x


def _dequantize_fast(q: Quantized) -> torch.Tensor:
    if q.fmt.simulated:  # values, not codes: the widening copy is the decode
        x = q.data.to(torch.float32, copy=True)  # a copy even from an fp32 carrier: scaled in place below
        if q.scale_inv.numel() == 1:
            return x.mul_(q.scale_inv.reshape(()))
    elif q.scale_inv.numel() == 1:
        return decode(q.data, q.fmt, decode_table(q.fmt, q.data.device) * q.scale_inv.reshape(()))
    else:
        x = decode(q.data, q.fmt)
    R, C = q.shape
    br, bc = q.blocks.rows, q.blocks.cols
    Rb, Cb = q.scale_inv.shape
    if (br == 1 or br >= R) and (bc == 1 or bc >= C):  # per row / per column: plain broadcasting
        return x.mul_(q.scale_inv)
    if R % br == 0 and C % bc == 0 and x.is_contiguous():
        return x.view(Rb, br, Cb, bc).mul_(q.scale_inv[:, None, :, None]).view(R, C)
    from methods.fp8.scaling import expand_scales

    return x.mul_(expand_scales(q.scale_inv, q.blocks, (R, C)))


def mm_dequant(
    a: Quantized, b: Quantized, out_dtype: torch.dtype = torch.float32, keep_a: bool = False
) -> torch.Tensor:
    k_chunk(a, b)
    out = dequantize_fast(a, keep_a) @ dequantize_fast(b)
    return out if out_dtype == torch.float32 else out.to(out_dtype)


def _rows_scale(q: Quantized, j: int, n: int) -> torch.Tensor:
    """Scale-inverse column ``j`` of q's group grid, expanded to one value per row: (n, 1)."""
    s = q.scale_inv[:, j]
    if s.numel() == 1:
        return s.reshape(1, 1).expand(n, 1)
    br = q.blocks.rows
    if br > 1:
        s = s.repeat_interleave(br)[:n]
    return s.reshape(n, 1)


def mm_scaled(a: Quantized, b: Quantized, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``torch._scaled_mm``: one call when scales are constant along K, else one per K-chunk."""
    M, K = a.shape
    N = b.shape[1]
    chunk = k_chunk(a, b)
    bt = b.t()  # (N, K): its row scales are B's column scales
    if chunk >= K:
        if a.scale_inv.numel() == 1 and b.scale_inv.numel() == 1:
            sa, sb = a.scale_inv.reshape(()), b.scale_inv.reshape(())
        else:
            sa = _rows_scale(a, 0, M).contiguous()
            sb = _rows_scale(bt, 0, N).reshape(1, N).contiguous()
        return torch._scaled_mm(a.data, b.data, sa, sb, out_dtype=out_dtype)
    acc = None
    for k0 in range(0, K, chunk):
        ja, jb = k0 // min(a.blocks.cols, K), k0 // min(b.blocks.rows, K)
        sa = _rows_scale(a, ja, M).contiguous()
        sb = _rows_scale(bt, jb, N).reshape(1, N).contiguous()
        part = torch._scaled_mm(a.data[:, k0 : k0 + chunk], b.data[k0 : k0 + chunk], sa, sb, out_dtype=torch.float32)
        acc = part if acc is None else acc.add_(part)
    return acc.to(out_dtype)
