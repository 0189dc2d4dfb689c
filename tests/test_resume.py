"""Checkpoint/resume: a run killed with SIGKILL and rerun equals an uninterrupted run, bit for bit."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pipelines.run.events import read_events
from tests.conftest import ROOT, train_argv, write_small_config

STEPS = 8
KILL_AFTER_CHECKPOINT_AT = 4  # checkpoints every 2 steps: kill once the one after step 4 exists (of 8)


@pytest.fixture(scope="module")
def configfile(tmp_path_factory) -> Path:
    return write_small_config(
        tmp_path_factory.mktemp("resume"),
        steps=STEPS,
        eval_every=3,
        eval_tokens=256,
        warmup_steps=2,
        timing_warmup_steps=1,
        checkpoint_every=2,
        telemetry_every=3,
    )


def command(configfile, method, out, *extra):
    return [sys.executable, *train_argv(configfile, method, out, *extra)]


def env():
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def checkpoint_step(out: Path) -> int:
    try:
        return int(torch.load(out / "checkpoint.pt", weights_only=False)["step"])
    except Exception:  # noqa: BLE001 - absent or being renamed into place
        return -1


def losses(out: Path):
    return [
        (e["step"], e["loss"], e["batch_hash"])
        for e in read_events(out / "metrics.jsonl")
        if e["event"] == "train_step"
    ]


def val_losses(out: Path):
    return [(e["step"], e["val_loss"]) for e in read_events(out / "metrics.jsonl") if e["event"] == "eval"]


@pytest.mark.parametrize(
    "method,extra",
    [
        # the plain path (weights, AdamW, data position, RNG) is in both; fp32's checkpoint is also the one
        # test_checkpoint_of_another_config_is_ignored writes and refuses
        ("fp8-own-delayed", []),  # amax histories and scales live in module buffers
        ("bf16-pure", ["--method-option", "stochastic_rounding=true"]),  # stochastic-rounding generator state
    ],
)
def test_sigkill_then_rerun_equals_uninterrupted(configfile, tmp_path, method, extra):
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    r = subprocess.run(command(configfile, method, ref, *extra), env=env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr

    # Slow the victim down a little so the kill lands mid-run, then SIGKILL it after a checkpoint exists.
    p = subprocess.Popen(
        command(configfile, method, killed, *extra),
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 240
    while checkpoint_step(killed) < KILL_AFTER_CHECKPOINT_AT and p.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    if p.poll() is not None:
        pytest.fail(f"run finished before it could be killed; stderr: {p.stderr.read()[-2000:]}")
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL
    assert not (killed / "summary.json").exists() and not (killed / "metrics.jsonl").exists()
    assert (killed / "metrics.partial.jsonl").exists()

    r = subprocess.run(
        command(configfile, method, killed, *extra), env=env(), capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    assert "resuming after step" in r.stderr
    assert losses(killed) == losses(ref)  # bit for bit, same batches
    assert val_losses(killed) == val_losses(ref)
    events = [e["event"] for e in read_events(killed / "metrics.jsonl")]
    assert events.count("run_start") == 1 and events.count("resume") == 1 and events.count("run_stop") == 1
    steps = [e["step"] for e in read_events(killed / "metrics.jsonl") if e["event"] == "train_step"]
    assert steps == list(range(STEPS))  # no step lost or logged twice
    assert not (killed / "checkpoint.pt").exists()


def test_checkpoint_of_another_config_is_ignored(configfile, tmp_path):
    out = tmp_path / "r"
    p = subprocess.Popen(
        command(configfile, "fp32", out), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 240
    while checkpoint_step(out) < 2 and p.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    r = subprocess.run(
        command(configfile, "fp32", out, "--lr", "0.002"), env=env(), capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    assert "different config; starting over" in r.stderr
    assert [e["step"] for e in read_events(out / "metrics.jsonl") if e["event"] == "train_step"] == list(range(STEPS))


def test_a_display_setting_keeps_the_checkpoint_and_a_computing_one_does_not(tmp_path):
    from pipelines.run import checkpoint

    rc = {"train": {"steps": 6, "log_every": 10, "lr": 1e-3}, "method": {"name": "fp32"}}
    checkpoint.save(tmp_path, rc, step=2, trainee_state={"w": torch.ones(2)}, loop_state={}, metrics_offset=0)
    shown_more = {**rc, "train": {**rc["train"], "log_every": 1}}
    ck, note = checkpoint.load(tmp_path, shown_more)
    assert ck is not None and ck["step"] == 2 and note == "resuming after step 2"
    ck, note = checkpoint.load(tmp_path, {**rc, "train": {**rc["train"], "lr": 2e-3}})
    assert ck is None and "different config" in note
