"""MX-style block quantization of small vectors (RMSNorm gains), with the shared-exponent rounding as a choice.

OCP Microscaling (MX) keeps one power-of-two scale per block of 32 values. The spec takes the shared
exponent from ``floor(log2(amax))`` minus the element format's largest exponent (8 for E4M3), so the
block's largest value lands in [256, 512) and everything above E4M3's max (448) *clips* to 448: up to
1/8 of the value lost, always on the largest gains. Su et al. (arXiv 2506.20752) blame this for the
instability of MX training with quantized layer-norm gains, and fix it by rounding the shared exponent
up (the "exponent bump"): one binade more, the block max lands in [128, 256), nothing clips, at the
price of one mantissa bit of resolution near zero.

:func:`mx_quantize` gives the dequantized values (fp32) and how many clipped, so a test can hold the
floor rounding to its clipping and the bump to none; :func:`ste_mx` is the forward-quantized,
straight-through-gradient version a recipe puts in front of a gain.
"""

from __future__ import annotations

import torch

from methods.fp8.formats import ExMy, get_format, round_to_format

#: MX's block length (OCP MX v1.0)
MX_BLOCK = 32
SCALE_ROUNDING = ("floor", "up")


def shared_exponents(amax: torch.Tensor, fmt: ExMy, rounding: str = "floor") -> torch.Tensor:
    """Per block: the integer e with scale 2^e, from ``floor(log2(amax)) - emax(fmt)`` (MX), plus one for
    ``rounding="up"``. All-zero blocks get the exponent of amax 1 (any scale codes zeros exactly)."""
    if rounding not in SCALE_ROUNDING:
        raise ValueError(f"shared-exponent rounding must be one of {', '.join(SCALE_ROUNDING)}, got {rounding!r}")
    a = amax.float()
    a = torch.where((a > 0) & torch.isfinite(a), a, torch.ones_like(a))
    # frexp gives a = m·2^k with m in [0.5, 1): floor(log2 a) = k - 1, exactly (no log rounding at powers of 2)
    e = torch.frexp(a).exponent - 1 - fmt.max_exponent
    return e + 1 if rounding == "up" else e


def mx_quantize(
    x: torch.Tensor, fmt: str | ExMy = "e4m3", block: int = MX_BLOCK, rounding: str = "floor"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` (any shape; blocks run along the last dimension, the last block may be short) → (values in
    fp32 after the round trip, number of values that clipped: |x / scale| beyond the format's overflow
    threshold, a 0-d tensor: no device sync). Rounding to the element format saturates, ties to even
    (``formats.round_to_format``)."""
    fmt = get_format(fmt)
    if block < 1:
        raise ValueError(f"block must be a positive number of values, got {block}")
    shape = x.shape
    xf = x.detach().float().reshape(-1, shape[-1] if x.dim() else 1)
    C = xf.shape[1]
    pad = (-C) % block
    xp = torch.nn.functional.pad(xf, (0, pad)).view(xf.shape[0], -1, block)  # zeros never raise an amax
    amax = xp.abs().amax(-1, keepdim=True)
    scale = torch.ldexp(torch.ones_like(amax), shared_exponents(amax, fmt, rounding))  # exact powers of two
    y = xp / scale
    n_clip = (y.abs() > fmt.overflow_threshold).sum()
    out = (round_to_format(y, fmt) * scale).view(xf.shape[0], -1)[:, :C]
    return out.reshape(shape), n_clip


class _STE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, fmt, block, rounding):
        return mx_quantize(w, fmt, block, rounding)[0].to(w.dtype)

    @staticmethod
    def backward(ctx, g):
        return g, None, None, None  # straight through: the fp32 master gets the gradient of the used value


def ste_mx(w: torch.Tensor, fmt: str | ExMy = "e4m3", block: int = MX_BLOCK, rounding: str = "floor") -> torch.Tensor:
    """``w`` quantized as :func:`mx_quantize` does in the forward, identity in the backward."""
    return _STE.apply(w, get_format(fmt), block, rounding)


def ste_mx_counted(
    w: torch.Tensor, fmt: str | ExMy = "e4m3", block: int = MX_BLOCK, rounding: str = "floor"
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`ste_mx` plus the number of values that clipped (for telemetry), from one quantization."""
    q, n_clip = mx_quantize(w, fmt, block, rounding)
    return w + (q.to(w.dtype) - w).detach(), n_clip
