"""The optimizer step fused into backward: each parameter is updated, and its gradient freed, as soon
as its gradient is complete (``register_post_accumulate_grad_hook``), so a full set of gradients never
exists. With bf16 weights and FP8 Adam states that leaves ~4 B/param of persistent state.

What it gives up, by construction:
- global-norm gradient clipping: the norm is only known once backward has finished, and by then every
  parameter has been updated. ``StepResult.grad_norm`` still reports the true global norm (assembled
  from per-parameter norms after the fact), but nothing is clipped with it;
- gradient accumulation over micro-batches: each backward applies its own update;
- skipping a whole step on a non-finite gradient: a non-finite loss skips backward entirely, but a
  non-finite gradient is caught per parameter (that parameter is not updated), not per step.

Works with any optimizer that offers ``step_param(p, group)`` (``methods.fp8.adamw_base.AdamW`` and its FP8
subclass do).
"""

from __future__ import annotations

import math

import torch

from methods.base import StepResult, Trainee
from methods.fp8.device import host_float


class FusedBackwardTrainee(Trainee):
    def __init__(self, method, model, optimizer, hp, ctx):
        super().__init__(method, model, optimizer, hp, ctx)
        if not hasattr(optimizer, "step_param"):
            raise TypeError(f"{type(optimizer).__name__} has no step_param(p, group); cannot step in backward")
        self._group = {p: g for g in optimizer.param_groups for p in g["params"]}
        self._armed = False
        self._sq: list[torch.Tensor] = []
        self._skipped = 0
        self._handles = [p.register_post_accumulate_grad_hook(self._on_grad) for p in self.params]

    @torch.no_grad()
    def _on_grad(self, p: torch.Tensor) -> None:
        if not self._armed:  # a backward outside train_step (a test, a probe) leaves grads alone
            return
        # On the CPU, vector_norm(dtype=fp32) of a bf16 gradient makes an fp32 copy of it first (measured:
        # 4 B/param, the same bits as the explicit cast). Spelled out there, so that a memory trace sees
        # it too: with the fused optimizer step it is the largest temporary of the step in backward.
        # GPU kernels cast inside the reduction; no copy there.
        g = p.grad.float() if p.grad.device.type == "cpu" else p.grad
        sq = torch.linalg.vector_norm(g, dtype=torch.float32).square()
        del g
        self._sq.append(sq)
        if math.isfinite(host_float(sq, fake=0.0)):
            self.optimizer.step_param(p, self._group[p])
        else:
            self._skipped += 1
        p.grad = None

    def train_step(self, x: torch.Tensor, y: torch.Tensor, lr: float) -> StepResult:
        self.set_lr(lr)
        self.model.train()
        loss = self.forward_loss(x, y)
        if not math.isfinite(host_float(loss.detach(), fake=0.0)):
            return StepResult(float(loss.detach()), math.nan)
        self._sq.clear()
        self._armed = True
        probed = self.arm_probe()  # the updates run in backward's hooks: probed there
        try:
            loss.backward()
        finally:
            self._armed = False
            extra = self.disarm_probe(probed)
        grad_norm = math.sqrt(host_float(torch.stack(self._sq).sum(), fake=0.0)) if self._sq else 0.0
        return StepResult(host_float(loss.detach()), grad_norm, extra)

    def telemetry(self) -> list[dict]:
        return optimizer_telemetry(self.model, self.optimizer) + super().telemetry()

    @property
    def skipped_params(self) -> int:
        """Parameter updates skipped so far because their gradient was not finite."""
        return self._skipped


def optimizer_telemetry(model, optimizer) -> list[dict]:
    """One row per parameter from ``optimizer.state_stats(p)`` (FP8 optimizer states), if it has one."""
    stats = getattr(optimizer, "state_stats", None)
    if stats is None:
        return []
    rows = []
    for name, p in model.named_parameters():
        row = stats(p)
        if row:
            rows.append({"layer": name, "tensor": "adam_state", **row})
    return rows


class FP8OptimTrainee(Trainee):
    """The base training step, plus FP8 optimizer-state telemetry (and the base's ``weight_update`` rows)."""

    def telemetry(self) -> list[dict]:
        return optimizer_telemetry(self.model, self.optimizer) + super().telemetry()
