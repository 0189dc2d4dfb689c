"""torchao float8 training, as users run it: ``convert_to_float8_training`` with a named recipe.

The transformer blocks' linears become ``torchao.float8.Float8Linear`` (dynamic scaling: the scales are
computed from the tensor at hand, no state); the output head stays high precision
(``keep_high_precision``). Everything else is the reference's: fp32 weights, grads and Adam states, bf16
autocast for the rest of the model — so the only difference from ``bf16-amp`` is the FP8 GEMMs.

Recipes (``Float8LinearConfig.from_recipe_name``):
- ``tensorwise``: one scale per tensor, E4M3 forward operands, E5M2 gradients;
- ``rowwise``: one scale per row (power-of-2 scales), E4M3 everywhere;
- ``rowwise_with_gw_hp``: rowwise, but the weight-gradient GEMM stays in high precision.

Where the hardware has no FP8 GEMM (a CPU; CUDA below compute capability 8.9, or 9.0 for the rowwise
recipes) torchao's own ``emulate`` mode runs the same quantisation with the product in fp32; it is on
by default there (``emulate: auto``). ``train.compile`` compiles the model (``methods.compiled``; on for the
gpu profile; torchao calls compile "required for competitive performance").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from methods._bf16_backward import bf16_backward_mode
from methods._linears import DEFAULT_KEEP, keeps_high_precision
from methods.base import HParams, Method, Requirement, RunContext, Trainee, needs_module
from methods.options import Choice
from methods.registry import register

#: CUDA compute capability with hardware FP8 GEMMs for each recipe (torch._scaled_mm: tensorwise on
#: Ada/Hopper, row-wise scales on Hopper and later)
HW_CC = {"tensorwise": (8, 9), "rowwise": (9, 0), "rowwise_with_gw_hp": (9, 0)}


def fp8_gemm_in_hardware(device: torch.device, recipe: str) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= HW_CC[recipe]


def _cast_input_under_cpu_autocast(module: nn.Module, args):
    # Float8Linear casts its input to the autocast dtype itself, but only for CUDA autocast; without the
    # same cast under CPU autocast, a bf16 grad_output meets an fp32 saved input in backward.
    x = args[0]
    if x.device.type == "cpu" and torch.is_autocast_enabled("cpu") and x.is_floating_point():
        dt = torch.get_autocast_dtype("cpu")
        if x.dtype != dt:
            return (x.to(dt), *args[1:])
    return None


def convert_torchao_float8(
    model: nn.Module, recipe: str, keep_high_precision, emulate: bool, fsdp_float8_all_gather: bool = False
) -> nn.Module:
    """Swap the selected ``nn.Linear`` for torchao ``Float8Linear`` (in place); returns the model.
    ``fsdp_float8_all_gather`` (tensorwise only) wraps their weights so FSDP2 all-gathers them in FP8."""
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    from torchao.float8.float8_linear import Float8Linear

    config = dataclasses.replace(
        Float8LinearConfig.from_recipe_name(recipe),
        emulate=emulate,
        enable_fsdp_float8_all_gather=fsdp_float8_all_gather,
    )
    convert_to_float8_training(
        model, config=config, module_filter_fn=lambda mod, fqn: not keeps_high_precision(fqn, keep_high_precision)
    )
    for m in model.modules():
        if isinstance(m, Float8Linear):
            m.register_forward_pre_hook(_cast_input_under_cpu_autocast)
    return model


def float8_linear_names(model: nn.Module) -> list[str]:
    from torchao.float8.float8_linear import Float8Linear

    return [n for n, m in model.named_modules() if isinstance(m, Float8Linear)]


class EmulatedBackwardTrainee(Trainee):
    """torchao's backward is a Python autograd function: its high-precision GEMMs (the weight gradient
    of ``rowwise_with_gw_hp``) get the same bf16 emulation as the forward's."""

    def backward(self, loss: torch.Tensor) -> None:
        with bf16_backward_mode(self.ctx.device):
            loss.backward()


@dataclass(frozen=True, kw_only=True)
class _TorchaoFloat8(Method):
    family = "torchao"
    recipe: ClassVar[str] = ""
    #: fnmatch patterns of linears left in high precision (same option as fp8bench's own FP8 methods)
    keep_high_precision: tuple[str, ...] = DEFAULT_KEEP
    #: "auto": emulate the FP8 GEMM where the device has none; true/false force it
    emulate: bool | str = "auto"
    option_rules = {"emulate": Choice(("auto", True, False))}

    def requirements(self) -> list[Requirement]:
        return [needs_module("torchao", "pip install torchao==0.18.0")]

    def emulated(self, device: torch.device) -> bool:
        return (not fp8_gemm_in_hardware(device, self.recipe)) if self.emulate == "auto" else bool(self.emulate)

    def autocast(self, ctx: RunContext):
        return torch.autocast(device_type=ctx.device.type, dtype=torch.bfloat16)

    def convert_model(self, model: nn.Module, ctx: RunContext) -> nn.Module:
        # train.compile compiles the converted model in Method.build (methods.compiled), as for every method
        return convert_torchao_float8(model, self.recipe, tuple(self.keep_high_precision), self.emulated(ctx.device))

    def trainee(self, model: nn.Module, hp: HParams, ctx: RunContext) -> Trainee:
        return EmulatedBackwardTrainee(self, model, self.build_optimizer(model, hp, ctx), hp, ctx)


_STORES = {"weights": "fp32", "master": "-", "grads": "fp32", "m": "fp32", "v": "fp32"}


@register("fp8-torchao-tensorwise")
@dataclass(frozen=True, kw_only=True)
class TorchaoTensorwise(_TorchaoFloat8):
    recipe = "tensorwise"
    summary = "torchao float8 tensorwise: block linears FP8 (E4M3 fwd, E5M2 grads, per-tensor scales); fp32 states"
    stores = {**_STORES, "compute": "fp8 e4m3/e5m2 per-tensor (block linears), bf16 rest"}


@register("fp8-torchao-rowwise")
@dataclass(frozen=True, kw_only=True)
class TorchaoRowwise(_TorchaoFloat8):
    recipe = "rowwise"
    summary = "torchao float8 rowwise: block linears FP8 E4M3 with per-row power-of-2 scales; fp32 states"
    stores = {**_STORES, "compute": "fp8 e4m3 per-row (block linears), bf16 rest"}


@register("fp8-torchao-rowwise-gw-hp")
@dataclass(frozen=True, kw_only=True)
class TorchaoRowwiseGwHp(_TorchaoFloat8):
    recipe = "rowwise_with_gw_hp"
    summary = "torchao float8 rowwise, weight-gradient GEMM in high precision; fp32 states"
    stores = {**_STORES, "compute": "fp8 e4m3 per-row fwd + dgrad, bf16 wgrad (block linears), bf16 rest"}
