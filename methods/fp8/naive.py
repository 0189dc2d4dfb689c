"""The FP8-stored linear of the negative control ``fp8-naive`` (the recipe and its Adam step over the codes:
``methods.fp8_naive``): weights and gradients *stored* in FP8, one per-tensor scale each,
and no high-precision copy anywhere — the configuration the article calls unstable. It is built to be
measured, not tuned.

Per converted linear:

- weight: E4M3 codes (an ``nn.Parameter`` of dtype float8_e4m3fn that autograd does not track) and one
  fp32 scale. The forward GEMM uses the stored codes directly; nothing is re-quantized.
- gradient: the weight-gradient GEMM's fp32 result is quantized to E5M2 (per-tensor current scale) and
  only those codes + scale are kept until the optimizer step (accumulation, if any, re-quantizes).
- update: Adam with fp32 m and v (as ``bf16-amp``: only weight and gradient storage differ). The step
  decodes weight and gradient, does the fp32 arithmetic in a temporary, and re-quantizes the new weight
  to E4M3 with a fresh per-tensor scale. An update smaller than half an E4M3 ulp of its weight (1/16 to
  1/8 of the weight's magnitude) is lost: that, not overflow, is what the control exposes. Telemetry
  reports it per layer as ``tensor="weight_update"``, ``unchanged_frac``: the fraction of weights whose
  FP8 code the last step did not change; on steps the loop probes (``Trainee.probe_updates``), the same
  row adds the share predicted lost from the E4M3 spacing and the lost-update bias
  (``methods.fp8.lost_updates``).

Embeddings, norms and the head stay fp32 (same filter as the other FP8 methods) with ``torch.optim.AdamW``.
"""

from __future__ import annotations

import fnmatch

import torch
from torch import nn

from methods.fp8.formats import E4M3, E5M2, FP8Format
from methods.fp8.gemm import dequantize_fast, fp8_mm
from methods.fp8.quantize import Quantized, quantize
from methods.fp8.rounding import stochastic_round_to_format
from methods.fp8.scaling import TENSORWISE, Blocks, absmax, describe_scales, scale_from_amax


def _tensorwise(codes: torch.Tensor, scale_inv: torch.Tensor, fmt: FP8Format) -> Quantized:
    s = scale_inv.reshape(1, 1)
    blocks = Blocks(*TENSORWISE.resolve(tuple(codes.shape)))
    return Quantized(codes, s.reciprocal(), s, blocks, fmt, s.new_zeros(1, 1), 0)


class _NaiveFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x2: torch.Tensor, mod: FP8StoredLinear, out_dtype: torch.dtype):
        xq = mod._quant(x2.detach(), "input", E4M3)
        y = fp8_mm(xq, mod.weight_q().t(), out_dtype, mod.backend)
        ctx.mod, ctx.x_dtype = mod, x2.dtype
        ctx.save_for_backward(xq.data, xq.scale_inv)
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        mod = ctx.mod
        x_data, x_sinv = ctx.saved_tensors
        xq = _tensorwise(x_data, x_sinv, E4M3)
        dyq = mod._quant(dy, "grad_output", E5M2)
        dx = fp8_mm(dyq, mod.weight_q(), ctx.x_dtype, mod.backend, keep_a=True)  # dy decoded once
        dw = fp8_mm(dyq.t(), xq, torch.float32, mod.backend)
        mod.store_grad(dw)
        return dx, None, None


def _stochastic(w: torch.Tensor, generator: torch.Generator) -> Quantized:
    """Per-tensor E4M3 as :func:`~methods.fp8.quantize.quantize` computes it, stochastically rounded."""
    w = w.float()
    amax = absmax(w).reshape(1, 1)
    scale = scale_from_amax(amax, E4M3)
    codes = stochastic_round_to_format(w * scale, E4M3, generator).to(E4M3.dtype)  # exact: on the grid
    blocks = Blocks(*TENSORWISE.resolve(tuple(w.shape)))
    return Quantized(codes, scale, torch.ones_like(scale) / scale, blocks, E4M3, amax, 0)


class FP8StoredLinear(nn.Module):
    def __init__(self, lin: nn.Linear, backend: str = "auto"):
        super().__init__()
        if lin.bias is not None:
            raise ValueError("fp8-naive converts bias-free linears only")
        self.in_features, self.out_features, self.backend = lin.in_features, lin.out_features, backend
        q = quantize(lin.weight.detach().float(), E4M3, TENSORWISE, backend=backend)
        # Codes as a Parameter (the ledger counts parameters as weights); autograd cannot track FP8.
        self.weight = nn.Parameter(q.data, requires_grad=False)
        self.register_buffer("weight_scale_inv", q.scale_inv.reshape(()).clone())
        # Gradient storage; not checkpointed (grads never are), counted as grads by fp8_stored_memory.
        self.register_buffer("grad_codes", None, persistent=False)
        self.register_buffer("grad_scale_inv", None, persistent=False)
        self._stats: dict[str, tuple] = {}
        self._window: dict[str, list] = {}
        self.unchanged: torch.Tensor | None = None  # fraction of weights the last update did not move

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, weight=e4m3 stored, grad=e5m2 stored"

    def weight_q(self) -> Quantized:
        return _tensorwise(self.weight, self.weight_scale_inv, E4M3)

    def _quant(self, t: torch.Tensor, role: str, fmt: FP8Format) -> Quantized:
        q = quantize(t.reshape(-1, t.shape[-1]), fmt, TENSORWISE, backend=self.backend)
        self._note(role, q, t.numel())
        return q

    def _note(self, role: str, q: Quantized, numel: int) -> None:
        self._stats[role] = (q.amax, q.scale, q.n_sat, numel)
        w = self._window.setdefault(role, [0, 0])
        w[0] = w[0] + q.n_sat
        w[1] += numel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dev = x.device.type
        out_dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype
        x2 = x.reshape(-1, x.shape[-1])
        with torch.autocast(dev, enabled=False):
            if torch.is_grad_enabled() and self.training:
                if not x2.requires_grad:  # the weight gradient is produced in backward: make one run
                    x2 = x2.detach().requires_grad_(True)
                y2 = _NaiveFn.apply(x2, self, out_dtype)
            else:
                y2 = fp8_mm(self._quant(x2, "input", E4M3), self.weight_q().t(), out_dtype, self.backend)
        return y2.reshape(*x.shape[:-1], self.out_features)

    @torch.no_grad()
    def store_grad(self, dw: torch.Tensor) -> None:
        if self.grad_codes is not None:  # accumulation: decode, add, re-quantize
            dw = dw + self.grad().dequantize_fast()
        q = self._quant(dw, "weight_grad", E5M2)
        self.grad_codes, self.grad_scale_inv = q.data, q.scale_inv.reshape(())

    def grad(self) -> _Grad | None:
        return None if self.grad_codes is None else _Grad(self)

    @torch.no_grad()
    def store_weight(self, w: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """Re-quantize the updated weight to E4M3 with a fresh per-tensor scale: round to nearest, or with
        a ``generator`` stochastically (the same scale; only the rounding of ``w * scale`` differs)."""
        q = quantize(w, E4M3, TENSORWISE, backend=self.backend) if generator is None else _stochastic(w, generator)
        self._note("weight", q, w.numel())
        self.weight.data.copy_(q.data)
        self.weight_scale_inv.copy_(q.scale_inv.reshape(()))

    def telemetry_rows(self, name: str) -> list[dict]:
        rows = []
        for role, (amax, scale, n_sat, numel) in self._stats.items():
            sat = int(n_sat)
            win_sat, win_n = self._window.get(role, (0, 0))
            rows.append(
                {
                    "layer": name,
                    "tensor": role,
                    "amax": float(amax.float().max()),
                    **describe_scales(scale),
                    "saturated_frac": sat / max(1, numel),
                    "saturated": sat,
                    "saturated_frac_window": int(win_sat) / max(1, win_n),
                    "quantized_window": win_n,
                    "granularity": "tensorwise",
                    "scaling": "current",
                    "format": "e5m2" if role in ("grad_output", "weight_grad") else "e4m3",
                }
            )
        self._window = {}
        if self.unchanged is not None:
            wq = self._stats.get("weight")
            rows.append(
                {
                    "layer": name,
                    "tensor": "weight_update",
                    "unchanged_frac": float(self.unchanged),
                    "amax": float(wq[0].float().max()) if wq else float("nan"),
                    "scale": float(wq[1].reshape(-1)[0]) if wq else float("nan"),
                    "saturated_frac": 0.0,
                    "saturated_frac_window": 0.0,
                    "format": "e4m3",
                }
            )
        return rows


class _Grad:
    """View of a module's stored FP8 gradient."""

    def __init__(self, mod: FP8StoredLinear):
        self.mod = mod

    def q(self) -> Quantized:
        return _tensorwise(self.mod.grad_codes, self.mod.grad_scale_inv, E5M2)

    def dequantize_fast(self) -> torch.Tensor:
        return dequantize_fast(self.q())


def convert_to_fp8_stored(model: nn.Module, keep_high_precision: tuple[str, ...], backend: str = "auto") -> nn.Module:
    targets = [
        (n, m)
        for n, m in model.named_modules()
        if type(m) is nn.Linear and not any(fnmatch.fnmatchcase(n, p) for p in keep_high_precision)
    ]
    for name, lin in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, FP8StoredLinear(lin, backend))
    return model
