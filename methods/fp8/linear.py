"""An FP8 linear layer: all three GEMMs of a linear in FP8, with every choice visible.

Forward ``y = x Wᵀ``: x and W quantized (E4M3 by default), one FP8 GEMM, fp32 accumulation, output in
the surrounding autocast dtype (bf16 under bf16 autocast) so the rest of the model sees what it would
see from ``nn.Linear``. Backward: grad_output quantized (E5M2 in the "hybrid" recipe, E4M3 selectable),
``dx = dy W`` and ``dW = dyᵀ x`` both FP8 GEMMs with fp32 accumulation (``wgrad_fp8=False`` keeps the
weight-gradient GEMM in high precision, torchao's ``rowwise_with_gw_hp``).

What is saved for backward is FP8 (plus scales), never the high-precision input: for each GEMM operand
the layout the backward needs is quantized in the forward pass and only that copy is kept:

==========  ===================  ==========================  ======================================
recipe      forward x / W        saved for dgrad (W)          saved for wgrad (x) / dy for wgrad
==========  ===================  ==========================  ======================================
tensorwise  tensor / tensor      the forward W, transposed    the forward x, transposed / same dy
rowwise     per row / per row    W per column (along N)       x per column (along M) / dy per column
blockwise   1×128 / 128×128      the forward W (blocks are    x in 128×1 tiles / dy in 128×1 tiles
                                 square, so Wᵀ is free)       (DeepSeek-V3)
==========  ===================  ==========================  ======================================

Smooth-SwiGLU (Fishman et al. 2024) is the ``smooth`` option: before quantizing, the input is divided
per channel by s_k (its channel amax rounded up to a power of two) and the weight's column k multiplied
by s_k. ``x Wᵀ = (x/s)(W s)ᵀ`` exactly (powers of two), but the FP8 input no longer has a few outlier
channels setting the per-tensor scale for all. Used on ``mlp.w2``, whose input ``silu(w1 x) * w3 x`` is
where SwiGLU amplifies outliers.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import torch
from torch import nn

from methods.fp8.formats import get_format
from methods.fp8.gemm import fp8_mm
from methods.fp8.quantize import Quantized, count_underflow, quantize
from methods.fp8.scaling import (
    COLWISE,
    ROWWISE,
    TENSORWISE,
    BLOCK_128x128,
    Blocks,
    DelayedScaler,
    TILE_1x128,
    TILE_128x1,
    absmax,
    describe_scales,
    pow2_ceil,
)

#: group shapes per granularity and operand role; None: reuse the forward quantization, transposed
GRANULARITIES: dict[str, dict[str, Blocks | None]] = {
    "tensorwise": {
        "x": TENSORWISE,
        "w": TENSORWISE,
        "dy": TENSORWISE,
        "x_wgrad": None,
        "w_dgrad": None,
        "dy_wgrad": None,
    },
    "rowwise": {"x": ROWWISE, "w": ROWWISE, "dy": ROWWISE, "x_wgrad": COLWISE, "w_dgrad": COLWISE, "dy_wgrad": COLWISE},
    "blockwise": {
        "x": TILE_1x128,
        "w": BLOCK_128x128,
        "dy": TILE_1x128,
        "x_wgrad": TILE_128x1,
        "w_dgrad": None,
        "dy_wgrad": TILE_128x1,
    },
}


@dataclass(frozen=True)
class FP8Recipe:
    granularity: str = "tensorwise"  # tensorwise | rowwise | blockwise
    scaling: str = "current"  # current | delayed (tensorwise only)
    # any name methods.fp8.formats.get_format takes: e4m3 / e5m2 (torch float8) or a simulated ExMy
    fwd_format: str = "e4m3"  # input and weight
    grad_format: str = "e5m2"  # grad_output: e5m2 = TE/FP8-LM "hybrid"; e4m3 = DeepSeek-V3
    pow2_scales: bool = False
    margin: int = 0  # delayed: scale = max / amax / 2**margin
    amax_history_len: int = 16  # Nanotron/DeepSpeed's test use 16; TE's default is 1024
    amax_compute_algo: str = "max"  # max | most_recent
    wgrad_fp8: bool = True  # False: the weight-grad GEMM in high precision (saves x in high precision)
    backend: str = "auto"  # auto | torch | dequant | triton | reference (torch, triton: float8 formats only)

    def __post_init__(self):
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {', '.join(GRANULARITIES)}, got {self.granularity!r}")
        if self.scaling not in ("current", "delayed"):
            raise ValueError(f"scaling must be 'current' or 'delayed', got {self.scaling!r}")
        if self.scaling == "delayed" and self.granularity != "tensorwise":
            raise ValueError("delayed scaling is per-tensor: use granularity='tensorwise'")
        fmts = get_format(self.fwd_format), get_format(self.grad_format)
        sim = [f.name for f in fmts if f.simulated]
        if sim and self.backend in ("torch", "triton"):  # no float8 codes for torch._scaled_mm or a kernel
            raise ValueError(
                f"backend {self.backend!r} needs torch float8 formats, but {sim[0]} is simulated; "
                "use backend auto, dequant or reference"
            )

    @property
    def blocks(self) -> dict[str, Blocks | None]:
        return GRANULARITIES[self.granularity]


class _FP8LinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x2: torch.Tensor, weight: torch.Tensor, mod: FP8Linear, out_dtype: torch.dtype):
        y, saved = mod._forward(x2, weight, out_dtype, need_backward=True)
        ctx.mod, ctx.x_dtype, ctx.w_dtype = mod, x2.dtype, weight.dtype
        ctx.save_for_backward(*saved)
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        dx, dw = ctx.mod._backward(dy, ctx.saved_tensors, ctx.x_dtype)
        return dx, (dw.to(ctx.w_dtype) if dw is not None else None), None, None


class FP8Linear(nn.Module):
    """Drop-in for ``nn.Linear`` (same ``weight``/``bias`` parameters, fp32 master) with FP8 GEMMs."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        recipe: FP8Recipe = FP8Recipe(),
        smooth: bool = False,
        device=None,
        dtype=None,
    ):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.recipe, self.smooth = recipe, smooth
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype)) if bias else None
        self.fwd_fmt, self.grad_fmt = get_format(recipe.fwd_format), get_format(recipe.grad_format)
        if recipe.scaling == "delayed":
            kw = dict(
                history_len=recipe.amax_history_len,
                margin=recipe.margin,
                algo=recipe.amax_compute_algo,
                pow2=recipe.pow2_scales,
            )
            self.scalers = nn.ModuleDict(
                {"input": DelayedScaler(self.fwd_fmt, **kw), "grad_output": DelayedScaler(self.grad_fmt, **kw)}
            )
            if not smooth:  # a smoothed weight changes with its input's channel scales: scale it currently
                self.scalers["weight"] = DelayedScaler(self.fwd_fmt, **kw)
        else:
            self.scalers = None
        self._stats: dict[str, tuple] = {}  # role → (amax, scale, n_sat, n_under, numel) of the last quantization
        self._window: dict[str, list] = {}  # role → [saturated, underflowed, numel] since the last telemetry read
        #: fixed per-input-channel factor c (K,) or None: the layer computes (x·c)(W/c)ᵀ = x Wᵀ, so only the
        #: quantized operands see it (outlier injection, ``methods.fp8_own``); set by :meth:`set_channel_scale`
        self.channel_scale: torch.Tensor | None = None

    @classmethod
    def from_linear(cls, lin: nn.Linear, recipe: FP8Recipe, smooth: bool = False) -> FP8Linear:
        new = cls(
            lin.in_features,
            lin.out_features,
            bias=lin.bias is not None,
            recipe=recipe,
            smooth=smooth,
            device=lin.weight.device,
        )
        new.weight = lin.weight  # the same Parameter: identical init, optimizer sees the usual fp32 master
        new.bias = lin.bias
        return new

    def extra_repr(self) -> str:
        r = self.recipe
        return (
            f"in={self.in_features}, out={self.out_features}, {r.granularity}/{r.scaling}, "
            f"fwd={r.fwd_format}, grad={r.grad_format}, wgrad_fp8={r.wgrad_fp8}, smooth={self.smooth}"
        )

    # -- the computation ------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dev = x.device.type
        out_dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype
        x2 = x.reshape(-1, x.shape[-1])
        with torch.autocast(dev, enabled=False):
            if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
                y2 = _FP8LinearFn.apply(x2, self.weight, self, out_dtype)
            else:
                y2, _ = self._forward(x2, self.weight, out_dtype, need_backward=False)
        y = y2.reshape(*x.shape[:-1], self.out_features)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y

    def _scaler(self, role: str) -> DelayedScaler | None:
        if self.scalers is None or role not in self.scalers:
            return None
        return self.scalers[role]

    def _q(self, t: torch.Tensor, role: str, fmt, blocks: Blocks, stat: bool = True) -> Quantized:
        r = self.recipe
        q = quantize(
            t,
            fmt,
            blocks,
            scaler=self._scaler(role),
            record=self.training,
            pow2=r.pow2_scales,
            margin=r.margin,
            backend=r.backend,
        )
        if stat:
            n_under = count_underflow(t, q)
            self._stats[role] = (q.amax, q.scale, q.n_sat, n_under, t.numel())
            w = self._window.setdefault(role, [0, 0, 0])
            if not isinstance(q.n_sat, int) or q.n_sat:
                w[0] = w[0] + q.n_sat  # a device tensor on the GPU: no sync per step
            w[1] = w[1] + n_under
            w[2] += t.numel()
        return q

    def _forward(self, x2: torch.Tensor, w: torch.Tensor, out_dtype: torch.dtype, need_backward: bool):
        r, b = self.recipe, self.recipe.blocks
        w = w.detach()
        s_inv = None  # the per-channel factor x was multiplied by (W divided by), undone in backward
        if self.channel_scale is not None:
            s_inv = self.channel_scale.to(x2.device)
            x2 = x2 * s_inv  # (x2 bf16 or fp32) * fp32 promotes to fp32
            w = w / s_inv
        if self.smooth:
            # per-input-channel power-of-two factors >= the channel amax: x/s and W*s are exact, x Wᵀ is
            # unchanged, and |x/s| <= 1 whatever the channels do, so a per-tensor (delayed) scale fits
            s = pow2_ceil(absmax(x2.detach(), 0).float())
            x2 = x2 / s
            w = w * s
            s_inv = 1.0 / s if s_inv is None else s_inv / s
        xq = self._q(x2.detach(), "input", self.fwd_fmt, b["x"])
        wq = self._q(w, "weight", self.fwd_fmt, b["w"])
        y = fp8_mm(xq, wq.t(), out_dtype, r.backend)
        if not need_backward:
            return y, ()
        # Only what the backward GEMMs read is kept, already in the layout they need.
        if not r.wgrad_fp8:
            x_keep = (x2.detach(),)
        else:
            xw = (
                xq
                if b["x_wgrad"] is None
                else self._q(x2.detach(), "input_wgrad", self.fwd_fmt, b["x_wgrad"], stat=False)
            )
            x_keep = (xw.data, xw.scale_inv)
        ww = wq if b["w_dgrad"] is None else self._q(w, "weight_dgrad", self.fwd_fmt, b["w_dgrad"], stat=False)
        extra = (s_inv,) if s_inv is not None else ()
        return y, (ww.data, ww.scale_inv, *x_keep, *extra)

    def _backward(self, dy: torch.Tensor, saved: tuple, x_dtype: torch.dtype):
        r, b = self.recipe, self.recipe.blocks
        w_data, w_sinv, *rest = saved
        s_inv = rest.pop() if self.smooth or self.channel_scale is not None else None
        dy2 = dy.reshape(-1, self.out_features)
        M, K = dy2.shape[0], self.in_features
        wq = _rebuild(w_data, w_sinv, b["w_dgrad"] or b["w"], self.fwd_fmt)
        dyq = self._q(dy2, "grad_output", self.grad_fmt, b["dy"])
        dx_dtype = torch.float32 if s_inv is not None else x_dtype
        # (M, N) @ (N, K); when wgrad reads the same quantized dy, the CPU path decodes it once
        dx = fp8_mm(dyq, wq, dx_dtype, r.backend, keep_a=r.wgrad_fp8 and b["dy_wgrad"] is None)
        if r.wgrad_fp8:
            x_data, x_sinv = rest
            xq = _rebuild(x_data, x_sinv, b["x_wgrad"] or b["x"], self.fwd_fmt)
            dyw = (
                dyq
                if b["dy_wgrad"] is None
                else self._q(dy2, "grad_output_wgrad", self.grad_fmt, b["dy_wgrad"], stat=False)
            )
            dw = fp8_mm(dyw.t(), xq, torch.float32, r.backend)  # (N, M) @ (M, K)
        else:
            (x_hp,) = rest
            dw = dy2.float().t() @ x_hp.float()
        if s_inv is not None:  # undo the channel factors: x' = x·f gives dx = dx'·f; W' = W/f gives dW = dW'/f
            dx = (dx * s_inv).to(x_dtype)
            dw = dw * (1.0 / s_inv)
        assert dx.shape == (M, K)
        return dx, dw

    def set_channel_scale(self, factor: torch.Tensor | None) -> None:
        """Multiply input channel k by ``factor[k]`` and weight column k by ``1/factor[k]`` before quantizing
        (None: off). The product is unchanged in exact arithmetic, and the fp32 master weight and its
        gradient are the plain layer's (dW = dW'/f), so any change in training is the quantization's."""
        if factor is not None:
            factor = factor.detach().float().reshape(-1)
            if factor.numel() != self.in_features or not bool((factor > 0).all()):
                raise ValueError(
                    f"channel scale must be {self.in_features} positive factors, got {tuple(factor.shape)}"
                )
        self.channel_scale = factor

    # -- telemetry ------------------------------------------------------------------------------
    def telemetry_rows(self, name: str) -> list[dict]:
        """The last quantization of each tensor (amax, scale, saturated and underflowed fractions), plus
        both fractions over every quantization since the previous call (``*_frac_window``), so that
        saturation or flushing between two telemetry steps is not missed. *Underflowed*: nonzero in high
        precision, zero after quantization; like *saturated*, a share of all the tensor's values."""
        rows = []
        for role, (amax, scale, n_sat, n_under, numel) in self._stats.items():
            sat, under = int(n_sat), int(n_under)
            win_sat, win_under, win_n = self._window.get(role, (0, 0, 0))
            row = {
                "layer": name,
                "tensor": role,
                "amax": float(amax.float().max()),
                **describe_scales(scale),
                "saturated_frac": sat / max(1, numel),
                "saturated": sat,
                "saturated_frac_window": int(win_sat) / max(1, win_n),
                "quantized_window": win_n,
                "underflow_frac": under / max(1, numel),
                "underflowed": under,
                "underflow_frac_window": int(win_under) / max(1, win_n),
                "granularity": self.recipe.granularity,
                "scaling": self.recipe.scaling,
                "format": (self.grad_fmt if role == "grad_output" else self.fwd_fmt).name,
            }
            rows.append(row)
        self._window = {}
        return rows


def _rebuild(data: torch.Tensor, scale_inv: torch.Tensor, blocks: Blocks, fmt) -> Quantized:
    """A saved (codes, 1/scale) pair back into a Quantized (only what the GEMMs read is needed)."""
    resolved = Blocks(*blocks.resolve(tuple(data.shape)))
    return Quantized(data, scale_inv.reciprocal(), scale_inv, resolved, fmt, scale_inv.new_zeros(()), 0)


DEFAULT_KEEP = ("lm_head", "tok_emb", "*norm*")


def convert_to_fp8(
    model: nn.Module,
    recipe: FP8Recipe,
    keep_high_precision: tuple[str, ...] = DEFAULT_KEEP,
    smooth: tuple[str, ...] = (),
) -> nn.Module:
    """Swap every ``nn.Linear`` whose name matches none of ``keep_high_precision`` (fnmatch patterns)
    for an :class:`FP8Linear` sharing its parameters. Only linears are candidates: embeddings and
    norms stay as they are. ``smooth`` patterns select layers that get Smooth-SwiGLU scaling."""
    targets = [
        (n, m)
        for n, m in model.named_modules()
        if type(m) is nn.Linear and not any(fnmatch.fnmatchcase(n, p) for p in keep_high_precision)
    ]
    for name, lin in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        sm = any(fnmatch.fnmatchcase(name, p) for p in smooth)
        setattr(parent, attr, FP8Linear.from_linear(lin, recipe, smooth=sm))
    return model


def fp8_telemetry(model: nn.Module) -> list[dict]:
    rows = []
    for name, m in model.named_modules():
        if isinstance(m, FP8Linear):
            rows.extend(m.telemetry_rows(name))
    return rows


def saved_activation_bytes(fn, *params: torch.Tensor) -> dict[str, int]:
    """Bytes autograd keeps for backward while ``fn()`` runs, by dtype, each storage once; tensors that
    share storage with ``params`` (the weights themselves, which exist anyway) are left out."""
    seen = {p.untyped_storage().data_ptr() for p in params}
    out: dict[str, int] = {}

    def pack(t: torch.Tensor):
        st = t.untyped_storage()
        if st.data_ptr() not in seen:
            seen.add(st.data_ptr())
            out[str(t.dtype).replace("torch.", "")] = out.get(str(t.dtype).replace("torch.", ""), 0) + st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    out["total"] = sum(out.values())
    return out
