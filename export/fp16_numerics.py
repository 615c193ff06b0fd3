"""FP16 numerics report: how far the FP16 detector's ``prob_fake`` and decisions move from fp32 on real test images.

The reference is PyTorch fp32 on the CPU (``torch.fft`` stage). Each FP16 runtime is compared with it on every image
of a split (the offline dataset's ``testing/`` folder by default, any Wang/Ojha layout ``training.data`` reads):
max and mean |difference in prob_fake|, max |difference in logit|, and agreement of the decisions at the
checkpoint's calibrated threshold.

Runtimes, for each FFT form (``matmul``: the DFT as FP16 MatMul; ``dft``: the FFT stage in FP32):

- ``onnxruntime-cpu``: the FP16 ONNX graph that ``python -m export onnx --precision fp16`` writes, run by ONNX
  Runtime's CPU provider. It has no FP16 kernels for the convolutions and matrix products: it inserts Cast nodes,
  runs them in FP32 and drops the FP32->FP16->FP32 pairs between nodes, so activations stay FP32 and the figures
  measure the FP16 rounding of weights and constants only. The report states what ORT did (``execution``).
- ``pytorch-cpu-half``: the same weights (BatchNorm folded in fp32, then cast) in PyTorch half on the CPU: every
  operation's output is rounded to FP16, products accumulate in FP32. An emulation of FP16 activations.
- ``pytorch-cuda-half``: the same on a CUDA GPU (tensor cores, FP32 accumulation: reduced-precision reductions off);
  skipped with the reason when no GPU is available.

Example::

    python -m export fp16-numerics --checkpoint CKPT --data data/offline --split testing --out fp16.json
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from fmdetect.core.fft import FFTForm
from fmdetect.core.metadata import DetectorMetadata
from fmdetect.core.names import LOGIT
from fmdetect.export.onnx_export import (
    INPUT_NAME,
    ExportConfig,
    Precision,
    export_onnx,
    load_with_masks,
    to_fp16,
)
from fmdetect.training.data import RealFakeDataset
from fmdetect.training.model import ServingHead

logger = logging.getLogger(__name__)

FFT_FORMS = (FFTForm.MATMUL, FFTForm.DFT)
ONNXRUNTIME_CPU = "onnxruntime-cpu"
PYTORCH_CPU_HALF = "pytorch-cpu-half"
PYTORCH_CUDA_HALF = "pytorch-cuda-half"
RUNTIMES = (ONNXRUNTIME_CPU, PYTORCH_CPU_HALF, PYTORCH_CUDA_HALF)
WORST = 5
ORT_NOTE = (
    "ONNX Runtime's CPU provider ran the FP16 graph's compute nodes in FP32 (it inserts Cast nodes where it "
    "has no FP16 kernel and removes the FP32->FP16->FP32 pairs between nodes): activations stay FP32, so "
    "this measures the FP16 rounding of weights and constants; pytorch-cpu-half also rounds activations"
)


@dataclass(frozen=True)
class NumericsConfig:
    checkpoint: Path
    data: Path
    out: Path | None = None
    split: str | None = "testing"
    fft_impls: tuple[FFTForm, ...] = FFT_FORMS
    runtimes: tuple[str, ...] = RUNTIMES
    batch_size: int = 32
    limit: int | None = None  # evenly spaced subset of the split, for quick runs
    masks: int | None = None  # overrides the checkpoint's number of test-time masks K

    def __post_init__(self) -> None:
        object.__setattr__(self, "fft_impls", tuple(FFTForm(f) for f in self.fft_impls))
        if FFTForm.EXTERNAL in self.fft_impls:
            raise ValueError("fp16-numerics compares whole detectors: --fft-impl matmul and/or dft")
        unknown = set(self.runtimes) - set(RUNTIMES)
        if unknown:
            raise ValueError(f"unknown runtimes {sorted(unknown)}; choose from {', '.join(RUNTIMES)}")
        if self.batch_size < 1 or (self.limit is not None and self.limit < 1):
            raise ValueError("--batch-size and --limit must be >= 1")


@dataclass
class ImageSet:
    images: np.ndarray  # uint8 (N, 3, H, W)
    labels: np.ndarray  # 0 real, 1 fake
    paths: list[str]
    generators: list[str]

    def batches(self, size: int) -> Iterator[np.ndarray]:
        for start in range(0, len(self.images), size):
            yield self.images[start : start + size]


def load_images(config: NumericsConfig, metadata: DetectorMetadata) -> ImageSet:
    """The split's images through the evaluation transform (centre crop / zero-pad, no resize), as uint8 NCHW."""
    dataset = RealFakeDataset(
        config.data, split=config.split, image_size=metadata.input_size, train=False, crops=metadata.coverage.crops
    )
    indices = np.arange(len(dataset))
    if config.limit is not None and config.limit < len(indices):
        indices = np.unique(np.linspace(0, len(dataset) - 1, config.limit).round().astype(int))
    images = np.stack([dataset[int(i)][0].numpy() for i in indices])
    samples = [dataset.samples[int(i)] for i in indices]
    return ImageSet(
        images, np.array([s.label for s in samples]), [str(s.path) for s in samples], [s.generator for s in samples]
    )


def _run_torch(head: torch.nn.Module, data: ImageSet, batch_size: int, device: str) -> np.ndarray:
    logits = []
    with torch.no_grad():
        for batch in data.batches(batch_size):
            logit = head(torch.from_numpy(batch).to(device))
            logit = logit[0] if isinstance(logit, tuple) else logit
            logits.append(logit.float().reshape(-1).cpu().numpy())
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return np.concatenate(logits).astype(np.float64)


def reference_logits(config: NumericsConfig, data: ImageSet) -> np.ndarray:
    """PyTorch fp32 on the CPU with the ``torch.fft`` stage: what every FP16 runtime is compared with."""
    model = load_with_masks(config.checkpoint, FFTForm.DFT.torch_form, config.masks)
    return _run_torch(model, data, config.batch_size, "cpu")


def ort_execution(path: Path) -> dict[str, Any]:
    """How ONNX Runtime's CPU provider runs an FP16 graph: compute nodes (Conv/MatMul/Gemm) by the precision of
    their input after its graph transformations, and the Cast nodes it inserted."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        optimized = onnx.load(options.optimized_model_filepath)
    graph = onnx.shape_inference.infer_shapes(optimized).graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.value_info, *graph.input, *graph.output)}
    types.update({init.name: init.data_type for init in graph.initializer})
    compute = Counter()
    for node in graph.node:
        if node.op_type in ("Conv", "MatMul", "Gemm"):
            compute[onnx.TensorProto.DataType.Name(types.get(node.input[0], 0)).lower()] += 1
    inserted = sum(node.op_type == "Cast" and node.name.startswith("Inserted") for node in graph.node)
    return {"compute_nodes_by_input_type": dict(compute), "inserted_casts": inserted, "onnxruntime": ort.__version__}


def compare(
    name: str,
    fft: FFTForm,
    logits: np.ndarray,
    reference: np.ndarray,
    data: ImageSet,
    threshold: float,
    seconds: float,
    **extra: Any,
) -> dict[str, Any]:
    """Differences of one FP16 runtime's logits against the fp32 reference, on the probability scale too."""
    prob, prob_ref = 1.0 / (1.0 + np.exp(-logits)), 1.0 / (1.0 + np.exp(-reference))
    diff = np.abs(prob - prob_ref)
    decision, decision_ref = prob >= threshold, prob_ref >= threshold
    worst = np.argsort(-diff)[:WORST]
    return {
        "runtime": name,
        "fft_impl": fft.value,
        "images": int(len(logits)),
        "max_abs_prob_diff": float(diff.max()),
        "mean_abs_prob_diff": float(diff.mean()),
        "max_abs_logit_diff": float(np.abs(logits - reference).max()),
        "decision_agreement": float(np.mean(decision == decision_ref)),
        "decisions_changed": int(np.sum(decision != decision_ref)),
        "accuracy": float(np.mean(decision == data.labels.astype(bool))),
        "worst": [{"path": data.paths[i], "prob_fp32": float(prob_ref[i]), "prob_fp16": float(prob[i])} for i in worst],
        "seconds": round(seconds, 3),
        **extra,
    }


def _onnxruntime(config: NumericsConfig, fft: FFTForm, data: ImageSet, folder: Path) -> tuple[np.ndarray, dict]:
    import onnxruntime as ort

    path = folder / f"detector_fp16_{fft.value}.onnx"
    parity = export_onnx(
        ExportConfig(
            checkpoint=config.checkpoint,
            out=path,
            fft_impl=fft,
            precision=Precision.FP16,
            masks=config.masks,
            parity_batch_sizes=(2,),
        )
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    start = time.perf_counter()
    logits = np.concatenate(
        [session.run([LOGIT], {INPUT_NAME: batch})[0].reshape(-1) for batch in data.batches(config.batch_size)]
    ).astype(np.float64)
    extra = {
        "seconds_run": round(time.perf_counter() - start, 3),
        "export_parity": parity.to_dict(),
        "execution": {**ort_execution(path), "note": ORT_NOTE},
    }
    return logits, extra


def _pytorch_half(config: NumericsConfig, fft: FFTForm, data: ImageSet, device: str) -> tuple[np.ndarray, dict]:
    detector = load_with_masks(config.checkpoint, fft.torch_form, config.masks)
    head = to_fp16(ServingHead(detector), detector).to(device)
    extra: dict[str, Any] = {"device": device}
    if device.startswith("cuda"):
        matmul = torch.backends.cuda.matmul
        saved = matmul.allow_fp16_reduced_precision_reduction
        matmul.allow_fp16_reduced_precision_reduction = False  # FP32 accumulation throughout, as tensor cores do
        try:
            _run_torch(
                head, ImageSet(data.images[: config.batch_size], data.labels, [], []), config.batch_size, device
            )  # warm-up: cuDNN/cuBLAS algorithm selection
            start = time.perf_counter()
            logits = _run_torch(head, data, config.batch_size, device)
            extra["seconds_run"] = round(time.perf_counter() - start, 3)
        finally:
            matmul.allow_fp16_reduced_precision_reduction = saved
        extra["gpu"] = torch.cuda.get_device_name(torch.device(device))
        extra["accumulation"] = "fp32 (allow_fp16_reduced_precision_reduction=False)"
        return logits, extra
    start = time.perf_counter()
    logits = _run_torch(head, data, config.batch_size, device)
    extra["seconds_run"] = round(time.perf_counter() - start, 3)
    return logits, extra


def cuda_unavailable_reason() -> str | None:
    """None when PyTorch sees a CUDA device, else why the CUDA leg is skipped."""
    if not torch.cuda.is_available():
        return f"no CUDA device (torch {torch.__version__}: torch.cuda.is_available() is False)"
    return None


def fp16_numerics(config: NumericsConfig) -> dict[str, Any]:
    """Measure every requested FP16 runtime against PyTorch fp32; write the report to ``config.out`` if set."""
    metadata = DetectorMetadata.load(config.checkpoint)
    masks = metadata.fft_stage.masks if config.masks is None else config.masks
    threshold = float(metadata.threshold.value)
    data = load_images(config, metadata)
    logger.info("fp16 numerics on %d images of %s (split %s)", len(data.images), config.data, config.split)
    start = time.perf_counter()
    reference = reference_logits(config, data)
    reference_seconds = time.perf_counter() - start
    reference_decisions = 1.0 / (1.0 + np.exp(-reference)) >= threshold
    legs: list[tuple[str, Callable[[FFTForm, Path], tuple[np.ndarray, dict]]]] = [
        (ONNXRUNTIME_CPU, lambda fft, folder: _onnxruntime(config, fft, data, folder)),
        (PYTORCH_CPU_HALF, lambda fft, folder: _pytorch_half(config, fft, data, "cpu")),
        (PYTORCH_CUDA_HALF, lambda fft, folder: _pytorch_half(config, fft, data, "cuda")),
    ]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, run in legs:
            if name not in config.runtimes:
                continue
            for fft in config.fft_impls:
                reason = cuda_unavailable_reason() if name == PYTORCH_CUDA_HALF else None
                if reason is not None:
                    results.append({"runtime": name, "fft_impl": fft.value, "skipped": reason})
                    logger.info("%s (%s): skipped: %s", name, fft.value, reason)
                    continue
                begin = time.perf_counter()
                logits, extra = run(fft, Path(tmp))
                results.append(
                    compare(name, fft, logits, reference, data, threshold, time.perf_counter() - begin, **extra)
                )
    report = {
        "checkpoint": str(config.checkpoint),
        "data": str(config.data),
        "split": config.split,
        "images": int(len(data.images)),
        "by_generator_and_label": {
            f"{g}/{'fake' if y else 'real'}": n
            for (g, y), n in sorted(Counter(zip(data.generators, data.labels.tolist())).items())
        },
        "input_size": list(metadata.input_size),
        "backbone": metadata.backbone,
        "masks": masks,
        "threshold": {"value": threshold, "method": metadata.threshold.method},
        "reference": {
            "runtime": "pytorch-cpu-fp32",
            "fft_impl": "torch.fft",
            "accuracy": float(np.mean(reference_decisions == data.labels.astype(bool))),
            "fake_share": float(np.mean(reference_decisions)),
            "seconds": round(reference_seconds, 3),
        },
        "results": results,
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "machine": platform.machine(),
            "processor": platform.processor() or "unknown",
            "cuda": None if cuda_unavailable_reason() else torch.cuda.get_device_name(0),
        },
    }
    if config.out is not None:
        config.out.parent.mkdir(parents=True, exist_ok=True)
        config.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def format_report(report: dict[str, Any]) -> str:
    """One line per runtime and FFT form."""
    lines = [
        f"FP16 vs PyTorch fp32 on {report['images']} images ({report['data']}, split {report['split']}), "
        f"threshold {report['threshold']['value']:.4g} ({report['threshold']['method']})"
    ]
    for r in report["results"]:
        head = f"{r['runtime']:<18} {r['fft_impl']:<7}"
        if "skipped" in r:
            lines.append(f"{head} skipped: {r['skipped']}")
            continue
        lines.append(
            f"{head} max |dprob| {r['max_abs_prob_diff']:.3g}  mean {r['mean_abs_prob_diff']:.3g}  "
            f"max |dlogit| {r['max_abs_logit_diff']:.3g}  agreement {r['decision_agreement']:.4f} "
            f"({r['decisions_changed']} changed)"
        )
    return "\n".join(lines)


def add_fp16_numerics_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint directory (weights + metadata)")
    parser.add_argument("--data", required=True, type=Path, help="dataset root (e.g. the offline dataset)")
    parser.add_argument(
        "--split",
        default="testing",
        help="split folder below --data (Wang layout); 'none' reads --data itself (Ojha layout)",
    )
    parser.add_argument("--out", required=True, type=Path, help="JSON report to write")
    parser.add_argument(
        "--fft-impl",
        nargs="+",
        default=[f.value for f in FFT_FORMS],
        choices=[f.value for f in FFT_FORMS],
        help="FFT forms to measure (default: both)",
    )
    parser.add_argument(
        "--runtimes",
        nargs="+",
        default=list(RUNTIMES),
        choices=list(RUNTIMES),
        help="FP16 runtimes to measure (default: all; the CUDA one skips without a GPU)",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="images per inference call")
    parser.add_argument("--limit", type=int, default=None, help="measure an evenly spaced subset of N images")
    parser.add_argument("--masks", type=int, default=None, help="test-time masks K, overriding the checkpoint's")
    return parser


def config_from_args(args: argparse.Namespace) -> NumericsConfig:
    return NumericsConfig(
        checkpoint=args.checkpoint,
        data=args.data,
        out=args.out,
        split=None if str(args.split).lower() == "none" else args.split,
        fft_impls=tuple(FFTForm(f) for f in args.fft_impl),
        runtimes=tuple(args.runtimes),
        batch_size=args.batch_size,
        limit=args.limit,
        masks=args.masks,
    )


def run_fp16_numerics(args: argparse.Namespace) -> int:
    """CLI body: measure, print one line per runtime, write the JSON report."""
    report = fp16_numerics(config_from_args(args))
    print(format_report(report))
    print(f"wrote {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = add_fp16_numerics_args(
        argparse.ArgumentParser(prog="python -m export.fp16_numerics", description=__doc__.splitlines()[0])
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("onnx_ir", "onnxscript", "torch.onnx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return run_fp16_numerics(args)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
