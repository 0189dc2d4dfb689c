"""One writer per run folder (pipelines/run/dirlock.py): while a process holds a run folder, the training
command on that folder is refused at once (exit 2, the holder named, nothing written); once the holder is
killed the folder is free, and a rerun takes it. A child handed the lock (a multi-rank run's launcher of
ranks) keeps it held after its parent is killed."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.run import dirlock
from tests.conftest import ROOT, run_cli, write_small_config

# Holds the folder argv[1] until killed; with argv[2] == "child", also starts a child that keeps the lock
# (as the launcher passes it to torchrun) and prints the child's pid.
HOLDER = """
import subprocess, sys, time
from pipelines.run import dirlock
dirlock.acquire(sys.argv[1])
if sys.argv[2:] == ["child"]:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], pass_fds=dirlock.held_fds())
    print(child.pid, flush=True)
print("locked", flush=True)
time.sleep(120)
"""


def start_holder(folder: Path, *extra: str):
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder), *extra],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    lines = []
    while not lines or lines[-1] != "locked":
        line = proc.stdout.readline().strip()
        assert line, "the holder exited before it locked"
        lines.append(line)
    return proc, lines[:-1]


def kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def snapshot(folder: Path) -> dict:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def configfile(tmp_path_factory) -> Path:
    return write_small_config(
        tmp_path_factory.mktemp("dirlock"),
        steps=2,
        eval_every=2,
        eval_tokens=256,
        warmup_steps=1,
        timing_warmup_steps=0,
    )


def test_a_second_writer_is_refused_naming_the_holder_and_a_killed_holder_frees_the_folder(
    configfile, tmp_path, capsys
):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.partial.jsonl").write_text('{"event": "run_start"}\n')  # a run under way
    holder, _ = start_holder(out)
    try:
        before = snapshot(out)
        record = json.loads((out / dirlock.LOCK_NAME).read_text())
        assert record["pid"] == holder.pid and " -c " in record["command"]
        from pipelines.run import train as T

        capsys.readouterr()
        argv = ["--configfile", configfile, "--model", "tiny", "--method", "fp32", "--seed", "0", "--out", out]
        rc = T.main([str(a) for a in argv])
        err = capsys.readouterr().err
        assert rc == 2
        assert err.startswith(f"error: {out} is being written by pid {holder.pid} on host ")
        assert err.rstrip().endswith("; wait for it or stop it") and " -c " in err
        assert snapshot(out) == before  # nothing written: no config.json, the lock's record untouched
        assert dirlock.is_locked(out)
    finally:
        kill(holder.pid)
        holder.wait()
    # the kernel dropped the lock with its holder: the folder is free, and the same command now runs
    assert not dirlock.is_locked(out)
    r = run_cli("-m", "pipelines.train", *map(str, argv))
    assert r.returncode == 0, r.stderr
    assert (out / "summary.json").is_file()
    assert json.loads((out / dirlock.LOCK_NAME).read_text())["pid"] != holder.pid  # the rerun's record
    assert not dirlock.is_locked(out)  # released when the run ended


def test_a_child_handed_the_lock_keeps_the_folder_locked_after_its_parent_is_killed(tmp_path):
    parent, printed = start_holder(tmp_path, "child")
    child = int(printed[0])
    try:
        kill(parent.pid)
        parent.wait()
        assert dirlock.is_locked(tmp_path)
        with pytest.raises(dirlock.Busy, match=f"being written by pid {parent.pid} on host "):
            dirlock.acquire(tmp_path)
    finally:
        kill(child)
    deadline = time.time() + 30  # the child is not ours to wait for (its parent is gone): poll
    while dirlock.is_locked(tmp_path) and time.time() < deadline:
        time.sleep(0.05)
    assert not dirlock.is_locked(tmp_path)


def test_the_lock_is_taken_once_per_process_and_released(tmp_path):
    assert not dirlock.is_locked(tmp_path)
    with dirlock.hold(tmp_path):
        fd = dirlock.held_fds()
        assert len(fd) == 1 and dirlock.acquire(tmp_path) == fd[0]  # re-entrant within one process
        assert dirlock.is_locked(tmp_path)
        assert dirlock.main([str(tmp_path)]) == 0
    assert dirlock.held_fds() == () and not dirlock.is_locked(tmp_path)
    assert dirlock.main([str(tmp_path)]) == 1


def test_the_refusal_names_what_the_holder_recorded():
    since = time.mktime((2025, 3, 4, 12, 3, 1, 0, 0, -1))
    holder = {"pid": 1234, "host": "n1", "since": since, "command": "python -m pipelines.train --config c.json"}
    assert dirlock.describe(Path("results/runs/x"), holder) == (
        "results/runs/x is being written by pid 1234 on host n1 since 2025-03-04 12:03:01 "
        "(python -m pipelines.train --config c.json); wait for it or stop it"
    )
    # locked a moment ago, record not written yet
    assert dirlock.describe(Path("d"), {}) == "d is being written by another process; wait for it or stop it"
