"""Fused Triton kernel for one FP8-state AdamW step (GPU path of ``methods.fp8.adamw.FP8AdamW``).

One program updates ``ROWS`` blocks of ``B`` values: it reads the gradient, the parameter (and the
fp32 master copy if any), the FP8 codes and scales of m and v, decodes them, applies the AdamW step in
fp32, re-encodes m and v with fresh per-block scales and writes everything back. Memory traffic per
value is ~2 (grad) + 2+2 (param) + 2+2 (codes) bytes, against 2 + 4 + 16 for fp32 moments.

It is the PyTorch path of ``FP8AdamW`` written as one kernel, with the same formulas in the same order.
FP8 and bf16 conversions are written out with integer bit operations (round to nearest even, exact)
rather than ``.to(tl.float8e4nv)``: the Triton interpreter (``TRITON_INTERPRET=1``, how this file is
tested on the CPU) gets the carry into the exponent wrong when it rounds to FP8 (126.7 -> 64 instead
of 128), and the integer route gives the same bits on a GPU and in the interpreter. Where the kernel
and the reference still differ it is by fp32 rounding of the transcendentals and of fused
multiply-adds (torch's CPU sqrt is not correctly rounded, for one); the tests bound it.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from methods.fp8 import optim_codec as codec

_FMT_ID = {"e4m3": 0, "e5m2": 1}
_TR_ID = {"none": 0, "sqrt": 1, "dre": 2}


# ---- bit-exact conversions -------------------------------------------------------------------
@triton.jit
def _fp8_to_f32(u, FMT: tl.constexpr):
    """uint8 codes -> fp32 via fp16 (E4M3 magnitude << 7 is fp16 of value * 2^-8; E5M2 << 8 is fp16)."""
    u16 = u.to(tl.uint16)
    if FMT == 0:
        bits = ((u16 & 0x7F) << 7) | ((u16 & 0x80) << 8)
        return bits.to(tl.float16, bitcast=True).to(tl.float32) * 256.0
    else:
        return (u16 << 8).to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def _f32_to_fp8(q, FMT: tl.constexpr):
    """fp32 with |q| <= fmax -> uint8 code, round to nearest even (FP8 subnormals included)."""
    qb = q.to(tl.uint32, bitcast=True)
    sign = ((qb >> 24) & 0x80).to(tl.uint8)
    a = tl.abs(q)
    ab = a.to(tl.uint32, bitcast=True)
    if FMT == 0:
        # normal range: drop 20 fp32 mantissa bits, rounding half to even; the carry may bump the
        # exponent, which is the correct result
        rn = ((ab + 0x7FFFF + ((ab >> 20) & 1)) & 0xFFF00000).to(tl.float32, bitcast=True)
        # subnormal range (|q| < 2^-6): adding 2^14 leaves an fp32 ulp of 2^-9, the E4M3 step
        rs = (a + 16384.0) - 16384.0
        r = tl.where(a < 0.015625, rs, rn)
        h = (r * 0.00390625).to(tl.float16).to(tl.uint16, bitcast=True)  # exact
        return ((h >> 7).to(tl.uint8) & 0x7F) | sign
    else:
        rn = ((ab + 0xFFFFF + ((ab >> 21) & 1)) & 0xFFE00000).to(tl.float32, bitcast=True)
        rs = (a + 128.0) - 128.0  # |q| < 2^-14: fp32 ulp at 2^7 is 2^-16, the E5M2 step
        r = tl.where(a < 6.103515625e-05, rs, rn)
        h = r.to(tl.float16).to(tl.uint16, bitcast=True)
        return ((h >> 8).to(tl.uint8) & 0x7F) | sign


@triton.jit
def _bf16_bits_to_f32(b):
    return (b.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)


@triton.jit
def _f32_to_bf16_bits(x, noise, SR: tl.constexpr):
    """fp32 -> bf16 bits (int16): nearest-even, or stochastic with 16-bit ``noise``.

    inf and the canonical NaN come through both integer adds unchanged (see
    ``optim_codec.round_bf16_stochastic``)."""
    b = x.to(tl.uint32, bitcast=True)
    if SR:
        r = (b + noise) & 0xFFFF0000
    else:
        r = (b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000
    return (r >> 16).to(tl.uint16).to(tl.int16, bitcast=True)


@triton.jit
def _hash32(x):
    x = ((x >> 16) ^ x) * 0x45D9F3B
    x = ((x >> 16) ^ x) * 0x45D9F3B
    return (x >> 16) ^ x


# ---- block codec ----------------------------------------------------------------------------
@triton.jit
def _decode(u, scale, k, FMT: tl.constexpr, TR: tl.constexpr, FMAX: tl.constexpr):
    c = _fp8_to_f32(u, FMT)
    if TR == 2:
        a = tl.abs(c) / FMAX
        y = tl.exp2(tl.log2(a) / k[:, None]) * scale[:, None]
        return tl.where(c < 0, -y, y)
    else:
        y = c * scale[:, None]
        if TR == 1:
            y = y * y
        return y


@triton.jit
def _encode(
    x,
    FMT: tl.constexpr,
    TR: tl.constexpr,
    FMAX: tl.constexpr,
    LOG2_RANGE: tl.constexpr,
    FLOOR: tl.constexpr,
    K_MIN: tl.constexpr,
    K_MAX: tl.constexpr,
):
    """(ROWS, B) fp32 -> (codes uint8, scale fp32 (ROWS,), k bits int16 (ROWS,))."""
    if TR == 2:
        a = tl.abs(x)
        amax = tl.max(a, axis=1)
        amin = tl.min(tl.where(a > 0, a, float("inf")), axis=1)
        k = LOG2_RANGE / tl.log2(amax / amin)
        k = tl.where(amax > 0, k, 1.0)
        k = tl.minimum(tl.maximum(k, K_MIN), K_MAX)
        kbits = _f32_to_bf16_bits(k, 0, False)
        k = _bf16_bits_to_f32(kbits)
        hi = tl.maximum(amax, FLOOR)
        y = tl.exp2(k[:, None] * tl.log2(a / hi[:, None])) * FMAX
        y = tl.minimum(y, FMAX)
        q = tl.where(x < 0, -y, y)
        return _f32_to_fp8(q, FMT), hi, kbits
    else:
        if TR == 1:
            x = tl.sqrt_rn(tl.maximum(x, 0.0))
        amax = tl.maximum(tl.max(tl.abs(x), axis=1), FLOOR)
        scale = amax / FMAX
        q = tl.div_rn(x, scale[:, None])
        q = tl.minimum(tl.maximum(q, -FMAX), FMAX)
        return _f32_to_fp8(q, FMT), scale, tl.zeros_like(scale).to(tl.int16)


@triton.jit
def _fp8_adamw_kernel(
    p_ptr,
    g_ptr,
    w_ptr,  # param (bf16 as int16 bits, or fp32), grad, fp32 master (or p again)
    m_ptr,
    ms_ptr,
    mk_ptr,
    v_ptr,
    vs_ptr,
    vk_ptr,  # codes (uint8), scales (fp32), DRE k (int16)
    N,
    NB,
    beta1,
    beta2,
    eps,
    decay,
    step_size,
    bc2_sqrt,
    salt,
    B: tl.constexpr,
    BP: tl.constexpr,
    ROWS: tl.constexpr,
    M_FMT: tl.constexpr,
    M_TR: tl.constexpr,
    M_FMAX: tl.constexpr,
    M_LOGR: tl.constexpr,
    V_FMT: tl.constexpr,
    V_TR: tl.constexpr,
    V_FMAX: tl.constexpr,
    V_LOGR: tl.constexpr,
    P_BF16: tl.constexpr,
    G_BF16: tl.constexpr,
    HAS_MASTER: tl.constexpr,
    SR: tl.constexpr,
    FLOOR: tl.constexpr,
    K_MIN: tl.constexpr,
    K_MAX: tl.constexpr,
):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    row_ok = rows < NB
    cols = tl.arange(0, BP)  # BP: B rounded up to a power of two (tl.arange needs one)
    offs = rows[:, None] * B + cols[None, :]  # flat element index (ROWS, BP)
    in_blk = row_ok[:, None] & (cols < B)[None, :]
    valid = in_blk & (offs < N)

    if G_BF16:
        g = _bf16_bits_to_f32(tl.load(g_ptr + offs, mask=valid, other=0))
    else:
        g = tl.load(g_ptr + offs, mask=valid, other=0.0)
    if HAS_MASTER:
        w = tl.load(w_ptr + offs, mask=valid, other=0.0)
    elif P_BF16:
        w = _bf16_bits_to_f32(tl.load(p_ptr + offs, mask=valid, other=0))
    else:
        w = tl.load(p_ptr + offs, mask=valid, other=0.0)

    m_s = tl.load(ms_ptr + rows, mask=row_ok, other=1.0)
    v_s = tl.load(vs_ptr + rows, mask=row_ok, other=1.0)
    m_k = m_s  # DRE exponents, read only when a moment uses DRE
    v_k = v_s
    if M_TR == 2:
        m_k = _bf16_bits_to_f32(tl.load(mk_ptr + rows, mask=row_ok, other=0x3F80))
    if V_TR == 2:
        v_k = _bf16_bits_to_f32(tl.load(vk_ptr + rows, mask=row_ok, other=0x3F80))
    m = _decode(tl.load(m_ptr + offs, mask=in_blk, other=0), m_s, m_k, M_FMT, M_TR, M_FMAX)
    v = _decode(tl.load(v_ptr + offs, mask=in_blk, other=0), v_s, v_k, V_FMT, V_TR, V_FMAX)

    # methods.fp8.adamw_base.adamw_update_, in its order
    m = m + (1.0 - beta1) * (g - m)
    v = v * beta2 + (1.0 - beta2) * g * g
    w = w * decay
    denom = tl.div_rn(tl.sqrt_rn(v), bc2_sqrt) + eps
    w = w + step_size * tl.div_rn(m, denom)

    mc, ms, mk = _encode(m, M_FMT, M_TR, M_FMAX, M_LOGR, FLOOR, K_MIN, K_MAX)
    vc, vs, vk = _encode(v, V_FMT, V_TR, V_FMAX, V_LOGR, FLOOR, K_MIN, K_MAX)
    tl.store(m_ptr + offs, mc, mask=in_blk)
    tl.store(v_ptr + offs, vc, mask=in_blk)
    tl.store(ms_ptr + rows, ms, mask=row_ok)
    tl.store(vs_ptr + rows, vs, mask=row_ok)
    if M_TR == 2:
        tl.store(mk_ptr + rows, mk, mask=row_ok)
    if V_TR == 2:
        tl.store(vk_ptr + rows, vk, mask=row_ok)

    if HAS_MASTER:
        tl.store(w_ptr + offs, w, mask=valid)
    if P_BF16:
        noise = 0
        if SR:
            noise = _hash32(offs.to(tl.uint32) ^ salt) & 0xFFFF
        tl.store(p_ptr + offs, _f32_to_bf16_bits(w, noise, SR), mask=valid)
    else:
        tl.store(p_ptr + offs, w, mask=valid)


def _fmt_consts(fmt: codec.Fp8Format) -> tuple[int, float, float]:
    return _FMT_ID[fmt.name], fmt.fmax, math.log2(fmt.normal_range)


def _bits(t: torch.Tensor) -> torch.Tensor:
    """bf16 tensors travel as int16 bits (see module docstring); others as they are."""
    return t.view(torch.int16) if t.dtype == torch.bfloat16 else t


def fused_step(opt, p: torch.Tensor, group: dict, st: dict, rows: int | None = None) -> None:
    """Launch the kernel for one parameter; ``st["step"]`` was already incremented."""
    if p.dtype not in (torch.bfloat16, torch.float32):
        raise TypeError(f"fused FP8 AdamW handles bf16 and fp32 parameters, got {p.dtype}")
    if not p.is_contiguous():
        raise ValueError("fused FP8 AdamW needs contiguous parameters")
    g = p.grad.contiguous()
    if g.dtype not in (torch.bfloat16, torch.float32):
        g = g.float()
    b1, b2 = group["betas"]
    lr, wd, t = group["lr"], group["weight_decay"], float(st["step"])
    nb, blk = st["exp_avg"].shape
    rows = rows or (8 if nb >= 4096 else 1)
    master = st.get("master")
    has_master = master is not None
    sr = bool(opt.stochastic_rounding and p.dtype == torch.bfloat16 and not has_master)
    mk = st.get("exp_avg_k", st["exp_avg_scale"])  # placeholder pointer when there is no k
    vk = st.get("exp_avg_sq_k", st["exp_avg_sq_scale"])
    mid, mfmax, mlogr = _fmt_consts(opt.m_fmt)
    vid, vfmax, vlogr = _fmt_consts(opt.v_fmt)
    _fp8_adamw_kernel[(triton.cdiv(nb, rows),)](
        _bits(p),
        _bits(g),
        master if has_master else p,
        st["exp_avg"].view(torch.uint8),
        st["exp_avg_scale"],
        _bits(mk),
        st["exp_avg_sq"].view(torch.uint8),
        st["exp_avg_sq_scale"],
        _bits(vk),
        p.numel(),
        nb,
        b1,
        b2,
        group["eps"],
        1 - lr * wd if wd else 1.0,
        -lr / (1 - b1**t),
        math.sqrt(1 - b2**t),
        opt._salt(p, st) if sr else 0,
        B=blk,
        BP=triton.next_power_of_2(blk),
        ROWS=rows,
        M_FMT=mid,
        M_TR=_TR_ID[opt.m_transform],
        M_FMAX=mfmax,
        M_LOGR=mlogr,
        V_FMT=vid,
        V_TR=_TR_ID[opt.v_transform],
        V_FMAX=vfmax,
        V_LOGR=vlogr,
        P_BF16=p.dtype == torch.bfloat16,
        G_BF16=g.dtype == torch.bfloat16,
        HAS_MASTER=has_master,
        SR=sr,
        FLOOR=codec.SCALE_FLOOR,
        K_MIN=codec.DRE_K_MIN,
        K_MAX=codec.DRE_K_MAX,
    )


# ---- a standalone codec launch, for tests ------------------------------------------------------
@triton.jit
def _codec_kernel(
    x_ptr,
    c_ptr,
    s_ptr,
    k_ptr,
    y_ptr,
    NB,
    B: tl.constexpr,
    BP: tl.constexpr,
    ROWS: tl.constexpr,
    FMT: tl.constexpr,
    TR: tl.constexpr,
    FMAX: tl.constexpr,
    LOGR: tl.constexpr,
    FLOOR: tl.constexpr,
    K_MIN: tl.constexpr,
    K_MAX: tl.constexpr,
):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    row_ok = rows < NB
    cols = tl.arange(0, BP)
    offs = rows[:, None] * B + cols[None, :]
    ok = row_ok[:, None] & (cols < B)[None, :]
    x = tl.load(x_ptr + offs, mask=ok, other=0.0)
    c, s, kb = _encode(x, FMT, TR, FMAX, LOGR, FLOOR, K_MIN, K_MAX)
    tl.store(c_ptr + offs, c, mask=ok)
    tl.store(s_ptr + rows, s, mask=row_ok)
    tl.store(k_ptr + rows, kb, mask=row_ok)
    y = _decode(c, s, _bf16_bits_to_f32(kb), FMT, TR, FMAX)
    tl.store(y_ptr + offs, y, mask=ok)


def encode_decode(x: torch.Tensor, fmt: str, transform: str, rows: int = 2):
    """Encode fp32 ``(nb, B)`` blocks with the kernel's codec and decode them again.

    Returns ``(codes fp8, scale, k bf16, decoded fp32)``, comparable to ``optim_codec.encode/decode``.
    """
    f = codec.FORMATS[fmt]
    nb, blk = x.shape
    codes = torch.empty(nb, blk, dtype=torch.uint8, device=x.device)
    scale = torch.empty(nb, dtype=torch.float32, device=x.device)
    k = torch.empty(nb, dtype=torch.bfloat16, device=x.device)
    y = torch.empty_like(x)
    fid, fmax, logr = _fmt_consts(f)
    _codec_kernel[(triton.cdiv(nb, rows),)](
        x.contiguous(),
        codes,
        scale,
        k.view(torch.int16),
        y,
        nb,
        B=blk,
        BP=triton.next_power_of_2(blk),
        ROWS=rows,
        FMT=fid,
        TR=_TR_ID[transform],
        FMAX=fmax,
        LOGR=logr,
        FLOOR=codec.SCALE_FLOOR,
        K_MIN=codec.DRE_K_MIN,
        K_MAX=codec.DRE_K_MAX,
    )
    return codes.view(f.dtype), scale, k, y
