"""MX block quantization of norm gains (methods/fp8/mx_gains.py) against a high-precision reference."""

from __future__ import annotations

import pytest
import torch

from methods.fp8.formats import E4M3, fp8_values
from methods.fp8.mx_gains import MX_BLOCK, mx_quantize, shared_exponents, ste_mx

SHAPES = [(32,), (256,), (100,), (3, 70), (1,)]


def _blocks(x: torch.Tensor, block: int = MX_BLOCK):
    """(block values, their fp64 reference) for every block of the last dim (ragged last block too)."""
    flat = x.reshape(-1, x.shape[-1])
    for r in range(flat.shape[0]):
        for c in range(0, flat.shape[1], block):
            yield r, slice(c, c + block)


@pytest.mark.parametrize("shape", SHAPES)
def test_floor_clips_the_block_max_and_bump_never_saturates(shape):
    g = torch.Generator().manual_seed(sum(shape))
    # gains around 1 with a spread, as trained RMSNorm gains are; some blocks' max in the clipping zone
    x = (0.9 + 0.3 * torch.rand(shape, generator=g)) * torch.where(torch.rand(shape, generator=g) < 0.5, -1.0, 1.0)
    x.view(-1)[0] = 0.97  # amax in [0.875, 1): floor puts it at 496 > 448, so it clips
    x.view(-1)[1:MX_BLOCK].clamp_(-0.9, 0.9)
    qf, n_clip_f = mx_quantize(x, rounding="floor")
    qb, n_clip_b = mx_quantize(x, rounding="up")
    assert n_clip_b == 0 and n_clip_f >= 1
    xf = x.double().reshape(-1, x.shape[-1])
    qf2, qb2 = qf.double().reshape(xf.shape), qb.double().reshape(xf.shape)
    for r, sl in _blocks(x):
        blk, amax = xf[r, sl], xf[r, sl].abs().max()
        e = int(torch.floor(torch.log2(amax))) - 8  # E4M3's largest binade is 2^8
        top = E4M3.max * 2.0**e
        # floor: everything beyond 448 * 2^e lands on it exactly (clipped), nothing lands beyond
        assert float(qf2[r, sl].abs().max()) <= top
        over = blk.abs() > E4M3.overflow_threshold * 2.0**e
        assert torch.equal(qf2[r, sl].abs()[over], torch.full_like(blk[over], top))
        # bump: no clipping, so the error is rounding only: half an ulp of the value's binade (2^-4 rel)
        err = (qb2[r, sl] - blk).abs()
        assert bool((err <= blk.abs() * 2.0**-4 + 2.0 ** (e + 1 - 9)).all()), (err.max(), amax)
    assert float((qf.double() - x.double()).abs().max()) > float((qb.double() - x.double()).abs().max())
    assert torch.isfinite(qf).all() and torch.isfinite(qb).all()


@pytest.mark.parametrize("rounding", ["floor", "up"])
@pytest.mark.parametrize("n", [32, 96, 45])
def test_exact_on_representable_values(rounding, n):
    """Values on the block's own grid (an E4M3 value times the shared scale) come back bit for bit."""
    g = torch.Generator().manual_seed(n)
    vals = fp8_values(E4M3)
    hi = 448.0 if rounding == "floor" else 255.0  # where the block max lands: [256, 448] / [128, 256)
    lo = 256.0 if rounding == "floor" else 128.0
    out = []
    for c in range(0, n, MX_BLOCK):
        m = min(MX_BLOCK, n - c)
        inside = vals[vals.abs() <= hi]
        codes = inside[torch.randint(len(inside), (m,), generator=g)]
        top = vals[(vals >= lo) & (vals <= hi)]
        codes[0] = top[torch.randint(len(top), (1,), generator=g)]  # fixes the block's shared exponent
        e = int(torch.randint(-12, 4, (1,), generator=g))
        out.append(codes * 2.0**e)
    x = torch.cat(out)
    q, n_clip = mx_quantize(x, rounding=rounding)
    assert n_clip == 0 and torch.equal(q, x)


def test_shared_exponent_at_powers_of_two_and_zero_blocks():
    a = torch.tensor([1.0, 2.0, 0.75, 0.0, 448.0])
    assert shared_exponents(a, E4M3, "floor").tolist() == [-8, -7, -9, -8, 0]
    assert shared_exponents(a, E4M3, "up").tolist() == [-7, -6, -8, -7, 1]
    q, n = mx_quantize(torch.zeros(40))
    assert n == 0 and torch.equal(q, torch.zeros(40))
    with pytest.raises(ValueError, match="floor, up"):
        shared_exponents(a, E4M3, "nearest")


@pytest.mark.parametrize("shape", [(64,), (256,), (37,)])
def test_ste_forward_quantized_backward_identity(shape):
    g = torch.Generator().manual_seed(7)
    w = (1 + 0.2 * torch.randn(shape, generator=g)).requires_grad_()
    dy = torch.randn(shape, generator=g)
    y = ste_mx(w, rounding="floor")
    assert torch.equal(y.detach(), mx_quantize(w.detach(), rounding="floor")[0])
    y.backward(dy)
    assert torch.equal(w.grad, dy)
