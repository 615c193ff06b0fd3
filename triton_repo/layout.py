"""Assemble a complete Triton model repository for a target from the hand-written sources in this folder.

Layout written (``cpu`` target)::

    OUT/deepfake_detector/config.pbtxt   ensemble: preprocess -> detector
    OUT/deepfake_detector/1/
    OUT/preprocess/config.pbtxt           python: decode + crop
    OUT/preprocess/1/{model.py,metadata.json}
    OUT/detector/config.pbtxt             python + ONNX Runtime (cpu), tensorrt_plan (gpu-trt), onnxruntime_onnx
    OUT/detector/1/{model.py,model.onnx,model.onnx.sha256}  (gpu-ort); model.plan for gpu-trt

With ``decode=Decode.DALI`` (``--decode dali``, GPU targets only) images are decoded on the GPU: ``preprocess`` is
replaced by ``validate`` (python, CPU: every check that needs no pixel, per request) and ``decode`` (Triton's DALI
backend: nvJPEG decodes only the centre window; ``OUT/decode/1/{model.py,metadata.json}``, model.py being DALI's
autoserialized pipeline ``models/decode_dali.py``).

The ``gpu-cupy`` target adds a step: preprocess (CPU) -> ``fft_stage`` (python on the GPU: normalise + FFT stage
with CuPy, ``OUT/fft_stage/1/{model.py,metadata.json}``) -> detector (a TensorRT engine exported with
``--fft-impl external``, taking ``MASKED`` (B, K, 3, H, W)).

A model's config is the first of ``configs/<model>.<target>.<decode>.pbtxt``, ``<model>.<decode>.pbtxt`` (with
``--decode dali``), ``<model>.<target>.pbtxt`` and ``<model>.pbtxt`` that exists.
Configs keep ``${HEIGHT}`` / ``${WIDTH}`` / ``${VIEWS}`` (K = max(masks, 1)) where a backend needs concrete dims;
they are filled from the checkpoint metadata here. See GPU.md for serving the GPU targets.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from enum import Enum
from pathlib import Path
from string import Template

from fmdetect.core.checksum import write_sidecar
from fmdetect.core.fft_cupy import batch_buckets
from fmdetect.core.metadata import DetectorMetadata
from fmdetect.core.names import BY_CONSTANT, DECODE, DETECTOR, ENSEMBLE, FFT_STAGE, PREPROCESS, VALIDATE

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).resolve().parent
CONFIGS = SOURCE / "configs"
PYTHON_MODELS = SOURCE / "models"


class Target(str, Enum):
    CPU = "cpu"
    GPU_TRT = "gpu-trt"
    GPU_ORT = "gpu-ort"
    GPU_CUPY = "gpu-cupy"

    @property
    def needs_engine(self) -> bool:
        """The detector is a TensorRT plan (built with ``python -m export engine``), not an ONNX export."""
        return self in (Target.GPU_TRT, Target.GPU_CUPY)


class Decode(str, Enum):
    """Where images are decoded: ``python`` (the ``preprocess`` python model, CPU; every target) or ``dali``
    (``validate`` on the CPU, then the ``decode`` DALI model on the GPU; GPU targets)."""

    PYTHON = "python"
    DALI = "dali"


# Per target: the python model file that serves ``detector`` (None: a native backend) and the artifact it needs.
DETECTOR_SOURCES = {
    Target.CPU: ("detector_onnxruntime.py", "model.onnx"),
    Target.GPU_TRT: (None, "model.plan"),
    Target.GPU_ORT: (None, "model.onnx"),
    Target.GPU_CUPY: (None, "model.plan"),
}

# Per target: the models of the repository, in ensemble order, and the python sources of the python ones.
MODELS = {
    Target.CPU: (ENSEMBLE, PREPROCESS, DETECTOR),
    Target.GPU_TRT: (ENSEMBLE, PREPROCESS, DETECTOR),
    Target.GPU_ORT: (ENSEMBLE, PREPROCESS, DETECTOR),
    Target.GPU_CUPY: (ENSEMBLE, PREPROCESS, FFT_STAGE, DETECTOR),
}
# The models' sources (model.py), each with metadata.json beside it.
MODEL_SOURCES = {
    PREPROCESS: "preprocess.py",
    FFT_STAGE: "fft_cupy.py",
    VALIDATE: "validate.py",
    DECODE: "decode_dali.py",
}


def models(target: Target, decode: Decode = Decode.PYTHON) -> tuple[str, ...]:
    """The models of ``target``'s repository in ensemble order: ``preprocess`` becomes ``validate`` + ``decode``
    with GPU decoding."""
    names = MODELS[target]
    if decode is Decode.PYTHON:
        return names
    i = names.index(PREPROCESS)
    return (*names[:i], VALIDATE, DECODE, *names[i + 1 :])


def check_decode(target: Target, decode: Decode, metadata: DetectorMetadata) -> None:
    """Refuse GPU decoding where it cannot serve: the cpu target (no GPU), or several windows per image.

    Raises:
        ValueError: the reason.
    """
    if decode is Decode.PYTHON:
        return
    if target is Target.CPU:
        raise ValueError(
            "--decode dali needs a GPU target (gpu-trt, gpu-ort, gpu-cupy); the cpu target decodes in python"
        )
    if metadata.coverage.crops != 1:
        raise ValueError(
            f"--decode dali decodes the centre window only; this detector scores {metadata.coverage.crops} windows "
            "per image: serve it with --decode python"
        )


# Per target: the FFT forms (``python -m export onnx --fft-impl``) its detector can run, and why not the others.
FFT_FORMS = {
    Target.CPU: ("matmul", "dft"),
    Target.GPU_ORT: ("matmul",),
    Target.GPU_TRT: ("matmul", "dft"),
    Target.GPU_CUPY: ("external",),
}
FFT_REASONS = {
    (Target.GPU_ORT, "dft"): "ONNX Runtime's CUDA execution provider has no DFT kernel: export the FFT stage as "
    "MatMul (--fft-impl matmul)",
    (Target.GPU_CUPY, "matmul"): "gpu-cupy runs the FFT stage in its python fft_stage model (CuPy): its engine "
    "must be exported without it (--fft-impl external)",
    (Target.GPU_CUPY, "dft"): "gpu-cupy runs the FFT stage in its python fft_stage model (CuPy): its engine "
    "must be exported without it (--fft-impl external)",
}


def check_fft_impl(target: Target | str, fft_impl: str) -> None:
    """Refuse an FFT form that ``target``'s detector cannot run.

    Raises:
        ValueError: the reason, and the forms the target takes.
    """
    target = Target(target)
    allowed = FFT_FORMS[target]
    if fft_impl in allowed:
        return
    reason = FFT_REASONS.get(
        (target, fft_impl),
        f"the {target.value} detector takes IMAGE with the FFT stage inside; 'external' is for --target gpu-cupy",
    )
    raise ValueError(
        f"--target {target.value} cannot use --fft-impl {fft_impl}: {reason} (valid: {', '.join(allowed)})"
    )


def artifact_fft_impl(artifact: str | Path) -> str | None:
    """The FFT form recorded with a detector artifact: ``fft_impl`` in an ONNX file's metadata, or in the
    ``<stem>.engine.json`` beside a TensorRT plan; None when not recorded."""
    artifact = Path(artifact)
    if artifact.suffix == ".onnx":
        import onnx

        props = {p.key: p.value for p in onnx.load(str(artifact), load_external_data=False).metadata_props}
        return props.get("fft_impl")
    side = artifact.with_name(artifact.stem + ".engine.json")
    if side.is_file():
        return json.loads(side.read_text()).get("fft_impl")
    return None


def views(metadata: DetectorMetadata) -> int:
    """The masked views per image that the gpu-cupy target's ``fft_stage`` hands the detector: K per window (1 when
    the FFT stage is skipped) times the coverage's windows."""
    return metadata.coverage.crops * metadata.fft_stage.views


def identity_parameters(
    metadata: DetectorMetadata, target: Target, artifact_name: str, digest: str, decode: Decode = Decode.PYTHON
) -> str:
    """``parameters`` of the ensemble that say which detector it serves, for clients to record beside each
    score (``GET /v2/models/deepfake_detector/config``): the served artifact's SHA-256, the threshold behind
    ``IS_FAKE``, the backbone and input size, the target and the software version."""
    from importlib import metadata as package_metadata

    try:
        software = package_metadata.version("fmdetect")
    except package_metadata.PackageNotFoundError:
        software = "unknown"
    values = {
        "detector_sha256": digest,
        "detector_artifact": artifact_name,
        "threshold": f"{metadata.threshold.value:.6g}",
        "threshold_method": metadata.threshold.method,
        "backbone": metadata.backbone,
        "input_size": "x".join(map(str, metadata.input_size)),
        "test_time_masks": str(metadata.fft_stage.masks),
        "crops": str(metadata.coverage.crops),
        "crops_top_k": str(metadata.coverage.top_k),
        "target": target.value,
        "decode": decode.value,
        "fmdetect_version": software,
    }
    lines = ["", "# Which detector this ensemble serves (written by triton_repo.layout.write_repository)."]
    lines += [f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}' for key, value in values.items()]
    return "\n".join(lines) + "\n"


def render_config(
    model: str, target: Target | str, metadata: DetectorMetadata, decode: Decode | str = Decode.PYTHON
) -> str:
    """The ``config.pbtxt`` text of one model of the repository for ``target``."""
    target, decode = Target(target), Decode(decode)
    candidates = [f"{model}.{target.value}.pbtxt"] + ([] if model == "detector" else [f"{model}.pbtxt"])
    if decode is not Decode.PYTHON:
        candidates = [f"{model}.{target.value}.{decode.value}.pbtxt", f"{model}.{decode.value}.pbtxt", *candidates]
    path = next((CONFIGS / name for name in candidates if (CONFIGS / name).is_file()), None)
    if path is None:
        raise FileNotFoundError(f"no config {' or '.join(candidates)} in {CONFIGS}")
    height, width = metadata.input_size
    text = Template(path.read_text()).substitute(
        BY_CONSTANT, HEIGHT=height, WIDTH=width, VIEWS=views(metadata), CHANNELS=metadata.coverage.channels
    )
    return warm_every_bucket(text) if "KIND_GPU" in text else text


_WARMUP = re.compile(r"^model_warmup \[\n(?P<entry>  \{\n.*?\n  \})\n\]\n", re.M | re.S)


def warm_every_bucket(config: str) -> str:
    """A GPU model's one warm-up entry (batch 1) repeated for each of ``core.fft_cupy.batch_buckets`` of its
    ``max_batch_size``: each batch size pays its first-use cost (cuFFT plans, cuDNN algorithm choice, CUDA graph
    capture) at load, not on a request. ``fft_stage`` computes only at these sizes; the detector meets others
    (the dynamic batcher forms any size), which pay that cost once, on first use."""
    match = _WARMUP.search(config)
    if match is None:
        return config
    max_batch = int(re.search(r"^max_batch_size: (\d+)", config, re.M)[1])
    entry = match["entry"]
    if "batch_size: 1\n" not in entry or 'name: "zeros"' not in entry:
        raise ValueError('a GPU config\'s warm-up must be one entry named "zeros" at batch_size: 1')
    entries = [
        entry.replace('name: "zeros"', f'name: "zeros batch {size}"').replace(
            "batch_size: 1\n", f"batch_size: {size}\n"
        )
        for size in batch_buckets(max_batch)
    ]
    return config[: match.start()] + "model_warmup [\n" + ",\n".join(entries) + "\n]\n" + config[match.end() :]


def write_repository(
    target: Target | str,
    out: str | Path,
    metadata: DetectorMetadata,
    artifact: str | Path,
    decode: Decode | str = Decode.PYTHON,
) -> Path:
    """Write a servable repository for ``target`` into ``out`` (replaced atomically when it exists).

    Args:
        artifact: the detector's model file: the exported ONNX (cpu, gpu-ort) or the TensorRT engine (gpu-trt,
            gpu-cupy), whose recorded FFT form (:func:`artifact_fft_impl`) must suit the target.
        decode: where images are decoded (:class:`Decode`).

    Raises:
        FileNotFoundError: no artifact.
        ValueError: the artifact's FFT form or input shape does not suit the target or the metadata, or the
            decoding does not suit the target (:func:`check_decode`).
    """
    target, decode = Target(target), Decode(decode)
    check_decode(target, decode, metadata)
    out = Path(out)
    artifact = Path(artifact)
    python_file, artifact_name = DETECTOR_SOURCES[target]
    if not artifact.is_file():
        raise FileNotFoundError(f"{artifact} not found: target {target.value} needs {artifact_name}")
    fft_impl = artifact_fft_impl(artifact)
    if fft_impl is None:
        logger.warning("%s records no fft_impl: cannot check that it suits target %s", artifact, target.value)
    else:
        check_fft_impl(target, fft_impl)
    if target.needs_engine:
        _check_engine_shape(artifact, target, metadata)
    staging = out.with_name(out.name + ".writing")
    shutil.rmtree(staging, ignore_errors=True)
    for model in models(target, decode):
        (staging / model / "1").mkdir(parents=True)
        (staging / model / "config.pbtxt").write_text(render_config(model, target, metadata, decode))
        if model in MODEL_SOURCES:
            shutil.copy2(PYTHON_MODELS / MODEL_SOURCES[model], staging / model / "1" / "model.py")
            metadata.save(staging / model / "1")
    if python_file is not None:
        shutil.copy2(PYTHON_MODELS / python_file, staging / "detector" / "1" / "model.py")
    shutil.copy2(artifact, staging / "detector" / "1" / artifact_name)
    copied = staging / "detector" / "1" / artifact_name  # the detector checks it before loading
    digest = write_sidecar(copied)
    with open(staging / ENSEMBLE / "config.pbtxt", "a") as config:
        config.write(identity_parameters(metadata, target, artifact_name, digest, decode))
    for side_file in artifact.parent.glob(artifact.stem + ".*.json"):  # e.g. engine metadata beside the plan
        # under the served file's stem (backbone.engine.json -> model.engine.json), where the engine check looks
        served_name = Path(artifact_name).stem + side_file.name[len(artifact.stem) :]
        shutil.copy2(side_file, staging / "detector" / "1" / served_name)
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    logger.info("wrote %s repository to %s", target.value, out)
    return out


def _check_engine_shape(plan: Path, target: Target, metadata: DetectorMetadata) -> None:
    """Compare the engine's input profile (``model.engine.json``, when present) with the config's dims."""
    side = plan.with_name(plan.stem + ".engine.json")
    if not side.is_file():
        logger.warning("no %s beside %s: cannot check the engine's input shape", side.name, plan)
        return
    profile = json.loads(side.read_text()).get("profile") or {}
    if len(profile) != 1:
        return
    ((name, shapes),) = profile.items()
    height, width = metadata.input_size
    channels = metadata.coverage.channels
    expected = [views(metadata), 3, height, width] if target is Target.GPU_CUPY else [channels, height, width]
    got = list(shapes.get("opt", []))[1:]
    if got and got != expected:
        raise ValueError(
            f"engine {plan} takes {name} (B, {', '.join(map(str, got))}) but the {target.value} "
            f"config needs (B, {', '.join(map(str, expected))}): check --masks and the checkpoint"
        )
