"""``serving.procfs`` against processes this test starts: a child, a grandchild, a zombie, one that burns CPU."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from fmdetect.serving import procfs


def test_facts_of_a_live_tree_then_of_a_zombie() -> None:
    code = (
        "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        "x = 0\nfor i in range(3_000_000): x += i\ntime.sleep(60)"
    )
    parent = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 30
        while not procfs.children(parent.pid):
            assert time.monotonic() < deadline, "the grandchild never appeared"
            time.sleep(0.05)
        (child,) = procfs.children(parent.pid)
        assert {parent.pid, child} <= set(procfs.descendants(os.getpid()))
        assert procfs.is_alive(parent.pid) and procfs.state(parent.pid) in {"R", "S"}
        assert procfs.cmdline(parent.pid)[:2] == [sys.executable, "-c"]
        assert procfs.comm(parent.pid).startswith("python")
        assert procfs.rss_bytes(parent.pid) > 1_000_000
        while procfs.cpu_seconds(parent.pid) < 0.05:  # the loop above burns some CPU
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert procfs.tree_cpu_seconds([parent.pid]) >= procfs.cpu_seconds(parent.pid)
        os.kill(child, signal.SIGKILL)
        while procfs.state(child) != "Z":  # dead, not reaped by its parent: a zombie
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert not procfs.is_alive(child) and procfs.cmdline(child) == []
    finally:
        parent.kill()
        parent.wait()
    assert not procfs.is_alive(parent.pid)
    assert procfs.state(parent.pid) is None and procfs.cmdline(parent.pid) == []
    assert procfs.rss_bytes(parent.pid) == 0 and procfs.cpu_seconds(parent.pid) == 0


def test_machine_jiffies_grow() -> None:
    busy, total = procfs.machine_cpu_jiffies()
    time.sleep(0.1)
    busy2, total2 = procfs.machine_cpu_jiffies()
    assert 0 <= busy <= total and total2 > total and busy2 >= busy
