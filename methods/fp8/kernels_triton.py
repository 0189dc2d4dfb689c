"""The Triton kernels themselves. Import only through :mod:`methods.fp8.kernels` (which imports this
module lazily, so the package works without Triton). With ``TRITON_INTERPRET=1`` set *before* this
module is imported they run on the CPU in Triton's interpreter, which is how the tests check them.

Rounding: the kernels never rely on Triton's fp32→fp8 cast to round. Triton's interpreter rounds that
cast half-away-from-zero and, when the rounded mantissa overflows, ORs the carry into the exponent
instead of adding it (31.07 → 16 instead of 32; measured with triton 3.9). :func:`_round_fp8` rounds
to the FP8 grid in fp32 arithmetic first (same trick as ``formats.round_to_format``: IEEE fp32
addition does the round-to-nearest-even), so the cast only ever sees representable values and is exact
in the interpreter and on the GPU alike. Quantization is therefore bit-exact against the PyTorch path.
The same holds for the GEMM's bf16 output: the interpreter truncates fp32→bf16 casts, so
:func:`_round_bf16` rounds to nearest even first.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _round_fp8(y, FMAX: tl.constexpr, MBITS: tl.constexpr, EMIN: tl.constexpr):
    """fp32 → nearest FP8 value (saturating at ±FMAX, ties to even), still as fp32. NaN stays NaN."""
    a = tl.minimum(tl.abs(y), FMAX, propagate_nan=tl.PropagateNan.ALL)
    e = ((a.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127
    e = tl.maximum(e, EMIN)
    c = ((e + (127 + 23 - MBITS)) << 23).to(tl.float32, bitcast=True)
    r = (a + c) - c  # the fp32 add rounds |y| onto the FP8 grid of its binade (RNE); the sub is exact
    sign = (y.to(tl.int32, bitcast=True) >> 31) << 31
    return (r.to(tl.int32, bitcast=True) | sign).to(tl.float32, bitcast=True)


@triton.jit
def _round_bf16(x):
    """fp32 → nearest bf16 (ties to even), still fp32 with the low 16 bits zero, so the cast that
    follows is exact: the interpreter truncates fp32→bf16 casts (the GPU rounds to nearest even)."""
    b = x.to(tl.int32, bitcast=True)
    b = (b + (0x7FFF + ((b >> 16) & 1))) & -65536
    return b.to(tl.float32, bitcast=True)


@triton.jit
def _scale_from_amax(amax, FMAX: tl.constexpr, MARGIN_MUL: tl.constexpr, POW2: tl.constexpr, FLOOR: tl.constexpr):
    """Same arithmetic as ``scaling.scale_from_amax``: IEEE division, exact power-of-two floor, and the
    one-ulp nudge that keeps amax * scale <= FMAX."""
    ok = (amax == amax) & (amax < float("inf"))
    a = tl.maximum(tl.where(ok, amax, 1.0), FLOOR)
    s = tl.math.div_rn(a * 0.0 + FMAX, a)
    s = s * MARGIN_MUL
    if POW2:
        s = (s.to(tl.int32, bitcast=True) & 0x7F800000).to(tl.float32, bitcast=True)
    else:
        s = tl.where(a * s > FMAX, (s.to(tl.int32, bitcast=True) - 1).to(tl.float32, bitcast=True), s)
    return s


@triton.jit
def amax_kernel(x_ptr, amax_ptr, n, BLOCK: tl.constexpr):
    """Global max |x| of a contiguous tensor into amax_ptr[0] (must start at 0). NaN counts as inf."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n, other=0.0).to(tl.float32)
    a = tl.where(x == x, tl.abs(x), float("inf"))
    tl.atomic_max(amax_ptr, tl.max(a, axis=0))


@triton.jit
def cast_tensorwise_kernel(
    x_ptr,
    q_ptr,
    qt_ptr,
    scale_ptr,
    amax_ptr,
    sat_ptr,
    R,
    C,
    sxr,
    sxc,
    FMAX: tl.constexpr,
    MBITS: tl.constexpr,
    EMIN: tl.constexpr,
    MARGIN_MUL: tl.constexpr,
    POW2: tl.constexpr,
    FLOOR: tl.constexpr,
    SAT: tl.constexpr,
    CURRENT: tl.constexpr,
    WRITE_T: tl.constexpr,
    BR: tl.constexpr,
    BC: tl.constexpr,
):
    """One per-tensor scale for all of x (R, C).

    CURRENT: the scale comes from amax_ptr (filled by ``amax_kernel``), is computed here by every
    program and stored once. Delayed: the scale is read from scale_ptr, and this same pass also takes
    the amax (for the history) and counts the values that saturate.
    Writes q (R, C) row-major and, with WRITE_T, its transpose qt (C, R) in the same pass.
    """
    pid_r = tl.program_id(0)
    pid_c = tl.program_id(1)
    rows = pid_r * BR + tl.arange(0, BR)
    cols = pid_c * BC + tl.arange(0, BC)
    m = (rows[:, None] < R) & (cols[None, :] < C)
    x = tl.load(x_ptr + rows[:, None].to(tl.int64) * sxr + cols[None, :] * sxc, mask=m, other=0.0).to(tl.float32)
    if CURRENT:
        s = _scale_from_amax(tl.load(amax_ptr), FMAX, MARGIN_MUL, POW2, FLOOR)
        if (pid_r == 0) & (pid_c == 0):
            tl.store(scale_ptr, s)
    else:
        s = tl.load(scale_ptr)
        a = tl.where(x == x, tl.abs(x), float("inf"))
        tl.atomic_max(amax_ptr, tl.max(tl.max(a, axis=1), axis=0))
    y = x * s
    if not CURRENT:
        over = ((tl.abs(y) > SAT) & m).to(tl.int32)
        tl.atomic_add(sat_ptr, tl.sum(tl.sum(over, axis=1), axis=0))
    q = _round_fp8(y, FMAX, MBITS, EMIN).to(q_ptr.dtype.element_ty)
    tl.store(q_ptr + rows[:, None].to(tl.int64) * C + cols[None, :], q, mask=m)
    if WRITE_T:
        tl.store(qt_ptr + cols[None, :].to(tl.int64) * R + rows[:, None], q, mask=m)


@triton.jit
def quant_groups_kernel(
    x_ptr,
    q_ptr,
    qt_ptr,
    scale_ptr,
    sinv_ptr,
    amax_ptr,
    R,
    C,
    sxr,
    sxc,
    PR,
    PC,
    Rb,
    Cb,
    RED_R: tl.constexpr,
    RED_C: tl.constexpr,
    FMAX: tl.constexpr,
    MBITS: tl.constexpr,
    EMIN: tl.constexpr,
    MARGIN_MUL: tl.constexpr,
    POW2: tl.constexpr,
    FLOOR: tl.constexpr,
    WRITE_T: tl.constexpr,
    TR: tl.constexpr,
    TC: tl.constexpr,
):
    """Fused amax + scale + cast (+ transpose) for groups smaller than the tensor, current scaling.

    Program (i, j) owns rows [i*PR, (i+1)*PR) and cols [j*PC, (j+1)*PC) and walks them in TR×TC tiles
    twice: first a running elementwise max of |x|, then scale-and-cast. RED_C reduces that max along
    columns (groups are row segments: rowwise, 1×128), RED_R along rows (column segments: colwise,
    128×1), both for 2-D blocks (128×128). Group scales go to a (Rb, Cb) grid.
    """
    pid_r = tl.program_id(0)
    pid_c = tl.program_id(1)
    r0 = pid_r * PR
    c0 = pid_c * PC
    r_end = tl.minimum(r0 + PR, R)
    c_end = tl.minimum(c0 + PC, C)
    acc = tl.zeros((TR, TC), dtype=tl.float32)
    for dr in range(0, PR, TR):
        for dc in range(0, PC, TC):
            rows = r0 + dr + tl.arange(0, TR)
            cols = c0 + dc + tl.arange(0, TC)
            m = (rows[:, None] < r_end) & (cols[None, :] < c_end)
            x = tl.load(x_ptr + rows[:, None].to(tl.int64) * sxr + cols[None, :] * sxc, mask=m, other=0.0).to(
                tl.float32
            )
            acc = tl.maximum(acc, tl.where(x == x, tl.abs(x), float("inf")))
    if RED_C:
        acc = tl.max(acc, axis=1, keep_dims=True)  # (TR, 1)
    if RED_R:
        acc = tl.max(acc, axis=0, keep_dims=True)  # (1, TC) or (1, 1)
    s = _scale_from_amax(acc, FMAX, MARGIN_MUL, POW2, FLOOR)
    # group coordinates of this program's scales
    if RED_R:
        gi = tl.zeros((1, 1), dtype=tl.int64) + pid_r
    else:
        gi = (r0 + tl.arange(0, TR))[:, None].to(tl.int64)
    if RED_C:
        gj = tl.zeros((1, 1), dtype=tl.int64) + pid_c
    else:
        gj = (c0 + tl.arange(0, TC))[None, :].to(tl.int64)
    gmask = (gi < Rb) & (gj < Cb)
    tl.store(scale_ptr + gi * Cb + gj, s, mask=gmask)
    tl.store(sinv_ptr + gi * Cb + gj, tl.math.div_rn(s * 0.0 + 1.0, s), mask=gmask)
    tl.store(amax_ptr + gi * Cb + gj, acc, mask=gmask)
    for dr in range(0, PR, TR):
        for dc in range(0, PC, TC):
            rows = r0 + dr + tl.arange(0, TR)
            cols = c0 + dc + tl.arange(0, TC)
            m = (rows[:, None] < r_end) & (cols[None, :] < c_end)
            x = tl.load(x_ptr + rows[:, None].to(tl.int64) * sxr + cols[None, :] * sxc, mask=m, other=0.0).to(
                tl.float32
            )
            q = _round_fp8(x * s, FMAX, MBITS, EMIN).to(q_ptr.dtype.element_ty)
            tl.store(q_ptr + rows[:, None].to(tl.int64) * C + cols[None, :], q, mask=m)
            if WRITE_T:
                tl.store(qt_ptr + cols[None, :].to(tl.int64) * R + rows[:, None], q, mask=m)


def _mm_configs():
    if INTERPRET:  # one small config: the interpreter runs every autotune candidate
        return [triton.Config({"BM": 32, "BN": 32, "GROUP_M": 4}, num_warps=4, num_stages=1)]
    return [
        triton.Config({"BM": bm, "BN": bn, "GROUP_M": 8}, num_warps=w, num_stages=st)
        for bm, bn, w, st in ((128, 128, 8, 3), (128, 256, 8, 3), (256, 128, 8, 3), (128, 128, 4, 4), (64, 128, 4, 4))
    ]


@triton.autotune(configs=_mm_configs(), key=["M", "N", "K", "G_K"])
@triton.jit
def scaled_mm_kernel(
    a_ptr,
    b_ptr,
    c_ptr,
    sa_ptr,
    sb_ptr,
    M,
    N,
    K,
    sam,
    sak,
    sbk,
    sbn,
    scm,
    scn,
    sa_m,
    sa_k,
    sb_k,
    sb_n,
    GA_M: tl.constexpr,
    GB_N: tl.constexpr,
    G_K: tl.constexpr,
    BK: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    """C (M, N) = dequant(A (M, K)) @ dequant(B (K, N)), fp32 accumulation.

    Scale of A's row m in K-chunk kc is ``sa[(m // GA_M) * sa_m + kc * sa_k]`` (a zero stride means
    "the same for all"); likewise B. G_K > 0 (= BK = 128): scales change along K, so every chunk's
    partial product is scaled and added to the fp32 accumulator (DeepSeek-V3's promotion every 128);
    G_K = 0: scales are constant along K and applied once to the finished sum.
    """
    pid = tl.program_id(0)
    n_m = tl.cdiv(M, BM)
    n_n = tl.cdiv(N, BN)
    group = GROUP_M * n_n  # grouped launch order: neighbouring programs share A tiles in L2
    first_m = (pid // group) * GROUP_M
    size_m = tl.minimum(n_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group) % size_m
    pid_n = (pid % group) // size_m
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    mm = rm < M
    nm = rn < N
    sa_rows = (rm // GA_M).to(tl.int64) * sa_m
    sb_cols = (rn // GB_N).to(tl.int64) * sb_n
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        ks = k0 + rk
        km = ks < K
        a = tl.load(
            a_ptr + rm[:, None].to(tl.int64) * sam + ks[None, :] * sak, mask=mm[:, None] & km[None, :], other=0.0
        )
        b = tl.load(
            b_ptr + ks[:, None].to(tl.int64) * sbk + rn[None, :] * sbn, mask=km[:, None] & nm[None, :], other=0.0
        )
        if G_K > 0:
            kc = k0 // G_K
            sa = tl.load(sa_ptr + sa_rows + kc * sa_k, mask=mm, other=0.0)
            sb = tl.load(sb_ptr + kc * sb_k + sb_cols, mask=nm, other=0.0)
            acc += tl.dot(a, b, out_dtype=tl.float32) * (sa[:, None] * sb[None, :])
        else:
            acc = tl.dot(a, b, acc, out_dtype=tl.float32)
    if G_K == 0:
        sa = tl.load(sa_ptr + sa_rows, mask=mm, other=0.0)
        sb = tl.load(sb_ptr + sb_cols, mask=nm, other=0.0)
        acc = acc * sa[:, None] * sb[None, :]
    if c_ptr.dtype.element_ty == tl.bfloat16:
        acc = _round_bf16(acc)
    tl.store(
        c_ptr + rm[:, None].to(tl.int64) * scm + rn[None, :] * scn,
        acc.to(c_ptr.dtype.element_ty),
        mask=mm[:, None] & nm[None, :],
    )
