"""FP8 formats: constants, the saturating round-to-nearest-even cast, round-trip error bounds."""

import pytest
import torch

from methods.fp8.formats import E4M3, E5M2, decode, fp8_values, get_format, round_to_format, saturating_cast

FORMATS = [E4M3, E5M2]


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
def test_constants_match_the_dtype(fmt):
    v = fp8_values(fmt)
    assert float(v.max()) == fmt.max == torch.finfo(fmt.dtype).max
    assert float(v[v > 0].min()) == fmt.min_subnormal
    assert fmt.min_normal == torch.finfo(fmt.dtype).tiny
    assert get_format(fmt.name) is fmt
    assert not fmt.simulated and fmt.carrier == fmt.dtype
    for bad in ("e9m1", "e3m0", "e1m4", "fp8", "e8m7fn"):  # range, ties undefined, no normals, no name, > fp32
        with pytest.raises(ValueError, match="valid: e4m3 .* eXmY"):
            get_format(bad)


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
def test_explicit_rne_equals_torch_cast_bit_for_bit(fmt):
    # every 397th fp32 bit pattern from 0 to 1.2 * max (~5M values), both signs: normals, subnormals,
    # overflow; plus every pattern within 64 ulps of each exact tie between two FP8 values
    hi = torch.tensor(fmt.max * 1.2).view(torch.int32).item()
    x = torch.arange(0, hi, 397, dtype=torch.int32).view(torch.float32)
    v = fp8_values(fmt)
    ties = (v[1:] + v[:-1]) / 2
    near = (ties.view(torch.int32)[:, None] + torch.arange(-64, 65, dtype=torch.int32)).reshape(-1).view(torch.float32)
    x = torch.cat([x, near])
    x = torch.cat([x, -x])
    ours = round_to_format(x, fmt)
    torch_cast = saturating_cast(x, fmt).float()
    assert torch.equal(ours, torch_cast)
    assert torch.isfinite(torch_cast).all()  # saturation: never inf, even for E5M2


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
def test_ties_round_to_even_mantissa(fmt):
    v = fp8_values(fmt)
    v = v[v >= 0]
    mid = (v[1:] + v[:-1]) / 2  # exact in fp32
    codes = saturating_cast(mid, fmt).view(torch.uint8)
    assert (codes % 2 == 0).all()  # the even neighbour (last mantissa bit 0)
    assert torch.equal(round_to_format(mid, fmt), codes.view(fmt.dtype).float())


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
def test_round_trip_error_bounds(fmt):
    g = torch.Generator().manual_seed(1)
    # log-uniform magnitudes over the whole normal range
    e = torch.empty(200_000).uniform_(fmt.min_exponent, torch.log2(torch.tensor(fmt.max)).item(), generator=g)
    x = torch.exp2(e) * torch.where(torch.rand(200_000, generator=g) < 0.5, -1.0, 1.0)
    rt = saturating_cast(x, fmt).float()
    rel = (rt - x).abs() / x.abs()
    assert rel.max() <= fmt.max_rel_error  # half an ulp: 2^-4 for E4M3, 2^-3 for E5M2
    # ...and tight: the worst case is just below the first tie of a binade, u / (1 + u)
    assert rel.max() > 0.99 * fmt.max_rel_error / (1 + fmt.max_rel_error)
    # subnormals: absolute error at most half the subnormal spacing
    xs = torch.empty(50_000).uniform_(-fmt.min_normal, fmt.min_normal, generator=g)
    assert (saturating_cast(xs, fmt).float() - xs).abs().max() <= fmt.min_subnormal / 2


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
def test_saturation_and_nan(fmt):
    x = torch.tensor([fmt.max * 1.01, fmt.max * 1e3, -float("inf"), float("inf"), float("nan"), -0.0])
    out = saturating_cast(x, fmt).float()
    assert out[:4].tolist() == [fmt.max, fmt.max, -fmt.max, fmt.max]
    assert torch.isnan(out[4])  # NaN is not hidden by the clamp
    assert torch.isnan(round_to_format(x, fmt)[4])


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
def test_table_decode_equals_torch_decode(fmt):
    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(fmt.dtype).reshape(16, 16)
    ref = codes.float()
    for c, r in ((codes, ref), (codes.t(), ref.t()), (codes[::2], ref[::2])):
        got = decode(c, fmt)
        assert torch.equal(got.nan_to_num(123.0), r.nan_to_num(123.0))


def test_overflow_threshold_is_the_rounding_boundary():
    for fmt, thr in ((E4M3, 464.0), (E5M2, 61440.0)):
        assert fmt.overflow_threshold == thr
        # just below: an unbounded format would round to max anyway; the clamp changes nothing
        below = torch.tensor(thr).nextafter(torch.tensor(0.0))
        assert float(saturating_cast(below.reshape(1), fmt)) == fmt.max
