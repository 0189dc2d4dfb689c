"""Runs over several nodes (the multi-rank methods' ``nodes`` option, pipelines.run.launch.nodes) and runs that
leave nothing behind (pipelines.run.launch.lifetime), on this machine: two torchrun agents on 127.0.0.1 stand
for two nodes. A run over 2 nodes x 1 rank logs what 1 node x 2 ranks logs, bit for bit: FSDP2 from start to
end, and ZeRO-2 through a SIGKILL to the 2-node run's process group, which leaves no process of it behind and
whose rerun resumes to the uninterrupted 1-node result. The srun command a SLURM job runs is checked as a
command line, under a fake SLURM environment (the real one: tests/cluster/test_slurm.py)."""

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from methods.registry import get_method
from pipelines.run import launch
from tests.conftest import ROOT, train_argv
from tests.scaleout.test_resume_ranks import committed_step, logged_steps, trajectory

SCRIPT = ["pipelines.train", "--method", "ddp-bf16"]
STEPS, EVERY = 6, 2


def env(**extra):
    base = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_JOB_ID", "SLURM_JOBID")
    }
    return {**base, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra}


def command(configfile, method, out, nodes=1, steps=None):
    cmd = [sys.executable, *train_argv(configfile, method, out, "--threads", 2)]
    if nodes > 1:
        cmd += ["--method-option", f"nodes={nodes}"]
    return cmd + (["--steps", str(steps)] if steps else [])


# -- checks before any work ----------------------------------------------------------------------------------


def test_ranks_must_split_evenly_over_the_nodes(engine_configfile, tmp_path):
    assert get_method("zero2-bf16", ranks=4, nodes=2).ranks_per_node == 2
    with pytest.raises(
        ValueError,
        match=r"option nodes = 3 does not divide its 4 ranks evenly; valid: nodes one "
        r"of 1, 2, 4, or ranks a multiple of 3",
    ):
        get_method("fsdp2-bf16", ranks=4, nodes=3)
    with pytest.raises(ValueError, match=r"option nodes = 0; valid: a whole number >= 1"):
        get_method("ddp-bf16", nodes=0)
    out = tmp_path / "run"
    r = subprocess.run(
        [*command(engine_configfile, "zero2-bf16", out), "--method-option", "nodes=3"],
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (
        r.returncode == 2
        and "option nodes = 3 does not divide its 2 ranks evenly; valid: nodes one of 1, 2" in r.stderr
    ), r.stderr[-2000:]
    assert not out.exists()  # refused before any work


def test_deepspeeds_launcher_is_refused_for_a_run_over_several_nodes():
    with pytest.raises(ValueError, match="a run over 2 nodes starts its ranks with torchrun"):
        launch.agent_commands(2, 2, 2, SCRIPT, env={"FP8BENCH_LAUNCHER": "deepspeed"})


def _fake_scontrol(bin_dir: Path, nodelist: str, hosts: list[str], addr: str) -> None:
    """A ``scontrol`` that answers as a job on ``hosts`` would: hostnames, the job's NodeList, a node's address."""
    bin_dir.mkdir()
    script = bin_dir / "scontrol"
    script.write_text(f"""#!/bin/sh
echo "$@" >> "{bin_dir}/calls"
case "$1 $2" in
  "show hostnames") [ "$3" = "{nodelist}" ] || exit 1; printf '%s\\n' {" ".join(hosts)} ;;
  "show job") echo "JobId=$4 JobName=x NodeList={nodelist} NumNodes={len(hosts)} BatchHost={hosts[0]}" ;;
  "show node") echo "NodeName=$4 Arch=x86_64 NodeAddr={addr} NodeHostName=$4" ;;
  *) exit 1 ;;
esac
""")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


def test_under_slurm_one_srun_starts_a_torchrun_per_node(tmp_path):
    bin_dir = tmp_path / "bin"
    _fake_scontrol(bin_dir, "gpu[07-08]", ["gpu07", "gpu08"], "10.0.0.7")
    slurm = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NODELIST": "gpu[07-08]",
        "SLURM_NNODES": "2",
        "FP8BENCH_LAUNCHER_ARGS": "--max-restarts 0",
    }
    [cmd] = launch.agent_commands(8, 2, 16, SCRIPT, env=slurm)
    assert cmd[:6] == ["srun", "-N", "2", "--ntasks-per-node=1", "--kill-on-bad-exit=1", "--cpus-per-task=16"]
    assert cmd[6:9] == [sys.executable, "-m", "torch.distributed.run"]

    def arg(name):
        return cmd[cmd.index(name) + 1]

    assert arg("--nnodes") == "2" and arg("--nproc-per-node") == "4" and arg("--rdzv-backend") == "c10d"
    host, port = arg("--rdzv-endpoint").split(":")
    assert host == "10.0.0.7" and 0 < int(port) < 65536  # the first node, at the address SLURM reaches it by
    assert arg("--rdzv-id") == f"fp8bench-4242-{port}"
    assert "--node-rank" not in cmd and "--standalone" not in cmd  # c10d gives the agents their node ranks
    assert cmd[cmd.index("--max-restarts") :][:2] == ["--max-restarts", "0"]
    assert cmd[-4:] == ["-m", *SCRIPT]
    assert launch.ranks_here(8, 2, env=slurm) == 4  # each node's cores are shared by its 4 ranks only
    # a job step started without the node list (Snakemake's job-step executor clears SLURM_*): asked of scontrol
    bare = {k: v for k, v in slurm.items() if k not in ("SLURM_JOB_NODELIST", "SLURM_NNODES")}
    assert launch.agent_commands(8, 2, 16, SCRIPT, env=bare)[0][:3] == ["srun", "-N", "2"]
    assert "show job -o 4242" in (bin_dir / "calls").read_text()
    # a job of too few nodes (or no job): the agents on this machine, node ranks stated
    bin_one = tmp_path / "one"
    _fake_scontrol(bin_one, "gpu07", ["gpu07"], "10.0.0.7")
    one = {**slurm, "PATH": f"{bin_one}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "gpu07", "SLURM_NNODES": "1"}
    local = launch.agent_commands(8, 2, 16, SCRIPT, env=one)
    assert len(local) == 2 and all(c[0] == sys.executable for c in local)
    assert [c[c.index("--node-rank") + 1] for c in local] == ["0", "1"]
    assert {c[c.index("--master-addr") + 1] for c in local} == {"127.0.0.1"}
    assert len({c[c.index("--master-port") + 1] for c in local}) == 1 and launch.ranks_here(8, 2, env=one) == 8
    # one node: the single-node command, unchanged
    assert "--standalone" in launch.agent_commands(8, 1, 16, SCRIPT, env=slurm)[0]


def prepared(configfile: Path) -> Path:
    """The config's corpus, prepared once here before runs that start together (they would race at it)."""
    from pipelines.run import config as config_mod
    from pipelines.run.data import prepare

    data = config_mod.resolve_run(config_mod.load(configfile), "cpu", "tiny", "zero2-bf16", 0)["data"]
    prepare(data, data["dir"])
    return configfile


# -- two nodes on this machine equal one node, bit for bit ---------------------------------------------------


# ZeRO-2 over two nodes is held to one node by the killed-and-resumed run below (same ranks, same bits).
def test_two_fsdp2_nodes_of_one_rank_equal_one_node_of_two(engine_configfile, tmp_path):
    method = "fsdp2-bf16"
    prepared(engine_configfile)
    one, two = tmp_path / "one", tmp_path / "two"
    procs = [
        subprocess.Popen(
            command(engine_configfile, method, out, nodes=n, steps=3),
            cwd=ROOT,
            env=env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for out, n in ((one, 1), (two, 2))
    ]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs[0][-3000:] + errs[1][-3000:]
    assert errs[1].count("-m torch.distributed.run --nnodes 2 --nproc-per-node 1 --node-rank") == 2
    steps_1, evals_1, _ = trajectory(one)
    steps_2, evals_2, events = trajectory(two)
    assert len(steps_1) == 3 and steps_2 == steps_1  # losses, grad norms and batches, bit for bit
    assert evals_2 == evals_1
    start = next(e for e in events if e["event"] == "run_start")
    assert start["world_size"] == 2 and start["method_options"]["nodes"] == 2
    assert json.loads((two / "summary.json").read_text())["status"] == "ok"


# -- kills ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resume_config(tmp_path_factory) -> Path:
    from tests.conftest import write_small_config

    return prepared(
        write_small_config(
            tmp_path_factory.mktemp("nodes_resume"),
            steps=STEPS,
            eval_every=4,
            eval_tokens=256,
            warmup_steps=2,
            timing_warmup_steps=1,
            checkpoint_every=EVERY,
            telemetry_every=5,
        )
    )


@pytest.fixture(scope="module")
def uninterrupted(resume_config, tmp_path_factory) -> Path:
    """zero2-bf16, 1 node x 2 ranks, never stopped: what every killed and resumed run must end as."""
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    r = subprocess.run(
        command(resume_config, "zero2-bf16", out), cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def processes_of(out: Path) -> list[tuple[int, str]]:
    """Every process on this machine whose command line names the run's folder."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(out) in cmdline:
            found.append((int(pid), cmdline[:200]))
    return found


def kill_group_mid_way(cmd, out: Path) -> subprocess.Popen:
    """Start the run in a process group of its own and SIGKILL that group once a checkpoint is committed (step
    2) and a step past it logged; only the launcher is in the group (the agents have sessions of their own)."""
    p = subprocess.Popen(
        cmd, cwd=ROOT, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline = time.time() + 240
    try:
        while not (committed_step(out) >= 2 and logged_steps(out) >= 3) and time.time() < deadline:
            assert p.poll() is None, f"run ended before it could be killed: {p.stderr.read()[-3000:]}"
            time.sleep(0.05)
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    assert 2 <= committed_step(out) < STEPS and logged_steps(out) < STEPS, "the kill did not land mid-way"
    return p


def wait_until_gone(out: Path, within_s: float) -> list:
    deadline = time.time() + within_s
    while (left := processes_of(out)) and time.time() < deadline:
        time.sleep(0.1)
    return left


def rerun_resumes_to(cmd, out: Path, ref: Path) -> str:
    """Rerun the killed run: it resumes and ends as ``ref`` did, bit for bit. Returns the rerun's stderr."""
    r = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming after step" in r.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "ok" and s["steps"] == STEPS and s["world_size"] == 2, s
    steps_k, evals_k, events = trajectory(out)
    steps_r, evals_r, _ = trajectory(ref)
    assert steps_k == steps_r and evals_k == evals_r  # losses, grad norms and batches, bit for bit
    assert [e[0] for e in steps_k] == list(range(STEPS))  # no step lost or logged twice
    kinds = [e["event"] for e in events]
    assert kinds.count("run_start") == 1 and kinds.count("resume") == 1 and kinds.count("run_stop") == 1
    start = next(e for e in events if e["event"] == "run_start")
    assert start["world_size"] == 2 and start["method_options"]["nodes"] == 2
    assert not (out / "checkpoints").exists()
    return r.stderr


def test_a_two_node_run_sigkilled_mid_way_leaves_nothing_and_resumes_bit_for_bit(
    resume_config, uninterrupted, tmp_path
):
    """SIGKILL to the launcher's process group (the agents have sessions of their own and die with it); the
    rerun over 2 nodes x 1 rank resumes to what 1 node x 2 ranks logged uninterrupted."""
    out = tmp_path / "killed2n"
    cmd = command(resume_config, "zero2-bf16", out, nodes=2)
    kill_group_mid_way(cmd, out)
    left = wait_until_gone(out, 10)
    assert not left, f"processes of the killed run still alive 10 s after the kill: {left}"
    assert not (out / "summary.json").exists()
    err = rerun_resumes_to(cmd, out, uninterrupted)
    assert err.count("-m torch.distributed.run --nnodes 2 --nproc-per-node 1 --node-rank") == 2


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper is dead)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


PARENT = """
import os, subprocess, sys
from pipelines.run.launch import lifetime
child = subprocess.Popen(["sleep", "60"], start_new_session=True, preexec_fn=lifetime.agent_preexec(os.getpid()))
print(child.pid, flush=True)
child.wait()
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG) is Linux's")
def test_an_agent_dies_with_its_launcher_and_never_outlives_a_launcher_already_gone():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], cwd=ROOT, env=env(), stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    assert Path(f"/proc/{child}").exists()
    parent.kill()  # SIGKILL: no handler of the parent runs
    parent.wait()
    deadline = time.time() + 10
    while alive(child):
        assert time.time() < deadline, "the child outlived its killed parent"
        time.sleep(0.05)
    # a parent that died before the child asked the kernel (here: the child expects another parent): it dies at once
    from pipelines.run.launch import lifetime

    orphan = subprocess.Popen(["sleep", "60"], preexec_fn=lifetime.agent_preexec(os.getpid() + 1_000_000))
    assert orphan.wait(timeout=10) == -signal.SIGKILL
