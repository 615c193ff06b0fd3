"""End to end through the real tritonserver (python backend) over real gRPC: parity, bad inputs, configs."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from fmdetect.core.metadata import DetectorMetadata
from fmdetect.core.preprocess import preprocess_image
from fmdetect.core.scoring import sigmoid
from fmdetect.serving.process import free_port
from fmdetect.triton_repo.layout import Target, render_config
from tests.conftest import encode, photo_like
from tests.figures import record

pytestmark = pytest.mark.triton


def _infer(url: str, payload: bytes):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    tensor = grpcclient.InferInput("IMAGE_BYTES", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([payload], dtype=object).reshape(-1, 1))
    return client.infer("deepfake_detector", [tensor], client_timeout=60)


def _pytorch_probs(checkpoint: Path, images: dict[str, bytes]) -> dict[str, float]:
    from fmdetect.training.checkpoint import load_detector

    model = load_detector(checkpoint)
    size = model.metadata.input_size
    batch = torch.from_numpy(np.stack([preprocess_image(data, size) for data in images.values()]))
    with torch.no_grad():
        logits = model(batch).numpy()
    return dict(zip(images, sigmoid(logits).tolist()))


def test_triton_matches_pytorch_on_mixed_batch(triton_server, checkpoint, mixed_images):
    """8 images of mixed size and format sent concurrently (so the server batches them dynamically)."""
    expected = _pytorch_probs(checkpoint, mixed_images)
    threshold = DetectorMetadata.load(checkpoint).threshold.value
    with ThreadPoolExecutor(8) as pool:
        results = dict(zip(mixed_images, pool.map(lambda d: _infer(triton_server.grpc_url, d), mixed_images.values())))
    diffs = {}
    for name, result in results.items():
        prob = float(result.as_numpy("PROB_FAKE")[0, 0])
        assert bool(result.as_numpy("IS_FAKE")[0, 0]) == (prob >= threshold)
        diffs[name] = abs(prob - expected[name])
    record("parity", "triton-mixed", max_prob_diff=max(diffs.values()))
    assert max(diffs.values()) <= 1e-3, diffs
    spread = np.ptp(list(expected.values()))
    assert spread > 1e-3, "the images should not all score alike, or the comparison proves little"


def test_served_preprocess_reads_jpeg_regions(triton_server, checkpoint):
    """The server's python backend finds libturbojpeg (set up by the project) and a photo-sized JPEG scores as the
    in-process full decode does."""
    from fmdetect.core.preprocess import center_crop_or_pad, decode_image

    ready = [
        line for line in triton_server.log_path.read_text(errors="replace").splitlines() if "preprocess ready" in line
    ]
    assert ready and all("centre regions read with" in line for line in ready), ready
    photo = encode(photo_like(1536, 2048, seed=11), "JPEG", quality=85)
    prob = float(_infer(triton_server.grpc_url, photo).as_numpy("PROB_FAKE")[0, 0])
    from fmdetect.training.checkpoint import load_detector

    model = load_detector(checkpoint)
    whole = center_crop_or_pad(decode_image(photo), model.metadata.input_size).transpose(2, 0, 1)
    with torch.no_grad():
        expected = float(sigmoid(model(torch.from_numpy(whole[None].copy())).numpy())[0])
    assert abs(prob - expected) <= 1e-3, (prob, expected)


def test_bad_images_fail_alone(triton_server, mixed_images):
    import tritonclient.grpc as grpcclient

    good = list(mixed_images.values())[:6]
    bad = {
        "corrupt": b"\x89PNG\r\n\x1a\n" + os.urandom(200),
        "empty": b"",
        "truncated": encode(photo_like(200, 200, 1), "JPEG")[:500],
        "text": b"hello, world",
    }
    payloads = good + list(bad.values())

    def run(payload):
        try:
            return _infer(triton_server.grpc_url, payload)
        except grpcclient.InferenceServerException as exc:
            return exc

    with ThreadPoolExecutor(len(payloads)) as pool:
        results = list(pool.map(run, payloads))
    for result in results[: len(good)]:
        assert not isinstance(result, Exception), result
        assert 0.0 <= float(result.as_numpy("PROB_FAKE")[0, 0]) <= 1.0
    reasons = {
        "corrupt": "not a recognised image",
        "empty": "empty payload",
        "truncated": "truncated",
        "text": "not a recognised image",
    }
    for (name, _), result in zip(bad.items(), results[len(good) :]):
        assert isinstance(result, grpcclient.InferenceServerException), name
        assert result.status() == "StatusCode.INVALID_ARGUMENT", (name, result.status())
        assert reasons[name] in result.message(), (name, result.message())
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    assert client.is_server_ready() and client.is_model_ready("deepfake_detector")
    assert float(_infer(triton_server.grpc_url, good[0]).as_numpy("PROB_FAKE")[0, 0]) >= 0.0


@pytest.mark.parametrize("target", [t.value for t in Target if t is not Target.GPU_CUPY])  # gpu-cupy: test_gpu_path.py
@pytest.mark.parametrize("model", ["deepfake_detector", "preprocess", "detector"])
def test_configs_parse_with_tritons_schema(target, model):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    metadata = DetectorMetadata(backbone="resnet50", input_size=(224, 224))
    config = text_format.Parse(render_config(model, target, metadata), model_config_pb2.ModelConfig())
    assert config.name == model
    assert config.max_batch_size == 64
    if model == "detector" and target != "cpu":
        assert list(config.input[0].dims) == [3, 224, 224]
        assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU


def test_serve_cli_stops_cleanly(cpu_repository):
    """``make serve``'s command: starts on the given ports, answers, and on SIGTERM leaves nothing behind."""
    ports = {"HTTP_PORT": free_port(), "GRPC_PORT": free_port(), "METRICS_PORT": free_port()}
    env = {**os.environ, **{k: str(v) for k, v in ports.items()}}
    before = set(glob.glob("/dev/shm/fmdetect_*"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "fmdetect.serving.launcher", "--model-repository", str(cpu_repository)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        line = ""
        deadline = time.monotonic() + 120
        while "serving" not in line and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "server CLI exited before serving"
        assert f"127.0.0.1:{ports['GRPC_PORT']}" in line
        result = _infer(f"127.0.0.1:{ports['GRPC_PORT']}", encode(photo_like(64, 64, 0), "PNG"))
        assert result.as_numpy("PROB_FAKE").shape == (1, 1)
        during = set(glob.glob("/dev/shm/fmdetect_*")) - before
        assert during, "the python stubs should hold shared memory while serving"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "tritonserver stopped" in out
    assert not (set(glob.glob("/dev/shm/fmdetect_*")) & during)
    left = subprocess.run(["pgrep", "-f", f"grpc-port={ports['GRPC_PORT']}"], capture_output=True, text=True)
    assert left.stdout.strip() == "", f"stray tritonserver: {left.stdout}"
