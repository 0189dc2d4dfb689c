"""bf16-pure: the article's "mixed precision" at 12 B/param: bf16 weights and grads, fp32 Adam m and v,
no fp32 master copy. Plain bf16 updates lose steps smaller than half a bf16 ulp of the weight;
``stochastic_rounding=True`` rounds the update unbiasedly instead."""

from dataclasses import dataclass

import torch
from torch import nn

from methods.base import HParams, Method, RunContext, param_groups
from methods.fp8.adamw_base import AdamW
from methods.registry import register


@register("bf16-pure")
@dataclass(frozen=True, kw_only=True)
class BF16Pure(Method):
    stochastic_rounding: bool = False
    summary = "bf16 weights and grads, fp32 Adam m and v, no master copy (the article's 12 B/param)"
    stores = {"weights": "bf16", "master": "-", "grads": "bf16", "m": "fp32", "v": "fp32", "compute": "bf16"}

    def convert_model(self, model: nn.Module, ctx: RunContext) -> nn.Module:
        return model.to(torch.bfloat16)

    def build_optimizer(self, model: nn.Module, hp: HParams, ctx: RunContext):
        return AdamW(
            param_groups(model, hp.weight_decay),
            lr=hp.lr,
            betas=(hp.beta1, hp.beta2),
            eps=hp.eps,
            state_dtype=torch.float32,
            stochastic_rounding=self.stochastic_rounding,
            seed=ctx.seed,
        )
