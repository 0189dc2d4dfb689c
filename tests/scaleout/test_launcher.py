"""The launcher choice of pipelines.run.launch: torchrun by default, DeepSpeed's launcher on request (the
GPUs a job was given, or N CPU ranks), extra arguments, and a bad choice refused before any work. A real
run through DeepSpeed's launcher is in test_data_parallel.py (ddp-bf16)."""

import sys

import pytest

from pipelines.run import launch

SCRIPT = ["pipelines.train", "--method", "zero2-bf16"]


def test_torchrun_is_the_default():
    cmd = launch.launcher_command(2, SCRIPT, env={})
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--standalone" in cmd and "--nproc-per-node=2" in cmd
    assert cmd[-4:] == ["-m", *SCRIPT]


def test_deepspeed_launcher_on_cpu_ranks_and_on_a_jobs_gpus():
    cpu = launch.launcher_command(2, SCRIPT, env={"FP8BENCH_LAUNCHER": "deepspeed"})
    assert cpu[:3] == [sys.executable, "-m", "deepspeed.launcher.runner"]
    assert "--num_nodes=1" in cpu and "--num_gpus=2" in cpu and "--no_local_rank" in cpu
    assert any(a.startswith("--master_port=") for a in cpu)  # a free port: runs can share a machine
    assert cpu[-4:] == ["--module", *SCRIPT]
    # a SLURM job given GPUs 4 and 6: the ranks use those, not 0 and 1
    job = launch.launcher_command(2, SCRIPT, env={"FP8BENCH_LAUNCHER": "deepspeed", "CUDA_VISIBLE_DEVICES": "4,6"})
    assert "--include=localhost:4,6" in job and not any(a.startswith("--num_gpus") for a in job)
    with pytest.raises(ValueError, match="names 1 GPUs"):
        launch.launcher_command(2, SCRIPT, env={"FP8BENCH_LAUNCHER": "deepspeed", "CUDA_VISIBLE_DEVICES": "3"})


def test_extra_launcher_arguments_go_before_the_script():
    cmd = launch.launcher_command(4, SCRIPT, env={"FP8BENCH_LAUNCHER_ARGS": "--max-restarts 0 --log-dir /tmp/x"})
    i = cmd.index("--max-restarts")
    assert cmd[i : i + 4] == ["--max-restarts", "0", "--log-dir", "/tmp/x"] and i < cmd.index("-m", 3)


def test_an_unknown_launcher_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FP8BENCH_LAUNCHER", "mpirun")
    rc = {"train": {"threads": 2}, "data": {"dir": str(tmp_path / "never")}}
    assert launch.launch(["--method", "zero2-bf16"], rc, tmp_path / "run", 2) == 2
    assert "valid: torchrun, deepspeed" in capsys.readouterr().err
    assert not (tmp_path / "never").exists() and not (tmp_path / "run").exists()
