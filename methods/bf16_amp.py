"""bf16-amp: autocast mixed precision as usually run. fp32 weights, grads and Adam states (16 B/param);
the matmuls run in bf16. It is the reference every other method's loss and speed is compared to."""

from dataclasses import dataclass

import torch

from methods.base import Method, RunContext
from methods.registry import register


@register("bf16-amp")
@dataclass(frozen=True, kw_only=True)
class BF16Amp(Method):
    summary = "fp32 weights/grads/Adam; bf16 autocast compute (the reference)"
    stores = {"weights": "fp32", "master": "-", "grads": "fp32", "m": "fp32", "v": "fp32", "compute": "bf16"}

    def autocast(self, ctx: RunContext):
        return torch.autocast(device_type=ctx.device.type, dtype=torch.bfloat16)
