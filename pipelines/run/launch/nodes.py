"""A multi-rank run over several nodes (the method's ``nodes`` option): the commands that start one torchrun
agent per node, each running an equal share of the ranks (``--nproc-per-node``).

- In a SLURM job of at least that many nodes: one command, ``srun -N <nodes> --ntasks-per-node=1
  --kill-on-bad-exit=1 python -m torch.distributed.run --nnodes <nodes> --rdzv-backend c10d --rdzv-endpoint
  <first node>:<port> --rdzv-id <job>-<port> ...``. SLURM starts the agents, the agents meet at the first node
  of the job (``scontrol show hostnames`` of its node list, at the address SLURM reaches it by) and start
  their ranks; no ssh, no hostfile. The node list is read from the environment, or from ``scontrol show
  job`` where a job step was started without it (Snakemake's job-step executor clears it).
- Anywhere else (for testing, or a job with too few nodes): the same agents on this machine, each started
  here, meeting at 127.0.0.1 on a free port with explicit node ranks (torchrun's static rendezvous).

Either way the global rank is ``node rank * ranks per node + local rank`` and each rank trains on the rows
its global rank names, so a run over N nodes logs what the same ranks on one node log, bit for bit.
DeepSpeed ZeRO runs under torchrun's environment like any multi-rank method; DeepSpeed's own launcher
(``FP8BENCH_LAUNCHER=deepspeed``) starts ranks on one node only.
"""

from __future__ import annotations

import os
import subprocess
import sys

from pipelines.run.launch.devices import under_slurm

TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


def _scontrol(*args: str, env) -> str:
    r = subprocess.run(["scontrol", *args], env=dict(env), capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"scontrol {' '.join(args)} failed: {(r.stderr or r.stdout).strip()}")
    return r.stdout


def _fields(text: str) -> dict:
    """``Key=Value`` pairs of one line of ``scontrol show ... -o``."""
    return dict(tok.split("=", 1) for tok in text.split() if "=" in tok)


def job_hosts(env) -> list[str]:
    """The nodes of this SLURM job, in SLURM's order (its first node is the batch host)."""
    job = env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID")
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodelist:
        nodelist = _fields(_scontrol("show", "job", "-o", str(job), env=env)).get("NodeList", "")
    if not nodelist or nodelist == "(null)":
        return []
    return [h for h in _scontrol("show", "hostnames", nodelist, env=env).split() if h]


def node_address(host: str, env) -> str:
    """The address SLURM reaches ``host`` at (its NodeAddr; the name itself where SLURM does not say)."""
    try:
        addr = _fields(_scontrol("show", "node", "-o", host, env=env)).get("NodeAddr", "")
    except RuntimeError:
        addr = ""
    return addr or host


def srun_command(
    nodes: int, ranks_per_node: int, threads: int, port: int, script: list[str], extra: list[str], env
) -> list[str]:
    """The command that starts the run's agents on the job's first ``nodes`` nodes (one task each)."""
    hosts = job_hosts(env)
    job = env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID")
    endpoint = f"{node_address(hosts[0], env)}:{port}"
    return [
        "srun",
        "-N",
        str(nodes),
        "--ntasks-per-node=1",
        "--kill-on-bad-exit=1",
        f"--cpus-per-task={threads}",
        *TORCHRUN,
        "--nnodes",
        str(nodes),
        "--nproc-per-node",
        str(ranks_per_node),
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        endpoint,
        "--rdzv-id",
        f"fp8bench-{job}-{port}",
        "--monitor-interval=0.5",
        *extra,
        "-m",
        *script,
    ]


def local_agent_commands(
    nodes: int, ranks_per_node: int, port: int, script: list[str], extra: list[str]
) -> list[list[str]]:
    """One torchrun per node, all on this machine, node ranks stated (static rendezvous at 127.0.0.1)."""
    return [
        [
            *TORCHRUN,
            "--nnodes",
            str(nodes),
            "--nproc-per-node",
            str(ranks_per_node),
            "--node-rank",
            str(i),
            "--rdzv-backend",
            "static",
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            str(port),
            "--monitor-interval=0.5",
            *extra,
            "-m",
            *script,
        ]
        for i in range(nodes)
    ]


def slurm_has_nodes(nodes: int, env) -> bool:
    """Whether this is a SLURM job with at least ``nodes`` nodes to start agents on."""
    if not under_slurm(env):
        return False
    try:
        return len(job_hosts(env)) >= nodes
    except (OSError, RuntimeError, subprocess.SubprocessError):
        return False


def agent_commands(
    world_size: int, nodes: int, threads: int, port: int, script: list[str], extra: list[str], env=None
) -> tuple[list[list[str]], bool]:
    """(the commands this machine starts, whether SLURM starts the agents): one srun in a SLURM job of enough
    nodes, else one torchrun per node here. ``threads``: the cores of one node (srun's --cpus-per-task)."""
    env = os.environ if env is None else env
    if nodes < 1 or world_size % nodes:
        divisors = ", ".join(str(d) for d in range(1, world_size + 1) if world_size % d == 0)
        raise ValueError(f"{world_size} ranks do not split evenly over {nodes} nodes; valid nodes: one of {divisors}")
    per_node = world_size // nodes
    if slurm_has_nodes(nodes, env):
        return [srun_command(nodes, per_node, threads, port, script, extra, env)], True
    return local_agent_commands(nodes, per_node, port, script, extra), False
