"""Calibrate a checkpoint's decision threshold on held-out real images, optionally with K test-time FFT masks.

Writes a new checkpoint: the same weights, ``fft_stage.masks = K`` (the masks regenerated from the metadata, so
every runtime sees the same ones) and the threshold at the target false-positive rate on the real images of the
given split, measured with those K masks. This is how the default detector's test-time masking is chosen and
shipped (see ``detectors/README.md``).

Example::

    python -m training.calibrate --checkpoint runs/default/checkpoint --data artifacts/data/benchmark \\
        --split validation --masks 2 --out detectors/default
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Subset

from fmdetect.core.metadata import Coverage, Threshold
from fmdetect.training.calibration import false_positive_rate, threshold_at_fpr
from fmdetect.training.checkpoint import load_detector, save_checkpoint, with_coverage, with_masks
from fmdetect.training.data import RealFakeDataset, resolve_split
from fmdetect.training.distributed import resolve_device
from fmdetect.training.evaluate import parse_coverage
from fmdetect.training.model import Detector
from fmdetect.training.steps import predict

logger = logging.getLogger(__name__)

METHOD = "fpr_on_validation_real"


def calibrate(
    model: Detector, real_dir: Path, target_fpr: float, batch_size: int, device: torch.device, method: str = METHOD
) -> tuple[Threshold, dict[str, Any]]:
    """Threshold at ``target_fpr`` on the real images under ``real_dir``; returns it and a short report."""
    dataset = RealFakeDataset(
        real_dir, image_size=model.metadata.input_size, train=False, crops=model.metadata.coverage.crops
    )
    reals = [i for i, s in enumerate(dataset.samples) if s.label == 0]
    if not reals:
        raise FileNotFoundError(f"no real images (0_real folders) under {real_dir}")
    probs = predict(model.to(device), Subset(dataset, reals), batch_size, device, desc="calibrate").probs
    value = threshold_at_fpr(probs, target_fpr)
    report = {"calibrated_on": str(real_dir), "n_real": len(reals), "fpr": false_positive_rate(probs, value)}
    logger.info(
        "threshold %.6g at target FPR %.3f on %d real images (achieved %.4f)",
        value,
        target_fpr,
        len(reals),
        report["fpr"],
    )
    return Threshold(value=value, method=method, target_fpr=target_fpr), report


def recalibrate(
    checkpoint: Path,
    data: Path,
    split: str,
    masks: int,
    out: Path,
    target_fpr: float | None = None,
    batch_size: int = 64,
    device: str = "auto",
    coverage: Coverage | None = None,
) -> Path:
    """The checkpoint with ``masks`` test-time masks (and ``coverage``, when given) and a threshold calibrated for
    them, written to ``out``."""
    model = load_detector(checkpoint)
    target = target_fpr if target_fpr is not None else (model.metadata.threshold.target_fpr or 0.05)
    variant = with_masks(model, masks) if masks != model.metadata.fft_stage.masks else model
    if coverage is not None and coverage != variant.metadata.coverage:
        variant = with_coverage(variant, coverage)
    threshold, report = calibrate(variant, resolve_split(data, split), target, batch_size, resolve_device(device))
    metrics = dict(variant.metadata.metrics or {})
    metrics["calibration"] = {
        **report,
        "test_time_masks": masks,
        "crops": variant.metadata.coverage.crops,
        "crops_top_k": variant.metadata.coverage.top_k,
    }
    metadata = variant.metadata.with_updates(
        threshold=threshold, metrics=metrics, fft_stage=replace(variant.metadata.fft_stage, masks=masks)
    )
    # Written next to the target first, so a failure never leaves a half-written checkpoint at ``out``.
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        save_checkpoint(variant.cpu(), Path(tmp) / "ckpt", metadata)
        for name in ("model.safetensors", "metadata.json"):
            out.mkdir(exist_ok=True)
            shutil.move(str(Path(tmp) / "ckpt" / name), out / name)
            (out / name).chmod(0o644)
    return out


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.calibrate",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint directory")
    parser.add_argument("--data", required=True, type=Path, help="dataset root (Wang layout)")
    parser.add_argument("--split", default="validation", help="split whose 0_real images calibrate")
    parser.add_argument("--masks", type=int, default=0, help="test-time FFT masks K (0: the stage is skipped)")
    parser.add_argument(
        "--crops",
        type=parse_coverage,
        default=None,
        metavar="C[:TOP_K]",
        help="windows per image and the top-k rule (1: the centre; 9: a 3 x 3 grid, max; 9:3: mean "
        "of the top 3); default: the checkpoint's own",
    )
    parser.add_argument("--target-fpr", type=float, default=None, help="default: the checkpoint's own target")
    parser.add_argument("--out", required=True, type=Path, help="checkpoint directory to write")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size")
    parser.add_argument("--device", default="auto", help="torch device: auto, cpu, cuda, ...")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.masks < 0:
        logger.error("--masks takes a count >= 0, got %d", args.masks)
        return 2
    try:
        out = recalibrate(
            args.checkpoint,
            args.data,
            args.split,
            args.masks,
            args.out,
            args.target_fpr,
            args.batch_size,
            args.device,
            args.crops,
        )
    except (FileNotFoundError, ValueError) as exc:
        logger.error("%s", exc)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
