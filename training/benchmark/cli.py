"""Command line of the benchmark builder: ``python -m training.benchmark --out DIR [--profile full|demo|small]``."""

from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from fmdetect.training.benchmark.build import build_dataset, read_manifest, write_summary
from fmdetect.training.benchmark.config import DEFAULT_CACHE_DIR, BuildConfig, Profile
from fmdetect.training.benchmark.families import ALL_FAMILIES, GAN_TRAINABLE, TRAIN_FAMILY


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.benchmark",
        description="Build the offline universal-detection benchmark.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", required=True, type=Path, help="dataset directory (reused if already complete)")
    parser.add_argument(
        "--profile",
        choices=[p.value for p in Profile],
        default=Profile.FULL.value,
        help="full: the benchmark; demo: what make demo shows; small: the tests",
    )
    parser.add_argument("--small", action="store_true", help="the same as --profile small")
    parser.add_argument("--seed", type=int, default=0, help="seed of crops, generators and post-processing")
    parser.add_argument("--image-size", type=int, default=None, help="final image side in pixels (multiple of 16)")
    parser.add_argument("--training-crops", type=int, default=None, help="real (and fake) images in training")
    parser.add_argument("--validation-crops", type=int, default=None, help="real (and fake) images in validation")
    parser.add_argument("--testing-crops", type=int, default=None, help="real (and fake) images per test family")
    parser.add_argument(
        "--generator-steps", type=float, default=None, help="factor on every family's generator training steps"
    )
    parser.add_argument(
        "--train-family",
        default=TRAIN_FAMILY,
        choices=GAN_TRAINABLE,
        help="the one GAN family of training and validation",
    )
    parser.add_argument(
        "--test-families",
        nargs="+",
        default=None,
        choices=ALL_FAMILIES,
        help="generator families of testing (default: the profile's)",
    )
    parser.add_argument("--jpeg-share", type=float, default=None, help="share of images saved as JPEG (else PNG)")
    parser.add_argument("--resize-share", type=float, default=None, help="share of images downscaled")
    parser.add_argument(
        "--native-share",
        type=float,
        default=None,
        help="share of real crops taken as native pixels, never resampled (default: the profile's)",
    )
    parser.add_argument(
        "--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="where fetched photos and trained generators are kept"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="processes that train generators in parallel (the result does not depend on it)",
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if OUT holds a complete build")
    parser.add_argument(
        "--summary-dir",
        type=Path,
        default=None,
        help="also write dataset_summary.json (dataset.json without its file records), "
        "spectra.png and build_info.json there (docs/benchmark for the full build)",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> BuildConfig:
    overrides: dict[str, Any] = {
        key: value
        for key in (
            "image_size",
            "training_crops",
            "validation_crops",
            "testing_crops",
            "generator_steps",
            "native_share",
        )
        if (value := getattr(args, key)) is not None
    }
    if args.test_families is not None:
        overrides["test_families"] = tuple(args.test_families)
    config = BuildConfig.preset(
        Profile.SMALL if args.small else Profile(args.profile),
        out=args.out,
        seed=args.seed,
        train_family=args.train_family,
        cache_dir=args.cache_dir,
        workers=args.workers,
        **overrides,
    )
    post = {k: v for k, v in (("jpeg_share", args.jpeg_share), ("resize_share", args.resize_share)) if v is not None}
    return replace(config, postprocess=replace(config.postprocess, **post)) if post else config


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("fmdetect.training.benchmark")
    try:
        out = build_dataset(config_from_args(args), force=args.force)
        if args.summary_dir is not None:
            write_summary(out, args.summary_dir)
    except (ValueError, RuntimeError) as exc:
        log.error("%s", exc)
        return 2
    manifest = read_manifest(out) or {}
    trivial = manifest.get("trivial_detectors") or {}
    summary = {
        "out": str(out),
        "photos": manifest.get("photo_count"),
        "source_splits": manifest.get("source_splits"),
        "counts": manifest.get("counts"),
        "trivial_detector_auc": {f: r["auc"] for f, r in trivial.get("families", {}).items()},
        "warnings": manifest.get("warnings"),
    }
    print(json.dumps(summary, indent=1))
    return 0
