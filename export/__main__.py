"""Export command line: one verb per step.

Examples::

    python -m export onnx --checkpoint CKPT --out model.onnx --fft-impl matmul --report parity.json
    python -m export repo --checkpoint CKPT --target cpu --out artifacts/repository
    python -m export trt-ops --onnx model.onnx --tensorrt-version 10.8
    python -m export engine --onnx model_fp16.onnx --out model.plan --timing-cache trt.cache   # needs TensorRT
    python -m export repo --checkpoint CKPT --target gpu-trt --engine model.plan --out repository-gpu
    python -m export onnx --checkpoint CKPT --out backbone.onnx --fft-impl external --precision fp16
    python -m export repo --checkpoint CKPT --target gpu-cupy --engine backbone.plan --out repository-cupy
    python -m export fp16-numerics --checkpoint CKPT --data data/offline --split testing --out fp16.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from fmdetect.core.fft import FFTForm
from fmdetect.export.fp16_numerics import add_fp16_numerics_args, run_fp16_numerics
from fmdetect.export.onnx_export import ExportConfig, Precision, export_onnx, read_onnx_metadata
from fmdetect.export.tensorrt_engine import add_engine_args, build_engine, engine_config_from_args
from fmdetect.export.trt_ops import add_trt_ops_args, run_trt_ops
from fmdetect.triton_repo.layout import Decode, Target, check_decode, check_fft_impl, write_repository

logger = logging.getLogger("export")


def _choices(enum: type) -> list[str]:
    return [member.value for member in enum]


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True)

    def onnx_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--checkpoint", required=True, type=Path, help="checkpoint directory (weights + metadata)")
        p.add_argument(
            "--fft-impl",
            default=FFTForm.MATMUL.value,
            choices=_choices(FFTForm),
            help="FFT stage as MatMul with DFT matrices (any TensorRT, FP16-safe), the ONNX DFT op, or "
            "external (no FFT stage: input MASKED (B, K, 3, H, W), for --target gpu-cupy)",
        )
        p.add_argument(
            "--precision",
            default=Precision.FP32.value,
            choices=_choices(Precision),
            help="graph precision (fp16: a strongly typed FP16 graph; I/O stays uint8/fp32/bool)",
        )
        p.add_argument("--masks", type=int, default=None, help="test-time masks K, overriding the checkpoint's")
        p.add_argument("--report", type=Path, default=None, help="write the parity report as JSON here")

    p_onnx = verbs.add_parser("onnx", help="checkpoint -> ONNX with parity check against PyTorch")
    onnx_options(p_onnx)
    p_onnx.add_argument("--out", required=True, type=Path, help="ONNX file to write")

    p_repo = verbs.add_parser("repo", help="write a complete Triton model repository for a target")
    onnx_options(p_repo)
    p_repo.add_argument("--target", default=Target.CPU.value, choices=_choices(Target))
    p_repo.add_argument(
        "--decode",
        default=Decode.PYTHON.value,
        choices=_choices(Decode),
        help="where images are decoded: python (CPU, every target) or dali (validate on the CPU, then nvJPEG in "
        "Triton's DALI backend; GPU targets, centre window only)",
    )
    p_repo.add_argument("--out", required=True, type=Path, help="repository directory (replaced)")
    p_repo.add_argument(
        "--engine",
        type=Path,
        default=None,
        help="TensorRT engine for --target gpu-trt or gpu-cupy (built with 'python -m export engine')",
    )

    p_engine = verbs.add_parser("engine", help="ONNX -> TensorRT engine + model.engine.json (needs TensorRT and a GPU)")
    add_engine_args(p_engine)

    p_num = verbs.add_parser(
        "fp16-numerics", help="FP16 vs FP32 prob_fake and decisions on a dataset split (JSON report)"
    )
    add_fp16_numerics_args(p_num)

    p_ops = verbs.add_parser("trt-ops", help="check the graph's operators against TensorRT's list for a version")
    add_trt_ops_args(p_ops)
    return parser


def _export(args: argparse.Namespace, out: Path) -> dict:
    config = ExportConfig(
        checkpoint=args.checkpoint,
        out=out,
        fft_impl=FFTForm(args.fft_impl),
        precision=Precision(args.precision),
        masks=args.masks,
    )
    report = export_onnx(config).to_dict()
    print(
        f"parity vs PyTorch fp32 ({report['precision']}, fft {report['fft_impl']}): max |logit diff| "
        f"{report['max_abs_logit_diff']:.3g} at batch sizes {report['batch_sizes']} "
        f"(tolerance {report['tolerance']:g})"
    )
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("onnx_ir", "onnxscript", "torch.onnx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        if args.verb == "onnx":
            _export(args, args.out)
            print(f"wrote {args.out}")
            return 0
        if args.verb == "trt-ops":
            return int(run_trt_ops(args))
        if args.verb == "fp16-numerics":
            return run_fp16_numerics(args)
        if args.verb == "engine":
            result = build_engine(engine_config_from_args(args))
            print(f"wrote {result.plan} and {result.metadata_path}")
            return 0
        from fmdetect.core.metadata import DetectorMetadata

        target, decode = Target(args.target), Decode(args.decode)
        metadata = DetectorMetadata.load(args.checkpoint)
        check_decode(target, decode, metadata)  # before any export work
        if target.needs_engine:
            if args.engine is None:
                print(
                    f"error: --target {target.value} needs --engine (build one with 'python -m export engine')",
                    file=sys.stderr,
                )
                return 2
            if args.masks is not None:  # the K the engine was exported with
                metadata = metadata.with_updates(fft_stage=replace(metadata.fft_stage, masks=args.masks))
            write_repository(target, args.out, metadata, args.engine, decode)
        else:
            check_fft_impl(target, args.fft_impl)  # e.g. gpu-ort + dft: ORT's CUDA EP has no DFT kernel
            with tempfile.TemporaryDirectory() as tmp:
                artifact = Path(tmp) / "model.onnx"
                _export(args, artifact)
                # The repository carries the metadata as exported (e.g. with --masks applied).
                write_repository(target, args.out, read_onnx_metadata(artifact), artifact, decode)
        print(f"wrote {target.value} repository {args.out}{' (GPU decoding: DALI)' if decode is Decode.DALI else ''}")
        return 0
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
