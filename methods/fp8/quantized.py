"""An FP8-quantized 2-D tensor (codes, group scales, the groups' amax) and how two of them meet in a GEMM:
the container every part of the library passes around, below quantize, GEMM and kernels alike."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from methods.fp8.formats import FP8Format
from methods.fp8.scaling import Blocks


@dataclass
class Quantized:
    """FP8 codes of a 2-D tensor and the scales that dequantize them: ``x ≈ data / scale`` per group.
    (For a simulated format ``data`` holds the rounded values themselves; ``nbytes`` then counts the
    carrier's bytes, what this process holds, not the format's bits.)"""

    data: torch.Tensor  # float8 codes (R, C), or a simulated format's values in fmt.carrier; may be a view
    scale: torch.Tensor  # fp32 (Rb, Cb): multiplier applied before the cast
    scale_inv: torch.Tensor  # fp32 (Rb, Cb): 1/scale, what the GEMM multiplies back
    blocks: Blocks  # group shape resolved to this orientation's (rows, cols)
    fmt: FP8Format
    amax: torch.Tensor  # (Rb, Cb) largest |x| per group, before scaling
    n_sat: torch.Tensor | int = 0  # values beyond fmt.overflow_threshold, clamped to ±fmt.max

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.data.shape)

    #: fp32 values, once a CPU GEMM has decoded them (``gemm.dequantize_fast``); shared with ``t()``, so
    #: a tensor used by two GEMMs (grad_output in dgrad and wgrad) is decoded once. Lives as long as this.
    decoded: torch.Tensor | None = None

    def t(self) -> Quantized:
        return Quantized(
            self.data.t(),
            self.scale.t(),
            self.scale_inv.t(),
            self.blocks.t(),
            self.fmt,
            self.amax.t(),
            self.n_sat,
            None if self.decoded is None else self.decoded.t(),
        )

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        from methods.fp8.scaling import expand_scales

        return self.data.to(dtype) * expand_scales(self.scale_inv.to(dtype), self.blocks, self.shape)

    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size() + self.scale_inv.numel() * 4


def k_chunk(a: Quantized, b: Quantized) -> int:
    """Length of the K-chunks over which both operands' scales are constant (K if they never change)."""
    K = a.shape[1]
    if b.shape[0] != K:
        raise ValueError(f"inner dimensions differ: A {a.shape}, B {b.shape}")
    ga, gb = min(a.blocks.cols, K), min(b.blocks.rows, K)
    chunk = min(ga, gb)
    if (ga % chunk and ga != K) or (gb % chunk and gb != K):
        raise ValueError(f"incompatible K-groups {ga} and {gb} for K={K}")
    return chunk
