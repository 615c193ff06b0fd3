"""The client library and CLI against the real tritonserver over real gRPC."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fmdetect.client import (
    AsyncDetectorClient,
    ClientConfig,
    DetectorClient,
    InvalidImageError,
    ModelNotReadyError,
    Prediction,
    RequestTimeoutError,
)
from tests.conftest import encode, photo_like

pytestmark = pytest.mark.triton
REPO_ROOT = Path(__file__).resolve().parents[1]
BAD = [b"", b"definitely not an image", encode(photo_like(100, 100, 3), "JPEG")[:400]]


def _expected(url: str, payload: bytes) -> float:
    import tritonclient.grpc as grpcclient

    tensor = grpcclient.InferInput("IMAGE_BYTES", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([payload], dtype=object).reshape(-1, 1))
    return float(grpcclient.InferenceServerClient(url).infer("deepfake_detector", [tensor]).as_numpy("PROB_FAKE")[0, 0])


def test_classify_and_classify_many(triton_server, mixed_images):
    images = list(mixed_images.values())
    payloads = images[:3] + BAD + images[3:]
    with DetectorClient(ClientConfig(url=triton_server.grpc_url, max_in_flight=8)) as client:
        client.wait_until_ready(timeout_s=30)
        single = client.classify(images[0])
        results = client.classify_many(payloads)
    assert isinstance(single, Prediction)
    assert single.prob_fake == pytest.approx(_expected(triton_server.grpc_url, images[0]), abs=1e-6)
    assert len(results) == len(payloads)
    for payload, result in zip(payloads, results):
        if payload in BAD:
            assert isinstance(result, InvalidImageError), result
        else:
            assert isinstance(result, Prediction), result
            assert result.prob_fake == pytest.approx(_expected(triton_server.grpc_url, payload), abs=1e-6)
    assert "empty payload" in results[3].reason and "not a recognised image" in results[4].reason


def _ensemble_counts(server) -> tuple[int, int]:
    """(requests answered, images scored) of the ensemble so far, from the server's statistics API."""
    import urllib.request

    with urllib.request.urlopen(f"http://{server.http_url}/v2/models/deepfake_detector/stats", timeout=10) as r:
        (stats,) = json.loads(r.read())["model_stats"]
    return stats["inference_stats"]["success"]["count"], stats["inference_count"]


@pytest.mark.parametrize("batch_size", [1, 8])
def test_classify_many_batches_requests(triton_server, mixed_images, batch_size):
    """16 good images with batch_size 8 travel as 2 requests (the server's own count); with 1, as 16. The scores
    are the same either way. A bad image in a batch only fails itself (test above)."""
    import time

    payloads = [encode(photo_like(64, 64, seed), "PNG") for seed in range(16)]
    with DetectorClient(ClientConfig(url=triton_server.grpc_url, batch_size=batch_size)) as client:
        before = _ensemble_counts(triton_server)
        results = client.classify_many(payloads)
    deadline = time.monotonic() + 5
    while _ensemble_counts(triton_server)[1] < before[1] + 16 and time.monotonic() < deadline:
        time.sleep(0.05)  # a response can be sent just before its statistics are recorded
    after = _ensemble_counts(triton_server)
    assert (after[0] - before[0], after[1] - before[1]) == (16 // batch_size, 16)
    for payload, result in zip(payloads[:3], results[:3]):
        assert result.prob_fake == pytest.approx(_expected(triton_server.grpc_url, payload), abs=1e-6)


def test_async_client(triton_server, mixed_images):
    payloads = list(mixed_images.values())[:4] + BAD

    async def scenario():
        async with AsyncDetectorClient(ClientConfig(url=triton_server.grpc_url, max_in_flight=4)) as client:
            await client.wait_until_ready(timeout_s=30)
            return await client.classify_many(payloads)

    results = asyncio.run(scenario())
    assert [type(r) for r in results] == [Prediction] * 4 + [InvalidImageError] * 3


def test_timeout_and_unknown_model(triton_server, mixed_images):
    with DetectorClient(ClientConfig(url=triton_server.grpc_url, timeout_s=1e-4)) as client:
        with pytest.raises(RequestTimeoutError):
            client.classify(mixed_images["large.jpg"])
    with DetectorClient(ClientConfig(url=triton_server.grpc_url, model_name="no_such_model")) as client:
        with pytest.raises(ModelNotReadyError, match="no_such_model"):
            client.wait_until_ready(timeout_s=0)
        with pytest.raises(ModelNotReadyError):
            client.classify(mixed_images["rgb.png"])


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "client", *args], capture_output=True, text=True, env=env, timeout=120, cwd=REPO_ROOT
    )


def test_cli_exit_codes_and_json(triton_server, mixed_images, tmp_path):
    good = tmp_path / "images"
    (good / "nested").mkdir(parents=True)
    for i, (name, data) in enumerate(mixed_images.items()):
        (good / ("nested" if i % 2 else "") / name).write_bytes(data)
    proc = _cli("classify", str(good), "--url", triton_server.grpc_url, "--json")
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(records) == len(mixed_images)
    for record in records:
        assert set(record) == {"path", "prob_fake", "is_fake", "logit", "model", "detector_sha256", "threshold"}
        assert (record["prob_fake"] > 0.5) == (record["logit"] > 0)
        # Traceable to what was served: the artifact's checksum and the threshold behind is_fake.
        served = triton_server.repository / "detector" / "1" / "model.onnx.sha256"
        assert record["detector_sha256"] == served.read_text().split()[0] and record["model"] == "deepfake_detector"
        metadata = json.loads((triton_server.repository / "preprocess" / "1" / "metadata.json").read_text())
        assert record["threshold"] == pytest.approx(metadata["threshold"]["value"], rel=1e-5)
        assert record["is_fake"] == (record["prob_fake"] >= record["threshold"])
        expected = _expected(triton_server.grpc_url, Path(record["path"]).read_bytes())
        assert record["prob_fake"] == pytest.approx(expected, abs=1e-6)

    (good / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 broken")
    proc = _cli("classify", str(good), "--url", triton_server.grpc_url, "--json")
    assert proc.returncode == 1
    errors = [json.loads(line) for line in proc.stdout.splitlines() if "error" in json.loads(line)]
    assert len(errors) == 1 and errors[0]["path"].endswith("broken.jpg")

    proc = _cli("classify", str(good), "--url", triton_server.grpc_url, "--model", "no_such_model")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_light_client_install_classifies_without_the_pipeline(triton_server, mixed_images, tmp_path):
    """`pip install fmdetect` (the base install: the wheel built from this checkout, its dependencies from the
    registry) into an empty venv pulls no torch, onnx or scipy, stays under 200 MB, and its `fmdetect-client`
    scores images over gRPC exactly as the server does, run away from the checkout."""
    import time

    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(wheels), str(REPO_ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("fmdetect-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    started = time.monotonic()
    install = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    install_s = time.monotonic() - started
    assert install.returncode == 0, install.stderr
    (site,) = (venv / "lib").glob("python3*/site-packages")
    installed = {p.name.split("-")[0].lower() for p in site.glob("*.dist-info")}
    assert not installed & {"torch", "onnx", "onnxruntime", "scipy", "nvidia_pytriton", "pillow"}, installed
    assert {"fmdetect", "numpy", "tritonclient", "grpcio"} <= installed, installed
    size_mb = sum(p.stat().st_size for p in site.rglob("*") if p.is_file()) / 1e6
    print(f"light client install: {install_s:.1f} s, {size_mb:.0f} MB of site-packages, {sorted(installed)}")
    assert size_mb <= 200, f"{size_mb:.0f} MB of site-packages"
    # Nothing but the installed names: the top level holds fmdetect, not core/ client/ training/ ...
    assert not {"core", "client", "training", "export"} & {p.name for p in site.iterdir()}

    images = tmp_path / "images"
    images.mkdir()
    for name in ("rgb.png", "large.jpg"):
        (images / name).write_bytes(mixed_images[name])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [str(venv / "bin" / "fmdetect-client"), "classify", str(images), "--url", triton_server.grpc_url, "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    records = {Path(r["path"]).name: r for r in map(json.loads, proc.stdout.splitlines())}
    assert set(records) == {"rgb.png", "large.jpg"}
    for name, record in records.items():
        assert record["prob_fake"] == pytest.approx(_expected(triton_server.grpc_url, mixed_images[name]), abs=1e-6)


def test_readme_examples_run_against_the_server(triton_server, mixed_images, tmp_path, capsys):
    """The README's two examples (the library, plain tritonclient), run as written with only the server's address
    and the image list filled in: both print a score for every image, and the same scores."""
    import re

    readme = (REPO_ROOT / "README.md").read_text()
    section = readme[readme.index("## Calling it from your service") :]
    section = section[: section.index("\n## ", 1)]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 2
    paths = []
    for name in ("rgb.png", "large.jpg", "gray.png"):
        (tmp_path / name).write_bytes(mixed_images[name])
        paths.append(str(tmp_path / name))
    expected = [_expected(triton_server.grpc_url, mixed_images[Path(p).name]) for p in paths]
    library, plain = (block.replace("127.0.0.1:8001", triton_server.grpc_url) for block in blocks)

    exec(compile(library, "README library example", "exec"), {"IMAGE_PATHS": paths})
    lines = capsys.readouterr().out.splitlines()
    assert [float(line.split()[1]) for line in lines] == pytest.approx(expected, abs=1e-3)

    exec(compile(plain, "README tritonclient example", "exec"), {"IMAGE_PATHS": paths})
    printed = capsys.readouterr().out
    probabilities = [float(x) for x in re.findall(r"\d\.\d*(?:e[-+]?\d+)?", printed.split("]")[0])]
    assert probabilities == pytest.approx(expected, abs=1e-5)
