"""Checkpoints of multi-rank runs (DeepSpeed ZeRO, DDP, FSDP2): each rank writes its own share, and a
checkpoint counts only once every rank has written all of it.

The single-file checkpoint (``pipelines.run.checkpoint``) cannot hold state that is partitioned over ranks, so
a multi-rank trainee saves through its engine's own sharded format (``Trainee.save_sharded`` /
``load_sharded``: DeepSpeed's ``engine.save_checkpoint``, or ``torch.distributed.checkpoint`` for DDP and
FSDP2) into ``<run>/checkpoints/step<N>/``. Beside that, every rank writes its RNG states, and rank 0 the
loop's state (evals, partial summary, event-log length), which all ranks read back so that they take the
same decisions (a divergence stop, say) after a resume.

Commit protocol: every rank writes, a barrier waits for all of them, then rank 0 atomically replaces
``checkpoints/latest.json`` (step, tag, world size, config fingerprint). Only a tag named there is ever
read, so a kill at any moment leaves either the previous complete checkpoint or the new complete one;
tags it does not name are leftovers, removed at the next save. The pointer is written last and the
removal comes after it, so there is no moment without a complete checkpoint.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from common.atomic import atomic_path, write_json
from pipelines.run.checkpoint import fingerprint, rng_states

DIR = "checkpoints"
POINTER = "latest.json"


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def save(out: Path, rc: dict, step: int, trainee, loop_state: dict, metrics_offset: int, rank: int, world: int) -> None:
    """Collective: every rank calls it at the same step."""
    root = Path(out) / DIR
    tag = f"step{step}"
    if rank == 0:  # a stale folder of that name (a save killed before its commit) is never merged into
        root.mkdir(parents=True, exist_ok=True)
        committed = _pointer(root).get("tag")
        if tag != committed and (root / tag).exists():
            shutil.rmtree(root / tag)
    _barrier()
    trainee.save_sharded(root, tag)  # collective itself: DeepSpeed and DCP synchronise the ranks
    (root / tag).mkdir(parents=True, exist_ok=True)
    with atomic_path(root / tag / f"rng_rank{rank}.pt", suffix=".pt") as tmp:
        torch.save(rng_states(), tmp)
    if rank == 0:
        with atomic_path(root / tag / "loop.pt", suffix=".pt") as tmp:
            torch.save({"step": step, "loop": loop_state, "metrics_offset": metrics_offset}, tmp)
    _barrier()  # every rank's share is on disk: now, and only now, the checkpoint counts
    if rank == 0:
        write_json(root / POINTER, {"step": step, "tag": tag, "world_size": world, "fingerprint": fingerprint(rc)})
        for old in root.iterdir():
            if old.is_dir() and old.name != tag:
                shutil.rmtree(old, ignore_errors=True)
    _barrier()


def _pointer(root: Path) -> dict:
    try:
        return json.loads((root / POINTER).read_text())
    except (OSError, ValueError):
        return {}


def load(out: Path, rc: dict, rank: int, world: int) -> tuple[dict | None, str]:
    """(checkpoint, note): what this rank needs to resume, or None and why not. Every rank reads the same
    committed pointer, so all of them decide alike."""
    from pipelines.run.events import PARTIAL

    root = Path(out) / DIR
    ptr = _pointer(root)
    if not ptr:
        return None, ""
    if ptr.get("fingerprint") != fingerprint(rc):
        return None, "checkpoint belongs to a different config; starting over"
    if ptr.get("world_size") != world:
        return None, f"checkpoint was written by {ptr.get('world_size')} ranks, this run has {world}; starting over"
    tag = root / ptr["tag"]
    try:
        loop = torch.load(tag / "loop.pt", map_location="cpu", weights_only=False)
        rng = torch.load(tag / f"rng_rank{rank}.pt", map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - a damaged checkpoint means starting over, not failing
        return None, f"checkpoint unreadable ({type(e).__name__}: {e}); starting over"
    partial = Path(out) / PARTIAL
    if not partial.is_file() or partial.stat().st_size < loop["metrics_offset"]:
        return None, "event log is shorter than the checkpoint says; starting over"
    return {
        "sharded": (root, ptr["tag"]),
        "step": loop["step"],
        "loop": loop["loop"],
        "rng": rng,
        "metrics_offset": loop["metrics_offset"],
    }, f"resuming after step {loop['step']}"


def exists(out: Path) -> bool:
    return (Path(out) / DIR / POINTER).is_file()


def remove(out: Path) -> None:
    shutil.rmtree(Path(out) / DIR, ignore_errors=True)
