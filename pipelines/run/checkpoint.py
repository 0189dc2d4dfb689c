"""Periodic, atomic checkpoints that make a killed run resumable bit for bit.

A checkpoint holds everything the next step depends on: the trainee's state (model incl. FP8 scale and
amax-history buffers, optimizer incl. FP8 moments, their scales and any stochastic-rounding
generator), every global RNG state, the loop's own state (step, evals, first loss, partial summary),
and the byte length of the event log at that moment. Batches need no state: step ``i``'s batch is a
function of (data seed, i).

It is written to a temporary file and renamed, so a kill during the write leaves the previous one.
Resuming requires the same resolved config (a fingerprint of it is stored, without the settings that only
change what the run prints); a checkpoint of another config is ignored and the run starts over. Multi-rank
runs, whose state is partitioned over ranks, use ``pipelines.run.dist_checkpoint`` instead (same fingerprint,
one committed checkpoint for all ranks).
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import numpy as np
import torch

from common.atomic import atomic_path

NAME = "checkpoint.pt"


#: settings of the resolved config that change only what the run prints, never what it computes: a killed run
#: resumed with another value keeps its checkpoint
DISPLAY_ONLY = {"train": ("log_every",)}


def fingerprint(rc: dict) -> str:
    """The resolved config's hash, without the display-only settings."""
    rc = {
        k: (
            {kk: vv for kk, vv in v.items() if kk not in DISPLAY_ONLY[k]}
            if k in DISPLAY_ONLY and isinstance(v, dict)
            else v
        )
        for k, v in rc.items()
    }
    return hashlib.sha256(json.dumps(rc, sort_keys=True, default=str).encode()).hexdigest()


def rng_states() -> dict:
    st = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_states(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def save(out_dir: Path, rc: dict, step: int, trainee_state: dict, loop_state: dict, metrics_offset: int) -> Path:
    path = Path(out_dir) / NAME
    payload = {
        "fingerprint": fingerprint(rc),
        "step": step,
        "trainee": trainee_state,
        "loop": loop_state,
        "rng": rng_states(),
        "metrics_offset": metrics_offset,
    }
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(payload, tmp)
    return path


def load(out_dir: Path, rc: dict) -> tuple[dict | None, str]:
    """(checkpoint, note): the checkpoint if one matches this config, else None and why."""
    path = Path(out_dir) / NAME
    if not path.is_file():
        return None, ""
    try:
        # Our own file, holding tensor subclasses (FP8 optimizer states): full unpickling is needed.
        ck = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - a damaged checkpoint means starting over, not failing
        return None, f"checkpoint unreadable ({type(e).__name__}: {e}); starting over"
    if ck.get("fingerprint") != fingerprint(rc):
        return None, "checkpoint belongs to a different config; starting over"
    return ck, f"resuming after step {ck['step']}"


def remove(out_dir: Path) -> None:
    (Path(out_dir) / NAME).unlink(missing_ok=True)
