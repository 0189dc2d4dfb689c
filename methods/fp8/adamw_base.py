"""AdamW with explicit control of what is stored in which dtype.

``torch.optim.AdamW`` keeps its moments in the parameter dtype, so on bf16 weights it would keep bf16
moments. The article's "mixed precision" recipe keeps bf16 weights and grads but fp32 m and v, and some
recipes keep an fp32 master copy; this optimiser does either. All arithmetic is fp32.

Where the result lands in a bf16 parameter without a master copy, it is rounded either to nearest
(the default cast) or stochastically (unbiased; see ``methods.fp8.rounding``). While ``probe`` is set
(a trainee's probed step), each such parameter's update is counted into it: the fp32 weight the update
computed against what the rounding stored (``methods.fp8.lost_updates``). Probing reads copies only, so a
probed step trains exactly as an unprobed one.
"""

from __future__ import annotations

import math

import torch

from methods.fp8.device import host_float, is_fake
from methods.fp8.lost_updates import ParamProbe
from methods.fp8.rounding import stochastic_round_bf16


def adamw_update_(
    w: torch.Tensor,
    g: torch.Tensor,
    m: torch.Tensor,
    v: torch.Tensor,
    *,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    step: float,
) -> None:
    """One decoupled-weight-decay Adam step on fp32 tensors, in place on ``w``, ``m`` and ``v``.

    The one copy of the AdamW arithmetic: the fp32-state optimiser below and the FP8-state one in
    ``methods.fp8.adamw`` both call it on fp32 values (the latter after decoding its FP8 moments).
    """
    b1, b2 = betas
    m.lerp_(g, 1 - b1)
    v.mul_(b2).addcmul_(g, g, value=1 - b2)
    if weight_decay:
        w.mul_(1 - lr * weight_decay)
    denom = (v.sqrt() / math.sqrt(1 - b2**step)).add_(eps)
    w.addcdiv_(m, denom, value=-lr / (1 - b1**step))


class AdamW(torch.optim.Optimizer):
    #: set by a trainee for one probed step (``Trainee.probe_updates``): where each low-precision
    #: parameter's update is counted; None on every other step
    probe: ParamProbe | None = None

    def __init__(
        self,
        params,
        lr: float,
        betas=(0.9, 0.95),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        state_dtype: torch.dtype = torch.float32,
        master_weights: bool = False,
        stochastic_rounding: bool = False,
        seed: int = 0,
    ):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults)
        self.state_dtype = state_dtype
        self.master_weights = master_weights
        self.stochastic_rounding = stochastic_rounding
        self._seed = seed
        self._gen: torch.Generator | None = None

    def _generator(self, device: torch.device) -> torch.Generator:
        if self._gen is None:
            self._gen = torch.Generator(device=device).manual_seed(self._seed)
        return self._gen

    def _init_state(self, p: torch.Tensor) -> dict:
        st = self.state[p]
        st["step"] = torch.zeros((), dtype=torch.float32)
        st["exp_avg"] = torch.zeros_like(p, dtype=self.state_dtype)
        st["exp_avg_sq"] = torch.zeros_like(p, dtype=self.state_dtype)
        if self.master_weights and p.dtype != torch.float32:
            st["master"] = p.detach().float().clone()
        return st

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self.step_param(p, group)
        return loss

    @torch.no_grad()
    def step_param(self, p: torch.Tensor, group: dict | None = None) -> None:
        """Update one parameter from its ``.grad``. ``step()`` is this over every parameter; recipes
        that step inside backward (per-parameter hooks) call it directly."""
        group = group if group is not None else self.group_of(p)
        st = self.state[p] if self.state[p] else self._init_state(p)
        st["step"] += 1
        w = st["master"] if "master" in st else p.float()
        before = p.detach().clone() if self.probes(p, st) else None
        m, v = self._load_moments(st, p)
        adamw_update_(
            w,
            p.grad.float(),
            m,
            v,
            lr=group["lr"],
            betas=group["betas"],
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            step=host_float(st["step"], fake=1.0),
        )
        self._store_moments(st, m, v)
        self._write_param(p, w, st)
        if before is not None:  # w: the fp32 weight this update computed, which the write rounded into p
            self.probe.record(p, before, w, self.rounding(p, st))

    def probes(self, p: torch.Tensor, st: dict) -> bool:
        """Whether this step counts ``p``'s update: probing, and ``p`` is a stored low-precision weight (bf16,
        no master copy; an fp32 weight or a master copy never loses an update to the stored format)."""
        return self.probe is not None and p.dtype == torch.bfloat16 and "master" not in st and not is_fake(p)

    def rounding(self, p: torch.Tensor, st: dict) -> str:
        """How the update is rounded into ``p``: "stochastic" or "nearest"."""
        return (
            "stochastic" if self.stochastic_rounding and p.dtype == torch.bfloat16 and "master" not in st else "nearest"
        )

    @torch.no_grad()
    def reference_weight(self, p: torch.Tensor, group: dict, st: dict) -> torch.Tensor:
        """The fp32 weight this step's reference update computes for ``p`` (``st["step"]`` already counts
        the step), on copies: state, weight and gradient are left as they are. For kernels that never expose
        it (``FP8AdamW``'s native, compiled and Triton steps), on probed steps only."""
        m, v = (t.clone() for t in self._load_moments(st, p))
        w = p.detach().to(torch.float32, copy=True)
        adamw_update_(
            w,
            p.grad.float(),
            m,
            v,
            lr=group["lr"],
            betas=group["betas"],
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            step=host_float(st["step"], fake=1.0),
        )
        return w

    def group_of(self, p: torch.Tensor) -> dict:
        for group in self.param_groups:
            if any(q is p for q in group["params"]):
                return group
        raise KeyError("parameter is not managed by this optimizer")

    def _load_moments(self, st: dict, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """fp32 m and v shaped like ``p``; updated in place, then handed to ``_store_moments``."""
        return st["exp_avg"].float(), st["exp_avg_sq"].float()

    def _store_moments(self, st: dict, m: torch.Tensor, v: torch.Tensor) -> None:
        st["exp_avg"].copy_(m)
        st["exp_avg_sq"].copy_(v)

    def _write_param(self, p: torch.Tensor, w: torch.Tensor, st: dict) -> None:
        if w is st.get("master") or p.dtype == torch.float32:
            if w is not p:  # fp32 p: `p.float()` is p itself, already updated in place
                p.copy_(w)
        elif self.stochastic_rounding and p.dtype == torch.bfloat16:
            p.copy_(stochastic_round_bf16(w, self._generator(p.device)))
        else:
            p.copy_(w)

    def state_dict(self):
        sd = super().state_dict()
        if self._gen is not None:
            sd["sr_generator"] = self._gen.get_state()
        return sd

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        gen = state_dict.pop("sr_generator", None)
        super().load_state_dict(state_dict)
        # torch.optim casts every floating-point state tensor to its parameter's dtype on load, which
        # would turn fp32 moments of bf16 weights into bf16 (and FP8 codes or fp32 scales into bf16):
        # put back the tensors as saved, moved to the parameter's device only.
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for pid, p in zip(saved_ids, params):
            for k, v in state_dict["state"].get(pid, {}).items():
                if isinstance(v, torch.Tensor) and k != "step":
                    self.state[p][k] = v.to(device=p.device, copy=True)
        if gen is not None:
            self._generator(torch.device("cpu")).set_state(gen)
