"""Process facts from Linux's /proc, for supervising tritonserver, its python stubs and nginx.

Every reader returns a neutral value (None, 0, "") for a process that is gone or unreadable instead of raising: a
supervised process can exit between two reads.
"""

from __future__ import annotations

import glob
import os


def read(path: str) -> str | None:
    """A /proc file's text, or None when it cannot be read."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return None


def _stat_fields(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name (``state`` first); [] when gone."""
    return (read(f"/proc/{pid}/stat") or "").rsplit(")", 1)[-1].split()


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc/<pid>/task/*/children, falling back to a /proc scan)."""
    found: list[int] = []
    tasks = glob.glob(f"/proc/{pid}/task/*/children")
    if tasks:
        for path in tasks:
            found.extend(int(token) for token in (read(path) or "").split())
        return sorted(set(found))
    for stat_path in glob.glob("/proc/[0-9]*/stat"):
        fields = (read(stat_path) or "").rsplit(")", 1)[-1].split()
        if len(fields) > 2 and fields[1] == str(pid):
            found.append(int(stat_path.split("/")[2]))
    return sorted(found)


def descendants(pid: int) -> list[int]:
    """``pid``'s children, their children, and so on."""
    seen: list[int] = []
    todo = children(pid)
    while todo:
        child = todo.pop()
        if child not in seen:
            seen.append(child)
            todo += children(child)
    return sorted(seen)


def state(pid: int) -> str | None:
    """The state letter (R, S, D, T, Z: a zombie, dead but not reaped, ...), or None when gone."""
    fields = _stat_fields(pid)
    return fields[0] if fields else None


def is_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie counts as dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return state(pid) not in ("Z", None)


def comm(pid: int) -> str:
    """The process name (at most 15 characters), "" when gone."""
    return (read(f"/proc/{pid}/comm") or "").strip()


def cmdline(pid: int) -> list[str]:
    """The command line's arguments, [] when gone."""
    return [arg for arg in (read(f"/proc/{pid}/cmdline") or "").split("\0") if arg]


def rss_bytes(pid: int) -> int:
    """Resident memory (VmRSS), 0 when gone."""
    for line in (read(f"/proc/{pid}/status") or "").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time used so far (utime and stime), 0 when gone."""
    fields = _stat_fields(pid)
    if len(fields) < 13:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pids: list[int]) -> float:
    """CPU time used so far by these processes and all their descendants (e.g. the python stubs)."""
    tree = set(pids)
    for pid in pids:
        tree.update(descendants(pid))
    return sum(cpu_seconds(pid) for pid in tree)


def machine_cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine so far, from /proc/stat."""
    values = [int(v) for v in (read("/proc/stat") or "cpu 0 0 0 0").splitlines()[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values) - idle, sum(values)
