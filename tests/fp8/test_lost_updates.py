"""Lost updates (``methods.fp8.lost_updates``): the spacing-based prediction against hand-computed cases and
against the library's rounding, the bits-unchanged measure, and the lost-update bias under nearest and
stochastic rounding."""

import math

import pytest
import torch

from methods.fp8.formats import E4M3, E5M2, fp8_values, saturating_cast
from methods.fp8.lost_updates import (
    BF16,
    LostUpdates,
    count_update,
    format_of,
    lost,
    lost_bias,
    predicted_lost,
    spacing_above,
    spacing_below,
    ulp,
    unchanged,
)
from methods.fp8.rounding import stochastic_round_bf16, stochastic_round_to_format


def _lost(w, u, fmt, scale_inv=1.0) -> bool:
    return bool(lost(torch.tensor([w], dtype=torch.float64), torch.tensor([u], dtype=torch.float64), fmt, scale_inv))


# (weight, update, lost?) with the arithmetic spelled out
E4M3_CASES = [
    # E4M3: 3 mantissa bits. w = 1.0 = 1.000b · 2^0: spacing above 2^(0-3) = 0.125, below (2^0 is a power of
    # two, the binade below is [0.5, 1)) 2^(-1-3) = 0.0625. Half spacings: 0.0625 up, 0.03125 down.
    (1.0, +0.06, True),  # 0.06 < 0.0625: 1.06 rounds back to 1.0
    (1.0, +0.0625, True),  # a tie (1.0625 is the midpoint of 1.0 and 1.125): to even, 1.0 (significand 1000b)
    (1.0, +0.07, False),  # 0.07 > 0.0625: 1.07 rounds to 1.125
    (1.0, -0.031, True),  # 0.031 < 0.03125: 0.969 is above the midpoint 0.96875 of 0.9375 and 1.0
    (1.0, -0.032, False),  # 0.032 > 0.03125: 0.968 rounds to 0.9375
    (1.125, +0.0625, False),  # a tie from an odd value (1001b): 1.1875 goes to the even 1.25
    (1.125, -0.0625, False),  # the other tie from 1.125: 1.0625 goes to the even 1.0
    (448.0, +100.0, True),  # max (1.110b · 2^8): the cast saturates, whatever goes beyond stays at 448
    (448.0, -16.0, True),  # spacing below 448 is 32 (not a power of two); 432 ties 416 (1101b) and 448 (1110b)
    (448.0, -16.5, False),  # past the midpoint: 416
    # subnormals: the smallest normal binade's spacing 2^(-6-3) = 2^-9 = 0.001953125 reaches down to zero
    (2.0**-9, -(2.0**-10), False),  # tie between 0 (even) and 2^-9 (significand 1, odd): goes to 0
    (2.0**-9, -0.0009, True),  # 0.0009 < 2^-10 = 0.0009765625
    (0.0, +(2.0**-10), True),  # a tie at zero: zero is even
    (0.0, -0.00098, False),  # 0.00098 > 2^-10: -2^-9
    (2.0**-6, -0.00097, True),  # the smallest normal: the spacing below is the subnormal 2^-9, not half
    (2.0**-6, -0.00098, False),
]

E5M2_CASES = [
    # E5M2: 2 mantissa bits. w = 1.0: spacing above 2^-2 = 0.25, below 2^-3 = 0.125.
    (1.0, +0.12, True),  # < 0.125
    (1.0, +0.125, True),  # tie: 1.0 (100b) even
    (1.0, +0.13, False),
    (1.0, -0.0625, True),  # tie below: 0.9375 between 0.875 (111b · 2^-1, odd) and 1.0 (even): 1.0
    (1.0, -0.063, False),
    (1.25, +0.125, False),  # tie from an odd value (101b): 1.375 goes to 1.5 (110b)
    (-3.0, +0.25, True),  # -3.0 = -1.10b · 2^1: towards zero spacing 0.5 (not a power of two), tie, 3 (110b) even
    (-3.0, +0.26, False),
    # -4.0 is a power of two: towards zero (up) the spacing is 0.5 (the binade [2, 4)); 0.25 is a tie, 4 (100b) even
    (-4.0, +0.25, True),
    (-4.0, -0.5, True),  # away from zero (down) the spacing is 1.0: 0.5 is a tie, 4 (100b) even
    (57344.0, +4096.0, True),  # max: saturates
    (3 * 2.0**-16, +(2.0**-17), False),  # subnormal 3·2^-16 (odd) + half the spacing 2^-16: a tie, to 4·2^-16
    (3 * 2.0**-16, +(2.0**-18), True),
]

BF16_CASES = [
    # bf16: 7 mantissa bits. w = 1.0: spacing above 2^-7 = 0.0078125, below 2^-8 = 0.00390625.
    (1.0, +0.0039, True),  # < 0.00390625
    (1.0, +0.00390625, True),  # tie: 1.0 even
    (1.0, +0.004, False),
    (1.0, -0.00195, True),  # < 2^-9 = 0.001953125
    (1.0, -0.00196, False),
    (1.0078125, +(2.0**-8), False),  # 1 + 2^-7 is odd: the tie goes up to 1.015625
    (256.0, +0.99, True),  # spacing above 256 is 2^(8-7) = 2, below 1
    (256.0, -0.5, True),  # tie below, 256 even
    (256.0, -0.51, False),
    # bf16(-0.1) = -1.1001101b · 2^-4 = -205 · 2^-11 (odd): away from zero (down) the spacing is 2^-11; -2^-12
    # is a tie, which goes to the even -206 · 2^-11
    (-0.10009765625, -(2.0**-12), False),
    (-0.10009765625, +(2.0**-12), False),  # the same tie towards zero: to the even -204 · 2^-11
    (-0.10009765625, +0.00024, True),  # < 2^-12 = 0.000244140625
    (2.0**-133, -(2.0**-134), False),  # the smallest subnormal (odd) and half its spacing: a tie, to 0
    (2.0**-130, +(2.0**-134), True),  # subnormal 8·2^-133 (even), half the spacing: a tie, stays
    # max = 1.1111111b · 2^127 (odd); bf16 is written by torch's cast, which does not saturate: +2^119, half
    # the spacing 2^120, is a tie that goes up, to inf
    ((2 - 2.0**-7) * 2.0**127, +(2.0**119), False),
]


@pytest.mark.parametrize(
    "fmt,cases", [(E4M3, E4M3_CASES), (E5M2, E5M2_CASES), (BF16, BF16_CASES)], ids=["e4m3", "e5m2", "bf16"]
)
def test_prediction_matches_hand_computed_cases(fmt, cases):
    for w, u, expect in cases:
        assert _lost(w, u, fmt) is expect, (fmt.name, w, u, expect)


def test_hand_cases_agree_with_the_rounding_itself():
    """The hand-computed answers are the rounding's (so a wrong hand case cannot hide a wrong predicate)."""
    for fmt, cases in ((E4M3, E4M3_CASES), (E5M2, E5M2_CASES), (BF16, BF16_CASES)):
        for w, u, expect in cases:
            # the ties are binary fractions, exact in fp32; the decimal updates sit >= 1e-5 of the weight away
            # from a midpoint, far more than fp32's rounding of w + u (2^-24 of it) can move them
            x = torch.tensor([w + u], dtype=torch.float64)
            r = x.float().to(torch.bfloat16).float() if fmt is BF16 else saturating_cast(x.float(), fmt).float()
            assert bool(r == w) is expect, (fmt.name, w, u, float(r))


def test_spacing_hand_values():
    w = torch.tensor([1.0, -1.0, 1.5, 0.0, 448.0, -448.0, 2.0**-6, 2.0**-8])
    # E4M3: up / down from 1.0 = 0.125 / 0.0625; from -1.0 mirrored; 1.5: 0.125 both; 0: the smallest
    # subnormal 2^-9 both; 448: inf up (saturating), 32 down; 2^-6 (smallest normal): 2^-9 down too
    assert spacing_above(w, E4M3).tolist() == [0.125, 0.0625, 0.125, 2**-9, math.inf, 32.0, 2**-9, 2**-9]
    assert spacing_below(w, E4M3).tolist() == [0.0625, 0.125, 0.125, 2**-9, 32.0, math.inf, 2**-9, 2**-9]
    assert ulp(torch.tensor([3.0, 2.0**-140]), BF16).tolist() == [2.0**-6, 2.0**-133]


def test_tensor_scale():
    """A per-tensor scale: the weight is code · s, and the spacing is the code's spacing times s."""
    s = float(torch.tensor(0.3 / 448, dtype=torch.float32))  # an fp32 dequantization factor, as stored
    w = 1.0 * s  # code 1.0: spacing above 0.125·s, below 0.0625·s (exact in float64: 24 + 4 bits)
    assert _lost(w, 0.0624 * s, E4M3, s) and not _lost(w, 0.0626 * s, E4M3, s)
    assert _lost(w, -0.0312 * s, E4M3, s) and not _lost(w, -0.0313 * s, E4M3, s)
    # code 448 · s with s = 3 · 2^-5 exactly: everything up saturates, 16 · s down is a tie kept at 448
    s = 3 * 2.0**-5
    assert _lost(448 * s, 1000 * s, E4M3, s) and _lost(448 * s, -16 * s, E4M3, s)
    assert not _lost(448 * s, -16.01 * s, E4M3, s)
    # the same as a tensor scale, and against the rounding of the scaled sum
    w = torch.tensor([1.0, 2.5, -13.0]) * s
    u = torch.tensor([0.06, 0.2, -0.4]) * s  # 1.0: < 0.0625; 2.5 (spacing 0.25): > 0.125; -13 (spacing 1): < 0.5
    truth = saturating_cast(((w.double() + u.double()) / s).float(), E4M3).float() * s == w
    assert lost(w, u, E4M3, torch.tensor(s)).tolist() == truth.tolist() == [True, False, True]


def _random_cases(fmt, n, g):
    """Weights over the whole format; updates that are multiples of 2^-10 of the spacing in their direction
    (exact ties included), so ``w + u`` is exact in fp32 and the reference rounds once."""
    if fmt is BF16:
        w = torch.randint(0, 1 << 16, (n,), generator=g, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
        w = w.float()
        w = w[torch.isfinite(w) & (w.abs() < 3e38)]  # + u must stay finite in fp32
    else:
        vals = fp8_values(fmt)
        w = vals[torch.randint(0, len(vals), (n,), generator=g)]
    up = torch.rand(w.shape, generator=g) < 0.5
    d = torch.where(up, spacing_above(w, fmt), spacing_below(w, fmt))
    d = torch.where(torch.isinf(d), ulp(w, fmt), d).float()  # at max: still a finite step outwards
    j = torch.randint(0, 2048, w.shape, generator=g).float()
    j = torch.where(torch.rand(w.shape, generator=g) < 0.2, 512.0, j)  # 20% exact ties
    u = torch.where(up, 1.0, -1.0) * j / 1024 * d
    return w, u


@pytest.mark.parametrize("fmt", [E4M3, E5M2, BF16], ids=["e4m3", "e5m2", "bf16"])
def test_prediction_equals_rounding_on_random_cases(fmt):
    g = torch.Generator().manual_seed(1)
    w, u = _random_cases(fmt, 100_000, g)
    s = w + u
    assert torch.equal(s.double(), w.double() + u.double())
    r = s.to(torch.bfloat16).float() if fmt is BF16 else saturating_cast(s, fmt).float()
    truth = r == w
    pred = predicted_lost(w, u, fmt)
    assert 0.2 < truth.float().mean() < 0.8  # both outcomes are well represented
    assert torch.equal(pred, truth)


def test_unchanged_compares_bits():
    a = torch.tensor([1.0, 0.0, 2.0]).to(torch.float8_e4m3fn)
    b = torch.tensor([1.0, -0.0, 2.5]).to(torch.float8_e4m3fn)
    assert unchanged(a, b).tolist() == [True, False, False]  # +0 and -0 are different bits
    with pytest.raises(ValueError, match="like with like"):
        unchanged(a, b.to(torch.bfloat16))
    with pytest.raises(ValueError, match="valid"):
        format_of(torch.float32)


def test_count_update_by_hand():
    """Four bf16 weights at 1.0 (spacing 2^-7 up, 2^-8 down), updates in units of 2^-10:
    +3 (< half of 8: lost), +5 (> 4: kept, stored 1 + 2^-7, i.e. +8 applied), -1 (< half of 4: lost),
    0 (lost, no mass). Bias: (3 + (5 - 8) + 1) / (3 + 5 + 1 + 0) = 1/9."""
    q = 2.0**-10
    before = torch.ones(4, dtype=torch.bfloat16)
    intended = torch.tensor([1 + 3 * q, 1 + 5 * q, 1 - q, 1.0])
    after = intended.to(torch.bfloat16)
    assert (after.float() - 1).tolist() == [0.0, 8 * q, 0.0, 0.0]
    f = count_update(before, after, intended).fractions()
    assert f["lost_pred_frac"] == 0.75 and f["unchanged_frac"] == 0.75
    assert f["lost_bias"] == pytest.approx(1 / 9, rel=1e-15)
    assert lost_bias(intended - 1, after.float() - 1) == pytest.approx(1 / 9, rel=1e-15)
    # an FP8 tensor whose scale changed: the applied update includes the rescaling. Codes (1.0, 2.0) at
    # s = 0.5, an intended (0.5 + 0.01, 1.0 + 0.2); stored after as codes (1.0, 2.5) at s = 0.5 · 0.9
    before = torch.tensor([1.0, 2.0]).to(torch.float8_e4m3fn)
    after = torch.tensor([1.0, 2.5]).to(torch.float8_e4m3fn)
    s0, s1 = 0.5, float(torch.tensor(0.45))
    c = count_update(before, after, torch.tensor([0.51, 1.2]), s0, s1).fractions()
    u = torch.tensor([0.51, 1.2]).double() - torch.tensor([0.5, 1.0], dtype=torch.float64)
    a = torch.tensor([1.0, 2.5], dtype=torch.float64) * s1 - torch.tensor([0.5, 1.0], dtype=torch.float64)
    # 0.01 / 0.5 = 0.02 code units < 0.0625 (lost); 0.2 / 0.5 = 0.4 > 0.125 (kept): the first code stayed
    assert c["lost_pred_frac"] == 0.5 and c["unchanged_frac"] == 0.5
    assert c["lost_bias"] == pytest.approx(float((torch.sign(u) * (u - a)).sum() / u.abs().sum()), rel=1e-12)


def _sr_bias_case(fmt, seed):
    """Weights of one format and updates onto them: 90% below half a spacing, 10% of 3 to 10 spacings.
    Returns the weights, the exact fp32 sums ``x`` to be rounded, the updates ``x - w`` and the generator."""
    g = torch.Generator().manual_seed(seed)
    n = 200_000
    if fmt is BF16:
        w = (torch.randn(n, generator=g) * 0.02).to(torch.bfloat16).float()
    else:
        w = saturating_cast(torch.randn(n, generator=g) * 20, fmt).float()  # far from max: nothing saturates
    up = torch.rand(n, generator=g) < 0.5
    d = torch.where(up, spacing_above(w, fmt), spacing_below(w, fmt)).float()
    small = torch.rand(n, generator=g) < 0.9
    mag = torch.where(small, torch.rand(n, generator=g) * 0.45, 3 + 7 * torch.rand(n, generator=g)) * d
    x = w + torch.where(up, mag, -mag)
    return w, x, x - w, g  # x - w: exact (Sterbenz), the update the rounding really sees


@pytest.mark.parametrize("fmt", [E4M3, BF16], ids=["e4m3", "bf16"])
def test_bias_nearest_is_the_lost_mass_and_stochastic_is_unbiased(fmt):
    w, x, u, g = _sr_bias_case(fmt, seed=2)
    if fmt is BF16:
        nearest, sr = x.to(torch.bfloat16).float(), stochastic_round_bf16(x, g).float()
    else:
        nearest, sr = saturating_cast(x, fmt).float(), stochastic_round_to_format(x, fmt, g)
    pred = predicted_lost(w, u, fmt)
    ud = u.double()
    mass = float(ud.abs().sum())
    lost_mass = float(ud.abs()[pred].sum()) / mass
    # the grid around each sum: spacing ``h`` (the binade's, from |x|) and the fraction ``p`` of it that x
    # lies above the grid point below it (in magnitude)
    h = ulp(x, fmt)
    k = x.double().abs() / h
    p = k - k.floor()
    # nearest: a lost update contributes its whole mass, a kept one its error, at most half a spacing either way
    b_near = lost_bias(u, nearest - w)
    slack = float((h / 2)[~pred].sum()) / mass
    assert abs(b_near - lost_mass) <= slack
    assert b_near > 0.1 and lost_mass > 0.1
    # stochastic: a_i - u_i = h_i·(B_i - p_i), B_i ~ Bernoulli(p_i): mean 0, variance p_i(1 - p_i)·h_i². The
    # bias is 0 within 4 standard errors of the seeded draw, and far below nearest's
    b_sr = lost_bias(u, sr - w)
    se = float(torch.sqrt((p * (1 - p) * h**2).sum())) / mass
    assert abs(b_sr) <= 4 * se
    assert 4 * se < b_near / 5  # the test can tell the two apart
    # the predicted share is the same definition under either rounding; under SR fewer weights stay
    codes = (lambda t: t.to(torch.bfloat16)) if fmt is BF16 else (lambda t: t.to(fmt.dtype))
    assert float(unchanged(codes(w), codes(sr)).float().mean()) < float(pred.float().mean()) - 0.2
    # under nearest, predicted lost and measured unchanged are the same weights, but for a zero weight whose
    # lost update flips the sign of the zero (+0 + a tiny negative update gives -0: another code, the same value)
    differ = unchanged(codes(w), codes(nearest)) != pred
    assert torch.equal(differ, pred & (w == 0) & (u != 0) & (torch.signbit(w) != (u < 0)))


def test_recorder_last_and_window():
    rec = LostUpdates()
    before = torch.ones(4, dtype=torch.bfloat16)
    steps = [torch.tensor([1.003, 1.004, 0.999, 1.0]), torch.tensor([1.01, 1.02, 0.98, 1.0])]
    aggs = []
    for intended in steps:
        rec.record("a", count_update(before, intended.to(torch.bfloat16), intended), "nearest", BF16)
        aggs.append(rec.finish_step())
    assert aggs[0]["lost_pred_frac"] == 0.75 and aggs[1]["lost_pred_frac"] == 0.25
    assert rec.finish_step() == {}  # nothing recorded since: no aggregate
    (row,) = rec.rows()
    assert row["layer"] == "a" and row["tensor"] == "weight_update" and row["format"] == "bf16"
    assert row["lost_pred_frac"] == 0.25 and row["lost_pred_frac_window"] == 0.5 and row["probed_window"] == 2
    (row,) = rec.rows()  # read again without a probed step: the last step's values, no window
    assert row["lost_pred_frac"] == 0.25 and row["probed_window"] == 0 and "lost_pred_frac_window" not in row
