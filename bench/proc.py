"""Child processes that die with their parent: spawn, time out, and clean up worker groups.

The sweep side (`spawn`, `wait_or_kill`) starts each worker in its own process group, so a
timeout or Ctrl-C kills the worker and everything it started (torchrun's ranks included). The
worker side (`die_with_parent`) makes the kernel kill the worker when its parent dies
(PR_SET_PDEATHSIG, Linux) and starts a watchdog thread that kills the worker's whole group once
the sweep process is gone, which also covers torchrun's ranks, whose parent is torchrun itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARENT_ENV = "STEPTIME_SWEEP_PID"  # pid of the process that runs the sweep (run_config's caller)
_PR_SET_PDEATHSIG = 1
_LIVE: set[subprocess.Popen] = set()  # children being waited for (killed on the way out)


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """os.environ + this checkout first on PYTHONPATH + the parent pid for the watchdog."""
    env = dict(os.environ)
    paths = [ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env[PARENT_ENV] = str(os.getpid())
    env.update(extra or {})
    return env


def spawn(cmd: list[str], log_path: str, env: dict[str, str]) -> subprocess.Popen:
    """Start `cmd` in a new process group, in the caller's cwd, output into `log_path`."""
    with open(log_path, "w") as log_fh:
        child = subprocess.Popen(
            cmd,
            stdout=log_fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=os.getcwd(),
            start_new_session=True,
        )
    _LIVE.add(child)
    return child


def kill_all() -> None:
    """Kill every child still being waited for (Ctrl-C while several GPUs run configs)."""
    for child in list(_LIVE):
        kill_group(child)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the child's process group (the child and all it started), then reap the child."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    proc.wait()
    _LIVE.discard(proc)


def wait_or_kill(proc: subprocess.Popen, timeout_s: float) -> int | None:
    """The child's exit code, or None after killing its group at `timeout_s`.

    Any exception while waiting (Ctrl-C included) kills the group before it propagates.
    """
    try:
        rc = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        return None
    except BaseException:
        kill_group(proc)
        raise
    # The child is gone; anything it left in its group (a hung rank) goes with it.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    _LIVE.discard(proc)
    return rc


def die_with_parent(poll_s: float = 0.5) -> None:
    """Worker side: exit when the sweep process dies (parent-death signal plus a watchdog)."""
    parent = os.environ.get(PARENT_ENV, "")
    if not parent.isdigit():
        return  # run by hand: nothing to follow
    pid = int(parent)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if not pid_alive(pid):  # the parent died before the signal was armed
        os._exit(1)
    threading.Thread(target=_watch, args=(pid, poll_s), daemon=True).start()


def _watch(pid: int, poll_s: float) -> None:
    while pid_alive(pid):
        time.sleep(poll_s)
    # Kill our whole group: with torchrun that is the launcher and every rank.
    with contextlib.suppress(OSError):
        os.killpg(os.getpgrp(), signal.SIGKILL)
    os._exit(1)


def pid_alive(pid: int) -> bool:
    """True while process `pid` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (killed, not yet reaped by its own parent) counts as dead.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
