"""Host side of the Triton kernels (``kernels_triton.py``): launch geometry, outputs, availability.

Importing this module never imports Triton; the first kernel call does. On a CUDA device the kernels
are the GPU path of :func:`methods.fp8.quantize.quantize` and :func:`methods.fp8.gemm.fp8_mm`; on the
CPU they run only under ``TRITON_INTERPRET=1`` (tests), which must be set before the first call.

- :func:`quantize_triton`: tensorwise = two launches (global amax; then scale + cast [+ transpose] in
  one pass, the scale computed in-kernel from the amax, so no host round-trip); delayed tensorwise =
  one launch (cast with the history's scale, amax for the history and the saturation count in the
  same pass); row / column / 1×128 / 128×1 / 128×128 groups = one launch of the fused
  amax + scale + cast (+ transpose) kernel.
- :func:`scaled_mm_triton`: one block-scaled FP8 GEMM kernel for every granularity.
"""

from __future__ import annotations

import importlib.util
import os

import torch

from methods.fp8.formats import FP8Format
from methods.fp8.quantized import Quantized, k_chunk
from methods.fp8.scaling import AMAX_FLOOR, Blocks, DelayedScaler


def triton_available() -> bool:
    return not unavailable_reason()


def unavailable_reason() -> str:
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        return "no CUDA device (set TRITON_INTERPRET=1 to run the kernels in Triton's CPU interpreter)"
    return ""


def _k():
    from methods.fp8 import kernels_triton

    return kernels_triton


def _consts(fmt: FP8Format, pow2: bool, margin: int) -> dict:
    return dict(
        FMAX=fmt.max,
        MBITS=fmt.mantissa_bits,
        EMIN=fmt.min_exponent,
        MARGIN_MUL=2.0**-margin,
        POW2=bool(pow2),
        FLOOR=AMAX_FLOOR,
    )


def _pow2_at_most(n: int, cap: int) -> int:
    p = 1
    while p < n and p < cap:
        p *= 2
    return max(p, 16)


def quantize_triton(
    x: torch.Tensor,
    fmt: FP8Format,
    blocks: Blocks,
    *,
    scaler: DelayedScaler | None = None,
    pow2: bool = False,
    margin: int = 0,
) -> Quantized:
    q, _ = quantize_triton_t(x, fmt, blocks, scaler=scaler, pow2=pow2, margin=margin, write_t=False)
    return q


def quantize_triton_t(
    x: torch.Tensor,
    fmt: FP8Format,
    blocks: Blocks,
    *,
    scaler: DelayedScaler | None = None,
    pow2: bool = False,
    margin: int = 0,
    write_t: bool = True,
) -> tuple[Quantized, torch.Tensor | None]:
    """Quantize x (R, C); with ``write_t`` also return the codes transposed, (C, R) contiguous, written
    by the same pass (what a GEMM that wants the other operand layout reads)."""
    k = _k()
    R, C = x.shape
    br, bc = blocks.resolve((R, C))
    dev = x.device
    q = torch.empty(R, C, dtype=fmt.dtype, device=dev)
    qt = torch.empty(C, R, dtype=fmt.dtype, device=dev) if write_t else q
    consts = _consts(fmt, pow2, margin)
    if br >= R and bc >= C:
        return _tensorwise(k, x, q, qt, fmt, blocks, scaler, consts, write_t)
    if scaler is not None:
        raise ValueError("delayed scaling is per-tensor only")
    Rb, Cb = -(-R // br), -(-C // bc)
    scale = torch.empty(Rb, Cb, dtype=torch.float32, device=dev)
    sinv, amax = torch.empty_like(scale), torch.empty_like(scale)
    red_r, red_c = br > 1, bc > 1
    if red_c and not red_r:  # row segments: strips of TR rows, each program walks one group's columns
        TR, TC = 16, _pow2_at_most(bc, 128)
        PR, PC = TR, bc
    elif red_r and not red_c:  # column segments
        TR, TC = _pow2_at_most(br, 128), 16
        PR, PC = br, TC
    else:  # 2-D blocks
        TR, TC = _pow2_at_most(br, 64), _pow2_at_most(bc, 64)
        PR, PC = br, bc
    grid = (-(-R // PR), -(-C // PC))
    k.quant_groups_kernel[grid](
        x,
        q,
        qt,
        scale,
        sinv,
        amax,
        R,
        C,
        x.stride(0),
        x.stride(1),
        PR,
        PC,
        Rb,
        Cb,
        RED_R=red_r,
        RED_C=red_c,
        WRITE_T=write_t,
        TR=TR,
        TC=TC,
        **consts,
    )
    return Quantized(q, scale, sinv, Blocks(br, bc), fmt, amax, 0), (qt if write_t else None)


def _tensorwise(k, x, q, qt, fmt, blocks, scaler, consts, write_t):
    R, C = x.shape
    dev = x.device
    amax = torch.zeros(1, dtype=torch.float32, device=dev)
    sat = torch.zeros(1, dtype=torch.int32, device=dev)
    BR, BC = 32, 128
    grid = (-(-R // BR), -(-C // BC))
    if scaler is not None and scaler.has_history():
        scale = scaler.scale.reshape(1).clone()
        k.cast_tensorwise_kernel[grid](
            x,
            q,
            qt,
            scale,
            amax,
            sat,
            R,
            C,
            x.stride(0),
            x.stride(1),
            SAT=fmt.overflow_threshold,
            CURRENT=False,
            WRITE_T=write_t,
            BR=BR,
            BC=BC,
            **consts,
        )
        n_sat = sat
    else:  # current scaling (also a delayed scaler's very first use)
        xc = x if x.is_contiguous() else x.contiguous()
        BLOCK = 4096
        k.amax_kernel[(-(-xc.numel() // BLOCK),)](xc, amax, xc.numel(), BLOCK=BLOCK)
        scale = torch.empty(1, dtype=torch.float32, device=dev)
        k.cast_tensorwise_kernel[grid](
            x,
            q,
            qt,
            scale,
            amax,
            sat,
            R,
            C,
            x.stride(0),
            x.stride(1),
            SAT=fmt.overflow_threshold,
            CURRENT=True,
            WRITE_T=write_t,
            BR=BR,
            BC=BC,
            **consts,
        )
        n_sat = 0
    scale = scale.reshape(1, 1)
    resolved = Blocks(*blocks.resolve((R, C)))
    q8 = Quantized(q, scale, torch.ones_like(scale) / scale, resolved, fmt, amax.reshape(1, 1), n_sat)
    return q8, (qt if write_t else None)


def scaled_mm_triton(a: Quantized, b: Quantized, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``dequant(a) @ dequant(b)`` (a logical (M, K), b (K, N)) in one kernel, fp32 accumulation."""

    k = _k()
    M, K = a.shape
    N = b.shape[1]
    chunk = k_chunk(a, b)
    G_K = 0 if chunk >= K else chunk
    if G_K not in (0, 128):
        raise ValueError(f"the Triton GEMM scales along K in chunks of 128, got {chunk}")
    sa, sb = a.scale_inv.float(), b.scale_inv.float()
    Ma, Ka = sa.shape
    Kb, Nb = sb.shape
    ga_m = a.blocks.rows if Ma > 1 else 1
    gb_n = b.blocks.cols if Nb > 1 else 1
    if ga_m not in (1, 128) or gb_n not in (1, 128):
        raise ValueError(f"unsupported scale groups: A rows {a.blocks.rows}, B cols {b.blocks.cols}")
    sa_m = sa.stride(0) if Ma > 1 else 0
    sa_k = sa.stride(1) if Ka > 1 else 0
    sb_k = sb.stride(0) if Kb > 1 else 0
    sb_n = sb.stride(1) if Nb > 1 else 0
    c = torch.empty(M, N, dtype=out_dtype, device=a.data.device)

    def grid(meta):
        return (-(-M // meta["BM"]) * -(-N // meta["BN"]),)

    k.scaled_mm_kernel[grid](
        a.data,
        b.data,
        c,
        sa,
        sb,
        M,
        N,
        K,
        a.data.stride(0),
        a.data.stride(1),
        b.data.stride(0),
        b.data.stride(1),
        c.stride(0),
        c.stride(1),
        sa_m,
        sa_k,
        sb_k,
        sb_n,
        GA_M=ga_m,
        GB_N=gb_n,
        G_K=G_K,
        BK=128,
    )
    return c
