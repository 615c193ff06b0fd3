"""Assemble a complete Triton model repository for a target from the hand-written sources in this folder.

Layout written (``cpu`` target)::

    OUT/deepfake_detector/config.pbtxt   ensemble: preprocess -> detector
    OUT/deepfake_detector/1/
    OUT/preprocess/config.pbtxt           python: decode + crop
    OUT/preprocess/1/{model.py,metadata.json}
    OUT/detector/config.pbtxt             python + ONNX Runtime (cpu), tensorrt_plan (gpu-trt), onnxruntime_onnx
    OUT/detector/1/{model.py,model.onnx}  (gpu-ort); model.plan for gpu-trt

Configs keep ``${HEIGHT}`` / ``${WIDTH}`` where a backend needs concrete dims; they are filled from the
checkpoint metadata here.
"""

from __future__ import annotations

import logging
import shutil
from enum import Enum
from pathlib import Path
from string import Template

from core.metadata import DetectorMetadata

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).resolve().parent
CONFIGS = SOURCE / "configs"
PYTHON_MODELS = SOURCE / "models"
ENSEMBLE = "deepfake_detector"


class Target(str, Enum):
    CPU = "cpu"
    GPU_TRT = "gpu-trt"
    GPU_ORT = "gpu-ort"


# Per target: the python model file that serves ``detector`` (None: a native backend) and the artifact it needs.
DETECTOR = {
    Target.CPU: ("detector_onnxruntime.py", "model.onnx"),
    Target.GPU_TRT: (None, "model.plan"),
    Target.GPU_ORT: (None, "model.onnx"),
}


def render_config(model: str, target: Target | str, metadata: DetectorMetadata) -> str:
    """The ``config.pbtxt`` text of one model of the repository for ``target``."""
    target = Target(target)
    name = f"detector.{target.value}.pbtxt" if model == "detector" else f"{model}.pbtxt"
    path = CONFIGS / name
    if not path.is_file():
        raise FileNotFoundError(f"no config {name} in {CONFIGS}")
    height, width = metadata.input_size
    return Template(path.read_text()).substitute(HEIGHT=height, WIDTH=width)


def write_repository(
    target: Target | str, out: str | Path, metadata: DetectorMetadata, artifact: str | Path
) -> Path:
    """Write a servable repository for ``target`` into ``out`` (replaced atomically when it exists).

    Args:
        artifact: the detector's model file: the exported ONNX (cpu, gpu-ort) or the TensorRT engine (gpu-trt).
    """
    target = Target(target)
    out = Path(out)
    artifact = Path(artifact)
    python_file, artifact_name = DETECTOR[target]
    if not artifact.is_file():
        raise FileNotFoundError(f"{artifact} not found: target {target.value} needs {artifact_name}")
    staging = out.with_name(out.name + ".writing")
    shutil.rmtree(staging, ignore_errors=True)
    for model in (ENSEMBLE, "preprocess", "detector"):
        (staging / model / "1").mkdir(parents=True)
        (staging / model / "config.pbtxt").write_text(render_config(model, target, metadata))
    shutil.copy2(PYTHON_MODELS / "preprocess.py", staging / "preprocess" / "1" / "model.py")
    metadata.save(staging / "preprocess" / "1")
    if python_file is not None:
        shutil.copy2(PYTHON_MODELS / python_file, staging / "detector" / "1" / "model.py")
    shutil.copy2(artifact, staging / "detector" / "1" / artifact_name)
    for side_file in artifact.parent.glob(artifact.stem + ".*.json"):  # e.g. engine metadata beside the plan
        shutil.copy2(side_file, staging / "detector" / "1" / side_file.name)
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    logger.info("wrote %s repository to %s", target.value, out)
    return out
