"""Start, check and stop a local ``tritonserver`` (the one bundled in the nvidia-pytriton wheel).

The bundled server has the python backend only, so it serves the ``cpu`` target. ``TritonServer`` serves a copy of
the repository (the python stub writes ``__pycache__`` into version folders), binds 127.0.0.1 by default, gives
its python-backend shared-memory regions a unique prefix and removes exactly those when it stops.

A python stub that dies hard (OOM killer, a crash in native code) leaves its model answering every request with
"Stub process '...' is not healthy" while Triton still reports the model ready. ``TritonServer.check_health()``
notices that (a dead stub is a zombie child of the server) besides a dead or unresponsive server;
``serving.watchdog`` runs that check in a thread and recovers.

The administrative APIs that change or expose the server (model repository, shared memory, trace, logging) answer
only requests that carry an admin key (``RestrictedAPI``): by default a random key made per launch, or
``$TRITON_ADMIN_KEY``. See triton_repo/README.md for the production settings (TLS, restricted APIs, limits).
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path

from fmdetect.serving import procfs
from fmdetect.serving.admin import AdminClient
from fmdetect.serving.process import file_tail, free_port, signal_group, start_in_session, terminate_group

__all__ = [
    "GrpcTLS",
    "RestrictedAPI",
    "ServerConfig",
    "ServerError",
    "StubProcess",
    "TritonServer",
    "free_port",
    "tritonserver_command",
]

logger = logging.getLogger(__name__)

SHM_DIR = Path("/dev/shm")
# tritonserver's log line once every in-flight inference has finished after SIGTERM (server.cc, 2.51).
DRAINED_MARK = b"All models are stopped"
STUB_COMM = "triton_python_b"  # /proc/<pid>/comm of triton_python_backend_stub (truncated to 15 characters)


class ServerError(RuntimeError):
    """The server could not be started or did not become ready; the message carries its log's tail."""


def _pytriton_dir() -> Path:
    try:
        dist = importlib_metadata.distribution("nvidia-pytriton")
    except importlib_metadata.PackageNotFoundError as exc:
        raise ServerError("nvidia-pytriton is not installed: it provides the local tritonserver") from exc
    return Path(str(dist.locate_file("pytriton/tritonserver")))


@dataclass(frozen=True)
class GrpcTLS:
    """TLS on the gRPC endpoint (tritonserver's ``--grpc-use-ssl`` family); the HTTP endpoint stays plain.

    Attributes:
        server_cert: PEM certificate the server presents; its subject alternative names must cover the address
            clients dial (``127.0.0.1``, ``localhost``, the service name).
        server_key: PEM private key of ``server_cert``.
        root_cert: PEM CA bundle the server trusts for client certificates (mutual TLS).
        mutual: require and verify a client certificate signed by ``root_cert``.
    """

    server_cert: Path
    server_key: Path
    root_cert: Path | None = None
    mutual: bool = False

    def __post_init__(self) -> None:
        if self.mutual and self.root_cert is None:
            raise ValueError("mutual TLS needs root_cert: the CA that signed the client certificates")
        for path in (self.server_cert, self.server_key, self.root_cert):
            if path is not None and not Path(path).is_file():
                raise ValueError(f"TLS file {path} does not exist")

    def args(self) -> list[str]:
        """tritonserver flags for this setting."""
        args = ["--grpc-use-ssl=true", f"--grpc-server-cert={self.server_cert}", f"--grpc-server-key={self.server_key}"]
        if self.root_cert is not None:
            args.append(f"--grpc-root-cert={self.root_cert}")
        if self.mutual:
            args.append("--grpc-use-ssl-mutual=true")
        return args


@dataclass(frozen=True)
class RestrictedAPI:
    """Triton's administrative APIs answer only requests that carry the key, via ``--http-restricted-api`` and
    ``--grpc-restricted-protocol``: HTTP header ``<header>: <value>``, gRPC metadata
    ``triton-grpc-protocol-<header>: <value>`` (Triton adds that prefix on gRPC). Inference and health stay open.

    The launcher's own ``load_model`` / ``unload_model`` send the header. The value appears on the server's command
    line (visible to local users in ``ps``): it guards against network callers, not against the host.
    """

    header: str
    value: str
    apis: tuple[str, ...] = ("model-repository", "model-config", "shared-memory", "statistics", "trace", "logging")

    # What a launch restricts unless told otherwise: every API that changes the server or reaches outside it
    # (loading models, registering /dev/shm regions, trace files, log level). Statistics and model config stay
    # readable: monitoring and benchmarks read them, and they change nothing.
    DEFAULT_APIS = ("model-repository", "shared-memory", "trace", "logging")
    DEFAULT_HEADER = "admin-key"

    @classmethod
    def default(cls, header: str = DEFAULT_HEADER) -> RestrictedAPI:
        """The launch default: ``DEFAULT_APIS`` behind ``$TRITON_ADMIN_KEY``, or a random key made now."""
        return cls(header, os.environ.get("TRITON_ADMIN_KEY") or secrets.token_hex(16), cls.DEFAULT_APIS)

    def http_headers(self) -> dict[str, str]:
        """The HTTP header that opens the restricted APIs."""
        return {self.header: self.value}

    def grpc_headers(self) -> dict[str, str]:
        """The same as gRPC metadata (tritonclient's ``headers=``): Triton expects the key under this prefix."""
        return {f"triton-grpc-protocol-{self.header}": self.value}

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z0-9-]+", self.header):
            raise ValueError(f"header must be lower-case letters, digits and '-' (gRPC metadata), got {self.header!r}")
        if not self.value or any(c in self.value for c in ",:= "):
            raise ValueError("value must be non-empty, without ',', ':', '=' or spaces")
        allowed = {
            "health",
            "metadata",
            "inference",
            "shared-memory",
            "model-config",
            "model-repository",
            "statistics",
            "trace",
            "logging",
        }
        if not self.apis or set(self.apis) - allowed:
            raise ValueError(f"apis must be among {sorted(allowed)}, got {list(self.apis)}")

    def args(self) -> list[str]:
        spec = f"{','.join(self.apis)}:{self.header}={self.value}"
        return [f"--http-restricted-api={spec}", f"--grpc-restricted-protocol={spec}"]


@dataclass(frozen=True)
class ServerConfig:
    """How to run tritonserver.

    Attributes:
        host: the address every endpoint binds; 127.0.0.1 keeps them off the network.
        model_control_explicit: ``--model-control-mode=explicit`` (all models loaded at start); the repository API
            can then load and unload models, so keep it private (see triton_repo/README.md).
        grpc_tls: serve gRPC over TLS (optionally mutual); None: plaintext.
        restricted_api: require a header key on the administrative APIs (default: ``RestrictedAPI.default()``,
            a random key per launch); None opens them to every caller that reaches the ports.
        extra_args: appended verbatim to the command line (e.g. ``--grpc-infer-allocation-pool-size=16``).
        command_prefix: the server is started through this command, which must exec it (the cluster's
            ``ip netns exec NS``), so the process and its group stay the server's.
    """

    model_repository: Path
    host: str = "127.0.0.1"
    http_port: int | None = None  # None: a free port
    grpc_port: int | None = None
    metrics_port: int | None = None
    log_verbose: int = 0
    ready_timeout_s: float = 120.0
    exit_timeout_s: int = 5
    model_control_explicit: bool = False
    extra_args: tuple[str, ...] = ()
    shm_default_bytes: int = 4 * 1024 * 1024
    env: dict[str, str] = field(default_factory=dict)
    grpc_tls: GrpcTLS | None = None
    restricted_api: RestrictedAPI | None = field(default_factory=RestrictedAPI.default)
    command_prefix: tuple[str, ...] = ()


@dataclass(frozen=True)
class StubProcess:
    """One python-backend stub, a child process of the server."""

    pid: int
    model: str  # the model's name, from the stub's command line
    state: str  # /proc state letter: R, S, D, Z (zombie: it died and the server has not reaped it), ...


def tritonserver_command(
    config: ServerConfig, repository: Path, backends: Path, ports: tuple[int, int, int], shm_prefix: str
) -> list[str]:
    """The command line that runs tritonserver with ``config``: ``repository`` served from ``backends``, HTTP,
    gRPC and metrics on ``ports``, python-backend shared memory named ``<shm_prefix>...``."""
    c = config
    http_port, grpc_port, metrics_port = ports
    return [
        *c.command_prefix,
        str(_pytriton_dir() / "bin" / "tritonserver"),
        f"--model-repository={repository}",
        f"--backend-directory={backends}",
        f"--http-address={c.host}",
        f"--grpc-address={c.host}",
        f"--metrics-address={c.host}",
        f"--http-port={http_port}",
        f"--grpc-port={grpc_port}",
        f"--metrics-port={metrics_port}",
        "--disable-auto-complete-config",
        f"--exit-timeout-secs={c.exit_timeout_s}",
        "--allow-gpu-metrics=false",
        f"--log-verbose={c.log_verbose}",
        f"--backend-config=python,shm-default-byte-size={c.shm_default_bytes}",
        f"--backend-config=python,shm-region-prefix-name={shm_prefix}",
        *(["--model-control-mode=explicit", "--load-model=*"] if c.model_control_explicit else []),
        *(c.grpc_tls.args() if c.grpc_tls is not None else []),
        *(c.restricted_api.args() if c.restricted_api is not None else []),
        *c.extra_args,
    ]


class TritonServer:
    """A running tritonserver process; use as a context manager or call ``start()`` / ``stop()``."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.process: subprocess.Popen | None = None
        self.workdir: Path | None = None
        self.shm_prefix = f"fmdetect_{uuid.uuid4().hex[:12]}_"
        self.http_port = self.grpc_port = self.metrics_port = 0
        self.lock = threading.RLock()  # held while starting, restarting and stopping
        self.watchdog = None  # the serving.watchdog.Watchdog watching this server, if any
        self._stub_models: dict[int, str] = {}
        self._recovered_stubs: set[int] = set()  # dead stubs whose model was reloaded (zombies until reaped)

    @property
    def grpc_url(self) -> str:
        return f"{self.config.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"{self.config.host}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.config.host}:{self.metrics_port}/metrics"

    @property
    def log_path(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "tritonserver.log"

    @property
    def repository(self) -> Path:
        """The served copy of the model repository (what ``load_model`` reads from)."""
        assert self.workdir is not None, "the server is not started"
        return self.workdir / "models"

    def __enter__(self) -> TritonServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _backend_dir(self, root: Path) -> Path:
        """Backend folder the bundled server needs: the python backend plus the stub for this Python."""
        pytriton = _pytriton_dir()
        backends = root / "backends"
        (backends / "python").mkdir(parents=True)
        for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
            shutil.copy2(pytriton / "backends" / "python" / name, backends / "python" / name)
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = pytriton / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not stub.is_file():
            raise ServerError(f"no python backend stub for Python {version} in {stub.parent.parent}")
        shutil.copy2(stub, backends / "python" / stub.name)
        return backends

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        libs = Path(str(importlib_metadata.distribution("nvidia-pytriton").locate_file("nvidia_pytriton.libs")))
        libdir = sysconfig.get_config_var("LIBDIR") or ""
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(libs), libdir, env.get("LD_LIBRARY_PATH", "")) if p)
        # The stub finds its interpreter (and so the venv's site-packages) through python3 on PATH.
        env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
        env.update(self.config.env)
        return env

    def _launch(self) -> None:
        """Start the process on the current ports and wait until it is ready (raises ServerError)."""
        command = tritonserver_command(
            self.config,
            self.repository,
            self.workdir / "backends",
            (self.http_port, self.grpc_port, self.metrics_port),
            self.shm_prefix,
        )
        self.process = start_in_session(command, self.log_path, self._environment())
        self._wait_ready()
        self.stubs()  # learn each stub's model while its command line is readable (a zombie's is empty)
        logger.info("tritonserver ready: grpc %s, http %s (pid %d)", self.grpc_url, self.http_url, self.process.pid)

    def start(self, attempts: int = 3) -> None:
        """Start the server and wait until it is ready; retries with new ports if one was taken meanwhile."""
        c = self.config
        if not Path(c.model_repository).is_dir():
            raise ServerError(f"model repository {c.model_repository} does not exist")
        with self.lock:
            self.workdir = Path(tempfile.mkdtemp(prefix="fmdetect-triton-"))
            shutil.copytree(c.model_repository, self.repository, ignore=shutil.ignore_patterns("__pycache__"))
            self._backend_dir(self.workdir)
            for attempt in range(attempts):
                self.http_port = c.http_port or free_port(c.host)
                self.grpc_port = c.grpc_port or free_port(c.host)
                self.metrics_port = c.metrics_port or free_port(c.host)
                try:
                    self._launch()
                    return
                except ServerError as exc:
                    port_taken = "already in use" in self.log_tail()
                    self._terminate()
                    if not port_taken or attempt == attempts - 1 or (c.http_port and c.grpc_port):
                        self._cleanup()
                        raise exc
                    logger.warning("a port was taken; retrying with new ports")

    def restart(self, graceful: bool = True, attempts: int = 5) -> float:
        """Stop the process and start a new one on the same ports, serving the same copy of the repository.

        Clients keep their URL: while the server is away they see UNAVAILABLE, which they retry.

        Args:
            graceful: SIGTERM first and let in-flight requests finish (up to ``exit_timeout_s``), then kill; False
                kills at once (right when the server is broken anyway; in-flight requests fail with UNAVAILABLE).

        Returns:
            Seconds from the call until the new server is ready.

        Raises:
            ServerError: the new server did not become ready.
        """
        begin = time.monotonic()
        with self.lock:
            if self.workdir is None:
                raise ServerError("restart() needs a started server")
            if graceful:
                self._drain()
            self._terminate(graceful=False)
            self._remove_shm()
            for attempt in range(attempts):
                try:
                    self._launch()
                    break
                except ServerError:
                    port_taken = "already in use" in self.log_tail()
                    self._terminate(graceful=False)
                    self._remove_shm()
                    if not port_taken or attempt == attempts - 1:
                        raise
                    time.sleep(0.5)  # the old process's sockets are closing
        elapsed = time.monotonic() - begin
        logger.warning("tritonserver restarted on the same ports in %.1f s", elapsed)
        return elapsed

    def log_tail(self, lines: int = 30) -> str:
        if self.workdir is None:
            return ""
        return file_tail(self.log_path, lines)

    def admin(self) -> AdminClient:
        """An HTTP client of this server that carries the admin key of its restricted APIs."""
        return AdminClient(self.http_url, self.admin_headers())

    def is_ready(self) -> bool:
        return self.admin().is_ready()

    def is_live(self) -> bool:
        return self.admin().is_live()

    def log_errors(self, limit: int = 20) -> list[str]:
        """The server log's error lines (``E<date> ...``: failed model loads and their reasons), last ``limit``."""
        if self.workdir is None or not self.log_path.exists():
            return []
        lines = self.log_path.read_text(errors="replace").splitlines()
        return [line for line in lines if re.match(r"E\d{4} ", line)][-limit:]

    def _failure(self, what: str) -> ServerError:
        errors = "\n".join(self.log_errors())
        return ServerError(f"{what}:\n{errors + chr(10) if errors else ''}{self.log_tail()}")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.config.ready_timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise self._failure(f"tritonserver exited with {self.process.returncode}")
            if self.is_ready():
                return
            time.sleep(0.1)
        raise self._failure(f"tritonserver not ready after {self.config.ready_timeout_s:.0f} s")

    def _drain(self) -> None:
        """SIGTERM and wait until the in-flight requests are done (the log says so), the process exits, or
        ``exit_timeout_s`` passes.

        Meanwhile new requests get UNAVAILABLE ("Server is stopping"). Right after the drain Triton unloads its
        models and would answer NOT_FOUND ("unknown model") until it exits; a restart kills it at this point
        instead, so clients only ever see UNAVAILABLE (then a refused connection, also UNAVAILABLE) and retry.
        """
        if self.process is None or self.process.poll() is not None:
            return
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        signal_group(self.process, signal.SIGTERM)
        deadline = time.monotonic() + self.config.exit_timeout_s + 2
        while time.monotonic() < deadline and self.process.poll() is None:
            with open(self.log_path, "rb") as log:
                log.seek(offset)
                if DRAINED_MARK in log.read():
                    return
            time.sleep(0.02)

    def _terminate(self, graceful: bool = True) -> None:
        """SIGTERM the process group, wait, then SIGKILL whatever is left (stubs included)."""
        if self.process is None:
            return
        if not terminate_group(self.process, self.config.exit_timeout_s + 10 if graceful else None) and graceful:
            logger.warning("tritonserver did not exit in time; killed it")
        self.process = None
        self._stub_models = {}
        self._recovered_stubs = set()

    def _remove_shm(self) -> None:
        for path in glob.glob(str(SHM_DIR / f"{self.shm_prefix}*")):
            with contextlib.suppress(OSError):
                os.unlink(path)

    def _cleanup(self) -> None:
        self._remove_shm()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def stop(self) -> None:
        """Stop the watchdog and the server and remove everything it left: processes, shared memory, the copy."""
        if self.watchdog is not None:
            self.watchdog.stop()
            self.watchdog = None
        with self.lock:
            self._terminate()
            self._cleanup()

    @property
    def running(self) -> bool:
        """Whether the server process is up (it may still be starting)."""
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        """The server's process id (the leader of its process group), or None when not started."""
        return None if self.process is None else self.process.pid

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the server's whole process group (its python stubs included)."""
        if self.process is not None:
            signal_group(self.process, signum)

    def footprint(self) -> dict[str, object]:
        """What is left to clean up if this launcher dies without stopping the server: the process group, the
        served copy of the repository and the shared-memory prefix (``deploy.cluster``'s state file)."""
        return {
            "pid": self.pid,
            "workdir": None if self.workdir is None else str(self.workdir),
            "shm_prefix": self.shm_prefix,
        }

    def shm_files(self) -> list[str]:
        """Shared-memory regions created by this server's python stubs."""
        return glob.glob(str(SHM_DIR / f"{self.shm_prefix}*"))

    # ------------------------------------------------------------------ processes, health, recovery
    def stubs(self) -> list[StubProcess]:
        """The python-backend stub processes of the running server (dead ones included, as zombies)."""
        process = self.process
        if process is None:
            return []
        found = []
        for pid in procfs.children(process.pid):
            state = procfs.state(pid)
            if state is None or not procfs.comm(pid).startswith(STUB_COMM):
                continue
            if pid not in self._stub_models:
                # argv[1] is <repository>/<model>/<version>/model.py; a zombie has no command line left.
                argv = procfs.cmdline(pid)
                if len(argv) > 1:
                    self._stub_models[pid] = Path(argv[1]).parent.parent.name
            found.append(StubProcess(pid=pid, model=self._stub_models.get(pid, "?"), state=state))
        return found

    def rss_bytes(self) -> int:
        """Resident memory of the server and its stubs (VmRSS from /proc, shared memory counted per process)."""
        process = self.process
        if process is None:
            return 0
        return sum(procfs.rss_bytes(pid) for pid in [process.pid, *procfs.children(process.pid)])

    def cpu_seconds(self) -> float:
        """CPU time the server and its stubs have used so far (user + system, from /proc)."""
        process = self.process
        if process is None:
            return 0.0
        return procfs.tree_cpu_seconds([process.pid])

    def admin_headers(self, grpc: bool = False) -> dict[str, str]:
        """The headers that open the restricted APIs of this server ({} when they are open)."""
        restricted = self.config.restricted_api
        if restricted is None:
            return {}
        return restricted.grpc_headers() if grpc else restricted.http_headers()

    def success_counts(self, timeout_s: float = 2.0) -> dict[str, int] | None:
        """Successful inferences per served model so far (all versions), from the statistics API; ensembles left
        out (they run no code of their own). Executions are no measure of progress: Triton counts a batch sent
        to a stub that never answers as executed. None when the server does not answer."""
        stats = self.admin().model_statistics(timeout_s)
        if stats is None:
            return None
        ensembles = {
            p.parent.name
            for p in self.repository.glob("*/config.pbtxt")
            if re.search(r'platform:\s*"ensemble"', p.read_text(errors="replace"))
        }
        counts: dict[str, int] = {}
        for model in stats:
            if model["name"] not in ensembles:
                success = model.get("inference_stats", {}).get("success", {})
                counts[model["name"]] = counts.get(model["name"], 0) + int(success.get("count", 0))
        return counts

    def check_health(self, timeout_s: float = 2.0) -> str | None:
        """One health check; returns what is wrong, or None.

        Checks that the process runs, every python stub is alive (a dead stub is a zombie child: Triton does not
        notice it until a request fails, and ``is_model_ready`` keeps saying True), and the server is live and,
        unless model control is explicit, ready. (With explicit model control readiness follows the operator's
        loads and unloads: after a refused load the previous version serves on while the server reports not
        ready.)
        """
        process = self.process
        if process is None:
            return "tritonserver is not running"
        if process.poll() is not None:
            return f"tritonserver exited with {process.returncode}"
        for stub in self.stubs():
            if stub.state in ("Z", "X") and stub.pid not in self._recovered_stubs:
                return f"python stub of model '{stub.model}' (pid {stub.pid}) died"
        if not self.admin().is_live(timeout_s):
            return "tritonserver is not live"
        if self.config.model_control_explicit:
            return None  # readiness follows the operator's loads and unloads (and stays false after a refused one)
        if not self.admin().is_ready(timeout_s):
            return "tritonserver is not ready"
        return None

    def _model_control(self, model: str, action: str, headers: dict[str, str] | None = None) -> None:
        status, body = AdminClient(self.http_url, {**self.admin_headers(), **(headers or {})}).model_control(
            model, action
        )
        if status != 200:
            raise ServerError(f"{action} of model '{model}' failed (HTTP {status}): {body}")

    def load_model(self, model: str, headers: dict[str, str] | None = None) -> None:
        """(Re)load ``model`` from the served repository (``model_control_explicit`` only); Triton keeps serving
        the loaded version until the new one is ready, and keeps it when the new one fails to load.

        Args:
            headers: extra HTTP headers (the ``restricted_api`` header is added by itself).

        Raises:
            ServerError: the load failed; the message carries the log's tail.
        """
        self._model_control(model, "load", headers)

    def unload_model(self, model: str, headers: dict[str, str] | None = None) -> None:
        """Unload ``model`` (``model_control_explicit`` only)."""
        self._model_control(model, "unload", headers)

    def reload_models_of_dead_stubs(self) -> bool:
        """With explicit model control, reload the models whose stub died (Triton starts a new stub); the rest of
        the server keeps serving. False: nothing to reload this way (not explicit, no dead stub, a stub whose
        model is unknown, or a failed load): restart instead."""
        if not self.config.model_control_explicit:
            return False
        with self.lock:
            dead = [s for s in self.stubs() if s.state in ("Z", "X") and s.pid not in self._recovered_stubs]
            if not dead or any(s.model == "?" for s in dead):
                return False
            try:
                for model in sorted({s.model for s in dead}):
                    logger.warning("python stub of model '%s' died; reloading the model", model)
                    self.load_model(model)
            except ServerError as exc:
                logger.error("reload failed: %s", exc)
                return False
            self._recovered_stubs.update(s.pid for s in dead)
            return True
