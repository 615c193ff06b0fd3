"""``serving``'s shared pieces against real processes and ports: a process group stopped as one, log tails, the
fall/rise tracker both supervisors use, the tritonserver command line, and the admin client's answers."""

from __future__ import annotations

import http.server
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fmdetect.serving import procfs
from fmdetect.serving.admin import AdminClient
from fmdetect.serving.health import HealthStreak
from fmdetect.serving.process import (
    accepts,
    file_tail,
    free_port,
    signal_group,
    start_in_session,
    terminate_group,
)
from fmdetect.serving.tritonserver import RestrictedAPI, ServerConfig, tritonserver_command

# A parent that starts a child, then ignores SIGTERM (as a server that will not stop would).
STUBBORN = (
    "import signal, subprocess, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
    "print('started', flush=True)\n"
    "time.sleep(60)\n"
)


def _wait_for(predicate, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_group_that_ignores_sigterm_is_killed_whole(tmp_path: Path) -> None:
    log = tmp_path / "out.log"
    process = start_in_session([sys.executable, "-c", STUBBORN], log)
    _wait_for(lambda: "started" in file_tail(log, 5) and procfs.children(process.pid))
    child = procfs.children(process.pid)[0]
    begin = time.monotonic()
    exited = terminate_group(process, grace_s=0.5)
    assert not exited  # it ignored SIGTERM for the whole grace period
    assert time.monotonic() - begin >= 0.5
    assert process.poll() == -signal.SIGKILL
    _wait_for(lambda: procfs.state(child) in (None, "Z"))  # the grandchild went with its group


def test_a_group_that_stops_on_sigterm_exits_in_the_grace_period(tmp_path: Path) -> None:
    process = start_in_session([sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "out.log")
    assert terminate_group(process, grace_s=10.0)
    assert process.returncode == -signal.SIGTERM


def test_signal_group_reaches_a_gone_process_quietly(tmp_path: Path) -> None:
    process = start_in_session([sys.executable, "-c", "pass"], tmp_path / "out.log")
    process.wait(timeout=30)
    signal_group(process, signal.SIGKILL)  # no ProcessLookupError


def test_file_tail(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    assert file_tail(log, 3) == ""
    log.write_text("".join(f"line {i}\n" for i in range(10)))
    assert file_tail(log, 3) == "line 7\nline 8\nline 9"


@pytest.mark.parametrize(
    ("fall", "rise", "checks", "verdicts"),
    [
        (2, 1, [False, True, False, False, True], [True, True, True, False, True]),  # one bad check is not enough
        (
            2,
            3,
            [False, False, True, True, False, True, True, True],
            [True, False, False, False, False, False, False, True],
        ),
        (1, 1, [False, True], [False, True]),
    ],
)
def test_health_streak_falls_and_rises(fall, rise, checks, verdicts) -> None:
    streak = HealthStreak(fall, rise)
    assert [streak.observe(good) for good in checks] == verdicts


def test_health_streak_reset_and_bounds() -> None:
    streak = HealthStreak(fall=2, rise=2, healthy=False)
    assert not streak.observe(True)
    streak.reset()
    assert streak.healthy and streak.run == 0
    with pytest.raises(ValueError, match="fall and rise"):
        HealthStreak(0, 1)


def test_tritonserver_command_line(tmp_path: Path) -> None:
    restricted = RestrictedAPI("admin-key", "k3y", ("model-repository",))
    config = ServerConfig(
        model_repository=tmp_path,
        model_control_explicit=True,
        restricted_api=restricted,
        command_prefix=("ip", "netns", "exec", "ns0"),
        extra_args=("--grpc-infer-allocation-pool-size=16",),
    )
    command = tritonserver_command(config, tmp_path / "models", tmp_path / "backends", (18000, 18001, 18002), "p_")
    assert command[:4] == ["ip", "netns", "exec", "ns0"]
    assert Path(command[4]).name == "tritonserver"
    for flag in (
        f"--model-repository={tmp_path / 'models'}",
        "--http-port=18000",
        "--grpc-port=18001",
        "--metrics-port=18002",
        "--backend-config=python,shm-region-prefix-name=p_",
        "--model-control-mode=explicit",
        *restricted.args(),
    ):
        assert flag in command
    assert command[-1] == "--grpc-infer-allocation-pool-size=16"


class _Triton(http.server.BaseHTTPRequestHandler):
    """Answers like tritonserver's HTTP endpoint for the paths the admin client uses: ready yes, live no."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path == "/v2/models/stats" and self.headers.get("admin-key") == "k3y":
            self._answer(200, b'{"model_stats": [{"name": "detector"}]}')
        elif self.path == "/v2/health/ready":
            self._answer(200, b"")
        else:
            self._answer(403 if self.path == "/v2/models/stats" else 400, b'{"error": "no"}')

    def do_POST(self) -> None:  # noqa: N802
        self._answer(400, b'{"error": "failed to load"}')

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_admin_client_answers_and_failures() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Triton)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"127.0.0.1:{server.server_address[1]}"
        assert accepts("127.0.0.1", server.server_address[1])
        assert AdminClient(url).is_ready() and not AdminClient(url).is_live()
        assert AdminClient(url).model_statistics() is None  # without the key
        assert AdminClient(url, {"admin-key": "k3y"}).model_statistics() == [{"name": "detector"}]
        assert AdminClient(url).model_control("detector", "load") == (400, '{"error": "failed to load"}')
    finally:
        server.shutdown()
        server.server_close()
    port = free_port()
    assert not accepts("127.0.0.1", port)
    status, body = AdminClient(f"127.0.0.1:{port}").request("GET", "/v2/health/ready", 1.0)
    assert status == 0 and body  # no answer, and the reason
    assert (
        subprocess.run([sys.executable, "-m", "fmdetect.serving.launcher", "--help"], capture_output=True).returncode
        == 0
    )
