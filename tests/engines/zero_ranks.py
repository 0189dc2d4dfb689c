"""Run under torchrun by the engine tests: every ZeRO method, one step on the global batch of step 0, in
one pair of ranks (one launch instead of one per method). Rank 0 writes a JSON of what each rank saw.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/engines/zero_ranks.py CORPUS OUT

Any JIT build of a C++ op (DeepSpeed's or torch.compile's) makes the run fail: it must not happen.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.utils.cpp_extension as cpp_extension

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def _no_builds(*args, **kwargs):
    raise RuntimeError(f"a C++ extension build was attempted: {args[:1]}")


cpp_extension.load = cpp_extension.load_inline = _no_builds


def main(corpus_dir: str, out: str, methods: list[str]) -> None:
    import torch.distributed as dist

    from methods.base import HParams, RunContext
    from methods.registry import get_method
    from models import build_model, get_model_config
    from pipelines.run.data import Batches, Corpus

    torch.set_num_threads(1)
    rank, ws = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    corpus = Corpus.open(corpus_dir)
    x, y = Batches(corpus, 4, 64, seed=0).get(0)  # the global batch every method sees at step 0
    cfg = get_model_config("tiny").with_vocab(corpus.vocab_size)
    results = {}
    for name in methods:
        method = get_method(name)
        ctx = RunContext(device=torch.device("cpu"), seed=0, rank=rank, world_size=ws, extra={"batch_size": 4})
        trainee = method.build(build_model(cfg, seed=0), HParams(lr=1e-3), ctx)
        first = trainee.train_step(x, y, 1e-3)
        second = trainee.train_step(x, y, 1e-3)
        mem = trainee.memory()
        per_rank = [None] * ws
        dist.all_gather_object(per_rank, mem)
        results[name] = {
            "analytic": method.analytic_bytes(cfg),
            "loss0": first.loss,
            "loss1": second.loss,
            "grad_norm0": first.grad_norm,
            "memory_by_rank": per_rank,
            "n_params": trainee.n_params(),
            "client_optimizer": type(trainee.engine.optimizer.optimizer).__name__,
            "exp_avg_types": sorted(
                {type(st["exp_avg"]).__name__ for st in trainee.engine.optimizer.optimizer.state.values()}
            ),
        }
        del trainee
    import deepspeed.comm.comm as ds_comm

    results["_shm_comm_op"] = getattr(ds_comm.cdb, "shm_comm_op", None) is not None
    results["_dynamo_frames"] = int(sum(torch._dynamo.utils.counters["frames"].values()))
    if rank == 0:
        Path(out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3].split(","))
