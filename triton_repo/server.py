"""Start, watch and stop a local ``tritonserver`` (the one bundled in the nvidia-pytriton wheel).

The bundled server has the python backend only, so it serves the ``cpu`` target. The launcher serves a copy of
the repository (the python stub writes ``__pycache__`` into version folders), binds 127.0.0.1 by default, gives
its python-backend shared-memory regions a unique prefix and removes exactly those when it stops.

Example::

    python -m triton_repo.server --model-repository artifacts/demo/repository  # Ctrl-C stops it
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path

logger = logging.getLogger(__name__)

SHM_DIR = Path("/dev/shm")


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
class ServerConfig:
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


class TritonServer:
    """A running tritonserver process; use as a context manager or call ``start()`` / ``stop()``."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.process: subprocess.Popen | None = None
        self.workdir: Path | None = None
        self.shm_prefix = f"fmdetect_{uuid.uuid4().hex[:12]}_"
        self.http_port = self.grpc_port = self.metrics_port = 0

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
            *c.extra_args,
        ]

    def start(self, attempts: int = 3) -> None:
        """Start the server and wait until it is ready; retries with new ports if one was taken meanwhile."""
        c = self.config
        if not Path(c.model_repository).is_dir():
            raise ServerError(f"model repository {c.model_repository} does not exist")
        self.workdir = Path(tempfile.mkdtemp(prefix="fmdetect-triton-"))
        repository = self.workdir / "models"
        shutil.copytree(c.model_repository, repository, ignore=shutil.ignore_patterns("__pycache__"))
        backends = self._backend_dir(self.workdir)
        for attempt in range(attempts):
            self.http_port = c.http_port or free_port(c.host)
            self.grpc_port = c.grpc_port or free_port(c.host)
            self.metrics_port = c.metrics_port or free_port(c.host)
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(
                    self._command(repository, backends),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=self._environment(),
                    start_new_session=True,
                )
            try:
                self._wait_ready()
                logger.info("tritonserver ready: grpc %s, http %s (pid %d)", self.grpc_url, self.http_url,
                            self.process.pid)
                return
            except ServerError as exc:
                port_taken = "already in use" in self.log_tail()
                self._terminate()
                if not port_taken or attempt == attempts - 1 or (c.http_port and c.grpc_port):
                    self._cleanup()
                    raise exc
                logger.warning("a port was taken; retrying with new ports")

    def log_tail(self, lines: int = 30) -> str:
        if self.workdir is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.config.ready_timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise ServerError(f"tritonserver exited with {self.process.returncode}:\n{self.log_tail()}")
            if self.is_ready():
                return
            time.sleep(0.1)
        raise ServerError(f"tritonserver not ready after {self.config.ready_timeout_s:.0f} s:\n{self.log_tail()}")

    def _terminate(self) -> None:
        """SIGTERM the process group, wait, then SIGKILL whatever is left (stubs included)."""
        if self.process is None:
            return
        pgid = self.process.pid
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

    def _cleanup(self) -> None:
        for path in glob.glob(str(SHM_DIR / f"{self.shm_prefix}*")):
            with contextlib.suppress(OSError):
                os.unlink(path)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def stop(self) -> None:
        """Stop the server and remove everything it left: processes, shared memory, the served copy."""
        self._terminate()
        self._cleanup()

    def shm_files(self) -> list[str]:
        """Shared-memory regions created by this server's python stubs."""
        return glob.glob(str(SHM_DIR / f"{self.shm_prefix}*"))


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Serve a model repository with the local tritonserver.")
    parser.add_argument("--model-repository", required=True, type=Path, help="repository written by 'export repo'")
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"), help="address to bind (default 127.0.0.1)")
    parser.add_argument("--http-port", type=int, default=int(os.environ.get("HTTP_PORT", 8000)))
    parser.add_argument("--grpc-port", type=int, default=int(os.environ.get("GRPC_PORT", 8001)))
    parser.add_argument("--metrics-port", type=int, default=int(os.environ.get("METRICS_PORT", 8002)))
    parser.add_argument("--log-verbose", type=int, default=0, help="tritonserver --log-verbose level")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = TritonServer(
        ServerConfig(
            model_repository=args.model_repository,
            host=args.host,
            http_port=args.http_port,
            grpc_port=args.grpc_port,
            metrics_port=args.metrics_port,
            log_verbose=args.log_verbose,
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
    print(f"serving {args.model_repository}: gRPC {server.grpc_url}  HTTP {server.http_url}  "
          f"metrics {server.metrics_url}  (Ctrl-C stops)", flush=True)
    try:
        while not stopping:
            if server.process is None or server.process.poll() is not None:
                print(f"tritonserver exited unexpectedly:\n{server.log_tail()}", file=sys.stderr)
                return 1
            time.sleep(0.5)
    finally:
        server.stop()
        print("tritonserver stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
