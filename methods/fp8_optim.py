"""FP8 optimizer states: the article's 6 B/param recipe, its variants, and two torchao anchors.

- ``fp8-optim``: bf16 weights and grads, Adam m and v in block-scaled FP8 (own ``FP8AdamW``),
  stochastic rounding of the bf16 update, no master copy: 2 + 2 + 2.03 B/param.
- ``fp8-optim-master``: the same plus an fp32 master copy (what mixed precision usually keeps): ~10.
- ``fp8-lean``: bf16 weights, FP8 m and v, the step fused into backward so no full set of gradients
  ever exists (~4 B/param); gives up global-norm clipping and gradient accumulation
  (``methods._fused_backward``).
- ``fp8-optim-torchao`` / ``int8-optim-torchao``: torchao's ``AdamWFp8`` (E4M3, block 256) and
  ``AdamW8bit`` (dynamic-tree int8, block 256) on bf16 weights with their own stochastic rounding.

The FP8-state options (formats, transforms, block size, kernel) are fields of the methods, so
ablations run as ``get_method("fp8-optim", v_format="e5m2", v_transform="none")``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from methods.base import HParams, Method, RunContext, Trainee, needs_module, param_groups
from methods.fp8 import optim_codec
from methods.fp8.adamw import IMPLS
from methods.fp8_own import FP8Own
from methods.options import Choice, Range
from methods.registry import register


@register("fp8-optim")
@dataclass(frozen=True, kw_only=True)
class FP8Optim(Method):
    block_size: int = 256
    m_format: str = "e4m3"
    v_format: str = "e4m3"
    m_transform: str = "none"
    v_transform: str = "dre"  # chosen by experiment: benchmarks/OPTIM_ABLATION.md
    master_weights: bool = False
    stochastic_rounding: bool = True
    impl: str = "auto"  # methods.fp8.adamw.IMPLS; "auto": Triton on CUDA, the native kernel on CPU (else compiled)

    # the same sets FP8AdamW accepts (methods.fp8.adamw), refused here before any work
    option_rules = {
        "block_size": Range(1),
        "m_format": Choice(tuple(optim_codec.FORMATS)),
        "v_format": Choice(tuple(optim_codec.FORMATS)),
        "m_transform": Choice(("none", "dre")),
        "v_transform": Choice(optim_codec.TRANSFORMS),
        "impl": Choice(IMPLS),
    }
    family = "fp8-optim"
    summary = "bf16 weights and grads, FP8 Adam m and v with per-block scales, no master (the article's 6 B/param)"
    stores = {
        "weights": "bf16",
        "master": "-",
        "grads": "bf16",
        "m": "fp8-e4m3 (+scale/256)",
        "v": "fp8-e4m3 (DRE, +scale, k /256)",
        "compute": "bf16",
    }

    def convert_model(self, model: nn.Module, ctx: RunContext) -> nn.Module:
        return model.to(torch.bfloat16)

    def build_optimizer(self, model: nn.Module, hp: HParams, ctx: RunContext):
        from methods.fp8.adamw import FP8AdamW

        return FP8AdamW(
            param_groups(model, hp.weight_decay),
            lr=hp.lr,
            betas=(hp.beta1, hp.beta2),
            eps=hp.eps,
            block_size=self.block_size,
            m_format=self.m_format,
            v_format=self.v_format,
            m_transform=self.m_transform,
            v_transform=self.v_transform,
            master_weights=self.master_weights,
            stochastic_rounding=self.stochastic_rounding,
            seed=ctx.seed,
            impl=self.impl,
        )

    def trainee(self, model: nn.Module, hp: HParams, ctx: RunContext) -> Trainee:
        from methods._fused_backward import FP8OptimTrainee

        return FP8OptimTrainee(self, model, self.build_optimizer(model, hp, ctx), hp, ctx)

    def optim_state_bytes(self, numels) -> float:
        """FP8 m and v (codes, scales, DRE exponents) and the step counter, for these tensors."""
        from methods.analytic import STEP_BYTES

        per_block = optim_codec.state_bytes_per_block(
            self.block_size, self.m_transform
        ) + optim_codec.state_bytes_per_block(self.block_size, self.v_transform)
        return sum(optim_codec.n_blocks(n, self.block_size) * per_block + STEP_BYTES for n in numels)

    def analytic_bytes(self, cfg) -> dict[str, float]:
        from methods.analytic import COMPONENTS, converted_buffer_bytes, param_numels

        numels = param_numels(cfg)
        n = sum(numels)
        out = dict.fromkeys(COMPONENTS, 0.0)
        out["weights"] = 2.0 * n
        out["master"] = 4.0 * n if self.master_weights else 0.0
        out["grads"] = 2.0 * n
        out["optim"] = float(self.optim_state_bytes(numels))
        out["meta"] = converted_buffer_bytes(self, cfg)
        return out


@register("fp8-optim-master")
@dataclass(frozen=True, kw_only=True)
class FP8OptimMaster(FP8Optim):
    master_weights: bool = True
    stochastic_rounding: bool = False  # the master copy keeps the small updates; bf16 is a cast of it

    summary = "bf16 weights and grads, fp32 master copy, FP8 Adam m and v with per-block scales"
    stores = {
        "weights": "bf16",
        "master": "fp32",
        "grads": "bf16",
        "m": "fp8-e4m3 (+scale/256)",
        "v": "fp8-e4m3 (DRE, +scale, k /256)",
        "compute": "bf16",
    }


@register("fp8-lean")
@dataclass(frozen=True, kw_only=True)
class FP8Lean(FP8Optim):
    summary = (
        "bf16 weights, FP8 Adam m and v, step fused into backward: no gradients held "
        "(no global clipping, no accumulation)"
    )
    stores = {
        "weights": "bf16",
        "master": "-",
        "grads": "- (bf16, one tensor at a time)",
        "m": "fp8-e4m3 (+scale/256)",
        "v": "fp8-e4m3 (DRE, +scale, k /256)",
        "compute": "bf16",
    }

    def trainee(self, model: nn.Module, hp: HParams, ctx: RunContext) -> Trainee:
        from methods._fused_backward import FusedBackwardTrainee

        return FusedBackwardTrainee(self, model, self.build_optimizer(model, hp, ctx), hp, ctx)

    def analytic_bytes(self, cfg) -> dict[str, float]:
        out = super().analytic_bytes(cfg)
        out["grads"] = 0.0  # each gradient is freed by its hook right after its update
        return out


# ---- torchao anchors -----------------------------------------------------------------------------
class TensorLrTrainee(Trainee):
    """torchao's low-bit AdamW keeps ``lr`` as a tensor (so torch.compile does not recompile when it
    changes) and refuses a float: fill it in place."""

    def set_lr(self, lr: float) -> None:
        for g in self.optimizer.param_groups:
            if isinstance(g["lr"], torch.Tensor):
                g["lr"].fill_(lr)
            else:
                g["lr"] = torch.tensor(lr, dtype=torch.float32)


@dataclass(frozen=True, kw_only=True)
class _TorchaoLowBit(Method):
    block_size: int = 256
    option_rules = {"block_size": Range(1)}
    family = "torchao"
    #: torchao quantizes a state only if it has at least this many values and a whole number of blocks;
    #: smaller states stay in the parameter dtype (torchao.optim.adam._AdamBase._new_buffer)
    MIN_QUANT_NUMEL = 4096
    #: per quantized state: bytes per value, and bytes of the per-state lookup table (8-bit only)
    CODE_BYTES = 1
    TABLE_BYTES = 0

    def requirements(self):
        return [needs_module("torchao", "pip install torchao==0.18.0")]

    def convert_model(self, model: nn.Module, ctx: RunContext) -> nn.Module:
        return model.to(torch.bfloat16)

    def _optimizer_class(self):
        raise NotImplementedError

    def build_optimizer(self, model: nn.Module, hp: HParams, ctx: RunContext):
        return self._optimizer_class()(
            param_groups(model, hp.weight_decay),
            lr=hp.lr,
            betas=(hp.beta1, hp.beta2),
            eps=hp.eps,
            block_size=self.block_size,
            bf16_stochastic_round=True,
        )

    def trainee(self, model: nn.Module, hp: HParams, ctx: RunContext) -> Trainee:
        return TensorLrTrainee(self, model, self.build_optimizer(model, hp, ctx), hp, ctx)

    def analytic_bytes(self, cfg) -> dict[str, float]:
        from methods.analytic import STEP_BYTES, param_numels

        numels = param_numels(cfg)
        n = sum(numels)
        optim = 0.0
        for k in numels:
            if k >= self.MIN_QUANT_NUMEL and k % self.block_size == 0:
                optim += 2 * (k * self.CODE_BYTES + 4 * (k // self.block_size) + self.TABLE_BYTES)
            else:
                optim += 2 * 2 * k  # m and v in bf16, the parameter dtype
            optim += STEP_BYTES
        return {"weights": 2.0 * n, "master": 0.0, "grads": 2.0 * n, "optim": optim, "meta": 0.0}


@register("fp8-optim-torchao")
@dataclass(frozen=True, kw_only=True)
class TorchaoAdamWFp8(_TorchaoLowBit):
    summary = "torchao AdamWFp8: bf16 weights and grads, E4M3 m and v (block 256), bf16 stochastic rounding"
    stores = {
        "weights": "bf16",
        "master": "-",
        "grads": "bf16",
        "m": "fp8-e4m3 (+scale/256)",
        "v": "fp8-e4m3 (+scale/256)",
        "compute": "bf16",
    }

    def _optimizer_class(self):
        from torchao.optim import AdamWFp8

        return AdamWFp8


@register("int8-optim-torchao")
@dataclass(frozen=True, kw_only=True)
class TorchaoAdamW8bit(_TorchaoLowBit):
    TABLE_BYTES = 256 * 4  # each quantized state carries its own 256-entry fp32 code table
    summary = "torchao AdamW8bit: bf16 weights and grads, dynamic-tree int8 m and v (block 256), bf16 SR"
    stores = {
        "weights": "bf16",
        "master": "-",
        "grads": "bf16",
        "m": "int8 (+scale/256)",
        "v": "int8 (+scale/256)",
        "compute": "bf16",
    }

    def _optimizer_class(self):
        from torchao.optim import AdamW8bit

        return AdamW8bit


# ---- the article's end-to-end FP8 recipe --------------------------------------------------------------
@register("fp8-e2e")
@dataclass(frozen=True, kw_only=True)
class FP8EndToEnd(FP8Optim, FP8Own):
    """Own FP8 linears (``fp8-own``'s recipe options: granularity, scaling, formats, ...) on a bf16 model,
    plus the FP8-state AdamW of ``fp8-optim`` (its options too). Norms, embedding and head stay bf16."""

    family = "fp8-optim"
    summary = (
        "the article's end-to-end FP8: own FP8 linears (tensorwise e4m3/e5m2) + FP8 Adam m, v; "
        "bf16 weights and grads, no master"
    )
    stores = {
        "weights": "bf16",
        "master": "-",
        "grads": "bf16",
        "m": "fp8-e4m3 (+scale/256)",
        "v": "fp8-e4m3 (DRE, +scale, k /256)",
        "compute": "fp8 linears (e4m3 fwd / e5m2 grad), bf16 elsewhere",
    }

    def convert_model(self, model: nn.Module, ctx: RunContext) -> nn.Module:
        return FP8Own.convert_model(self, model.to(torch.bfloat16), ctx)

    def autocast(self, ctx: RunContext):
        return FP8Own.autocast(self, ctx)

    def trainee(self, model: nn.Module, hp: HParams, ctx: RunContext) -> Trainee:
        from methods._fused_backward import optimizer_telemetry
        from methods.fp8_own import FP8Trainee

        class _Trainee(FP8Trainee):  # FP8 linear telemetry, then the optimizer states'
            def telemetry(self) -> list[dict]:
                return super().telemetry() + optimizer_telemetry(self.model, self.optimizer)

        return _Trainee(self, model, self.build_optimizer(model, hp, ctx), hp, ctx)
