"""What every multi-rank (data-parallel) method does inside a rank: the process group, the rank's rows of
the global batch, the global-batch loss, and the ``ranks`` and ``nodes`` options. Shared by DeepSpeed ZeRO
(``methods.zero``) and torch's DDP / FSDP2 (``methods.data_parallel``); ``pipelines.run.launch`` starts
the ranks.

Every rank receives the *global* batch a single-process method sees and trains on an equal share of its
rows, so the mean of the ranks' mean losses is the global-batch mean, and averaging the ranks' gradients
gives the single-process gradient.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from methods.base import Method, RunContext
from methods.fp8.device import host_float
from methods.options import Range

#: seconds a collective may wait for a peer before the rank fails (a dead or stuck rank must not hang a run)
TIMEOUT_ENV = "FP8BENCH_DIST_TIMEOUT_S"


def default_world_size() -> int:
    """One rank per visible GPU where there are GPUs, else 2 CPU ranks."""
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return n if n >= 1 else 2


def backend(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def timeout() -> datetime.timedelta:
    return datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, "600")))


def ensure_rendezvous_env() -> None:
    """Outside a launched run (one GPU, a test), a group of one on a free local port."""
    if "MASTER_ADDR" in os.environ:
        return
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for k, v in dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0").items():
        os.environ.setdefault(k, v)


def init_process_group(
    device: torch.device, ctx: RunContext, init: Callable[[str, datetime.timedelta], None] | None = None
) -> None:
    """This rank's process group from the launcher's environment (``init(backend, timeout)`` replaces
    ``torch.distributed.init_process_group``, e.g. by DeepSpeed's), checked against the run's rank."""
    import torch.distributed as dist

    if not dist.is_initialized():
        ensure_rendezvous_env()
        if init is not None:
            init(backend(device), timeout())
        else:
            dist.init_process_group(backend=backend(device), timeout=timeout())
    if (dist.get_world_size(), dist.get_rank()) != (ctx.world_size, ctx.rank):
        raise RuntimeError(
            f"process group is rank {dist.get_rank()} of {dist.get_world_size()}, the run "
            f"expects rank {ctx.rank} of {ctx.world_size}"
        )


class RankShare:
    """Mixin of a rank's Trainee (needs ``self.ctx``): its rows of a batch, and the global-batch mean."""

    def shard(self, t: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a global batch (equal shares, so the mean of rank means is the global mean)."""
        n, ws, r = t.shape[0], self.ctx.world_size, self.ctx.rank
        if n % ws:
            raise ValueError(
                f"batch of {n} rows does not split evenly over {ws} ranks; use a batch_size divisible by {ws}"
            )
        k = n // ws
        return t[r * k : (r + 1) * k]

    def global_mean(self, value: torch.Tensor) -> float:
        import torch.distributed as dist

        t = value.detach().float().reshape(1).clone()
        if self.ctx.world_size > 1:
            dist.all_reduce(t)
        return host_float(t) / self.ctx.world_size  # NaN in a memory trace (no values)


@dataclass(frozen=True, kw_only=True)
class MultiRank(Method):
    """A method one run of which is ``world_size`` processes (``pipelines.run.launch`` starts them)."""

    #: ranks of one run; 0: one per visible GPU, 2 on a CPU
    ranks: int = 0
    #: machines the ranks are spread over, an equal share on each (one torchrun per node)
    nodes: int = 1

    option_rules = {"ranks": Range(0), "nodes": Range(1)}  # ranks 0: one per GPU, 2 on a CPU

    @property
    def world_size(self) -> int:  # type: ignore[override]
        return self.ranks or default_world_size()

    @property
    def ranks_per_node(self) -> int:
        return self.world_size // self.nodes

    def validate(self) -> None:
        super().validate()
        ws = self.world_size
        if ws % self.nodes:  # every node runs the same number of ranks (one torchrun with --nproc-per-node)
            divisors = [d for d in range(1, ws + 1) if ws % d == 0]
            raise ValueError(
                f"method {self.name}: option nodes = {self.nodes} does not divide its {ws} ranks "
                f"evenly; valid: nodes one of {', '.join(map(str, divisors))}, or ranks a multiple "
                f"of {self.nodes}"
            )
