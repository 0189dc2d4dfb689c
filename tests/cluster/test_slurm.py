"""The workflow on a real SLURM (`make test-cluster`; left out of `make test`): the local two-node cluster of
pipelines/cluster/slurm-local.sh, the `cluster` profile through `snakemake --profile pipelines/profiles/slurm`,
then sacct: every training run was a SLURM job of the train rule, and the run over two nodes had both; its
losses equal the same run launched here on one node, bit for bit. The cluster is stopped at the end.

Where the cluster cannot start here (not root, no packages) the test is skipped with the script's reason.
Settings: FP8BENCH_SLURM_DIR / FP8BENCH_SLURM_PORT_BASE (a second cluster beside another), and
FP8BENCH_SLURM_CPUS (default here 4 per fake node, so that every training run of the profile starts at once).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT

SCRIPT = ROOT / "pipelines" / "cluster" / "slurm-local.sh"
OVERLAY = ROOT / "tests" / "cluster" / "profile"
WORKFLOW_FILES = [
    "Snakefile",
    "pipelines",
    "environment.yml",
    "environment-gpu.yml",
    "environment-gpu.post-deploy.sh",
    "requirements.txt",
]
# guards: a hung workflow (the SLURM executor ignores SIGTERM when sacct fails) is killed, not waited for
WORKFLOW_TIMEOUT_S = 420
TWIN_TIMEOUT_S = 240


def _script(command: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), command], env=env, capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def cluster():
    """The local SLURM, started (or found running) and stopped afterwards; yields the clients' environment."""
    env = {**os.environ, "FP8BENCH_SLURM_CPUS": os.environ.get("FP8BENCH_SLURM_CPUS", "4")}
    t0 = time.perf_counter()
    r = _script("start", env)
    if r.returncode == 3:
        pytest.skip(f"no local SLURM here: {(r.stderr or r.stdout).strip()}")
    assert r.returncode == 0, r.stdout + r.stderr
    print(f"\nlocal SLURM started in {time.perf_counter() - t0:.0f} s", flush=True)
    try:
        exports = _script("env", env).stdout
        for line in exports.splitlines():  # export NAME=VALUE (PATH=<wrappers>:$PATH)
            name, value = line.removeprefix("export ").split("=", 1)
            env[name] = value.replace("$PATH", env["PATH"])
        yield env
    finally:
        print(_script("stop", env).stdout.strip(), flush=True)


def sacct(env: dict, *args: str, workdir: Path | None = None) -> list[dict]:
    """sacct's records (all users, since midnight), those of jobs started in ``workdir`` where given (the
    cluster may have run other workflows before)."""
    fields = ["JobID", "Comment", "NNodes", "NTasks", "AllocTRES", "Timelimit", "State", "WorkDir"]
    r = subprocess.run(
        ["sacct", "-a", "-P", "-n", "-o", ",".join(fields), *args], env=env, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    rows = [dict(zip(fields, ln.split("|"))) for ln in r.stdout.splitlines() if ln.strip()]
    return [j for j in rows if workdir is None or Path(j["WorkDir"]) == workdir]


def losses(run: Path) -> list:
    """Every train step's and eval's loss of a run, in order (what must reproduce bit for bit)."""
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        ev = json.loads(line)
        if ev["event"] == "train_step":
            out.append(("train", ev["step"], ev["loss"], ev.get("batch_hash")))
        elif ev["event"] == "eval":
            out.append(("eval", ev["step"], ev["val_loss"]))
    return out


def run_start(run: Path) -> dict:
    first = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert first["event"] == "run_start"
    return first


def test_the_cluster_profile_runs_as_slurm_jobs(cluster, tmp_path):
    env = {**cluster, "PYTHONPATH": str(ROOT), "PATH": f"{cluster['PATH']}:{Path(sys.executable).parent}"}
    env.pop("SLURM_JOB_ID", None)
    env.pop("SLURM_JOBID", None)
    wd = tmp_path / "wf"
    wd.mkdir()
    for name in WORKFLOW_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, wd / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, wd / name)
    from pipelines.run import config as config_mod

    cfg = config_mod.load()
    runs = config_mod.runs(cfg, "cluster")
    variants = config_mod.profile_settings(cfg, "cluster")["variants"]
    two_nodes = [name for name, v in variants.items() if v.get("options", {}).get("nodes", 1) >= 2]

    # The command docs/cluster.md gives, with the local cluster's partition and account (the overlay) and the
    # training runs' outputs as targets (the report's figures and tables would add minutes here, on the
    # submitting machine, and say nothing about the cluster).
    t0 = time.perf_counter()
    targets = [
        "results/summary.csv",
        "results/memory_traced.csv",
        "results/bench/fp8_linear.csv",
        "results/bench/optim.csv",
    ]
    cmd = [
        "timeout",
        "-s",
        "KILL",
        str(WORKFLOW_TIMEOUT_S),
        sys.executable,
        "-m",
        "snakemake",
        *targets,
        "--profile",
        "pipelines/profiles/slurm",
        "--workflow-profile",
        str(OVERLAY),
        "--config",
        "profile=cluster",
    ]
    r = subprocess.run(cmd, cwd=wd, env=env, capture_output=True, text=True)
    out = r.stdout + r.stderr
    print(f"workflow on SLURM: {time.perf_counter() - t0:.0f} s", flush=True)
    assert r.returncode == 0, out[-6000:]

    # every training run was a SLURM job of the train rule (its run_start records the job; sacct the rule)
    jobs = {j["JobID"]: j for j in sacct(env, "-X", workdir=wd)}
    train_jobs = {i: j for i, j in jobs.items() if j["Comment"].startswith("rule_train_wildcards_")}
    assert len(train_jobs) == len(runs), (runs, train_jobs)
    run_dirs = {}
    for model, method, rid in runs:
        run = wd / "results" / "runs" / "cluster" / model / method / rid
        assert json.loads((run / "summary.json").read_text())["status"] == "ok", (run / "train.log").read_text()[-3000:]
        job_id = run_start(run)["environment"]["slurm_job_id"]
        job = train_jobs.get(job_id)
        assert job is not None, f"{method}: ran in SLURM job {job_id}, which is not a train job: {jobs}"
        assert job["Comment"] == f"rule_train_wildcards_cluster_{model}_{method}_{rid}" and job["State"] == "COMPLETED"
        assert job["Timelimit"] == "00:15:00"  # jobs.train.runtime of the profile reached sbatch
        run_dirs[method] = run
    # the corpus, the memory trace and the benchmarks were jobs too; the light rules were not
    rules = sorted(j["Comment"].split("_wildcards_")[0] for j in jobs.values())
    assert rules == sorted(
        ["rule_prepare_data", "rule_trace_memory", "rule_bench_fp8_linear", "rule_bench_optim"]
        + ["rule_train"] * len(runs)
    ), rules
    # a timing benchmark had its node to itself (--exclusive: every CPU of the node, though it asked for one)
    node_cpus = int(
        subprocess.run(
            ["sinfo", "-h", "-N", "-n", "n1", "-o", "%c"], env=env, capture_output=True, text=True, timeout=60
        ).stdout.split()[0]
    )
    for j in jobs.values():
        if j["Comment"].startswith("rule_bench_"):
            assert f"cpu={node_cpus}," in j["AllocTRES"] and j["State"] == "COMPLETED", j
    assert "cpu=2" in train_jobs[run_start(run_dirs["ddp-bf16"])["environment"]["slurm_job_id"]]["AllocTRES"]

    # the same two-rank run launched here, on this machine, one node: ddp-bf16's config
    twin_cfg = json.loads((run_dirs["ddp-bf16"] / "config.json").read_text())
    twin = tmp_path / "twin"
    t0 = time.perf_counter()
    r = subprocess.run(
        [
            "timeout",
            "-s",
            "KILL",
            str(TWIN_TIMEOUT_S),
            sys.executable,
            "-m",
            "pipelines.train",
            "--config",
            str(run_dirs["ddp-bf16"] / "config.json"),
            "--out",
            str(twin),
            "--threads",
            "2",
        ],
        cwd=wd,
        env={**env, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
    )
    print(f"local twin (1 node x 2 ranks): {time.perf_counter() - t0:.0f} s", flush=True)
    assert r.returncode == 0 and json.loads((twin / "summary.json").read_text())["status"] == "ok", r.stderr[-3000:]
    assert twin_cfg["method_options"].get("nodes", 1) == 1
    local = losses(twin)
    assert len(local) == 8 + 2 and all(v[2] is not None for v in local)  # 8 steps, evals at 0 and 8
    assert losses(run_dirs["ddp-bf16"]) == local, "the SLURM job's run differs from the same run launched here"

    # the run over two nodes (the profile's ddp-bf16-2n: ddp-bf16's two ranks, one torchrun per node under srun)
    assert two_nodes, "profile cluster has no run over two nodes (a variant with the `nodes` option)"
    for name in two_nodes:
        run = run_dirs[name]
        job_id = run_start(run)["environment"]["slurm_job_id"]
        assert jobs[job_id]["NNodes"] == "2", jobs[job_id]
        summary = json.loads((run / "summary.json").read_text())
        assert summary["world_size"] == 2, summary
        # its ranks: one task on each node (a step of the job over both nodes)
        steps = [s for s in sacct(env, "-j", job_id) if "." in s["JobID"] and s["JobID"].split(".")[1].isdigit()]
        assert any(s["NNodes"] == "2" and s["NTasks"] == "2" and s["State"] == "COMPLETED" for s in steps), steps
        assert losses(run) == local, f"{name} on two nodes differs from the run on one node"
