"""DeepSpeed ZeRO, as users run it: ``deepspeed.initialize`` with ``bf16`` and a ZeRO stage, N ranks.

Each run is ``world_size`` processes (2 on a CPU, over gloo; one per GPU over NCCL; option ``ranks``)
started by ``pipelines.run.launch``. Every rank receives the *global* batch the single-process methods
see and trains on its share of the rows; the reported loss is the global-batch mean (all-reduced) and
DeepSpeed averages the gradients over ranks, so the step is the single-process step.

What DeepSpeed keeps with ``bf16: {enabled: true}`` (measured per rank from its own tensors, ``memory``):
- weights: bf16 module parameters (stage 1/2: the full flat bf16 copy on every rank; stage 3: only this
  rank's partition, gathered per layer when used);
- master: an fp32 copy of this rank's 1/N partition (``single_partition_of_fp32_groups`` or
  ``fp32_partitioned_groups_flat``);
- grads: bf16, measured between backward and step: this rank's partition (stage 1 holds the full
  gradients during backward and reduces them at its end; stage 2/3 reduce them in buckets as they come);
- optim: the client optimizer's state over the fp32 partition, i.e. 1/N of Adam's m and v.

The client optimizer is ``torch.optim.AdamW`` (fp32 m, v) with the same hyperparameters, weight-decay
groups and gradient clipping as every other method; DeepSpeed's own CPU Adam is not used because it is a
C++ op built at run time. For the same reason every DeepSpeed JIT op is marked unavailable before the
engine starts (on a CPU DeepSpeed would otherwise build its shared-memory all-reduce): nothing compiles.

Variants: ``zeroN-fp8`` runs the blocks' linears as torchao float8 linears inside the engine
(``fp8_engine: te`` uses TransformerEngine where it is installed); ``zero2-fp8-optim`` keeps Adam's
states in FP8 with torchao's ``AdamWFp8`` as the client optimizer over DeepSpeed's flat fp32 partition.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import warnings
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

import torch
from torch import nn

from methods import _ranks
from methods._bf16_backward import bf16_backward_mode
from methods._linears import DEFAULT_KEEP
from methods.base import HParams, Requirement, RunContext, StepResult, Trainee, needs_module, param_groups
from methods.bf16_emulation import bf16_matmul_mode
from methods.ledger import COMPONENTS, nested_bytes
from methods.options import Choice, Range
from methods.registry import register

#: FP8 recipes of each engine a zeroN-fp8 method can run its linears with
ZERO_FP8_RECIPES = {"torchao": ("tensorwise", "rowwise", "rowwise_with_gw_hp"), "te": ("delayed", "current", "block")}

DEEPSPEED_HINT = "pip install --no-build-isolation deepspeed==0.19.8"


def init_process_group(device: torch.device, ctx: RunContext) -> None:
    """This rank's process group, made by DeepSpeed (``deepspeed.comm`` keeps its own handle on it)."""
    import deepspeed

    def ds_init(backend: str, timeout) -> None:
        # DeepSpeed's CPU accelerator counts devices by running `numactl` on every call unless told
        os.environ["LOCAL_SIZE"] = os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1"))
        deepspeed.init_distributed(dist_backend=backend, timeout=timeout, auto_mpi_discovery=False)

    _ranks.init_process_group(device, ctx, init=ds_init)


def forbid_op_builds() -> None:
    """Mark every DeepSpeed C++ op incompatible, so none is JIT-built (DeepSpeed reads this dict at build
    time: ``deepspeed.ops.__compatible_ops__``)."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__ = {}


def quiet_deepspeed() -> None:
    from deepspeed.utils import logger

    logger.setLevel(logging.WARNING)
    # ZeRO-3 calls all_gather_into_tensor / reduce_scatter_tensor, which torch now flags on every call
    warnings.filterwarnings("ignore", message=r".*(all_gather_into_tensor|reduce_scatter_tensor).*deprecated")


class ZeroTrainee(_ranks.RankShare, Trainee):
    """A DeepSpeed engine behind the loop's interface. The loop hands every rank the global batch."""

    #: ZeRO's state is partitioned over ranks: not the loop's single-file checkpoint, but DeepSpeed's own
    #: (``save_sharded``), which ``pipelines.run.dist_checkpoint`` commits once every rank has written
    checkpointable = False

    def __init__(self, method: _Zero, engine, hp: HParams, ctx: RunContext):
        self.engine = engine
        super().__init__(method, engine.module, engine.optimizer, hp, ctx)
        self.params = list(engine.module.parameters())
        self._grads_bytes: int | None = None

    # -- the step -------------------------------------------------------------------------------
    def set_lr(self, lr: float) -> None:
        for g in self.engine.optimizer.param_groups:
            if isinstance(g["lr"], torch.Tensor):  # torchao's low-bit AdamW keeps lr as a tensor
                g["lr"].fill_(lr)
            else:
                g["lr"] = lr

    def forward_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with self.method.autocast(self.ctx), bf16_matmul_mode(self.ctx.device):
            return self.engine(x, y)

    def backward(self, loss: torch.Tensor) -> None:
        # ZeRO-3's memory-efficient linear and torchao's float8 linear have Python backward GEMMs
        with bf16_backward_mode(self.ctx.device):
            self.engine.backward(loss)

    def train_step(self, x: torch.Tensor, y: torch.Tensor, lr: float) -> StepResult:
        self.set_lr(lr)
        self.engine.train()
        loss = self.forward_loss(self.shard(x), self.shard(y))
        self.backward(loss)
        if self._grads_bytes is None:
            # ZeRO frees its gradient partitions and reduce buckets inside step(); the other methods' grads
            # live from backward to the next step, so ZeRO's are measured here, between backward and step.
            self._grads_bytes = zero_ledger(self.engine)["grads"]
        with self.method.optimizer_context(self.ctx):
            self.engine.step()  # clips to hp.grad_clip by the global norm, steps, zeroes the grads
        norm = self.engine.get_global_grad_norm()
        norm = float(norm) if norm is not None else math.nan
        return StepResult(self.global_mean(loss), norm)

    @torch.no_grad()
    def eval_loss(self, x: torch.Tensor, y: torch.Tensor) -> float:
        self.engine.eval()  # every rank takes part: ZeRO-3 gathers each layer's weights from all ranks
        return self.global_mean(self.forward_loss(self.shard(x), self.shard(y)))

    # -- what it holds ----------------------------------------------------------------------------
    def n_params(self) -> int:
        # ZeRO-3 leaves empty placeholders in the module; ds_numel is the full size
        return sum(getattr(p, "ds_numel", p.numel()) for p in self.engine.module.parameters())

    def memory(self, owners: dict | None = None) -> dict[str, int]:  # owners: ZeRO is not traced
        mem = zero_ledger(self.engine)
        if self._grads_bytes is not None:
            mem["grads"] = max(mem["grads"], self._grads_bytes)
        return mem

    def state_dict(self):
        raise NotImplementedError("ZeRO state is partitioned over ranks: use save_sharded")

    def load_state_dict(self, state) -> None:
        raise NotImplementedError("ZeRO state is partitioned over ranks: use load_sharded")

    # -- checkpoints: DeepSpeed's engine checkpointing, each rank its partition ------------------------
    def save_sharded(self, root, tag: str) -> None:
        """Collective. The module's bf16 weights (rank 0) and every rank's fp32 master partition and client
        optimizer state (m, v, step) under ``root/tag``; DeepSpeed's own ``latest`` file is not written:
        ``pipelines.run.dist_checkpoint`` commits the checkpoint once all ranks are done."""
        self.engine.save_checkpoint(str(root), tag=tag, save_latest=False)

    def load_sharded(self, root, tag: str) -> None:
        # the fp32 master partitions are the truth: the bf16 weights are rebuilt from them, as every step does
        path, _ = self.engine.load_checkpoint(
            str(root), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=False
        )
        if path is None:
            raise RuntimeError(f"DeepSpeed found no checkpoint {tag} under {root}")


def persistent_buffers(model: nn.Module) -> list[torch.Tensor]:
    out = []
    for mod in model.modules():
        skip = getattr(mod, "_non_persistent_buffers_set", set())
        out += [b for n, b in mod.named_buffers(recurse=False) if n not in skip and b is not None]
    return out


def zero_ledger(engine) -> dict[str, int]:
    """This rank's persistent bytes by component, from the tensors DeepSpeed's ZeRO optimizer holds."""
    opt = engine.optimizer
    params = list(engine.module.parameters())
    seen: set = set()
    out = dict.fromkeys(COMPONENTS, 0)

    def add(comp, obj):
        out[comp] += nested_bytes(obj, seen)

    # weights: the bf16 parameters as stored on this rank (stage 3: the partitions, plus any parameter
    # kept whole because it is below the persistence threshold)
    add("weights", [getattr(p, "ds_tensor", None) for p in params])
    add("weights", [p.data for p in params])
    add("weights", getattr(opt, "lp_param_buffer", None))
    add("master", getattr(opt, "single_partition_of_fp32_groups", None))  # stage 1/2
    add("master", getattr(opt, "fp32_partitioned_groups_flat", None))  # stage 3
    add("grads", [p.grad for p in params])
    add("grads", [g.grad for g in getattr(opt, "single_partition_of_fp32_groups", [])])
    add("grads", getattr(opt, "averaged_gradients", None))
    add("grads", getattr(opt, "grad_partitions_flat_buffer", None))
    for bucket in getattr(opt, "ipg_buckets", {}).values():  # the reduce bucket (contiguous_gradients)
        add("grads", getattr(bucket, "buffer", None))
    add("grads", getattr(opt, "ipg_buffer", None))
    client = getattr(opt, "optimizer", None)
    if client is not None:
        add("optim", list(client.state.values()))
    for module in engine.module.modules():  # FP8 scaling state (TransformerEngine), if any
        add("meta", getattr(module, "fp8_meta", None))
    add("meta", persistent_buffers(engine.module))
    return out


@dataclass(frozen=True, kw_only=True)
class _Zero(_ranks.MultiRank):
    family = "zero"
    stage: ClassVar[int] = 0
    #: DeepSpeed bucket sizes in elements; 0: Hugging Face Accelerate's "auto" rule (dim^2; ZeRO-3 prefetch
    #: 0.9 dim^2, parameters below 10 dim stay whole). DeepSpeed's defaults (5e8) are sized for large models.
    bucket_elems: int = 0
    option_rules = {"bucket_elems": Range(0)}

    def requirements(self) -> list[Requirement]:
        return [needs_module("deepspeed", DEEPSPEED_HINT)]

    def analytic_bytes(self, cfg) -> dict[str, float]:
        """Rank 0's persistent bytes by component (what ``memory()`` measures) for a Transformer(cfg) at
        ``world_size`` ranks; the analytic twin used by the memory model and the fit check."""
        ws, d = self.world_size, cfg.dim
        n = cfg.n_params()
        norms = (2 * cfg.n_layers + 1) * d  # norm gains: the no-decay parameter group, and ZeRO-3's
        part = n / ws  # "persistent" parameters (< 10 dim values), which every rank
        weights = 2.0 * (part + norms if self.stage == 3 else n)  # holds whole beside their partition
        bucket = 2.0 * (self.bucket_elems or d * d) if self.stage == 3 else 0.0  # ZeRO-3 keeps its bucket
        return {
            "weights": weights,
            "master": 4.0 * part,
            "grads": 2.0 * part + bucket,
            "optim": self.optim_state_bytes((n - norms) / ws, norms / ws),
            "meta": 0.0,
        }

    def fsdp2_stand_in(self) -> tuple[str, dict] | str:
        """The FSDP2 configuration a per-rank memory trace (``methods.memory_trace``) runs in this method's
        place, as (method, options): ``deepspeed.initialize`` does not run under fake tensors. ZeRO-3
        partitions weights, grads and states and gathers weights per layer: FSDP2's full sharding. ZeRO-2
        keeps the 16-bit weights whole: FSDP2 without resharding after forward keeps a block's gathered
        weights from its forward to its backward (but frees them after it, where ZeRO-2 keeps them). ZeRO-1
        (states only) has no FSDP2 equivalent. The precisions differ in where they sit, not in total:
        FSDP2 shards fp32 weights (the master) and gathers bf16 ones; DeepSpeed shards an fp32 master
        beside its bf16 weights. Where none stands in, the reason why (a string)."""
        if self.stage == 1:
            return "FSDP2 has no ZeRO-1 (optimizer states sharded, gradients and weights whole)"
        base = self._fsdp2_base()
        if base.startswith("no "):
            return base
        return (base, {} if self.stage == 3 else {"reshard_after_forward": False})

    def deepspeed_estimate(self, cfg, ranks: int) -> int | None:
        """DeepSpeed's own analytic figure for one GPU's model states (weights, grads, optimizer states;
        no offload, one node of ``ranks`` GPUs): ``estimate_zero2/3_model_states_mem_needs``, the
        functions behind its ``..._all_cold`` tables. It assumes bf16 weights, fp32 master and fp32
        Adam states, so it is given for stages 2 and 3 with fp32 states only (None otherwise)."""
        if self.stage == 1 or not self._fp32_states:
            return None
        if self.stage == 2:
            from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

            return int(
                estimate_zero2_model_states_mem_needs(cfg.n_params(), num_gpus_per_node=ranks, cpu_offload=False)[1]
            )
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

        largest = max(cfg.vocab_size * cfg.dim, cfg.dim * cfg.ffn_dim)  # the embedding or head, else an MLP matrix
        return int(
            estimate_zero3_model_states_mem_needs(
                cfg.n_params(), largest, num_gpus_per_node=ranks, cpu_offload=False, cpu_offload_params=False
            )[1]
        )

    #: Adam m and v in fp32 (what DeepSpeed's estimate assumes)
    _fp32_states: ClassVar[bool] = True

    def _fsdp2_base(self) -> str:
        """The FSDP2 method of the same precision, or why there is none (a sentence starting "no ")."""
        return "fsdp2-bf16"

    def optim_state_bytes(self, decay_numel: float, no_decay_numel: float) -> float:
        """Client optimizer state over the two flat fp32 partitions: Adam m, v in fp32 and a step each."""
        return 8.0 * (decay_numel + no_decay_numel) + 2 * 4

    # -- the pieces a variant changes ------------------------------------------------------------
    def convert_model(self, model: nn.Module, ctx: RunContext) -> nn.Module:
        return model

    def build_optimizer(self, model: nn.Module, hp: HParams, ctx: RunContext) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            param_groups(model, hp.weight_decay), lr=hp.lr, betas=(hp.beta1, hp.beta2), eps=hp.eps, foreach=True
        )

    def optimizer_context(self, ctx: RunContext):
        return contextlib.nullcontext()

    # -- DeepSpeed --------------------------------------------------------------------------------
    def ds_config(self, model: nn.Module, hp: HParams, ctx: RunContext) -> dict:
        ws = ctx.world_size
        batch = int(ctx.extra.get("batch_size", ws))
        if batch % ws:
            raise ValueError(f"batch_size {batch} does not split evenly over {ws} ranks")
        dim = getattr(getattr(model, "cfg", None), "dim", 1024)
        bucket = self.bucket_elems or dim * dim
        zero = {
            "stage": self.stage,
            "contiguous_gradients": True,
            "reduce_bucket_size": bucket,
            "allgather_bucket_size": bucket,
        }
        if self.stage == 3:
            zero.update(stage3_prefetch_bucket_size=int(0.9 * bucket), stage3_param_persistence_threshold=10 * dim)
        return {
            "train_batch_size": batch,
            "train_micro_batch_size_per_gpu": batch // ws,
            "gradient_accumulation_steps": 1,
            "gradient_clipping": hp.grad_clip,
            "bf16": {"enabled": True},
            "zero_optimization": zero,
            # the client optimizer is torch's AdamW (or torchao's), not one of DeepSpeed's own
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 2**31 - 1,
            "wall_clock_breakdown": False,
        }

    def build(self, model: nn.Module, hp: HParams, ctx: RunContext) -> Trainee:
        forbid_op_builds()
        import deepspeed

        quiet_deepspeed()
        init_process_group(ctx.device, ctx)
        model = self.convert_model(model, ctx)
        optimizer = self.build_optimizer(model, hp, ctx)
        engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=self.ds_config(model, hp, ctx))
        return ZeroTrainee(self, engine, hp, ctx)


def _stores(stage: int, compute: str, m: str = "fp32", v: str = "fp32") -> dict[str, str]:
    part = "1/N"
    return {
        "weights": "bf16" + (f" ({part})" if stage == 3 else " (full)"),
        "master": f"fp32 ({part})",
        # measured between backward and step: stage 1 has reduced its full gradients into the rank's
        # partition by then (it holds them all during backward), stage 2/3 reduce in buckets as they come
        "grads": f"bf16 ({part})" + (" (full during backward)" if stage == 1 else ""),
        "m": f"{m} ({part})",
        "v": f"{v} ({part})",
        "compute": compute,
    }


# ---- bf16 ----------------------------------------------------------------------------------------
@register("zero1-bf16")
@dataclass(frozen=True, kw_only=True)
class Zero1Bf16(_Zero):
    stage = 1
    summary = "DeepSpeed ZeRO-1, bf16: Adam states and fp32 master partitioned over ranks"
    stores = _stores(1, "bf16")


@register("zero2-bf16")
@dataclass(frozen=True, kw_only=True)
class Zero2Bf16(_Zero):
    stage = 2
    summary = "DeepSpeed ZeRO-2, bf16: + gradients partitioned"
    stores = _stores(2, "bf16")


@register("zero3-bf16")
@dataclass(frozen=True, kw_only=True)
class Zero3Bf16(_Zero):
    stage = 3
    summary = "DeepSpeed ZeRO-3, bf16: + bf16 weights partitioned, gathered per layer"
    stores = _stores(3, "bf16")


# ---- FP8 compute inside the engine ---------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class _ZeroFP8(_Zero):
    #: torchao (runs anywhere, emulated where there are no FP8 GEMMs) or te (TransformerEngine, CUDA sm89+)
    fp8_engine: str = "torchao"
    #: torchao recipe (tensorwise | rowwise | rowwise_with_gw_hp) or TE recipe (delayed | current | block)
    fp8_recipe: str = "tensorwise"
    keep_high_precision: tuple[str, ...] = DEFAULT_KEEP
    option_rules = {"fp8_engine": Choice(("torchao", "te"))}

    def _fsdp2_base(self) -> str:
        # FSDP2's FP8 method is torchao tensorwise (with FP8 all-gather); no stand-in for other recipes
        if (self.fp8_engine, self.fp8_recipe) == ("torchao", "tensorwise"):
            return "fsdp2-fp8-torchao"
        return f"no FSDP2 method runs {self.fp8_engine} {self.fp8_recipe} FP8"

    def validate(self) -> None:
        super().validate()
        valid = ZERO_FP8_RECIPES[self.fp8_engine]  # which recipes exist depends on the engine
        if self.fp8_recipe not in valid:
            raise ValueError(
                f"method {self.name}: option fp8_recipe = {self.fp8_recipe!r} with fp8_engine "
                f"{self.fp8_engine}; valid: one of {', '.join(valid)}"
            )

    def requirements(self) -> list[Requirement]:
        reqs = super().requirements()
        if self.fp8_engine == "torchao":
            from methods.torchao_float8 import HW_CC

            ok = self.fp8_recipe in HW_CC
            reqs += [
                needs_module("torchao", "pip install torchao==0.18.0"),
                Requirement(
                    "torchao recipe",
                    ok,
                    "" if ok else f"unknown torchao recipe {self.fp8_recipe!r}; valid: {', '.join(HW_CC)}",
                ),
            ]
        elif self.fp8_engine == "te":
            from methods.base import needs_cuda
            from methods.transformer_engine import te_importable, te_recipe_supported

            cc = (9, 0) if self.fp8_recipe == "block" else (8, 9)
            te_reqs = [te_importable(), needs_cuda(cc, what="TransformerEngine FP8")]
            if all(r.met for r in te_reqs):
                te_reqs.append(te_recipe_supported(self.fp8_recipe))
            reqs += te_reqs
        else:
            reqs.append(Requirement("fp8_engine", False, f"fp8_engine must be torchao or te, got {self.fp8_engine!r}"))
        return reqs

    def convert_model(self, model: nn.Module, ctx: RunContext) -> nn.Module:
        keep = tuple(self.keep_high_precision)
        if self.fp8_engine == "te":
            from methods.transformer_engine import convert_to_te

            return convert_to_te(model, keep)
        from methods.torchao_float8 import convert_torchao_float8, fp8_gemm_in_hardware

        emulate = not fp8_gemm_in_hardware(ctx.device, self.fp8_recipe)
        return convert_torchao_float8(model, self.fp8_recipe, keep, emulate)

    def autocast(self, ctx: RunContext):
        if self.fp8_engine != "te":
            return contextlib.nullcontext()  # DeepSpeed's bf16 model: no torch autocast, torchao needs none
        from methods.transformer_engine import te_autocast

        return te_autocast(self.te_recipe)

    @cached_property
    def te_recipe(self):  # one recipe object per run: TE keys its global FP8 state on it
        from methods.transformer_engine import make_recipe

        return make_recipe(self.fp8_recipe, fp8_format="E4M3" if self.fp8_recipe == "block" else "HYBRID")


_FP8_COMPUTE = "fp8 (torchao float8 tensorwise, block linears), bf16 rest"


@register("zero1-fp8")
@dataclass(frozen=True, kw_only=True)
class Zero1FP8(_ZeroFP8):
    stage = 1
    summary = "DeepSpeed ZeRO-1, bf16 + torchao float8 linears inside the engine"
    stores = _stores(1, _FP8_COMPUTE)


@register("zero2-fp8")
@dataclass(frozen=True, kw_only=True)
class Zero2FP8(_ZeroFP8):
    stage = 2
    summary = "DeepSpeed ZeRO-2, bf16 + torchao float8 linears inside the engine"
    stores = _stores(2, _FP8_COMPUTE)


@register("zero3-fp8")
@dataclass(frozen=True, kw_only=True)
class Zero3FP8(_ZeroFP8):
    stage = 3
    summary = "DeepSpeed ZeRO-3, bf16 + torchao float8 linears inside the engine"
    stores = _stores(3, _FP8_COMPUTE)


# ---- FP8 optimizer states --------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class _ZeroFP8Optim(_Zero):
    """torchao ``AdamWFp8`` as DeepSpeed's client optimizer. ZeRO hands it one flat fp32 partition per
    parameter group; torchao quantises a state to FP8 (E4M3, one scale per ``block_size`` values) when it
    has >= 4096 values and a whole number of blocks, so the large decay group's m and v are FP8 and the
    small no-decay group (norm gains) keeps fp32 states. torchao compiles its step with torch.compile;
    where ``train.compile`` is off (the CPU profile) the step runs eagerly instead, so nothing is built.
    DeepSpeed 0.19.8 accepts this client optimizer at stages 1, 2 and 3 (checked); stage 2 is registered."""

    block_size: int = 256
    option_rules = {"block_size": Range(1)}

    def requirements(self) -> list[Requirement]:
        return super().requirements() + [needs_module("torchao", "pip install torchao==0.18.0")]

    def build_optimizer(self, model: nn.Module, hp: HParams, ctx: RunContext) -> torch.optim.Optimizer:
        from torchao.optim import AdamWFp8

        return AdamWFp8(
            param_groups(model, hp.weight_decay),
            lr=hp.lr,
            betas=(hp.beta1, hp.beta2),
            eps=hp.eps,
            block_size=self.block_size,
            bf16_stochastic_round=False,
        )  # fp32 master: no SR needed

    def optimizer_context(self, ctx: RunContext):
        return contextlib.nullcontext() if ctx.compile else torch.compiler.set_stance("force_eager")

    def _fsdp2_base(self) -> str:
        return "no FSDP2 method keeps FP8 Adam states"

    _fp32_states: ClassVar[bool] = False

    def optim_state_bytes(self, decay_numel: float, no_decay_numel: float) -> float:
        # torchao quantises a state of >= 4096 values (whole blocks): 1 B codes + an fp32 scale per block
        quant = decay_numel >= 4096
        decay = 2 * decay_numel * ((1 + 4 / self.block_size) if quant else 4)
        return decay + 8.0 * no_decay_numel + 2 * 4


@register("zero2-fp8-optim")
@dataclass(frozen=True, kw_only=True)
class Zero2FP8Optim(_ZeroFP8Optim):
    stage = 2
    summary = "DeepSpeed ZeRO-2, bf16, client optimizer torchao AdamWFp8: FP8 Adam states (1/N per rank)"
    stores = _stores(2, "bf16", m="fp8-e4m3 (+scale/256)", v="fp8-e4m3 (+scale/256)")
