"""NVIDIA TransformerEngine FP8, as users run it: ``te.Linear`` under TE's FP8 autocast.

The transformer blocks' linears become ``transformer_engine.pytorch.Linear`` carrying the *same* initial
weights (copied from the seeded model; the output head stays high precision, ``keep_high_precision``),
and every forward runs under TE's autocast with the recipe, inside bf16 torch autocast as NeMo/Megatron
run it. Weights, grads and Adam states stay fp32, so the only difference from ``bf16-amp`` is TE's FP8
GEMMs and their scaling state (``meta`` in the ledger: amax histories, scales, cached FP8 weights).

Recipes (``transformer_engine.common.recipe``, TE 2.x):
- ``fp8-te-delayed``: ``DelayedScaling`` — scales from an amax history (``amax_history_len``, TE default
  1024) of past steps, HYBRID format (E4M3 forward, E5M2 gradients);
- ``fp8-te-current``: ``Float8CurrentScaling`` — per-tensor scales from the tensor at hand, HYBRID;
- ``fp8-te-block``: ``Float8BlockScaling`` — 1x128 activation/gradient tiles, 128x128 weight blocks, E4M3.

TE has no CPU path: it needs CUDA with compute capability >= 8.9 (block scaling: >= 9.0 and CUDA >= 12.9).
Where that or TE itself is missing the run is recorded as ``skipped`` with the reason. GPU install: see
docs/gpu.md.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

import torch
from torch import nn

from methods._linears import DEFAULT_KEEP, linears_to_convert, replace_module
from methods.base import HParams, Method, Requirement, RunContext, Trainee, needs_cuda, needs_module
from methods.ledger import ledger
from methods.options import Choice, Range
from methods.registry import register

TE_VERSION = "2.20.2"
INSTALL_HINT = (
    f"on a CUDA machine: pip install --no-build-isolation 'transformer_engine[pytorch]=={TE_VERSION}'; see docs/gpu.md"
)


def te_importable() -> Requirement:
    """``transformer_engine.pytorch`` imports (the package can be present while its CUDA extension is not)."""
    req = needs_module("transformer_engine", INSTALL_HINT)
    if not req.met:
        # A machine that knows why TE cannot be installed there (FP8BENCH_TE_MISSING_REASON, e.g. set by
        # pipelines/gpu/h200.sh on a machine without a TE build) says so instead of the generic install hint.
        why = os.environ.get("FP8BENCH_TE_MISSING_REASON")
        return Requirement(req.what, False, why) if why else req
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any import failure is the reason to report
        return Requirement(
            "transformer_engine.pytorch importable",
            False,
            f"transformer_engine.pytorch does not import ({type(e).__name__}: {e})",
        )
    return Requirement("transformer_engine.pytorch importable", True)


def te_recipe_supported(kind: str) -> Requirement:
    """TE's own check of this GPU and CUDA for the recipe (cuBLASLt and CUDA versions included)."""
    import transformer_engine.pytorch as te

    check = te.is_fp8_block_scaling_available if kind == "block" else te.is_fp8_available
    ok, reason = check(return_reason=True)
    return Requirement(f"TransformerEngine {kind} FP8 support", bool(ok), "" if ok else f"TransformerEngine: {reason}")


def make_recipe(kind: str, amax_history_len: int = 1024, fp8_format: str = "HYBRID"):
    from transformer_engine.common import recipe as te_recipe

    fmt = getattr(te_recipe.Format, fp8_format)
    if kind == "delayed":
        return te_recipe.DelayedScaling(fp8_format=fmt, amax_history_len=amax_history_len, amax_compute_algo="max")
    if kind == "current":
        return te_recipe.Float8CurrentScaling(fp8_format=fmt)
    if kind == "block":
        return te_recipe.Float8BlockScaling(fp8_format=fmt)
    raise ValueError(f"unknown TransformerEngine recipe {kind!r}; valid: delayed, current, block")


def te_autocast(recipe):
    """TE's FP8 autocast: ``te.autocast(recipe=...)`` in TE >= 2.8, ``te.fp8_autocast(fp8_recipe=...)`` before."""
    import transformer_engine.pytorch as te

    if hasattr(te, "autocast"):
        return te.autocast(enabled=True, recipe=recipe)
    return te.fp8_autocast(enabled=True, fp8_recipe=recipe)


def convert_to_te(model: nn.Module, keep_high_precision) -> nn.Module:
    """Replace the selected ``nn.Linear`` with ``te.Linear`` holding a copy of the same weights (in place)."""
    import transformer_engine.pytorch as te

    for name in linears_to_convert(model, keep_high_precision):
        lin = model.get_submodule(name)
        new = te.Linear(
            lin.in_features,
            lin.out_features,
            bias=lin.bias is not None,
            params_dtype=lin.weight.dtype,
            device=lin.weight.device,
        )
        with torch.no_grad():  # TE initialised its own weights: overwrite them with the seeded ones
            new.weight.copy_(lin.weight)
            if lin.bias is not None:
                new.bias.copy_(lin.bias)
        replace_module(model, name, new)
    return model


def te_state_tensors(model: nn.Module) -> list:
    """TE's per-module FP8 state outside parameters and buffers: ``fp8_meta`` (recipe states with amax
    histories and scales) and cached FP8 weight copies (``_fp8_workspaces``)."""
    out = []
    for m in model.modules():
        for attr in ("fp8_meta", "_fp8_workspaces"):
            v = getattr(m, attr, None)
            if isinstance(v, dict):
                out.append(v)
    return out


class TETrainee(Trainee):
    def memory(self, owners: dict | None = None) -> dict[str, int]:
        return ledger(self.model, self.optimizer, extra={"meta": te_state_tensors(self.model)}, owners=owners)


@dataclass(frozen=True, kw_only=True)
class _TransformerEngine(Method):
    family = "te"
    kind: ClassVar[str] = ""
    min_cc: ClassVar[tuple[int, int]] = (8, 9)
    keep_high_precision: tuple[str, ...] = DEFAULT_KEEP
    fp8_format: str = "HYBRID"
    option_rules = {"fp8_format": Choice(("HYBRID", "E4M3", "E5M2"))}  # transformer_engine's recipe.Format

    def requirements(self) -> list[Requirement]:
        reqs = [
            te_importable(),
            needs_cuda(
                self.min_cc,
                what=f"TransformerEngine FP8 ({self.kind} scaling) needs "
                f"compute capability >= {self.min_cc[0]}.{self.min_cc[1]}",
            ),
        ]
        if all(r.met for r in reqs):
            reqs.append(te_recipe_supported(self.kind))
        return reqs

    def recipe_kwargs(self) -> dict:
        return {"fp8_format": self.fp8_format}

    @cached_property
    def recipe(self):  # one recipe object per run: TE keys its global FP8 state on it
        return make_recipe(self.kind, **self.recipe_kwargs())

    def convert_model(self, model: nn.Module, ctx: RunContext) -> nn.Module:
        return convert_to_te(model, tuple(self.keep_high_precision))

    @contextlib.contextmanager
    def autocast(self, ctx: RunContext):
        with torch.autocast(device_type=ctx.device.type, dtype=torch.bfloat16), te_autocast(self.recipe):
            yield

    def trainee(self, model: nn.Module, hp: HParams, ctx: RunContext) -> Trainee:
        return TETrainee(self, model, self.build_optimizer(model, hp, ctx), hp, ctx)


_STORES = {"weights": "fp32", "master": "-", "grads": "fp32", "m": "fp32", "v": "fp32"}


@register("fp8-te-delayed")
@dataclass(frozen=True, kw_only=True)
class TEDelayed(_TransformerEngine):
    kind = "delayed"
    summary = "TransformerEngine te.Linear, DelayedScaling (amax history), HYBRID E4M3/E5M2; fp32 states"
    stores = {**_STORES, "compute": "fp8 e4m3 fwd / e5m2 bwd, delayed per-tensor scales (block linears), bf16 rest"}
    amax_history_len: int = 1024
    option_rules = {"amax_history_len": Range(1)}

    def recipe_kwargs(self) -> dict:
        return {"fp8_format": self.fp8_format, "amax_history_len": self.amax_history_len}


@register("fp8-te-current")
@dataclass(frozen=True, kw_only=True)
class TECurrent(_TransformerEngine):
    kind = "current"
    summary = "TransformerEngine te.Linear, Float8CurrentScaling (per-tensor, current amax), HYBRID; fp32 states"
    stores = {**_STORES, "compute": "fp8 e4m3 fwd / e5m2 bwd, current per-tensor scales (block linears), bf16 rest"}


@register("fp8-te-block")
@dataclass(frozen=True, kw_only=True)
class TEBlock(_TransformerEngine):
    kind = "block"
    min_cc = (9, 0)
    summary = "TransformerEngine te.Linear, Float8BlockScaling (1x128 / 128x128 blocks), E4M3; fp32 states"
    stores = {**_STORES, "compute": "fp8 e4m3, 1x128 activation and 128x128 weight blocks (block linears), bf16 rest"}
    fp8_format: str = "E4M3"
