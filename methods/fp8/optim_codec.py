"""Block-scaled FP8 storage of Adam moments (PyTorch reference; ``optim_triton`` mirrors it on GPU).

A moment tensor of ``N`` values is stored as ``ceil(N / B)`` blocks of ``B`` FP8 codes (the last block
zero-padded) plus one fp32 scale per block; ``transform`` optionally reshapes the values before they
are scaled, to fit the narrow FP8 range:

- ``none``: ``code = x / s`` with ``s = amax(|x|) / fmax`` (torchao's AdamWFp8 does this);
- ``sqrt`` (second moment only): store ``sqrt(v)``. ``v`` spans the square of the gradient's range;
  its square root spans the same range as ``m``, so the two flush to zero at the same place;
- ``dre``: COAT's dynamic range expansion. Each block is mapped as ``|x| -> (|x| / amax)^k`` with
  ``k = log(fmax / fmin_normal) / log(amax / amin)``, so the block's own range fills the format's normal
  range (``k > 1`` spends unused exponent range on precision: the relative error of ``x`` is that of
  the code divided by ``k``; ``k < 1`` compresses a range wider than the format's). ``k`` is kept per
  block in bf16 (2 bytes) and ``amax`` is the block's scale.

Encoding rounds to nearest-even and never produces NaN: code magnitudes are clamped to ``fmax``
(``torch``'s FP8 casts do not saturate), and an all-zero block gets a tiny positive scale.

Decoding E4M3 uses an exact bit trick instead of ``Tensor.float()``: PyTorch's E4M3 -> fp32 cast is a
scalar loop on the CPU (about 5 ns/value), while E4M3's 7 magnitude bits shifted left by 7 are an
fp16 of the same value times 2^-8, subnormals included, and fp16 -> fp32 is vectorised (~5x faster).

Also here: a counter-based hash (same bits in PyTorch and Triton) that drives stochastic rounding of
the bf16 parameters, so the CPU reference and the GPU kernel can be compared bit for bit.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from methods.fp8.device import is_fake


@dataclass(frozen=True)
class Fp8Format:
    name: str
    dtype: torch.dtype
    fmax: float  # largest finite value
    min_normal: float
    mant_bits: int
    exp_bias: int

    @property
    def normal_range(self) -> float:
        """fmax / smallest normal: the dynamic range with full mantissa precision."""
        return self.fmax / self.min_normal


FORMATS = {
    "e4m3": Fp8Format("e4m3", torch.float8_e4m3fn, 448.0, 2.0**-6, 3, 7),
    "e5m2": Fp8Format("e5m2", torch.float8_e5m2, 57344.0, 2.0**-14, 2, 15),
}
TRANSFORMS = ("none", "sqrt", "dre")
#: DRE exponent bounds: ``k`` above 1 expands a narrow block, below 1 compresses a wide one.
DRE_K_MIN, DRE_K_MAX = 1.0 / 16, 16.0
#: floor of a block scale: an all-zero block must not divide by zero, and 1e-30 is far below any
#: moment that matters next to Adam's eps.
SCALE_FLOOR = 1e-30


def n_blocks(numel: int, block: int) -> int:
    return -(-numel // block)


def state_keys(name: str, transform: str) -> tuple[str, ...]:
    """Optimizer-state entries one stored moment ``name`` occupies (codes, scale, DRE exponent)."""
    return (name, f"{name}_scale") + ((f"{name}_k",) if transform == "dre" else ())


def state_bytes_per_block(block: int, transform: str) -> int:
    """Bytes one block of one moment occupies: codes + fp32 scale (+ bf16 DRE exponent)."""
    return block + 4 + (2 if transform == "dre" else 0)


def to_blocks(x: torch.Tensor, block: int) -> torch.Tensor:
    """fp32 ``(nblocks, block)`` view of ``x`` (a copy only when it must be padded or cast)."""
    flat = x.reshape(-1).float()
    pad = n_blocks(flat.numel(), block) * block - flat.numel()
    if pad:
        flat = F.pad(flat, (0, pad))
    return flat.view(-1, block)


def encode(x: torch.Tensor, fmt: Fp8Format, transform: str = "none") -> dict[str, torch.Tensor]:
    """fp32 ``(nb, B)`` blocks -> ``{"codes": (nb, B) fp8, "scale": (nb,) fp32[, "k": (nb,) bf16]}``."""
    if transform == "sqrt":
        x = x.clamp_min(0).sqrt()
    if transform == "dre":
        return _encode_dre(x, fmt)
    amax = x.abs().amax(dim=1).clamp_min_(SCALE_FLOOR)
    scale = amax / fmt.fmax
    q = (x / scale[:, None]).clamp_(-fmt.fmax, fmt.fmax)
    return {"codes": q.to(fmt.dtype), "scale": scale}


def _encode_dre(x: torch.Tensor, fmt: Fp8Format) -> dict[str, torch.Tensor]:
    a = x.abs()
    amax = a.amax(dim=1)
    amin = torch.where(a > 0, a, torch.inf).amin(dim=1)
    k = dre_exponent(amax, amin, fmt)
    hi = amax.clamp_min(SCALE_FLOOR)
    # (a / hi)^k = exp2(k * log2(a / hi)); a = 0 gives exp2(-inf) = 0 exactly. In place on `a`.
    y = a.div_(hi[:, None]).log2_().mul_(k.float()[:, None]).exp2_().mul_(fmt.fmax).clamp_(max=fmt.fmax)
    return {"codes": y.copysign_(x).to(fmt.dtype), "scale": hi, "k": k}


def dre_exponent(amax: torch.Tensor, amin: torch.Tensor, fmt: Fp8Format) -> torch.Tensor:
    """Per-block DRE exponent, rounded to bf16 (its storage type) before it is used.

    A block of one repeated magnitude (``amax == amin``) gets ``DRE_K_MAX``; an all-zero block 1.
    """
    k = math.log2(fmt.normal_range) / torch.log2(amax / amin)  # amax == amin -> +inf
    k = torch.where(amax > 0, k, 1.0).clamp_(DRE_K_MIN, DRE_K_MAX)
    return k.to(torch.bfloat16)


def decode(
    codes: torch.Tensor, scale: torch.Tensor, fmt: Fp8Format, transform: str = "none", k: torch.Tensor | None = None
) -> torch.Tensor:
    """Inverse of :func:`encode`: fp32 ``(nb, B)``."""
    c = fp8_to_float(codes)
    if transform == "dre":
        y = c.abs().div_(fmt.fmax).log2_().div_(k.float()[:, None]).exp2_().mul_(scale[:, None])
        return y.copysign_(c)
    y = c.mul_(scale[:, None])
    return y.square_() if transform == "sqrt" else y


def fp8_to_float(codes: torch.Tensor) -> torch.Tensor:
    """Exact FP8 -> fp32 (see the module docstring for why E4M3 takes a detour through fp16).

    Not while ``torch.compile`` traces (``methods.fp8.optim_fused``): Inductor vectorises the plain cast,
    while the integer detour keeps its loops scalar. Both are exact, so the values are the same."""
    if codes.dtype == torch.float8_e4m3fn and not torch.compiler.is_compiling():
        u = codes.view(torch.uint8).to(torch.int16)
        # magnitude bits land in fp16's exponent+mantissa at 2^-8 of the value; sign bit -> bit 15
        # via * -256 (128 * -256 = -32768 = 0x8000 as int16), no shift overflow.
        bits = ((u & 0x7F) << 7) | ((u & 0x80) * -256)
        return bits.view(torch.float16).float().mul_(256.0)
    return codes.float()


# ---- counter-based hash for stochastic rounding ------------------------------------------------
# The same 32-bit integer hash (two xorshift-multiply rounds, multiplier 0x45d9f3b) is evaluated in
# int32 here and in uint32 in Triton; int32 multiplication wraps like uint32's, and ``>>`` on int32
# is arithmetic, so logical shifts are written ``(x >> s) & mask``.

HASH_MUL = 0x45D9F3B


def hash_salt(seed: int, param_index: int, step: int) -> int:
    """A per-(seed, tensor, step) 31-bit salt, mixed on the host in Python integers."""
    x = (seed * 0x9E3779B1 + param_index * 0x85EBCA77 + step * 0xC2B2AE3D) & 0xFFFFFFFF
    return hash32_int(x) & 0x7FFFFFFF


def hash32_int(x: int) -> int:
    """Reference of :func:`hash32` on one Python integer (for tests and salts)."""
    x &= 0xFFFFFFFF
    x = ((x >> 16) ^ x) * HASH_MUL & 0xFFFFFFFF
    x = ((x >> 16) ^ x) * HASH_MUL & 0xFFFFFFFF
    return (x >> 16) ^ x


def hash32(idx: torch.Tensor, salt: int) -> torch.Tensor:
    """int32 hash of ``idx ^ salt`` (bit-identical to :func:`hash32_int` read as uint32)."""
    x = idx ^ salt
    for _ in range(2):
        x.bitwise_xor_((x >> 16).bitwise_and_(0xFFFF)).mul_(HASH_MUL)
    return x.bitwise_xor_((x >> 16).bitwise_and_(0xFFFF))


_ARANGE: dict[torch.device, torch.Tensor] = {}
#: a memory trace's own cache (fake mode → device → arange): the trace sees the index held for the whole
#: run, as a real run holds it, and no fake tensor outlives its trace to reach a real step
_ARANGE_FAKE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _arange32(n: int, device: torch.device, like: torch.Tensor | None = None) -> torch.Tensor:
    """A cached int32 arange (one per device, grown on demand) so each step does not rebuild it."""
    cache = _ARANGE_FAKE.setdefault(like.fake_mode, {}) if like is not None and is_fake(like) else _ARANGE
    a = cache.get(device)
    if a is None or a.numel() < n:
        a = torch.arange(max(n, 1 << 16), dtype=torch.int32, device=device)
        cache[device] = a
    return a[:n]


def round_bf16_stochastic(x: torch.Tensor, salt: int) -> torch.Tensor:
    """fp32 -> bf16, rounding up with probability equal to the discarded fraction (unbiased).

    Element ``i`` of the flattened tensor uses the low 16 bits of ``hash32(i, salt)``. Infinities
    and the canonical NaN (0x7FC00000) survive the integer add unchanged, so no ``isfinite`` pass
    (slow on the CPU) is needed; only a NaN whose payload has its top 15 mantissa bits set could carry
    into the sign, and no arithmetic produces one.
    """
    flat = x.reshape(-1)
    bits = hash32(_arange32(flat.numel(), x.device, like=x), salt).bitwise_and_(0xFFFF)
    bits.add_(flat.view(torch.int32)).bitwise_and_(-65536)
    return bits.view(torch.float32).to(torch.bfloat16).view(x.shape)  # exact: low 16 bits are zero
