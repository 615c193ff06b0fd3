"""Photo-sized test images composed from a benchmark build's tiles: what a multi-window coverage is measured on.

The benchmark's images are the detector's input size, so every window of a multi-crop coverage
(``core.metadata.Coverage``) would see the same pixels. A mosaic is a 3 x 3 grid of tiles of one family's split
(384 px at 128 px tiles), cut to a random window of 11/12 of that side (352 px), so that no window of any
coverage lines up with the tiles. Per family, ``per_class`` real mosaics (nine real tiles) and, for each
arrangement, as many fake ones made from the same real tiles with some replaced by fakes:

- ``whole``: all nine tiles fake (a fully generated image);
- ``surround``: the eight tiles around a real centre fake (a generated collage around a real photo: the centre
  window alone sees the real tile);
- ``one_tile``: one tile fake, at a random place other than the centre (a local edit).

Every tile went through the benchmark's post-processing chain, both classes have the same seams and are saved as
PNG, so the format tells nothing. Layout (Wang et al., evaluated with ``--split testing_<arrangement>``)::

    OUT/validation_<arrangement>/<family>/{0_real,1_fake}/*.png  the validation split (coverage is chosen and its
                                                               threshold calibrated here), each arrangement
    OUT/testing_<arrangement>/<family>/{0_real,1_fake}/*.png     every testing family, each arrangement
    OUT/mosaics.json                                          configuration and counts (complete build marker)

Example::

    python -m training.benchmark.mosaics --data artifacts/data/benchmark --out artifacts/data/mosaics
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fmdetect.core.preprocess import IMAGE_SUFFIXES, center_crop_or_pad, decode_image
from fmdetect.training.data import FAKE_DIR, REAL_DIR

logger = logging.getLogger(__name__)

ARRANGEMENTS = ("whole", "surround", "one_tile")
MANIFEST = "mosaics.json"
GRID = 3
CENTRE = GRID * GRID // 2


@dataclass(frozen=True)
class MosaicConfig:
    data: Path
    out: Path
    per_class: int = 50
    validation_per_class: int = 100
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


def fake_positions(arrangement: str, rng: np.random.Generator) -> list[int]:
    """The grid cells (row-major, 0..8) that hold fake tiles in a fake mosaic of ``arrangement``."""
    if arrangement == "whole":
        return list(range(GRID * GRID))
    if arrangement == "surround":
        return [i for i in range(GRID * GRID) if i != CENTRE]
    if arrangement == "one_tile":
        return [int(rng.choice([i for i in range(GRID * GRID) if i != CENTRE]))]
    raise ValueError(f"unknown arrangement {arrangement!r}; known: {', '.join(ARRANGEMENTS)}")


def compose(tiles: list[np.ndarray], offset: tuple[int, int]) -> np.ndarray:
    """Nine equal HxWx3 tiles as a 3 x 3 grid, cut to a window of 11/12 of its side at ``offset`` (top, left)."""
    tile_h, tile_w = tiles[0].shape[:2]
    rows = [np.concatenate(tiles[r * GRID : (r + 1) * GRID], axis=1) for r in range(GRID)]
    canvas = np.concatenate(rows, axis=0)
    height, width = GRID * tile_h * 11 // 12, GRID * tile_w * 11 // 12
    top, left = offset
    return canvas[top : top + height, left : left + width]


def _tiles(folder: Path) -> list[np.ndarray]:
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    tiles = [decode_image(p.read_bytes()) for p in paths]
    size = tiles[0].shape[:2]
    return [t if t.shape[:2] == size else center_crop_or_pad(t, size) for t in tiles]


def _save(image: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="PNG", compress_level=1)


def build_family(real_dir: Path, fake_dir: Path, outs: dict[str, Path], count: int, seed: list[int]) -> None:
    """``count`` real mosaics and, per arrangement of ``outs``, ``count`` fake ones into ``outs[arrangement]``."""
    reals, fakes = _tiles(real_dir), _tiles(fake_dir)
    if len(reals) < GRID * GRID or len(fakes) < GRID * GRID:
        raise ValueError(f"{real_dir.parent} has {len(reals)} real and {len(fakes)} fake tiles: a mosaic needs 9")
    tile_h, tile_w = reals[0].shape[:2]
    slack = (GRID * tile_h - GRID * tile_h * 11 // 12, GRID * tile_w - GRID * tile_w * 11 // 12)
    for i in range(count):
        rng = np.random.default_rng([*seed, i])
        chosen = [reals[j] for j in rng.choice(len(reals), GRID * GRID, replace=False)]
        offset = (int(rng.integers(0, slack[0] + 1)), int(rng.integers(0, slack[1] + 1)))
        real = compose(chosen, offset)
        for index, (arrangement, out) in enumerate(outs.items()):
            arrangement_rng = np.random.default_rng([*seed, i, index])
            tiles = list(chosen)
            picks = arrangement_rng.choice(len(fakes), GRID * GRID, replace=False)
            for cell, pick in zip(fake_positions(arrangement, arrangement_rng), picks):
                tiles[cell] = fakes[pick]
            _save(real, out / REAL_DIR / f"{i:04d}.png")
            _save(compose(tiles, offset), out / FAKE_DIR / f"{i:04d}.png")


def build_mosaics(config: MosaicConfig) -> Path:
    """Write the mosaics of ``config.data`` (a benchmark build) into ``config.out``; a complete build of the same
    configuration is reused."""
    manifest_path = config.out / MANIFEST
    if manifest_path.is_file() and json.loads(manifest_path.read_text()).get("config") == config.to_dict():
        logger.info("reusing the mosaics in %s", config.out)
        return config.out
    if config.out.exists():
        shutil.rmtree(config.out)
    counts: dict[str, dict[str, int]] = {}
    families = sorted(p.name for p in (config.data / "testing").iterdir() if p.is_dir())
    if not families:
        raise FileNotFoundError(f"no testing families under {config.data}/testing: not a benchmark build")
    for index, family in enumerate(families):
        source = config.data / "testing" / family
        outs = {a: config.out / f"testing_{a}" / family for a in ARRANGEMENTS}
        build_family(source / REAL_DIR, source / FAKE_DIR, outs, config.per_class, [config.seed, 1, index])
        counts[family] = {a: config.per_class for a in ARRANGEMENTS}
        logger.info("mosaics of %s: %d per class and arrangement", family, config.per_class)
    for index, source in enumerate(sorted(p for p in (config.data / "validation").iterdir() if p.is_dir())):
        outs = {a: config.out / f"validation_{a}" / source.name for a in ARRANGEMENTS}
        build_family(source / REAL_DIR, source / FAKE_DIR, outs, config.validation_per_class, [config.seed, 2, index])
    manifest = {"config": config.to_dict(), "arrangements": list(ARRANGEMENTS), "grid": GRID, "counts": counts}
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return config.out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.benchmark.mosaics",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--data", required=True, type=Path, help="a benchmark build (python -m training.benchmark)")
    parser.add_argument("--out", required=True, type=Path, help="where the mosaics go (replaced unless complete)")
    parser.add_argument(
        "--per-class",
        type=int,
        default=MosaicConfig.per_class,
        help="mosaics per class, family and arrangement of testing",
    )
    parser.add_argument(
        "--validation-per-class",
        type=int,
        default=MosaicConfig.validation_per_class,
        help="mosaics per class and arrangement of validation",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of tiles, offsets and positions")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        out = build_mosaics(MosaicConfig(args.data, args.out, args.per_class, args.validation_per_class, args.seed))
    except (FileNotFoundError, ValueError) as exc:
        logger.error("%s", exc)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
