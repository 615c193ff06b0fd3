"""gRPC client for the ``deepfake_detector`` ensemble served by Triton Inference Server.

One image travels per request (a bad image then fails only its own request, with the server's reason), and many
requests are kept in flight at once so that the server's dynamic batcher sees full batches. Failures surface as
``DetectorClientError`` subclasses with a meaning; only ``UNAVAILABLE`` (server down, restarting, unreachable) and a
known model caught between versions (Triton's "has no available versions" / "is not at ready state", which a server
that is unloading or loading its models answers for a moment) are retried, with exponential backoff and full
jitter, since inference is idempotent.

Example::

    with DetectorClient(ClientConfig(url="127.0.0.1:8001")) as detector:
        detector.wait_until_ready(timeout_s=60)
        prediction = detector.classify(Path("photo.jpg").read_bytes())
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aiogrpcclient
from tritonclient.utils import InferenceServerException

logger = logging.getLogger(__name__)

# The wire names, the client's own copy of ``core.names`` (it installs without the rest; tests/test_contract.py
# checks that the two agree).
MODEL_NAME = "deepfake_detector"
INPUT_NAME = "IMAGE_BYTES"
OUTPUT_PROB = "PROB_FAKE"
OUTPUT_IS_FAKE = "IS_FAKE"
OUTPUT_LOGIT = "LOGIT"
OUTPUT_NAMES = (OUTPUT_PROB, OUTPUT_IS_FAKE, OUTPUT_LOGIT)

_UNAVAILABLE = "UNAVAILABLE"
# Triton reports a model that is unknown, loading or unloaded with these phrases, under UNAVAILABLE, NOT_FOUND or
# (for some code paths) INVALID_ARGUMENT; they must not be mistaken for a bad image.
_MODEL_NOT_READY = re.compile(
    r"unknown model|has no available versions|not at ready state|model\b.*\bis not ready", re.IGNORECASE
)
# The transient part of those: the model is in the repository but has no version loaded at this moment (a server
# unloading its models while it stops, or loading them). A name the server does not know says "is not found".
_MODEL_BETWEEN_VERSIONS = re.compile(r"has no available versions|not at ready state", re.IGNORECASE)

T = TypeVar("T")


class DetectorClientError(Exception):
    """Base of every error this client raises about the server or a request.

    Attributes:
        message: why, in one line.
        status: the gRPC status the server or the transport gave (``"StatusCode.UNAVAILABLE"``), or None.
    """

    def __init__(self, message: str, status: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class ServerUnavailableError(DetectorClientError):
    """The server cannot be reached, is not live or not ready, or answered UNAVAILABLE."""


class ModelNotReadyError(DetectorClientError):
    """The server is up but the model is unknown, still loading or unloaded."""


class InvalidImageError(DetectorClientError):
    """The server rejected the image (corrupt, empty, unsupported, too large); ``reason`` is its explanation."""

    @property
    def reason(self) -> str:
        """The server's explanation, verbatim."""
        return self.message


class RequestTimeoutError(DetectorClientError):
    """The request did not complete within the client timeout (DEADLINE_EXCEEDED)."""


class InferenceError(DetectorClientError):
    """Any other failure (internal server error, malformed response, cancelled request, ...)."""


@dataclass(frozen=True)
class Prediction:
    """The detector's answer for one image."""

    prob_fake: float
    is_fake: bool
    logit: float


@dataclass(frozen=True)
class ClientConfig:
    """Connection, timeout, retry and concurrency settings.

    Attributes:
        url: gRPC endpoint: ``host``, ``host:port`` or ``grpc://host:port`` (see ``normalize_url``; port 8001 by
            default); stored as ``host:port``.
        model_name: the served ensemble.
        timeout_s: end-to-end limit of one request (each retry gets a fresh one), seconds.
        retries: how many times an UNAVAILABLE request is retried; 0 disables retries.
        backoff_base_s: the first retry waits up to this long; each further retry doubles the ceiling.
        backoff_max_s: ceiling of any single wait; the actual wait is uniform in [0, ceiling] (full jitter).
        max_in_flight: most requests outstanding at once per client.
        batch_size: images per request in ``classify_many`` (the server batches up to 64; 1: one request each).
            A request with a bad image fails as a whole, so its images are then sent one by one: each bad image
            gets its own error and the others their scores.
        ssl: use a TLS channel.
        root_certificates: PEM file of the root certificates; None uses gRPC's default roots.
        private_key: PEM file of the client's private key (mutual TLS).
        certificate_chain: PEM file of the client's certificate chain (mutual TLS).
    """

    url: str = "127.0.0.1:8001"
    model_name: str = MODEL_NAME
    timeout_s: float = 30.0
    retries: int = 3
    backoff_base_s: float = 0.1
    backoff_max_s: float = 2.0
    max_in_flight: int = 16
    batch_size: int = 8
    ssl: bool = False
    root_certificates: str | None = None
    private_key: str | None = None
    certificate_chain: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", normalize_url(self.url))
        if not self.model_name:
            raise ValueError("model_name must not be empty")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")
        if self.backoff_base_s < 0 or self.backoff_max_s < 0:
            raise ValueError(f"backoff times must be >= 0, got base {self.backoff_base_s} and max {self.backoff_max_s}")
        if self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {self.max_in_flight}")
        if not 1 <= self.batch_size <= MAX_BATCH:
            raise ValueError(
                f"batch_size must be in 1..{MAX_BATCH} (the server's max_batch_size), got {self.batch_size}"
            )
        tls_files = (self.root_certificates, self.private_key, self.certificate_chain)
        if not self.ssl and any(path is not None for path in tls_files):
            raise ValueError("root_certificates, private_key and certificate_chain need ssl=True")
        if (self.private_key is None) != (self.certificate_chain is None):
            raise ValueError("mutual TLS needs both private_key and certificate_chain")

    def grpc_client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for tritonclient's (sync or aio) ``InferenceServerClient``."""
        return {
            "url": self.url,
            "ssl": self.ssl,
            "root_certificates": self.root_certificates,
            "private_key": self.private_key,
            "certificate_chain": self.certificate_chain,
        }


DEFAULT_GRPC_PORT = 8001


def normalize_url(url: str) -> str:
    """The gRPC ``host:port`` of an endpoint given as ``host``, ``host:port``, ``grpc://host[:port]`` or
    ``[ipv6]:port``; the port defaults to 8001 (Triton's gRPC port).

    Raises:
        ValueError: empty, an ``http(s)://`` URL (the client speaks gRPC, not Triton's HTTP/REST port), a path,
            or a port that is not a number in 1..65535.
    """
    text = url.strip()
    if not text:
        raise ValueError("url must be host[:port], got an empty string")
    scheme, sep, rest = text.partition("://")
    if sep:
        if scheme.lower() in ("http", "https"):
            raise ValueError(
                f"{url!r} is an HTTP URL, but this client speaks gRPC: give host:port of Triton's gRPC "
                f"endpoint (default port {DEFAULT_GRPC_PORT}; 8000 is its HTTP port), e.g. "
                f"{rest.split('/')[0].rsplit(':', 1)[0]}:{DEFAULT_GRPC_PORT}"
            )
        if scheme.lower() != "grpc":
            raise ValueError(f"{url!r}: unknown scheme {scheme!r}; give host:port or grpc://host:port")
        text = rest
    if "/" in text.rstrip("/"):
        raise ValueError(f"{url!r}: a gRPC endpoint is host:port, without a path")
    text = text.rstrip("/")
    if text.startswith("["):  # [ipv6] or [ipv6]:port
        host, _, port = text.partition("]")
        host, port = host + "]", port.lstrip(":")
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, ""
    if not host or host == "[]":
        raise ValueError(f"{url!r}: no host")
    port = port or str(DEFAULT_GRPC_PORT)
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{url!r}: the port must be a number in 1..65535, got {port!r}")
    return f"{host}:{int(port)}"


def error_from_triton(exc: InferenceServerException) -> DetectorClientError:
    """Map a tritonclient exception onto the client's error classes by its gRPC status and message."""
    status = exc.status()
    message = exc.message() if exc.message() is not None else str(exc)
    message = " ".join(str(message).split()) or "no message"
    code = (status or "").rsplit(".", 1)[-1]
    if code in (_UNAVAILABLE, "NOT_FOUND", "INVALID_ARGUMENT") and _MODEL_NOT_READY.search(message):
        return ModelNotReadyError(message, status)
    if code == _UNAVAILABLE:
        return ServerUnavailableError(message, status)
    if code == "INVALID_ARGUMENT":
        return InvalidImageError(message, status)
    if code == "DEADLINE_EXCEEDED":
        return RequestTimeoutError(message, status)
    return InferenceError(f"[{code}] {message}" if code else message, status)


def is_retryable(error: DetectorClientError) -> bool:
    """True for errors worth retrying: UNAVAILABLE answers, connection failures, and a known model that has no
    version loaded at this moment (between an unload and a load); nothing else."""
    if isinstance(error, ModelNotReadyError) and _MODEL_BETWEEN_VERSIONS.search(error.message):
        return True
    return isinstance(error, ServerUnavailableError) or (error.status or "").endswith(_UNAVAILABLE)


def backoff_delay(attempt: int, config: ClientConfig, rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait before retry number ``attempt + 1``: full jitter under a doubling, capped ceiling."""
    ceiling = min(config.backoff_max_s, config.backoff_base_s * (2.0**attempt))
    return ceiling * rand()


def retry_decision(
    exc: InferenceServerException, attempt: int, config: ClientConfig, rand: Callable[[], float] = random.random
) -> tuple[DetectorClientError, float | None]:
    """What to do after attempt ``attempt`` (0-based) failed with ``exc``: its mapped error, and the seconds to wait
    before trying again, or None to give up (not retryable, or ``config.retries`` used)."""
    error = error_from_triton(exc)
    if not is_retryable(error) or attempt >= config.retries:
        return error, None
    delay = backoff_delay(attempt, config, rand)
    logger.info("%s; retry %d/%d in %.3f s", error.message, attempt + 1, config.retries, delay)
    return error, delay


def readiness_wait(problem: DetectorClientError, deadline: float, poll_interval_s: float) -> float:
    """Seconds to wait before the next round of health checks after ``problem``; raises it once ``deadline``
    (``time.monotonic()``) has passed."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise problem
    logger.info("waiting for the server: %s", problem.message)
    return min(poll_interval_s, remaining)


def failed_batch_outcomes(error: DetectorClientError, size: int) -> list[DetectorClientError] | None:
    """The outcomes of a request of ``size`` images that failed with ``error``, or None when the request must be
    sent again one image per request: a rejected image in a batch fails only itself; any other error, all."""
    if isinstance(error, InvalidImageError) and size > 1:
        return None
    return [error] * size


def _call_with_retries(
    call: Callable[[], T],
    config: ClientConfig,
    sleep: Callable[[float], None] = time.sleep,
    rand: Callable[[], float] = random.random,
) -> T:
    """Run ``call`` (one gRPC request), retrying as ``retry_decision`` says.

    Raises:
        DetectorClientError: the mapped failure of the last attempt.
    """
    attempt = 0
    while True:
        try:
            return call()
        except InferenceServerException as exc:
            error, delay = retry_decision(exc, attempt, config, rand)
            if delay is None:
                raise error from exc
        attempt += 1
        sleep(delay)


async def _acall_with_retries(
    call: Callable[[], Awaitable[T]],
    config: ClientConfig,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    rand: Callable[[], float] = random.random,
) -> T:
    """Asyncio form of ``_call_with_retries``; ``call`` returns a fresh awaitable per attempt."""
    attempt = 0
    while True:
        try:
            return await call()
        except InferenceServerException as exc:
            error, delay = retry_decision(exc, attempt, config, rand)
            if delay is None:
                raise error from exc
        attempt += 1
        await sleep(delay)


def _as_bytes(image: bytes | bytearray | memoryview) -> bytes:
    """Accept any bytes-like payload; anything else is a programming error."""
    if isinstance(image, bytes):
        return image
    if isinstance(image, (bytearray, memoryview)):
        return bytes(image)
    raise TypeError(f"an image must be the encoded file's bytes, got {type(image).__name__}")


MAX_BATCH = 64  # the served models' max_batch_size


def _build_request(images: list[bytes]) -> tuple[list[grpcclient.InferInput], list[grpcclient.InferRequestedOutput]]:
    """Images -> the ``IMAGE_BYTES`` [n, 1] BYTES input and the requested outputs (sync and aio share them)."""
    data = np.array(images, dtype=object).reshape(-1, 1)
    infer_input = grpcclient.InferInput(INPUT_NAME, list(data.shape), "BYTES")
    infer_input.set_data_from_numpy(data)
    return [infer_input], [grpcclient.InferRequestedOutput(name) for name in OUTPUT_NAMES]


def _parse_results(result: Any, count: int) -> list[Prediction]:
    """The ``count`` rows of an ``InferResult`` -> one ``Prediction`` each.

    Raises:
        InferenceError: an output is missing or has another number of rows.
    """
    values = {}
    for name in OUTPUT_NAMES:
        array = result.as_numpy(name)
        if array is None or array.size != count:
            raise InferenceError(
                f"the server's response has {0 if array is None else array.size} rows of output "
                f"{name}, expected {count}"
            )
        values[name] = array.reshape(-1)
    return [
        Prediction(
            prob_fake=float(values[OUTPUT_PROB][i]),
            is_fake=bool(values[OUTPUT_IS_FAKE][i]),
            logit=float(values[OUTPUT_LOGIT][i]),
        )
        for i in range(count)
    ]


def _batches(payloads: list[bytes], size: int) -> list[list[bytes]]:
    return [payloads[i : i + size] for i in range(0, len(payloads), size)]


def _check_tls_files(config: ClientConfig) -> None:
    """Fail at construction, not at the first request, when a TLS file cannot be read.

    Raises:
        OSError: a configured file is missing or unreadable.
    """
    for path in (config.root_certificates, config.private_key, config.certificate_chain):
        if path is not None:
            with open(path, "rb"):
                pass


def _server_error(config: ClientConfig, error: DetectorClientError) -> DetectorClientError:
    """Rephrase a failed health probe as a one-line error that names the server."""
    if isinstance(error, ModelNotReadyError):
        return ModelNotReadyError(
            f"model '{config.model_name}' is not ready on the Triton server at {config.url}: {error.message}",
            error.status,
        )
    if isinstance(error, (ServerUnavailableError, RequestTimeoutError)):
        return ServerUnavailableError(f"cannot reach the Triton server at {config.url}: {error.message}", error.status)
    return error


def _readiness_error(config: ClientConfig, live: bool, ready: bool, model_ready: bool) -> DetectorClientError | None:
    """The error that describes the first failed health flag, or None when all are set."""
    if not live:
        return ServerUnavailableError(f"the Triton server at {config.url} is not live")
    if not ready:
        return ServerUnavailableError(f"the Triton server at {config.url} is not ready")
    if not model_ready:
        return ModelNotReadyError(f"model '{config.model_name}' is not ready on the Triton server at {config.url}")
    return None


class DetectorClient:
    """Synchronous client; thread-safe. Use as a context manager or call ``close()``."""

    def __init__(self, config: ClientConfig = ClientConfig()) -> None:
        """Open a channel (connection happens lazily, on the first request).

        Raises:
            OSError: a configured TLS file cannot be read.
        """
        _check_tls_files(config)
        self._config = config
        self._client = grpcclient.InferenceServerClient(**config.grpc_client_kwargs())
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._closed = False

    @property
    def config(self) -> ClientConfig:
        """The settings this client was built with."""
        return self._config

    def __enter__(self) -> DetectorClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the worker threads and close the channel; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        self._client.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("DetectorClient is closed")

    def _probe(self) -> DetectorClientError | None:
        """One round of health checks; returns the problem, or None when the model can serve."""
        timeout = self._config.timeout_s
        try:
            live = self._client.is_server_live(client_timeout=timeout)
            ready = live and self._client.is_server_ready(client_timeout=timeout)
            model_ready = ready and self._client.is_model_ready(self._config.model_name, client_timeout=timeout)
        except InferenceServerException as exc:
            return _server_error(self._config, error_from_triton(exc))
        return _readiness_error(self._config, live, ready, model_ready)

    def wait_until_ready(self, timeout_s: float = 30.0, poll_interval_s: float = 0.5) -> None:
        """Poll until the server is live and ready and the model is ready; ``timeout_s=0`` checks once.

        Raises:
            ServerUnavailableError: the server is unreachable, not live or not ready when time runs out.
            ModelNotReadyError: the server is up but the model is not ready when time runs out.
        """
        self._check_open()
        deadline = time.monotonic() + timeout_s
        while (problem := self._probe()) is not None:
            time.sleep(readiness_wait(problem, deadline, poll_interval_s))

    def served_detector(self) -> dict[str, str]:
        """Which detector the server runs: the ensemble's config parameters (``detector_sha256``, ``threshold``,
        ``backbone``, ``input_size``, ``fmdetect_version``, ...; {} for a repository written without them).

        Raises:
            DetectorClientError: the config cannot be read.
        """
        self._check_open()
        try:
            config = self._client.get_model_config(
                self._config.model_name, as_json=True, client_timeout=self._config.timeout_s
            )
        except InferenceServerException as exc:
            raise error_from_triton(exc) from None
        parameters = config.get("config", config).get("parameters", {})
        return {key: value.get("string_value", "") for key, value in parameters.items()}

    def classify(self, image: bytes) -> Prediction:
        """Classify one encoded image (JPEG, PNG, ...).

        Raises:
            InvalidImageError: the server rejected the image.
            ServerUnavailableError: still UNAVAILABLE after all retries.
            ModelNotReadyError: the model is not loaded.
            RequestTimeoutError: no answer within ``timeout_s``.
            InferenceError: any other failure.
        """
        self._check_open()
        return self._classify_batch([_as_bytes(image)])[0]

    def _classify_batch(self, images: list[bytes]) -> list[Prediction]:
        inputs, outputs = _build_request(images)
        result = _call_with_retries(
            lambda: self._client.infer(
                self._config.model_name, inputs, outputs=outputs, client_timeout=self._config.timeout_s
            ),
            self._config,
        )
        return _parse_results(result, len(images))

    def _batch_or_errors(self, images: list[bytes]) -> list[Prediction | DetectorClientError]:
        try:
            return list(self._classify_batch(images))
        except DetectorClientError as error:
            failed = failed_batch_outcomes(error, len(images))
        if failed is not None:
            return failed
        return [outcome for image in images for outcome in self._batch_or_errors([image])]  # isolate the bad one

    def classify_many(self, images: Iterable[bytes]) -> list[Prediction | DetectorClientError]:
        """Classify many images, ``batch_size`` per request, up to ``max_in_flight`` requests at once; a request
        that holds a bad image is sent again one image per request, so only that image fails.

        Returns:
            One entry per image, in input order: its ``Prediction`` or the ``DetectorClientError`` it failed with.
        """
        self._check_open()
        payloads = [_as_bytes(image) for image in images]
        if not payloads:
            return []
        with self._lock:
            self._check_open()
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    max_workers=self._config.max_in_flight, thread_name_prefix="detector-client"
                )
            pool = self._pool
        batches = _batches(payloads, self._config.batch_size)
        return [outcome for outcomes in pool.map(self._batch_or_errors, batches) for outcome in outcomes]


class AsyncDetectorClient:
    """Asyncio client on ``tritonclient.grpc.aio``; use it from one event loop (``async with`` or ``close()``)."""

    def __init__(self, config: ClientConfig = ClientConfig()) -> None:
        """Validate the settings; the channel opens on first use, inside the running event loop.

        Raises:
            OSError: a configured TLS file cannot be read.
        """
        _check_tls_files(config)
        self._config = config
        self._client: aiogrpcclient.InferenceServerClient | None = None
        self._semaphore = asyncio.Semaphore(config.max_in_flight)
        self._closed = False

    @property
    def config(self) -> ClientConfig:
        """The settings this client was built with."""
        return self._config

    async def __aenter__(self) -> AsyncDetectorClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel; idempotent."""
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    def _grpc(self) -> aiogrpcclient.InferenceServerClient:
        if self._closed:
            raise RuntimeError("AsyncDetectorClient is closed")
        if self._client is None:
            self._client = aiogrpcclient.InferenceServerClient(**self._config.grpc_client_kwargs())
        return self._client

    async def _probe(self) -> DetectorClientError | None:
        client, timeout = self._grpc(), self._config.timeout_s
        try:
            live = await client.is_server_live(client_timeout=timeout)
            ready = live and await client.is_server_ready(client_timeout=timeout)
            model_ready = ready and await client.is_model_ready(self._config.model_name, client_timeout=timeout)
        except InferenceServerException as exc:
            return _server_error(self._config, error_from_triton(exc))
        return _readiness_error(self._config, live, ready, model_ready)

    async def wait_until_ready(self, timeout_s: float = 30.0, poll_interval_s: float = 0.5) -> None:
        """Poll until the server is live and ready and the model is ready; ``timeout_s=0`` checks once.

        Raises:
            ServerUnavailableError: the server is unreachable, not live or not ready when time runs out.
            ModelNotReadyError: the server is up but the model is not ready when time runs out.
        """
        deadline = time.monotonic() + timeout_s
        while (problem := await self._probe()) is not None:
            await asyncio.sleep(readiness_wait(problem, deadline, poll_interval_s))

    async def classify(self, image: bytes) -> Prediction:
        """Classify one encoded image; waits for a free slot when ``max_in_flight`` requests are out.

        Raises:
            InvalidImageError: the server rejected the image.
            ServerUnavailableError: still UNAVAILABLE after all retries.
            ModelNotReadyError: the model is not loaded.
            RequestTimeoutError: no answer within ``timeout_s``.
            InferenceError: any other failure.
        """
        return (await self._classify_batch([_as_bytes(image)]))[0]

    async def _classify_batch(self, images: list[bytes]) -> list[Prediction]:
        client = self._grpc()
        inputs, outputs = _build_request(images)
        async with self._semaphore:
            result = await _acall_with_retries(
                lambda: client.infer(
                    self._config.model_name, inputs, outputs=outputs, client_timeout=self._config.timeout_s
                ),
                self._config,
            )
        return _parse_results(result, len(images))

    async def _batch_or_errors(self, images: list[bytes]) -> list[Prediction | DetectorClientError]:
        try:
            return list(await self._classify_batch(images))
        except DetectorClientError as error:
            failed = failed_batch_outcomes(error, len(images))
        if failed is not None:
            return failed
        singles = await asyncio.gather(*(self._batch_or_errors([image]) for image in images))
        return [outcome for outcomes in singles for outcome in outcomes]

    async def classify_many(self, images: Iterable[bytes]) -> list[Prediction | DetectorClientError]:
        """Classify many images, ``batch_size`` per request, up to ``max_in_flight`` requests at once; a request
        that holds a bad image is sent again one image per request, so only that image fails.

        Returns:
            One entry per image, in input order: its ``Prediction`` or the ``DetectorClientError`` it failed with.
        """
        payloads = [_as_bytes(image) for image in images]
        batches = _batches(payloads, self._config.batch_size)
        results = await asyncio.gather(*(self._batch_or_errors(batch) for batch in batches))
        return [outcome for outcomes in results for outcome in outcomes]


__all__ = [
    "AsyncDetectorClient",
    "ClientConfig",
    "DetectorClient",
    "DetectorClientError",
    "InferenceError",
    "InvalidImageError",
    "ModelNotReadyError",
    "Prediction",
    "RequestTimeoutError",
    "ServerUnavailableError",
    "error_from_triton",
]
