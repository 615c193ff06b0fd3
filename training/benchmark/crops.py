"""Real crops of the source photographs, and the split of the photo sources between training, validation and
testing.

The split is by SOURCE (a registry package), never by photo or crop: the validation sources (calibration) and the
testing sources are packages whose photos training never saw. A crop is a square window of a photo at a random
scale, log-uniform from the whole short side down to native pixels (scale 1: sensor noise and the camera's own
JPEG traces kept), resized with Lanczos (anti-aliased); with ``native_share`` > 0 that share of the crops is a
window of native pixels, never resampled, as serving scores a native window of whatever it is sent. Each photo is
decoded once per draw and dropped after it has given its crops, so memory stays small with full-resolution photos.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from fmdetect.training.benchmark.photos import Photo
from fmdetect.training.data import Split

MIN_CROP_STD = 2.0  # grey levels; flatter crops (sky, black) carry no information and are redrawn
MAX_REDRAWS = 20


@dataclass
class Crop:
    """A real crop and where it came from: ``box`` = (top, left, side) in the photo (EXIF orientation applied)."""

    pixels: np.ndarray
    photo: str
    source: str
    scale: float
    box: tuple[int, int, int]


def load_photo(photo: Photo) -> np.ndarray:
    """A photo as HxWx3 uint8 at full resolution, EXIF orientation applied."""
    with Image.open(photo.path) as image:
        image = ImageOps.exif_transpose(image)
        return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def sample_crop(
    photo: np.ndarray, size: int, rng: np.random.Generator, native_share: float = 0.0
) -> tuple[np.ndarray, float, tuple]:
    """A ``size`` x ``size`` crop: native pixels with probability ``native_share``, else at a scale log-uniform in
    [size / short side, 1]."""
    h, w = photo.shape[:2]
    lo = min(1.0, size / min(h, w))
    native = native_share > 0 and rng.random() < native_share
    scale = float(np.exp(rng.uniform(np.log(lo), 0.0))) if lo < 1.0 and not native else 1.0
    window = min(int(round(size / scale)), h, w)
    top = int(rng.integers(0, h - window + 1))
    left = int(rng.integers(0, w - window + 1))
    region = photo[top : top + window, left : left + window]
    if window != size:
        resample = Image.Resampling.LANCZOS if window > size else Image.Resampling.BICUBIC
        region = np.asarray(Image.fromarray(region).resize((size, size), resample))
    return np.ascontiguousarray(region), size / window, (top, left, window)


def draw_crops(
    photos: Sequence[Photo], count: int, size: int, seed: Sequence[int], native_share: float = 0.0
) -> list[Crop]:
    """``count`` crops dealt round robin over ``photos`` (in an order shuffled by ``seed``); crop ``i`` depends
    only on (``seed``, ``i``) and its photo. Flat crops are redrawn. ``native_share``: see :func:`sample_crop`."""
    if not photos:
        raise ValueError("no photos to crop")
    order = [photos[i] for i in np.random.default_rng([*seed, 0]).permutation(len(photos))]
    owner = {i: order[i % len(order)] for i in range(count)}
    crops: list[Crop | None] = [None] * count
    for photo in order:
        mine = [i for i in range(count) if owner[i] is photo]
        if not mine:
            continue
        pixels = load_photo(photo)
        for i in mine:
            rng = np.random.default_rng([*seed, 1, i])
            for _ in range(MAX_REDRAWS):
                region, scale, box = sample_crop(pixels, size, rng, native_share)
                if region.std() >= MIN_CROP_STD:
                    break
            crops[i] = Crop(region, photo.name, photo.source, scale, box)
    return [c for c in crops if c is not None]


def stack(crops: Sequence[Crop]) -> np.ndarray:
    return np.stack([c.pixels for c in crops])


def assign_sources(sources: Sequence[str], fixed: dict[str, Split]) -> dict[Split, list[str]]:
    """Sources per split: each source's fixed split (the photo table's), every split non-empty.

    Raises:
        ValueError: a split would be empty.
    """
    splits: dict[Split, list[str]] = {split: [] for split in Split}
    for source in sorted(set(sources)):
        splits[fixed[source]].append(source)
    empty = [split.value for split, names in splits.items() if not names]
    if empty:
        raise ValueError(f"no photo source for split(s) {empty}; sources present: {sorted(set(sources))}")
    return splits
