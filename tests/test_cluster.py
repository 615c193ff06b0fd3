"""The local scale-out (deploy.cluster): tritonserver replicas, each in its own network namespace (or on its own
loopback ports where namespaces are not allowed), behind nginx as the gRPC load balancer.

Calls spread over the replicas (counted by each replica's own statistics), benchmarks/perf.py through the
balancer unchanged, the 1-vs-N report, and failover: a replica killed under load while DetectorClient retries,
then restarted and back in the pool.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from fmdetect.benchmarks.loadgen import WindowPolicy
from fmdetect.benchmarks.spread import format_scaling, replica_counts, scaling, spread
from fmdetect.client.detector_client import ClientConfig, DetectorClient, DetectorClientError, Prediction
from fmdetect.deploy.cluster import (
    ADDRESS_BLOCK,
    Cluster,
    ClusterConfig,
    NamespaceNetwork,
    NamespacesNotPermitted,
    NetworkMode,
    cleanup_stale,
    find_nginx,
)
from fmdetect.serving.process import free_port
from tests.conftest import encode, photo_like, skip_for_missing_tool
from tests.figures import record

pytestmark = pytest.mark.triton
ROOT = Path(__file__).resolve().parents[1]

# Calls that fail because a replica died (before the client retries them) all fail within this many seconds of
# the kill: only the calls in flight on the dying replica fail; later ones are refused at connect and nginx
# passes them to the next replica. Measured here: 0.01-0.03 s.
FAILOVER_ERROR_WINDOW_S = 2.0
# Triton's own load shedding (the repository's bounded queues answer UNAVAILABLE when a request waits too long):
# the survivor takes all the load, and on a busy machine it may shed some; the client retries those too, but they
# are not failures of the failover.
OVERLOAD = re.compile(r"Request timeout expired|Exceeds maximum queue size")
# A restarted replica answers calls again within this many seconds of being ready: the active check's rise
# (2 polls, 0.5 s apart) plus nginx's reload. Measured here: about 1.1 s.
REJOIN_BOUND_S = 10.0
# A killed replica leaves the pool within this many seconds: `fall` (2) polls 0.5 s apart, each timing out after at
# most 1 s, plus slack for a busy machine.
LEAVE_BOUND_S = 6.0


def _payloads(n: int = 8) -> list[bytes]:
    return [encode(photo_like(96, 96, seed), "JPEG", quality=90) for seed in range(n)]


def _start(repository: Path, **options) -> Cluster:
    if find_nginx() is None:
        skip_for_missing_tool("nginx", "no load balancer, so no cluster ('make setup' installs it with apt-get)")
    cluster = Cluster(ClusterConfig(model_repository=repository, port=free_port(), **options))
    cluster.start()  # any failure, nginx's included (a broken nginx.conf.template), fails the test
    return cluster


@pytest.fixture(scope="module")
def cluster(cpu_repository: Path):
    cluster = _start(cpu_repository, replicas=2)
    print(f"\ncluster network: {cluster.network_note}")
    yield cluster
    cluster.stop()


def test_replicas_have_their_own_addresses(cluster: Cluster):
    urls = {r.grpc_url for r in cluster.replicas}
    assert len(urls) == 2
    if cluster.mode is NetworkMode.NAMESPACES:
        import ipaddress

        assert all(ipaddress.ip_address(r.host) in ADDRESS_BLOCK for r in cluster.replicas)
        namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        for replica in cluster.replicas:
            assert replica.namespace in namespaces
            route = subprocess.run(["ip", "route", "get", replica.host], capture_output=True, text=True).stdout
            assert f"dev {cluster.network.bridge}" in route
            # The server really runs inside the namespace (its network namespace differs from ours).
            pid = replica.server.process.pid
            assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
    else:
        assert "loopback" in cluster.network_note and "not allowed" in cluster.network_note


def test_calls_spread_over_replicas(cluster: Cluster):
    urls = [r.grpc_url for r in cluster.replicas]
    result = spread(cluster.grpc_url, urls, _payloads(), requests=40, concurrency=4)
    assert result.errors == 0
    counts = [c["requests"] for c in result.per_replica.values()]
    record("cluster", "spread", r0=counts[0], r1=counts[1], errors=result.errors)
    assert sum(counts) == 40, result.per_replica  # each call answered by exactly one replica
    assert all(10 <= c <= 30 for c in counts), result.per_replica  # round robin: about half each


def _replica_memory(cluster: Cluster) -> tuple[int, int]:
    """(resident bytes of every replica's server and stubs, bytes of their /dev/shm regions)."""
    servers = [r.server for r in cluster.replicas if r.server is not None]
    return (
        sum(s.rss_bytes() for s in servers),
        sum(os.path.getsize(f) for s in servers for f in s.shm_files() if os.path.exists(f)),
    )


def test_oversized_requests_are_refused_before_a_replica_buffers_them(cluster: Cluster):
    """50 payloads of 34 MiB (over the 32 MiB max_bytes plus framing) through the balancer, as an outsider sends
    them: raw tritonclient over gRPC, and plain HTTP. nginx refuses each; the replicas' memory and /dev/shm stay
    within 10 % of their level before, and good requests are answered meanwhile."""
    import urllib.error
    import urllib.request

    import numpy as np
    import tritonclient.grpc as grpcclient

    good = _payloads(1)[0]

    def infer(client, payload: bytes):
        tensor = grpcclient.InferInput("IMAGE_BYTES", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[payload]], dtype=object))
        return client.infer("deepfake_detector", [tensor])

    oversized = b"\0" * (34 * 1024 * 1024)
    with grpcclient.InferenceServerClient(cluster.grpc_url) as raw:
        infer(raw, good)  # the regions a normal request needs, before the baseline
        rss_before, shm_before = _replica_memory(cluster)
        refusals = []
        for _ in range(45):
            with pytest.raises(grpcclient.InferenceServerException) as caught:
                infer(raw, oversized)
            refusals.append(str(caught.value))
        assert infer(raw, good).as_numpy("PROB_FAKE").shape == (1, 1)
    for _ in range(5):
        request = urllib.request.Request(
            f"http://{cluster.http_url}/v2/models/deepfake_detector/infer",
            data=oversized,
            method="POST",
            headers={"Content-Type": "application/octet-stream"},
        )
        with pytest.raises(urllib.error.HTTPError) as http_caught:
            urllib.request.urlopen(request, timeout=60)
        assert http_caught.value.code == 413
    rss_after, shm_after = _replica_memory(cluster)
    print(
        f"50 oversized requests: replicas' RSS {rss_before / 2**20:.0f} -> {rss_after / 2**20:.0f} MiB, /dev/shm "
        f"{shm_before / 2**20:.0f} -> {shm_after / 2**20:.0f} MiB; gRPC error: {refusals[0][:120]}"
    )
    record(
        "edges",
        "oversized-proxied",
        rss_before_mib=rss_before / 2**20,
        rss_after_mib=rss_after / 2**20,
        shm_before_mib=shm_before / 2**20,
        shm_after_mib=shm_after / 2**20,
    )
    assert all("413" in r or "RESOURCE_EXHAUSTED" in r.upper() for r in refusals), refusals[:3]
    assert rss_after <= 1.1 * rss_before and shm_after <= 1.1 * shm_before


def _client_body_timeout_s() -> float:
    """``client_body_timeout`` of the balancer's nginx configuration, in seconds."""
    template = (ROOT / "deploy" / "nginx.conf.template").read_text()
    return float(re.search(r"client_body_timeout (\d+)s;", template).group(1))


def test_a_cut_chunked_body_is_dropped_by_the_balancer(cluster: Cluster):
    """A request whose chunked body stops mid-way: Triton alone holds it open for good
    (tests/test_hardening_protocol.py); nginx's client_body_timeout (10 s) answers 408 and closes it."""
    import socket

    host, port = cluster.http_url.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as raw:
        raw.sendall(
            b"POST /v2/models/deepfake_detector/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b'Content-Type: application/json\r\n\r\n10\r\n{"inputs": ['
        )
        began = time.monotonic()
        answer = b""
        while chunk := raw.recv(4096):
            answer += chunk
        waited = time.monotonic() - began
    print(f"cut chunked body: closed after {waited:.1f} s with {answer[:40]!r}")
    assert answer.startswith(b"HTTP/1.1 408") or answer == b"", answer[:200]
    # nginx's timer starts at its last read, just before ours; it fires on its event loop's next pass
    timeout_s = _client_body_timeout_s()
    assert timeout_s - 1.0 <= waited <= 2 * timeout_s, (waited, timeout_s)


def test_perf_runs_unchanged_through_the_balancer(cluster: Cluster, tmp_path: Path):
    out = tmp_path / "perf.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "perf.py"),
            "--url",
            cluster.grpc_url,
            "--concurrency",
            "2",
            "--window",
            "1",
            "--warmup",
            "0.5",
            "--duration",
            "3",
            "--num-images",
            "8",
            "--payload-profile",
            "square",
            "--image-size",
            "128",
            "--json",
            str(out),
            "--csv",
            "",
            "--plot",
            "",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (run,) = json.loads(out.read_text())["runs"]
    assert run["errors"] == 0 and run["samples"] > 10 and run["throughput_ips"] > 0


def test_one_vs_n_replicas_report(cluster: Cluster):
    urls = [r.grpc_url for r in cluster.replicas]
    rows = scaling(cluster, _payloads(), [2], WindowPolicy(window_s=1.0, warmup_s=0.5, max_windows=3))
    print("\n" + format_scaling(rows))
    one, both = rows
    record(
        "cluster",
        "one-vs-two",
        one_rps=one.throughput_rps,
        two_rps=both.throughput_rps,
        one_cpu_ms=one.server_cpu_ms_per_request,
        two_cpu_ms=both.server_cpu_ms_per_request,
        one_busy=one.cpu_busy,
        two_busy=both.cpu_busy,
    )
    assert (one.replicas, both.replicas) == (1, 2)
    assert one.errors == 0 and both.errors == 0 and one.throughput_rps > 0 and both.throughput_rps > 0
    assert one.server_cpu_ms_per_request > 0 and both.server_cpu_ms_per_request > 0
    assert one.per_replica[urls[0]]["requests"] > 0 and one.per_replica[urls[1]]["requests"] == 0
    assert all(both.per_replica[url]["requests"] > 0 for url in urls)
    assert cluster.pool() == {0, 1}


class _RetryLog(logging.Handler):
    """Times of the client's retries: each is one failed attempt that the client answered by retrying."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.times: list[tuple[float, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "retry" in record.getMessage():
            self.times.append((time.monotonic(), record.getMessage()))


def test_failover_kill_one_replica_under_load(cluster: Cluster):
    """Kill replica r1 (SIGKILL) a quarter into 400 calls at concurrency 4: every call id gets exactly one
    answer; with DetectorClient's default retry policy every one is a prediction; failed attempts stop within
    FAILOVER_ERROR_WINDOW_S; r1, restarted, gets calls again within REJOIN_BOUND_S of being ready."""
    total, kill_after = 400, 100
    payloads = _payloads()
    r0, r1 = (r.grpc_url for r in cluster.replicas)
    outcomes: dict[int, Prediction | DetectorClientError] = {}
    lock = threading.Lock()
    killed_at: list[float] = []

    retries = _RetryLog()
    client_logger = logging.getLogger("fmdetect.client.detector_client")
    level = client_logger.level
    client_logger.setLevel(logging.INFO)
    client_logger.addHandler(retries)
    try:
        with DetectorClient(ClientConfig(url=cluster.grpc_url)) as client:
            client.wait_until_ready(timeout_s=30)

            def call(i: int) -> None:
                try:
                    answer: Prediction | DetectorClientError = client.classify(payloads[i % len(payloads)])
                except DetectorClientError as error:
                    answer = error
                with lock:
                    assert i not in outcomes, f"call {i} answered twice"
                    outcomes[i] = answer

            def killer() -> None:
                while len(outcomes) < kill_after:
                    time.sleep(0.002)
                killed_at.append(time.monotonic())
                cluster.kill_replica(1)

            before_kill = replica_counts([r0])[r0]["requests"]
            kill_thread = threading.Thread(target=killer)
            kill_thread.start()
            started = time.monotonic()
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(call, range(total)))
            elapsed = time.monotonic() - started
            kill_thread.join()
    finally:
        client_logger.removeHandler(retries)
        client_logger.setLevel(level)

    assert killed_at, "the replica was never killed"
    kill = killed_at[0]
    assert sorted(outcomes) == list(range(total))
    errors = {i: a for i, a in outcomes.items() if not isinstance(a, Prediction)}
    for answer in errors.values():  # a failure would be a clear, typed error with the server's reason
        assert isinstance(answer, DetectorClientError) and answer.message
    # Only the survivor's load shedding may outlast the retries on a very busy machine; the kill never does.
    failed = {i: f"{type(e).__name__}: {e.message}" for i, e in errors.items() if not OVERLOAD.search(e.message)}
    assert not failed, failed
    failover = [(t - kill, m) for t, m in retries.times if not OVERLOAD.search(m)]
    shed = len(retries.times) - len(failover)
    window = max((o for o, _ in failover), default=0.0)
    assert all(-0.05 <= o <= FAILOVER_ERROR_WINDOW_S for o, _ in failover), failover
    assert replica_counts([r0])[r0]["requests"] > before_kill
    # The remaining calls may all be answered (by the survivor) before the active check has seen `fall` failed
    # polls, so wait for it, up to LEAVE_BOUND_S after the kill.
    while True:
        left = [e.at - kill for e in cluster.events if e.replica == 1 and not e.joined and e.at >= kill]
        if left or time.monotonic() - kill > LEAVE_BOUND_S:
            break
        time.sleep(0.05)
    assert left, f"the active check did not take the dead replica out of the pool within {LEAVE_BOUND_S} s"
    assert left[0] <= LEAVE_BOUND_S

    restart = time.monotonic()
    cluster.start_replica(1)
    ready = time.monotonic()
    stop = threading.Event()

    def background_load() -> None:
        with DetectorClient(ClientConfig(url=cluster.grpc_url)) as client:
            while not stop.is_set():
                with contextlib.suppress(DetectorClientError):  # overload shedding: keep the load going
                    client.classify(payloads[0])

    load = threading.Thread(target=background_load)
    load.start()
    served = None
    try:
        while time.monotonic() - ready < REJOIN_BOUND_S:
            if replica_counts([r1])[r1]["requests"] > 0:
                served = time.monotonic()
                break
            time.sleep(0.05)
    finally:
        stop.set()
        load.join()
    assert served is not None, f"r1 got no call within {REJOIN_BOUND_S} s of being ready"
    assert cluster.pool() == {0, 1}
    record(
        "cluster",
        "failover",
        failed_calls=len(errors),
        failed_attempts=len(failover),
        last_failure_s=window,
        left_s=left[0],
    )
    record("cluster", "rejoin", ready_s=ready - restart, served_s=served - ready)
    print(
        f"\nfailover ({cluster.network_note}; {os.cpu_count()} cores): {total} calls in {elapsed:.1f} s, "
        f"{len(errors)} failed after retries (overload only), {len(failover)} failed attempts retried by the "
        f"client, the last {window:.3f} s after the kill ({shed} overload rejections by the survivor, retried "
        f"too); r1 left the pool {left[0]:.2f} s after the kill; restart -> ready {ready - restart:.2f} s, "
        f"ready -> first call served {served - ready:.2f} s"
    )


def test_loopback_ports_without_namespaces(cpu_repository: Path):
    """The fallback: replicas on distinct 127.0.0.1 ports, nginx's passive checks only."""
    cluster = _start(cpu_repository, replicas=2, network=NetworkMode.LOOPBACK, health_interval_s=0)
    try:
        assert cluster.mode is NetworkMode.LOOPBACK and "loopback" in cluster.network_note
        assert all(r.host == "127.0.0.1" for r in cluster.replicas)
        assert len({r.grpc_port for r in cluster.replicas}) == 2
        urls = [r.grpc_url for r in cluster.replicas]
        result = spread(cluster.grpc_url, urls, _payloads(), requests=20, concurrency=2)
        assert result.errors == 0 and all(c["requests"] > 0 for c in result.per_replica.values())
    finally:
        cluster.stop()


def test_stale_cluster_is_cleaned_up(tmp_path: Path):
    """A launcher that died without stopping: the next one removes its namespaces and links."""
    network = NamespaceNetwork(os.urandom(2).hex())
    try:
        network.create(1)
    except NamespacesNotPermitted as exc:  # EPERM or no iproute2; any other failure fails
        network.delete()
        pytest.skip(f"network namespaces are not permitted here (NOT a pass): {exc}")
    dead = subprocess.Popen(["true"])
    dead.wait()
    state = {
        "id": network.cluster_id,
        "pid": dead.pid,
        "processes": [],
        "workdirs": [],
        "namespaces": network.namespaces,
        "links": network.links,
    }
    (tmp_path / f"{network.cluster_id}.json").write_text(json.dumps(state))
    assert cleanup_stale(tmp_path) == [network.cluster_id]
    assert network.namespaces[0] not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert subprocess.run(["ip", "link", "show", network.bridge], capture_output=True).returncode != 0
    assert not list(tmp_path.glob("*.json"))
