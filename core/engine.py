"""A TensorRT plan's recorded build facts (``model.engine.json``, written by ``export.tensorrt_engine``) against the
machine that serves it: a plan runs only under the TensorRT release that built it, on the GPU it was built for.

Needs neither TensorRT's Python module nor onnx nor torch, so the serving container runs it before tritonserver
starts (``python -m fmdetect.serving.engine_check``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

UNKNOWN = "unknown"


class EngineMismatchError(RuntimeError):
    """A plan was built by another TensorRT version or for another GPU than the server's."""


def _release(version: str) -> tuple[int, ...] | str:
    """``"10.8.0.43"`` -> ``(10, 8, 0)``: plans are tied to the release (major.minor.patch)."""
    parts = str(version).strip().split(".")
    if not all(part.isdigit() for part in parts):
        return str(version).strip()
    numbers = [int(part) for part in parts[:3]]
    return tuple(numbers + [0] * (3 - len(numbers)))


def _norm_gpu(name: str) -> str:
    return " ".join(str(name).split()).lower()


def check_engine_compatible(
    engine_json: str | Path | Mapping[str, Any],
    runtime_trt_version: str,
    gpu_name: str,
    compute_capability: str | None = None,
) -> dict[str, Any]:
    """Check an engine's metadata against the serving TensorRT and GPU, before loading the plan.

    Args:
        engine_json: ``model.engine.json`` (path) or its parsed content.
        runtime_trt_version: the server's TensorRT version, e.g. ``tensorrt.__version__``.
        gpu_name: the server's GPU, e.g. ``torch.cuda.get_device_name()``.
        compute_capability: the server GPU's compute capability (``"9.0"``); checked when given.

    Returns:
        The engine metadata.

    Raises:
        EngineMismatchError: the plan was built by another TensorRT release or for another GPU.
    """
    if isinstance(engine_json, Mapping):
        metadata = dict(engine_json)
    else:
        metadata = json.loads(Path(engine_json).read_text())
    built_trt = str(metadata.get("tensorrt_version", UNKNOWN))
    gpu = metadata.get("gpu") or {}
    built_gpu = str(gpu.get("name", UNKNOWN))
    built_cc = str(gpu.get("compute_capability", UNKNOWN))
    reasons = []
    if built_trt == UNKNOWN or _release(built_trt) != _release(runtime_trt_version):
        reasons.append(f"the TensorRT version differs ({built_trt} vs {runtime_trt_version})")
    if built_gpu == UNKNOWN or not gpu_name or gpu_name == UNKNOWN:
        logger.warning(
            "cannot compare GPUs (engine built for %s, server has %s): the TensorRT runtime will "
            "reject a plan from an incompatible GPU",
            built_gpu,
            gpu_name or UNKNOWN,
        )
    elif _norm_gpu(built_gpu) != _norm_gpu(gpu_name):
        reasons.append(f"the GPU differs ({built_gpu} vs {gpu_name})")
    if compute_capability and built_cc != UNKNOWN and str(compute_capability) != built_cc:
        reasons.append(f"the compute capability differs ({built_cc} vs {compute_capability})")
    if reasons:
        raise EngineMismatchError(
            f"engine built with TensorRT {built_trt} for GPU {built_gpu} (compute capability {built_cc}); "
            f"this server has TensorRT {runtime_trt_version} and GPU {gpu_name or UNKNOWN}: "
            f"{'; '.join(reasons)}. Rebuild it with 'python -m export engine' on the serving machine, inside the "
            f"Triton container whose TensorRT matches the server"
        )
    return metadata
