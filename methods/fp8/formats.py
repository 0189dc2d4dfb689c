"""The two FP8 formats, and how a value becomes one.

E4M3 is the OCP "fn" variant torch calls ``float8_e4m3fn``: no infinities, one NaN code per sign, so
the largest finite value is 448 (0b0_1111_110) instead of IEEE's 240. E5M2 is IEEE-like (it has inf)
with max 57344. FP8 training uses E4M3 where precision matters (weights, activations) and E5M2 where
range does (gradients, the "hybrid" recipe of TE/FP8-LM).

Casting policy everywhere in fp8bench: **saturate, then round to nearest even**. A value beyond the
format's max becomes ±max (never inf/NaN: E5M2 would give inf, and a NaN code in E4M3 would poison a
whole GEMM); every other value rounds to the nearest representable one, ties to even mantissa. torch's
``.to(float8_*)`` rounds to nearest even (``tests/fp8/test_formats.py`` checks it bit for bit over a
dense sweep), so the PyTorch path is ``clamp`` + ``.to``. :func:`round_to_format` does the same rounding
with plain fp32 arithmetic; the Triton kernels use that arithmetic too, because Triton's interpreter
rounds fp32→fp8 casts half-away-from-zero (and can carry a rounded-up mantissa into the wrong exponent).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from methods.fp8.device import real_tensors


@dataclass(frozen=True)
class FP8Format:
    name: str
    dtype: torch.dtype
    exponent_bits: int
    mantissa_bits: int
    bias: int
    max: float  # largest finite value

    @property
    def min_exponent(self) -> int:
        """Exponent of the smallest normal value; subnormals share its spacing."""
        return 1 - self.bias

    @property
    def min_normal(self) -> float:
        return 2.0 ** self.min_exponent

    @property
    def min_subnormal(self) -> float:
        return 2.0 ** (self.min_exponent - self.mantissa_bits)

    @property
    def overflow_threshold(self) -> float:
        """Values beyond this would round past ``max`` even in an unbounded format (max + half its ulp:
        464 for E4M3, 61440 for E5M2); only they are *saturated*: clamping anything smaller to ±max is
        ordinary rounding."""
        import math

        e = math.floor(math.log2(self.max))
        return self.max + 2.0 ** (e - self.mantissa_bits) / 2

    @property
    def max_rel_error(self) -> float:
        """Worst relative rounding error for normal values: half an ulp at mantissa 1.0."""
        return 2.0 ** -(self.mantissa_bits + 1)

    def __str__(self) -> str:
        return self.name


E4M3 = FP8Format("e4m3", torch.float8_e4m3fn, exponent_bits=4, mantissa_bits=3, bias=7, max=448.0)
E5M2 = FP8Format("e5m2", torch.float8_e5m2, exponent_bits=5, mantissa_bits=2, bias=15, max=57344.0)
FORMATS: dict[str, FP8Format] = {"e4m3": E4M3, "e5m2": E5M2}


def get_format(fmt: str | FP8Format) -> FP8Format:
    if isinstance(fmt, FP8Format):
        return fmt
    try:
        return FORMATS[fmt]
    except KeyError:
        raise ValueError(f"unknown FP8 format {fmt!r}; valid: {', '.join(FORMATS)}") from None


def saturating_cast(y: torch.Tensor, fmt: FP8Format, clamp: bool = True) -> torch.Tensor:
    """``y`` (already scaled, fp32) → FP8 codes: clamp to ±max, then torch's round-to-nearest-even.

    ``clamp=False`` is for callers that know |y| <= max already (current scaling by construction);
    it saves a pass over the tensor.
    """
    if clamp:
        y = y.clamp(-fmt.max, fmt.max)
    return y.to(fmt.dtype)


def round_to_format(x: torch.Tensor, fmt: FP8Format) -> torch.Tensor:
    """fp32 → the nearest value of ``fmt`` (saturating, ties to even), returned as fp32.

    The trick: for |x| with exponent e (at least the format's minimum exponent, so subnormals get the
    fixed subnormal spacing), the fp8 grid spacing is 2^(e - m). Adding C = 2^(e + 23 - m) puts |x| into
    the binade where fp32's own spacing is exactly that, so the fp32 addition itself rounds |x| to the
    grid with IEEE round-to-nearest-even; subtracting C is exact. Pure fp32 ops, so the Triton kernels
    can do the same thing and then cast a value that is already representable (any rounding mode agrees).
    """
    x = x.float()
    a = x.abs().clamp(max=fmt.max)
    e = ((a.view(torch.int32) >> 23) & 0xFF) - 127
    e = e.clamp(min=fmt.min_exponent)
    c = ((e + (127 + 23 - fmt.mantissa_bits)) << 23).view(torch.float32)
    r = (a + c) - c
    r = torch.where(a.isnan(), a, r)
    return torch.copysign(r, x)


def fp8_values(fmt: FP8Format) -> torch.Tensor:
    """Every finite value of the format, ascending (for tests and docs)."""
    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(fmt.dtype).float()
    return codes[torch.isfinite(codes)].unique()


_TABLES: dict[tuple[str, str], torch.Tensor] = {}


def decode_table(fmt: FP8Format, device: torch.device | str = "cpu") -> torch.Tensor:
    """fp32 value of each of the 256 codes (NaN codes stay NaN): a gather through this table decodes
    FP8 ~6x faster on the CPU than ``.to(torch.float32)``, which converts element by element."""
    key = (fmt.name, str(device))
    if key not in _TABLES:
        with real_tensors():  # a cached fake table (memory trace) would poison real runs
            _TABLES[key] = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(fmt.dtype).float().to(device)
    return _TABLES[key]


def decode(codes: torch.Tensor, fmt: FP8Format, table: torch.Tensor | None = None) -> torch.Tensor:
    """FP8 codes (any layout) → fp32 values through a 256-entry ``table`` (default: the plain decode
    table; pass a pre-scaled one to dequantize a tensorwise-scaled tensor in the same gather)."""
    if table is None:
        table = decode_table(fmt, codes.device)
    if not codes.is_contiguous():
        if codes.dim() == 2 and codes.t().is_contiguous():
            return decode(codes.t(), fmt, table).t()
        codes = codes.contiguous()
    return table.index_select(0, codes.view(torch.uint8).reshape(-1).int()).view(codes.shape)
