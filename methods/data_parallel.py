"""torch's own data parallelism, as users run it: DistributedDataParallel and FSDP2 (``fully_shard``), N ranks.

Each run is ``world_size`` processes (2 on a CPU over gloo; one per visible GPU over NCCL; option
``ranks``) started by ``pipelines.run.launch``, exactly as the ZeRO methods are: every rank builds the
same seeded fp32 model, receives the *global* batch and trains on its share of the rows; the logged loss
is the global-batch mean and the ranks' gradients are averaged, so a step is the single-process step.

- ``ddp-bf16``: ``DistributedDataParallel`` around the fp32 model under bf16 autocast, i.e. ``bf16-amp``
  replicated: every rank holds all fp32 weights, grads (DDP's all-reduce buckets, which the grads view)
  and Adam m, v. DDP broadcasts rank 0's weights at wrap time (they are equal already).
- ``fsdp2-bf16``: ``fully_shard`` on every block, then on the model (the embedding, final norm and head
  are the root's group). Parameters stay fp32 and sharded along dim 0 (the fp32 master, 1/N per rank);
  ``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`` all-gathers bf16 copies per group for
  forward and backward and reduce-scatters the gradients in fp32, so grads and Adam m, v are fp32 1/N.
  There is no autocast: FSDP2 casts the parameters, not the operations, so every activation (the
  residual stream included) is bf16 — as FSDP2's mixed precision runs everywhere, unlike ``bf16-amp``
  whose residual stream stays fp32. RMSNorm and the loss still compute in fp32 (the model does that).
- ``fsdp2-fp8-torchao``: the blocks' linears become torchao ``Float8Linear`` (tensorwise) with
  ``enable_fsdp_float8_all_gather=True``: FSDP2 all-gathers those weights as FP8 (E4M3, one scale per
  tensor, the amax all-reduced over ranks) instead of bf16, halving their all-gather bytes; after every
  optimizer step ``precompute_float8_dynamic_scale_for_fsdp`` computes all those scales in one
  all-reduce, as torchao documents. Emulated FP8 GEMMs where the device has none (CPU).

Gradient clipping is by the global norm: DDP's grads are identical on every rank after the all-reduce;
FSDP2's are sharded DTensors, whose norm ``get_total_norm`` reduces over ranks. The memory ledger is
rank 0's, walked from the real (sharded) tensors. Checkpoints go through ``torch.distributed.checkpoint``
(each rank its shard), committed by ``pipelines.run.dist_checkpoint`` once every rank has written: a killed
run resumes, as ZeRO runs do. ``train.compile`` compiles the DDP module (DDP's graph-break optimizer) or each
block before it is sharded (FSDP2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import nn

from methods import _ranks
from methods._bf16_backward import bf16_backward_mode
from methods._linears import DEFAULT_KEEP
from methods.base import HParams, Requirement, RunContext, StepResult, Trainee, clip_grads, needs_module
from methods.bf16_emulation import bf16_matmul_mode
from methods.fp8.device import host_float
from methods.ledger import COMPONENTS
from methods.options import Choice
from methods.registry import register


class DataParallelTrainee(_ranks.RankShare, Trainee):
    """``model`` is the plain module (what the ledger walks), ``wrapped`` what forward calls (the DDP
    wrapper, a compiled module, or the FSDP2-sharded model itself)."""

    #: multi-rank state: not the loop's single-file checkpoint, but torch.distributed.checkpoint
    #: (``save_sharded``), which ``pipelines.run.dist_checkpoint`` commits once every rank has written
    checkpointable = False

    def __init__(
        self,
        method: _DataParallel,
        wrapped: nn.Module,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        hp: HParams,
        ctx: RunContext,
    ):
        super().__init__(method, model, optimizer, hp, ctx)
        self.wrapped = wrapped

    def forward_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with self.method.autocast(self.ctx), bf16_matmul_mode(self.ctx.device):
            return self.wrapped(x, y)

    def backward(self, loss: torch.Tensor) -> None:
        # torchao's float8 linear has a Python backward: its GEMMs get the forward's bf16 emulation
        with bf16_backward_mode(self.ctx.device):
            loss.backward()

    def train_step(self, x: torch.Tensor, y: torch.Tensor, lr: float) -> StepResult:
        self.optimizer.zero_grad(set_to_none=True)  # at the start: the ledger sees the last step's grads
        self.set_lr(lr)
        self.wrapped.train()
        loss = self.forward_loss(self.shard(x), self.shard(y))
        self.backward(loss)  # DDP all-reduces / FSDP2 reduce-scatters the gradients (mean over ranks)
        grad_norm = self.method.clip(self.params, self.hp.grad_clip)
        if math.isfinite(grad_norm):  # the norm is global: every rank skips or steps alike
            self.optimizer.step()
            self.method.after_step(self.model)
        return StepResult(self.global_mean(loss), grad_norm)

    @torch.no_grad()
    def eval_loss(self, x: torch.Tensor, y: torch.Tensor) -> float:
        self.wrapped.eval()  # every rank takes part: FSDP2 all-gathers each group's weights from all ranks
        return self.global_mean(self.forward_loss(self.shard(x), self.shard(y)))

    # -- checkpoints: torch.distributed.checkpoint, each rank its shard (DDP: deduplicated replicas) -----
    def _state(self) -> dict:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        # FSDP2: DTensor shards; DDP: the plain module's tensors (the same on every rank, written once).
        # A fresh optimizer's states are made first (a step at lr 0), so that loading has tensors to fill.
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        return {"model": model_sd, "optim": optim_sd}

    def save_sharded(self, root, tag: str) -> None:
        """Collective: model and optimizer state under ``root/tag`` (DCP's ``.metadata`` is written last)."""
        import torch.distributed.checkpoint as dcp

        dcp.save(self._state(), checkpoint_id=str(root / tag))

    def load_sharded(self, root, tag: str) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_state_dict

        state = self._state()
        dcp.load(state, checkpoint_id=str(root / tag))  # in place, into this rank's shards
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        self.method.after_step(self.model)  # FP8 all-gather scales follow the loaded weights, as after a step


@torch.no_grad()
def clip_sharded_grads(params: list[torch.Tensor], max_norm: float) -> float:
    """Global-norm clipping of DTensor (sharded) grads: the norm is reduced over ranks, in fp32 (the
    grads are fp32: FSDP2 reduce-scatters into the fp32 sharded parameters' dtype)."""
    from torch.distributed.tensor import DTensor

    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    total = torch.nn.utils.get_total_norm(grads, norm_type=2.0, error_if_nonfinite=False)
    norm = host_float(total.full_tensor() if isinstance(total, DTensor) else total, fake=0.0)  # trace: finite
    if max_norm > 0 and math.isfinite(norm) and norm > max_norm:
        coef = max_norm / (norm + 1e-6)  # as methods.base.clip_grads
        for g in grads:
            g.mul_(coef)
    return norm


def param_shapes(cfg) -> list[torch.Size]:
    """Shapes of every parameter of ``models.llama.Transformer(cfg)``, from a model on the meta device."""
    from models.llama import Transformer

    with torch.device("meta"):
        return [p.shape for p in Transformer(cfg).parameters()]


def shard_numel(shape: torch.Size, world_size: int) -> int:
    """Elements of one rank's FSDP2 shard: dim 0 split in ``ceil(d0 / N)`` rows (the last padded)."""
    rest = math.prod(shape[1:])
    return -(-shape[0] // world_size) * rest


@dataclass(frozen=True, kw_only=True)
class _DataParallel(_ranks.MultiRank):
    family = "dp"

    def requirements(self) -> list[Requirement]:
        ok = torch.distributed.is_available()
        return [Requirement("torch.distributed", ok, "" if ok else "this torch build has no torch.distributed")]

    # -- the pieces a variant changes ------------------------------------------------------------
    def wrap(self, model: nn.Module, ctx: RunContext) -> nn.Module:
        raise NotImplementedError

    def clip(self, params: list[torch.Tensor], max_norm: float) -> float:
        return clip_grads(params, max_norm)

    def after_step(self, model: nn.Module) -> None:
        pass

    def build(self, model: nn.Module, hp: HParams, ctx: RunContext) -> Trainee:
        _ranks.init_process_group(ctx.device, ctx)
        return self.trainee(self.convert_model(model, ctx), hp, ctx)

    def trainee(self, model: nn.Module, hp: HParams, ctx: RunContext, wrapped: nn.Module | None = None) -> Trainee:
        """Wrap (FSDP2: shard) a converted model in an existing process group, then its optimizer.
        ``wrapped``: already wrapped (the memory trace shards on the meta device before it allocates)."""
        wrapped = self.wrap(model, ctx) if wrapped is None else wrapped
        # after wrapping: FSDP2 replaces the parameters by their shards, which the optimizer must hold
        optimizer = self.build_optimizer(model, hp, ctx)
        return DataParallelTrainee(self, wrapped, model, optimizer, hp, ctx)

    # -- what a rank holds (the analytic twin of the ledger, for the memory model and fit check) ----
    def analytic_bytes(self, cfg) -> dict[str, float]:
        shapes = param_shapes(cfg)
        n = float(sum(self.local_numel(s) for s in shapes))
        out = dict.fromkeys(COMPONENTS, 0.0)
        # fp32 weights (FSDP2: the sharded master), fp32 grads, Adam m, v in fp32 + a step per tensor
        out.update(weights=4 * n, grads=4 * n, optim=8 * n + 4 * len(shapes))
        return out

    def local_numel(self, shape: torch.Size) -> int:
        return math.prod(shape)


# ---- DDP -------------------------------------------------------------------------------------------
@register("ddp-bf16")
@dataclass(frozen=True, kw_only=True)
class DDPBf16(_DataParallel):
    summary = "torch DDP, bf16 autocast: bf16-amp replicated on every rank, gradients all-reduced"
    stores = {
        "weights": "fp32 (full)",
        "master": "-",
        "grads": "fp32 (full)",
        "m": "fp32 (full)",
        "v": "fp32 (full)",
        "compute": "bf16",
    }

    def autocast(self, ctx: RunContext):
        return torch.autocast(device_type=ctx.device.type, dtype=torch.bfloat16)

    def wrap(self, model: nn.Module, ctx: RunContext) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        # grads as views of DDP's all-reduce buckets: one copy of the gradients, not two
        ddp = DistributedDataParallel(
            model,
            device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
            gradient_as_bucket_view=True,
            forward_sync_buffers=False,
        )
        return torch.compile(ddp) if ctx.compile else ddp


# ---- FSDP2 -------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class _FSDP2(_DataParallel):
    #: free each block's gathered weights after its forward and gather them again for backward (true,
    #: FSDP2's default: ZeRO-3's memory) or keep them until backward is done (false: ZeRO-2's peak, one
    #: all-gather per step instead of two)
    reshard_after_forward: bool = True

    def wrap(self, model: nn.Module, ctx: RunContext) -> nn.Module:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = init_device_mesh(ctx.device.type, (ctx.world_size,))
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for block in model.layers:  # one all-gather / reduce-scatter group per block
            if ctx.compile:
                block.compile()  # per block, before sharding (in place: parameter names unchanged)
            fully_shard(block, mesh=mesh, mp_policy=mp, reshard_after_forward=self.reshard_after_forward)
        # the rest: embedding, final norm, head
        fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=self.reshard_after_forward)
        return model

    def clip(self, params: list[torch.Tensor], max_norm: float) -> float:
        return clip_sharded_grads(params, max_norm)

    def local_numel(self, shape: torch.Size) -> int:
        return shard_numel(shape, self.world_size)


_FSDP_STORES = {
    "weights": "fp32 (1/N, the master)",
    "master": "-",
    "grads": "fp32 (1/N)",
    "m": "fp32 (1/N)",
    "v": "fp32 (1/N)",
}


@register("fsdp2-bf16")
@dataclass(frozen=True, kw_only=True)
class FSDP2Bf16(_FSDP2):
    summary = "torch FSDP2 (fully_shard), bf16 params for compute, fp32 reduce; fp32 weights, grads, Adam 1/N"
    stores = {**_FSDP_STORES, "compute": "bf16 (FSDP2 all-gathers bf16 weights per block)"}


@register("fsdp2-fp8-torchao")
@dataclass(frozen=True, kw_only=True)
class FSDP2Fp8Torchao(_FSDP2):
    summary = "FSDP2 + torchao float8 tensorwise linears with FP8 all-gather of their weights; fp32 state 1/N"
    stores = {
        **_FSDP_STORES,
        "compute": "fp8 e4m3/e5m2 per-tensor (block linears, weights all-gathered in FP8), bf16 rest",
    }
    #: fnmatch patterns of linears left in high precision (as the other FP8 methods)
    keep_high_precision: tuple[str, ...] = DEFAULT_KEEP
    #: "auto": emulate the FP8 GEMM where the device has none; true/false force it
    emulate: bool | str = "auto"
    option_rules = {"emulate": Choice(("auto", True, False))}

    def requirements(self) -> list[Requirement]:
        return super().requirements() + [needs_module("torchao", "pip install torchao==0.18.0")]

    def convert_model(self, model: nn.Module, ctx: RunContext) -> nn.Module:
        from methods.torchao_float8 import convert_torchao_float8, fp8_gemm_in_hardware

        emulate = (not fp8_gemm_in_hardware(ctx.device, "tensorwise")) if self.emulate == "auto" else bool(self.emulate)
        return convert_torchao_float8(
            model, "tensorwise", tuple(self.keep_high_precision), emulate, fsdp_float8_all_gather=True
        )

    def after_step(self, model: nn.Module) -> None:
        from torchao.float8 import precompute_float8_dynamic_scale_for_fsdp

        # the next all-gather casts each weight shard with a scale from the *global* amax: one all-reduce
        precompute_float8_dynamic_scale_for_fsdp(model)

    def analytic_bytes(self, cfg) -> dict[str, float]:
        from methods._linears import keeps_high_precision
        from models.llama import Transformer

        out = super().analytic_bytes(cfg)
        with torch.device("meta"):
            one = Transformer(replace(cfg, n_layers=1))
        per_layer = sum(
            1
            for n, m in one.named_modules()
            if type(m) is nn.Linear
            and n.startswith("layers.")
            and not keeps_high_precision(n, self.keep_high_precision)
        )
        outside = sum(
            1
            for n, m in one.named_modules()
            if type(m) is nn.Linear
            and not n.startswith("layers.")
            and not keeps_high_precision(n, self.keep_high_precision)
        )
        # the precomputed fp32 scale each FP8-all-gathered weight keeps (one stacked tensor, a view each)
        out["weights"] += 4 * (per_layer * cfg.n_layers + outside)
        return out
