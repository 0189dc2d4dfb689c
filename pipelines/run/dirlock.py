"""One writer per run folder: the process that writes a run's folder holds an exclusive ``flock`` on
``<run>/.lock`` from before its first write until it exits.

A second writer (the same command run again, a second workflow over the same results) is refused at once,
with a message naming the holder: pid, host, start time and command line, which the holder records in the
lock file. The lock is the kernel's, not the file's: it dies with the process that holds it, so a killed run
never leaves a stale lock behind (a pid file would), and the next run of that folder, a resume or a rerun,
simply takes it. What the file says is only meaningful while someone holds the lock; it is never a result
(``LOCK_NAME``: readers of a run folder read ``summary.json`` and the files named beside it, never this one).

Where the file system has no ``flock`` (some Lustre mounts), the run says so and goes on without the lock.

A multi-rank run is locked by its launcher; the ranks it starts are its children and never take the lock
(``pipelines.run.launch``). The launcher hands the locked descriptor to the process that starts the ranks
(``held_fds``), so the folder stays locked while that one lives, even if the launcher itself is killed alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import socket
import sys
import time
from pathlib import Path

LOCK_NAME = ".lock"

_held: dict[Path, int] = {}  # folder -> descriptor of the lock this process holds


class Busy(Exception):
    """The folder is locked by another process; ``holder`` is what that process recorded (maybe empty)."""

    def __init__(self, folder: Path, holder: dict):
        self.folder, self.holder = folder, holder
        super().__init__(describe(folder, holder))


def describe(folder: Path, holder: dict) -> str:
    """The refusal in one line: who writes ``folder`` and since when."""
    if not holder.get("pid"):  # locked, but the holder has not written its record yet (a moment after it locked)
        who = "another process"
    else:
        who = f"pid {holder['pid']} on host {holder.get('host', '?')}"
        if holder.get("since"):
            who += f" since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(holder['since']))}"
        if holder.get("command"):
            cmd = holder["command"]
            who += f" ({cmd if len(cmd) <= 200 else cmd[:197] + '...'})"
    return f"{folder} is being written by {who}; wait for it or stop it"


def command_line() -> str:
    """This process's command as typed (``python -m pipelines.train ...``), not the module's file path."""
    argv = list(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])
    argv[0] = Path(argv[0]).name
    return shlex.join(argv)


def read_holder(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}


def acquire(folder: str | Path) -> int:
    """Lock ``folder`` (which must exist) for this process and record who holds it; raises ``Busy`` at once,
    writing nothing, where another process holds it. Taking a lock this process already holds is a no-op."""
    folder = Path(folder)
    key = folder.resolve()
    if key in _held:
        return _held[key]
    path = folder / LOCK_NAME
    # O_RDWR without O_TRUNC: opening must not touch the holder's record; flock works on any open mode
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise Busy(folder, read_holder(path)) from None
    except OSError as e:  # a file system without flock (some Lustre mounts): the run goes on, unguarded
        os.close(fd)
        print(f"note: cannot lock {folder} ({e.strerror}); a second writer of it would not be refused", file=sys.stderr)
        return -1
    record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(), "command": command_line()}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
    _held[key] = fd
    return fd


def release(folder: str | Path) -> None:
    """Give the lock up (closing the descriptor; the record stays, meaningless once nobody holds the lock)."""
    fd = _held.pop(Path(folder).resolve(), None)
    if fd is not None:
        os.close(fd)


@contextlib.contextmanager
def hold(folder: str | Path):
    """``acquire`` for the block; released at its end, or by the kernel if the process dies inside it."""
    acquire(folder)
    try:
        yield
    finally:
        release(folder)


def held_fds() -> tuple[int, ...]:
    """The descriptors of the locks this process holds, for a child that must keep them held (``pass_fds``)."""
    return tuple(_held.values())


def is_locked(folder: str | Path) -> bool:
    """Whether some process holds ``folder``'s lock (tries it and lets go at once)."""
    path = Path(folder) / LOCK_NAME
    if not path.is_file():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the lock if this call took it
    return False


def main(argv=None) -> int:
    """``python -m pipelines.run.dirlock DIR``: who writes the run folder DIR, if anyone (exit 1 if it is free)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m pipelines.run.dirlock", description=main.__doc__)
    ap.add_argument("folder")
    folder = Path(ap.parse_args(argv).folder)
    if not is_locked(folder):
        print(f"{folder} is not being written")
        return 1
    print(describe(folder, read_holder(folder / LOCK_NAME)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
