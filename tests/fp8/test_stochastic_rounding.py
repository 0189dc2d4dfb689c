"""Stochastic rounding onto an FP8 grid (``methods.fp8.rounding.stochastic_round_to_format``) and the
fp8-naive option that uses it for the FP8 weight update: results lie on the grid, between the two
neighbours of the input, unbiased in expectation, saturating beyond max; representable values stay."""

import io
import math

import pytest
import torch

from methods.fp8.formats import E4M3, E5M2, fp8_values
from methods.fp8.gemm import dequantize_fast
from methods.fp8.naive import FP8StoredLinear
from methods.fp8.rounding import stochastic_round_to_format
from tests.fp8.conftest import build_micro

FORMATS = [E4M3, E5M2]


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
def test_representable_values_stay_put(fmt):
    v = fp8_values(fmt)
    for seed in range(3):
        assert torch.equal(stochastic_round_to_format(v, fmt, _gen(seed)), v)


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
def test_results_are_one_of_the_two_neighbours_on_the_grid(fmt):
    grid = fp8_values(fmt).double()
    # magnitudes from below the smallest subnormal to max, both signs
    mag = torch.logspace(math.log10(fmt.min_subnormal / 4), math.log10(fmt.max), 20000, dtype=torch.float64)
    x = (mag * torch.where(torch.arange(mag.numel()) % 2 == 0, 1.0, -1.0)).float()
    r = stochastic_round_to_format(x, fmt, _gen()).double()
    i = torch.searchsorted(grid, x.double(), right=True)  # grid[i-1] <= x < grid[i]
    lo, hi = grid[(i - 1).clamp(min=0)], grid[i.clamp(max=grid.numel() - 1)]
    assert torch.isin(r, grid).all()
    assert ((r == lo) | (r == hi)).all()
    # the result as an FP8 code is exact (a cast of a grid value changes nothing)
    assert torch.equal(r.float().to(fmt.dtype).float(), r.float())


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
def test_unbiased_in_expectation(fmt):
    """Mean of n draws within 5 standard errors of x, at normal, subnormal and top-binade values."""
    n = 40000
    xs = [1.3, -0.7123, 3 * fmt.min_subnormal + 0.37 * fmt.min_subnormal, 0.9 * fmt.max, 0.01 * fmt.min_subnormal]
    for x in xs:
        r = stochastic_round_to_format(torch.full((n,), x), fmt, _gen(1)).double()
        vals = r.unique()
        assert vals.numel() == 2  # x lies strictly between two grid points: both occur
        spacing = float(vals[1] - vals[0])
        p = (abs(x) - float(vals.abs().min())) / spacing
        se = spacing * math.sqrt(p * (1 - p) / n)
        assert abs(float(r.mean()) - float(torch.tensor(x).float())) < 5 * se, (x, float(r.mean()))


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
def test_saturates_and_passes_nan(fmt):
    x = torch.tensor([fmt.max * 1.01, -fmt.max * 7, float("inf"), -float("inf"), float("nan"), -0.0])
    r = stochastic_round_to_format(x, fmt, _gen())
    assert r[:4].tolist() == [fmt.max, -fmt.max, fmt.max, -fmt.max]
    assert math.isnan(r[4]) and r[5] == 0 and math.copysign(1, r[5]) == -1
    with pytest.raises(TypeError, match="float32"):
        stochastic_round_to_format(x.double(), fmt)


def test_an_update_below_half_a_spacing_moves_codes_only_when_rounded_stochastically():
    dense = torch.nn.Linear(64, 48, bias=False)
    with torch.no_grad():  # weights from a fixed generator: the test is the same on every run
        dense.weight.copy_(torch.randn(48, 64, generator=_gen(0)) / 8)
    lin = FP8StoredLinear(dense)
    w0 = dequantize_fast(lin.weight_q()).float()
    amax = w0.abs().max()
    # a tenth of each weight's own E4M3 spacing (in weight units), upward; the largest weight is left
    # alone so the per-tensor scale, and with it the grid, stays the same
    scale = float(lin.weight_q().scale.reshape(()))
    y = (w0 * scale).abs().clamp(min=E4M3.min_normal)
    spacing = torch.exp2(torch.floor(torch.log2(y)) - E4M3.mantissa_bits) / scale
    w = torch.where(w0.abs() == amax, w0, w0 + 0.1 * spacing)
    codes0 = lin.weight.detach().view(torch.uint8).clone()

    lin.store_weight(w)  # nearest: every update lost
    assert torch.equal(lin.weight.detach().view(torch.uint8), codes0)

    lin.weight.data.copy_(codes0.view(E4M3.dtype))
    lin.store_weight(w, _gen(3))
    moved = (lin.weight.detach().view(torch.uint8) != codes0).float().mean().item()
    assert 0.05 < moved < 0.15  # ~ a tenth of the codes moved up by one spacing
    w1 = dequantize_fast(lin.weight_q()).float()
    assert ((w1 - w0) * (w1 != w0) >= 0).all()  # only upward, towards the update

    # unbiased: over independent draws, the summed change lands on the summed update. One draw's sum has a
    # relative spread of ~8% (a tenth of the codes move, by spacings that differ per binade), so the mean
    # over n draws is held to 5 of its own standard errors, and those must be tight enough to matter
    n = 64
    sums = []
    for d in range(n):
        lin.weight.data.copy_(codes0.view(E4M3.dtype))
        lin.store_weight(w, _gen(100 + d))
        sums.append(float((dequantize_fast(lin.weight_q()).float() - w0).double().sum()))
    sums = torch.tensor(sums, dtype=torch.float64)
    target = float((w - w0).double().sum())
    se = float(sums.std()) / math.sqrt(n)
    assert 5 * se < 0.1 * target
    assert abs(float(sums.mean()) - target) < 5 * se, (float(sums.mean()), target, se)


def test_fp8_naive_with_stochastic_rounding_trains_and_resumes(corpus):
    from pipelines.run.data import Batches

    b = Batches(corpus, 4, 32, seed=0)
    tr = build_micro("fp8-naive", vocab=corpus.vocab_size, stochastic_rounding=True)
    assert tr.sr_generator is not None and build_micro("fp8-naive").sr_generator is None
    losses = [tr.train_step(*b.get(i), lr=3e-3).loss for i in range(4)]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    buf = io.BytesIO()
    torch.save(tr.state_dict(), buf)
    state = torch.load(io.BytesIO(buf.getvalue()), weights_only=False)
    assert "fp8_sr_generator" in state
    # a resumed trainee draws the same random numbers: the next step gives the same codes
    tr2 = build_micro("fp8-naive", vocab=corpus.vocab_size, stochastic_rounding=True, seed=5)
    tr2.load_state_dict(state)
    x, y = b.get(4)
    tr.train_step(x, y, lr=3e-3)
    tr2.train_step(x, y, lr=3e-3)
    for (_, m1), (_, m2) in zip(tr.fp8, tr2.fp8):
        assert torch.equal(m1.weight.view(torch.uint8), m2.weight.view(torch.uint8))
