"""False positives on real photo files as they are uploaded: native windows, decoded as serving decodes them.

The benchmark's reals are crops resampled to the input size; serving scores native windows of whatever it is
sent (no resize, the paper's test protocol). This scores each photo FILE through ``core.preprocess`` (the pixels
of ``decode_windows``: the centre window, which the served detector scores, and the 3 x 3 grid of native windows
of ``crop_boxes``), and the same windows after a 0.5 Lanczos downscale of the whole photo, as a control: a
detector that reads resampling as "real" flags the native windows far more often than the downscaled ones.

Photos: the photo table's sources of ``--splits`` (fetched and checked as the benchmark does; validation and
testing by default, which training never saw), or ``--photos DIR`` (one folder per source, any image files: your
own real photos). A file serving would refuse (a format it does not decode) is counted as refused, not scored.
Outputs ``uploads.json`` and ``uploads.md`` in ``--out``.

Example::

    python -m training.uploads --checkpoint detectors/default --out detectors/default/uploads
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fmdetect.core.metadata import Coverage
from fmdetect.core.preprocess import ImageDecodeError, crop_windows, decode_image
from fmdetect.core.scoring import decide
from fmdetect.training import metrics as M
from fmdetect.training.benchmark.config import DEFAULT_CACHE_DIR
from fmdetect.training.benchmark.photos import fetch_source, photo_sources
from fmdetect.training.checkpoint import load_detector, with_coverage
from fmdetect.training.distributed import resolve_device
from fmdetect.training.probes import score

logger = logging.getLogger(__name__)

UPLOADS_JSON = "uploads.json"
UPLOADS_MD = "uploads.md"
GRID = 9  # the 3 x 3 windows of core.preprocess.crop_boxes
CONTROL_SCALE = 0.5


@dataclass
class SourceRow:
    """One source's photos: how many, how many serving refuses, and the share of windows called fake."""

    source: str
    split: str
    photos: int
    refused: int
    centre_flagged: float | None  # the served window
    windows_flagged: float | None  # all native windows of the grid
    downscaled_flagged: float | None  # the grid after a 0.5 Lanczos downscale of the photo
    refusals: list[str]


def downscaled(rgb: np.ndarray, factor: float, minimum: tuple[int, int]) -> np.ndarray:
    """``rgb`` Lanczos-resized by ``factor``, never below ``minimum`` = (height, width)."""
    height, width = rgb.shape[:2]
    size = (max(minimum[1], round(width * factor)), max(minimum[0], round(height * factor)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS))


def photo_windows(data: bytes, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(centre window (H, W, 3), native grid (GRID, H, W, 3), grid after the control downscale), uint8.

    Raises:
        ImageDecodeError: serving would refuse these bytes.
    """
    rgb = decode_image(data)  # decoded once: crop_windows of it are decode_windows' pixels (tested)
    return (
        crop_windows(rgb, size, 1)[0],
        crop_windows(rgb, size, GRID),
        crop_windows(downscaled(rgb, CONTROL_SCALE, size), size, GRID),
    )


def score_source(
    name: str, split: str, files: Sequence[Path], model: torch.nn.Module, device: torch.device
) -> SourceRow:
    """Every file of one source, scored on its centre window, its native grid and the downscaled grid."""
    size = tuple(model.metadata.input_size)
    threshold = float(model.metadata.threshold.value)
    centres, grids, controls, refusals = [], [], [], []
    for path in files:
        try:
            centre, native, control = photo_windows(Path(path).read_bytes(), size)
        except ImageDecodeError as exc:
            refusals.append(f"{Path(path).name}: {exc}")
            continue
        centres.append(centre)
        grids.extend(native)
        controls.extend(control)

    def flagged(windows: list[np.ndarray]) -> float | None:
        return float(decide(score(model, np.stack(windows), device), threshold).mean()) if windows else None

    return SourceRow(
        source=name,
        split=split,
        photos=len(files),
        refused=len(refusals),
        centre_flagged=flagged(centres),
        windows_flagged=flagged(grids),
        downscaled_flagged=flagged(controls),
        refusals=refusals,
    )


def table_sources(splits: Sequence[str], cache_dir: Path) -> list[tuple[str, str, list[Path]]]:
    """(source, split, files) of the photo table's sources in ``splits``, fetched into the cache."""
    return [
        (name, source.split.value, [photo.path for photo in fetch_source(source, cache_dir)])
        for name, source in photo_sources().items()
        if source.split.value in splits
    ]


def folder_sources(root: Path) -> list[tuple[str, str, list[Path]]]:
    """(source, "photos", files): one source per sub-folder of ``root`` (its files, hidden ones left out), and
    the files directly in ``root`` as a source named after it."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory")

    def files(folder: Path) -> list[Path]:
        return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))

    found = [(root.name, "photos", files(root))] + [
        (d.name, "photos", files(d)) for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")
    ]
    found = [entry for entry in found if entry[2]]
    if not found:
        raise ValueError(f"no photo files in {root} or its sub-folders")
    return found


def run_uploads(checkpoint: Path, sources: Sequence[tuple[str, str, list[Path]]], device: str = "auto") -> dict:
    """Every source scored; returns ``uploads.json``'s content (one row per source, and totals per split)."""
    target = resolve_device(device)
    model = with_coverage(load_detector(checkpoint), Coverage()).to(target)
    rows = []
    for name, split, files in sources:
        logger.info("scoring %d photos of %s (%s)", len(files), name, split)
        rows.append(score_source(name, split, files, model, target))
    totals = []
    for split in dict.fromkeys(r.split for r in rows):
        mine = [r for r in rows if r.split == split]
        scored = [r for r in mine if r.photos > r.refused]
        weight = {r.source: r.photos - r.refused for r in scored}

        def mean(key: str) -> float | None:
            n = sum(weight.values())
            return sum(getattr(r, key) * weight[r.source] for r in scored) / n if n else None

        totals.append(
            {
                "split": split,
                "sources": len(mine),
                "photos": sum(r.photos for r in mine),
                "refused": sum(r.refused for r in mine),
                "centre_flagged": mean("centre_flagged"),
                "windows_flagged": mean("windows_flagged"),
                "downscaled_flagged": mean("downscaled_flagged"),
            }
        )
    return M.json_safe(
        {
            "checkpoint": str(checkpoint),
            "threshold": float(model.metadata.threshold.value),
            "input_size": list(model.metadata.input_size),
            "grid_windows": GRID,
            "control_scale": CONTROL_SCALE,
            "sources": [asdict(r) for r in rows],
            "totals": totals,
        }
    )


def markdown(report: dict) -> str:
    """``uploads.md``: the per-source table, then the totals per split, in percent of windows."""

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.1f}"

    header = (
        "| {what} | split | photos | refused | centre flagged (%) | native windows flagged (%) | "
        "after 0.5 downscale (%) |\n| --- | --- | ---: | ---: | ---: | ---: | ---: |"
    )
    lines = [
        f"Photo files as uploaded, scored by `{report['checkpoint']}` at its threshold {report['threshold']:.4f}: "
        f"the served centre window, the {report['grid_windows']} native windows of the grid, and the same grid "
        f"after a {report['control_scale']:g} Lanczos downscale of the photo.",
        "",
        header.format(what="source"),
    ]
    for r in report["sources"]:
        lines.append(
            f"| {r['source']} | {r['split']} | {r['photos']} | {r['refused']} | {pct(r['centre_flagged'])} | "
            f"{pct(r['windows_flagged'])} | {pct(r['downscaled_flagged'])} |"
        )
    lines += ["", header.format(what="all sources")]
    for t in report["totals"]:
        lines.append(
            f"| {t['sources']} sources | {t['split']} | {t['photos']} | {t['refused']} | {pct(t['centre_flagged'])} | "
            f"{pct(t['windows_flagged'])} | {pct(t['downscaled_flagged'])} |"
        )
    refusals = [f"- {r['source']}: {why}" for r in report["sources"] for why in r["refusals"]]
    if refusals:
        lines += ["", "Refused (serving answers these with an error):", *refusals]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------------- CLI


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.uploads",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint directory")
    parser.add_argument("--out", required=True, type=Path, help="output directory for uploads.json and uploads.md")
    parser.add_argument(
        "--splits", default="validation,testing", help="the photo table's splits whose sources are scored"
    )
    parser.add_argument(
        "--photos", type=Path, default=None, help="score this folder instead (one sub-folder per source)"
    )
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="where fetched photos are kept")
    parser.add_argument("--device", default="auto", help="torch device: auto, cpu, cuda, cuda:1, ...")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.photos is not None:
            sources = folder_sources(args.photos)
        else:
            sources = table_sources([s.strip() for s in args.splits.split(",") if s.strip()], args.cache_dir)
        report = run_uploads(args.checkpoint, sources, device=args.device)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        logger.error("%s", exc)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / UPLOADS_JSON).write_text(json.dumps(report, indent=2) + "\n")
    (args.out / UPLOADS_MD).write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
