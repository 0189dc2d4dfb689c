"""The native kernel's own log2 and DRE encode (methods/fp8/optim_native.c) against float64 references,
and its AVX-512 lanes against its portable loops, bit for bit.

The step test (test_optim_native.py) sees these only where a value sits near an FP8 rounding midpoint;
here they are driven over the whole fp32 range directly.
"""

import math

import numpy as np
import pytest
import torch

from methods.fp8 import optim_codec as codec
from methods.fp8 import optim_native

try:
    optim_native.library()
    NO_KERNEL = None
except optim_native.NativeUnavailable as e:
    NO_KERNEL = str(e)
pytestmark = pytest.mark.skipif(NO_KERNEL is not None, reason=f"native kernel unavailable: {NO_KERNEL}")


def _log2(lib, x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    y = np.empty_like(x)
    lib.fp8_log2(x.ctypes.data, y.ctypes.data, x.size)
    return y


def _dre(lib, x: np.ndarray, fmt: str, k: float, l2hi: float) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    c = np.empty(x.shape, dtype=np.uint8)
    lib.fp8_dre_encode(x.ctypes.data, c.ctypes.data, x.size, optim_native.FMT_IDS[fmt], k, l2hi)
    return c


def _positive_floats(n: int, seed: int) -> np.ndarray:
    """Log-uniform over every binade of fp32, subnormals included, plus the powers of two."""
    rng = np.random.default_rng(seed)
    bits = rng.integers(1, 0x7F800000, n, dtype=np.uint32)
    pow2 = np.arange(1, 255, dtype=np.uint32) << 23
    return np.concatenate([bits, pow2]).view(np.float32)


def _libs():
    yield "built", optim_native.library()
    if optim_native.simd() == "avx512":  # the other path, where this build took the lanes
        yield "portable", optim_native.load(optim_native._build(("-mno-avx512f",)))


def test_log2_within_an_ulp_over_the_fp32_range_and_exact_at_powers_of_two():
    x = _positive_floats(400_000, 0)
    ref = np.log2(x.astype(np.float64))
    for name, lib in _libs():
        y = _log2(lib, x).astype(np.float64)
        ulp = np.spacing(np.abs(ref).astype(np.float32)).astype(np.float64)
        err = np.abs(y - ref) / ulp
        far = np.abs(ref) >= 1
        assert err[far].max() <= 1.5, (name, err[far].max())  # measured 1.0
        assert np.abs(y - ref)[~far].max() <= 2.0**-24, name  # near x = 1: absolute (measured 2.8 ulps)
        p2 = np.abs(ref - np.round(ref)) == 0
        assert np.array_equal(y[p2], ref[p2]), name
        special = np.array([0.0, np.inf, np.nan], dtype=np.float32)
        out = _log2(lib, special)
        assert out[0] == -np.inf and out[1] == np.inf and np.isnan(out[2]), name


def _nearest_codes(y: np.ndarray, fmt: codec.Fp8Format) -> np.ndarray:
    """Round-to-nearest FP8 magnitude codes of y >= 0 (float64) by search over the exact midpoints."""
    vals = torch.arange(128, dtype=torch.uint8).view(fmt.dtype).double().numpy()
    top = 0x7E if fmt.name == "e4m3" else 0x7B  # the largest finite code (e4m3fn: 0x7F is NaN; e5m2: 0x7C inf)
    mids = (vals[:top] + vals[1 : top + 1]) / 2
    return np.searchsorted(mids, y, side="right")  # a tie (measure zero here) goes up


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
def test_dre_encode_is_the_nearest_fp8_value_of_the_power_but_within_ulps_of_a_midpoint(fmt):
    f = codec.FORMATS[fmt]
    rng = np.random.default_rng(1)
    for trial in range(12):
        hi = np.float32(2.0 ** rng.uniform(-40, 10))
        k = float(torch.tensor(rng.uniform(0.3, 6.0)).bfloat16().float())  # a bf16 exponent, as the step stores
        span = f.normal_range ** (1 / k)  # the values DRE maps onto the normal range, and some below
        a = (hi / span ** rng.uniform(0, 1.3, 20_000)).astype(np.float32)
        x = np.where(rng.random(a.size) < 0.5, -a, a).astype(np.float32)
        l2hi = float(_log2(optim_native.library(), np.array([hi], np.float32))[0])
        y = np.minimum(np.exp2((np.log2(a.astype(np.float64)) - math.log2(hi)) * k) * f.fmax, f.fmax)
        want = _nearest_codes(y, f) | np.where(x < 0, 0x80, 0)
        # where the float64 power sits within the kernel's rounding of a midpoint (in log2: its fp32 log2s,
        # an ulp each of log2 a and log2 amax, times k, and the ulps of u), it may round either way
        vals = torch.arange(128, dtype=torch.uint8).view(f.dtype).double().numpy()
        mids = (vals[:-2] + vals[1:-1]) / 2
        u = np.log2(y)
        sp = lambda v: np.spacing(np.abs(v).astype(np.float32)).astype(np.float64)  # noqa: E731
        tol = 2 * k * (sp(np.log2(a.astype(np.float64))) + sp(math.log2(hi))) + 4 * sp(16 * u) / 16
        near = np.abs(u[:, None] - np.log2(mids[mids > 0])[None, :]).min(1) <= tol
        got = {}
        for name, lib in _libs():
            got[name] = c = _dre(lib, x, fmt, k, l2hi)
            off = c.astype(int) != want
            assert not (off & ~near).any(), (name, trial, int((off & ~near).sum()))
            assert (np.abs(c.astype(int) - want) <= 1).all(), name
            assert off.mean() <= 1e-3, (name, off.mean())
        if "portable" in got:
            assert np.array_equal(got["built"], got["portable"])


def test_dre_encode_specials():
    lib = optim_native.library()
    for fmt in ("e4m3", "e5m2"):
        x = np.array([0.0, -0.0, np.nan, 1.0, -1.0, 2.0**-140], dtype=np.float32)
        c = _dre(lib, x, fmt, 1.0, 0.0)  # amax 1: 1 maps to fmax
        top = 0x7E if fmt == "e4m3" else 0x7B
        assert list(c[:2]) == [0x00, 0x80] and c[2] & 0x7F == 0x7F and c[3] == top and c[4] == 0x80 | top
        assert c[5] == 0  # far below the smallest subnormal


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
def test_dre_encode_rounds_to_the_right_side_of_every_midpoint(fmt):
    """k = 1, amax = 1: the code of a = (midpoint / fmax) (1 -+ 2^-18) is the one below / above it, for
    every midpoint, subnormal ones included (2^-18 relative is ~5x the kernel's error in log2 here)."""
    f = codec.FORMATS[fmt]
    top = 0x7E if fmt == "e4m3" else 0x7B
    vals = torch.arange(top + 1, dtype=torch.uint8).view(f.dtype).double().numpy()
    mids = (vals[:-1] + vals[1:]) / 2 / f.fmax
    below, above = mids * (1 - 2.0**-18), mids * (1 + 2.0**-18)
    for name, lib in _libs():
        assert np.array_equal(_dre(lib, below, fmt, 1.0, 0.0), np.arange(top)), name
        assert np.array_equal(_dre(lib, above, fmt, 1.0, 0.0), np.arange(1, top + 1)), name
