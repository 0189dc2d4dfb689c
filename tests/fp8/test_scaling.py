"""Scale selection and quantization: current scaling never overflows, delayed scaling follows its
history and counts what saturates, group amaxes are right on shapes that are not multiples of 128."""

import math

import pytest
import torch

from methods.fp8.formats import E4M3, E5M2
from methods.fp8.quantize import quantize
from methods.fp8.scaling import (
    AMAX_FLOOR,
    COLWISE,
    ROWWISE,
    TENSORWISE,
    BLOCK_128x128,
    Blocks,
    DelayedScaler,
    TILE_1x128,
    TILE_128x1,
    expand_scales,
    group_amax,
    scale_from_amax,
)
from methods.ledger import ledger

ALL_BLOCKS = [TENSORWISE, ROWWISE, COLWISE, TILE_1x128, TILE_128x1, BLOCK_128x128]
SHAPES = [(64, 128), (200, 300), (129, 257), (7, 130)]


def heavy_tailed(shape, gen):
    """Gaussian times log-uniform per-column magnitudes (1e-4 .. 1e4): outlier channels."""
    mag = torch.exp(torch.empty(shape[1]).uniform_(math.log(1e-4), math.log(1e4), generator=gen))
    return torch.randn(*shape, generator=gen) * mag


def test_scale_keeps_amax_within_max():
    g = torch.Generator().manual_seed(0)
    amax = torch.exp(torch.empty(100_000).uniform_(-40, 40, generator=g))
    for fmt in (E4M3, E5M2):
        s = scale_from_amax(amax, fmt)
        assert (amax * s <= fmt.max).all()  # the one-ulp nudge where the division rounded up
        live = amax >= AMAX_FLOOR  # below the floor the scale is capped (all-zero tensors)
        assert ((amax * s)[live] > fmt.max * (1 - 1e-6)).all()  # the scale uses the whole range
        p = scale_from_amax(amax, fmt, pow2=True)
        m, _ = torch.frexp(p)
        assert (m == 0.5).all()  # exact powers of two
        assert ((amax * p <= fmt.max) & ((amax * p > fmt.max / 2) | ~live)).all()
        assert torch.allclose(scale_from_amax(amax, fmt, margin=2), s / 4, rtol=2e-7)
    odd = scale_from_amax(torch.tensor([0.0, float("inf"), float("nan")]), E4M3)
    assert torch.isfinite(odd).all()


@pytest.mark.parametrize("blocks", ALL_BLOCKS, ids=lambda b: b.label)
def test_group_amax_against_a_loop(blocks):
    g = torch.Generator().manual_seed(1)
    for shape in SHAPES:
        x = heavy_tailed(shape, g)
        got = group_amax(x, blocks)
        br, bc = blocks.resolve(shape)
        Rb, Cb = blocks.grid(shape)
        assert got.shape == (Rb, Cb)
        ref = torch.empty(Rb, Cb)
        for i in range(Rb):
            for j in range(Cb):
                ref[i, j] = x[i * br : (i + 1) * br, j * bc : (j + 1) * bc].abs().max()
        assert torch.equal(got, ref)


@pytest.mark.parametrize("blocks", ALL_BLOCKS, ids=lambda b: b.label)
@pytest.mark.parametrize("fmt", [E4M3, E5M2], ids=str)
def test_current_scaling_never_overflows(blocks, fmt):
    g = torch.Generator().manual_seed(2)
    for shape in SHAPES:
        for dtype in (torch.float32, torch.bfloat16):
            x = heavy_tailed(shape, g).to(dtype)
            q = quantize(x, fmt, blocks, backend="torch")
            assert q.data.dtype == fmt.dtype and q.shape == shape and q.data.is_contiguous()
            assert int(q.n_sat) == 0
            codes = q.data.float()
            assert torch.isfinite(codes).all() and codes.abs().max() <= fmt.max
            # each group's amax lands on (or one rounding below) the format's max
            assert codes.abs().max() >= fmt.max * (1 - fmt.max_rel_error)
            # the codes are the scaled values rounded: half an ulp relative for normals, half the
            # subnormal spacing absolute below
            y = x.float() * expand_scales(q.scale, q.blocks, shape)
            err = (codes - y).abs()
            normal = y.abs() >= fmt.min_normal
            assert (err[normal] <= fmt.max_rel_error * y.abs()[normal]).all()
            assert (err[~normal] <= fmt.min_subnormal / 2).all()


@pytest.mark.parametrize("pow2", [False, True])
def test_finer_groups_are_more_accurate_on_outlier_channels(pow2):
    g = torch.Generator().manual_seed(3)
    x = heavy_tailed((256, 384), g)

    def column_sqnr(blocks):
        """Lower quartile over channels of each channel's SQNR (a global SQNR sees only the big ones)."""
        xd = x.double()
        d = quantize(x, E4M3, blocks, pow2=pow2, backend="torch").dequantize(torch.float64)
        per = 20 * torch.log10(xd.norm(dim=0) / (xd - d).norm(dim=0).clamp_min(1e-300))
        return float(per.quantile(0.25))

    # Per-column outliers spanning 1e-4..1e4: column groups keep every channel at full precision; a
    # tensor, row, 1x128 or 128x128 scale set by the largest channel flushes a quarter of them to zero.
    assert column_sqnr(COLWISE) > 25 and column_sqnr(TILE_128x1) > 25
    for coarse in (TENSORWISE, ROWWISE, TILE_1x128, BLOCK_128x128):
        assert column_sqnr(coarse) < 5


def test_delayed_scaling_follows_its_history():
    H = 4
    sc = DelayedScaler(E4M3, history_len=H)
    amaxes = [1.0, 8.0, 2.0, 0.5, 0.25, 0.125, 4.0]
    g = torch.Generator().manual_seed(4)
    used = []
    for i, a in enumerate(amaxes):
        x = torch.randn(64, 96, generator=g)
        x = x / x.abs().max() * a
        q = quantize(x, E4M3, TENSORWISE, scaler=sc, backend="torch")
        used.append(float(q.scale))
        window = amaxes[max(0, i + 1 - H) : i + 1]
        assert float(sc.scale) == pytest.approx(E4M3.max / max(window), rel=1e-6)
        assert float(sc.amax_history.max()) == pytest.approx(max(window), rel=1e-6)
    # the first quantization had no history: its own amax (current scaling), not TE's initial 1.0
    assert used[0] == pytest.approx(448.0 / 1.0, rel=1e-6)
    # afterwards each step used the scale derived from the previous steps' window
    for i in range(1, len(amaxes)):
        window = amaxes[max(0, i - H) : i]
        assert used[i] == pytest.approx(448.0 / max(window), rel=1e-6)
    assert int(sc.pos) == len(amaxes)


def test_delayed_scaling_counts_saturation_and_most_recent():
    sc = DelayedScaler(E4M3, history_len=8, algo="most_recent")
    g = torch.Generator().manual_seed(5)
    quantize(torch.randn(128, 128, generator=g), E4M3, TENSORWISE, scaler=sc, backend="torch")
    scale = float(sc.scale)
    x = torch.randn(128, 128, generator=g) * 6  # outgrew the history
    expected = int((x.abs() * scale > E4M3.overflow_threshold).sum())  # would round beyond 448
    assert expected > 100
    q = quantize(x, E4M3, TENSORWISE, scaler=sc, backend="torch")
    assert int(q.n_sat) == expected
    assert q.data.float().abs().max() == E4M3.max  # clamped, not inf/NaN
    # most_recent: the next scale comes from this tensor alone
    assert float(sc.scale) == pytest.approx(E4M3.max / float(x.abs().max()), rel=1e-6)
    # record=False (eval) uses the scale without touching the history
    pos = int(sc.pos)
    quantize(x, E4M3, TENSORWISE, scaler=sc, record=False, backend="torch")
    assert int(sc.pos) == pos
    with pytest.raises(ValueError, match="per-tensor"):
        quantize(x, E4M3, ROWWISE, scaler=sc)


def test_delayed_state_is_persistent_and_counted():
    sc = DelayedScaler(E5M2, history_len=16)
    quantize(torch.randn(32, 32), E5M2, TENSORWISE, scaler=sc, backend="torch")
    sd = sc.state_dict()
    assert set(sd) == {"amax_history", "scale", "pos"}
    fresh = DelayedScaler(E5M2, history_len=16)
    fresh.load_state_dict(sd)
    assert fresh.has_history() and float(fresh.scale) == float(sc.scale)
    mem = ledger(torch.nn.ModuleDict({"s": sc}))
    assert mem["meta"] == 16 * 4 + 4 + 8


def test_blocks_helpers():
    assert TILE_1x128.grid((200, 300)) == (200, 3)
    assert BLOCK_128x128.grid((129, 257)) == (2, 3)
    assert ROWWISE.resolve((5, 7)) == (1, 7) and COLWISE.t() == ROWWISE
    assert Blocks(128, 1).label == "128x1"
