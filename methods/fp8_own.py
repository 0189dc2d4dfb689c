"""fp8bench's own end-to-end FP8 recipes (``methods/fp8/``): every linear of the transformer blocks runs
its three GEMMs in FP8; the rest of the model runs as in ``bf16-amp`` (bf16 autocast, fp32 master
weights, grads and Adam states), so only the linears differ from the reference.

- ``fp8-own-tensorwise``: per-tensor current scaling (TE Float8CurrentScaling, torchao tensorwise);
- ``fp8-own-delayed``: per-tensor delayed scaling from an amax history (TE DelayedScaling, Nanotron);
- ``fp8-own-rowwise``: one scale per row / output channel, power-of-two scales (torchao rowwise);
- ``fp8-own-blockwise``: 1×128 activation/gradient tiles, 128×128 weight blocks, E4M3 in both passes,
  fp32 accumulation per 128-chunk of K (DeepSeek-V3, TE Float8BlockScaling);
- ``fp8-own-delayed-smooth``: delayed scaling plus Smooth-SwiGLU on the down-projection (Fishman et al.);
(The negative control ``fp8-naive``, weights and grads *stored* in FP8, is ``methods.fp8_naive``.)

``fwd_format`` / ``grad_format`` take any format name ``methods.fp8.formats.get_format`` does: torch's
``e4m3`` / ``e5m2``, or a simulated ExMy (``e3m4``, ``e2m3``, ``e8m4``, ...), rounded exactly and scaled
by the same code. :func:`ladder_variants` turns the precision ladder (``formats.LADDER``) into method
variants with one format for every GEMM operand, for a profile's ``variants``.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatch

import torch
from torch import nn

from methods.base import HParams, Method, RunContext, Trainee
from methods.fp8.formats import FORMAT_HELP, LADDER, LADDER_BASE, get_format, is_format_name
from methods.fp8.gemm import BACKENDS
from methods.fp8.linear import DEFAULT_KEEP, GRANULARITIES, FP8Recipe, convert_to_fp8, fp8_telemetry
from methods.fp8.saved import save_inputs_in_fp8
from methods.options import Accepted, Choice, Range
from methods.registry import register
from methods.stress import NORM_GAINS, inject_outliers, norm_gain_telemetry, quantize_norm_gains

#: the modules whose inputs ``fp8_saved_nonlinear`` keeps in FP8: every block's two RMSNorms and its SwiGLU
#: (the final norm feeds the high-precision lm_head and stays as it is, as the head does)
NONLINEAR_SAVED = ("layers.*.attn_norm", "layers.*.mlp_norm", "layers.*.mlp.act")

_STORES = {"weights": "fp32", "master": "-", "grads": "fp32", "m": "fp32", "v": "fp32"}


class FP8Trainee(Trainee):
    """The base training step, plus per-layer FP8 telemetry."""

    def telemetry(self) -> list[dict]:
        """One flat row per FP8 layer and quantized tensor (input, weight, grad_output) of the last step:
        ``{"layer", "tensor", "amax", "scale", "saturated_frac", "saturated_frac_window", ...}``:
        ``saturated_frac`` is the last quantization's, ``saturated_frac_window`` covers every one since
        the previous call. Group granularities add ``scale_max`` (``scale`` is then the smallest group
        scale, the one of the largest amax). With ``norm_gains`` fp8 / fp8-bump, one row per quantized norm
        too (``tensor: gain``, its clipped fraction). Then the base's ``weight_update`` rows of probed steps
        (``fp8-e2e``: its bf16 weights under FP8AdamW)."""
        return fp8_telemetry(self.model) + norm_gain_telemetry(self.model) + super().telemetry()


@dataclass(frozen=True, kw_only=True)
class FP8Own(Method):
    """Options are the recipe's (``methods.fp8.linear.FP8Recipe``) plus which layers to convert."""

    granularity: str = "tensorwise"
    scaling: str = "current"
    fwd_format: str = "e4m3"
    grad_format: str = "e5m2"
    pow2_scales: bool = False
    margin: int = 0
    amax_history_len: int = 16
    amax_compute_algo: str = "max"
    wgrad_fp8: bool = True
    smooth_swiglu: bool = False
    #: fnmatch patterns of modules kept in high precision (only nn.Linear layers are ever converted)
    keep_high_precision: tuple[str, ...] = DEFAULT_KEEP
    #: where Smooth-SwiGLU applies when smooth_swiglu is on: the SwiGLU down-projection
    smooth_modules: tuple[str, ...] = ("*mlp.w2",)
    backend: str = "auto"
    #: COAT's precision flow: the blocks' RMSNorms and SwiGLUs keep their inputs for backward in E4M3 with
    #: one scale per 1 x ``fp8_saved_group`` values (``methods.fp8.saved``), as the FP8 linears keep theirs
    fp8_saved_nonlinear: bool = False
    fp8_saved_group: int = 128
    #: outlier injection (stress test, ``methods.stress``): input channels of block ``outlier_block``'s MLP
    #: input made ``outlier_scale`` times larger before its FP8 linears, their weight columns as much
    #: smaller (the function is unchanged; only the quantization sees the outliers); 1: off
    outlier_scale: float = 1.0
    outlier_block: int = 0
    outlier_channels: int = 4
    #: the blocks' RMSNorm gains in the forward: "hp" (as they are), "fp8" (E4M3, MX shared scale per
    #: ``norm_gain_block`` from floor(log2 amax), which clips: Su et al.), "fp8-bump" (exponent rounded up)
    norm_gains: str = "hp"
    norm_gain_block: int = 32

    family = "fp8-own"

    @property
    def stores(self) -> dict[str, str]:
        """``_STORES`` with this instance's GEMM formats (a ladder variant's, blockwise's e4m3 grads)."""
        fw, gr = get_format(self.fwd_format), get_format(self.grad_format)
        kind = "simulated ExMy" if fw.simulated or gr.simulated else "fp8"
        return {**_STORES, "compute": f"{kind} linears ({fw} fwd / {gr} grad), bf16 elsewhere"}

    def recipe(self) -> FP8Recipe:
        return FP8Recipe(
            granularity=self.granularity,
            scaling=self.scaling,
            fwd_format=self.fwd_format,
            grad_format=self.grad_format,
            pow2_scales=self.pow2_scales,
            margin=self.margin,
            amax_history_len=self.amax_history_len,
            amax_compute_algo=self.amax_compute_algo,
            wgrad_fp8=self.wgrad_fp8,
            backend=self.backend,
        )

    option_rules = {
        "granularity": Choice(tuple(GRANULARITIES)),
        "scaling": Choice(("current", "delayed")),
        "fwd_format": Accepted(is_format_name, FORMAT_HELP),
        "grad_format": Accepted(is_format_name, FORMAT_HELP),
        "margin": Range(0),
        "amax_history_len": Range(1),
        "amax_compute_algo": Choice(("max", "most_recent")),
        "backend": Choice(BACKENDS),
        "fp8_saved_group": Range(1),
        "outlier_scale": Range(1.0),
        "outlier_block": Range(0),
        "outlier_channels": Range(1, 128),
        "norm_gains": Choice(NORM_GAINS),
        "norm_gain_block": Range(1),
    }

    def validate(self) -> None:
        super().validate()
        try:  # cross-option rules (delayed scaling is per-tensor) fail here too, before any work
            self.recipe()
        except ValueError as e:
            raise ValueError(f"method {self.name}: {e}") from None

    def convert_model(self, model: nn.Module, ctx: RunContext) -> nn.Module:
        model = convert_to_fp8(
            model,
            self.recipe(),
            tuple(self.keep_high_precision),
            smooth=tuple(self.smooth_modules) if self.smooth_swiglu else (),
        )
        if self.fp8_saved_nonlinear:
            for name, mod in model.named_modules():
                if any(fnmatch(name, pat) for pat in NONLINEAR_SAVED):
                    save_inputs_in_fp8(mod, self.fp8_saved_group)
        if self.outlier_scale != 1.0:
            inject_outliers(model, self.outlier_block, self.outlier_channels, self.outlier_scale)
        quantize_norm_gains(model, self.norm_gains, self.norm_gain_block)
        return model

    def autocast(self, ctx: RunContext):
        return torch.autocast(device_type=ctx.device.type, dtype=torch.bfloat16)

    def trainee(self, model: nn.Module, hp: HParams, ctx: RunContext) -> Trainee:
        return FP8Trainee(self, model, self.build_optimizer(model, hp, ctx), hp, ctx)


def ladder_variants(method: str = "fp8-own-tensorwise", **options) -> dict[str, dict]:
    """The precision ladder as profile variants: ``{"<method>-<fmt>": {method, options, note}}``, each
    step's format on x, W and dy alike (so a step's loss gap is that format's, not a hybrid's), plus
    ``exponent_bits_removed`` / ``mantissa_bits_removed`` against bf16 for the gap-versus-bits plot.
    ``options`` are added to every step (e.g. a granularity)."""
    out = {}
    for fmt, de, dm in LADDER:
        out[f"{method}-{fmt}"] = {
            "method": method,
            "options": {**options, "fwd_format": fmt, "grad_format": fmt},
            "exponent_bits_removed": de,
            "mantissa_bits_removed": dm,
            "note": f"every GEMM operand in {fmt} ({de} exponent, {dm} mantissa bits fewer than {LADDER_BASE})",
        }
    return out


@register("fp8-own-tensorwise")
@dataclass(frozen=True, kw_only=True)
class FP8OwnTensorwise(FP8Own):
    summary = "own FP8 linears, per-tensor current scaling, e4m3 fwd / e5m2 grad; fp32 master, bf16 elsewhere"


@register("fp8-own-delayed")
@dataclass(frozen=True, kw_only=True)
class FP8OwnDelayed(FP8Own):
    scaling: str = "delayed"
    summary = "own FP8 linears, per-tensor delayed scaling (amax history 16), e4m3 / e5m2; fp32 master"


@register("fp8-own-rowwise")
@dataclass(frozen=True, kw_only=True)
class FP8OwnRowwise(FP8Own):
    granularity: str = "rowwise"
    pow2_scales: bool = True
    summary = "own FP8 linears, row-wise power-of-two scales (torchao rowwise), e4m3 / e5m2; fp32 master"


@register("fp8-own-blockwise")
@dataclass(frozen=True, kw_only=True)
class FP8OwnBlockwise(FP8Own):
    granularity: str = "blockwise"
    grad_format: str = "e4m3"
    summary = "own FP8 linears, 1x128 act/grad tiles + 128x128 weight blocks, e4m3 (DeepSeek-V3); fp32 master"


@register("fp8-own-delayed-smooth")
@dataclass(frozen=True, kw_only=True)
class FP8OwnDelayedSmooth(FP8Own):
    scaling: str = "delayed"
    smooth_swiglu: bool = True
    summary = "fp8-own-delayed + Smooth-SwiGLU (per-channel scaling before the FP8 down-projection)"
