"""Scale selection: which number a tensor is multiplied by before the FP8 cast, and for which values.

A *scale* s maps a group of values so that its largest magnitude (amax) lands at the format's max:
``s = fmt.max / amax / 2**margin`` (TE's formula), optionally rounded down to a power of two so that
scaling and unscaling are exact. The *granularity* says which values share one scale:

================  ===========================  ==========================================================
``Blocks``        group of a 2-D (R, C) tensor  used by
================  ===========================  ==========================================================
TENSORWISE        all of it                    TE delayed/current scaling, torchao tensorwise
ROWWISE           one row (1 × C)              torchao rowwise (per token / per output channel)
COLWISE           one column (R × 1)           the same tensor seen from the other GEMM (backward)
TILE_1x128        1 × 128 tiles of a row       DeepSeek-V3 activations and gradients (fwd, dgrad)
TILE_128x1        128 × 1 tiles of a column    DeepSeek-V3 activations/gradients for wgrad
BLOCK_128x128     128 × 128 blocks             DeepSeek-V3 / TE Float8BlockScaling weights
================  ===========================  ==========================================================

*When* the scale is computed is the other axis: *current* scaling uses this tensor's own amax (one
extra read of the tensor, never overflows); *delayed* scaling (:class:`DelayedScaler`) uses the amax
of previous steps from a history window, as TE's ``DelayedScaling`` and Nanotron do, so the scale is
known before the tensor is; values that outgrew the history saturate, and are counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from methods.fp8.device import host_readable
from methods.fp8.formats import FP8Format, get_format

#: amax below this is treated as this (torchao uses the same floor): keeps scales finite on all-zero
#: tensors without special-casing them.
AMAX_FLOOR = 1e-12
#: scales are at most this: a format whose range is as wide as fp32's (E8My, max ~3.4e38) would get
#: ``max / amax`` = inf for any amax < 1, and an inverse scale in fp32's subnormals (imprecise) just
#: before that. 2^64 is exact, and its inverse a normal fp32; it never binds for the FP8 formats
#: (max / AMAX_FLOOR <= 5.8e16 < 2^64 = 1.8e19), so their scales are what they always were.
SCALE_MAX = 2.0**64


@dataclass(frozen=True)
class Blocks:
    """Group shape (rows, cols) sharing one scale; 0 means the whole dimension."""

    rows: int
    cols: int

    def resolve(self, shape: tuple[int, int]) -> tuple[int, int]:
        R, C = shape
        return (self.rows or R) or 1, (self.cols or C) or 1

    def grid(self, shape: tuple[int, int]) -> tuple[int, int]:
        br, bc = self.resolve(shape)
        return -(-shape[0] // br), -(-shape[1] // bc)

    def t(self) -> Blocks:
        return Blocks(self.cols, self.rows)

    @property
    def label(self) -> str:
        return _LABELS.get(self, f"{self.rows or 'all'}x{self.cols or 'all'}")


TENSORWISE = Blocks(0, 0)
ROWWISE = Blocks(1, 0)
COLWISE = Blocks(0, 1)
TILE_1x128 = Blocks(1, 128)
TILE_128x1 = Blocks(128, 1)
BLOCK_128x128 = Blocks(128, 128)
_LABELS = {
    TENSORWISE: "tensorwise",
    ROWWISE: "rowwise",
    COLWISE: "colwise",
    TILE_1x128: "1x128",
    TILE_128x1: "128x1",
    BLOCK_128x128: "128x128",
}


def scale_from_amax(amax: torch.Tensor, fmt: FP8Format, margin: int = 0, pow2: bool = False) -> torch.Tensor:
    """fp32 scale(s) for the given amax(es): ``fmt.max / amax / 2**margin``, at most ``SCALE_MAX``.

    Guarantees ``amax * scale <= fmt.max`` in fp32 (the division may round up by an ulp; then the scale
    is nudged down), so current scaling can skip the clamp and never counts a saturated value. Zero,
    non-finite or tiny amax gives a finite scale (NaN data stays NaN through the cast; it is not hidden).
    """
    a = amax.float()
    finite = torch.isfinite(a)
    a = torch.where(finite, a, torch.ones_like(a)).clamp_min(AMAX_FLOOR)
    # tensor / tensor is IEEE division; ``fmt.max / a`` is ``a.reciprocal() * fmt.max`` (two roundings)
    s = torch.full_like(a, fmt.max) / a
    if margin:
        s = s * (2.0**-margin)
    s = s.clamp(max=SCALE_MAX)  # (a smaller scale keeps amax * scale <= max)
    if pow2:  # 2**floor(log2 s), exactly: keep the exponent bits, clear the mantissa
        s = (s.view(torch.int32) & 0x7F800000).view(torch.float32)
    else:
        s = torch.where(a * s > fmt.max, torch.nextafter(s, torch.zeros_like(s)), s)
    return s


def _padded_view(x: torch.Tensor, br: int, bc: int) -> torch.Tensor:
    """(R, C) → (Rb, br, Cb, bc), zero-padding partial blocks (zeros never raise an amax)."""
    R, C = x.shape
    pr, pc = (-R) % br, (-C) % bc
    if pr or pc:
        x = torch.nn.functional.pad(x, (0, pc, 0, pr))
    return x.view((R + pr) // br, br, (C + pc) // bc, bc)


def absmax(x: torch.Tensor, dim: int | None = None, keepdim: bool = False) -> torch.Tensor:
    """max |x| (along ``dim``) in one read: ``aminmax`` is ~10-50x faster on the CPU than
    ``abs().amax()`` (which writes |x| first) or ``vector_norm(x, inf)``; NaN propagates."""
    mn, mx = torch.aminmax(x) if dim is None else torch.aminmax(x, dim=dim, keepdim=keepdim)
    return torch.maximum(mx, mn.neg())


def group_amax(x: torch.Tensor, blocks: Blocks) -> torch.Tensor:
    """Largest |x| of every group, shape ``blocks.grid(x.shape)``, in x's dtype (amax is exact)."""
    R, C = x.shape
    br, bc = blocks.resolve((R, C))
    if br >= R and bc >= C:
        return absmax(x).reshape(1, 1)
    if br == 1 and bc >= C:
        return absmax(x, 1, keepdim=True)
    if bc == 1 and br >= R:
        return absmax(x, 0, keepdim=True)
    return block_amax(_padded_view(x, br, bc))


def block_amax(xv: torch.Tensor) -> torch.Tensor:
    """(Rb, br, Cb, bc) view → (Rb, Cb) amax, reducing the long axis first (no |x| temporary)."""
    return absmax(absmax(xv, 3), 1)


def expand_scales(s: torch.Tensor, blocks: Blocks, shape: tuple[int, int]) -> torch.Tensor:
    """Group scales (Rb, Cb) → one per element (R, C) (a broadcastable view where possible)."""
    R, C = shape
    br, bc = blocks.resolve(shape)
    if br > 1:
        s = s.repeat_interleave(br, 0)[:R]
    if bc > 1:
        s = s.repeat_interleave(bc, 1)[:, :C]
    return s


class DelayedScaler(nn.Module):
    """Per-tensor delayed scaling state: an amax history window and the scale derived from it.

    Buffers (persistent, so checkpoints keep them and the memory ledger counts them as ``meta``):
    ``amax_history`` (history_len,), ``scale`` (), ``pos`` () — the ring-buffer write position.
    ``scale == 0`` means "no history yet": the first quantization falls back to current scaling instead
    of TE's initial scale of 1.0 (which would flush this model's ~1e-5 gradients to zero in E5M2).
    ``algo`` is ``max`` (TE's default: max over the window) or ``most_recent``.
    """

    def __init__(
        self, fmt: str | FP8Format, history_len: int = 16, margin: int = 0, algo: str = "max", pow2: bool = False
    ):
        super().__init__()
        if history_len < 1:
            raise ValueError(f"amax history length must be >= 1, got {history_len}")
        if algo not in ("max", "most_recent"):
            raise ValueError(f"amax_compute_algo must be 'max' or 'most_recent', got {algo!r}")
        self.fmt, self.margin, self.algo, self.pow2 = get_format(fmt), margin, algo, pow2
        self.register_buffer("amax_history", torch.zeros(history_len))
        self.register_buffer("scale", torch.zeros(()))
        self.register_buffer("pos", torch.zeros((), dtype=torch.int64))
        self._seen = False  # host-side cache of "pos > 0", so the GPU path syncs at most once

    def has_history(self) -> bool:
        if not self._seen:
            self._seen = bool(self.pos.item() > 0)
        return self._seen

    def scale_for(self, amax_now: torch.Tensor) -> torch.Tensor:
        """The scale to use for the tensor being quantized (history's; its own amax only at first use)."""
        if host_readable(self.scale):  # a host-side branch costs nothing here and saves ops
            if float(self.scale) > 0:
                return self.scale.clone()  # record() updates the buffer in place later
            return scale_from_amax(amax_now.reshape(()), self.fmt, self.margin, self.pow2)
        current = scale_from_amax(amax_now.reshape(()), self.fmt, self.margin, self.pow2)
        return torch.where(self.scale > 0, self.scale, current)  # no device sync

    @torch.no_grad()
    def record(self, amax_now: torch.Tensor) -> None:
        """Push this step's amax into the window and derive the scale the next quantization will use."""
        a = amax_now.reshape(()).float()
        h = self.amax_history
        h.index_copy_(0, (self.pos % h.numel()).reshape(1), a.reshape(1))
        self.pos += 1
        self._seen = True
        ref = a if self.algo == "most_recent" else h.max()
        self.scale.copy_(scale_from_amax(ref, self.fmt, self.margin, self.pow2))

    def extra_repr(self) -> str:
        return (
            f"{self.fmt}, history={self.amax_history.numel()}, margin={self.margin}, algo={self.algo}, pow2={self.pow2}"
        )


def pow2_ceil(x: torch.Tensor) -> torch.Tensor:
    """Smallest power of two >= x, exactly (bit arithmetic on fp32); 1 where x is 0, tiny or not finite."""
    x = x.float()
    ok = torch.isfinite(x) & (x >= 2.0**-126)
    bits = torch.where(ok, x, torch.ones_like(x)).view(torch.int32)
    up = (bits & 0x7FFFFF) != 0  # any mantissa bit: round the exponent up
    return ((bits & 0x7F800000) + (up.int() << 23)).view(torch.float32)


def describe_scales(scale: torch.Tensor) -> dict:
    """Summary of a scale tensor for telemetry: one number for tensorwise, min/max for groups."""
    s = scale.float()
    if s.numel() == 1:
        v = float(s)
        return {"scale": v}
    return {
        "scale": float(s.min()),
        "scale_max": float(s.max()),
        "scale_log2_spread": float(torch.log2(s.max() / s.min())) if float(s.min()) > 0 else math.inf,
    }
