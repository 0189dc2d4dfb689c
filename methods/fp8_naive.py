"""The negative control ``fp8-naive`` as a recipe: its FP8-stored linears (``methods.fp8.naive``) trained by
Adam straight on the FP8 codes, with no high-precision copy (the Trainee below), and its memory as the
ledger sees what it really stores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from methods.base import HParams, Method, RunContext, StepResult, Trainee
from methods.fp8.device import host_float
from methods.fp8.formats import E4M3
from methods.fp8.gemm import BACKENDS, dequantize_fast
from methods.fp8.linear import DEFAULT_KEEP
from methods.fp8.lost_updates import count_update
from methods.fp8.naive import FP8StoredLinear, convert_to_fp8_stored
from methods.ledger import ledger, tensor_bytes
from methods.options import Choice
from methods.registry import register


def fp8_stored_memory(
    model: nn.Module, optimizer, mods: list[FP8StoredLinear], fp8_state: dict, owners: dict | None = None
) -> dict[str, int]:
    """The ledger, with what fp8-naive really stores put where it belongs: FP8 weight codes are
    parameters (``weights``) and their scales join them; FP8 gradient codes + scales are ``grads``;
    the Adam moments of the FP8 weights are ``optim``."""
    grads = [t for m in mods for t in (m.grad_codes, m.grad_scale_inv) if t is not None]
    out = ledger(model, optimizer, extra={"grads": grads, "optim": fp8_state}, owners=owners)
    moved = sum(tensor_bytes(m.weight_scale_inv, set()) for m in mods)  # counted as meta (a buffer)
    out["meta"] -= moved
    out["weights"] += moved
    return out


class NaiveTrainee(Trainee):
    """Adam over FP8-stored weights and gradients (plus torch AdamW for the high-precision rest)."""

    def __init__(self, method, model, optimizer, hp, ctx):
        super().__init__(method, model, optimizer, hp, ctx)
        self.fp8 = [(n, m) for n, m in model.named_modules() if isinstance(m, FP8StoredLinear)]
        self.fp8_state: dict[str, dict[str, torch.Tensor]] = {}
        # the option ``stochastic_rounding``: the FP8 weight update rounded unbiasedly, from a generator of
        # the run's seed (checkpointed with the optimizer state, so a resumed run draws the same numbers)
        self.sr_generator = (
            torch.Generator(device=ctx.device).manual_seed(ctx.seed)
            if getattr(method, "stochastic_rounding", False)
            else None
        )

    def train_step(self, x: torch.Tensor, y: torch.Tensor, lr: float) -> StepResult:
        self.optimizer.zero_grad(set_to_none=True)
        for _, m in self.fp8:
            m.grad_codes = m.grad_scale_inv = None
        self.set_lr(lr)
        self.model.train()
        loss = self.forward_loss(x, y)
        loss.backward()
        grad_norm = self._clip()
        extra = {}
        if math.isfinite(grad_norm):
            self.optimizer.step()  # the fp32 rest (2^16 times finer than bf16): not probed
            self._fp8_step(lr, probe=self.probe_updates)
            extra = self.lost_updates.finish_step() if self.probe_updates else {}
        return StepResult(host_float(loss.detach()), grad_norm, extra)

    @torch.no_grad()
    def _clip(self) -> float:
        sq = [torch.linalg.vector_norm(p.grad, dtype=torch.float32) ** 2 for p in self.params if p.grad is not None]
        sq += [
            torch.linalg.vector_norm(m.grad().dequantize_fast()) ** 2 for _, m in self.fp8 if m.grad_codes is not None
        ]
        norm = host_float(torch.sqrt(sum(sq)), fake=0.0) if sq else 0.0
        clip = self.hp.grad_clip
        if clip > 0 and math.isfinite(norm) and norm > clip:
            coef = clip / (norm + 1e-6)
            for p in self.params:
                if p.grad is not None:
                    p.grad.mul_(coef)
            for _, m in self.fp8:  # an FP8 gradient is clipped by its scale alone: codes unchanged
                if m.grad_codes is not None:
                    m.grad_scale_inv.mul_(coef)
        return norm

    @torch.no_grad()
    def _fp8_step(self, lr: float, probe: bool = False) -> None:
        """Adam on each FP8-stored linear. ``probe``: count each update into ``self.lost_updates``: predicted
        lost at the old per-tensor scale; measured on the codes, which the new scale moves too."""
        hp = self.hp
        b1, b2 = hp.beta1, hp.beta2
        for name, m in self.fp8:
            if m.grad_codes is None:
                continue
            st = self.fp8_state.get(name)
            if st is None:
                zeros = dict(size=m.weight.shape, device=m.weight.device)
                st = self.fp8_state[name] = {
                    "step": torch.zeros(()),
                    "exp_avg": torch.zeros(**zeros),
                    "exp_avg_sq": torch.zeros(**zeros),
                }
            st["step"] += 1
            t = host_float(st["step"], fake=1.0)
            g = m.grad().dequantize_fast()
            w = dequantize_fast(m.weight_q())  # a temporary: the only stored weight is the FP8 one
            before = m.weight.detach().view(torch.uint8).clone()
            s_before = m.weight_scale_inv.detach().clone() if probe else None
            st["exp_avg"].lerp_(g, 1 - b1)
            st["exp_avg_sq"].mul_(b2).addcmul_(g, g, value=1 - b2)
            w.mul_(1 - lr * hp.weight_decay)
            denom = (st["exp_avg_sq"].sqrt() / math.sqrt(1 - b2**t)).add_(hp.eps)
            w.addcdiv_(st["exp_avg"], denom, value=-lr / (1 - b1**t))
            m.store_weight(w, self.sr_generator)
            # what the control exposes: how many weights kept their FP8 code through the update (they
            # moved at most by the common rescaling of the whole tensor: the update itself was lost)
            m.unchanged = (m.weight.detach().view(torch.uint8) == before).float().mean()
            if probe:  # w: the fp32 weight the update computed, which store_weight rounded
                self.lost_updates.record(
                    name,
                    count_update(before.view(m.weight.dtype), m.weight.detach(), w, s_before, m.weight_scale_inv),
                    "nearest" if self.sr_generator is None else "stochastic",
                    E4M3,
                )

    def memory(self, owners: dict | None = None) -> dict[str, int]:
        return fp8_stored_memory(self.model, self.optimizer, [m for _, m in self.fp8], self.fp8_state, owners)

    def telemetry(self) -> list[dict]:
        """The FP8 rows of each linear; its ``weight_update`` row (``unchanged_frac``: the last step's share
        of unchanged codes, counted every step) gains the probed steps' keys (``lost_pred_frac``,
        ``lost_bias``, the ``*_window`` means) once a step was probed."""
        rows = []
        for name, m in self.fp8:
            for row in m.telemetry_rows(name):
                if row["tensor"] == "weight_update":
                    probed = self.lost_updates.row(name)
                    probed.pop("unchanged_frac", None)  # the every-step count above is at least as recent
                    row.update(probed)
                rows.append(row)
        self.lost_updates.clear_window()
        return rows

    def state_dict(self):
        sd = super().state_dict()
        sd["fp8_optimizer"] = self.fp8_state
        if self.sr_generator is not None:
            sd["fp8_sr_generator"] = self.sr_generator.get_state()
        return sd

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.fp8_state = state.get("fp8_optimizer", {})
        if self.sr_generator is not None and "fp8_sr_generator" in state:
            self.sr_generator.set_state(state["fp8_sr_generator"])


@register("fp8-naive")
@dataclass(frozen=True, kw_only=True)
class FP8Naive(Method):
    """Negative control: no high-precision weight copy, FP8 weights and grads, per-tensor scales."""

    keep_high_precision: tuple[str, ...] = DEFAULT_KEEP
    backend: str = "auto"
    #: the mitigation offered for the stall: round the FP8 weight update stochastically (unbiased), so an
    #: update below half an E4M3 spacing moves the code with a probability in proportion to its size
    stochastic_rounding: bool = False

    option_rules = {"backend": Choice(BACKENDS)}
    family = "fp8-own"
    summary = "negative control: weights stored e4m3 + grads stored e5m2 (per-tensor scale), no hp copy; fp32 Adam"
    stores = {
        "weights": "fp8-e4m3 (+scale)",
        "master": "-",
        "grads": "fp8-e5m2 (+scale)",
        "m": "fp32",
        "v": "fp32",
        "compute": "fp8 linears, bf16 elsewhere",
    }

    def convert_model(self, model: nn.Module, ctx: RunContext) -> nn.Module:
        return convert_to_fp8_stored(model, tuple(self.keep_high_precision), self.backend)

    def autocast(self, ctx: RunContext):
        return torch.autocast(device_type=ctx.device.type, dtype=torch.bfloat16)

    def trainee(self, model: nn.Module, hp: HParams, ctx: RunContext) -> Trainee:
        return NaiveTrainee(self, model, self.build_optimizer(model, hp, ctx), hp, ctx)
