"""The engine check the serving container runs before tritonserver (``python -m fmdetect.serving.engine_check``):
a repository written around a plan carries the plan's build facts where the check looks, and the check passes a
plan that fits the serving TensorRT and GPU, and fails, with the reason, one that does not."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fmdetect.core.metadata import DetectorMetadata, FFTStageConfig
from fmdetect.serving import engine_check
from fmdetect.triton_repo.layout import Target, write_repository
from tests.conftest import stand_in_plan

H100 = "NVIDIA H100 80GB HBM3"


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    metadata = DetectorMetadata(backbone="resnet50", input_size=(224, 224), fft_stage=FFTStageConfig(masks=2))
    return write_repository(
        Target.GPU_CUPY,
        tmp_path / "repo",
        metadata,
        stand_in_plan(
            tmp_path,
            "external",
            [2, 3, 224, 224],
            stem="backbone",
            tensorrt_version="10.5.0.18",
            gpu={"name": H100, "compute_capability": "9.0"},
        ),
    )


def test_the_plan_metadata_follows_the_plan_into_the_repository(repository: Path) -> None:
    """backbone.plan is served as model.plan; its backbone.engine.json becomes model.engine.json beside it."""
    assert (repository / "detector/1/model.plan").is_file()
    assert json.loads((repository / "detector/1/model.engine.json").read_text())["gpu"]["name"] == H100
    assert not (repository / "detector/1/backbone.engine.json").exists()


def test_a_fitting_plan_passes(repository: Path, capsys: pytest.CaptureFixture) -> None:
    assert engine_check.main([str(repository), "--tensorrt-version", "10.5.0.18", "--gpu", f"{H100},9.0"]) == 0
    assert "detector/1/model.engine.json" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("flags", "reason"),
    [
        (["--tensorrt-version", "10.6.0.26", "--gpu", f"{H100},9.0"], "TensorRT version differs"),
        (["--tensorrt-version", "10.5.0", "--gpu", "NVIDIA A10G,8.6"], "GPU differs"),
        # a second, different GPU in the pod: the plan must fit every GPU it may be scheduled on
        (["--tensorrt-version", "10.5.0", "--gpu", f"{H100},9.0", "--gpu", "NVIDIA L4,8.9"], "GPU differs"),
    ],
)
def test_a_plan_that_does_not_fit_fails_with_the_reason(repository: Path, flags, reason) -> None:
    """Run as the container runs it: a process whose exit status stops the pod before tritonserver starts."""
    result = subprocess.run(
        [sys.executable, "-m", "fmdetect.serving.engine_check", str(repository), *flags],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result
    assert reason in result.stderr and "detector/1/model.engine.json" in result.stderr
    assert "Rebuild it" in result.stderr


def test_the_release_is_read_from_libnvinfer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without TensorRT's Python module (the Triton container has none), the release is the newest
    libnvinfer.so.X.Y.Z on the library path."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # importing it raises ImportError, as in the container
    for name in ("libnvinfer.so.10", "libnvinfer.so.10.5.0", "libnvinfer.so.10.3.0", "libnvinfer_plugin.so.10.9.0"):
        (tmp_path / name).write_bytes(b"")
    monkeypatch.setenv("LD_LIBRARY_PATH", str(tmp_path))
    assert engine_check.tensorrt_version() == "10.5.0"


def test_a_cpu_repository_has_nothing_to_check(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "detector" / "1").mkdir(parents=True)
    assert engine_check.main([str(tmp_path)]) == 0
    assert "nothing to check" in capsys.readouterr().out


def test_without_nvidia_smi_it_says_what_to_pass(repository: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    assert engine_check.main([str(repository), "--tensorrt-version", "10.5.0"]) == 1
    assert "pass --gpu" in capsys.readouterr().err


def test_the_server_image_holds_what_the_check_imports(repository: Path, tmp_path: Path) -> None:
    """The server image's COPY lines, replayed into a folder: the check runs from there alone (PYTHONPATH as the
    image sets it, no site-packages), as the GPU overlay's command runs it in the pod."""
    import shlex
    import shutil

    root = Path(__file__).resolve().parents[1]
    image = tmp_path / "image"
    dockerfile = (root / "deploy/kubernetes/docker/server.Dockerfile").read_text()
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            *sources, target = shlex.split(line)[1:]
            for source in sources:
                dest = image / target.lstrip("/")
                dest = dest / Path(source).name if target.endswith("/") else dest
                dest.parent.mkdir(parents=True, exist_ok=True)
                (shutil.copytree if (root / source).is_dir() else shutil.copy2)(root / source, dest)
    (pythonpath,) = [line.split("=", 1)[1] for line in dockerfile.splitlines() if line.startswith("ENV PYTHONPATH=")]
    result = subprocess.run(
        [
            sys.executable,
            "-S",
            "-m",
            "fmdetect.serving.engine_check",
            str(repository),
            "--tensorrt-version",
            "10.5.0",
            "--gpu",
            f"{H100},9.0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={"PYTHONPATH": str(image / pythonpath.lstrip("/")), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert "fits TensorRT 10.5.0" in result.stdout
