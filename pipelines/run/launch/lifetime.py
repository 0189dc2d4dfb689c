"""Nothing of a run outlives it: the processes a run starts die with the process that started them, whatever
signal that one gets (SIGKILL included, which no handler sees).

The chain is launcher -> agent (``torchrun``, ``srun`` or DeepSpeed's runner; started in a session of its own
so that a stop can be sent to all of it) -> ranks. Each link asks the kernel for SIGKILL when its parent dies
(``prctl(PR_SET_PDEATHSIG)``, Linux): the agent in the launcher's ``Popen(preexec_fn=...)``, every rank at its
start. A parent that died before the request was made is not noticed by the kernel, so each link checks its
parent afterwards and dies at once if it is gone. Under DeepSpeed's launcher a process of DeepSpeed's own sits
between the runner and the ranks; the ranks also watch the runner (their process group's leader).

Elsewhere than on Linux nothing is asked (``prctl`` does not exist); a stop by SIGTERM / SIGINT is still
passed on by the launcher.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1
#: a rank's parent is one of these (its cmdline says so); anything else means the agent is gone already
AGENTS = ("torch.distributed.run", "torchrun", "deepspeed.launcher")


def _prctl():
    """libc's prctl, or None (not Linux). Looked up before any fork: a child of a threaded process must not
    load libraries (the loader's lock may be held by a thread that does not exist in the child)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def _prctl_pdeathsig(sig: int, prctl=None) -> bool:
    prctl = prctl or _prctl()
    return prctl is not None and prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def die_with_parent(expected_parent: int, prctl=None) -> bool:
    """SIGKILL this process when its parent dies; if the parent (``expected_parent``) is gone already, die now.
    False where the platform has no prctl."""
    if not _prctl_pdeathsig(signal.SIGKILL, prctl):
        return False
    if os.getppid() != expected_parent:  # it died between fork and prctl: the kernel will never tell us
        _die()
    return True


def agent_preexec(launcher_pid: int):
    """The ``preexec_fn`` of an agent the launcher (pid ``launcher_pid``) starts; it only calls prctl,
    looked up here, in the parent."""
    prctl = _prctl()

    def preexec():
        if prctl is not None:
            die_with_parent(launcher_pid, prctl)

    return preexec


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def watch(pid: int, interval_s: float = 0.5) -> threading.Thread:
    """A daemon thread that SIGKILLs this process once ``pid`` no longer exists."""

    def loop():
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                _die()
            except PermissionError:  # exists, another user's: cannot be ours, but it is alive
                pass
            time.sleep(interval_s)

    t = threading.Thread(target=loop, name=f"fp8bench-watch-{pid}", daemon=True)
    t.start()
    return t


def rank_started() -> None:
    """In a rank the launcher's agent started: die with the agent (and with DeepSpeed's runner above it)."""
    parent = os.getppid()
    if not _prctl_pdeathsig(signal.SIGKILL):
        return
    # the parent read above may already be the reaper the rank was handed to: an agent or nothing
    if os.getppid() != parent or not any(a in _cmdline(parent) for a in AGENTS):
        print(
            f"rank {os.environ.get('RANK', '?')}: its launcher is gone (parent {parent}: "
            f"{_cmdline(parent)[:80]!r}); stopping",
            file=sys.stderr,
            flush=True,
        )
        _die()
    leader = os.getpgid(0)
    if leader not in (parent, os.getpid()) and leader > 1 and any(a in _cmdline(leader) for a in AGENTS):
        watch(leader)
