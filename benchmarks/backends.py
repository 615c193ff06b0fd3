"""The ways of running the detector that the harness measures, each behind one ``Sender`` callable.

- ``triton`` over ``grpc`` or ``http``: one request carries ``batch_size`` encoded images (default 1, the
  client library's habit, so the server's dynamic batcher forms the batches); optional system shared memory.
- ``onnxruntime`` / ``pytorch`` ``inprocess``: decode + preprocess (``core.preprocess``) + the model, on
  ``batch_size`` images per call, in this process. The same work the server does, without serving.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from enum import Enum
from pathlib import Path

import numpy as np

from fmdetect.core.metadata import DetectorMetadata
from fmdetect.core.names import ENSEMBLE, IMAGE, IMAGE_BYTES, PROB_FAKE
from fmdetect.core.preprocess import preprocess_image

MODEL = ENSEMBLE


class Backend(str, Enum):
    PYTORCH = "pytorch"
    ONNXRUNTIME = "onnxruntime"
    TRITON = "triton"


class Protocol(str, Enum):
    INPROCESS = "inprocess"
    GRPC = "grpc"
    HTTP = "http"


class SharedMemory(str, Enum):
    NONE = "none"
    SYSTEM = "system"
    CUDA = "cuda"


def _batch(payloads: list[bytes], request: int, batch_size: int) -> list[bytes]:
    start = request * batch_size
    return [payloads[(start + j) % len(payloads)] for j in range(batch_size)]


def admin_headers(admin_key: tuple[str, str] | None, protocol: Protocol) -> dict[str, str]:
    """The headers that carry (header, value) to a server's restricted APIs; Triton reads a gRPC call's key under
    the ``triton-grpc-protocol-`` metadata prefix."""
    if admin_key is None:
        return {}
    header, value = admin_key
    return {f"triton-grpc-protocol-{header}" if Protocol(protocol) is Protocol.GRPC else header: value}


class TritonSender:
    """Sends requests to the ensemble; one client per thread (the HTTP client is not thread-safe)."""

    def __init__(
        self,
        url: str,
        protocol: Protocol,
        payloads: list[bytes],
        batch_size: int = 1,
        model: str = MODEL,
        shared_memory: SharedMemory = SharedMemory.NONE,
        timeout_s: float = 60.0,
        admin_key: tuple[str, str] | None = None,
    ):
        """``admin_key``: (header, value) that opens the server's restricted APIs (shared-memory registration)."""
        if shared_memory is SharedMemory.CUDA:
            raise ValueError("--shared-memory cuda needs a GPU server and a CUDA client; use none or system")
        self.url, self.protocol, self.model = url, Protocol(protocol), model
        self.payloads, self.batch_size = payloads, batch_size
        self.shared_memory, self.timeout_s = shared_memory, timeout_s
        self.admin_headers = admin_headers(admin_key, self.protocol)
        self._local = threading.local()
        self._regions: list[tuple[object, object, str]] = []  # (client, handle, name)
        self._lock = threading.Lock()
        self._shared_client = None  # for async_infer: one gRPC channel is thread-safe
        self.module = self._module()

    def _module(self):
        if self.protocol is Protocol.GRPC:
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
        return module

    def client(self):
        client = getattr(self._local, "client", None)
        if client is None:
            if self.protocol is Protocol.HTTP:
                client = self.module.InferenceServerClient(
                    self.url, connection_timeout=self.timeout_s, network_timeout=self.timeout_s
                )
            else:
                client = self.module.InferenceServerClient(self.url)
            self._local.client = client
        return client

    def _region(self, client, byte_size: int):
        """This thread's system shared-memory region, registered with the server."""
        import tritonclient.utils.shared_memory as shm

        region = getattr(self._local, "region", None)
        if region is None or region[1] < byte_size:
            size = max(byte_size, 1 << 20)
            name = f"fmdetect_perf_{uuid.uuid4().hex[:10]}"
            handle = shm.create_shared_memory_region(name, f"/{name}", size)
            client.register_system_shared_memory(name, f"/{name}", size, headers=self.admin_headers)
            region = (handle, size, name)
            self._local.region = region
            with self._lock:
                self._regions.append((client, handle, name))
        return region

    @property
    def supports_async(self) -> bool:
        """gRPC without shared memory: requests can be started from callbacks (see ``start``)."""
        return self.protocol is Protocol.GRPC and self.shared_memory is SharedMemory.NONE

    def start(self, request: int, done: Callable[[BaseException | None], None]) -> None:
        """Begin one request with ``async_infer``; ``done`` gets None or the error."""
        if self._shared_client is None:
            self._shared_client = self.module.InferenceServerClient(self.url)
        data = np.array(_batch(self.payloads, request, self.batch_size), dtype=object).reshape(-1, 1)
        tensor = self.module.InferInput(IMAGE_BYTES, list(data.shape), "BYTES")
        tensor.set_data_from_numpy(data)

        def callback(result=None, error=None) -> None:  # tritonclient passes keyword arguments
            if error is None:
                prob = result.as_numpy(PROB_FAKE)
                if prob is None or prob.shape != (self.batch_size, 1):
                    error = RuntimeError(f"unexpected PROB_FAKE {None if prob is None else prob.shape}")
            done(error)

        self._shared_client.async_infer(
            self.model,
            [tensor],
            callback,
            outputs=[self.module.InferRequestedOutput(PROB_FAKE)],
            client_timeout=self.timeout_s,
        )

    def __call__(self, request: int) -> None:
        from tritonclient.utils import serialize_byte_tensor

        client = self.client()
        data = np.array(_batch(self.payloads, request, self.batch_size), dtype=object).reshape(-1, 1)
        tensor = self.module.InferInput(IMAGE_BYTES, list(data.shape), "BYTES")
        if self.shared_memory is SharedMemory.SYSTEM:
            import tritonclient.utils.shared_memory as shm

            serialized = serialize_byte_tensor(data)  # Triton's BYTES layout: 4-byte length + bytes, per element
            size = len(serialized.item())
            handle, _, name = self._region(client, size)
            shm.set_shared_memory_region(handle, [serialized])
            tensor.set_shared_memory(name, size)
        elif self.protocol is Protocol.HTTP:
            tensor.set_data_from_numpy(data, binary_data=True)
        else:
            tensor.set_data_from_numpy(data)
        outputs = [self.module.InferRequestedOutput(PROB_FAKE)]
        if self.protocol is Protocol.GRPC:
            result = client.infer(self.model, [tensor], outputs=outputs, client_timeout=self.timeout_s)
        else:
            result = client.infer(self.model, [tensor], outputs=outputs, timeout=int(self.timeout_s * 1e6))
        prob = result.as_numpy(PROB_FAKE)
        if prob is None or prob.shape != (self.batch_size, 1):
            raise RuntimeError(f"unexpected PROB_FAKE {None if prob is None else prob.shape}")

    def close(self) -> None:
        import tritonclient.utils.shared_memory as shm

        for client, handle, name in self._regions:
            try:
                client.unregister_system_shared_memory(name, headers=self.admin_headers)
            finally:
                shm.destroy_shared_memory_region(handle)
        self._regions.clear()


class InProcessSender:
    """Decode + preprocess + model in this process, ``batch_size`` images per call (one caller at a time)."""

    def __init__(
        self,
        run_batch: Callable[[np.ndarray], np.ndarray],
        metadata: DetectorMetadata,
        payloads: list[bytes],
        batch_size: int,
    ) -> None:
        self.run_batch, self.metadata = run_batch, metadata
        self.payloads, self.batch_size = payloads, batch_size

    def __call__(self, request: int) -> None:
        images = np.stack(
            [
                preprocess_image(p, self.metadata.input_size, crops=self.metadata.coverage.crops)
                for p in _batch(self.payloads, request, self.batch_size)
            ]
        )
        probs = self.run_batch(images)
        if probs.shape[0] != self.batch_size:
            raise RuntimeError(f"expected {self.batch_size} scores, got {probs.shape}")

    def close(self) -> None:
        pass


def onnxruntime_runner(onnx_path: Path, threads: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    """The exported graph in ONNX Runtime (CPU), as the Triton CPU target runs it."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    return lambda images: session.run([PROB_FAKE], {IMAGE: images})[0]


def pytorch_runner(checkpoint: Path) -> Callable[[np.ndarray], np.ndarray]:
    """PyTorch eager, fp32, the training-time model (torch.fft stage)."""
    import torch

    from fmdetect.training.checkpoint import load_detector

    model = load_detector(checkpoint)

    def run(images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return torch.sigmoid(model(torch.from_numpy(images))).numpy()

    return run


def server_statistics(sender: TritonSender) -> dict[str, dict[str, int]]:
    """Cumulative per-model counters from Triton's statistics API (counts and nanoseconds)."""
    stats = sender.client().get_inference_statistics(
        model_name="", **({"as_json": True} if sender.protocol is Protocol.GRPC else {})
    )
    out = {}
    for model in stats.get("model_stats", []):
        inference = model.get("inference_stats", {})

        def ns(key: str) -> int:
            return int(inference.get(key, {}).get("ns", 0))

        out[model["name"]] = {
            "inference_count": int(model.get("inference_count", 0)),
            "execution_count": int(model.get("execution_count", 0)),
            "success_count": int(inference.get("success", {}).get("count", 0)),
            "fail_count": int(inference.get("fail", {}).get("count", 0)),
            "request_ns": ns("success"),
            "queue_ns": ns("queue"),
            "compute_input_ns": ns("compute_input"),
            "compute_infer_ns": ns("compute_infer"),
            "compute_output_ns": ns("compute_output"),
        }
    return out


def replica_statistics(urls: list[str]) -> dict[str, dict[str, dict[str, int]]]:
    """Per replica gRPC URL: ``server_statistics`` asked at that replica's own address."""
    out = {}
    for url in urls:
        sender = TritonSender(url, Protocol.GRPC, [])
        try:
            out[url] = server_statistics(sender)
        finally:
            sender.client().close()
    return out


def summed_statistics(per_replica: dict[str, dict[str, dict[str, int]]]) -> dict[str, dict[str, int]]:
    """The cluster's counters: each model's counters summed over the replicas (the shape of one server's)."""
    total: dict[str, dict[str, int]] = {}
    for stats in per_replica.values():
        for model, counters in stats.items():
            into = total.setdefault(model, dict.fromkeys(counters, 0))
            for key, value in counters.items():
                into[key] = into.get(key, 0) + value
    return total


def statistics_delta(before: dict, after: dict) -> dict[str, dict[str, float]]:
    """Per model, over an interval: requests, executions, average batch, and per-request averages in µs."""
    out = {}
    for name, end in after.items():
        start = before.get(name, {})
        d = {k: end[k] - start.get(k, 0) for k in end}
        requests = d["success_count"]
        if requests <= 0:
            continue
        per = lambda key: d[key] / requests / 1e3  # noqa: E731
        out[name] = {
            "requests": requests,
            "failed": d["fail_count"],
            "executions": d["execution_count"],
            "avg_batch": d["inference_count"] / d["execution_count"] if d["execution_count"] else float("nan"),
            "request_us": per("request_ns"),
            "queue_us": per("queue_ns"),
            "compute_input_us": per("compute_input_ns"),
            "compute_infer_us": per("compute_infer_ns"),
            "compute_output_us": per("compute_output_ns"),
        }
    return out
