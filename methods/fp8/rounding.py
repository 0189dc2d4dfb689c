"""Stochastic rounding: fp32 → bf16, and fp32 → an FP8 format.

bf16 keeps the top 16 bits of an fp32 word. Adding a uniform random 16-bit integer to the low half
before truncating rounds up with probability equal to the discarded fraction, so the rounding is
unbiased in expectation: small updates that round-to-nearest would always drop survive on average.
"""

from __future__ import annotations

import torch


def stochastic_round_bf16(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Round fp32 ``x`` to bf16 stochastically. Non-finite values pass through unchanged."""
    if x.dtype != torch.float32:
        raise TypeError(f"stochastic_round_bf16 expects float32, got {x.dtype}")
    bits = x.view(torch.int32)
    noise = torch.randint(0, 1 << 16, x.shape, dtype=torch.int32, device=x.device, generator=generator)
    # int32 add may carry into the exponent: that is the round-up. Mask off the low half.
    rounded = ((bits + noise) & -65536).view(torch.float32)
    rounded = torch.where(torch.isfinite(x), rounded, x)
    return rounded.to(torch.bfloat16)  # exact: low 16 bits are zero


def stochastic_round_to_format(x: torch.Tensor, fmt, generator: torch.Generator | None = None) -> torch.Tensor:
    """fp32 ``x`` (already scaled into the format's range) → a value of ``fmt`` (an
    :class:`~methods.fp8.formats.FP8Format`), returned as fp32, rounded stochastically: the neighbour
    above with probability equal to the distance from the one below, in units of the local spacing, so
    ``E[result] = x`` for every ``|x| <= fmt.max``. Beyond ±max it saturates, as the nearest rounding does.

    Why: an update smaller than half the local spacing is always lost under round-to-nearest (fp8-naive's
    stall); rounded stochastically it survives in expectation. The spacing at |x| with exponent e (at
    least the format's minimum, so subnormals share the smallest spacing) is 2^(e - m); ``a / ulp`` is then
    exact in fp32 (a division by a power of two), so floor and fraction are exact too.
    """
    if x.dtype != torch.float32:
        raise TypeError(f"stochastic_round_to_format expects float32, got {x.dtype}")
    a = x.abs().clamp(max=fmt.max)
    e = (((a.view(torch.int32) >> 23) & 0xFF) - 127).clamp(min=fmt.min_exponent)
    ulp = ((e - fmt.mantissa_bits + 127) << 23).view(torch.float32)
    units = a / ulp
    lo = units.floor()
    u = torch.rand(x.shape, dtype=torch.float32, device=x.device, generator=generator)
    # lo + 1 at the top of a binade is the next power of two: representable, and never above max
    # (max is a grid point, so a = max has no fraction and stays)
    r = (lo + (u < units - lo).float()) * ulp
    r = torch.where(a.isnan(), a, r)
    return torch.copysign(r, x)
