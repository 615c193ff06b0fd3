"""Image bytes -> the detector's input tensor, without torch.

Decode (any common format, EXIF orientation applied, alpha dropped, grayscale / palette / CMYK / 16-bit converted
to 8-bit RGB) -> geometry (the paper's test protocol: no resize, centre crop to the input size, zero-pad when
smaller, with torchvision ``CenterCrop`` semantics) -> uint8 CHW. Normalisation happens inside the model graph
(``x / 255`` then ``(x - mean) / std``); ``normalize`` here is its numpy reference.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from fmdetect.core.jpeg import region_reader
from fmdetect.core.metadata import grid_side, is_valid_crop_count

DEFAULT_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")
# File-name suffixes of the accepted formats: what the tools that walk folders of images pick up.
FORMAT_SUFFIXES = {
    "JPEG": (".jpg", ".jpeg"),
    "PNG": (".png",),
    "WEBP": (".webp",),
    "BMP": (".bmp",),
    "TIFF": (".tif", ".tiff"),
    "GIF": (".gif",),
}
IMAGE_SUFFIXES = tuple(suffix for fmt in DEFAULT_FORMATS for suffix in FORMAT_SUFFIXES[fmt])
_JPEG_FORMATS = ("JPEG", "MPO")  # MPO: a camera JPEG with preview images after the first; the first is the photo


# The kinds of rejection, for counting (the served preprocess model's fmdetect_preprocess_rejected_requests_total).
REJECTION_REASONS = (
    "empty",
    "too_large",
    "too_many_pixels",
    "unsupported_format",
    "unrecognised",
    "truncated",
    "bomb",
    "corrupt",
)


class ImageDecodeError(ValueError):
    """An image that cannot be turned into a detector input; the message says why, ``reason`` names the kind
    (one of ``REJECTION_REASONS``)."""

    def __init__(self, message: str, reason: str = "corrupt") -> None:
        super().__init__(message)
        if reason not in REJECTION_REASONS:
            raise ValueError(f"unknown rejection reason {reason!r}")
        self.reason = reason


@dataclass(frozen=True)
class DecodeLimits:
    """Limits that protect a server from hostile inputs (oversized payloads, decompression bombs)."""

    max_bytes: int = 32 * 1024 * 1024
    max_pixels: int = 40_000_000
    formats: tuple[str, ...] = DEFAULT_FORMATS
    # Huffman coding spends at least one bit on every 8x8 block, so a JPEG holds at most 512 pixels per byte; a
    # header that claims more lies about its size (the data is missing), and decoding it would cost a full
    # allocation and decode of pixels that were never sent.
    max_jpeg_pixels_per_byte: int = 512

    def __post_init__(self) -> None:
        object.__setattr__(self, "formats", tuple(str(f).strip().upper() for f in self.formats))
        if self.max_bytes < 1 or self.max_pixels < 1 or self.max_jpeg_pixels_per_byte < 1:
            raise ValueError(
                f"max_bytes, max_pixels and max_jpeg_pixels_per_byte must be >= 1, got "
                f"{self.max_bytes}, {self.max_pixels} and {self.max_jpeg_pixels_per_byte}"
            )
        Image.init()
        unknown = [f for f in self.formats if f not in Image.ID]
        if not self.formats or unknown:
            raise ValueError(
                f"formats must name Pillow formats, got unknown {unknown or 'none'}; e.g. {', '.join(DEFAULT_FORMATS)}"
            )


def limits_from_parameters(params: dict[str, str]) -> DecodeLimits:
    """The ``DecodeLimits`` a model config's string parameters ask for (``max_bytes``, ``max_pixels``,
    ``max_jpeg_pixels_per_byte``, ``formats``; absent ones keep their defaults).

    Raises:
        ValueError: a value that is not a positive integer, or an unknown format; the message says which.
    """
    defaults = DecodeLimits()
    values = {}
    for key in ("max_bytes", "max_pixels", "max_jpeg_pixels_per_byte"):
        raw = params.get(key, str(getattr(defaults, key)))
        try:
            values[key] = int(raw)
        except ValueError:
            values[key] = 0
        if values[key] < 1:
            raise ValueError(f"parameter {key} must be a positive integer, got {raw!r}")
    formats = tuple(f for f in params.get("formats", ",".join(defaults.formats)).split(",") if f.strip())
    return DecodeLimits(**values, formats=formats)


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


# EXIF orientation (tag 0x0112) -> the transposition that displays the image upright; any other value is ignored.
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_EXIF_ORIENTATION_TAG = 0x0112


def _orientation_transpose(img: Image.Image) -> Image.Transpose | None:
    """The transposition the image's EXIF orientation asks for, or None.

    A missing, broken or nonsensical EXIF block (orientation 0, 9, 65535, a string, a tuple, an IFD that points
    past the end of the data) means "no orientation": it never rejects an image whose pixels decode.
    """
    try:
        value = img.getexif().get(_EXIF_ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001 - Pillow's EXIF parser raises many types on hostile data
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return _ORIENTATION.get(value)


def _sniff_format(head: bytes) -> str | None:
    """The format whose magic number ``head`` starts with, by Pillow's signature checks only (no plugin runs)."""
    Image.init()
    for fmt in Image.ID:
        try:
            accept = Image.OPEN[fmt][1]
            if accept is not None and accept(head):
                return fmt
        except Exception:  # noqa: BLE001 - a signature check must not fail the request's real error
            continue
    return None


@contextlib.contextmanager
def _decode_errors() -> Iterator[None]:
    """Every failure of a decode becomes an ``ImageDecodeError`` that says why, whatever the bytes."""
    try:
        yield
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"decompression bomb rejected: {exc}", "bomb") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageDecodeError(f"corrupt or truncated image: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - hostile bytes can make a plugin raise anything (struct.error, ...)
        raise ImageDecodeError(f"corrupt image ({type(exc).__name__}: {exc})") from None


def _open(data: bytes, limits: DecodeLimits) -> Image.Image:
    """The image's header, read by Pillow's plugins for ``limits.formats`` only, with every limit checked."""
    if data is None or len(data) == 0:
        raise ImageDecodeError("empty payload: no image bytes", "empty")
    if len(data) > limits.max_bytes:
        raise ImageDecodeError(
            f"payload of {len(data)} bytes exceeds the limit of {limits.max_bytes} bytes", "too_large"
        )
    try:
        img = Image.open(io.BytesIO(data), formats=list(limits.formats))
    except UnidentifiedImageError:
        fmt = _sniff_format(bytes(data[:16]))
        if fmt is not None and fmt not in limits.formats:
            raise ImageDecodeError(
                f"unsupported image format {fmt}; supported: {', '.join(limits.formats)}", "unsupported_format"
            ) from None
        raise ImageDecodeError("not a recognised image (corrupt data or unknown format)", "unrecognised") from None
    width, height = img.size
    if width < 1 or height < 1:
        raise ImageDecodeError(f"image has no pixels ({width}x{height})")
    if width * height > limits.max_pixels:
        raise ImageDecodeError(
            f"image of {width}x{height} pixels exceeds the limit of {limits.max_pixels} pixels", "too_many_pixels"
        )
    if img.format in _JPEG_FORMATS and width * height > limits.max_jpeg_pixels_per_byte * len(data):
        raise ImageDecodeError(
            f"JPEG header claims {width}x{height} pixels but only {len(data)} bytes were sent (more than "
            f"{limits.max_jpeg_pixels_per_byte} pixels per byte): truncated or lying header",
            "truncated",
        )
    return img


def _jpeg_complete(data: bytes) -> bool:
    """Whether a JPEG's last scan is followed by its end-of-image marker (a truncated file has none)."""
    last_scan = data.rfind(b"\xff\xda")
    return last_scan >= 0 and data.find(b"\xff\xd9", last_scan) >= 0


def check_image(data: bytes, limits: DecodeLimits = DecodeLimits()) -> str:
    """Every check that needs no pixel decoded: size, format, header, pixel limits, and for a JPEG that it is
    complete (an end-of-image marker after its last scan). Returns the format. What a decoder elsewhere (the GPU's)
    is given only after this passed.

    Raises:
        ImageDecodeError: as :func:`decode_image` for the same bytes, without decoding.
    """
    with _decode_errors():
        img = _open(data, limits)
        if img.format in _JPEG_FORMATS and not _jpeg_complete(bytes(data)):
            raise ImageDecodeError("truncated JPEG: no end-of-image marker after its last scan", "truncated")
        return img.format


def _upright_rgb(img: Image.Image, transpose: Image.Transpose | None) -> np.ndarray:
    img.load()  # Image.open leaves animated and multi-page images on their first frame
    if transpose is not None:
        img = img.transpose(transpose)
    return _to_rgb_uint8(img)


def decode_image(data: bytes, limits: DecodeLimits = DecodeLimits()) -> np.ndarray:
    """Decode image bytes to an HxWx3 uint8 RGB array with EXIF orientation applied.

    Only Pillow's plugins for ``limits.formats`` ever parse the bytes. Animated and multi-page images (GIF, WebP,
    APNG, TIFF) give their first frame; a broken EXIF block is ignored. The pixel limit is checked on the header's
    size, before any pixel is decoded.

    Raises:
        ImageDecodeError: empty, oversized, corrupt, truncated, unsupported or too many pixels; nothing else, whatever
            the bytes.
    """
    with _decode_errors():
        img = _open(data, limits)
        return _upright_rgb(img, _orientation_transpose(img))


_SWAPS_AXES = (
    Image.Transpose.TRANSPOSE,
    Image.Transpose.TRANSVERSE,
    Image.Transpose.ROTATE_90,
    Image.Transpose.ROTATE_270,
)


def _source_box(
    box: tuple[int, int, int, int], transpose: Image.Transpose | None, width: int, height: int
) -> tuple[int, int, int, int]:
    """The stored pixels (``width`` x ``height``, before orientation) behind box (left, top, right, bottom) of the
    upright image."""
    left, top, right, bottom = box
    return {
        None: (left, top, right, bottom),
        Image.Transpose.FLIP_LEFT_RIGHT: (width - right, top, width - left, bottom),
        Image.Transpose.FLIP_TOP_BOTTOM: (left, height - bottom, right, height - top),
        Image.Transpose.ROTATE_180: (width - right, height - bottom, width - left, height - top),
        Image.Transpose.ROTATE_90: (width - bottom, left, width - top, right),
        Image.Transpose.ROTATE_270: (top, height - right, bottom, height - left),
        Image.Transpose.TRANSPOSE: (top, left, bottom, right),
        Image.Transpose.TRANSVERSE: (width - bottom, height - right, width - top, height - left),
    }[transpose]


def center_box(image_size: tuple[int, int], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the pixels ``center_crop_or_pad`` keeps from an image of ``image_size`` =
    (width, height): the centre window, or the whole extent along an axis shorter than the crop."""
    width, height = image_size
    crop_h, crop_w = size
    top = int(round((height - crop_h) / 2.0)) if height > crop_h else 0
    left = int(round((width - crop_w) / 2.0)) if width > crop_w else 0
    return left, top, left + min(width, crop_w), top + min(height, crop_h)


def crop_boxes(image_size: tuple[int, int], size: tuple[int, int], crops: int = 1) -> list[tuple[int, int, int, int]]:
    """(left, top, right, bottom) of the pixels behind each of ``crops`` windows (``core.metadata.Coverage``) of an
    image of ``image_size`` = (width, height): along an axis longer than the window, n offsets spread evenly from
    edge to edge (the centre for n = 1); along a shorter one, the whole extent (the window is zero-padded).
    Row-major grid order, the centre window last for n * n + 1."""
    if not is_valid_crop_count(crops):
        raise ValueError(f"crops must be 1, n*n or n*n + 1 (n >= 2), got {crops}")
    width, height = image_size
    crop_h, crop_w = size
    n = grid_side(crops)

    def starts(extent: int, window: int) -> list[int]:
        if extent <= window:
            return [0] * n
        if n == 1:
            return [int(round((extent - window) / 2.0))]
        return [int(round(i * (extent - window) / (n - 1))) for i in range(n)]

    rows = [(top, top + min(height, crop_h)) for top in starts(height, crop_h)]
    cols = [(left, left + min(width, crop_w)) for left in starts(width, crop_w)]
    boxes = [(left, top, right, bottom) for top, bottom in rows for left, right in cols]
    if crops == n * n + 1:
        boxes.append(center_box(image_size, size))
    return boxes


def _jpeg_windows(data: bytes, img: Image.Image, boxes: list[tuple[int, int, int, int]]) -> list[np.ndarray] | None:
    """The upright pixels of each box of a JPEG, decoding only the MCUs around them; None where a region read
    cannot be made (no libturbojpeg, a stream it only warns about, a layout it does not take): the caller decodes
    whole.

    Raises:
        ImageDecodeError: the entropy-coded data ends before the image does (truncated, damaged mid-stream, or a
            lying header): Pillow would fill the rest with grey and the detector would score it.
    """
    reader = region_reader()
    if reader is None:
        return None
    transpose = _orientation_transpose(img)
    width, height = img.size
    sources = [_source_box(box, transpose, width, height) for box in boxes]
    try:
        regions = reader.read(data, sources)
    except OSError as exc:
        if "premature end" in str(exc).lower():
            raise ImageDecodeError(
                f"truncated or corrupt JPEG: the coded data ends before the image does ({exc})", "truncated"
            ) from None
        return None
    windows = []
    for region, (left, top, right, bottom) in zip(regions, sources):
        with Image.open(io.BytesIO(region.jpeg), formats=["JPEG"]) as part:
            part.load()
            if part.mode != img.mode:
                return None
            window = part.crop(
                (region.offset_x, region.offset_y, region.offset_x + right - left, region.offset_y + bottom - top)
            )
            windows.append(_upright_rgb(window, transpose))
    return windows


def _upright_size(img: Image.Image) -> tuple[int, int]:
    width, height = img.size
    return (height, width) if _orientation_transpose(img) in _SWAPS_AXES else (width, height)


def decode_windows(
    data: bytes, size: tuple[int, int], crops: int = 1, limits: DecodeLimits = DecodeLimits()
) -> np.ndarray:
    """The ``crops`` windows (:func:`crop_boxes`) of the decoded image, (crops, height, width, 3) uint8: the same
    pixels as :func:`crop_windows` of :func:`decode_image`, reading only the MCUs around them for a JPEG when
    libjpeg-turbo is available (a fraction of the work on photo-sized images). Same limits and errors."""
    with _decode_errors():
        img = _open(data, limits)
        boxes = crop_boxes(_upright_size(img), size, crops)
        parts = _jpeg_windows(data, img, boxes) if img.format in _JPEG_FORMATS else None
        if parts is None:
            rgb = _upright_rgb(img, _orientation_transpose(img))
            parts = [rgb[top:bottom, left:right] for left, top, right, bottom in boxes]
        return np.stack([center_crop_or_pad(part, size) for part in parts])


def decode_center_crop(data: bytes, size: tuple[int, int], limits: DecodeLimits = DecodeLimits()) -> np.ndarray:
    """``center_crop_or_pad(decode_image(data), size)``: the centre window of :func:`decode_windows`."""
    return decode_windows(data, size, 1, limits)[0]


def crop_windows(img: np.ndarray, size: tuple[int, int], crops: int = 1) -> np.ndarray:
    """The ``crops`` windows (:func:`crop_boxes`) of an HxWxC array, (crops, height, width, C); for ``crops`` = 1
    the one window is ``center_crop_or_pad(img, size)``."""
    height, width = img.shape[:2]
    return np.stack(
        [
            center_crop_or_pad(img[top:bottom, left:right], size)
            for left, top, right, bottom in crop_boxes((width, height), size, crops)
        ]
    )


def stack_windows(windows: np.ndarray) -> np.ndarray:
    """(crops, H, W, 3) windows -> the detector's (3 * crops, H, W) image, window i in channels 3i..3i+2."""
    crops, height, width, channels = windows.shape
    return np.ascontiguousarray(windows.transpose(0, 3, 1, 2).reshape(crops * channels, height, width))


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
    data: bytes, input_size: tuple[int, int], limits: DecodeLimits = DecodeLimits(), crops: int = 1
) -> np.ndarray:
    """Image bytes -> uint8 array of shape (3 * crops, height, width), ready for the model graph."""
    return stack_windows(decode_windows(data, input_size, crops, limits))


def normalize(batch: np.ndarray, mean: tuple[float, float, float], std: tuple[float, float, float]) -> np.ndarray:
    """uint8 NCHW -> float32 NCHW, ``(x / 255 - mean) / std`` (torchvision ``ToTensor`` + ``Normalize``)."""
    x = batch.astype(np.float32) / np.float32(255.0)
    m = np.asarray(mean, dtype=np.float32).reshape(1, 3, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(1, 3, 1, 1)
    return (x - m) / s
