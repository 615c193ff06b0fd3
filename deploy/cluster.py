"""Several tritonserver replicas of one model repository behind an nginx gRPC load balancer, on this machine.

Each replica runs its own ``tritonserver`` (the one bundled with nvidia-pytriton, started through
``serving.tritonserver.TritonServer``) inside its own network namespace, with its own address: a veth pair from the
namespace into a bridge that this launcher creates, addresses in 198.18.0.0/15 (the block RFC 2544 reserves for
network benchmarks; a /24 no interface here uses is picked). Where namespaces cannot be created (no root, no
CAP_NET_ADMIN, a sandbox that forbids them), the replicas run on distinct loopback ports instead and the launcher
says so. nginx (Debian's ``nginx`` package, installed with apt-get when missing) listens on 127.0.0.1:PORT and
spreads gRPC calls over the replicas, one call at a time (round robin per HTTP/2 stream).

Health: nginx's passive checks (``max_fails``/``fail_timeout``; a failed call goes to the next replica) plus an
active loop here that polls every replica's ``/v2/health/ready`` and marks a replica ``down`` in nginx's
configuration (graceful reload) until it is ready again. Everything the launcher creates (namespaces, links,
processes, the served copies) it removes when it stops; a launcher that was killed leaves a state file, and the
next launcher (or ``--cleanup``) removes what it left.

Example::

    python -m deploy.cluster --model-repository artifacts/repository/cpu --replicas 2 --port 8001
    python benchmarks/perf.py --url 127.0.0.1:8001                 # another shell: through the balancer
    python -m benchmarks.spread --replica-urls 198.18.37.10:8001,198.18.37.11:8001   # requests per replica
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from string import Template

from fmdetect.serving import procfs
from fmdetect.serving.admin import AdminClient
from fmdetect.serving.health import HealthStreak
from fmdetect.serving.process import accepts, file_tail, free_port, start_in_session, terminate_group
from fmdetect.serving.tritonserver import SHM_DIR, RestrictedAPI, ServerConfig, ServerError, TritonServer

logger = logging.getLogger(__name__)

TEMPLATE = Path(__file__).resolve().parent / "nginx.conf.template"
# RFC 2544's benchmarking block: not routed on the internet, and unlike 10/8, 172.16/12 or 192.168/16 unlikely to
# be a real network of the machine. Only a /24 that no address or route here overlaps is used.
ADDRESS_BLOCK = ipaddress.ip_network("198.18.0.0/15")
# Inside its namespace every replica listens on Triton's usual ports.
REPLICA_HTTP_PORT, REPLICA_GRPC_PORT, REPLICA_METRICS_PORT = 8000, 8001, 8002
STATE_DIR = Path(os.environ.get("FMDETECT_CLUSTER_STATE", "/run/fmdetect-cluster"))
NGINX_PACKAGE = "nginx"  # Debian 12: the server itself (nginx-light is a metapackage over it)


class ClusterError(RuntimeError):
    """The cluster could not be set up; the message says what is missing and how to get it."""


class NetworkMode(str, Enum):
    AUTO = "auto"  # namespaces when they can be created, else loopback ports
    NAMESPACES = "netns"
    LOOPBACK = "loopback"


@dataclass(frozen=True)
class ClusterConfig:
    """What to start.

    Attributes:
        model_repository: the repository every replica serves (each serves its own copy of it).
        replicas: number of tritonserver processes.
        port: the balancer's gRPC port on ``listen_host``.
        http_port: the balancer's HTTP port; None picks a free one.
        network: how replicas get their own addresses.
        max_fails: nginx passive check: failures within ``fail_timeout_s`` that take a replica out.
        fail_timeout_s: nginx passive check: the window, and how long the replica then stays out.
        health_interval_s: seconds between active readiness polls; 0 leaves only nginx's passive checks.
        fall: consecutive failed polls that take a replica out of the pool.
        rise: consecutive successful polls that put it back.
        install_nginx: apt-get install nginx when it is missing (needs root).
        ready_timeout_s: most seconds a replica may take to become ready.
        workers: nginx worker processes.
        max_body_bytes: nginx's ``client_max_body_size``: a larger request is refused by the balancer (HTTP 413,
            gRPC RESOURCE_EXHAUSTED / "413") before any replica buffers it. Triton has no such limit of its own,
            and a payload it received stays in its memory and /dev/shm for good even when preprocess rejects it.
            Default: the preprocess ``max_bytes`` (32 MiB) plus 1 MiB for the request's framing.
        restricted_api: the admin key every replica requires on its restricted APIs (one key for the cluster;
            default ``RestrictedAPI.default()``: $TRITON_ADMIN_KEY or a random key); None opens them.
    """

    model_repository: Path
    replicas: int = 2
    port: int = 8001
    http_port: int | None = None
    listen_host: str = "127.0.0.1"
    network: NetworkMode = NetworkMode.AUTO
    max_fails: int = 1
    fail_timeout_s: float = 5.0
    next_upstream_tries: int = 0  # 0: every replica may be tried once
    connect_timeout_s: float = 1.0
    max_body_bytes: int = 33 * 1024 * 1024
    health_interval_s: float = 0.5
    restricted_api: RestrictedAPI | None = field(default_factory=RestrictedAPI.default)
    fall: int = 2
    rise: int = 2
    install_nginx: bool = True
    ready_timeout_s: float = 120.0
    workers: int = 1

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {self.replicas}")
        if self.fall < 1 or self.rise < 1:
            raise ValueError(f"fall and rise must be >= 1, got {self.fall} and {self.rise}")
        if self.max_fails < 0 or self.fail_timeout_s <= 0:
            raise ValueError("max_fails must be >= 0 and fail_timeout_s > 0")


@dataclass
class Replica:
    """One tritonserver of the cluster: where it listens, and its process while it runs."""

    index: int
    host: str
    namespace: str | None = None
    grpc_port: int = REPLICA_GRPC_PORT
    http_port: int = REPLICA_HTTP_PORT
    metrics_port: int = REPLICA_METRICS_PORT
    server: TritonServer | None = None

    @property
    def name(self) -> str:
        return f"r{self.index}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    @property
    def running(self) -> bool:
        return self.server is not None and self.server.running


@dataclass(frozen=True)
class PoolEvent:
    """A replica left or (re)joined the balancer's pool, at ``time.monotonic()`` ``at``."""

    at: float
    replica: int
    joined: bool


# ------------------------------------------------------------------------------------------------ network
class NamespacesNotPermitted(ClusterError):
    """This machine does not let the launcher make network namespaces: no ``ip`` command, or EPERM (no
    CAP_NET_ADMIN, a sandbox). The one failure the cluster falls back to loopback ports for."""


_NOT_PERMITTED = ("Operation not permitted", "Permission denied")


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True)
    if check and result.returncode != 0:
        error = NamespacesNotPermitted if any(m in result.stderr for m in _NOT_PERMITTED) else ClusterError
        raise error(f"{' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def _networks_in_use() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network this machine has an address or a route in (any namespace's view: this one's)."""
    used = []
    for line in _run("ip", "-4", "-o", "addr", "show").stdout.splitlines():
        parts = line.split()
        if "inet" in parts:
            used.append(ipaddress.ip_interface(parts[parts.index("inet") + 1]).network)
    for line in _run("ip", "-4", "route", "show", "table", "all").stdout.splitlines():
        dest = line.split()[0] if line.split() else ""
        if dest and dest[0].isdigit():
            with contextlib.suppress(ValueError):
                used.append(ipaddress.ip_network(dest, strict=False))
    return used


def free_subnet(rng: random.Random | None = None) -> ipaddress.IPv4Network:
    """A /24 of ``ADDRESS_BLOCK`` that overlaps no address or route of this machine."""
    used = _networks_in_use()
    candidates = list(ADDRESS_BLOCK.subnets(new_prefix=24))[1:]
    (rng or random.Random()).shuffle(candidates)
    for net in candidates:
        if not any(net.overlaps(other) for other in used if other.prefixlen > 0):
            return net
    raise ClusterError(f"no free /24 left in {ADDRESS_BLOCK}")


class NamespaceNetwork:
    """A bridge on this host and, per replica, a namespace joined to it by a veth pair; removed by ``delete``.

    Only objects named after ``cluster_id`` are created, and ``delete`` removes exactly those.
    """

    def __init__(self, cluster_id: str) -> None:
        self.cluster_id = cluster_id
        self.bridge = f"fmd{cluster_id}br"
        self.subnet: ipaddress.IPv4Network | None = None
        self.namespaces: list[str] = []
        self.links: list[str] = []

    def create(self, count: int) -> list[tuple[str, str]]:
        """Create the network; returns (namespace, address) per replica.

        Raises:
            NamespacesNotPermitted: no ``ip`` command, or a step was refused with EPERM.
            ClusterError: any other failure of a step (what was created so far is still recorded for ``delete``).
        """
        if shutil.which("ip") is None:
            raise NamespacesNotPermitted("the 'ip' command (iproute2) is missing")
        self.subnet = free_subnet()
        hosts = list(self.subnet.hosts())
        gateway, prefix = hosts[0], self.subnet.prefixlen
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        self.links.append(self.bridge)
        _run("ip", "addr", "add", f"{gateway}/{prefix}", "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")
        out = []
        for i in range(count):
            namespace, address = f"fmd-{self.cluster_id}-r{i}", str(hosts[9 + i])
            host_if, ns_if = f"fmd{self.cluster_id}h{i}", f"fmd{self.cluster_id}n{i}"
            _run("ip", "netns", "add", namespace)
            self.namespaces.append(namespace)
            _run("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
            self.links.append(host_if)
            _run("ip", "link", "set", ns_if, "netns", namespace)
            _run("ip", "link", "set", host_if, "master", self.bridge)
            _run("ip", "link", "set", host_if, "up")
            _run("ip", "-n", namespace, "addr", "add", f"{address}/{prefix}", "dev", ns_if)
            _run("ip", "-n", namespace, "link", "set", ns_if, "up")
            _run("ip", "-n", namespace, "link", "set", "lo", "up")
            out.append((namespace, address))
        for _, address in out:  # traffic to a replica must stay on our bridge, never take the default route
            route = _run("ip", "route", "get", address).stdout
            if f"dev {self.bridge}" not in route:
                raise ClusterError(f"{address} is not routed through {self.bridge}: {route.strip()}")
        return out

    def delete(self) -> None:
        """Remove the namespaces (their veth ends go with them) and the links created here; idempotent."""
        for namespace in reversed(self.namespaces):
            _run("ip", "netns", "del", namespace, check=False)
        for link in reversed(self.links):
            if _run("ip", "link", "show", link, check=False).returncode == 0:
                _run("ip", "link", "del", link, check=False)
        self.namespaces, self.links = [], []

    def describe(self) -> str:
        return f"network namespaces on bridge {self.bridge} {self.subnet}"


# ------------------------------------------------------------------------------------------------ nginx
def find_nginx() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)


def ensure_nginx(install: bool = True) -> str:
    """Path of an nginx that can proxy gRPC; installs Debian's nginx with apt-get when missing.

    Raises:
        ClusterError: nginx is missing and cannot be installed here, or it lacks HTTP/2 or gRPC.
    """
    nginx = find_nginx()
    if nginx is None:
        hint = f"install it with: apt-get install -y --no-install-recommends {NGINX_PACKAGE}"
        if not install:
            raise ClusterError(f"nginx not found; {hint}")
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            raise ClusterError(f"nginx not found and apt-get cannot run here (needs root on Debian); {hint}")
        print(
            f"nginx not found: installing Debian's {NGINX_PACKAGE} with apt-get (once) ...", file=sys.stderr, flush=True
        )
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        command = ["apt-get", "install", "-y", "--no-install-recommends", NGINX_PACKAGE]
        result = subprocess.run(command, capture_output=True, text=True, env=env)
        if result.returncode != 0:  # package lists may be missing or stale
            subprocess.run(["apt-get", "update"], capture_output=True, text=True, env=env)
            result = subprocess.run(command, capture_output=True, text=True, env=env)
        nginx = find_nginx()
        if result.returncode != 0 or nginx is None:
            tail = "\n".join((result.stdout + result.stderr).splitlines()[-10:])
            raise ClusterError(f"apt-get install {NGINX_PACKAGE} failed:\n{tail}")
    build = subprocess.run([nginx, "-V"], capture_output=True, text=True).stderr
    if "--with-http_v2_module" not in build or "--without-http_grpc_module" in build:
        raise ClusterError(f"{nginx} lacks HTTP/2 or gRPC proxying (nginx -V: {build.strip()[:300]})")
    return nginx


class _NginxTemplate(Template):
    delimiter = "@"  # nginx variables use '$'


class NginxBalancer:
    """nginx in front of the replicas: renders ``nginx.conf.template``, starts, reloads and stops the master."""

    def __init__(self, config: ClusterConfig, http_port: int, workdir: Path) -> None:
        self.config = config
        self.http_port = http_port
        self.workdir = workdir
        self.conf = workdir / "nginx.conf"
        self.process: subprocess.Popen | None = None
        self.nginx = ensure_nginx(config.install_nginx)
        self.version = subprocess.run([self.nginx, "-v"], capture_output=True, text=True).stderr.strip()

    @property
    def access_log(self) -> Path:
        return self.workdir / "access.log"

    @property
    def error_log(self) -> Path:
        return self.workdir / "error.log"

    def render(self, replicas: list[Replica], down: set[int]) -> str:
        c = self.config

        def servers(port_of) -> str:
            return "\n".join(
                f"        server {r.host}:{port_of(r)} max_fails={c.max_fails} fail_timeout={c.fail_timeout_s:g}s"
                f"{' down' if r.index in down else ''};"
                for r in replicas
            )

        return _NginxTemplate(TEMPLATE.read_text()).substitute(
            workers=c.workers,
            workdir=self.workdir,
            listen_host=c.listen_host,
            grpc_port=c.port,
            http_port=self.http_port,
            next_upstream_tries=c.next_upstream_tries,
            connect_timeout=f"{c.connect_timeout_s:g}s",
            max_body_size=f"{c.max_body_bytes // 1024}k",
            grpc_servers=servers(lambda r: r.grpc_port),
            http_servers=servers(lambda r: r.http_port),
        )

    def _write(self, replicas: list[Replica], down: set[int]) -> None:
        text = self.render(replicas, down)
        staging = self.conf.with_suffix(".test")
        staging.write_text(text)
        check = subprocess.run(
            [self.nginx, "-t", "-q", "-p", str(self.workdir), "-c", str(staging), "-e", str(self.error_log)],
            capture_output=True,
            text=True,
        )
        if check.returncode != 0:
            raise ClusterError(f"nginx rejected its configuration: {check.stderr.strip()}")
        staging.replace(self.conf)

    def start(self, replicas: list[Replica], down: set[int], timeout_s: float = 10.0) -> None:
        self._write(replicas, down)
        self.process = start_in_session(
            [self.nginx, "-p", str(self.workdir), "-c", str(self.conf), "-e", str(self.error_log)],
            self.workdir / "nginx.out",
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ClusterError(f"nginx exited with {self.process.returncode}:\n{self.log_tail()}")
            if accepts(self.config.listen_host, self.config.port) and accepts(self.config.listen_host, self.http_port):
                return
            time.sleep(0.05)
        raise ClusterError(f"nginx did not listen on {self.config.listen_host}:{self.config.port}:\n{self.log_tail()}")

    def reload(self, replicas: list[Replica], down: set[int]) -> None:
        """New configuration, then SIGHUP: new workers take new calls, old ones finish theirs."""
        self._write(replicas, down)
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGHUP)

    def log_tail(self, lines: int = 20) -> str:
        return file_tail(self.error_log, lines)

    def stop(self) -> None:
        """SIGTERM (fast shutdown: the replicas are going away too), then SIGKILL what is left after 10 s."""
        if self.process is None:
            return
        terminate_group(self.process, grace_s=10.0, kill_wait_s=5.0)
        self.process = None


def replica_ready(replica: Replica, timeout_s: float = 1.0) -> bool:
    """Triton's readiness (server ready and every model ready) asked over HTTP at the replica's own address."""
    return AdminClient(replica.http_url).is_ready(timeout_s)


# ------------------------------------------------------------------------------------------------ state
def cleanup_stale(state_dir: Path = STATE_DIR) -> list[str]:
    """Remove what launchers that died without stopping left (their state files name it); returns their ids."""
    cleaned = []
    if not state_dir.is_dir():
        return cleaned
    for path in sorted(state_dir.glob("*.json")):
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if procfs.is_alive(int(state.get("pid", 0))):
            continue
        for pid, marker in state.get("processes", []):  # only processes that are still ours
            if marker in " ".join(procfs.cmdline(pid)):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
        network = NamespaceNetwork(state["id"])
        network.namespaces, network.links = state.get("namespaces", []), state.get("links", [])
        network.delete()
        for workdir in state.get("workdirs", []):
            shutil.rmtree(workdir, ignore_errors=True)
        for prefix in state.get("shm_prefixes", []):  # the python stubs' shared memory
            for shm in SHM_DIR.glob(f"{prefix}*"):
                shm.unlink(missing_ok=True)
        path.unlink(missing_ok=True)
        cleaned.append(state["id"])
        logger.warning("removed what stale cluster %s (launcher pid %s) left", state["id"], state.get("pid"))
    return cleaned


# ------------------------------------------------------------------------------------------------ cluster
class Cluster:
    """N replicas + nginx; use as a context manager or call ``start()`` / ``stop()``."""

    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self.id = os.urandom(3).hex()  # names interfaces: fmd<6 hex>h<i> stays within 15 characters
        self.replicas: list[Replica] = []
        self.network: NamespaceNetwork | None = None
        self.network_note = ""
        self.balancer: NginxBalancer | None = None
        self.workdir: Path | None = None
        self.events: list[PoolEvent] = []
        self._pool: set[int] = set()  # what nginx sends calls to: healthy and enabled
        self._healthy: set[int] = set()  # by the active checks (all, without them)
        self._enabled: set[int] = set()  # by the operator (``use``), e.g. 1 replica of N for a comparison
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._health: threading.Thread | None = None
        self._state_file: Path | None = None

    # -------------------------------------------------------------------- addresses
    @property
    def grpc_url(self) -> str:
        return f"{self.config.listen_host}:{self.config.port}"

    @property
    def http_url(self) -> str:
        assert self.balancer is not None
        return f"{self.config.listen_host}:{self.balancer.http_port}"

    @property
    def mode(self) -> NetworkMode:
        return NetworkMode.NAMESPACES if self.network is not None else NetworkMode.LOOPBACK

    def pool(self) -> set[int]:
        """Replicas the balancer sends calls to now (as configured by the active check)."""
        with self._lock:
            return set(self._pool)

    def __enter__(self) -> Cluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -------------------------------------------------------------------- start / stop
    def start(self) -> None:
        """Network, replicas (started one after the other, each until ready), nginx, active health checks.

        Raises:
            ClusterError: a piece could not be set up; everything created so far is removed.
        """
        c = self.config
        if not Path(c.model_repository).is_dir():
            raise ClusterError(f"model repository {c.model_repository} does not exist")
        with contextlib.suppress(OSError):
            cleanup_stale()
        self.workdir = Path(tempfile.mkdtemp(prefix=f"fmdetect-cluster-{self.id}-"))
        try:
            self.balancer = balancer = NginxBalancer(c, c.http_port or free_port(c.listen_host), self.workdir)
            self._setup_network()
            self._save_state()
            for replica in self.replicas:
                self._start_server(replica)
                self._save_state()
            everyone = {r.index for r in self.replicas}
            self._pool, self._healthy, self._enabled = set(everyone), set(everyone), set(everyone)
            balancer.start(self.replicas, down=set())
            self._save_state()
        except BaseException:
            self.stop()
            raise
        if c.health_interval_s > 0:
            self._health = threading.Thread(target=self._health_loop, name="cluster-health", daemon=True)
            self._health.start()
        logger.info(
            "cluster %s: %d replicas (%s) behind nginx on %s",
            self.id,
            len(self.replicas),
            self.network_note,
            self.grpc_url,
        )

    def _setup_network(self) -> None:
        c = self.config
        if c.network is not NetworkMode.LOOPBACK:
            network = NamespaceNetwork(self.id)
            self.network = network
            try:
                placed = network.create(c.replicas)
            except NamespacesNotPermitted as exc:  # any other failure is a bug to see, not to route around
                network.delete()
                self.network = None
                if c.network is NetworkMode.NAMESPACES:
                    raise ClusterError(f"network namespaces are not available here: {exc}") from exc
                self.network_note = f"loopback ports (network namespaces not allowed here: {exc})"
                logger.warning("falling back to loopback ports: network namespaces not allowed here: %s", exc)
            else:
                self.replicas = [Replica(i, address, namespace) for i, (namespace, address) in enumerate(placed)]
                self.network_note = network.describe()
                return
        else:
            self.network_note = "loopback ports (asked for)"
        # Loopback: ports are picked when each replica first starts and kept for its restarts.
        self.replicas = [Replica(i, "127.0.0.1", None, 0, 0, 0) for i in range(c.replicas)]

    def _start_server(self, replica: Replica) -> None:
        c = self.config
        ports = dict(
            http_port=replica.http_port or None,
            grpc_port=replica.grpc_port or None,
            metrics_port=replica.metrics_port or None,
        )
        server_config = ServerConfig(
            model_repository=Path(c.model_repository),
            host=replica.host,
            ready_timeout_s=c.ready_timeout_s,
            restricted_api=c.restricted_api,
            # ``ip netns exec`` execs the server: the process, its group and its clean-up stay the same.
            command_prefix=("ip", "netns", "exec", replica.namespace) if replica.namespace else (),
            **ports,
        )
        server = TritonServer(server_config)
        try:
            server.start()
        except ServerError as exc:
            raise ClusterError(f"replica {replica.name} at {replica.host} did not start: {exc}") from exc
        replica.server = server
        replica.grpc_port, replica.http_port, replica.metrics_port = (
            server.grpc_port,
            server.http_port,
            server.metrics_port,
        )

    def stop(self) -> None:
        """Stop the health loop, nginx and every replica, delete the network and the state file; idempotent."""
        self._stop.set()
        if self._health is not None:
            self._health.join(timeout=10)
            self._health = None
        if self.balancer is not None:
            self.balancer.stop()
        running = [r for r in self.replicas if r.server is not None]
        stoppers = [threading.Thread(target=r.server.stop) for r in running]  # each waits up to its exit timeout
        for thread in stoppers:
            thread.start()
        for thread, replica in zip(stoppers, running, strict=True):
            thread.join()
            replica.server = None
        if self.network is not None:
            self.network.delete()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
        if self._state_file is not None:
            self._state_file.unlink(missing_ok=True)
            self._state_file = None

    def _save_state(self) -> None:
        """What a later launcher needs to clean up after this one if it dies without stopping."""
        footprints = [r.server.footprint() for r in self.replicas if r.server is not None]
        processes = [[f["pid"], "tritonserver"] for f in footprints if f["pid"] is not None]
        if self.balancer is not None and self.balancer.process is not None:
            processes.append([self.balancer.process.pid, "nginx"])
        workdirs = [str(self.workdir)] + [f["workdir"] for f in footprints if f["workdir"] is not None]
        shm_prefixes = [f["shm_prefix"] for f in footprints]
        state = {
            "id": self.id,
            "pid": os.getpid(),
            "processes": processes,
            "workdirs": workdirs,
            "shm_prefixes": shm_prefixes,
            "namespaces": self.network.namespaces if self.network else [],
            "links": self.network.links if self.network else [],
        }
        try:
            STATE_DIR.mkdir(parents=True, exist_ok=True)
            path = STATE_DIR / f"{self.id}.json"
            path.write_text(json.dumps(state))
            self._state_file = path
        except OSError as exc:  # not fatal: only stale clean-up needs it
            logger.debug("cannot write cluster state to %s: %s", STATE_DIR, exc)

    # -------------------------------------------------------------------- failures
    def kill_replica(self, index: int, signum: int = signal.SIGKILL) -> None:
        """Kill a replica's whole process group (a crash, with the default SIGKILL) and clean up after it."""
        replica = self.replicas[index]
        server = replica.server
        if server is None or server.pid is None:
            raise ClusterError(f"replica {replica.name} is not running")
        server.signal(signum)
        server.stop()
        replica.server = None
        self._save_state()

    def start_replica(self, index: int) -> None:
        """Start a stopped replica again at its address and ports; returns once it is ready (not yet in the pool)."""
        replica = self.replicas[index]
        if replica.running:
            raise ClusterError(f"replica {replica.name} is already running")
        self._start_server(replica)
        self._save_state()

    def wait_for_pool(self, expected: set[int], timeout_s: float = 30.0) -> float:
        """Wait until the pool is ``expected``; returns the ``time.monotonic()`` it was.

        Raises:
            TimeoutError: the pool did not become ``expected`` in time.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.pool() == expected:
                return time.monotonic()
            time.sleep(0.02)
        raise TimeoutError(f"pool is {sorted(self.pool())}, expected {sorted(expected)} after {timeout_s:g} s")

    def use(self, members: set[int]) -> None:
        """Let the balancer send calls to these replicas only (while healthy); the others are marked ``down``."""
        unknown = set(members) - {r.index for r in self.replicas}
        if unknown:
            raise ValueError(f"no replicas {sorted(unknown)}; valid: 0..{len(self.replicas) - 1}")
        with self._lock:
            self._enabled = set(members)
            self._apply()

    def _apply(self) -> None:
        """Reconfigure nginx when healthy and enabled replicas changed, and record who left or joined."""
        with self._lock:
            members = self._healthy & self._enabled
            if members == self._pool:
                return
            now = time.monotonic()
            for index in sorted(self._pool - members):
                self.events.append(PoolEvent(now, index, joined=False))
                logger.info("replica r%d left the pool", index)
            for index in sorted(members - self._pool):
                self.events.append(PoolEvent(now, index, joined=True))
                logger.info("replica r%d joined the pool", index)
            assert self.balancer is not None
            self.balancer.reload(self.replicas, {r.index for r in self.replicas} - members)
            self._pool = members

    def _health_loop(self) -> None:
        """Active checks: ``fall`` failed polls take a replica out, ``rise`` good ones put it back."""
        c = self.config
        with self._lock:
            streaks = {r.index: HealthStreak(c.fall, c.rise, healthy=r.index in self._healthy) for r in self.replicas}
        timeout = max(0.2, min(1.0, 2 * c.health_interval_s))
        while not self._stop.wait(c.health_interval_s):
            for replica in self.replicas:
                healthy = streaks[replica.index].observe(replica.running and replica_ready(replica, timeout))
                with self._lock:
                    if healthy:
                        self._healthy.add(replica.index)
                    else:
                        self._healthy.discard(replica.index)
            try:
                self._apply()
            except ClusterError as exc:  # keep the previous configuration; nginx keeps serving
                logger.error("could not reconfigure nginx: %s", exc)


# ------------------------------------------------------------------------------------------------ CLI
def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Serve a model repository with several tritonserver replicas behind "
        "an nginx gRPC load balancer on this machine (Ctrl-C stops all).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model-repository", type=Path, help="repository every replica serves (a CPU repository here)")
    p.add_argument("--replicas", type=int, default=2, help="tritonserver processes")
    p.add_argument("--port", type=int, default=8001, help="the balancer's gRPC port on 127.0.0.1")
    p.add_argument("--http-port", type=int, default=0, help="the balancer's HTTP port (0: a free one)")
    p.add_argument(
        "--network",
        default=NetworkMode.AUTO.value,
        choices=[m.value for m in NetworkMode],
        help="netns: a network namespace and address per replica; loopback: distinct ports on "
        "127.0.0.1; auto: netns when allowed",
    )
    p.add_argument("--max-fails", type=int, default=1, help="nginx: failures that take a replica out")
    p.add_argument("--fail-timeout", type=float, default=5.0, help="nginx: seconds a failed replica stays out")
    p.add_argument(
        "--health-interval",
        type=float,
        default=0.5,
        help="seconds between active readiness polls (0: nginx's passive checks only)",
    )
    p.add_argument("--no-install", action="store_true", help="fail instead of apt-get installing nginx")
    p.add_argument("--cleanup", action="store_true", help="only remove what killed launchers left, then exit")
    p.add_argument(
        "--install-nginx",
        action="store_true",
        help=f"only make sure nginx is installed (apt-get install {NGINX_PACKAGE} when missing), then exit",
    )
    return p


def config_from_args(args: argparse.Namespace) -> ClusterConfig:
    return ClusterConfig(
        model_repository=args.model_repository,
        replicas=args.replicas,
        port=args.port,
        http_port=args.http_port or None,
        network=NetworkMode(args.network),
        max_fails=args.max_fails,
        fail_timeout_s=args.fail_timeout,
        health_interval_s=args.health_interval,
        install_nginx=not args.no_install,
    )


def describe(cluster: Cluster) -> str:
    c = cluster.config
    assert cluster.balancer is not None
    lines = [
        f"network:  {cluster.network_note}",
        f"balancer: {cluster.balancer.version}, gRPC {cluster.grpc_url}, HTTP {cluster.http_url} "
        f"(config {cluster.balancer.conf})",
    ]
    for r in cluster.replicas:
        where = f"netns {r.namespace}" if r.namespace else "loopback"
        lines.append(
            f"replica {r.name}: {where:<18} gRPC {r.grpc_url:<21} HTTP {r.http_url:<21} metrics {r.metrics_url}"
        )
    active = (
        f"active /v2/health/ready every {c.health_interval_s:g} s (out after {c.fall}, back after {c.rise})"
        if c.health_interval_s > 0
        else "no active checks"
    )
    lines.append(
        f"health:   nginx passive max_fails={c.max_fails} fail_timeout={c.fail_timeout_s:g}s, "
        f"failed calls retried on the next replica; {active}"
    )
    urls = ",".join(r.grpc_url for r in cluster.replicas)
    lines.append(f"try:      python benchmarks/perf.py --url {cluster.grpc_url}")
    lines.append(f"          python -m benchmarks.spread --url {cluster.grpc_url} --replica-urls {urls}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.cleanup:
        cleaned = cleanup_stale()
        print(f"removed {len(cleaned)} stale cluster(s){': ' + ', '.join(cleaned) if cleaned else ''}")
        return 0
    if args.install_nginx:
        try:
            nginx = ensure_nginx(install=True)
        except ClusterError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"{nginx}: {subprocess.run([nginx, '-v'], capture_output=True, text=True).stderr.strip()}")
        return 0
    if args.model_repository is None:
        parser.error("--model-repository is required")
    try:
        cluster = Cluster(config_from_args(args))
    except ValueError as exc:
        parser.error(str(exc))
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    try:
        cluster.start()
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(describe(cluster) + "\n(Ctrl-C stops everything)", flush=True)
    seen = 0
    try:
        while not stopping.wait(0.5):
            for event in cluster.events[seen:]:
                print(f"replica r{event.replica} {'joined' if event.joined else 'left'} the pool", flush=True)
            seen = len(cluster.events)
            if (
                cluster.balancer is None
                or cluster.balancer.process is None
                or cluster.balancer.process.poll() is not None
            ):
                print(
                    f"nginx exited unexpectedly:\n{cluster.balancer.log_tail() if cluster.balancer else ''}",
                    file=sys.stderr,
                )
                return 1
    finally:
        cluster.stop()
        print("cluster stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
