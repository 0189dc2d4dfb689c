"""Multi-rank resume: a 2-rank ZeRO-2 run on the CPU, SIGKILLed mid-way (every process of it: launcher,
torchrun and both ranks, as when a node dies), then rerun with the same command, resumes from its last
committed checkpoint (pipelines.run.dist_checkpoint over DeepSpeed's engine checkpointing) and logs the same
losses, bit for bit, as an uninterrupted run: gloo's sums and the CPU kernels are deterministic for a fixed
thread count, and the checkpoint holds every state a step reads (fp32 master partitions, the client
AdamW's m, v and step, RNG states of each rank)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.run.events import read_events
from tests.conftest import ROOT, write_small_config

STEPS, EVERY = 6, 2


@pytest.fixture(scope="module")
def configfile(tmp_path_factory) -> Path:
    return write_small_config(
        tmp_path_factory.mktemp("resume_ranks"),
        steps=STEPS,
        eval_every=4,
        eval_tokens=256,
        warmup_steps=2,
        timing_warmup_steps=1,
        checkpoint_every=EVERY,
        telemetry_every=5,
    )


def command(configfile, method, out):
    return [
        sys.executable,
        "-m",
        "pipelines.train",
        "--configfile",
        str(configfile),
        "--model",
        "tiny",
        "--method",
        method,
        "--seed",
        "0",
        "--out",
        str(out),
        "--threads",
        "2",
    ]


def env():
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def committed_step(out: Path) -> int:
    try:
        return int(json.loads((out / "checkpoints" / "latest.json").read_text())["step"])
    except (OSError, ValueError, KeyError):
        return -1


def logged_steps(out: Path) -> int:
    try:
        return (out / "metrics.partial.jsonl").read_text().count('"train_step"')
    except OSError:
        return 0


def kill_run(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher and everything it started (torchrun runs in its own session)."""
    import psutil

    victims = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for p in victims:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(victims, timeout=30)
    proc.wait()


def trajectory(out: Path):
    events = read_events(out / "metrics.jsonl")
    return (
        [(e["step"], e["loss"], e["grad_norm"], e["batch_hash"]) for e in events if e["event"] == "train_step"],
        [(e["step"], e["val_loss"]) for e in events if e["event"] == "eval"],
        events,
    )


@pytest.mark.parametrize("method", ["zero2-bf16"])
def test_killed_multi_rank_run_resumes_bit_for_bit(configfile, tmp_path, method):
    pytest.importorskip("psutil")
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    r = subprocess.run(command(configfile, method, ref), env=env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not (ref / "checkpoints").exists()  # removed once the run is complete

    p = subprocess.Popen(
        command(configfile, method, killed), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:  # mid-way: a checkpoint committed (after step 2) and a step past it logged, which the resume redoes
        deadline = time.time() + 240
        while not (committed_step(killed) >= 2 and logged_steps(killed) >= 3) and time.time() < deadline:
            assert p.poll() is None, f"run ended before it could be killed: {p.stderr.read()[-3000:]}"
            time.sleep(0.05)
    finally:
        kill_run(p)
    assert 2 <= committed_step(killed) < STEPS and logged_steps(killed) < STEPS, "the kill did not land mid-way"
    assert not (killed / "summary.json").exists()

    r = subprocess.run(command(configfile, method, killed), env=env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming after step" in r.stderr
    s = json.loads((killed / "summary.json").read_text())
    assert s["status"] == "ok" and s["steps"] == STEPS and s["world_size"] == 2, s
    steps_k, evals_k, events = trajectory(killed)
    steps_r, evals_r, _ = trajectory(ref)
    assert steps_k == steps_r  # losses, grad norms and batches, bit for bit
    assert evals_k == evals_r
    kinds = [e["event"] for e in events]
    assert kinds.count("run_start") == 1 and kinds.count("resume") == 1 and kinds.count("run_stop") == 1
    assert [e[0] for e in steps_k] == list(range(STEPS))  # no step lost or logged twice
    assert not (killed / "checkpoints").exists()


DP = ["ddp-bf16", "fsdp2-bf16", "fsdp2-fp8-torchao"]


def test_ddp_and_fsdp2_resume_bit_for_bit_from_a_committed_checkpoint(corpus_dir, tmp_path):
    """torch.distributed.checkpoint through pipelines.run.dist_checkpoint, for every DDP / FSDP2 method in one pair
    of gloo ranks: steps 2 and 3 after loading the checkpoint of step 2 equal the uninterrupted steps, bit for
    bit (the end-to-end kill path, launcher and loop, is the ZeRO test's above: the same code for all)."""
    from tests.conftest import run_cli

    out = tmp_path / "dp.json"
    r = run_cli(
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "--monitor-interval=0.5",
        str(ROOT / "tests" / "scaleout" / "dp_resume_ranks.py"),
        str(corpus_dir),
        str(out),
        ",".join(DP),
        env={"OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    res = json.loads(out.read_text())
    for name in DP:
        assert res[name]["step"] == 2
        assert res[name]["resumed"] == res[name]["uninterrupted"][2:], (name, res[name])
        assert res[name]["fresh_loss"] != res[name]["resumed"][0][0]  # the load changed the model
        assert ".metadata" in res[name]["files"] and "rng_rank1.pt" in res[name]["files"], res[name]["files"]
