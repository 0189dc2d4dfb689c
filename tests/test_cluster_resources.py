"""What the workflow's jobs ask a scheduler for (pipelines/rules/*.smk, pipelines/profiles/slurm): every rule
that runs on a cluster node states its cores, memory and runtime and needs no `--cores`, the rest is local; a
run's request follows its ranks, nodes and device into the sbatch flags of the SLURM executor; a GPU profile's
training runs get the GPU environment. The workflow is read through Snakemake's API, as `snakemake` reads it."""

from __future__ import annotations

import contextlib
import os
import re
from types import SimpleNamespace

import pytest

from tests.conftest import ROOT, run_cli

CONDA_ENV_OF_TRAIN = """
import sys
from tests.test_cluster_resources import load_workflow
with load_workflow(sys.argv[1], cores=1) as w:
    print(w.get_rule("train").conda_env)
"""
CLUSTER_RULES = {"prepare_data", "train", "trace_memory", "trace_memory_ranks", "bench_fp8_linear", "bench_optim"}


@contextlib.contextmanager
def load_workflow(profile: str, **resource_settings):
    """The parsed Snakefile of ``profile`` (its rules and the functions of pipelines/rules/common.smk)."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, OutputSettings, Quietness, ResourceSettings

    with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
        wf = api.workflow(
            resource_settings=ResourceSettings(**resource_settings),
            config_settings=ConfigSettings(config={"profile": profile}),
            snakefile=ROOT / "Snakefile",
            workdir=ROOT,
        )
        yield wf._workflow


@pytest.fixture(scope="module")
def gpu_workflow():
    # as on a cluster's submit node: a number of jobs, no total of cores, no GPU here
    old = {k: os.environ.pop(k, None) for k in ("FP8BENCH_GPUS", "SLURM_JOB_ID", "SLURM_JOBID")}
    os.environ["FP8BENCH_GPUS"] = "0"
    try:
        with load_workflow("gpu", nodes=64) as w:
            yield w
    finally:
        for k, v in old.items():
            os.environ.pop(k, None)
            if v is not None:
                os.environ[k] = v


def test_cluster_rules_state_their_resources_and_the_rest_are_local(gpu_workflow, monkeypatch):
    w = gpu_workflow
    remote = {r.name for r in w.rules if r.name not in w._localrules and not r.norun}
    assert remote == CLUSTER_RULES
    for r in w.rules:
        if r.name in CLUSTER_RULES:
            assert {"mem_mb", "runtime"} <= set(r.resources), (r.name, dict(r.resources))
    # no rule's cores need a total (`threads: workflow.cores` failed under a cluster executor without --cores):
    # here there is none, as under `--profile pipelines/profiles/slurm`, whose executor runs nothing locally
    with pytest.raises(Exception, match="requires a total number of cores"):
        _ = w.cores
    monkeypatch.setattr(type(w), "local_exec", property(lambda self: False))
    assert w.globals["bench_threads"](SimpleNamespace()) == w.globals["BENCH"]["threads"]
    wc = SimpleNamespace(profile="gpu", model="125m", method="fsdp2-bf16", run="seed0")
    assert w.globals["run_threads"](wc) == w.globals["PSET"]["train"]["threads"] * 2


def test_the_gpu_profile_trains_in_the_gpu_environment_and_nothing_else_does(gpu_workflow):
    envs = {r.name: r.conda_env for r in gpu_workflow.rules if r.conda_env}
    assert envs.pop("train") == "../../environment-gpu.yml"
    assert set(envs.values()) == {"../../environment.yml"}
    # the CPU default keeps the CPU environment for training too (read in a process of its own: a second
    # workflow read here would share the first one's globals)
    r = run_cli("-c", CONDA_ENV_OF_TRAIN, "smoke", timeout=300)
    assert r.returncode == 0 and r.stdout.split()[-1] == "../../environment.yml", r.stdout + r.stderr[-2000:]
    assert (ROOT / "environment-gpu.yml").is_file() and (ROOT / "environment-gpu.post-deploy.sh").is_file()
    gpu_env = (ROOT / "environment-gpu.yml").read_text()
    # the same pins as the CPU environment, torch from PyPI (CUDA) rather than the CPU index
    assert "-r requirements.txt" in gpu_env and "download.pytorch.org/whl/cpu" not in gpu_env
    assert "download.pytorch.org/whl/cpu" in (ROOT / "environment.yml").read_text()
    assert "transformer_engine[pytorch]==" in (ROOT / "environment-gpu.post-deploy.sh").read_text()


class _Resources(dict):
    __getattr__ = dict.__getitem__


class _OnNodes:
    """A multi-rank method over ``nodes`` nodes, whatever its own `nodes` option says."""

    def __init__(self, method, nodes: int):
        self._method, self.nodes = method, nodes

    def __getattr__(self, name):
        return getattr(self._method, name)


def sbatch_flags(w, wildcards) -> tuple[dict, str]:
    """The train rule's request for one run, evaluated inside a SLURM job's view of the cluster, and the sbatch
    flags the SLURM executor makes of it."""
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    g = w.globals
    names = ["gpu", "gres", "nodes", "tasks", "mpi", "tasks_per_gpu", "mem_mb"]
    funcs = ["run_gpus", "run_gres", "run_nodes", "run_tasks", "run_mpi", "run_tasks_per_gpu", "run_mem_mb"]
    res = {n: g[f](wildcards) for n, f in zip(names, funcs)}
    res = _Resources({k: v for k, v in res.items() if v is not None}, runtime=g["JOBS"]["train"]["runtime"])
    job = SimpleNamespace(resources=res, threads=g["run_threads"](wildcards), name="train")
    params = dict(run_uuid="u", slurm_logfile="log", comment_str="c", account="-A a", partition="-p p", workdir=None)
    return res, get_submit_command(job, params) + set_gres_string(job)


def test_a_runs_request_follows_its_ranks_nodes_and_device(gpu_workflow, monkeypatch):
    w = gpu_workflow
    g = w.globals
    monkeypatch.setenv("SLURM_JOB_ID", "1")  # the view from inside a job (the submit node's is the same)
    wc = SimpleNamespace(profile="gpu", model="125m", method="bf16-amp", run="seed0")
    # one process on one GPU, on one node
    res, flags = sbatch_flags(w, wc)
    assert res["gpu"] == 1 and res["nodes"] == 1 and "mpi" not in res and "tasks" not in res
    assert "--gpus=1" in flags and "--nodes=1" in flags and "--ntasks=" not in flags and "--gres" not in flags
    assert re.search(r"--mem \d+", flags) and "-t 120" in flags
    threads = g["PSET"]["train"]["threads"]
    assert threads == 4  # the gpu profile's (a run's cores follow its own train settings)
    # eight ranks on one node: --gpus=8 there, cores for every rank
    from methods.registry import get_method

    ddp8 = get_method("ddp-bf16", ranks=8)
    monkeypatch.setitem(g, "run_method", lambda name: _OnNodes(ddp8, 1))
    res, flags = sbatch_flags(w, wc)
    assert f"--cpus-per-task={8 * threads}" in flags and "--gpus=8" in flags and "--nodes=1" in flags
    one_node_mem = res["mem_mb"]
    # eight ranks on two nodes: one task (its torchrun) per node with 4 GPUs and 4 ranks' cores and memory each;
    # the command runs in the job itself (mpi) and starts its nodes with srun
    monkeypatch.setitem(g, "run_method", lambda name: _OnNodes(ddp8, 2))
    res, flags = sbatch_flags(w, wc)
    assert res["mpi"] == "srun" and res["gpu"] == 0
    assert "--nodes=2" in flags and "--ntasks=2" in flags and "--gres=gpu:4" in flags
    assert f"--cpus-per-task={4 * threads}" in flags and "--gpus=" not in flags and "--ntasks-per-gpu" not in flags
    assert res["mem_mb"] < one_node_mem  # memory per node: half the ranks
    # locally (no SLURM, no cluster executor) every rank is on this machine and counts against the gpu total
    monkeypatch.delenv("SLURM_JOB_ID")
    monkeypatch.setattr(type(w), "local_exec", property(lambda self: True))
    assert g["run_gpus"](wc) == 8 and g["run_threads"](wc) == 8 * threads and g["run_gres"](wc) is None


def test_the_slurm_profile_asks_for_whole_nodes_for_the_benchmarks_and_no_cores():
    import yaml

    prof = yaml.safe_load((ROOT / "pipelines" / "profiles" / "slurm" / "config.yaml").read_text())
    assert prof["executor"] == "slurm" and "cores" not in prof
    for rule in ("bench_fp8_linear", "bench_optim"):
        assert prof["set-resources"][rule]["slurm_extra"] == "'--exclusive'"
    # every rule states its own memory and runtime: the profile sets none by default
    assert not {"mem_mb", "runtime"} & set(prof["default-resources"])
