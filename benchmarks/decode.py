"""Decode cost per image: the full decode then crop, against the crop-first decode, side by side in one run.

Both produce the same pixels (``tests/test_jpeg_regions.py``); this measures what the crop-first path saves on
photo-sized JPEGs. The two are timed interleaved on each image (median of ``--repeats``), so that machine noise
hits both alike, and grouped by size band.

Examples::

    python benchmarks/decode.py                                  # photos profile, 128 px window
    python benchmarks/decode.py --input-dir photos/ --size 224   # real files
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fmdetect.benchmarks.payloads import Payload, PayloadProfile, describe, from_directory, generate, summary_line  # noqa: E402
from fmdetect.core.jpeg import region_reader  # noqa: E402
from fmdetect.core.preprocess import center_crop_or_pad, decode_center_crop, decode_image  # noqa: E402

BANDS = ((0.0, 1.0), (1.0, 5.0), (5.0, 8.0), (8.0, 12.5), (12.5, float("inf")))  # megapixels


def full_then_crop(data: bytes, size: tuple[int, int]) -> np.ndarray:
    return center_crop_or_pad(decode_image(data), size)


def time_pair(payload: Payload, size: tuple[int, int], repeats: int) -> tuple[float, float]:
    """Median seconds of (full decode + crop, crop-first decode), interleaved."""
    full, first = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        full_then_crop(payload.data, size)
        full.append(time.perf_counter() - t)
        t = time.perf_counter()
        decode_center_crop(payload.data, size)
        first.append(time.perf_counter() - t)
    return float(np.median(full)), float(np.median(first))


def run(payloads: list[Payload], size: tuple[int, int], repeats: int) -> dict:
    rows = []
    for p in payloads:
        full, first = time_pair(p, size, repeats)
        rows.append(
            {
                "format": p.format,
                "megapixels": p.megapixels,
                "bytes": len(p.data),
                "full_ms": full * 1e3,
                "crop_first_ms": first * 1e3,
            }
        )
    bands = []
    for low, high in BANDS:
        inside = [r for r in rows if low <= r["megapixels"] < high]
        if not inside:
            continue
        full = float(np.median([r["full_ms"] for r in inside]))
        first = float(np.median([r["crop_first_ms"] for r in inside]))
        jpeg = sum(r["format"] in ("JPEG", "MPO") for r in inside)
        bands.append(
            {
                "megapixels": [low, high],
                "images": len(inside),
                "jpeg": jpeg,
                "full_ms": full,
                "crop_first_ms": first,
                "speedup": full / first,
            }
        )
    return {
        "window": list(size),
        "repeats": repeats,
        "payloads": describe(payloads),
        "libturbojpeg": str(region_reader().path) if region_reader() is not None else None,
        "bands": bands,
        "images": rows,
    }


def format_table(report: dict) -> str:
    lines = [
        "| megapixels | images (JPEG) | full decode + crop, ms | crop-first, ms | speed-up |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for b in report["bands"]:
        low, high = b["megapixels"]
        label = f"{low:g} to {high:g}" if np.isfinite(high) else f">= {low:g}"
        lines.append(
            f"| {label} | {b['images']} ({b['jpeg']}) | {b['full_ms']:.1f} | {b['crop_first_ms']:.1f} | "
            f"{b['speedup']:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--payload-profile", default="photos", choices=[x.value for x in PayloadProfile])
    p.add_argument("--input-dir", type=Path, default=None, help="real images instead of a generated profile")
    p.add_argument("--num-images", type=int, default=24)
    p.add_argument("--size", type=int, default=128, help="side of the centre window (the detector's input)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", type=Path, default=None, help="write the report here")
    args = p.parse_args(argv)
    if args.num_images < 1 or args.repeats < 1 or args.size < 1:
        p.error("--num-images, --repeats and --size must be >= 1")
    if region_reader() is None:
        print("error: libturbojpeg not found; run 'python -m core.jpeg install'", file=sys.stderr)
        return 2
    try:
        payloads = (
            from_directory(args.input_dir, args.num_images)
            if args.input_dir
            else generate(PayloadProfile(args.payload_profile), args.num_images)
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = run(payloads, (args.size, args.size), args.repeats)
    source = str(args.input_dir) if args.input_dir else f"profile {args.payload_profile}"
    print(f"decode of a {args.size} px centre window, {source}: {summary_line(report['payloads'])}")
    print(format_table(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
