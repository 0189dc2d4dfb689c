"""Faults and bad input: a run that cannot fit is refused up front, a crash between write and rename leaves
no partial file, and the GPU reference script runs its code path on the CPU. (A diverging run inside the
workflow: tests/test_workflow.py.)"""

import json
import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import ROOT, run_cli, write_small_config


@pytest.fixture(scope="module")
def small_config(tmp_path_factory) -> Path:
    """The real config, with a small corpus (vocab 512) and results in a temp folder."""
    return write_small_config(tmp_path_factory.mktemp("faults"))


def test_model_that_cannot_fit_is_refused_with_the_estimate(small_config, tmp_path):
    """7b in fp32 needs ~16 B/param x 6.7B params of state alone: far over this machine's memory."""
    out = tmp_path / "big"
    r = run_cli(
        "-m",
        "pipelines.train",
        "--configfile",
        str(small_config),
        "--model",
        "7b",
        "--method",
        "fp32",
        "--seed",
        "0",
        "--out",
        str(out),
        timeout=120,
    )
    assert r.returncode == 2, r.stderr[-2000:]
    msg = r.stderr
    assert "model 7b" in msg and "method fp32" in msg and "needs about" in msg and "analytic model" in msg
    needed = float(msg.split("needs about ")[1].split(" GiB")[0])
    assert 90 < needed < 200  # ~6.6e9 params (vocab 512) x 16 B = 98 GiB of state, plus activations
    assert not out.exists() or not any(out.iterdir())  # refused before any work


CRASHING_WRITER = """
import os, signal, sys
from common.atomic import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_text("new " * 100000)
    os.kill(os.getpid(), signal.SIGKILL)   # dies after writing, before the rename
"""


def test_crash_between_write_and_rename_leaves_the_old_file(tmp_path):
    target = tmp_path / "summary.json"
    target.write_text('{"status": "ok"}')
    r = subprocess.run(
        [sys.executable, "-c", CRASHING_WRITER, str(target)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == -signal.SIGKILL
    assert json.loads(target.read_text()) == {"status": "ok"}  # a reader sees the old file, whole
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "summary.json"]
    assert leftovers and all(n.startswith(".summary.json.") for n in leftovers)  # hidden temp, not the result
    # the collector globs summary.json only, so the leftover temp file is never read as a result
    from pipelines.analysis.collect import collect

    assert len(collect(sorted(tmp_path.glob("*/summary.json")) + [target])) == 1


def test_exception_inside_the_write_removes_the_temp_file(tmp_path):
    from common.atomic import atomic_path, write_text

    target = tmp_path / "table.csv"
    write_text(target, "a,b\n1,2\n")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("a,b\n1,")
            raise RuntimeError("disk full")
    assert target.read_text() == "a,b\n1,2\n"
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]


def test_run_killed_mid_way_has_no_summary(small_config, tmp_path):
    """While a run trains, only metrics.partial.jsonl exists; a reader looking for summary.json sees nothing."""
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipelines.train",
            "--configfile",
            str(small_config),
            "--model",
            "tiny",
            "--method",
            "fp32",
            "--seed",
            "0",
            "--out",
            str(out),
            "--steps",
            "400",
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import time

        deadline = time.time() + 120
        while time.time() < deadline:
            p = out / "metrics.partial.jsonl"
            if p.exists() and '"train_step"' in p.read_text():
                break
            time.sleep(0.2)
        else:
            pytest.fail("the run never started training")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (out / "summary.json").exists() and not (out / "metrics.jsonl").exists()


def test_gpu_script_runs_its_code_path_on_the_cpu(small_config, tmp_path):
    """``pipelines/gpu/h200.sh --dry``: the same driver, benchmarks and gpu-profile runs, on the CPU with the
    tiny model; TransformerEngine is recorded as skipped with its reason, never dropped."""
    out = tmp_path / "h200"
    methods = ["bf16-amp", "fp8-optim", "fp8-te-delayed"]  # a run per method (~6 s each): one of each kind
    r = subprocess.run(
        [
            "bash",
            str(ROOT / "pipelines" / "gpu" / "h200.sh"),
            "--dry",
            str(out),
            "--methods",
            *methods,
            "--steps",
            "2",
            "--budget-s",
            "400",
            "--configfile",
            str(small_config),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-5000:]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["dry"] is True and meta["models"] == ["tiny"] and meta["wall_s"] > 0
    df = pd.read_csv(out / "summary.csv")
    assert sorted(df["method"]) == sorted(methods)
    status = dict(zip(df["method"], df["status"]))
    assert status["fp8-te-delayed"] == "skipped"
    assert "transformer" in df.set_index("method").loc["fp8-te-delayed", "reason"].lower()
    assert all(status[m] == "ok" for m in methods[:2]), df[["method", "status", "reason"]]
    assert (df.loc[df["status"] == "ok", "tokens_per_s"] > 0).all()
    assert (df["profile"] == "gpu").all()  # the gpu profile's code path
    for name in ("fp8_bench.json", "optim_bench.json"):  # the GPU sections ran, and said why they skipped
        assert "no CUDA device" in json.loads((out / name).read_text())["gpu"]["skipped"], name
    with tarfile.open(out / "runs.tar.gz") as tar:
        names = tar.getnames()
    assert any(n.endswith("bf16-amp/seed0/metrics.jsonl") for n in names)
