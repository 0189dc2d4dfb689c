"""ExMy formats (``methods.fp8.formats``): every format of <= 8 bits checked exhaustively against a
reference built here from bit patterns in exact rational arithmetic; the E8 ladder formats (11-16 bits)
exhaustively over their codes and midpoints, and on a dense sweep of fp32 against integer rounding of
fp32 bit patterns; torch's float8 / bf16 / fp16 casts bit for bit where torch has the format; then the
same formats through quantize, the GEMM, FP8Linear and a short training run."""

import dataclasses
import math
from bisect import bisect_right
from fractions import Fraction

import pytest
import torch

from methods.fp8.formats import (
    E4M3,
    E5M2,
    LADDER,
    LADDER_BASE,
    exmy,
    fp8_values,
    get_format,
    round_to_format,
    saturating_cast,
)
from methods.fp8.gemm import fp8_mm
from methods.fp8.quantize import quantize
from methods.fp8.scaling import (
    ROWWISE,
    SCALE_MAX,
    TENSORWISE,
    BLOCK_128x128,
    DelayedScaler,
    TILE_1x128,
    scale_from_amax,
)

# every (exponent, mantissa) with sign + e + m <= 8 that the library takes (e >= 2, m >= 1), both conventions
SMALL = [(e, m, sp) for e in range(2, 8) for m in range(1, 8 - e) for sp in ("ieee", "fn")]
assert len(SMALL) == 30


def _twin(fmt):
    """The native format run through the simulated path (same bits, no torch dtype)."""
    return dataclasses.replace(fmt, dtype=None, name=fmt.name + "-sim")


SMALL_FORMATS = [exmy(*k) for k in SMALL] + [_twin(E4M3), _twin(E5M2)]


def reference_values(e: int, m: int, specials: str) -> list[Fraction]:
    """Every finite non-negative value from its bit pattern, exactly; list index = code (sign bit 0)."""
    bias = 2 ** (e - 1) - 1
    out = []
    for E in range(2**e):
        for M in range(2**m):
            top = E == 2**e - 1
            if top and (specials == "ieee" or M == 2**m - 1):  # inf/NaN codes
                continue
            frac = Fraction(M, 2**m)
            out.append(frac * Fraction(2) ** (1 - bias) if E == 0 else (1 + frac) * Fraction(2) ** (E - bias))
    return out


def reference_round(x: float, vals: list[Fraction]) -> float:
    """Saturate, then round to nearest with ties to the even code, by exhaustive comparison."""
    if math.isnan(x):
        return x
    a = abs(x)
    if a >= vals[-1]:
        return math.copysign(float(vals[-1]), x)
    fa = Fraction(a)
    i = bisect_right(vals, fa) - 1  # vals[i] <= a < vals[i + 1]
    lo, hi = vals[i], vals[i + 1]
    d = (fa - lo) - (hi - fa)
    pick = lo if d < 0 else hi if d > 0 else (lo if i % 2 == 0 else hi)  # code i even: its last bit is 0
    return math.copysign(float(pick), x)


def _f32(values) -> torch.Tensor:
    return torch.tensor([float(v) for v in values], dtype=torch.float32)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.float().view(torch.int32)  # compares -0 and +0 apart, and NaN payloads (there are none)


def _up(t):
    return t.nextafter(torch.full_like(t, math.inf))


def _down(t):
    return t.nextafter(torch.full_like(t, -math.inf))


def _cast(x: torch.Tensor, fmt) -> torch.Tensor:
    """What quantize does with already-scaled values: torch's cast for a native format, else ours."""
    out = saturating_cast(x, fmt)
    assert out.dtype == fmt.carrier
    return out.float()


@pytest.mark.parametrize("fmt", SMALL_FORMATS, ids=str)
def test_small_format_exhaustively_against_the_bit_pattern_reference(fmt):
    e, m, sp = fmt.exponent_bits, fmt.mantissa_bits, fmt.specials
    vals = reference_values(e, m, sp)
    pos = _f32(vals)  # exact: <= 8 significant bits, exponents well inside fp32's range
    # the format's constants are the reference's
    assert fmt.max == float(vals[-1]) and fmt.min_subnormal == float(vals[1]) and fmt.bias == 2 ** (e - 1) - 1
    assert torch.equal(fp8_values(fmt), torch.cat([-pos.flip(0), pos[1:]]))  # the library's enumeration
    mid = (pos[1:] + pos[:-1]) / 2  # exact in fp32 (one more bit)
    beyond = torch.tensor([fmt.overflow_threshold, 2 * fmt.max, 1e30, torch.finfo(torch.float32).max, math.inf])
    beyond = torch.cat([beyond, _down(beyond[:1]), _up(torch.tensor([fmt.max]))])
    tiny = torch.tensor([fmt.min_subnormal / 2, fmt.min_subnormal / 4, 1e-45, 0.0])
    tiny = torch.cat([tiny, _up(tiny[:1]), _down(tiny[:1])])
    g = torch.Generator().manual_seed(e * 16 + m)
    lo, hi = math.log2(fmt.min_subnormal) - 2, math.log2(fmt.max) + 1
    rand = torch.exp2(torch.empty(1500).uniform_(lo, hi, generator=g))
    x = torch.cat([pos, _up(pos), _down(pos), mid, _up(mid), _down(mid), beyond, tiny, rand])
    x = torch.cat([x, -x, torch.tensor([math.nan])])
    expect = torch.tensor([reference_round(v, vals) for v in x.tolist()], dtype=torch.float32)
    ours = round_to_format(x, fmt)
    bad = (_bits(ours) != _bits(expect)) & ~(ours.isnan() & expect.isnan())
    assert not bad.any(), list(zip(x[bad][:5].tolist(), ours[bad][:5].tolist(), expect[bad][:5].tolist()))
    assert torch.equal(_bits(_cast(x[:-1], fmt)), _bits(expect[:-1])) and _cast(x[-1:], fmt).isnan().all()


@pytest.mark.parametrize("fmt", SMALL_FORMATS, ids=str)
def test_small_format_round_trips_ties_to_even_and_saturates(fmt):
    """The three properties the issue names, each asserted by itself (the test above implies them)."""
    pos = fp8_values(fmt)
    pos = pos[pos >= 0]
    both = torch.cat([pos, -pos])
    assert torch.equal(_bits(round_to_format(both, fmt)), _bits(both))  # every value, -0 included
    assert torch.equal(_bits(_cast(both, fmt)), _bits(both))
    mid = (pos[1:] + pos[:-1]) / 2
    even = torch.where(torch.arange(len(mid)) % 2 == 0, pos[:-1], pos[1:])  # code i and i+1: the even one
    for sign in (1.0, -1.0):
        assert torch.equal(_bits(round_to_format(sign * mid, fmt)), _bits(sign * even))
        assert torch.equal(round_to_format(sign * _up(mid), fmt), sign * pos[1:])  # off the tie: nearest
        assert torch.equal(round_to_format(sign * _down(mid), fmt), sign * pos[:-1])
    huge = torch.tensor([fmt.max * 1.0001, fmt.overflow_threshold * 2, 1e38, math.inf])
    assert (round_to_format(huge, fmt) == fmt.max).all() and (round_to_format(-huge, fmt) == -fmt.max).all()
    assert torch.isfinite(_cast(torch.cat([huge, -huge]), fmt)).all()
    under = torch.tensor([-fmt.min_subnormal / 2, -fmt.min_subnormal / 3, fmt.min_subnormal / 3])
    assert _bits(round_to_format(under, fmt)).tolist() == _bits(torch.tensor([-0.0, -0.0, 0.0])).tolist()


@pytest.mark.parametrize("fmt", [E4M3, E5M2], ids=str)
def test_native_formats_unchanged_and_equal_to_their_simulation(fmt):
    """e4m3 / e5m2 are still torch's dtypes (max 448 fn, 57344 ieee); the generic rounding of the same bits,
    the simulated twin, gives torch's cast bit for bit on a dense sweep of fp32 (normal, subnormal, overflow)."""
    assert get_format(fmt.name) is fmt and exmy(fmt.exponent_bits, fmt.mantissa_bits, fmt.specials) is fmt
    assert fmt.max == torch.finfo(fmt.dtype).max and not fmt.simulated
    assert get_format("e4m3fn") is E4M3 and get_format("e5m2ieee") is E5M2
    hi = torch.tensor(fmt.max * 4).view(torch.int32).item()
    x = torch.arange(0, hi, 1009, dtype=torch.int32).view(torch.float32)
    x = torch.cat([x, -x])
    native = saturating_cast(x, fmt).float()
    assert torch.equal(_bits(_cast(x, _twin(fmt))), _bits(native))


def test_generic_names_and_semantics():
    assert get_format("e4m3ieee").max == 240.0 and get_format("e4m3ieee").simulated
    assert get_format("e3m4").max == 15.5 and get_format("e3m4fn").max == 30.0
    assert get_format("e3m2").max == 14.0 and get_format("e2m3").max == 3.75  # IEEE-like, not MX FP6
    assert get_format("e8m7").max == torch.finfo(torch.bfloat16).max
    assert get_format("e5m10").max == torch.finfo(torch.float16).max
    assert get_format("e8m7").carrier == torch.bfloat16 and get_format("e5m10").carrier == torch.float32
    assert get_format("e3m4") is get_format("e3m4")
    for bad in ("e9m2", "e2m23", "e0m3", "E3M4", "e3m4x", "e8m5fn", 3):
        with pytest.raises(ValueError, match="valid: e4m3 .*eXmY"):
            get_format(bad)


def test_ladder_counts_bits_against_bf16():
    base = get_format(LADDER_BASE)
    names = [n for n, _, _ in LADDER]
    assert names[0] == LADDER_BASE and {"e8m4", "e8m3", "e8m2", "e5m2", "e4m3", "e3m4", "e3m2", "e2m3"} <= set(names)
    for name, de, dm in LADDER:
        f = get_format(name)
        assert (de, dm) == (base.exponent_bits - f.exponent_bits, base.mantissa_bits - f.mantissa_bits), name


# -- E8 (bf16's range) and 16-bit formats: codes exhaustively, fp32 densely ------------------------------
def _e8_values(m: int) -> torch.Tensor:
    """Every finite non-negative E8Mm value from its bit pattern, fp64 (exact), index = code."""
    E = torch.arange(255, dtype=torch.float64)[:, None]  # 255: IEEE's inf/NaN exponent left out
    M = torch.arange(2**m, dtype=torch.float64)[None, :]
    frac = M / 2**m
    return torch.where(E == 0, frac * 2.0**-126, (1 + frac) * torch.exp2(E - 127)).reshape(-1)


def _rne_bits_reference(x: torch.Tensor, m: int, mx: float) -> torch.Tensor:
    """E8Mm rounding as integer arithmetic on fp32 bit patterns: E8's exponent is fp32's, and fp32's
    subnormals continue its fixed-point grid, so keeping the top m mantissa bits with round-half-even on
    the dropped 23 - m bits is the rounding everywhere; then saturate at max."""
    b = x.abs().view(torch.int32).long()
    k = 23 - m
    low, keep = b & ((1 << k) - 1), b >> k
    half = 1 << (k - 1)
    up = (low > half) | ((low == half) & (keep % 2 == 1))
    r = ((keep + up.long()) << k).int().view(torch.float32)
    r = torch.where(torch.isfinite(r) & (x.abs() <= mx), r, torch.full_like(r, mx))
    return torch.copysign(r, x)


E8 = [get_format(n) for n in ("e8m7", "e8m4", "e8m3", "e8m2")]


@pytest.mark.parametrize("fmt", E8, ids=str)
def test_e8_formats_every_code_round_trips_and_every_tie_goes_to_even(fmt):
    # exhaustive over the 2^(8+m) codes (not a sample), reference values from the bit patterns
    v = _e8_values(fmt.mantissa_bits)
    assert float(v[-1]) == fmt.max and float(v[1]) == fmt.min_subnormal
    pos = v.float()
    assert torch.equal(pos.double(), v)  # every value is an fp32 (and a bf16)
    assert torch.equal(fp8_values(fmt), torch.cat([-pos.flip(0), pos[1:]]))
    for sign in (1.0, -1.0):
        assert torch.equal(_bits(_cast(sign * pos, fmt)), _bits(sign * pos))
        mid = ((v[1:] + v[:-1]) / 2).float()  # exact: 9 significant bits, >= 2^-134
        even = torch.where(torch.arange(len(mid)) % 2 == 0, pos[:-1], pos[1:])
        assert torch.equal(_bits(round_to_format(sign * mid, fmt)), _bits(sign * even))
        assert torch.equal(round_to_format(sign * _up(mid), fmt), sign * pos[1:])
        assert torch.equal(round_to_format(sign * _down(mid), fmt), sign * pos[:-1])
    huge = torch.tensor([fmt.overflow_threshold, torch.finfo(torch.float32).max, math.inf])
    assert (_cast(huge, fmt) == fmt.max).all() and (_cast(-huge, fmt) == -fmt.max).all()


@pytest.mark.parametrize("fmt", E8 + [get_format("e5m10")], ids=str)
def test_wide_formats_on_a_dense_fp32_sweep(fmt):
    """Every 2003rd fp32 bit pattern from 0 to inf (~1M values, all exponents, fp32 subnormals included),
    both signs, plus NaN: against integer bit rounding (E8) and torch's bf16 / fp16 casts where they exist."""
    x = torch.arange(0, 0x7F800000 + 1, 2003, dtype=torch.int32).view(torch.float32)
    x = torch.cat([x, -x])
    ours = round_to_format(x, fmt)
    if fmt.exponent_bits == 8:
        assert torch.equal(_bits(ours), _bits(_rne_bits_reference(x, fmt.mantissa_bits, fmt.max)))
    torch_dtype = {"e8m7": torch.bfloat16, "e5m10": torch.float16}.get(fmt.name)
    if torch_dtype is not None:  # torch's casts round to nearest even; saturate first
        assert torch.equal(_bits(ours), _bits(x.clamp(-fmt.max, fmt.max).to(torch_dtype)))
    assert torch.equal(_bits(_cast(x, fmt)), _bits(ours))
    assert round_to_format(torch.tensor([math.nan]), fmt).isnan().all()


# -- the same scaling, quantize, GEMM, linear ------------------------------------------------------------
def test_scales_stay_finite_for_wide_formats_and_unchanged_for_fp8():
    amax = torch.tensor([1e-12, 1e-3, 1.0, 3e4, 1e30])
    for fmt in (get_format("e8m7"), get_format("e8m2")):
        s = scale_from_amax(amax, fmt)
        assert torch.isfinite(s).all() and (s <= SCALE_MAX).all() and (amax * s <= fmt.max).all()
        assert torch.isfinite(1 / s).all() and ((1 / s) >= torch.finfo(torch.float32).tiny).all()
        assert float(s[-1]) == pytest.approx(fmt.max / 1e30, rel=1e-6)  # where max / amax fits, it is used
    for fmt in (E4M3, E5M2, get_format("e3m4"), get_format("e2m3")):  # the cap never binds below E8
        s = scale_from_amax(amax, fmt)
        assert torch.equal(s.clamp(max=SCALE_MAX), s)
        assert torch.allclose(s, fmt.max / amax, rtol=1e-6)


def _on_grid(t: torch.Tensor, fmt) -> bool:
    return bool(torch.isin(t.float().reshape(-1), fp8_values(fmt)).all())


LADDER_FMTS = [get_format(n) for n, _, _ in LADDER if get_format(n).simulated]


@pytest.mark.parametrize("blocks", [TENSORWISE, ROWWISE, TILE_1x128, BLOCK_128x128], ids=lambda b: b.label)
def test_quantize_and_gemm_with_simulated_formats(blocks):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(130, 200, generator=g) * torch.logspace(-3, 2, 200)  # wide per-channel range
    b = torch.randn(200, 72, generator=g)
    ref = a.double() @ b.double()
    for fmt in LADDER_FMTS:
        qa, qb = quantize(a, fmt, blocks), quantize(b.t().contiguous(), fmt, blocks)
        assert qa.data.dtype == fmt.carrier and _on_grid(qa.data, fmt) and _on_grid(qb.data, fmt)
        assert float(qa.data.float().abs().max()) <= fmt.max and qa.n_sat == 0
        out = fp8_mm(qa, qb.t())
        assert torch.equal(out, fp8_mm(qa, qb.t(), backend="dequant"))
        torch.testing.assert_close(out, fp8_mm(qa, qb.t(), backend="reference"), rtol=1e-5, atol=1e-5)
        err = (out.double() - ref).norm() / ref.norm()
        assert 0 < err < 2 * 2.0**-fmt.mantissa_bits, (fmt, float(err))  # precision tracks the mantissa
        for backend in ("torch", "triton"):
            with pytest.raises(ValueError, match="simulated"):
                fp8_mm(qa, qb.t(), backend=backend)
    with pytest.raises(ValueError, match="simulated"):
        quantize(a, "e3m4", blocks, backend="triton")


@pytest.mark.parametrize("fmt", [E4M3, E5M2], ids=str)
def test_simulated_twin_quantizes_and_multiplies_bit_for_bit_as_native(fmt):
    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(96, 160, generator=g), torch.randn(40, 160, generator=g) * 1e-2
    for blocks in (TENSORWISE, ROWWISE, TILE_1x128, BLOCK_128x128):
        qn, qs = quantize(x, fmt, blocks), quantize(x, _twin(fmt), blocks)
        wn, ws = quantize(w, fmt, blocks), quantize(w, _twin(fmt), blocks)
        assert torch.equal(qn.data.float(), qs.data.float()) and torch.equal(qn.scale, qs.scale)
        assert torch.equal(fp8_mm(qn, wn.t()), fp8_mm(qs, ws.t()))
    # delayed scaling: a history scale too large for this tensor saturates and counts alike
    sn, ss = DelayedScaler(fmt), DelayedScaler(_twin(fmt))
    for s in (1.0, 1.0, 50.0):
        qn, qs = quantize(x * s, fmt, TENSORWISE, scaler=sn), quantize(x * s, _twin(fmt), TENSORWISE, scaler=ss)
        assert torch.equal(qn.data.float(), qs.data.float()) and int(qn.n_sat) == int(qs.n_sat)
    assert int(qn.n_sat) > 0


def test_ladder_formats_train_and_their_operands_lie_on_the_grid(corpus):
    from methods.fp8.linear import FP8Linear
    from methods.registry import get_method
    from pipelines.run.data import Batches
    from tests.fp8.conftest import build_micro

    with pytest.raises(ValueError, match=r"option fwd_format = 'e9m2'; valid: e4m3 .*eXmY"):
        get_method("fp8-own-tensorwise", fwd_format="e9m2")
    with pytest.raises(ValueError, match="e3m4 is simulated"):
        get_method("fp8-own-tensorwise", fwd_format="e3m4", backend="triton")
    trainee = build_micro("fp8-own-tensorwise", vocab=corpus.vocab_size, fwd_format="e3m4", grad_format="e3m2")
    lins = [m for m in trainee.model.modules() if isinstance(m, FP8Linear)]
    assert len(lins) == 14
    seen = {}
    lin = lins[3]
    orig = lin._q

    def spy(t, role, fmt, blocks, stat=True):  # what quantize hands the GEMMs of one linear
        q = orig(t, role, fmt, blocks, stat)
        seen.setdefault(role, []).append(q)
        return q

    lin._q = spy
    b = Batches(corpus, 4, 32, seed=0)
    losses = [trainee.train_step(*b.get(i), lr=3e-3).loss for i in range(6)]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0] - 0.2, losses
    e3m4, e3m2 = get_format("e3m4"), get_format("e3m2")
    assert {"input", "weight", "grad_output"} <= set(seen)
    for role, fmt in (("input", e3m4), ("weight", e3m4), ("grad_output", e3m2)):
        for q in seen[role]:
            assert q.fmt == fmt and q.data.dtype == torch.bfloat16 and _on_grid(q.data, fmt), role
            assert float(q.data.float().abs().max()) == fmt.max  # current scaling puts amax at max
    rows = trainee.telemetry()
    assert {r["format"] for r in rows} == {"e3m4", "e3m2"}


def test_ladder_variants_are_valid_methods():
    from methods.fp8_own import ladder_variants
    from methods.registry import get_method

    variants = ladder_variants(granularity="rowwise")
    assert len(variants) == len(LADDER)
    for name, v in variants.items():
        m = get_method(v["method"], **v["options"])
        m.validate()
        assert m.fwd_format == m.grad_format and name.endswith(m.fwd_format) and m.granularity == "rowwise"
        assert f"({m.fwd_format} fwd / {m.grad_format} grad)" in m.stores["compute"]  # what the tables show
        f = get_format(m.fwd_format)
        assert v["exponent_bits_removed"] == 8 - f.exponent_bits and v["mantissa_bits_removed"] == 7 - f.mantissa_bits
