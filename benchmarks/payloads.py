"""What the benchmarks send: generated images under a documented payload profile, or real files from a folder.

Profiles (deterministic for a seed; sizes are drawn per image):

| profile | sizes | formats | EXIF orientation |
| --- | --- | --- | --- |
| ``square`` | ``--image-size`` x ``--image-size`` | JPEG quality 90 or PNG (``--payload``) | none |
| ``thumbnails`` | long side 256 to 1024 px | JPEG 70 %, PNG 15 %, WebP 15 % | none |
| ``photos`` | a quarter 0.3 to 1 MP, half 2 to 5 MP, a quarter 8 to 12 MP | JPEG 90 %, WebP 5 %, PNG 5 % (the smallest band only) | 70 % upright, 30 % rotated (6, 8, 3) |
| ``mixed`` | half ``thumbnails``, half ``photos`` | as theirs | as theirs |

Aspect ratios 4:3, 3:2, 16:9 and 1:1, landscape or portrait. JPEG quality is uniform in 75 to 95 with 4:2:0
chroma, as phones and cameras write. Pixels are photo-like: a 1/f spectrum (natural images fall off so) with
correlated colour, smooth shading, edges, and sensor noise, so that they compress like photos, not like flat
synthetic patterns; a rotated photo is stored sideways with its orientation tag, as a phone held upright stores it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np
from PIL import Image

from fmdetect.core.preprocess import IMAGE_SUFFIXES


class PayloadProfile(str, Enum):
    SQUARE = "square"
    THUMBNAILS = "thumbnails"
    PHOTOS = "photos"
    MIXED = "mixed"


@dataclass(frozen=True)
class Payload:
    """One encoded image and what it is: format, stored size, EXIF orientation (1 = upright)."""

    data: bytes
    format: str
    width: int
    height: int
    orientation: int = 1

    @property
    def megapixels(self) -> float:
        return self.width * self.height / 1e6


PHOTO_BANDS = ((0.25, (0.3, 1.0)), (0.50, (2.0, 5.0)), (0.25, (8.0, 12.0)))  # (share, megapixel range)
ASPECTS = (4 / 3, 3 / 2, 16 / 9, 1.0)
ROTATED = ((0.70, 1), (0.15, 6), (0.10, 8), (0.05, 3))  # (share, EXIF orientation)
JPEG_QUALITY = (75, 95)


def photo_like(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """HxWx3 uint8 with a photo's statistics: a 1/f spectrum drawn at a quarter of the size, upsampled, plus
    sensor noise at full size."""
    w, h = max(32, width // 4), max(32, height // 4)
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    amplitude = 1.0 / np.maximum(np.hypot(fx, fy), 1.0 / max(w, h))
    mixing = rng.normal(0, 1, (3, 3)) * 0.25 + np.eye(3)  # correlated colour channels
    planes = []
    for _ in range(3):
        phase = rng.uniform(0, 2 * np.pi, amplitude.shape)
        planes.append(np.fft.irfft2(amplitude * np.exp(1j * phase), s=(h, w)))
    field = np.einsum("ij,jhw->hwi", mixing, np.stack(planes))
    field = (field - field.mean()) / (field.std() + 1e-9)
    shading = np.linspace(rng.uniform(-0.6, 0.6), rng.uniform(-0.6, 0.6), h)[:, None, None]
    small = np.clip(128 + 42 * (field + shading), 0, 255).astype(np.uint8)
    big = np.asarray(Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)
    big += rng.standard_normal(big.shape, dtype=np.float32) * np.float32(rng.uniform(1.5, 4.0))
    return np.clip(big, 0, 255).astype(np.uint8)


def encode(pixels: np.ndarray, fmt: str, rng: np.random.Generator, orientation: int = 1) -> bytes:
    buf = io.BytesIO()
    image = Image.fromarray(pixels)
    if fmt == "JPEG":
        exif = Image.Exif()
        if orientation != 1:
            exif[0x0112] = orientation
        image.save(
            buf,
            "JPEG",
            quality=int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1)),
            subsampling=2,
            exif=exif.tobytes(),
        )
    elif fmt == "WEBP":
        image.save(buf, "WEBP", quality=int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1)))
    else:
        image.save(buf, fmt, compress_level=6) if fmt == "PNG" else image.save(buf, fmt)
    return buf.getvalue()


def _choice(rng: np.random.Generator, table: tuple) -> object:
    shares = np.array([share for share, _ in table])
    return table[int(rng.choice(len(table), p=shares / shares.sum()))][1]


def _shape(megapixels: float, rng: np.random.Generator) -> tuple[int, int]:
    aspect = float(rng.choice(ASPECTS))
    long_side = int(round(np.sqrt(megapixels * 1e6 * aspect)))
    short_side = int(round(long_side / aspect))
    return (long_side, short_side) if rng.random() < 0.75 else (short_side, long_side)


def _thumbnail(rng: np.random.Generator) -> Payload:
    long_side = int(rng.integers(256, 1025))
    aspect = float(rng.choice(ASPECTS))
    width, height = long_side, max(1, int(round(long_side / aspect)))
    if rng.random() < 0.5:
        width, height = height, width
    fmt = str(_choice(rng, ((0.70, "JPEG"), (0.15, "PNG"), (0.15, "WEBP"))))
    return Payload(encode(photo_like(width, height, rng), fmt, rng), fmt, width, height)


def _photo(rng: np.random.Generator) -> Payload:
    low, high = _choice(rng, PHOTO_BANDS)
    width, height = _shape(float(rng.uniform(low, high)), rng)
    fmt = str(_choice(rng, ((0.90, "JPEG"), (0.05, "WEBP"), (0.05, "PNG"))))
    if fmt == "PNG" and high > PHOTO_BANDS[0][1][1]:
        fmt = "JPEG"  # lossless photos of many megapixels are rare in traffic (and 30 MB each)
    orientation = int(_choice(rng, ROTATED)) if fmt == "JPEG" else 1
    pixels = photo_like(width, height, rng)
    return Payload(encode(pixels, fmt, rng, orientation), fmt, width, height, orientation)


def square(n: int, size: int, fmt: str, seed: int = 0) -> list[Payload]:
    """``n`` photo-like ``size`` x ``size`` images, JPEG at quality 90 or PNG."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        image = Image.fromarray(photo_like(size, size, rng))
        image.save(buf, "JPEG", quality=90) if fmt == "jpeg" else image.save(buf, "PNG")
        out.append(Payload(buf.getvalue(), fmt.upper(), size, size))
    return out


def generate(profile: PayloadProfile, n: int, seed: int = 0, size: int = 256, fmt: str = "jpeg") -> list[Payload]:
    """``n`` images of ``profile``; image ``i`` depends only on (``seed``, ``i``)."""
    if profile is PayloadProfile.SQUARE:
        return square(n, size, fmt, seed)
    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        kind = (
            profile
            if profile is not PayloadProfile.MIXED
            else (PayloadProfile.THUMBNAILS if i % 2 == 0 else PayloadProfile.PHOTOS)
        )
        out.append(_thumbnail(rng) if kind is PayloadProfile.THUMBNAILS else _photo(rng))
    return out


def from_directory(folder: Path, limit: int) -> list[Payload]:
    """Up to ``limit`` image files under ``folder`` (sorted), described from their headers."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no images under {folder} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    out = []
    for path in files[:limit]:
        data = path.read_bytes()
        try:
            with Image.open(io.BytesIO(data)) as image:
                orientation = image.getexif().get(0x0112, 1)
                out.append(
                    Payload(
                        data,
                        str(image.format),
                        image.width,
                        image.height,
                        orientation if isinstance(orientation, int) else 1,
                    )
                )
        except Exception:  # noqa: BLE001 - a file the server will reject is still a payload to send
            out.append(Payload(data, "unknown", 0, 0))
    return out


def describe(payloads: list[Payload]) -> dict:
    """What a report states beside every figure: bytes and megapixels per image, formats, rotated share."""
    sizes = np.array([len(p.data) for p in payloads], dtype=np.float64)
    mps = np.array([p.megapixels for p in payloads], dtype=np.float64)
    formats: dict[str, int] = {}
    for p in payloads:
        formats[p.format] = formats.get(p.format, 0) + 1
    return {
        "images": len(payloads),
        "bytes_mean": float(sizes.mean()),
        "bytes_median": float(np.median(sizes)),
        "bytes_min": int(sizes.min()),
        "bytes_max": int(sizes.max()),
        "megapixels_mean": float(mps.mean()),
        "megapixels_median": float(np.median(mps)),
        "megapixels_min": float(mps.min()),
        "megapixels_max": float(mps.max()),
        "formats": dict(sorted(formats.items())),
        "rotated": sum(p.orientation != 1 for p in payloads),
    }


def summary_line(description: dict) -> str:
    d = description
    formats = ", ".join(f"{k} {v}" for k, v in d["formats"].items())
    return (
        f"{d['images']} images, {d['bytes_median'] / 1e6:.2f} MB median ({d['bytes_min'] / 1e6:.2f} to "
        f"{d['bytes_max'] / 1e6:.2f}), {d['megapixels_median']:.1f} MP median ({d['megapixels_min']:.2f} to "
        f"{d['megapixels_max']:.1f}); {formats}; {d['rotated']} rotated"
    )
