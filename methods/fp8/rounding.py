"""Stochastic rounding fp32 → bf16.

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
