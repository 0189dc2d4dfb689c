"""One GPU per run on a machine of several: claim free device indices, then run the training command on them.

    python -m pipelines.run.launch.devices N -- python -m pipelines.train --config ...   # what the train rule runs

Locally the workflow starts no more runs at once than there are GPUs (a ``gpu`` resource, its total from
``pool()``), but Snakemake does not say *which* GPUs a job may use: without more, every run would open
``cuda:0``. So before the command starts, N indices of the pool are claimed with an exclusive ``flock`` on
one lock file per index (``<lock dir>/gpu<i>.lock``), ``CUDA_VISIBLE_DEVICES`` is set to them, and this
process becomes the command (``exec``), so the locks are held exactly as long as the run lives and are
released by the kernel however it ends (a crash or a kill included). Two runs therefore never hold the
same index at once, even across two workflows on the machine; a claim that finds too few free indices
waits for them.

Under SLURM (``SLURM_JOB_ID`` set) the scheduler's assignment is used as it is: nothing is claimed and
``CUDA_VISIBLE_DEVICES`` is left alone. A run that needs no GPU (N = 0) runs with no GPU visible.

The pool: ``FP8BENCH_GPUS`` (a stated count, indices 0..n-1; also how the tests fake a multi-GPU machine on
a CPU), else the indices ``CUDA_VISIBLE_DEVICES`` names (the GPUs this workflow may use), else every GPU
``nvidia-smi -L`` lists. Lock folder: ``FP8BENCH_GPU_LOCKS`` (default ``/tmp/fp8bench-gpu-locks``, one per
machine, shared by every checkout).
"""

from __future__ import annotations

import argparse
import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

COUNT_ENV = "FP8BENCH_GPUS"
LOCKS_ENV = "FP8BENCH_GPU_LOCKS"
DEFAULT_LOCKS = "/tmp/fp8bench-gpu-locks"
VISIBLE = "CUDA_VISIBLE_DEVICES"


class DeviceError(ValueError):
    """A bad device setting or request; the message says what is valid."""


def under_slurm(env=None) -> bool:
    """Whether this process runs inside a SLURM job (whose scheduler assigned its GPUs)."""
    env = os.environ if env is None else env
    return bool(env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID"))


def pool(env=None) -> list[str]:
    """The GPU indices runs on this machine may claim (see the module docstring), as CUDA_VISIBLE_DEVICES
    spells them."""
    env = os.environ if env is None else env
    stated = env.get(COUNT_ENV, "").strip()
    if stated:
        if not stated.isdigit():
            raise DeviceError(f"{COUNT_ENV}={stated!r}; valid: a whole number of GPUs >= 0")
        return [str(i) for i in range(int(stated))]
    if VISIBLE in env:
        return [d.strip() for d in env[VISIBLE].split(",") if d.strip() and d.strip() != "-1"]
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return []
    if out.returncode != 0:
        return []
    return [str(i) for i, line in enumerate(ln for ln in out.stdout.splitlines() if ln.startswith("GPU "))]


def lock_dir(env=None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get(LOCKS_ENV) or DEFAULT_LOCKS)


def _open_lock(folder: Path, index: str) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    try:
        folder.chmod(0o1777)  # every user's runs share the machine's GPUs (sticky: none removes another's file)
    except PermissionError:
        pass
    # read-only is enough for flock, so a lock file another user created stays usable
    return os.open(folder / f"gpu{index}.lock", os.O_RDONLY | os.O_CREAT, 0o644)


def try_claim(n: int, indices: list[str], folder: Path) -> tuple[list[str], list[int]] | None:
    """Lock ``n`` free indices of ``indices`` (in order) without waiting; None (and nothing held) if fewer
    than ``n`` are free. Returns the indices and their open, locked descriptors."""
    got: list[str] = []
    fds: list[int] = []
    for index in indices:
        fd = _open_lock(folder, index)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        got.append(index)
        fds.append(fd)
        if len(got) == n:
            return got, fds
    for fd in fds:  # all or nothing: holding a part while waiting could starve another run forever
        os.close(fd)
    return None


def claim(n: int, indices: list[str], folder: Path, poll_s: float = 0.5, log=sys.stderr) -> tuple[list[str], list[int]]:
    """Lock ``n`` free indices, waiting for them if they are taken."""
    if n > len(indices):
        raise DeviceError(
            f"the run needs {n} GPUs but this machine has {len(indices)} "
            f"({', '.join(indices) or 'none'}); set {COUNT_ENV} or {VISIBLE} to the GPUs to use"
        )
    waited = False
    while True:
        got = try_claim(n, indices, folder)
        if got is not None:
            return got
        if not waited:
            print(f"waiting for {n} free GPU(s) of {','.join(indices)} (locks in {folder})", file=log, flush=True)
            waited = True
        time.sleep(poll_s)


def prepare(n: int, env=None) -> tuple[dict, list[int], str]:
    """The environment for a command that needs ``n`` GPUs, the lock descriptors it must keep open, and a
    one-line note of what was done."""
    env = dict(os.environ if env is None else env)
    if n < 0:
        raise DeviceError(f"GPU count {n}; valid: a whole number >= 0")
    if under_slurm(env):
        return (
            env,
            [],
            f"SLURM job {env.get('SLURM_JOB_ID') or env.get('SLURM_JOBID')}: "
            f"{VISIBLE}={env.get(VISIBLE, '(unset)')} as the scheduler set it",
        )
    if n == 0:
        env[VISIBLE] = ""
        return env, [], f"no GPU needed: {VISIBLE} empty"
    got, fds = claim(n, pool(env), lock_dir(env))
    env[VISIBLE] = ",".join(got)
    return env, fds, f"claimed GPU(s) {env[VISIBLE]} (locks in {lock_dir(env)})"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        print("usage: python -m pipelines.run.launch.devices N -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    cut = argv.index("--")
    ap = argparse.ArgumentParser(
        prog="python -m pipelines.run.launch.devices",
        description="Run COMMAND on N GPUs of its own (see the module docstring).",
    )
    ap.add_argument("gpus", type=int, help="GPUs the command needs (0: none visible)")
    args = ap.parse_args(argv[:cut])
    command = argv[cut + 1 :]
    if not command:
        ap.error("no command after --")
    try:
        env, fds, note = prepare(args.gpus)
    except DeviceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"devices: {note}", file=sys.stderr, flush=True)
    for fd in fds:  # the command inherits the locks: they end with it
        os.set_inheritable(fd, True)
    try:
        os.execvpe(command[0], command, env)
    except OSError as e:
        print(f"error: cannot run {command[0]!r}: {e}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main())
