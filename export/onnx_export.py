"""Checkpoint -> ONNX with a dynamic batch, the FFT stage fused, checked and compared against PyTorch.

The graph takes ``IMAGE`` (uint8, (B, 3, H, W), what ``core.preprocess`` produces) and returns ``LOGIT``,
``PROB_FAKE`` (float32, (B, 1)) and ``IS_FAKE`` (bool, (B, 1), at the calibrated threshold). The checkpoint's
metadata is stored in the model's ``metadata_props`` so a runtime can read it from the file alone.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np
import onnx
import torch

from core.metadata import DetectorMetadata, FFTStageConfig
from training.checkpoint import load_detector
from training.fft_stage import FFTImpl
from training.model import Detector, ServingHead

logger = logging.getLogger(__name__)

INPUT_NAME = "IMAGE"
OUTPUT_NAMES = ("LOGIT", "PROB_FAKE", "IS_FAKE")
OPSET = 20
METADATA_KEY = "detector_metadata"
PARITY_BATCH_SIZES = (1, 3, 8)


class Precision(str, Enum):
    FP32 = "fp32"
    FP16 = "fp16"


class OnnxFFT(str, Enum):
    """How the FFT stage appears in the graph: ``matmul`` (DFT as MatMul, any TensorRT, FP16-safe) or ``dft``
    (the ONNX ``DFT`` op: ONNX Runtime CPU, TensorRT >= 11.2)."""

    MATMUL = "matmul"
    DFT = "dft"

    @property
    def torch_impl(self) -> FFTImpl:
        return FFTImpl.MATMUL if self is OnnxFFT.MATMUL else FFTImpl.FFT


PARITY_TOLERANCE = {Precision.FP32: 1e-3, Precision.FP16: 5e-2}


@dataclass(frozen=True)
class ExportConfig:
    checkpoint: Path
    out: Path
    fft_impl: OnnxFFT = OnnxFFT.MATMUL
    precision: Precision = Precision.FP32
    masks: int | None = None  # overrides the checkpoint's number of test-time masks
    parity_batch_sizes: tuple[int, ...] = PARITY_BATCH_SIZES


@dataclass
class ParityReport:
    max_abs_logit_diff: float
    batch_sizes: list[int]
    precision: str
    fft_impl: str
    tolerance: float
    per_batch: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.max_abs_logit_diff <= self.tolerance

    def to_dict(self) -> dict:
        return {**self.__dict__, "passed": self.passed}


def _load(config: ExportConfig, impl: FFTImpl) -> Detector:
    model = load_detector(config.checkpoint, fft_impl=impl)
    if config.masks is not None and config.masks != model.metadata.fft_stage.masks:
        stage = FFTStageConfig(**{**model.metadata.fft_stage.__dict__, "masks": config.masks})
        metadata = model.metadata.with_updates(fft_stage=stage)
        state = model.state_dict()
        model = Detector(metadata, fft_impl=impl)
        model.load_state_dict(state)
    return model.eval()


def parity_images(batch_size: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Deterministic uint8 test batch with image-like structure (smooth gradients, edges and noise)."""
    rng = np.random.default_rng(seed + batch_size)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    out = np.empty((batch_size, 3, height, width), dtype=np.uint8)
    for i in range(batch_size):
        base = 128 + 90 * np.sin(xx / rng.uniform(3, 20) + rng.uniform(0, 6)) * np.cos(yy / rng.uniform(3, 20))
        for c in range(3):
            noise = rng.normal(0, rng.uniform(2, 25), size=(height, width))
            out[i, c] = np.clip(base + noise + rng.uniform(-40, 40), 0, 255).astype(np.uint8)
    return out


def export_onnx(config: ExportConfig) -> ParityReport:
    """Export, run ``onnx.checker`` (full check), compare against PyTorch fp32; raise if parity fails."""
    fft = OnnxFFT(config.fft_impl)
    precision = Precision(config.precision)
    model = _load(config, fft.torch_impl)
    metadata = model.metadata
    height, width = metadata.input_size
    head = ServingHead(model)
    if precision is Precision.FP16:
        head = head.half()
    example = torch.from_numpy(parity_images(2, height, width))
    config.out.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            head,
            (example,),
            str(config.out),
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes={"images": {0: batch}},
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    graph = onnx.load(str(config.out))
    props = {
        METADATA_KEY: json.dumps(metadata.to_dict(), sort_keys=True),
        "fft_impl": fft.value,
        "precision": precision.value,
    }
    del graph.metadata_props[:]
    for key, value in props.items():
        graph.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(graph, full_check=True)
    onnx.save(graph, str(config.out))
    ops = sorted({node.op_type for node in graph.graph.node})
    logger.info("exported %s (%s, %s): ops %s", config.out, fft.value, precision.value, ", ".join(ops))
    report = check_parity(config, metadata)
    if not report.passed:
        raise RuntimeError(
            f"ONNX parity failed: max |logit diff| {report.max_abs_logit_diff:.3g} > {report.tolerance:g}"
        )
    return report


def check_parity(config: ExportConfig, metadata: DetectorMetadata) -> ParityReport:
    """Max |logit difference| between ONNX Runtime (CPU) and PyTorch fp32 (torch.fft stage)."""
    import onnxruntime as ort

    reference = _load(config, FFTImpl.FFT)
    session = ort.InferenceSession(str(config.out), providers=["CPUExecutionProvider"])
    height, width = metadata.input_size
    per_batch = {}
    for bs in config.parity_batch_sizes:
        images = parity_images(bs, height, width)
        with torch.no_grad():
            expected = reference(torch.from_numpy(images)).numpy()
        logit = session.run(["LOGIT"], {INPUT_NAME: images})[0].reshape(-1)
        per_batch[str(bs)] = float(np.abs(logit.astype(np.float64) - expected).max())
    precision = Precision(config.precision)
    return ParityReport(
        max_abs_logit_diff=max(per_batch.values()),
        batch_sizes=list(config.parity_batch_sizes),
        precision=precision.value,
        fft_impl=OnnxFFT(config.fft_impl).value,
        tolerance=PARITY_TOLERANCE[precision],
        per_batch=per_batch,
    )


def read_onnx_metadata(path: str | Path) -> DetectorMetadata:
    """The detector metadata stored inside an exported ONNX file."""
    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    if METADATA_KEY not in props:
        raise ValueError(f"{path} carries no {METADATA_KEY}: not exported by this project")
    return DetectorMetadata.from_dict(json.loads(props[METADATA_KEY]))
