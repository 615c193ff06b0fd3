"""Faults under load: a python stub or the server killed, and a server restart, with clients that retry UNAVAILABLE.

Load: 4 threads, each a ``DetectorClient`` classifying in a loop with a retry budget (20 retries, backoff
0.05 s doubling to 1 s, full jitter: ~9 s of waiting on average) that outlasts a restart.

Bounds stated and checked:
Every time bound is derived from the configuration and from what the test measures on this machine first: the
server's own cold start (``startup_s``), one health check under the load (``check_s``), the slowest answer
before the fault. A recovery (stop, then start or reload) must take no longer than three cold starts.

- killed stub, default model control: ``watch()`` notices it at the first check begun after the kill (which may
  wait for a check under way, up to its inference probe's deadline) and restarts the server; requests in flight
  die with the connection (UNAVAILABLE) and are retried, so the callers see no error, except when the kill came
  during the watchdog's probe: then the requests the dead stub held fail with INTERNAL before the restart, as
  with explicit control below.
- killed stub, explicit model control: ``watch()`` reloads the model (the rest of the server keeps serving); the
  requests that reached the dead stub fail with INTERNAL "Stub process ... is not healthy" (the client does not
  retry INTERNAL): at most 2 per client thread, all sent before the reload completed, each answered by the
  server (not left to the client's deadline).
- killed server process: restarted on the same ports; the callers see no error.
- ``restart()`` mid-load (graceful: drain in-flight requests, then replace the process): the callers see no error;
  every request completes within the restart time + the reconnect interval gRPC can have reached by then
  (1 s growing 1.6x, 20 % jitter) + one retry wait (``backoff_max_s``) + the slowest answer before the restart.
- a ``probe`` that fails ``failures_to_restart`` times in a row restarts the server.
- a HUNG stub (SIGSTOP: alive, ready, never answering): the watchdog's inference probe (deadline 5 s, every
  0.5 s) fails while the python backend calls that model's stub "not healthy" (SIGSTOP) or the statistics show no
  successful inference of it since the previous probe (an execute that never returns); after 2 such rounds the
  stub is killed and the model reloaded (explicit model control) or the server restarted. Bound: detected within
  3 x (0.5 s + 5 s) + 4 s of slack = 20.5 s of the hang (the first failed round may still see the last
  answers), serving again within three cold starts of the detection.
- a busy but healthy server (the same load, no hang) is never acted on by the probe.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from fmdetect.serving.tritonserver import ServerConfig, TritonServer
from fmdetect.serving.watchdog import InferenceProbe, watch
from tests.conftest import encode, photo_like
from tests.figures import record
from tests.test_hardening_support import repository_copy

pytestmark = [pytest.mark.triton, pytest.mark.slow]

THREADS = 4
PAYLOAD = encode(photo_like(64, 64, 0), "PNG")
WATCH_INTERVAL_S = 0.5
GRPC_BACKOFF = (1.0, 1.6, 0.2)  # gRPC's connection backoff defaults: initial s, multiplier, jitter


def reconnect_wait_bound_s(down_s: float) -> float:
    """The longest gRPC can wait before reconnecting to a server that is back after ``down_s``: the reconnect
    interval it can have reached by then (attempts as early as the jitter allows), at the top of its jitter."""
    initial, multiplier, jitter = GRPC_BACKOFF
    interval, elapsed = initial, 0.0
    while elapsed + interval * (1 - jitter) < down_s:
        elapsed += interval * (1 - jitter)
        interval *= multiplier
    return interval * (1 + jitter)


class Load:
    """``THREADS`` threads classifying in a loop; ``records`` holds (start, end, "ok" or the error) per request."""

    def __init__(self, url: str) -> None:
        from fmdetect.client import ClientConfig

        self.config = ClientConfig(url=url, retries=20, backoff_base_s=0.05, backoff_max_s=1.0, timeout_s=20)
        self.records: list[tuple[float, float, str]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(THREADS)]

    def _run(self) -> None:
        from fmdetect.client import DetectorClient, DetectorClientError

        with DetectorClient(self.config) as client:
            while not self._stop.is_set():
                begin = time.monotonic()
                try:
                    client.classify(PAYLOAD)
                    outcome = "ok"
                except DetectorClientError as exc:
                    outcome = f"{type(exc).__name__}: {exc.message}"
                self.records.append((begin, time.monotonic(), outcome))

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def errors(self) -> list[tuple[float, float, str]]:
        return [r for r in self.records if r[2] != "ok"]

    def succeeded_after(self, moment: float) -> int:
        return sum(1 for begin, _, outcome in self.records if outcome == "ok" and begin > moment)

    def slowest_before(self, moment: float) -> float:
        """The longest successful request that ended before ``moment``: this machine's latency under this load."""
        return max(end - begin for begin, end, outcome in list(self.records) if outcome == "ok" and end < moment)


class Started:
    """``TritonServer`` entered with its cold start timed: ``startup_s`` is this machine's start-to-ready time."""

    def __init__(self, config: ServerConfig) -> None:
        self.server = TritonServer(config)
        self.startup_s = 0.0

    def __enter__(self) -> Started:
        began = time.monotonic()
        self.server.__enter__()
        self.startup_s = time.monotonic() - began
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.__exit__(*exc)


def _check_seconds(server: TritonServer) -> float:
    """The slowest of three health checks under the running load."""
    times = []
    for _ in range(3):
        began = time.monotonic()
        assert server.check_health() is None
        times.append(time.monotonic() - began)
    return max(times)


def _wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.parametrize(
    "explicit, victim",
    [(False, "detector-stub"), (True, "detector-stub"), (False, "tritonserver")],
    ids=["stub-restart", "stub-reload-explicit", "server-process"],
)
def test_killed_process_is_noticed_and_recovered(cpu_repository: Path, tmp_path: Path, explicit: bool, victim: str):
    repo = repository_copy(cpu_repository, tmp_path / "repo")
    with Started(ServerConfig(model_repository=repo, model_control_explicit=explicit)) as started:
        server = started.server
        watchdog = watch(server, interval_s=WATCH_INTERVAL_S)
        with Load(server.grpc_url) as load:
            _wait_for(lambda: load.succeeded_after(0) >= 20, 30, "the first answers")
            period_s = WATCH_INTERVAL_S + _check_seconds(server)
            before = {s.pid for s in server.stubs()}
            if victim == "tritonserver":
                pid = server.process.pid
            else:
                pid = next(s.pid for s in server.stubs() if s.model == "detector")
            killed_at = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            _wait_for(lambda: watchdog.recoveries, 60, "the watchdog to recover")
            recovered_at = time.monotonic()
            _wait_for(lambda: load.succeeded_after(recovered_at) >= 20, 30, "answers after the recovery")
        health = server.check_health()
        after = {s.pid for s in server.stubs() if s.state != "Z"}
        recovery = watchdog.recoveries[0]

    errors = load.errors()
    print(
        f"{victim} (explicit={explicit}): cold start {started.startup_s:.2f} s, watchdog period {period_s:.2f} s; "
        f"detected {recovery.detected_at - killed_at:.2f} s after the kill, recovered in "
        f"{recovery.recovered_s:.2f} s; {len(load.records)} requests, {len(errors)} errors answered "
        f"{[round(end - recovered_at, 2) for _, end, _ in errors]} s after the recovery"
    )
    key = "server-process" if victim == "tritonserver" else ("stub-reload-explicit" if explicit else "stub-restart")
    record(
        "faults",
        key,
        startup_s=started.startup_s,
        detected_s=recovery.detected_at - killed_at,
        recovered_s=recovery.recovered_s,
        requests=len(load.records),
        errors=len(errors),
    )
    assert len(watchdog.recoveries) == 1 and recovery.ok, watchdog.recoveries
    assert ("detector" in recovery.reason) if victim != "tritonserver" else ("exited" in recovery.reason)
    # Noticed by the first check that began after the kill (or the second, when the kill came as one began). A check
    # under way at the kill can last as long as its inference probe (deadline ``hang_probe.deadline_s``) when the
    # probe's request went to the dead stub, so the first check after the kill may begin that much later.
    rounds = [t for t in watchdog.round_starts if killed_at <= t <= recovery.detected_at]
    assert 1 <= len(rounds) <= 2, (rounds, killed_at, recovery.detected_at)
    assert rounds[0] - killed_at <= WATCH_INTERVAL_S + watchdog.hang_probe.deadline_s + period_s, rounds
    assert recovery.detected_at - rounds[-1] <= period_s, "the check that began after the kill did not notice it"
    assert recovery.recovered_s < 3 * started.startup_s
    assert health is None, health
    assert pid not in after and after != before
    # A request already handed to the dead stub fails when the backend gives up on it (INTERNAL "not healthy",
    # answered by the server, not left to the client's deadline): with explicit control always, since the rest of the
    # server keeps serving; with a restart only when the backend gives up before the restart closes the connections
    # (the kill came during the watchdog's probe). Never a request sent after the recovery.
    assert all("InferenceError" in e[2] and "is not healthy" in e[2] for e in errors), errors
    assert len(errors) <= 2 * THREADS, errors
    assert all(begin <= recovered_at for begin, _, _ in errors), errors


def test_restart_mid_load_is_invisible_to_retrying_clients(cpu_repository: Path, tmp_path: Path):
    repo = repository_copy(cpu_repository, tmp_path / "repo")
    with Started(ServerConfig(model_repository=repo)) as started:
        server = started.server
        grpc_url, stubs_before = server.grpc_url, {s.pid for s in server.stubs()}
        with Load(server.grpc_url) as load:
            _wait_for(lambda: load.succeeded_after(0) >= 20, 30, "the first answers")
            began = time.monotonic()
            slowest_s = load.slowest_before(began)
            restart_s = server.restart()
            done = time.monotonic()
            _wait_for(lambda: load.succeeded_after(done) >= 20, 30, "answers after the restart")
        assert server.grpc_url == grpc_url and server.check_health() is None
        assert not ({s.pid for s in server.stubs()} & stubs_before)
    across = [end - begin for begin, end, _ in load.records if begin < done and end > began]
    bound_s = restart_s + reconnect_wait_bound_s(restart_s) + load.config.backoff_max_s + slowest_s
    print(
        f"restart took {restart_s:.2f} s; {len(load.records)} requests, {len(across)} spanning it, "
        f"longest {max(across):.2f} s (bound {bound_s:.2f} s; slowest before {slowest_s:.2f} s)"
    )
    record(
        "faults",
        "restart",
        startup_s=started.startup_s,
        restart_s=restart_s,
        requests=len(load.records),
        errors=len(load.errors()),
        longest_s=max(across),
    )
    assert load.errors() == [], load.errors()[:5]
    assert max(across) < bound_s


def test_a_failing_probe_restarts_the_server(cpu_repository: Path, tmp_path: Path):
    """An end-to-end probe (here: fails its first two calls) counts after ``failures_to_restart`` failures."""
    calls = []

    def probe(server: TritonServer) -> None:
        calls.append(time.monotonic())
        if len(calls) <= 2:
            raise RuntimeError("probe inference failed")

    repo = repository_copy(cpu_repository, tmp_path / "repo")
    with TritonServer(ServerConfig(model_repository=repo)) as server:
        pid = server.process.pid
        watchdog = watch(server, interval_s=0.2, probe=probe, failures_to_restart=2)
        _wait_for(lambda: watchdog.recoveries and len(calls) >= 4, 60, "a restart and two good probes")
        assert server.process.pid != pid and server.check_health() is None
    assert [r.reason for r in watchdog.recoveries] == ["probe failed: probe inference failed"]
    assert watchdog.recoveries[0].ok


HANG_PROBE = InferenceProbe(deadline_s=5.0)
HANG_DETECTION_BOUND_S = 3 * (WATCH_INTERVAL_S + HANG_PROBE.deadline_s) + 4.0


# Appended to the served copy of detector/1/model.py: the first execute after the flag file appears consumes it
# and never returns (the stub stays healthy to the python backend, its model answers nothing: the queue times out).
BLOCKING_EXECUTE = """

import pathlib as _pathlib
import threading as _threading

_execute = TritonPythonModel.execute


def _blocking_execute(self, requests):
    flag = _pathlib.Path(__file__).parent / "block"
    if flag.exists():
        flag.unlink()
        _threading.Event().wait()
    return _execute(self, requests)


TritonPythonModel.execute = _blocking_execute
"""


@pytest.mark.parametrize(
    "explicit, fault",
    [(False, "sigstop"), (True, "sigstop"), (False, "blocked-execute")],
    ids=["sigstop-restart", "sigstop-reload-explicit", "blocked-execute-restart"],
)
def test_hung_stub_is_found_and_recovered(cpu_repository: Path, tmp_path: Path, explicit: bool, fault: str):
    """SIGSTOP: the python backend reports the stub "not healthy" on every request it routes there. A blocked
    execute: the stub stays healthy, requests time out in the queue, and the model's counters stand still."""
    repo = repository_copy(cpu_repository, tmp_path / "repo")
    if fault == "blocked-execute":
        with open(repo / "detector" / "1" / "model.py", "a") as source:
            source.write(BLOCKING_EXECUTE)
    with Started(ServerConfig(model_repository=repo, model_control_explicit=explicit)) as started:
        server = started.server
        watchdog = watch(server, interval_s=WATCH_INTERVAL_S, hang_probe=HANG_PROBE)
        with Load(server.grpc_url) as load:
            _wait_for(lambda: load.succeeded_after(0) >= 20, 30, "the first answers")
            time.sleep(2.0)  # a few good probes under load: nothing to act on
            assert watchdog.recoveries == []
            stub = next(s for s in server.stubs() if s.model == "detector")
            hung_at = time.monotonic()
            if fault == "sigstop":
                os.kill(stub.pid, signal.SIGSTOP)
            else:
                (server.repository / "detector" / "1" / "block").touch()
            try:
                _wait_for(lambda: watchdog.recoveries, 60, "the watchdog to recover")
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(stub.pid, signal.SIGCONT)
            recovered_at = time.monotonic()
            _wait_for(lambda: load.succeeded_after(recovered_at) >= 20, 30, "answers after the recovery")
        health = server.check_health()
    recovery = watchdog.recoveries[0]
    errors = load.errors()
    print(
        f"hung detector stub ({fault}, explicit={explicit}): cold start {started.startup_s:.2f} s; "
        f"detected {recovery.detected_at - hung_at:.2f} s after the hang, recovered in {recovery.recovered_s:.2f} s; "
        f"{len(load.records)} requests, "
        f"{len(errors)} errors: {sorted({e[2][:60] for e in errors})}"
    )
    record(
        "faults",
        f"{fault}-{'reload-explicit' if explicit else 'restart'}",
        startup_s=started.startup_s,
        detected_s=recovery.detected_at - hung_at,
        recovered_s=recovery.recovered_s,
        requests=len(load.records),
        errors=len(errors),
    )
    assert len(watchdog.recoveries) == 1 and recovery.ok, watchdog.recoveries
    assert "detector" in recovery.reason and "hung" in recovery.reason, recovery.reason
    assert recovery.detected_at - hung_at < HANG_DETECTION_BOUND_S
    assert recovery.recovered_s < 3 * started.startup_s, started.startup_s
    assert health is None, health
    assert stub.pid not in {s.pid for s in server.stubs() if s.state != "Z"}
    # What callers see meanwhile: the requests the hung stub was given fail (INTERNAL "not healthy", or the
    # queue's timeout), none after the recovery.
    assert all(begin <= recovered_at for begin, _, _ in errors), errors


def test_reconnect_wait_bound_follows_grpcs_backoff_schedule():
    assert reconnect_wait_bound_s(0.5) == pytest.approx(1.2)  # back before the first attempt: its interval
    assert reconnect_wait_bound_s(1.0) == pytest.approx(1.6 * 1.2)  # the first attempt (>= 0.8 s) failed
    assert reconnect_wait_bound_s(2.1) == pytest.approx(1.6**2 * 1.2)  # attempts at >= 0.8 s and >= 2.08 s
