"""Start, watch and stop a local ``tritonserver`` (the one bundled in the nvidia-pytriton wheel).

The bundled server has the python backend only, so it serves the ``cpu`` target. The launcher serves a copy of
the repository (the python stub writes ``__pycache__`` into version folders), binds 127.0.0.1 by default, gives
its python-backend shared-memory regions a unique prefix and removes exactly those when it stops.

A python stub that dies hard (OOM killer, a crash in native code) leaves its model answering every request with
"Stub process '...' is not healthy" while Triton still reports the model ready. ``TritonServer.check_health()``
notices that (a dead stub is a zombie child of the server) besides a dead or unresponsive server, and
``TritonServer.watch()`` runs that check in a thread and recovers: it reloads the model whose stub died when model
control is explicit, and otherwise restarts the server on the same ports, so clients that retry UNAVAILABLE
recover by themselves. A model whose stub hangs (alive, ready, but never answering) is found by an inference probe
with a deadline plus the server's own statistics (no successful inference of that model since the previous probe), and
recovered the same way.

The administrative APIs that change or expose the server (model repository, shared memory, trace, logging) answer
only requests that carry an admin key (``RestrictedAPI``): by default a random key made per launch, or
``$TRITON_ADMIN_KEY``. See triton_repo/README.md for the production settings (TLS, restricted APIs, limits).

Example::

    python -m triton_repo.server --model-repository artifacts/demo/repository  # Ctrl-C stops it
    python -m triton_repo.server --model-repository REPO --watch-interval 1 \
        --grpc-server-cert server.pem --grpc-server-key server.key --grpc-root-cert ca.pem --grpc-mutual-tls
    TRITON_ADMIN_KEY=... python -m triton_repo.server --model-repository REPO --model-control-explicit \
        --admin-key-header admin-key
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import glob
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path

from fmdetect.core.names import IMAGE_BYTES, PROB_FAKE
from fmdetect.serving import procfs
from fmdetect.triton_repo.layout import ENSEMBLE

logger = logging.getLogger(__name__)

SHM_DIR = Path("/dev/shm")
# tritonserver's log line once every in-flight inference has finished after SIGTERM (server.cc, 2.51).
DRAINED_MARK = b"All models are stopped"
STUB_COMM = "triton_python_b"  # /proc/<pid>/comm of triton_python_backend_stub (truncated to 15 characters)


class ServerError(RuntimeError):
    """The server could not be started or did not become ready; the message carries its log's tail."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port that nothing listens on right now (bind port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


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


@dataclass(frozen=True)
class StubProcess:
    """One python-backend stub, a child process of the server."""

    pid: int
    model: str  # the model's name, from the stub's command line
    state: str  # /proc state letter: R, S, D, Z (zombie: it died and the server has not reaped it), ...


@dataclass(frozen=True)
class Recovery:
    """One recovery made by ``watch()`` (a model reload or a server restart): why, when it was detected
    (``time.monotonic()``), how long until serving again, and whether it worked."""

    reason: str
    detected_at: float
    recovered_s: float
    ok: bool


@dataclass(frozen=True)
class InferenceProbe:
    """One request through the served ensemble, answered within ``deadline_s``: a small PNG must come back with
    a score. Raises when it does not (an error answer, no answer in time, or no score)."""

    model: str = ENSEMBLE
    deadline_s: float = 10.0

    def __call__(self, server: TritonServer) -> None:
        import numpy as np
        import tritonclient.http as httpclient

        data = np.array([[_probe_png()]], dtype=object)
        tensor = httpclient.InferInput(IMAGE_BYTES, list(data.shape), "BYTES")
        tensor.set_data_from_numpy(data, binary_data=True)
        with httpclient.InferenceServerClient(
            server.http_url, connection_timeout=self.deadline_s, network_timeout=self.deadline_s
        ) as client:
            result = client.infer(
                self.model,
                [tensor],
                outputs=[httpclient.InferRequestedOutput(PROB_FAKE)],
                timeout=int(self.deadline_s * 1e6),
            )
        score = result.as_numpy(PROB_FAKE)
        if score is None or score.size != 1:
            raise RuntimeError(f"probe got no score ({None if score is None else score.shape})")


def _probe_png() -> bytes:
    """A 32x32 gradient as PNG: valid for every preprocessing limit, cheap to score."""
    import io

    import numpy as np
    from PIL import Image

    ramp = np.linspace(0, 255, 32, dtype=np.uint8)
    pixels = np.stack([np.tile(ramp, (32, 1)), np.tile(ramp[:, None], (1, 32)), np.full((32, 32), 128, np.uint8)], -1)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


class TritonServer:
    """A running tritonserver process; use as a context manager or call ``start()`` / ``stop()``."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.process: subprocess.Popen | None = None
        self.workdir: Path | None = None
        self.shm_prefix = f"fmdetect_{uuid.uuid4().hex[:12]}_"
        self.http_port = self.grpc_port = self.metrics_port = 0
        self._lock = threading.RLock()
        self._watchdog: Watchdog | None = None
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

    def _command(self, repository: Path, backends: Path) -> list[str]:
        c = self.config
        return [
            str(_pytriton_dir() / "bin" / "tritonserver"),
            f"--model-repository={repository}",
            f"--backend-directory={backends}",
            f"--http-address={c.host}",
            f"--grpc-address={c.host}",
            f"--metrics-address={c.host}",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            "--disable-auto-complete-config",
            f"--exit-timeout-secs={c.exit_timeout_s}",
            "--allow-gpu-metrics=false",
            f"--log-verbose={c.log_verbose}",
            f"--backend-config=python,shm-default-byte-size={c.shm_default_bytes}",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            *(["--model-control-mode=explicit", "--load-model=*"] if c.model_control_explicit else []),
            *(c.grpc_tls.args() if c.grpc_tls is not None else []),
            *(c.restricted_api.args() if c.restricted_api is not None else []),
            *c.extra_args,
        ]

    def _launch(self) -> None:
        """Start the process on the current ports and wait until it is ready (raises ServerError)."""
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self._command(self.repository, self.workdir / "backends"),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self._environment(),
                start_new_session=True,
            )
        self._wait_ready()
        self.stubs()  # learn each stub's model while its command line is readable (a zombie's is empty)
        logger.info("tritonserver ready: grpc %s, http %s (pid %d)", self.grpc_url, self.http_url, self.process.pid)

    def start(self, attempts: int = 3) -> None:
        """Start the server and wait until it is ready; retries with new ports if one was taken meanwhile."""
        c = self.config
        if not Path(c.model_repository).is_dir():
            raise ServerError(f"model repository {c.model_repository} does not exist")
        with self._lock:
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
        with self._lock:
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
        if self.workdir is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def _http_body(
        self, method: str, path: str, timeout: float = 2.0, headers: dict[str, str] | None = None
    ) -> tuple[int, str]:
        """Status code and body of one request to the HTTP endpoint (0: no answer)."""
        request = urllib.request.Request(
            f"http://{self.http_url}{path}",
            method=method,
            headers=headers or {},
            data=b"" if method == "POST" else None,
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, response.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")
        except (urllib.error.URLError, OSError) as exc:
            return 0, str(exc)

    def _http(self, method: str, path: str, timeout: float = 2.0, headers: dict[str, str] | None = None) -> int:
        return self._http_body(method, path, timeout, headers)[0]

    def is_ready(self) -> bool:
        return self._http("GET", "/v2/health/ready") == 200

    def is_live(self) -> bool:
        return self._http("GET", "/v2/health/live") == 200

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
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
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
        pgid = self.process.pid
        if graceful:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGTERM)
            try:
                self.process.wait(timeout=self.config.exit_timeout_s + 10)
            except subprocess.TimeoutExpired:
                logger.warning("tritonserver did not exit in time; killing it")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
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
        if self._watchdog is not None:
            self._watchdog.stop()
            self._watchdog = None
        with self._lock:
            self._terminate()
            self._cleanup()

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
        status, body = self._http_body("GET", "/v2/models/stats", timeout_s, self.admin_headers())
        if status != 200:
            return None
        ensembles = {
            p.parent.name
            for p in self.repository.glob("*/config.pbtxt")
            if re.search(r'platform:\s*"ensemble"', p.read_text(errors="replace"))
        }
        counts: dict[str, int] = {}
        for model in json.loads(body).get("model_stats", []):
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
        if self._http("GET", "/v2/health/live", timeout=timeout_s) != 200:
            return "tritonserver is not live"
        if self.config.model_control_explicit:
            return None  # readiness follows the operator's loads and unloads (and stays false after a refused one)
        if self._http("GET", "/v2/health/ready", timeout=timeout_s) != 200:
            return "tritonserver is not ready"
        return None

    def watch(
        self,
        interval_s: float = 1.0,
        probe: Callable[[TritonServer], None] | None = None,
        failures_to_restart: int = 2,
        hang_probe: InferenceProbe | None = InferenceProbe(),
    ) -> Watchdog:
        """Check health every ``interval_s`` in a thread and recover when it fails: with explicit model control a
        model whose stub died (or hung, then is killed) is reloaded; anything else (or a failed reload) restarts
        the server on its ports.

        A dead stub or a dead process is acted on at once; not live / not ready / a failing ``probe`` / a hung
        model must repeat ``failures_to_restart`` times in a row (a model being loaded is briefly not ready).
        ``stop()`` ends it; ``Watchdog.recoveries`` records what it did.

        A model is HUNG when ``hang_probe`` (one inference through the ensemble with a deadline) fails and the
        python backend reports that model's stub "not healthy", or the statistics show no successful inference of
        it since the previous probe. An overloaded server also fails probes (its queues time out), but its models
        keep answering, so it is left alone.

        Args:
            probe: optional end-to-end check run after the built-in ones; it raises when the server cannot
                serve, and any failure counts (unlike ``hang_probe``, which counts only stalled models).
            hang_probe: the hung-model check; None turns it off.
        """
        if self._watchdog is not None:
            raise RuntimeError("this server is already watched")
        self._watchdog = Watchdog(self, interval_s, probe, failures_to_restart, hang_probe)
        self._watchdog.start()
        return self._watchdog

    def _model_control(self, model: str, action: str, headers: dict[str, str] | None = None) -> None:
        restricted = self.config.restricted_api
        headers = {**(restricted.http_headers() if restricted else {}), **(headers or {})}
        status, body = self._http_body("POST", f"/v2/repository/models/{model}/{action}", 300, headers)
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


class Watchdog(threading.Thread):
    """The thread behind ``TritonServer.watch()``; ``recoveries`` lists every restart it made."""

    def __init__(
        self,
        server: TritonServer,
        interval_s: float,
        probe: Callable[[TritonServer], None] | None,
        failures_to_restart: int,
        hang_probe: InferenceProbe | None = None,
    ) -> None:
        super().__init__(name="triton-watchdog", daemon=True)
        self.server = server
        self.interval_s = interval_s
        self.probe = probe
        self.hang_probe = hang_probe
        self.failures_to_restart = max(1, failures_to_restart)
        self.recoveries: list[Recovery] = []
        self.round_starts: collections.deque[float] = collections.deque(maxlen=10_000)  # time.monotonic() of each check
        self._stopping = threading.Event()
        self._last_counts: dict[str, int] | None = None  # success counts read at the previous probe
        self._hung: list[str] = []

    def stop(self) -> None:
        self._stopping.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout=self.server.config.ready_timeout_s + 30)

    def _problem(self) -> tuple[str | None, bool]:
        """(what is wrong, whether it warrants recovery at once); skips the round while another thread starts,
        restarts or stops the server."""
        if not self.server._lock.acquire(blocking=False):
            return None, False
        try:
            problem = self.server.check_health()
        finally:
            self.server._lock.release()
        if problem is not None:
            return problem, "died" in problem or "exited" in problem
        self._hung = []
        if self.hang_probe is not None:
            problem = self._hang_problem()
            if problem is not None:
                return problem, False
        if self.probe is not None:
            try:
                self.probe(self.server)
            except Exception as exc:  # noqa: BLE001 - any probe failure counts
                return f"probe failed: {exc}", False
        return None, False

    def _hang_problem(self) -> str | None:
        """Run the hang probe; when it fails, name the models that cannot answer: those whose stub the python
        backend reports "not healthy" (alive but unresponsive: stopped, or stuck), else those with no successful
        inference since the previous probe (a stub that never returns leaves its model's counters still, while
        an overloaded model's keep rising)."""
        try:
            self.hang_probe(self.server)
        except Exception as exc:  # noqa: BLE001 - judged below
            message = str(exc)
            stalled = sorted({m.group(1) for m in re.finditer(r"Stub process '(.+?)_\d+_\d+' is not healthy", message)})
            if not stalled:
                counts, previous = self.server.success_counts(), self._last_counts
                self._last_counts = counts
                if counts is None or previous is None:
                    return None  # no statistics, or nothing to compare with yet: the health checks decide
                stalled = sorted(m for m, n in counts.items() if n <= previous.get(m, 0))
            if not stalled:
                logger.info("probe failed but every model is answering (overload?): %s", exc)
                return None
            self._hung = stalled
            return f"model(s) {', '.join(stalled)} hung ({message})"
        self._last_counts = self.server.success_counts()
        return None

    def run(self) -> None:
        failures = 0
        while not self._stopping.wait(self.interval_s):
            self.round_starts.append(time.monotonic())
            problem, urgent = self._problem()
            if problem is None:
                failures = 0
                continue
            failures += 1
            if not urgent and failures < self.failures_to_restart:
                continue
            failures = 0
            if self._stopping.is_set():
                return
            detected = time.monotonic()
            if self._hung:
                self._kill_stubs(self._hung)  # a killed stub is a dead one: reloaded or restarted below
            ok = self._reload_dead_models() or self._restart(problem)
            self._last_counts = None
            self.recoveries.append(Recovery(problem, detected, time.monotonic() - detected, ok))

    def _kill_stubs(self, models: list[str]) -> None:
        for stub in self.server.stubs():
            if stub.model in models and stub.state not in ("Z", "X"):
                logger.warning("python stub of model '%s' (pid %d) hung; killing it", stub.model, stub.pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(stub.pid, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and any(
            s.model in models and s.state not in ("Z", "X") for s in self.server.stubs()
        ):
            time.sleep(0.02)

    def _reload_dead_models(self) -> bool:
        """With explicit model control, reload the models whose stub died (Triton starts a new stub); the rest of
        the server keeps serving. False: not possible here, restart instead."""
        server = self.server
        if not server.config.model_control_explicit:
            return False
        with server._lock:
            dead = [s for s in server.stubs() if s.state in ("Z", "X") and s.pid not in server._recovered_stubs]
            if not dead or any(s.model == "?" for s in dead):
                return False
            try:
                for model in sorted({s.model for s in dead}):
                    logger.warning("python stub of model '%s' died; reloading the model", model)
                    server.load_model(model)
            except ServerError as exc:
                logger.error("reload failed: %s", exc)
                return False
            server._recovered_stubs.update(s.pid for s in dead)
            return True

    def _restart(self, problem: str) -> bool:
        logger.warning("tritonserver unhealthy (%s); restarting it", problem)
        try:
            self.server.restart(graceful=False)
            return True
        except ServerError as exc:
            logger.error("restart failed: %s", exc)
            return False


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Serve a model repository with the local tritonserver.")
    parser.add_argument("--model-repository", required=True, type=Path, help="repository written by 'export repo'")
    parser.add_argument(
        "--host", default=os.environ.get("HOST", "127.0.0.1"), help="address to bind (default 127.0.0.1)"
    )
    parser.add_argument("--http-port", type=int, default=int(os.environ.get("HTTP_PORT", 8000)))
    parser.add_argument("--grpc-port", type=int, default=int(os.environ.get("GRPC_PORT", 8001)))
    parser.add_argument("--metrics-port", type=int, default=int(os.environ.get("METRICS_PORT", 8002)))
    parser.add_argument("--log-verbose", type=int, default=0, help="tritonserver --log-verbose level")
    parser.add_argument(
        "--watch-interval",
        type=float,
        default=2.0,
        help="seconds between health checks; an unhealthy server is restarted (0 disables)",
    )
    parser.add_argument(
        "--model-control-explicit",
        action="store_true",
        help="allow loading/unloading models through the repository API (keep that API private)",
    )
    parser.add_argument("--grpc-server-cert", type=Path, help="PEM certificate: serve gRPC over TLS")
    parser.add_argument("--grpc-server-key", type=Path, help="PEM private key of --grpc-server-cert")
    parser.add_argument("--grpc-root-cert", type=Path, help="PEM CA that signs client certificates")
    parser.add_argument(
        "--grpc-mutual-tls", action="store_true", help="require client certificates signed by --grpc-root-cert"
    )
    parser.add_argument(
        "--admin-key-header",
        metavar="NAME",
        default=RestrictedAPI.DEFAULT_HEADER,
        help="the restricted APIs answer only requests carrying header NAME with the value of "
        "$TRITON_ADMIN_KEY (unset: a random key, written to the log's folder) "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--restrict",
        default=",".join(RestrictedAPI.DEFAULT_APIS),
        metavar="APIS",
        help="comma-separated APIs behind the admin key, among model-repository, model-config, "
        "shared-memory, statistics, trace, logging, health, metadata, inference "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--open-admin-apis",
        action="store_true",
        help="no admin key: every caller that reaches the ports may load models, register shared "
        "memory, change logging and tracing (unsafe outside a test machine)",
    )
    parser.add_argument(
        "--hang-deadline",
        type=float,
        default=InferenceProbe.deadline_s,
        metavar="S",
        help="deadline of the watchdog's inference probe that finds hung models; 0: no probe (default: %(default)s)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    tls = None
    if args.grpc_server_cert or args.grpc_server_key:
        if not (args.grpc_server_cert and args.grpc_server_key):
            parser.error("TLS needs both --grpc-server-cert and --grpc-server-key")
        try:
            tls = GrpcTLS(args.grpc_server_cert, args.grpc_server_key, args.grpc_root_cert, args.grpc_mutual_tls)
        except ValueError as exc:
            parser.error(str(exc))
    elif args.grpc_root_cert or args.grpc_mutual_tls:
        parser.error("--grpc-root-cert and --grpc-mutual-tls need --grpc-server-cert and --grpc-server-key")
    restricted = None
    if not args.open_admin_apis:
        try:
            restricted = RestrictedAPI(
                args.admin_key_header,
                os.environ.get("TRITON_ADMIN_KEY") or secrets.token_hex(16),
                tuple(a.strip() for a in args.restrict.split(",")),
            )
        except ValueError as exc:
            parser.error(f"admin key: {exc}")
    server = TritonServer(
        ServerConfig(
            model_repository=args.model_repository,
            host=args.host,
            http_port=args.http_port,
            grpc_port=args.grpc_port,
            metrics_port=args.metrics_port,
            log_verbose=args.log_verbose,
            model_control_explicit=args.model_control_explicit,
            grpc_tls=tls,
            restricted_api=restricted,
        )
    )
    stopping = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        server.start()
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    hang_probe = InferenceProbe(deadline_s=args.hang_deadline) if args.hang_deadline > 0 else None
    watchdog = server.watch(args.watch_interval, hang_probe=hang_probe) if args.watch_interval > 0 else None
    if restricted is not None:
        key_file = server.workdir / "admin-key"
        key_file.touch(mode=0o600)
        key_file.write_text(restricted.value + "\n")
        source = "$TRITON_ADMIN_KEY" if os.environ.get("TRITON_ADMIN_KEY") else f"the key in {key_file}"
        print(
            f"restricted APIs ({', '.join(restricted.apis)}) need header '{restricted.header}' "
            f"(gRPC: 'triton-grpc-protocol-{restricted.header}') with {source}",
            flush=True,
        )
    print(
        f"serving {args.model_repository}: gRPC {server.grpc_url}{' (TLS)' if tls else ''}  HTTP {server.http_url}  "
        f"metrics {server.metrics_url}  (Ctrl-C stops)",
        flush=True,
    )
    try:
        while not stopping:
            if watchdog is not None:
                if any(not recovery.ok for recovery in watchdog.recoveries):
                    print(f"tritonserver could not be restarted:\n{server.log_tail()}", file=sys.stderr)
                    return 1
            elif server.process is None or server.process.poll() is not None:
                print(f"tritonserver exited unexpectedly:\n{server.log_tail()}", file=sys.stderr)
                return 1
            time.sleep(0.5)
    finally:
        server.stop()
        print("tritonserver stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
