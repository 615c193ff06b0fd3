"""Supervised processes: start one in its own session with its output in a log file, stop its whole process group,
read the log's tail, and see whether a port accepts connections. Used for tritonserver and nginx alike."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path


def start_in_session(command: Sequence[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``command`` as the leader of a new session (so its children share its process group), stdout and
    stderr appended to ``log``, stdin closed."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            list(command),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )


def terminate_group(process: subprocess.Popen, grace_s: float | None, kill_wait_s: float = 10.0) -> bool:
    """Stop the process group led by ``process``: SIGTERM and up to ``grace_s`` seconds to exit (None: no SIGTERM),
    then SIGKILL to whatever is left of the group (children included), and reap the leader.

    Returns:
        Whether the leader exited within the grace period (False also when there was none).
    """
    pgid = process.pid
    exited = False
    if grace_s is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            process.wait(timeout=grace_s)
            exited = True
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=kill_wait_s)
    return exited


def signal_group(process: subprocess.Popen, signum: int) -> None:
    """Send ``signum`` to the process group led by ``process`` (nothing when it is gone)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signum)


def file_tail(path: Path, lines: int) -> str:
    """The last ``lines`` lines of a log file ("" when it does not exist)."""
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def accepts(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """Whether something accepts TCP connections at ``host:port``."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout_s):
        return True
    return False


def free_port(host: str = "127.0.0.1") -> int:
    """A port that nothing listens on right now (bind port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
