"""Unit tests of the gRPC client and its CLI that need no server: status mapping, the retry policy (the real
retry loop with an injected transport call), configuration, input walking and output formats, and an unreachable
server. Behaviour against a real tritonserver is in test_client_e2e.py."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tritonclient.utils import InferenceServerException

from fmdetect.client import cli, detector_client
from fmdetect.client.detector_client import (
    AsyncDetectorClient,
    ClientConfig,
    DetectorClient,
    DetectorClientError,
    InferenceError,
    InvalidImageError,
    ModelNotReadyError,
    Prediction,
    RequestTimeoutError,
    ServerUnavailableError,
    _acall_with_retries,
    _call_with_retries,
    backoff_delay,
    error_from_triton,
    failed_batch_outcomes,
    readiness_wait,
    retry_decision,
)
from fmdetect.serving.process import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL = "deepfake_detector"
BAD_IMAGE_REASON = "not a recognised image (corrupt data or unknown format)"


def _triton_error(status: str | None, message: str = "boom") -> InferenceServerException:
    return InferenceServerException(msg=message, status=status)


# --- status -> exception mapping ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "message", "expected"),
    [
        ("StatusCode.UNAVAILABLE", "failed to connect to all addresses", ServerUnavailableError),
        ("StatusCode.INVALID_ARGUMENT", BAD_IMAGE_REASON, InvalidImageError),
        ("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded", RequestTimeoutError),
        ("StatusCode.INTERNAL", "segfault in backend", InferenceError),
        ("StatusCode.CANCELLED", "Locally cancelled by application!", InferenceError),
        ("StatusCode.RESOURCE_EXHAUSTED", "too big", InferenceError),
        (None, "model version must be a string", InferenceError),
        (
            "StatusCode.UNAVAILABLE",
            f"Request for unknown model: '{MODEL}' has no available versions",
            ModelNotReadyError,
        ),
        ("StatusCode.NOT_FOUND", f"Request for unknown model: '{MODEL}' is not found", ModelNotReadyError),
        ("StatusCode.INVALID_ARGUMENT", f"Request for unknown model: '{MODEL}' is not found", ModelNotReadyError),
    ],
)
def test_error_from_triton_maps_status_and_message(status, message, expected):
    error = error_from_triton(_triton_error(status, message))
    assert type(error) is expected
    assert isinstance(error, DetectorClientError)
    assert error.status == status
    assert message in error.message


def test_invalid_image_error_keeps_the_server_reason_verbatim():
    reason = "in ensemble 'deepfake_detector', preprocess: empty payload: no image bytes"
    error = error_from_triton(_triton_error("StatusCode.INVALID_ARGUMENT", reason))
    assert isinstance(error, InvalidImageError)
    assert error.reason == reason
    assert str(error) == reason


def test_all_errors_share_the_base_class():
    for cls in (ServerUnavailableError, ModelNotReadyError, InvalidImageError, RequestTimeoutError, InferenceError):
        assert issubclass(cls, DetectorClientError)


# --- retry policy -------------------------------------------------------------------------------------------------


class FlakyCall:
    """A transport call that fails with the given statuses in turn, then returns ``result``."""

    def __init__(self, statuses: list[str], result: object = "ok") -> None:
        self.statuses = list(statuses)
        self.result = result
        self.calls = 0

    def __call__(self) -> object:
        self.calls += 1
        if self.statuses:
            raise _triton_error(self.statuses.pop(0), "server says no")
        return self.result


def _retry_config(**overrides) -> ClientConfig:
    return ClientConfig(**{"retries": 3, "backoff_base_s": 0.1, "backoff_max_s": 0.3, **overrides})


def test_retries_unavailable_with_capped_exponential_backoff_then_raises():
    call, sleeps = FlakyCall(["StatusCode.UNAVAILABLE"] * 10), []
    with pytest.raises(ServerUnavailableError) as info:
        _call_with_retries(call, _retry_config(), sleep=sleeps.append, rand=lambda: 1.0)
    assert call.calls == 4  # the first attempt + 3 retries
    assert sleeps == pytest.approx([0.1, 0.2, 0.3])  # doubling, capped at backoff_max_s
    assert isinstance(info.value.__cause__, InferenceServerException)


def test_retry_decision_waits_or_gives_up():
    """The one decision both retry loops (sync and asyncio) take after a failed attempt."""
    config = _retry_config()
    error, delay = retry_decision(_triton_error("StatusCode.UNAVAILABLE"), 1, config, rand=lambda: 1.0)
    assert isinstance(error, ServerUnavailableError) and delay == pytest.approx(0.2)
    error, delay = retry_decision(_triton_error("StatusCode.UNAVAILABLE"), 3, config, rand=lambda: 1.0)
    assert isinstance(error, ServerUnavailableError) and delay is None  # retries used up
    error, delay = retry_decision(_triton_error("StatusCode.INVALID_ARGUMENT", "bad image"), 0, config)
    assert not isinstance(error, ServerUnavailableError) and delay is None  # not retryable


def test_readiness_wait_polls_until_the_deadline_then_raises_the_problem():
    problem = ServerUnavailableError("not ready")
    assert readiness_wait(problem, time.monotonic() + 10, 0.5) == 0.5
    assert 0 < readiness_wait(problem, time.monotonic() + 0.2, 0.5) <= 0.2  # never past the deadline
    with pytest.raises(ServerUnavailableError, match="not ready"):
        readiness_wait(problem, time.monotonic() - 0.01, 0.5)


def test_failed_batch_outcomes_isolate_only_a_rejected_image_in_a_batch():
    rejected, down = InvalidImageError("corrupt"), ServerUnavailableError("down")
    assert failed_batch_outcomes(rejected, 4) is None  # resend one by one: only the bad image fails
    assert failed_batch_outcomes(rejected, 1) == [rejected]
    assert failed_batch_outcomes(down, 3) == [down] * 3


def test_retry_succeeds_once_the_server_is_back():
    call, sleeps = FlakyCall(["StatusCode.UNAVAILABLE"] * 2, result="answer"), []
    assert _call_with_retries(call, _retry_config(), sleep=sleeps.append, rand=lambda: 1.0) == "answer"
    assert call.calls == 3
    assert len(sleeps) == 2


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("StatusCode.INVALID_ARGUMENT", InvalidImageError),
        ("StatusCode.DEADLINE_EXCEEDED", RequestTimeoutError),
        ("StatusCode.INTERNAL", InferenceError),
    ],
)
def test_does_not_retry_other_errors(status, expected):
    call, sleeps = FlakyCall([status] * 10), []
    with pytest.raises(expected):
        _call_with_retries(call, _retry_config(), sleep=sleeps.append)
    assert call.calls == 1
    assert sleeps == []


class MessageCall:
    """A transport call that fails ``times`` times with one status and message, then answers."""

    def __init__(self, status: str, message: str, times: int) -> None:
        self.status, self.message, self.times, self.calls = status, message, times, 0

    def __call__(self) -> object:
        self.calls += 1
        if self.calls <= self.times:
            raise _triton_error(self.status, self.message)
        return "ok"


@pytest.mark.parametrize("status", ["StatusCode.INVALID_ARGUMENT", "StatusCode.NOT_FOUND"])
def test_a_known_model_between_versions_is_retried(status):
    """What a stopping server answers while it unloads its models (seen during restart()) is retried."""
    message = "Request for unknown model: 'deepfake_detector' has no available versions"
    call, sleeps = MessageCall(status, message, 2), []
    assert _call_with_retries(call, _retry_config(), sleep=sleeps.append, rand=lambda: 1.0) == "ok"
    assert call.calls == 3 and len(sleeps) == 2


def test_a_model_the_server_does_not_know_is_not_retried():
    call, sleeps = MessageCall("StatusCode.NOT_FOUND", "Request for unknown model: 'nope' is not found", 5), []
    with pytest.raises(ModelNotReadyError):
        _call_with_retries(call, _retry_config(), sleep=sleeps.append)
    assert call.calls == 1 and sleeps == []


def test_zero_retries_means_a_single_attempt():
    call, sleeps = FlakyCall(["StatusCode.UNAVAILABLE"] * 10), []
    with pytest.raises(ServerUnavailableError):
        _call_with_retries(call, _retry_config(retries=0), sleep=sleeps.append)
    assert (call.calls, sleeps) == (1, [])


def test_backoff_uses_full_jitter():
    config = _retry_config(backoff_base_s=1.0, backoff_max_s=10.0)
    assert backoff_delay(2, config, rand=lambda: 0.5) == pytest.approx(2.0)
    assert backoff_delay(2, config, rand=lambda: 0.0) == 0.0
    assert all(0.0 <= backoff_delay(3, config) <= 8.0 for _ in range(200))
    assert all(backoff_delay(20, config) <= 10.0 for _ in range(200))


def test_async_retry_follows_the_same_policy():
    sleeps: list[float] = []

    async def fake_sleep(delay: float) -> None:
        sleeps.append(delay)

    def flaky(statuses):
        call = FlakyCall(statuses, result="answer")

        async def attempt():
            return call()

        return call, attempt

    call, attempt = flaky(["StatusCode.UNAVAILABLE"] * 10)
    with pytest.raises(ServerUnavailableError):
        asyncio.run(_acall_with_retries(attempt, _retry_config(), sleep=fake_sleep, rand=lambda: 1.0))
    assert call.calls == 4 and sleeps == pytest.approx([0.1, 0.2, 0.3])

    sleeps.clear()
    call, attempt = flaky(["StatusCode.UNAVAILABLE", "StatusCode.INVALID_ARGUMENT"])
    with pytest.raises(InvalidImageError):
        asyncio.run(_acall_with_retries(attempt, _retry_config(), sleep=fake_sleep))
    assert call.calls == 2 and len(sleeps) == 1


# --- config -------------------------------------------------------------------------------------------------------


def test_config_defaults_and_validation():
    config = ClientConfig()
    assert (config.url, config.model_name, config.timeout_s, config.retries, config.max_in_flight) == (
        "127.0.0.1:8001",
        MODEL,
        30.0,
        3,
        16,
    )
    with pytest.raises(ValueError, match="ssl=True"):
        ClientConfig(root_certificates="ca.pem")
    with pytest.raises(ValueError):
        ClientConfig(max_in_flight=0)
    with pytest.raises(ValueError, match="batch_size"):
        ClientConfig(batch_size=65)
    with pytest.raises(ValueError):
        ClientConfig(timeout_s=0)
    with pytest.raises(Exception):
        config.url = "elsewhere:1"  # frozen


@pytest.mark.parametrize(
    "given, expected",
    [
        ("detector.internal", "detector.internal:8001"),
        ("10.0.0.7:9001", "10.0.0.7:9001"),
        ("grpc://10.0.0.7:9001", "10.0.0.7:9001"),
        ("grpc://host", "host:8001"),
        ("GRPC://host:1/", "host:1"),
        ("[::1]:8001", "[::1]:8001"),
        ("[::1]", "[::1]:8001"),
        (" host:8001 ", "host:8001"),
    ],
)
def test_url_forms(given: str, expected: str):
    assert ClientConfig(url=given).url == expected


@pytest.mark.parametrize(
    "given, reason",
    [
        ("http://127.0.0.1:8001", "speaks gRPC.*127.0.0.1:8001"),
        ("https://h:8000/v2", "speaks gRPC"),
        ("", "empty"),
        ("host:port", "1..65535"),
        ("host:0", "1..65535"),
        ("host:70000", "1..65535"),
        ("ftp://host", "unknown scheme"),
        ("host:8001/v2/models", "without a path"),
        (":8001", "no host"),
    ],
)
def test_url_forms_refused_with_the_reason(given: str, reason: str):
    with pytest.raises(ValueError, match=reason):
        ClientConfig(url=given)


def test_tls_options_reach_the_grpc_client(tmp_path, monkeypatch):
    pems = {name: tmp_path / f"{name}.pem" for name in ("root_certificates", "private_key", "certificate_chain")}
    for path in pems.values():
        path.write_bytes(b"-----BEGIN CERTIFICATE-----\n")
    seen = {}

    class RecordingClient:
        def __init__(self, **kwargs):
            seen.update(kwargs)

        def close(self):
            pass

    monkeypatch.setattr(detector_client.grpcclient, "InferenceServerClient", RecordingClient)
    config = ClientConfig(url="example.org:443", ssl=True, **{name: str(path) for name, path in pems.items()})
    with DetectorClient(config):
        pass
    assert seen == {"url": "example.org:443", "ssl": True, **{name: str(path) for name, path in pems.items()}}


def test_missing_tls_file_fails_at_construction(tmp_path):
    with pytest.raises(OSError):
        DetectorClient(ClientConfig(ssl=True, root_certificates=str(tmp_path / "missing.pem")))


def _fast_config(url: str, **overrides) -> ClientConfig:
    return ClientConfig(**{"url": url, "timeout_s": 5.0, "backoff_base_s": 0.01, "backoff_max_s": 0.02, **overrides})


def test_unreachable_server_is_reported_as_unavailable():
    url = f"127.0.0.1:{free_port()}"
    with DetectorClient(_fast_config(url, retries=1)) as detector:
        with pytest.raises(ServerUnavailableError, match=url):
            detector.wait_until_ready(timeout_s=0)
        with pytest.raises(ServerUnavailableError):
            detector.classify(b"fake")


def test_async_client_unreachable_server():
    async def scenario():
        async with AsyncDetectorClient(_fast_config(f"127.0.0.1:{free_port()}", retries=0)) as detector:
            await detector.wait_until_ready(timeout_s=0)

    with pytest.raises(ServerUnavailableError):
        asyncio.run(scenario())


# --- CLI helpers --------------------------------------------------------------------------------------------------


def test_directory_walk_finds_images_recursively(tmp_path):
    for name in (
        "a.jpg",
        "b.PNG",
        "notes.txt",
        "sub/c.JpEg",
        "sub/deeper/d.webp",
        "sub/deeper/e.tiff",
        "sub/f.gif",
        "sub/g.bmp",
        "sub/h.TIF",
        "sub/model.onnx",
        "sub/noext",
    ):
        path = tmp_path / "images" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    explicit = tmp_path / "photo.dat"
    explicit.write_bytes(b"x")

    inputs = cli.collect_inputs(
        [str(tmp_path / "images"), str(explicit), str(tmp_path / "missing.jpg"), str(tmp_path / "empty")]
    )
    rel = [os.path.relpath(item.path, tmp_path) for item in inputs]
    assert rel == [
        "images/a.jpg", "images/b.PNG",
        "images/sub/c.JpEg", "images/sub/f.gif", "images/sub/g.bmp", "images/sub/h.TIF",
        "images/sub/deeper/d.webp", "images/sub/deeper/e.tiff",
        "photo.dat", "missing.jpg", "empty",
    ]  # fmt: skip
    assert [item.error for item in inputs[:-1]] == [None] * 10
    assert inputs[-1].error
    assert cli.read_input(inputs[-2]) == "no such file or directory"
    assert cli.read_input(inputs[-1]) == inputs[-1].error
    assert cli.read_input(inputs[0]) == b"x"


def test_json_line_format():
    ok = json.loads(cli.format_result("dir/a.jpg", Prediction(prob_fake=0.25, is_fake=False, logit=-1.1), True))
    assert ok == {"path": "dir/a.jpg", "prob_fake": 0.25, "is_fake": False, "logit": -1.1}
    served = {"model": "deepfake_detector", "detector_sha256": "ab" * 32, "threshold": 0.47}
    traced = json.loads(cli.format_result("a.jpg", Prediction(prob_fake=0.25, is_fake=False, logit=-1.1), True, served))
    assert traced == {"path": "a.jpg", "prob_fake": 0.25, "is_fake": False, "logit": -1.1, **served}
    assert isinstance(ok["prob_fake"], float) and isinstance(ok["is_fake"], bool)
    bad = cli.describe_error(InvalidImageError(BAD_IMAGE_REASON, "StatusCode.INVALID_ARGUMENT"))
    line = cli.format_result("b.png", bad, True)
    assert "\n" not in line
    assert json.loads(line) == {"path": "b.png", "error": f"invalid image: {BAD_IMAGE_REASON}"}


def test_text_line_format():
    line = cli.format_result("a.jpg", Prediction(prob_fake=0.987654, is_fake=True, logit=4.4), False)
    assert line == "a.jpg\t0.9877\tFAKE"
    assert cli.format_result("b.jpg", Prediction(0.1, False, -2.2), False).endswith("0.1000\tREAL")
    assert cli.format_result("c.jpg", "no such file or directory", False) == "c.jpg\tERROR\tno such file or directory"


# --- CLI as a subprocess ------------------------------------------------------------------------------------------


def _run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "client", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=REPO_ROOT,
    )


def test_cli_exits_2_when_server_unreachable(tmp_path):
    image = tmp_path / "some.jpg"
    image.write_bytes(b"\xff\xd8\xff")
    proc = _run_cli("classify", str(image), "--url", f"127.0.0.1:{free_port()}", "--timeout", "3")
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr
    assert "cannot reach" in proc.stderr


def test_importing_client_does_not_import_torch():
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    code = 'import fmdetect.client, fmdetect.client.cli, sys; assert "torch" not in sys.modules, "torch was imported"'
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
