"""One GPU per run on a machine of several (pipelines/run/launch/devices.py and the train rule's `gpu`
resource): the claims never overlap, a claim waits for a free device, SLURM's assignment is left alone; and the
real workflow on a stated count of 2 GPUs runs 3 runs never more than 2 at once, never two on one index."""

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from pipelines.run.launch import devices
from tests.conftest import ROOT, run_cli, write_small_config

SHOW = [sys.executable, "-c", "import os; print('visible=' + repr(os.environ.get('CUDA_VISIBLE_DEVICES')))"]


def test_the_pool_is_the_stated_count_else_the_visible_devices():
    assert devices.pool({"FP8BENCH_GPUS": "3", "CUDA_VISIBLE_DEVICES": "5"}) == ["0", "1", "2"]
    assert devices.pool({"FP8BENCH_GPUS": "0"}) == []
    assert devices.pool({"CUDA_VISIBLE_DEVICES": "2, 5"}) == ["2", "5"]
    assert devices.pool({"CUDA_VISIBLE_DEVICES": ""}) == []
    with pytest.raises(devices.DeviceError, match="FP8BENCH_GPUS='two'; valid: a whole number of GPUs >= 0"):
        devices.pool({"FP8BENCH_GPUS": "two"})


def test_claims_never_overlap_and_a_released_index_is_claimed_again(tmp_path):
    pool = ["0", "1", "2"]
    a, fds_a = devices.try_claim(2, pool, tmp_path)
    b, fds_b = devices.try_claim(1, pool, tmp_path)
    assert a == ["0", "1"] and b == ["2"]
    # all or nothing: one index is free, two are asked for -> nothing is held
    assert devices.try_claim(2, pool, tmp_path) is None
    assert devices.try_claim(1, pool, tmp_path) is None
    os.close(fds_a[1])  # index 1 released (the run holding it ended)
    c, fds_c = devices.try_claim(1, pool, tmp_path)
    assert c == ["1"]
    for fd in [fds_a[0], *fds_b, *fds_c]:
        os.close(fd)
    assert devices.try_claim(3, pool, tmp_path)[0] == pool


def test_a_run_asking_for_more_gpus_than_the_machine_has_is_refused(tmp_path):
    env = {"FP8BENCH_GPUS": "2", "FP8BENCH_GPU_LOCKS": str(tmp_path), "SLURM_JOB_ID": ""}
    r = run_cli("-m", "pipelines.run.launch.devices", "3", "--", *SHOW, env=env, timeout=60)
    assert r.returncode == 2 and "the run needs 3 GPUs but this machine has 2 (0, 1)" in r.stderr, r.stderr


def test_the_command_sees_its_claimed_gpus_none_or_slurms_assignment(tmp_path):
    locks = {"FP8BENCH_GPUS": "2", "FP8BENCH_GPU_LOCKS": str(tmp_path), "SLURM_JOB_ID": ""}
    r = run_cli("-m", "pipelines.run.launch.devices", "2", "--", *SHOW, env=locks, timeout=60)
    assert r.returncode == 0 and "visible='0,1'" in r.stdout and "claimed GPU(s) 0,1" in r.stderr, r.stderr
    r = run_cli(
        "-m", "pipelines.run.launch.devices", "0", "--", *SHOW, env={**locks, "CUDA_VISIBLE_DEVICES": "1"}, timeout=60
    )
    assert r.returncode == 0 and "visible=''" in r.stdout, r.stdout + r.stderr
    # inside a SLURM job the scheduler's choice stands, whatever the count asked for
    r = run_cli(
        "-m",
        "pipelines.run.launch.devices",
        "1",
        "--",
        *SHOW,
        env={**locks, "SLURM_JOB_ID": "42", "CUDA_VISIBLE_DEVICES": "3"},
        timeout=60,
    )
    assert r.returncode == 0 and "visible='3'" in r.stdout and "SLURM job 42" in r.stderr, r.stdout + r.stderr
    # the exit code is the command's (the wrapper became the command)
    r = run_cli(
        "-m",
        "pipelines.run.launch.devices",
        "1",
        "--",
        sys.executable,
        "-c",
        "raise SystemExit(7)",
        env=locks,
        timeout=60,
    )
    assert r.returncode == 7


def test_a_claim_waits_until_the_run_holding_the_gpus_has_ended(tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "FP8BENCH_GPUS": "2",
        "FP8BENCH_GPU_LOCKS": str(tmp_path),
        "SLURM_JOB_ID": "",
    }
    stamp = "import os, time; print(os.environ['CUDA_VISIBLE_DEVICES'], time.time(), flush=True)"
    first = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipelines.run.launch.devices",
            "2",
            "--",
            sys.executable,
            "-c",
            stamp + "; time.sleep(3); print(time.time(), flush=True)",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # the second starts once the first holds both GPUs
    deadline = time.time() + 30
    while time.time() < deadline:
        probe = devices.try_claim(1, ["0", "1"], tmp_path)
        if probe is None:
            break
        for fd in probe[1]:  # a probe that got one lets go of it at once
            os.close(fd)
        time.sleep(0.05)
    second = subprocess.run(
        [sys.executable, "-m", "pipelines.run.launch.devices", "1", "--", sys.executable, "-c", stamp],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    out1, err1 = first.communicate(timeout=60)
    assert first.returncode == 0 and second.returncode == 0, err1 + second.stderr
    first_end = float(out1.split()[-1])
    index, second_start = second.stdout.split()
    assert "waiting for 1 free GPU(s) of 0,1" in second.stderr
    assert index in ("0", "1") and float(second_start) >= first_end


# --- the workflow: a stated count of 2 GPUs, 3 runs ------------------------------------------------------------

WORKFLOW_FILES = [
    "Snakefile",
    "pipelines",
    "environment.yml",
    "environment-gpu.yml",
    "environment-gpu.post-deploy.sh",
    "requirements.txt",
]


def _train_processes(workdir: Path) -> dict[int, str | None]:
    """The training commands of this workflow alive now: pid -> the CUDA_VISIBLE_DEVICES it runs with. A
    process a run forks (e.g. to start a subprocess) is the run's, not another run: only those whose parent
    is no training process count."""
    found, parents = {}, {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            if cmd[1:3] != [b"-m", b"pipelines.train"] or str(workdir) not in (proc / "cwd").resolve().as_posix():
                continue
            env = dict(kv.split(b"=", 1) for kv in (proc / "environ").read_bytes().split(b"\0") if b"=" in kv)
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        visible = env.get(b"CUDA_VISIBLE_DEVICES")
        found[int(proc.name)] = None if visible is None else visible.decode()
        parents[int(proc.name)] = ppid
    return {pid: v for pid, v in found.items() if parents[pid] not in found}


@pytest.mark.skipif(not Path("/proc/self/environ").is_file(), reason="needs /proc to watch the runs")
def test_three_runs_on_two_gpus_never_share_one(tmp_path):
    """The real train rule (device `auto`: a GPU where the machine has one) with FP8BENCH_GPUS=2 and 4 cores:
    the workflow's `gpu` total holds it to 2 runs at once, and each run sees one index of its own. Watched from
    outside, every 20 ms, in the processes themselves."""
    for name in WORKFLOW_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, tmp_path / name)
    cfg_path = write_small_config(
        tmp_path,
        device="auto",
        steps=6,
        eval_every=6,
        eval_tokens=512,
        warmup_steps=1,
        timing_warmup_steps=1,
        telemetry_every=6,
        checkpoint_every=0,
    )
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["profiles"]["smoke"].update(methods=["fp32"], seeds=[0, 1, 2])
    cfg["results_dir"] = "results"
    cfg_path.write_text(yaml.safe_dump(cfg))
    summaries = [f"results/runs/smoke/tiny/fp32/seed{s}/summary.json" for s in range(3)]
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "FP8BENCH_GPUS": "2",
        "FP8BENCH_GPU_LOCKS": str(tmp_path / "locks"),
        "SLURM_JOB_ID": "",
        "OMP_NUM_THREADS": "1",
    }
    samples: list[dict[int, str | None]] = []
    done = threading.Event()

    def watch():
        while not done.is_set():
            samples.append(_train_processes(tmp_path))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "snakemake",
                *summaries,
                "--cores",
                "4",
                "--configfile",
                "pipelines/config.yaml",
                str(cfg_path),
                "--config",
                "profile=smoke",
            ],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        done.set()
        watcher.join()
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    busy = [s for s in samples if s]
    assert busy, "no training process was seen"
    for s in busy:
        assert len(s) <= 2, f"more than 2 runs at once on 2 GPUs: {s}"
        visible = list(s.values())
        assert all(v in ("0", "1") for v in visible) and len(set(visible)) == len(visible), f"shared GPU: {s}"
    assert max(len(s) for s in busy) == 2, "the two GPUs were never both in use"
    for path in summaries:
        run = tmp_path / Path(path).parent
        assert json.loads((run / "summary.json").read_text())["status"] == "ok"
        start = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
        assert start["event"] == "run_start" and start["environment"]["cuda_visible_devices"] in ("0", "1")
        log = (run / "train.log").read_text()
        # Snakemake's `gpu` total held the runs back, not the locks: no run had to wait for a device
        assert "devices: claimed GPU(s) " in log and "waiting for" not in log, log[:2000]
