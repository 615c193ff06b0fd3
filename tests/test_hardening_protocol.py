"""Protocol edges an outside tester found with raw HTTP, gRPC and sockets, against the real tritonserver.

What is the project's to fix is fixed and checked here (rejections counted by reason in the preprocess model's own
metric). What is Triton's own (2.51) is PINNED: each test below asserts today's behaviour, so an upgrade that
changes it fails here and ``triton_repo/README.md`` ("Protocol edges") is brought up to date with it.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from fmdetect.core.preprocess import REJECTION_REASONS
from tests.conftest import encode, photo_like
from tests.figures import record
from tests.test_hardening_support import infer, jpeg_claiming

pytestmark = pytest.mark.triton

GOOD = encode(photo_like(64, 64, 0), "PNG")


def _metrics(server) -> dict[str, float]:
    """Every sample of the server's Prometheus text, keyed by name and labels."""
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        match = re.match(r"^([a-zA-Z_:][\w:]*(?:\{[^}]*\})?) ([-+\deE.]+|NaN)$", line)
        if match:
            out[match.group(1)] = float(match.group(2))
    return out


def _settled_metrics(server, ready, timeout_s: float = 15.0) -> dict[str, float]:
    """The metrics once ``ready(metrics)`` holds and two reads 0.5 s apart agree: Triton refreshes its own
    counters on a period (``--metrics-interval-ms``, 2 s), not per request."""
    deadline = time.monotonic() + timeout_s
    last = _metrics(server)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = _metrics(server)
        if now == last and ready(now):
            return now
        last = now
    return last


def _delta(before: dict[str, float], after: dict[str, float], key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


def _http(server, body: bytes, path: str = "/v2/models/deepfake_detector/infer") -> tuple[int, str]:
    request = urllib.request.Request(
        f"http://{server.http_url}{path}", data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def test_rejections_are_counted_by_reason_and_triton_counters_are_pinned(triton_server):
    """One request of each kind: the project's counter says what was rejected and why; Triton's own counters
    cannot (the python backend counts a rejection as a success, the ensemble counts each failure twice)."""
    lying = jpeg_claiming(encode(photo_like(64, 64, 1), "JPEG", quality=90), 6000, 6600)
    sent = {"empty": b"", "unrecognised": b"no image here", "truncated": lying}
    before = _metrics(triton_server)
    for reason, payload in sent.items():
        result = infer(triton_server.grpc_url, payload)
        assert "INVALID_ARG" in str(getattr(result, "status", lambda: "")()), (reason, result)
    assert infer(triton_server.grpc_url, GOOD).as_numpy("PROB_FAKE").shape == (1, 1)
    success = 'nv_inference_request_success{model="%s",version="1"}'
    after = _settled_metrics(triton_server, lambda m: _delta(before, m, success % "deepfake_detector") >= 1)

    for reason in REJECTION_REASONS:
        key = f'fmdetect_preprocess_rejected_requests_total{{reason="{reason}"}}'
        assert key in after, f"{key} is not exported"
        assert _delta(before, after, key) == (1 if reason in sent else 0), reason
    # Triton 2.51's own counters, pinned: preprocess reports its rejections as successes, the ensemble counts
    # every failed request twice under reason OTHER, and nothing reaches the detector but the good image.
    assert _delta(before, after, success % "preprocess") == len(sent) + 1
    assert _delta(before, after, success % "detector") == 1
    assert _delta(before, after, success % "deepfake_detector") == 1
    failure = 'nv_inference_request_failure{model="deepfake_detector",reason="OTHER",version="1"}'
    assert _delta(before, after, failure) == 2 * len(sent)


@pytest.mark.parametrize(
    "body, message",
    [
        (b"{not json", "failed to parse the request JSON"),
        (
            json.dumps(
                {"inputs": [{"name": "IMAGE_BYTES", "shape": [1, 1], "datatype": "BYTES", "data": [5]}]}
            ).encode(),
            "non-string as string",
        ),
        (
            json.dumps(
                {"inputs": [{"name": "IMAGE_BYTES", "shape": [-1, 1], "datatype": "BYTES", "data": ["a"]}]}
            ).encode(),
            "Unable to parse 'shape'",
        ),
    ],
    ids=["not-json", "number-as-bytes", "negative-shape"],
)
def test_malformed_http_requests_get_500_with_the_reason(triton_server, body: bytes, message: str):
    """Pinned: Triton answers these with 500 (a client error, but its HTTP front end says 500) and the reason;
    the server carries on."""
    status, text = _http(triton_server, body)
    assert status == 500 and message in text, (status, text)
    assert infer(triton_server.grpc_url, GOOD).as_numpy("PROB_FAKE").shape == (1, 1)


def test_shape_dimensions_of_2_to_the_32_wrap(triton_server):
    """Pinned: a [2^32 + 1, 1] shape with one image is read as [1, 1] (the dimension wraps) and scored. The
    project's client and benchmark harness build shapes from the data they send, so they never send one."""
    # The JSON form of BYTES carries text only: the image goes through the binary tensor extension.
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "IMAGE_BYTES",
                    "shape": [2**32 + 1, 1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(GOOD) + 4},
                }
            ],
            "outputs": [{"name": "PROB_FAKE", "parameters": {"binary_data": False}}],
        }
    ).encode()
    body = header + len(GOOD).to_bytes(4, "little") + GOOD
    request = urllib.request.Request(
        f"http://{triton_server.http_url}/v2/models/deepfake_detector/infer",
        data=body,
        method="POST",
        headers={"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = json.loads(response.read())
    (output,) = answer["outputs"]
    assert output["shape"] == [1, 1] and 0.0 <= output["data"][0] <= 1.0
    expected = infer(triton_server.grpc_url, GOOD).as_numpy("PROB_FAKE").item()
    assert output["data"][0] == pytest.approx(expected, abs=1e-6)


def test_a_cut_chunked_body_is_held_open(triton_server):
    """Pinned: Triton's HTTP front end keeps a connection whose chunked body stops mid-way open, with no timeout
    of its own (checked for 5 s here). Behind the cluster's nginx, client_body_timeout closes it
    (tests/test_cluster.py)."""
    with socket.create_connection(("127.0.0.1", triton_server.http_port), timeout=10) as raw:
        raw.sendall(
            b"POST /v2/models/deepfake_detector/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b'Content-Type: application/json\r\n\r\n10\r\n{"inputs": ['
        )
        raw.settimeout(5.0)
        began = time.monotonic()
        with pytest.raises(socket.timeout):
            raw.recv(100)
        assert time.monotonic() - began >= 4.9
    assert np.isfinite(infer(triton_server.grpc_url, GOOD).as_numpy("PROB_FAKE")).all()


def test_a_rejected_oversized_payload_stays_in_the_servers_shared_memory(cpu_repository, tmp_path):
    """Pinned: sent straight to tritonserver, a payload over max_bytes is rejected by preprocess (INVALID_ARG, the
    reason given) but only after Triton copied it into the python backend's shared memory, which keeps its grown
    size: Triton 2.51 has no limit of its own. Hence the proxy's limit in front of it (tests/test_cluster.py)."""
    from fmdetect.serving.tritonserver import ServerConfig, TritonServer
    from tests.test_hardening_support import repository_copy

    repo = repository_copy(cpu_repository, tmp_path / "repo")
    with TritonServer(ServerConfig(model_repository=repo)) as server:
        assert infer(server.grpc_url, GOOD).as_numpy("PROB_FAKE").shape == (1, 1)

        def shm_bytes() -> int:
            return sum(os.path.getsize(f) for f in server.shm_files() if os.path.exists(f))

        before = shm_bytes()
        for _ in range(3):
            result = infer(server.grpc_url, b"\0" * (40 * 1024 * 1024))
            assert "exceeds the limit" in str(result), result
        time.sleep(2.0)
        after = shm_bytes()
        assert infer(server.grpc_url, GOOD).as_numpy("PROB_FAKE").shape == (1, 1)
    print(f"/dev/shm of the server: {before / 2**20:.0f} -> {after / 2**20:.0f} MiB after 3 rejected 40 MiB payloads")
    record("edges", "oversized-direct", shm_before_mib=before / 2**20, shm_after_mib=after / 2**20)
    assert after >= before + 40 * 2**20
