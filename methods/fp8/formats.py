"""Number formats for GEMM operands: torch's two FP8 formats and any other ExMy, simulated exactly.

An ``ExMy`` format has 1 sign bit, ``e`` exponent bits with bias 2^(e-1) - 1, and ``m`` mantissa bits
with an implicit leading 1 (subnormals at exponent code 0 share the smallest normal binade's spacing).
Where the top exponent code goes is the format's ``specials``:

- ``ieee``: the top exponent code is inf/NaN, as in IEEE 754; max = 2^bias · (2 - 2^-m).
  E5M2 (57344) and bf16 = E8M7 (3.39e38) are IEEE-like; so is every generic name ``eXmY``.
- ``fn`` (OCP's E4M3 convention, torch's ``float8_e4m3fn``): no infinities, the top exponent carries
  numbers too and only the all-ones code is NaN; max = 2^(bias+1) · (2 - 2^(1-m)), 448 for E4M3.
  Generic names spell it ``eXmYfn``.

(The OCP MX FP6/FP4 formats, where every code is a number, would be a third convention; they are not
here, so ``e3m2`` is IEEE-like with max 14, not MX FP6's 28.)

Names: ``e4m3`` and ``e5m2`` are torch's ``float8_e4m3fn`` and ``float8_e5m2`` (OCP fn E4M3, max 448;
IEEE-like E5M2, max 57344), exactly as before; ``e4m3ieee`` is the IEEE-like E4M3 (max 240). Any other
``eXmY`` / ``eXmYfn`` with 2 <= X <= 8 and 1 <= Y <= 22 is *simulated*: no torch dtype holds its codes,
so :func:`round_to_format` rounds to its exact value set and the values are carried in a float tensor,
``fmt.carrier``: bf16 when Y <= 7 (bf16 has 8 significant bits and E8's range, subnormals included,
so it holds every such value exactly; half the bytes of fp32), fp32 otherwise. The GEMM decodes them
to fp32, multiplies by the inverse scale and accumulates in fp32, as it does for FP8 codes. Limits:
X >= 2 (with one exponent bit IEEE leaves no normal numbers), Y >= 1 (with a one-digit significand
"ties to even" is undefined: both neighbours of a tie are odd powers of two), and the format's range
must fit fp32 (``e8mYfn`` would reach 2^128).

Casting policy everywhere in fp8bench: **saturate, then round to nearest even**. A value beyond the
format's max becomes ±max (never inf/NaN: E5M2 would give inf, and a NaN code in E4M3 would poison a
whole GEMM); every other value rounds to the nearest representable one, ties to even mantissa; values
below half the smallest subnormal go to zero, keeping their sign. torch's ``.to(float8_*)`` rounds to
nearest even (``tests/fp8/test_formats.py`` checks it bit for bit over a dense sweep), so the PyTorch
path of the native formats is ``clamp`` + ``.to``. :func:`round_to_format` does the same rounding with
plain fp32 arithmetic (fp64 for E8 formats, see there); the Triton kernels use that arithmetic too,
because Triton's interpreter rounds fp32→fp8 casts half-away-from-zero (and can carry a rounded-up
mantissa into the wrong exponent). ``tests/fp8/test_exmy.py`` checks every format of <= 8 bits
exhaustively against a reference built from bit patterns.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass

import torch

from methods.fp8.device import real_tensors

#: the ranges a simulated format may have (see the module docstring for why)
EXPONENT_BITS = (2, 8)
MANTISSA_BITS = (1, 22)
SPECIALS = ("ieee", "fn")


@dataclass(frozen=True)
class ExMy:
    name: str
    dtype: torch.dtype | None  # torch's own dtype for the codes; None: simulated, values in ``carrier``
    exponent_bits: int
    mantissa_bits: int
    bias: int
    max: float  # largest finite value
    specials: str = "ieee"  # ieee | fn: what the top exponent code means (module docstring)

    @property
    def simulated(self) -> bool:
        """No torch dtype: values are rounded by :func:`round_to_format` and carried in ``carrier``."""
        return self.dtype is None

    @property
    def carrier(self) -> torch.dtype:
        """The dtype of a quantized tensor's ``data``: the codes' dtype, or the float that holds every
        value of a simulated format exactly (bf16 up to 7 mantissa bits, else fp32)."""
        if self.dtype is not None:
            return self.dtype
        return torch.bfloat16 if self.mantissa_bits <= 7 else torch.float32

    @property
    def bits(self) -> int:
        return 1 + self.exponent_bits + self.mantissa_bits

    @property
    def min_exponent(self) -> int:
        """Exponent of the smallest normal value; subnormals share its spacing."""
        return 1 - self.bias

    @property
    def max_exponent(self) -> int:
        """Exponent of the largest finite value's binade."""
        return math.frexp(self.max)[1] - 1

    @property
    def min_normal(self) -> float:
        return 2.0**self.min_exponent

    @property
    def min_subnormal(self) -> float:
        return 2.0 ** (self.min_exponent - self.mantissa_bits)

    @property
    def overflow_threshold(self) -> float:
        """Values beyond this would round past ``max`` even in an unbounded format (max + half its ulp:
        464 for E4M3, 61440 for E5M2); only they are *saturated*: clamping anything smaller to ±max is
        ordinary rounding."""
        return self.max + 2.0 ** (self.max_exponent - self.mantissa_bits) / 2

    @property
    def max_rel_error(self) -> float:
        """Worst relative rounding error for normal values: half an ulp at mantissa 1.0."""
        return 2.0 ** -(self.mantissa_bits + 1)

    def __str__(self) -> str:
        return self.name


#: the name the library has always used for this class (FP8 was its only content)
FP8Format = ExMy

E4M3 = ExMy("e4m3", torch.float8_e4m3fn, exponent_bits=4, mantissa_bits=3, bias=7, max=448.0, specials="fn")
E5M2 = ExMy("e5m2", torch.float8_e5m2, exponent_bits=5, mantissa_bits=2, bias=15, max=57344.0)
#: torch's native float8 formats (the ones a Triton kernel or ``torch._scaled_mm`` can take)
FORMATS: dict[str, ExMy] = {"e4m3": E4M3, "e5m2": E5M2}
_NATIVE = {(4, 3, "fn"): E4M3, (5, 2, "ieee"): E5M2}

FORMAT_HELP = (
    "e4m3 (torch float8_e4m3fn, OCP, max 448), e5m2 (torch float8_e5m2), or a simulated "
    f"eXmY (IEEE-like) / eXmYfn (no inf, OCP-E4M3-like) with {EXPONENT_BITS[0]} <= X <= "
    f"{EXPONENT_BITS[1]} and {MANTISSA_BITS[0]} <= Y <= {MANTISSA_BITS[1]}, e.g. e3m4, e2m3, e8m7; "
    "e4m3ieee is the IEEE-like E4M3 (max 240)"
)
_NAME = re.compile(r"e(\d+)m(\d+)(fn|ieee)?")


def format_name(exponent_bits: int, mantissa_bits: int, specials: str = "ieee") -> str:
    """Canonical name: ``eXmY`` (IEEE-like) or ``eXmYfn``; E4M3 is the exception both ways, because
    ``e4m3`` has always meant torch's fn format."""
    base = f"e{exponent_bits}m{mantissa_bits}"
    if base == "e4m3":
        return "e4m3" if specials == "fn" else "e4m3ieee"
    return base + ("fn" if specials == "fn" else "")


@functools.cache
def exmy(exponent_bits: int, mantissa_bits: int, specials: str = "ieee") -> ExMy:
    """The format with these bits (torch's own E4M3 fn / E5M2 where they are meant, else simulated)."""
    e, m = exponent_bits, mantissa_bits
    if specials not in SPECIALS:
        raise ValueError(f"specials must be one of {', '.join(SPECIALS)}, got {specials!r}")
    if (e, m, specials) in _NATIVE:
        return _NATIVE[(e, m, specials)]
    if not (EXPONENT_BITS[0] <= e <= EXPONENT_BITS[1] and MANTISSA_BITS[0] <= m <= MANTISSA_BITS[1]):
        raise ValueError(f"no format e{e}m{m}: valid: {FORMAT_HELP}")
    bias = 2 ** (e - 1) - 1
    if specials == "ieee":  # top exponent code reserved: the largest binade is 2^bias
        mx = 2.0**bias * (2 - 2.0**-m)
    else:  # the top binade holds numbers but its all-ones mantissa is NaN
        mx = 2.0 ** (bias + 1) * (2 - 2.0 ** (1 - m))
    if mx > torch.finfo(torch.float32).max:
        raise ValueError(
            f"e{e}m{m}{specials}: max {mx:g} exceeds fp32's range, which carries and rounds "
            f"simulated values; valid: {FORMAT_HELP}"
        )
    return ExMy(
        format_name(e, m, specials), None, exponent_bits=e, mantissa_bits=m, bias=bias, max=mx, specials=specials
    )


def get_format(fmt: str | ExMy) -> ExMy:
    """A format by name (``e4m3``, ``e5m2``, any ``eXmY`` / ``eXmYfn``; see :data:`FORMAT_HELP`)."""
    if isinstance(fmt, ExMy):
        return fmt
    if isinstance(fmt, str):
        if fmt in FORMATS:
            return FORMATS[fmt]
        hit = _NAME.fullmatch(fmt)
        if hit:
            e, m, suffix = int(hit[1]), int(hit[2]), hit[3]
            specials = "fn" if suffix == "fn" or (suffix is None and (e, m) == (4, 3)) else "ieee"
            return exmy(e, m, specials)
    raise ValueError(f"unknown number format {fmt!r}; valid: {FORMAT_HELP}")


def is_format_name(name) -> bool:
    """Whether ``name`` is a string :func:`get_format` accepts (the method options' rule)."""
    if not isinstance(name, str):
        return False
    try:
        get_format(name)
    except ValueError:
        return False
    return True


#: The precision ladder, for a profile to run: (format for every GEMM operand, exponent bits
#: removed, mantissa bits removed), both counted from bf16 = E8M7 (IEEE-like, so e8m7 rounds exactly as a
#: bf16 cast does). E8M4..E8M2 keep bf16's range and remove mantissa only; the FP8 and 6-bit formats
#: trade range for precision and remove both. (``tests/fp8/test_exmy.py`` checks the counts.)
LADDER_BASE = "e8m7"
LADDER: tuple[tuple[str, int, int], ...] = (
    ("e8m7", 0, 0),
    ("e8m4", 0, 3),
    ("e8m3", 0, 4),
    ("e8m2", 0, 5),
    ("e5m2", 3, 5),
    ("e4m3", 4, 4),
    ("e3m4", 5, 3),
    ("e3m2", 5, 5),
    ("e2m3", 6, 4),
)


def saturating_cast(y: torch.Tensor, fmt: ExMy, clamp: bool = True) -> torch.Tensor:
    """``y`` (already scaled, fp32) → FP8 codes: clamp to ±max, then torch's round-to-nearest-even.
    A simulated format gets its values (in ``fmt.carrier``) from :func:`round_to_format` instead,
    which saturates itself.

    ``clamp=False`` is for callers that know |y| <= max already (current scaling by construction);
    it saves a pass over the tensor.
    """
    if fmt.simulated:
        return round_to_format(y, fmt).to(fmt.carrier)  # exact: every value of fmt is a carrier value
    if clamp:
        y = y.clamp(-fmt.max, fmt.max)
    return y.to(fmt.dtype)


def _fits_fp32_trick(fmt: ExMy) -> bool:
    """Whether 2^(e + 23 - m) is a finite fp32 for the largest binade e of the format (all but E8)."""
    return fmt.max_exponent + 127 + 23 - fmt.mantissa_bits <= 254


def round_to_format(x: torch.Tensor, fmt: ExMy) -> torch.Tensor:
    """fp32 → the nearest value of ``fmt`` (saturating, ties to even), returned as fp32.

    The trick: for |x| with exponent e (at least the format's minimum exponent, so subnormals get the
    fixed subnormal spacing), the format's grid spacing is 2^(e - m). Adding C = 2^(e + 23 - m) puts |x|
    into the binade where fp32's own spacing is exactly that, so the fp32 addition itself rounds |x| to
    the grid with IEEE round-to-nearest-even; subtracting C is exact. Pure fp32 ops, so the Triton kernels
    can do the same thing and then cast a value that is already representable (any rounding mode agrees).
    For E8 formats C would pass fp32's largest exponent (2^150 for bf16's top binade), so the same two
    operations run in fp64 with C = 2^(e + 52 - m): x is exact in fp64 and the result has at most 23
    significant bits within fp32's range, so its cast back is exact too.
    """
    # In-place after the first op (x itself is never written): this runs on every GEMM operand of a
    # simulated format, and each pass over the tensor costs as much as the whole FP8 cast does.
    # NaN needs no branch: whatever C is, NaN + C - C is NaN.
    x = x.float()
    a = x.abs().clamp_(max=fmt.max)
    m = fmt.mantissa_bits
    biased = (a.view(torch.int32) >> 23).clamp_(min=fmt.min_exponent + 127)  # a >= 0: no sign bit to mask
    if _fits_fp32_trick(fmt):
        c = biased.add_(23 - m).bitwise_left_shift_(23).view(torch.float32)
        r = (a + c).sub_(c)
    else:
        c = biased.long().add_(1023 - 127 + 52 - m).bitwise_left_shift_(52).view(torch.float64)
        r = (a.double() + c).sub_(c).float()
    return r.copysign_(x)


def fp8_values(fmt: ExMy) -> torch.Tensor:
    """Every finite value of the format, ascending, as fp32 (for tests and docs; formats of <= 16 bits)."""
    if not fmt.simulated:
        codes = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(fmt.dtype).float()
        v = codes[torch.isfinite(codes)].unique()
        return torch.where(v == 0, 0.0, v)  # +0 (unique may keep the -0 code)
    if fmt.bits > 16:
        raise ValueError(f"{fmt} has 2^{fmt.bits} codes; enumerate formats of at most 16 bits")
    m = fmt.mantissa_bits
    E = torch.arange(2**fmt.exponent_bits, dtype=torch.float64)[:, None]
    M = torch.arange(2**m, dtype=torch.float64)[None, :]
    # value of each (exponent code, mantissa code) in fp64 (exact: <= 23 significant bits, E8's range)
    v = torch.where(E == 0, M * 2.0 ** (fmt.min_exponent - m), (2**m + M) * torch.exp2(E - fmt.bias - m))
    v = v[v <= fmt.max]  # drops the top exponent (ieee) or the all-ones NaN code (fn)
    return torch.cat([-v[v > 0], v]).unique().float()  # zero once, as +0


#: alias under the format-neutral name
format_values = fp8_values

_TABLES: dict[tuple[str, str], torch.Tensor] = {}


def _codes_only(fmt: ExMy) -> None:
    if fmt.simulated:
        raise ValueError(
            f"{fmt} is simulated: a quantized tensor holds its values (as {fmt.carrier}), not codes to decode"
        )


def decode_table(fmt: ExMy, device: torch.device | str = "cpu") -> torch.Tensor:
    """fp32 value of each of the 256 codes (NaN codes stay NaN): a gather through this table decodes
    FP8 ~6x faster on the CPU than ``.to(torch.float32)``, which converts element by element."""
    _codes_only(fmt)
    key = (fmt.name, str(device))
    if key not in _TABLES:
        with real_tensors():  # a cached fake table (memory trace) would poison real runs
            _TABLES[key] = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(fmt.dtype).float().to(device)
    return _TABLES[key]


def decode(codes: torch.Tensor, fmt: ExMy, table: torch.Tensor | None = None) -> torch.Tensor:
    """FP8 codes (any layout) → fp32 values through a 256-entry ``table`` (default: the plain decode
    table; pass a pre-scaled one to dequantize a tensorwise-scaled tensor in the same gather)."""
    _codes_only(fmt)
    if table is None:
        table = decode_table(fmt, codes.device)
    if not codes.is_contiguous():
        if codes.dim() == 2 and codes.t().is_contiguous():
            return decode(codes.t(), fmt, table).t()
        codes = codes.contiguous()
    return table.index_select(0, codes.view(torch.uint8).reshape(-1).int()).view(codes.shape)
