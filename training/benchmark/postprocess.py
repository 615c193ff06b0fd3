"""The post-processing chain every image of the benchmark goes through, real and fake alike, as on real traffic:
an optional downscale (random filter), a random crop to the final size, then JPEG at a random quality or PNG.

Chains are drawn once per split; the reals of a split take them in order and each family's fakes take a
permutation of the same list, so both classes hold exactly the same mix of sizes, filters, formats and
qualities: the file format and its settings tell nothing about the label.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

PNG_COMPRESS_LEVEL = 6
RESIZE_FILTERS = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
}
SUFFIXES = {"jpeg": ".jpg", "png": ".png"}


@dataclass(frozen=True)
class PostprocessSpec:
    """The distribution chains are drawn from: shares of images resized and JPEG-compressed, JPEG qualities."""

    resize_share: float = 0.5
    jpeg_share: float = 0.6
    jpeg_quality: tuple[int, int] = (50, 100)

    def __post_init__(self) -> None:
        if not (0.0 <= self.resize_share <= 1.0 and 0.0 <= self.jpeg_share <= 1.0):
            raise ValueError("resize_share and jpeg_share must be in [0, 1]")
        low, high = self.jpeg_quality
        if not 1 <= low <= high <= 100:
            raise ValueError(f"jpeg_quality must be 1 <= low <= high <= 100, got {self.jpeg_quality}")


@dataclass(frozen=True)
class Chain:
    """One image's post-processing: downscale to ``resized`` px with ``resize_filter`` (None: no resize), crop at
    (``top``, ``left``) as fractions of the free room, then ``format`` (``quality`` and ``subsampling`` for JPEG)."""

    resized: int | None
    resize_filter: str | None
    top: float
    left: float
    format: str
    quality: int | None
    subsampling: str | None

    @property
    def suffix(self) -> str:
        return SUFFIXES[self.format]

    def record(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def draw_chains(
    count: int, source_size: int, size: int, spec: PostprocessSpec, rng: np.random.Generator
) -> list[Chain]:
    """``count`` chains for ``source_size`` px images that end at ``size`` px. Exact shares: ``round(share *
    count)`` images are resized and as many are JPEG, the two chosen independently."""
    resized = set(rng.permutation(count)[: round(spec.resize_share * count)].tolist()) if source_size > size else set()
    jpeg = set(rng.permutation(count)[: round(spec.jpeg_share * count)].tolist())
    filters = sorted(RESIZE_FILTERS)
    chains = []
    for i in range(count):
        target = int(rng.integers(size, source_size)) if i in resized else None
        chains.append(
            Chain(
                resized=target,
                resize_filter=filters[int(rng.integers(len(filters)))] if target is not None else None,
                top=float(rng.random()),
                left=float(rng.random()),
                format="jpeg" if i in jpeg else "png",
                quality=int(rng.integers(spec.jpeg_quality[0], spec.jpeg_quality[1] + 1)) if i in jpeg else None,
                subsampling=("4:2:0", "4:4:4")[int(rng.integers(2))] if i in jpeg else None,
            )
        )
    return chains


def apply_chain(pixels: np.ndarray, chain: Chain, size: int) -> bytes:
    """The encoded file of an HxWx3 uint8 image after ``chain``."""
    image = Image.fromarray(pixels)
    if chain.resized is not None:
        image = image.resize((chain.resized, chain.resized), RESIZE_FILTERS[chain.resize_filter])
    free_h, free_w = image.height - size, image.width - size
    if free_h < 0 or free_w < 0:
        raise ValueError(f"a {image.width}x{image.height} image cannot be cropped to {size}")
    top, left = round(chain.top * free_h), round(chain.left * free_w)
    image = image.crop((left, top, left + size, top + size))
    buffer = io.BytesIO()
    if chain.format == "jpeg":
        image.save(buffer, format="JPEG", quality=chain.quality, subsampling=chain.subsampling)
    else:
        image.save(buffer, format="PNG", optimize=False, compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def decode(data: bytes) -> np.ndarray:
    """An encoded image as HxWx3 uint8."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))
