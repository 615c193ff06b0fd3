"""Checkpoint -> ONNX with a dynamic batch, the FFT stage fused, checked and compared against PyTorch.

The graph takes ``IMAGE`` (uint8, (B, 3 * crops, H, W), what ``core.preprocess`` produces; crops = 1 unless the
metadata's coverage asks for more windows) and returns ``LOGIT``, ``PROB_FAKE`` (float32, (B, 1)) and ``IS_FAKE``
(bool, (B, 1), at the calibrated threshold). The checkpoint's metadata is stored in the model's ``metadata_props``
so a runtime can read it from the file alone.

``--fft-impl external`` leaves the FFT stage out: the graph then takes ``MASKED`` (float32, (B, crops * K, 3, H,
W)), the normalised and masked views that the gpu-cupy target's python ``fft_stage`` model computes with cuFFT,
and averages the K logits of each window, then aggregates the windows, inside.

``--precision fp16`` writes a strongly typed FP16 graph (the precision is in the graph, not in a builder flag):
BatchNorm is folded into the convolutions in fp32 first, then weights and activations are FP16; the I/O stays
uint8 (or float32 ``MASKED``) in, float32 + bool out. The FFT stage as MatMul runs in FP16 (ortho-scaled DFT
matrices keep the spectrum inside FP16 range); the ``DFT`` op is kept in FP32 between Cast nodes, because cuFFT
computes half precision only for power-of-two sizes. :func:`check_fp16_graph` checks both on the written file.
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
from torch import nn

from fmdetect.core.fft import FFTForm, apply_fft_stage, inference_masks
from fmdetect.core.metadata import DetectorMetadata
from fmdetect.core.names import IMAGE, IS_FAKE, LOGIT, MASKED, OUTPUTS, PROB_FAKE
from fmdetect.core.preprocess import normalize
from fmdetect.training.checkpoint import load_detector, with_masks
from fmdetect.training.model import Detector, ServingHead, aggregate_windows

logger = logging.getLogger(__name__)

INPUT_NAME = IMAGE
MASKED_INPUT_NAME = MASKED
OUTPUT_NAMES = OUTPUTS
OPSET = 20
METADATA_KEY = "detector_metadata"
PARITY_BATCH_SIZES = (1, 3, 8)


class Precision(str, Enum):
    FP32 = "fp32"
    FP16 = "fp16"


PARITY_TOLERANCE = {Precision.FP32: 1e-3, Precision.FP16: 5e-2}


@dataclass(frozen=True)
class ExportConfig:
    checkpoint: Path
    out: Path
    fft_impl: FFTForm = FFTForm.MATMUL
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


def load_with_masks(checkpoint: Path, impl: FFTForm | str, masks: int | None = None) -> Detector:
    """The checkpoint's detector in eval mode, with ``masks`` test-time masks instead of its own when given."""
    model = load_detector(checkpoint, fft_impl=impl)
    if masks is not None and masks != model.metadata.fft_stage.masks:
        model = with_masks(model, masks)
    return model.eval()


def _load(config: ExportConfig, impl: FFTForm) -> Detector:
    return load_with_masks(config.checkpoint, impl, config.masks)


class BackboneHead(nn.Module):
    """The graph without the FFT stage: ``MASKED`` float32 (B, crops * K, 3, H, W), already normalised and masked
    (window-major) -> (LOGIT, PROB_FAKE, IS_FAKE), each (B, 1); per window the K logits averaged, then the windows
    aggregated, inside (as ``Detector.forward`` does)."""

    def __init__(self, detector: Detector) -> None:
        super().__init__()
        self.backbone = detector.backbone
        self.threshold = float(detector.metadata.threshold.value)
        self.coverage = detector.metadata.coverage
        self.masks = detector.metadata.fft_stage.views

    def forward(self, masked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        dtype = next(self.backbone.parameters()).dtype
        logit = self.backbone(masked.reshape(-1, *masked.shape[2:]).to(dtype)).reshape(-1, self.masks).mean(dim=1)
        logit = aggregate_windows(logit.reshape(-1, self.coverage.crops), self.coverage.top_k)
        logit = logit.reshape(-1, 1).float()
        prob = torch.sigmoid(logit)
        return logit, prob, prob >= self.threshold


def masked_views(images: np.ndarray, metadata: DetectorMetadata) -> np.ndarray:
    """uint8 (B, 3 * crops, H, W) -> float32 (B, crops * K, 3, H, W), normalised and masked by the numpy reference,
    window-major: the input of an ``external`` graph, what the CuPy ``fft_stage`` model computes (K = 1, unmasked,
    for a checkpoint without test-time masks)."""
    height, width = metadata.input_size
    batch = images.shape[0]
    x = normalize(images.reshape(-1, 3, height, width), metadata.mean, metadata.std)
    views = apply_fft_stage(x, inference_masks(metadata.fft_stage, height, width))
    return views.reshape(batch, -1, 3, height, width)


def graph_inputs(fft: FFTForm | str, images: np.ndarray, metadata: DetectorMetadata) -> dict[str, np.ndarray]:
    """The feed of an exported graph for a uint8 image batch."""
    fft = FFTForm(fft)
    if fft is FFTForm.EXTERNAL:
        return {MASKED_INPUT_NAME: masked_views(images, metadata)}
    return {INPUT_NAME: images}


def fold_batchnorm(module: nn.Module, example: torch.Tensor) -> int:
    """Fold, in place and in fp32, every eval-mode ``BatchNorm2d`` that directly consumes a ``Conv2d`` output.

    Done before ``.half()`` so that the folded weights are computed in fp32 and rounded once (each the correctly
    rounded FP16 value). Left to the exporter after ``.half()``, the folding runs in FP16 arithmetic: about half
    of the folded weights of the demo detector came out off their correctly rounded value. Pairs are found by
    running ``example`` through ``module``; the folded module must give the same output (else it is restored and
    0 returned).

    Returns:
        The number of BatchNorm layers folded.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    produced: dict[int, tuple[nn.Module, torch.Tensor]] = {}
    pairs: list[tuple[nn.Module, nn.Module]] = []
    calls: dict[nn.Module, int] = {}

    def after_conv(conv: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        produced[id(output)] = (conv, output)
        calls[conv] = calls.get(conv, 0) + 1

    def before_bn(bn: nn.Module, inputs: tuple) -> None:
        calls[bn] = calls.get(bn, 0) + 1
        hit = produced.get(id(inputs[0]))
        if hit is not None and hit[1] is inputs[0]:
            pairs.append((hit[0], bn))

    hooks = []
    for sub in module.modules():
        if isinstance(sub, nn.Conv2d):
            hooks.append(sub.register_forward_hook(after_conv))
        elif isinstance(sub, nn.BatchNorm2d) and sub.track_running_stats and sub.running_mean is not None:
            hooks.append(sub.register_forward_pre_hook(before_bn))
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            expected = module(example)
    finally:
        for hook in hooks:
            hook.remove()
    parents = {sub: (parent, name) for parent in module.modules() for name, sub in parent.named_children()}
    saved = {}
    folded = 0
    for conv, bn in pairs:
        if calls.get(conv) != 1 or calls.get(bn) != 1 or bn not in parents:
            continue  # shared modules: folding would change another call site
        saved[conv] = (conv.weight, conv.bias)
        weight, bias = fuse_conv_bn_weights(
            conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
        )
        conv.weight, conv.bias = weight, bias
        parent, name = parents[bn]
        setattr(parent, name, nn.Identity())
        saved[bn] = (parent, name)
        folded += 1
    with torch.no_grad():
        got = module(example)
    scale = float(expected.abs().max()) + 1e-6
    if folded and float((got - expected).abs().max()) > 1e-4 * scale:
        logger.warning(
            "BatchNorm folding changed the output (a convolution output with another consumer?): exporting without it"
        )
        for key, value in saved.items():
            if isinstance(key, nn.BatchNorm2d):
                setattr(value[0], value[1], key)
            else:
                key.weight, key.bias = value
        folded = 0
    module.train(was_training)
    return folded


def to_fp16(head: nn.Module, detector: Detector) -> nn.Module:
    """``head`` (holding ``detector``) in FP16, in place: BatchNorm folded in fp32, then every parameter and
    buffer cast. The FP16 export and the FP16 numerics report (PyTorch half) use the same weights."""
    metadata = detector.metadata
    height, width = metadata.input_size
    views = masked_views(parity_images(2, height, width, channels=metadata.coverage.channels), metadata)
    example = torch.from_numpy(views.reshape(-1, *views.shape[2:]))
    folded = fold_batchnorm(detector.backbone, example)
    logger.info("fp16: folded %d BatchNorm layers into their convolutions in fp32", folded)
    return head.half()


def parity_images(batch_size: int, height: int, width: int, seed: int = 0, channels: int = 3) -> np.ndarray:
    """Deterministic uint8 test batch with image-like structure (smooth gradients, edges and noise); ``channels``
    3 * crops for a multi-window coverage."""
    rng = np.random.default_rng(seed + batch_size)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    out = np.empty((batch_size, channels, height, width), dtype=np.uint8)
    for i in range(batch_size):
        base = 128 + 90 * np.sin(xx / rng.uniform(3, 20) + rng.uniform(0, 6)) * np.cos(yy / rng.uniform(3, 20))
        for c in range(channels):
            noise = rng.normal(0, rng.uniform(2, 25), size=(height, width))
            out[i, c] = np.clip(base + noise + rng.uniform(-40, 40), 0, 255).astype(np.uint8)
    return out


def export_onnx(config: ExportConfig) -> ParityReport:
    """Export, run ``onnx.checker`` (full check), compare against PyTorch fp32; raise if parity fails."""
    fft = FFTForm(config.fft_impl)
    precision = Precision(config.precision)
    model = _load(config, fft.torch_form)
    metadata = model.metadata
    height, width = metadata.input_size
    head = BackboneHead(model) if fft is FFTForm.EXTERNAL else ServingHead(model)
    if precision is Precision.FP16:
        head = to_fp16(head, model)
    images = parity_images(2, height, width, channels=metadata.coverage.channels)
    (example,) = graph_inputs(fft, images, metadata).values()
    argument = "masked" if fft is FFTForm.EXTERNAL else "images"  # the forward's parameter name
    config.out.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            head,
            (torch.from_numpy(example),),
            str(config.out),
            input_names=[fft.input_name],
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes={argument: {0: batch}},
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
    if precision is Precision.FP16:
        summary = check_fp16_graph(graph, fft)
        logger.info("fp16 graph: %s", ", ".join(f"{k} {v}" for k, v in summary.items()))
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
    """Max |logit difference| between ONNX Runtime (CPU) and PyTorch fp32 (torch.fft stage) on uint8 images;
    an ``external`` graph gets them normalised and masked by the numpy reference (:func:`masked_views`)."""
    import onnxruntime as ort

    reference = _load(config, FFTForm.DFT)
    session = ort.InferenceSession(str(config.out), providers=["CPUExecutionProvider"])
    height, width = metadata.input_size
    per_batch = {}
    for bs in config.parity_batch_sizes:
        images = parity_images(bs, height, width, channels=metadata.coverage.channels)
        with torch.no_grad():
            expected = reference(torch.from_numpy(images)).numpy()
        logit = session.run([LOGIT], graph_inputs(config.fft_impl, images, metadata))[0].reshape(-1)
        per_batch[str(bs)] = float(np.abs(logit.astype(np.float64) - expected).max())
    precision = Precision(config.precision)
    return ParityReport(
        max_abs_logit_diff=max(per_batch.values()),
        batch_sizes=list(config.parity_batch_sizes),
        precision=precision.value,
        fft_impl=FFTForm(config.fft_impl).value,
        tolerance=PARITY_TOLERANCE[precision],
        per_batch=per_batch,
    )


_COMPUTE_OPS = ("Conv", "MatMul", "Gemm")


def check_fp16_graph(graph: onnx.ModelProto | str | Path, fft: FFTForm | str | None = None) -> dict[str, int]:
    """Check the precision contract of an FP16 export and count what runs in which precision.

    - I/O: ``IMAGE`` uint8 (``MASKED`` float32 for ``external``) in; ``LOGIT``, ``PROB_FAKE`` float32 and
      ``IS_FAKE`` bool out;
    - every Conv / MatMul / Gemm computes in FP16 (strongly typed: the types are in the graph);
    - every ``DFT`` computes in FP32, reached through Cast nodes (cuFFT does half only for power-of-two sizes).

    Returns:
        Counts: ``fp16_compute``, ``fp32_compute`` (Conv/MatMul/Gemm), ``dft_fp32``, ``casts``.

    Raises:
        ValueError: the graph breaks the contract; the message lists every violation.
    """
    model = graph if isinstance(graph, onnx.ModelProto) else onnx.load(str(graph))
    props = {p.key: p.value for p in model.metadata_props}
    fft = FFTForm(fft if fft is not None else props.get("fft_impl", FFTForm.MATMUL.value))
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*g.value_info, *g.input, *g.output)}
    types.update({init.name: init.data_type for init in g.initializer})
    T = onnx.TensorProto
    problems = []
    expected_in = {fft.input_name: T.FLOAT if fft is FFTForm.EXTERNAL else T.UINT8}
    expected_out = {LOGIT: T.FLOAT, PROB_FAKE: T.FLOAT, IS_FAKE: T.BOOL}
    for values, expected in ((g.input, expected_in), (g.output, expected_out)):
        got = {v.name: v.type.tensor_type.elem_type for v in values}
        if got != expected:
            name = T.DataType.Name
            problems.append(
                f"I/O types {{{', '.join(f'{k}: {name(v)}' for k, v in got.items())}}}, expected "
                f"{{{', '.join(f'{k}: {name(v)}' for k, v in expected.items())}}}"
            )
    counts = {"fp16_compute": 0, "fp32_compute": 0, "dft_fp32": 0, "casts": 0}
    for node in g.node:
        dtype = types.get(node.input[0]) if node.input else None
        if node.op_type in _COMPUTE_OPS:
            counts["fp16_compute" if dtype == T.FLOAT16 else "fp32_compute"] += 1
            if dtype != T.FLOAT16:
                problems.append(f"{node.op_type} {node.name} computes in {T.DataType.Name(dtype or 0)}, not FLOAT16")
        elif node.op_type == "DFT":
            out = types.get(node.output[0])
            if dtype == T.FLOAT and out == T.FLOAT:
                counts["dft_fp32"] += 1
            else:
                problems.append(
                    f"DFT {node.name} must compute in FLOAT (cuFFT does half only for power-of-two "
                    f"sizes), got {T.DataType.Name(dtype or 0)} -> {T.DataType.Name(out or 0)}"
                )
        elif node.op_type == "Cast":
            counts["casts"] += 1
    masks = json.loads(props[METADATA_KEY])["fft_stage"]["masks"] if METADATA_KEY in props else 0
    if fft is FFTForm.DFT and masks > 0 and counts["dft_fp32"] == 0:
        problems.append("fft_impl dft with test-time masks but the graph has no DFT node")
    if problems:
        raise ValueError("the FP16 graph breaks its precision contract: " + "; ".join(problems))
    return counts


def read_onnx_metadata(path: str | Path) -> DetectorMetadata:
    """The detector metadata stored inside an exported ONNX file."""
    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    if METADATA_KEY not in props:
        raise ValueError(f"{path} carries no {METADATA_KEY}: not exported by this project")
    return DetectorMetadata.from_dict(json.loads(props[METADATA_KEY]))
