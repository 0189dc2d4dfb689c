"""Run under torchrun by tests/scaleout/test_resume_ranks.py: for each DDP / FSDP2 method, in one pair of
ranks (one launch for all), train 4 steps with a checkpoint committed after step 2 through
``pipelines.run.dist_checkpoint`` (torch.distributed.checkpoint underneath), then build the method afresh, load
that checkpoint and take steps 2 and 3 again. Rank 0 writes both runs' losses and grad norms as JSON.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/scaleout/dp_resume_ranks.py CORPUS OUT M1,M2
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main(corpus_dir: str, out: str, methods: list[str]) -> None:
    from methods.base import HParams, RunContext
    from methods.registry import get_method
    from models import build_model, get_model_config
    from pipelines.run import dist_checkpoint
    from pipelines.run.data import Batches, Corpus

    torch.set_num_threads(1)
    rank, ws = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    corpus = Corpus.open(corpus_dir)
    batches = Batches(corpus, 4, 32, seed=0)
    cfg = get_model_config("tiny").with_vocab(corpus.vocab_size)
    lrs = [1e-3, 2e-3, 3e-3, 2e-3]

    def fresh(name):
        torch.manual_seed(0)
        ctx = RunContext(device=torch.device("cpu"), seed=0, rank=rank, world_size=ws)
        return get_method(name).build(build_model(cfg, seed=0), HParams(lr=1e-3), ctx)

    result = {}
    for name in methods:
        run_dir = Path(out).parent / name
        if rank == 0:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "metrics.partial.jsonl").write_text("")  # the loop's event log, empty here
        torch.distributed.barrier() if torch.distributed.is_initialized() else None
        rc = {"method": name}  # what the fingerprint covers here
        a, first = fresh(name), []
        for step in range(4):
            res = a.train_step(*batches.get(step), lrs[step])
            first.append([res.loss, res.grad_norm])
            if step == 1:
                dist_checkpoint.save(run_dir, rc, 2, a, {"step": 2}, 0, rank, ws)
        ck, note = dist_checkpoint.load(run_dir, rc, rank, ws)
        assert ck is not None, note
        b = fresh(name)
        x2, y2 = batches.get(2)
        before = b.eval_loss(x2, y2)  # the untrained weights: what a load that loaded nothing would leave
        b.load_sharded(*ck["sharded"])
        again = [[r.loss, r.grad_norm] for r in (b.train_step(*batches.get(s), lrs[s]) for s in (2, 3))]
        result[name] = {
            "uninterrupted": first,
            "resumed": again,
            "step": ck["step"],
            "fresh_loss": before,
            "files": sorted(p.name for p in (run_dir / "checkpoints" / "step2").iterdir()),
        }
    if rank == 0:
        Path(out).write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3].split(","))
