"""Image bytes -> the detector's input tensor, without torch.

Decode (any common format, EXIF orientation applied, alpha dropped, grayscale / palette / CMYK / 16-bit converted
to 8-bit RGB) -> geometry (the paper's test protocol: no resize, centre crop to the input size, zero-pad when
smaller, with torchvision ``CenterCrop`` semantics) -> uint8 CHW. Normalisation happens inside the model graph
(``x / 255`` then ``(x - mean) / std``); ``normalize`` here is its numpy reference.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")


class ImageDecodeError(ValueError):
    """An image that cannot be turned into a detector input; the message says why."""


@dataclass(frozen=True)
class DecodeLimits:
    """Limits that protect a server from hostile inputs (oversized payloads, decompression bombs)."""

    max_bytes: int = 32 * 1024 * 1024
    max_pixels: int = 40_000_000
    formats: tuple[str, ...] = DEFAULT_FORMATS


def _to_rgb_uint8(img: Image.Image) -> np.ndarray:
    """Any PIL mode -> HxWx3 uint8 RGB. Alpha is dropped, not composited."""
    mode = img.mode
    if mode in ("RGB",):
        return np.asarray(img, dtype=np.uint8)
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(img).astype(np.float64)
        scale = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        gray = np.clip(np.rint(arr * (255.0 / scale)), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        arr = arr * 255.0 if arr.max(initial=0) <= 1.0 else arr
        gray = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode in ("RGBA", "RGBX", "RGBa"):
        return np.asarray(img, dtype=np.uint8)[..., :3].copy()
    if mode in ("P", "PA"):
        img = img.convert("RGBA")
        return np.asarray(img, dtype=np.uint8)[..., :3].copy()
    if mode in ("LA", "La"):
        img = img.convert("L")
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def decode_image(data: bytes, limits: DecodeLimits = DecodeLimits()) -> np.ndarray:
    """Decode image bytes to an HxWx3 uint8 RGB array with EXIF orientation applied.

    Raises:
        ImageDecodeError: empty, oversized, corrupt, truncated, unsupported or too many pixels.
    """
    if data is None or len(data) == 0:
        raise ImageDecodeError("empty payload: no image bytes")
    if len(data) > limits.max_bytes:
        raise ImageDecodeError(f"payload of {len(data)} bytes exceeds the limit of {limits.max_bytes} bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            fmt = img.format or "unknown"
            if fmt not in limits.formats:
                raise ImageDecodeError(f"unsupported image format {fmt}; supported: {', '.join(limits.formats)}")
            width, height = img.size
            if width < 1 or height < 1:
                raise ImageDecodeError(f"image has no pixels ({width}x{height})")
            if width * height > limits.max_pixels:
                raise ImageDecodeError(
                    f"image of {width}x{height} pixels exceeds the limit of {limits.max_pixels} pixels"
                )
            img.load()  # first frame of animated formats
            try:
                img = ImageOps.exif_transpose(img)
            except Exception:  # noqa: BLE001 - a broken EXIF block must not reject a decodable image
                pass
            return _to_rgb_uint8(img)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError("not a recognised image (corrupt data or unknown format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(f"decompression bomb rejected: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageDecodeError(f"corrupt or truncated image: {exc}") from None


def center_crop_or_pad(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Centre-crop an HxWxC array to ``size`` = (height, width), zero-padding first when it is smaller.

    Identical to torchvision ``transforms.CenterCrop``: padding splits as (d // 2, (d + 1) // 2) and the crop
    offset is ``int(round((H - h) / 2))`` with Python's round-half-to-even.
    """
    crop_h, crop_w = size
    h, w = img.shape[:2]
    if crop_h > h or crop_w > w:
        pad_top = (crop_h - h) // 2 if crop_h > h else 0
        pad_left = (crop_w - w) // 2 if crop_w > w else 0
        pad_bottom = (crop_h - h + 1) // 2 if crop_h > h else 0
        pad_right = (crop_w - w + 1) // 2 if crop_w > w else 0
        pad = [(pad_top, pad_bottom), (pad_left, pad_right)] + [(0, 0)] * (img.ndim - 2)
        img = np.pad(img, pad, mode="constant", constant_values=0)
        h, w = img.shape[:2]
        if h == crop_h and w == crop_w:
            return img
    top = int(round((h - crop_h) / 2.0))
    left = int(round((w - crop_w) / 2.0))
    return img[top : top + crop_h, left : left + crop_w]


def preprocess_image(
    data: bytes, input_size: tuple[int, int], limits: DecodeLimits = DecodeLimits()
) -> np.ndarray:
    """Image bytes -> uint8 array of shape (3, height, width), ready for the model graph."""
    rgb = decode_image(data, limits)
    return np.ascontiguousarray(center_crop_or_pad(rgb, input_size).transpose(2, 0, 1))


def normalize(
    batch: np.ndarray, mean: tuple[float, float, float], std: tuple[float, float, float]
) -> np.ndarray:
    """uint8 NCHW -> float32 NCHW, ``(x / 255 - mean) / std`` (torchvision ``ToTensor`` + ``Normalize``)."""
    x = batch.astype(np.float32) / np.float32(255.0)
    m = np.asarray(mean, dtype=np.float32).reshape(1, 3, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(1, 3, 1, 1)
    return (x - m) / s
