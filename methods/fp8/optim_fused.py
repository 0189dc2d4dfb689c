"""Fused CPU step of the FP8-state AdamW (``FP8AdamW(impl="fused")``): one pass over the blocks of a
parameter.

The reference path (``impl="torch"``) decodes m and v into full-size fp32 tensors, runs the AdamW update
as a dozen separate elementwise ops, encodes again and rounds the weight: each op streams its operands
through memory, so the step moves many times the ~10 bytes per parameter it has to. Here the same
formulas, in the same order, are one function of whole blocks, handed to ``torch.compile``. Inductor
emits vectorised C++ loop nests over the blocks of a call (decode + update + per-block amax/amin, the
DRE exponents, encode + stochastic rounding), called on ``COMPILED_CHUNK_BLOCKS`` blocks at a time so
that the one fp32 and one FP8 intermediate it keeps stay in L2.

- Compiled per configuration (formats, transforms, master copy, rounding, dtypes); Dynamo's automatic
  dynamic shapes make the block count and the hyperparameters runtime values after their first change,
  so a model's shapes share two or three compilations (warm-up: ~6 s with a warm Inductor cache, ~25 s
  cold, measured on a 2-core CPU).
- Where ``torch.compile`` is the identity (``methods.memory_trace`` replaces it so that a step can be
  traced under fake tensors), or the tensors are fake, or ``impl="fused"`` cannot compile, the very same
  function runs eagerly over chunks of ``EAGER_CHUNK_BLOCKS`` blocks, so its temporaries stay bounded
  instead of parameter-sized. ``impl="auto"`` takes the reference path instead where it cannot compile.
- The last, partial block of a parameter runs eagerly on zero-padded copies, as the reference pads.
- Stochastic rounding uses ``optim_codec``'s counter-based hash of the element's index in the flattened
  parameter (offset by the chunk's first element), so every path draws the same bits.

Measured (``python -m benchmarks.optim_bench --steps 10``, 1 thread, 2-vCPU AVX-512 Xeon): 11 ns/param
on the tiny and small models and a 4096 x 11008 layer, 3x (models) to 8x (layer) faster than the
reference and ~1.6x faster than torchao's AdamWFp8; compute-bound at ~9% of the copy bandwidth (table
and analysis: ``benchmarks/OPTIM_ABLATION.md``). Agreement with the reference path is tested in
``tests/optim/test_optim_fused.py``: bit for bit eagerly; compiled within an fp32 ulp where Inductor's
sqrt and log2 differ from eager's (see ``_update_blocks``).
"""

from __future__ import annotations

import math
import struct
import types
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from methods.fp8 import optim_codec as codec
from methods.fp8.device import is_fake

#: blocks per call when the function runs eagerly: 128 blocks of 256 keep each fp32 temporary at 128 KiB
#: (L2-sized) while the per-call overhead stays below the work of the chunk
EAGER_CHUNK_BLOCKS = 128

#: blocks per compiled call: Inductor keeps one fp32 (v) and one FP8 intermediate per value of a call, so a
#: call of 512 blocks of 256 holds ~640 KiB of them, in L2, where a whole 7B-sized layer would hold 225 MiB
COMPILED_CHUNK_BLOCKS = 512


@dataclass(frozen=True)
class Spec:
    """What the compiled code specialises on (everything else is a runtime argument)."""

    m_fmt: str
    m_transform: str
    v_fmt: str
    v_transform: str
    has_master: bool
    stochastic: bool  # stochastic rounding of a bf16 parameter without master copy
    p_dtype: torch.dtype
    g_dtype: torch.dtype


def _update_blocks(
    p,
    g,
    master,
    mc,
    ms,
    mk,
    vc,
    vs,
    vk,
    offset,
    salt,
    b1c,
    b1c_m1,
    b2,
    b2c,
    decay,
    bc2_sqrt,
    eps,
    step_size,
    spec: Spec,
):
    """AdamW on whole blocks: ``p``, ``g`` (and ``master``) are ``(nb, B)`` views like the codes ``mc``, ``vc``.

    Mirrors ``FP8AdamW``'s reference path (``methods.fp8.adamw_base.adamw_update_`` between ``optim_codec.decode``
    and ``optim_codec.encode``) op for op; the scalars are the same Python floats it computes. ``offset``
    is the flat index of the first value (it salts the stochastic rounding as in the whole parameter).
    Writes codes, scales, DRE exponents, the master copy (if any) and ``p`` in place.
    """
    gf = g.float()
    w = master if spec.has_master else p.float()
    mf, vf = codec.FORMATS[spec.m_fmt], codec.FORMATS[spec.v_fmt]
    m = codec.decode(mc, ms, mf, spec.m_transform, mk)
    v = codec.decode(vc, vs, vf, spec.v_transform, vk)
    # methods.fp8.adamw_base.adamw_update_, out of place
    if torch.compiler.is_compiling():
        # Inductor lowers lerp/addcmul/addcdiv in another rounding order than the eager CPU kernels use;
        # spelled out here as eager computes them (measured: lerp = fma(w, end - start, start) for w < 0.5,
        # addcmul = fma(value * t1, t2, self), addcdiv = self + (value * t1) / t2)
        # (for w >= 0.5 eager takes fma(w - 1, end - start, end), w - 1 in fp32: b1c_m1)
        m = _fma(gf - m, b1c, m) if abs(b1c) < 0.5 else _fma(gf - m, b1c_m1, gf)
        v = _fma(b2c * gf, gf, v * b2)
        w = w * decay
        denom = (v.sqrt() / bc2_sqrt) + eps
        w = w + (step_size * m) / denom
    else:
        m = torch.lerp(m, gf, b1c)
        v = torch.addcmul(v * b2, gf, gf, value=b2c)
        w = w * decay
        denom = (v.sqrt() / bc2_sqrt) + eps
        w = torch.addcdiv(w, m, denom, value=step_size)
    for x, fmt, tr, codes, scale, k in ((m, mf, spec.m_transform, mc, ms, mk), (v, vf, spec.v_transform, vc, vs, vk)):
        enc = codec.encode(x, fmt, tr)
        codes.copy_(enc["codes"])
        scale.copy_(enc["scale"])
        if tr == "dre":
            k.copy_(enc["k"])
    if spec.has_master:
        master.copy_(w)
    if spec.stochastic:
        nb, blk = w.shape
        idx = torch.arange(nb * blk, dtype=torch.int32, device=w.device).view(nb, blk) + offset
        bits = codec.hash32(idx, salt).bitwise_and_(0xFFFF)
        bits = bits.add_(w.view(torch.int32)).bitwise_and_(-65536)
        p.copy_(bits.view(torch.float32))  # exact: the low 16 bits are zero
    else:
        p.copy_(w)


def update_scalars(group: dict, st: dict) -> tuple[float, ...]:
    """The scalars of one step, exactly as ``methods.fp8.adamw_base.adamw_update_`` computes them (Python
    floats, which the kernels round to fp32 as eager does): ``(1 - b1, fp32(1 - b1) - 1, b2, 1 - b2, decay,
    sqrt(1 - b2^t), eps, -lr / (1 - b1^t))``.

    A decay of 1.0 where there is none (x * 1.0 is x bit for bit, and one compiled variant fewer);
    fp32(1 - b1) - 1 is exact (Sterbenz), the coefficient eager lerp computes in fp32 for a weight >= 0.5.
    """
    b1, b2 = group["betas"]
    lr, wd = group["lr"], group["weight_decay"]
    t = 1.0 if is_fake(st["step"]) else float(st["step"])
    return (
        1 - b1,
        _f32(1 - b1) - 1.0,
        b2,
        1 - b2,
        1 - lr * wd if wd else 1.0,
        math.sqrt(1 - b2**t),
        group["eps"],
        -lr / (1 - b1**t),
    )


def _f32(x: float) -> float:
    """``x`` rounded to fp32, as eager kernels see a Python scalar."""
    return struct.unpack("f", struct.pack("f", x))[0]


def _fma(a, b, c):
    """``a * b + c`` rounded once (Inductor's fused multiply-add; only reached while compiling)."""
    from torch._inductor import inductor_prims

    return inductor_prims.fma(a, b, c)


_COMPILED: dict = {}
#: why the compiled step could not be used, by :class:`Spec`; the step then runs eagerly (``impl="fused"``)
#: or on the reference path (``impl="auto"``)
FALLBACK: dict = {}


def _compiled(spec: Spec):
    """The compiled update for ``spec``; ``_update_blocks`` itself where ``torch.compile`` is the identity;
    ``None`` where it cannot compile (reason in ``FALLBACK``).

    ``torch.compile`` is looked up at call time and its result kept per compile function: under
    ``methods.memory_trace`` it is the identity, whose result is the eager function (run chunked, below).
    Each spec compiles its own copy of the code object: Dynamo keeps one cache, with one recompile limit,
    per code object, and a model's variants (a last block that is full or not, one block or many) times
    the specs of its parameters would otherwise exhaust it and fall back to eager without a word.
    """
    if spec in FALLBACK:
        return None
    compile_fn = torch.compile
    key = (spec, compile_fn)
    if key not in _COMPILED:
        code = _update_blocks.__code__.replace()
        fn = types.FunctionType(code, _update_blocks.__globals__, f"fp8_adamw_{abs(hash(spec)):x}")
        try:
            out = compile_fn(fn)
            _COMPILED[key] = _update_blocks if out is fn else out  # the identity: run eagerly, chunked
        except Exception as e:  # noqa: BLE001 - no usable compiler: say why
            FALLBACK[spec] = f"torch.compile unavailable: {type(e).__name__}: {e}"
            return None
    return _COMPILED[key]


def spec_for(opt, p: torch.Tensor, st: dict) -> Spec:
    if p.dtype not in (torch.bfloat16, torch.float32):
        raise TypeError(f"fused FP8 AdamW handles bf16 and fp32 parameters, got {p.dtype}")
    master = st.get("master")
    return Spec(
        opt.m_fmt.name,
        opt.m_transform,
        opt.v_fmt.name,
        opt.v_transform,
        master is not None,
        bool(opt.stochastic_rounding and p.dtype == torch.bfloat16 and master is None),
        p.dtype,
        p.grad.dtype,
    )


@torch.no_grad()
def fused_step(
    opt, p: torch.Tensor, group: dict, st: dict, *, compiled: bool = True, eager_ok: bool = True
) -> str | None:
    """One step of ``p`` (``st["step"]`` already incremented). Returns how it ran, ``"compiled"`` or
    ``"eager"``; or ``None``, having changed nothing, where it cannot compile and ``eager_ok`` is False (a
    chunk that fails to recompile after others ran is finished eagerly). Reasons land in ``FALLBACK``.

    ``compiled=False`` forces the eager, chunked run of the same function (tests compare the two).
    """
    if not p.is_contiguous():
        raise ValueError("fused FP8 AdamW needs contiguous parameters")
    spec = spec_for(opt, p, st)
    scalars = update_scalars(group, st)
    salt = opt._salt(p, st) if spec.stochastic else 0
    flat, g = p.view(-1), p.grad.reshape(-1)
    master = st["master"].view(-1) if spec.has_master else None
    mc, ms, mk = st["exp_avg"], st["exp_avg_scale"], st.get("exp_avg_k")
    vc, vs, vk = st["exp_avg_sq"], st["exp_avg_sq_scale"], st.get("exp_avg_sq_k")
    nb, blk = mc.shape
    full = flat.numel() // blk  # whole blocks; a last partial block runs on padded copies

    def blocks(b0, b1_):
        e0, e1, sl = b0 * blk, b1_ * blk, slice(b0, b1_)
        return (
            flat[e0:e1].view(-1, blk),
            g[e0:e1].view(-1, blk),
            None if master is None else master[e0:e1].view(-1, blk),
            mc[sl],
            ms[sl],
            None if mk is None else mk[sl],
            vc[sl],
            vs[sl],
            None if vk is None else vk[sl],
            e0,
            salt,
            *scalars,
            spec,
        )

    eager = not compiled or is_fake(p)
    fn = None if eager else _compiled(spec)
    done, ran = 0, "eager"  # blocks updated so far
    if fn is not None and fn is not _update_blocks:
        try:
            while done < full:
                end = min(done + COMPILED_CHUNK_BLOCKS, full)
                fn(*blocks(done, end))
                done = end
            ran = "compiled"
        except Exception as e:  # noqa: BLE001 - (re)compilation happens in a call, before it changes anything
            if not _is_compile_error(e):
                raise
            FALLBACK[spec] = f"torch.compile failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            fn = None
    if fn is None and not eager and not eager_ok and done == 0:
        return None
    if ran == "eager":  # the rest of the blocks (all of them, unless a later chunk failed to compile)
        # chunks of a multiple of 64 values: the eager kernels switch from SIMD to scalar code (std::exp2 for
        # SLEEF's, a last-bit difference) for a chunk's last n % 32 values, so chunks that split the
        # parameter where the reference's whole-tensor ops have no such tail keep the two identical
        step_b = -(-EAGER_CHUNK_BLOCKS // (64 // math.gcd(blk, 64))) * (64 // math.gcd(blk, 64))
        for b0 in range(done, full, step_b):
            _update_blocks(*blocks(b0, min(b0 + step_b, full)))
    if full < nb:  # the last, partial block: eager on zero-padded copies (what the reference pads with)
        e0, r = full * blk, flat.numel() - full * blk
        pad = lambda x: F.pad(x[e0:], (0, blk - r)).view(1, blk)  # noqa: E731
        pt, mt = pad(flat), None if master is None else pad(master)
        sl = slice(full, nb)
        _update_blocks(
            pt,
            pad(g),
            mt,
            mc[sl],
            ms[sl],
            None if mk is None else mk[sl],
            vc[sl],
            vs[sl],
            None if vk is None else vk[sl],
            e0,
            salt,
            *scalars,
            spec,
        )
        flat[e0:].copy_(pt.view(-1)[:r])
        if mt is not None:
            master[e0:].copy_(mt.view(-1)[:r])
    return ran


def _is_compile_error(e: Exception) -> bool:
    """A failure of Dynamo/Inductor (no C++ compiler, unsupported op), as opposed to one of the step itself."""
    from torch._dynamo.exc import BackendCompilerFailed, TorchDynamoException

    return isinstance(e, (BackendCompilerFailed, TorchDynamoException, OSError))
