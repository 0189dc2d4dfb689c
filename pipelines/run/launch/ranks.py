"""Multi-rank runs (DeepSpeed ZeRO, torch DDP / FSDP2): one training run as N processes, recorded as one run.

``python -m pipelines.train`` for a method with ``world_size > 1`` re-launches itself under a launcher,
chosen by ``FP8BENCH_LAUNCHER``:

- ``torchrun`` (default): ``torch.distributed.run --standalone`` (the rendezvous binds a free port, so
  several multi-rank runs can share a machine);
- ``deepspeed``: DeepSpeed's launcher on this node, ``deepspeed --num_nodes 1 --num_gpus N --master_port
  <free> --no_local_rank --module pipelines.train ...`` (with ``--include localhost:<ids>`` instead of
  ``--num_gpus`` where ``CUDA_VISIBLE_DEVICES`` names the GPUs, e.g. in a SLURM job, so the ranks use
  those). It runs on CPU ranks too (gloo, no pdsh: single node), and gives the ranks the same
  environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT), so any multi-rank method runs under it.

With the method's ``nodes`` option above 1 the ranks are spread over that many nodes, one torchrun each
(``pipelines.run.launch.nodes``: srun in a SLURM job, else the agents on this machine).

Inside, every rank runs the same loop on the same *global* batch; the method's trainee
takes the rank's rows and reports the global-batch loss, so the logged losses, batch hashes and step
counts are those a single process would log. Only rank 0 writes ``metrics.jsonl`` and ``summary.json``;
its memory ledger is the per-rank one.

Threads: ``train.threads`` is the run's budget on this machine (Snakemake passes threads x the ranks there: all
of them, or one node's share on a cluster); each rank gets its share.

Nothing outlives the run: the agents and their ranks die with this process, even by SIGKILL
(``pipelines.run.launch.lifetime``), and a SIGTERM / SIGINT is passed on to them.

Failures end as ``failed`` with a reason, never as a hang: a rank that fails writes ``rank<r>.error`` and
exits non-zero, torchrun then stops the others, collectives time out after ``FP8BENCH_DIST_TIMEOUT_S``
(default 600 s; set where the method makes its process group), and the launcher writes the failed
summary if rank 0 could not (and removes the run's checkpoints: a failed run is complete). A run killed
whole (launcher and ranks, e.g. a node lost) leaves no summary and resumes from its last committed
checkpoint when rerun (``pipelines.run.dist_checkpoint``; on one shared filesystem across nodes as well).
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

#: set by the launcher in the ranks it starts (torchrun adds RANK, WORLD_SIZE, MASTER_ADDR/PORT, ...)
LAUNCHED = "FP8BENCH_LAUNCHED"
ERROR_FILE = "rank{rank}.error"
#: which launcher starts the ranks (LAUNCHERS); extra arguments for it in FP8BENCH_LAUNCHER_ARGS
LAUNCHER_ENV = "FP8BENCH_LAUNCHER"
LAUNCHER_ARGS_ENV = "FP8BENCH_LAUNCHER_ARGS"
LAUNCHERS = ("torchrun", "deepspeed")


def rank_info() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside a launched multi-rank run."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return 0, 1


def rank_started() -> None:
    """First thing in a rank this launcher started: die with the agent that started it (lifetime)."""
    if LAUNCHED in os.environ and "RANK" in os.environ:
        import pipelines.run.launch.lifetime as lifetime

        lifetime.rank_started()


def in_rank() -> bool:
    return rank_info()[1] > 1 or LAUNCHED in os.environ


def rank_device(device):
    """Each rank of a multi-GPU run on its own GPU (torchrun's LOCAL_RANK); CPU ranks share the CPU."""
    import torch

    if device.type != "cuda" or rank_info()[1] == 1:
        return device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local)
    return torch.device("cuda", local)


class NullWriter:
    """The event writer of ranks other than 0: they log nothing."""

    def event(self, kind: str, **fields) -> None:
        pass

    def offset(self) -> int:
        return 0

    def finish(self, summary: dict) -> None:
        pass


def rank_writer(out: Path, rank: int, resume_offset: int | None = None):
    from pipelines.run.events import RunWriter

    return RunWriter(out, resume_offset=resume_offset) if rank == 0 else NullWriter()


def writes_config() -> bool:
    """The launcher (or a single process) writes config.json; the ranks it starts do not."""
    return LAUNCHED not in os.environ and rank_info()[0] == 0


def ranks_to_launch(rc: dict) -> int:
    """Ranks this process must start for the run (0: run it here)."""
    from methods.registry import get_method

    if in_rank():
        return 0
    method = get_method(rc["method"], **rc["method_options"])
    # an unmet requirement is recorded as skipped by a single process, without starting ranks
    return method.world_size if method.world_size > 1 and not method.unmet() else 0


def exit_code(out: Path, summary: dict) -> int:
    """A failed rank other than 0 leaves its reason and exits non-zero, so torchrun stops the others."""
    rank = rank_info()[0]
    if rank > 0 and summary.get("status") == "failed":
        (Path(out) / ERROR_FILE.format(rank=rank)).write_text(summary.get("reason", "") + "\n", encoding="utf-8")
        return 1
    return 0


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launcher_command(world_size: int, script: list[str], env: dict | None = None) -> list[str]:
    """The command that starts ``python -m <script...>`` as ``world_size`` ranks on this node."""
    env = os.environ if env is None else env
    name = launcher_name(env)
    extra = shlex.split(env.get(LAUNCHER_ARGS_ENV, ""))
    if name == "torchrun":
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={world_size}",
            "--monitor-interval=0.5",
            *extra,
            "-m",
            *script,
        ]
    if name == "deepspeed":
        visible = [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
        if visible:  # the GPUs this job was given (DeepSpeed's --num_gpus would renumber from 0)
            if len(visible) < world_size:
                raise ValueError(f"{world_size} ranks but CUDA_VISIBLE_DEVICES names {len(visible)} GPUs")
            where = [f"--include=localhost:{','.join(visible[:world_size])}"]
        else:
            where = ["--num_nodes=1", f"--num_gpus={world_size}"]
        return [
            sys.executable,
            "-m",
            "deepspeed.launcher.runner",
            *where,
            f"--master_port={free_port()}",
            "--no_local_rank",
            *extra,
            "--module",
            *script,
        ]
    raise AssertionError(name)


def launcher_name(env) -> str:
    name = env.get(LAUNCHER_ENV, "torchrun") or "torchrun"
    if name not in LAUNCHERS:
        raise ValueError(f"{LAUNCHER_ENV}={name!r}; valid: {', '.join(LAUNCHERS)}")
    return name


def run_nodes(rc: dict) -> int:
    """Nodes of a run (its method's ``nodes`` option; checked against its ranks when the method was made)."""
    return int((rc.get("method_options") or {}).get("nodes", 1) or 1)


def ranks_here(world_size: int, nodes: int, env: dict | None = None) -> int:
    """Ranks that share this machine's cores: all of them, or one node's share where SLURM starts the nodes."""
    import pipelines.run.launch.nodes as multi

    env = os.environ if env is None else env
    return world_size // nodes if nodes > 1 and multi.slurm_has_nodes(nodes, env) else world_size


def agent_commands(
    world_size: int, nodes: int, threads: int, script: list[str], env: dict | None = None
) -> list[list[str]]:
    """The commands this process starts for a run of ``world_size`` ranks over ``nodes`` nodes, ``threads``
    cores on each machine. One node: one launcher command (launcher_command); several:
    pipelines.run.launch.nodes (srun in a SLURM job of enough nodes, else one torchrun per node here)."""
    import pipelines.run.launch.nodes as multi

    env = os.environ if env is None else env
    if nodes == 1:
        return [launcher_command(world_size, script, env)]
    if launcher_name(env) != "torchrun":
        raise ValueError(
            f"{LAUNCHER_ENV}=deepspeed starts ranks on one node only; a run over {nodes} nodes "
            f"starts its ranks with torchrun (valid here: {LAUNCHER_ENV}=torchrun)"
        )
    extra = shlex.split(env.get(LAUNCHER_ARGS_ENV, ""))
    return multi.agent_commands(world_size, nodes, threads, free_port(), script, extra, env)[0]


def launch(argv: list[str], rc: dict, out: Path, world_size: int, nodes: int | None = None) -> int:
    """Run ``pipelines.train`` with ``argv`` as ``world_size`` ranks over ``nodes`` nodes (default: the method's
    ``nodes`` option); returns the exit code for main."""
    import pipelines.run.launch.lifetime as lifetime
    from pipelines.run.data import Corpus, CorpusError, check_corpus, prepare

    out = Path(out)
    nodes = run_nodes(rc) if nodes is None else nodes
    threads = int(rc["train"]["threads"])  # the cores of this machine (of each node under SLURM)
    try:
        launcher_name(os.environ)  # a bad choice is refused before anything else
        per_rank = max(1, threads // ranks_here(world_size, nodes))
        cmds = agent_commands(
            world_size, nodes, threads, ["pipelines.train", *argv, "--threads", str(per_rank), "--out", str(out)]
        )
    except (ValueError, RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:  # once, here, rather than racing in every rank; a bad corpus is refused before any rank starts
        check_corpus(Corpus.open(prepare(rc["data"], rc["data"]["dir"])), rc["train"])
    except CorpusError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for stale in out.glob(ERROR_FILE.format(rank="*")):
        stale.unlink()
    env = {**os.environ, LAUNCHED: "1", "OMP_NUM_THREADS": str(per_rank)}
    # DeepSpeed's launcher counts CPU "devices" with numactl unless told; its ranks get LOCAL_SIZE anew
    env.setdefault("LOCAL_SIZE", str(world_size // nodes))
    t0 = time.perf_counter()
    where = f" over {nodes} nodes" if nodes > 1 else ""
    for cmd in cmds:
        print(
            f"launching {world_size} ranks{where} x {per_rank} thread(s): {' '.join(cmd)}", file=sys.stderr, flush=True
        )
    # Each agent in its own process group: DeepSpeed's single-node runner does not pass signals on to the
    # ranks' launcher, so a stop is sent to the whole group (torchrun's ranks get it from torchrun as well).
    # Each also dies with this process, however it ends (lifetime), and its ranks with it.
    # The agents share the run folder's lock with us (pipelines.run.dirlock): it stays held while they live.
    from pipelines.run.dirlock import held_fds

    procs = [
        subprocess.Popen(
            cmd, env=env, start_new_session=True, pass_fds=held_fds(), preexec_fn=lifetime.agent_preexec(os.getpid())
        )
        for cmd in cmds
    ]
    stopped: list[int] = []

    def signal_all(signum):
        for p in procs:
            try:
                os.killpg(p.pid, signum)
            except ProcessLookupError:
                pass

    def forward(signum, _frame):  # stop the ranks with us; a stopped run leaves no summary, so it reruns
        stopped.append(signum)
        signal_all(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = wait_all(procs, signal_all)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if stopped:
        return 128 + stopped[0]
    finish_after_ranks(rc, out, code, world_size, time.perf_counter() - t0)
    return 0


def wait_all(procs: list[subprocess.Popen], signal_all) -> int:
    """Wait for every agent; the first non-zero exit code. One agent failing stops the others (as srun's
    --kill-on-bad-exit does across nodes): their ranks would otherwise wait for the dead ones' collectives."""
    if len(procs) == 1:
        return procs[0].wait()
    code = 0
    while any(p.poll() is None for p in procs):
        failed = [p.returncode for p in procs if p.returncode not in (None, 0)]
        if failed and not code:
            code = failed[0]
            signal_all(signal.SIGTERM)
        time.sleep(0.2)
    return code or next((p.returncode for p in procs if p.returncode), 0)


def finish_after_ranks(rc: dict, out: Path, code: int, world_size: int, wall_s: float) -> dict:
    """Make sure the run ends with a summary: rank 0's, amended with other ranks' errors, or a failed one."""
    import json

    from common.atomic import write_json
    from pipelines.run.events import PARTIAL, SUMMARY, RunWriter

    errors = {
        int(p.stem[4:]): p.read_text(encoding="utf-8").strip()
        for p in sorted(Path(out).glob(ERROR_FILE.format(rank="*")))
    }
    rank_notes = "; ".join(f"rank {r}: {e}" for r, e in sorted(errors.items()))
    if code and not rank_notes:  # a rank killed by a signal leaves no error file
        rank_notes = f"the launcher exited with code {code} (a rank died; see the run's log)"
    path = Path(out) / SUMMARY
    if path.is_file():
        summary = json.loads(path.read_text())
        if rank_notes and summary.get("status") != "ok":
            summary["reason"] = f"rank 0: {summary.get('reason', '')}; {rank_notes}"
            write_json(path, summary)
        return summary
    reason = rank_notes or f"ranks exited with code {code} before rank 0 wrote a summary"
    partial = Path(out) / PARTIAL
    writer = RunWriter(out, resume_offset=partial.stat().st_size) if partial.is_file() else RunWriter(out)
    summary = {k: rc[k] for k in ("profile", "model", "method", "seed")}
    if rc.get("variant"):  # as the loop reports a variant: under its own name
        summary.update(method=rc["variant"], base_method=rc["method"], method_options=rc["method_options"])
    summary.update(status="failed", reason=reason, run_dir=str(out), world_size=world_size, wall_time_s=wall_s, steps=0)
    writer.event("run_stop", status="failed", reason=reason, steps=0)
    writer.finish(summary)
    from pipelines.run import dist_checkpoint

    dist_checkpoint.remove(out)  # a failed run is complete, as a single process's is: nothing to resume
    return summary
