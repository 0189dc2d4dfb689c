"""What a precision recipe is: a small frozen object the one training loop drives.

The loop never asks which method it runs. It calls ``method.build(model, hp, ctx)`` on an fp32
model that was seeded before any conversion and gets back a :class:`Trainee` that knows how to take
one step, evaluate, and report its memory. Most methods only override ``convert_model``,
``build_optimizer`` and ``autocast``; engines that own the step (DeepSpeed, fused optimizers) override
``build`` or subclass :class:`Trainee`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from methods.analytic import default_analytic_bytes
from methods.bf16_emulation import bf16_matmul_mode
from methods.context import HParams, RunContext  # noqa: F401 - part of this module's API
from methods.fp8.device import host_float
from methods.fp8.lost_updates import LostUpdates, ParamProbe, layer_name
from methods.ledger import ledger


@dataclass(frozen=True)
class Requirement:
    """One precondition of a method; ``reason`` says what is missing when ``met`` is False."""

    what: str
    met: bool
    reason: str = ""


def needs_module(module: str, install_hint: str = "") -> Requirement:
    ok = importlib.util.find_spec(module) is not None
    hint = f" ({install_hint})" if install_hint else ""
    return Requirement(f"python module {module}", ok, "" if ok else f"{module} is not installed{hint}")


def needs_cuda(min_cc: tuple[int, int] | None = None, what: str = "") -> Requirement:
    label = f"CUDA device{f' with compute capability >= {min_cc[0]}.{min_cc[1]}' if min_cc else ''}"
    if not torch.cuda.is_available():
        return Requirement(label, False, f"no CUDA device{f' ({what})' if what else ''}")
    if min_cc is not None:
        cc = torch.cuda.get_device_capability()
        if cc < min_cc:
            return Requirement(
                label,
                False,
                f"compute capability {cc[0]}.{cc[1]} < {min_cc[0]}.{min_cc[1]}{f' ({what})' if what else ''}",
            )
    return Requirement(label, True)


@dataclass
class StepResult:
    loss: float
    grad_norm: float  # global L2 norm before clipping; NaN where a method cannot know it
    #: what else the step measured, for the ``train_step`` event. On a step probed with
    #: ``Trainee.probe_updates`` by a recipe whose weights live in a low-precision format: ``lost_pred_frac``,
    #: ``unchanged_frac``, ``lost_bias`` over all of those weights (``methods.fp8.lost_updates``)
    extra: dict = field(default_factory=dict)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices (linears, embedding), not norm gains: the same split for every method."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@torch.no_grad()
def clip_grads(params: list[torch.Tensor], max_norm: float) -> float:
    """Global-norm clipping with the norm accumulated in fp32 whatever the grad dtype."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    total = torch.sqrt(sum(torch.linalg.vector_norm(g, dtype=torch.float32) ** 2 for g in grads))
    norm = host_float(total, fake=0.0)  # a memory trace has no values: finite, nothing to clip
    if max_norm > 0 and math.isfinite(norm) and norm > max_norm:
        coef = max_norm / (norm + 1e-6)
        for g in grads:
            g.mul_(coef)
    return norm


class Trainee:
    """A model + optimizer under one method. The loop only uses this interface.

    ``probe_updates``: the loop sets it before a step to have that step's weight updates measured where the
    weights live in a low-precision format and the recipe can see the update (``fp8-naive``, ``bf16-pure``,
    the FP8AdamW recipes): the whole-model figures come back in ``StepResult.extra`` and the per-layer ones
    in the ``tensor="weight_update"`` rows of :meth:`telemetry` (``methods.fp8.lost_updates``). A probed
    step trains exactly as an unprobed one; it costs a copy of the weights and, where a fused kernel does the
    update, the reference update once more on copies. Other recipes ignore it.
    """

    probe_updates: bool = False

    def __init__(
        self, method: Method, model: nn.Module, optimizer: torch.optim.Optimizer, hp: HParams, ctx: RunContext
    ):
        self.method, self.model, self.optimizer, self.hp, self.ctx = method, model, optimizer, hp, ctx
        self.params = [p for p in model.parameters() if p.requires_grad]
        # what train.compile did (methods.compiled): "off", "compiled" or "fallback: <reason>". Engines that
        # override Method.build (DDP, FSDP2, ZeRO) apply train.compile their own way, unguarded.
        self.compile_status = "off" if not ctx.compile else f"engine's own ({type(method).__name__}.build)"
        self.compile_graphs = self.compile_graph_breaks = 0
        #: the counters of the probed steps (``weight_update`` telemetry rows)
        self.lost_updates = LostUpdates()

    def arm_probe(self) -> bool:
        """At the start of a step: hand the optimizer a probe if this step is probed and the optimizer can
        take one (``methods.fp8.adamw_base.AdamW``); whether it did. :meth:`disarm_probe` after the step."""
        if not self.probe_updates or not hasattr(self.optimizer, "probe"):
            return False
        names = {p: layer_name(n) for n, p in self.model.named_parameters()}
        self.optimizer.probe = ParamProbe(self.lost_updates, names)
        return True

    def disarm_probe(self, armed: bool) -> dict:
        """At the end of a step: take the probe back; the step's whole-model figures ({} if not probed)."""
        if not armed:
            return {}
        self.optimizer.probe = None
        return self.lost_updates.finish_step()

    def set_lr(self, lr: float) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = lr

    def forward_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with self.method.autocast(self.ctx), bf16_matmul_mode(self.ctx.device):
            return self.model(x, y)

    def backward(self, loss: torch.Tensor) -> None:
        """Engines whose backward runs Python-level GEMMs (custom autograd functions) override this,
        e.g. to put them under the same bf16 GEMM emulation as the forward."""
        loss.backward()

    def train_step(self, x: torch.Tensor, y: torch.Tensor, lr: float) -> StepResult:
        # zero at the start, not the end: the grads of the last step stay alive, as they do in any
        # real loop between backward and the next step, and the memory ledger sees them.
        self.optimizer.zero_grad(set_to_none=True)
        self.set_lr(lr)
        self.model.train()
        loss = self.forward_loss(x, y)
        self.backward(loss)
        grad_norm = clip_grads(self.params, self.hp.grad_clip)
        armed = self.arm_probe()
        try:
            if math.isfinite(grad_norm):  # a non-finite step is reported, never applied
                self.optimizer.step()
        finally:
            extra = self.disarm_probe(armed)
        return StepResult(host_float(loss.detach()), grad_norm, extra)

    @torch.no_grad()
    def eval_loss(self, x: torch.Tensor, y: torch.Tensor) -> float:
        self.model.eval()
        return float(self.forward_loss(x, y))

    def memory(self, owners: dict | None = None) -> dict[str, int]:
        """Persistent bytes by component, walked from the live tensors (``owners``: see
        ``methods.ledger.ledger``)."""
        return ledger(self.model, self.optimizer, owners=owners)

    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def telemetry(self) -> list[dict]:
        """Per-layer statistics: FP8 ones (amax, scale, saturated fraction) where a subclass has them, and
        the ``tensor="weight_update"`` rows of the probed steps since the previous call (``lost_pred_frac``,
        ``unchanged_frac``, ``lost_bias``, each also as ``*_window``: see ``methods.fp8.lost_updates``)."""
        return self.lost_updates.rows()

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])


@dataclass(frozen=True, kw_only=True)
class Method:
    """A precision recipe. Subclasses are frozen dataclasses; their fields are the options."""

    name: ClassVar[str] = ""
    #: one line for ``python -m methods`` and the report's glossary
    summary: ClassVar[str] = ""
    #: dtype of each persistent component, for the glossary (weights, master, grads, m, v, compute)
    stores: ClassVar[dict[str, str]] = {}
    #: grouping for listings and the report (``methods.registry.FAMILIES``)
    family: ClassVar[str] = "baseline"
    #: processes one run of this method uses (ZeRO runs as several ranks)
    world_size: ClassVar[int] = 1
    #: option name → ``methods.options.Range`` / ``Choice``; merged with the bases' rules
    option_rules: ClassVar[dict] = {}

    def __post_init__(self):
        # YAML and --method-option spell a sequence as a list; the method is frozen and hashed (its memory model
        # is cached per method), so a list option is kept as the tuple the field declares
        import dataclasses

        for f in dataclasses.fields(self):
            if isinstance(getattr(self, f.name), list):
                object.__setattr__(self, f.name, tuple(getattr(self, f.name)))
        self.validate()

    def validate(self) -> None:
        """Refuse bad options when the method is made (ValueError naming option, value and valid values),
        so bad input never reaches a build. Subclasses with cross-option rules extend this."""
        from methods.options import check

        check(self)

    def requirements(self) -> list[Requirement]:
        return []

    def unmet(self) -> list[str]:
        return [r.reason for r in self.requirements() if not r.met]

    def convert_model(self, model: nn.Module, ctx: RunContext) -> nn.Module:
        return model

    def build_optimizer(self, model: nn.Module, hp: HParams, ctx: RunContext) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            param_groups(model, hp.weight_decay), lr=hp.lr, betas=(hp.beta1, hp.beta2), eps=hp.eps, foreach=True
        )

    def autocast(self, ctx: RunContext):
        return contextlib.nullcontext()

    def build(self, model: nn.Module, hp: HParams, ctx: RunContext) -> Trainee:
        trainee = self.trainee(self.convert_model(model, ctx), hp, ctx)
        if ctx.compile:  # after conversion and the optimizer: the model as it will train
            from methods.compiled import compile_trainee

            compile_trainee(trainee)
        return trainee

    def trainee(self, model: nn.Module, hp: HParams, ctx: RunContext) -> Trainee:
        """The Trainee around a model ``convert_model`` already converted. Separate from ``build`` for
        the memory trace (``methods.memory_trace``), which converts on the meta device first."""
        return Trainee(self, model, self.build_optimizer(model, hp, ctx), hp, ctx)

    def analytic_bytes(self, cfg) -> dict[str, float]:
        """Persistent bytes per ledger component (weights, master, grads, optim, meta) this method
        holds after one step on a ``models.Transformer(cfg)``: the analytic twin of
        ``Trainee.memory()``. The default reads the dtypes in ``stores``; override it where a method
        keeps more (scales, quantized states, FP8 weight copies, amax histories). See ``methods.memory``.
        """
        return default_analytic_bytes(self, cfg)

    def options(self) -> dict:
        import dataclasses

        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
