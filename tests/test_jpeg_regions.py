"""Crop-first JPEG decoding: ``decode_center_crop`` reads only the MCUs around the centre window through
libjpeg-turbo, and gives exactly the pixels of a full Pillow decode followed by ``center_crop_or_pad``."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

import fmdetect.core.preprocess as preprocess
from fmdetect.core.jpeg import LIBRARY_DIR, RegionReader, region_reader
from fmdetect.core.preprocess import (
    DecodeLimits,
    ImageDecodeError,
    center_crop_or_pad,
    decode_center_crop,
    decode_image,
)
from tests.conftest import photo_like
from tests.test_hardening_support import jpeg_claiming

SUBSAMPLING = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}


@pytest.fixture()
def region_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the region reads that succeed, so that each test shows the crop-first path was the one taken."""
    reader = region_reader()
    assert reader is not None, f"libturbojpeg missing: 'make setup' installs it under {LIBRARY_DIR}"
    reads: list[int] = []

    class Counting(RegionReader):
        def __init__(self) -> None:
            self.path, self._turbo = reader.path, reader._turbo

        def read(self, data, boxes):
            regions = super().read(data, boxes)
            reads.append(len(regions))
            return regions

    monkeypatch.setattr(preprocess, "region_reader", lambda: Counting())
    return reads


def jpeg(array: np.ndarray, mode: str = "RGB", orientation: int = 1, **save: object) -> bytes:
    image = Image.fromarray(array).convert(mode)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    image.save(buf, "JPEG", exif=exif.tobytes(), **save)
    return buf.getvalue()


def full_then_crop(data: bytes, size: tuple[int, int]) -> np.ndarray:
    return center_crop_or_pad(decode_image(data), size)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("subsampling", SUBSAMPLING)
@pytest.mark.parametrize("progressive", [False, True], ids=["baseline", "progressive"])
def test_bit_identical_to_full_decode(
    orientation: int, subsampling: str, progressive: bool, region_reads: list[int]
) -> None:
    array = photo_like(613, 1001, seed=orientation)  # neither side a multiple of any MCU
    data = jpeg(
        array, orientation=orientation, quality=88, subsampling=SUBSAMPLING[subsampling], progressive=progressive
    )
    for size in ((128, 128), (224, 160), (97, 131)):
        got = decode_center_crop(data, size)
        assert got.shape == (*size, 3)
        np.testing.assert_array_equal(got, full_then_crop(data, size), err_msg=f"crop {size}")
    assert len(region_reads) == 3


@pytest.mark.parametrize("mode", ["L", "CMYK"])
@pytest.mark.parametrize("orientation", [1, 6, 7])
def test_grayscale_and_cmyk(mode: str, orientation: int, region_reads: list[int]) -> None:
    data = jpeg(photo_like(480, 720, seed=5), mode=mode, orientation=orientation, quality=90)
    np.testing.assert_array_equal(decode_center_crop(data, (128, 128)), full_then_crop(data, (128, 128)))
    assert region_reads == [1]


def test_restart_markers(region_reads: list[int]) -> None:
    data = jpeg(photo_like(700, 900, seed=2), quality=85, restart_marker_blocks=2)
    assert b"\xff\xdd" in data[:2000]  # a DRI segment: the stream carries restart markers
    np.testing.assert_array_equal(decode_center_crop(data, (128, 128)), full_then_crop(data, (128, 128)))
    assert region_reads == [1]


def test_mpo_camera_file_reads_its_first_image(region_reads: list[int]) -> None:
    """Cameras write MPO: the photo, then preview images; Pillow opens it as MPO, the first frame is the photo."""
    first, preview = Image.fromarray(photo_like(600, 800, seed=3)), Image.fromarray(photo_like(120, 160, seed=4))
    buf = io.BytesIO()
    first.save(buf, "MPO", save_all=True, append_images=[preview], quality=90)
    data = buf.getvalue()
    assert Image.open(io.BytesIO(data)).format == "MPO"
    np.testing.assert_array_equal(decode_center_crop(data, (128, 128)), full_then_crop(data, (128, 128)))
    assert region_reads == [1]


def test_small_images_are_read_whole_and_padded(region_reads: list[int]) -> None:
    data = jpeg(photo_like(100, 150, seed=1), quality=90)
    got = decode_center_crop(data, (128, 128))
    np.testing.assert_array_equal(got, full_then_crop(data, (128, 128)))
    assert region_reads == [1]


def test_truncated_jpegs_are_rejected_not_scored(region_reads: list[int]) -> None:
    """Pillow fills what is missing with grey and would score it; the crop-first path rejects it with the reason."""
    data = jpeg(photo_like(800, 800, seed=6), quality=90)
    damaged = bytearray(data)
    damaged[len(data) // 2 : len(data) // 2 + 400] = bytes(400)  # the decoder runs into EOI before the last MCU
    for bad in (data[: len(data) // 2], data[:-200], bytes(damaged)):
        with pytest.raises(ImageDecodeError, match="truncated or corrupt JPEG: the coded data ends before the image"):
            decode_center_crop(bad, (128, 128))
    assert region_reads == []


def test_lying_headers_cost_no_decode(region_reads: list[int]) -> None:
    """A few KB claiming 40 MP fail on the header (no allocation, no decode); a header that lies less fails when
    the data runs out."""
    small = jpeg(photo_like(120, 160, seed=9), quality=70)
    huge = jpeg_claiming(small, 6000, 6600)
    with pytest.raises(ImageDecodeError, match="only .* bytes were sent .*lying header"):
        decode_center_crop(huge, (128, 128))
    with pytest.raises(ImageDecodeError, match="lying header"):
        decode_image(huge)
    modest = jpeg_claiming(small, 160 * 4, 120 * 4)  # 16 times the pixels the data holds, under the bound
    assert Image.open(io.BytesIO(modest)).size == (640, 480) and 640 * 480 <= 512 * len(modest)
    with pytest.raises(ImageDecodeError, match="truncated or corrupt JPEG"):
        decode_center_crop(modest, (128, 128))
    assert region_reads == []


def test_benign_warnings_decode_as_before(region_reads: list[int]) -> None:
    """A warning that loses no pixels (extraneous bytes before EOI, which some encoders write) keeps the full
    decode's answer."""
    data = jpeg(photo_like(800, 800, seed=6), quality=90)
    padded = data[:-2] + b"\x00\x00" + data[-2:]
    np.testing.assert_array_equal(decode_center_crop(padded, (128, 128)), full_then_crop(data, (128, 128)))


def test_limits_checked_from_the_header_first(region_reads: list[int]) -> None:
    data = jpeg(photo_like(1000, 1000, seed=7), quality=90)
    with pytest.raises(ImageDecodeError, match="exceeds the limit of 999999 pixels"):
        decode_center_crop(data, (128, 128), DecodeLimits(max_pixels=999_999))
    with pytest.raises(ImageDecodeError, match="exceeds the limit of 1000 bytes"):
        decode_center_crop(data, (128, 128), DecodeLimits(max_bytes=1000))
    assert region_reads == []


def test_preprocess_image_reads_regions(region_reads: list[int]) -> None:
    """The serving and benchmark entry point takes the crop-first path."""
    data = jpeg(photo_like(900, 1200, seed=8), orientation=8, quality=80)
    chw = preprocess.preprocess_image(data, (128, 128))
    np.testing.assert_array_equal(chw, full_then_crop(data, (128, 128)).transpose(2, 0, 1))
    assert region_reads == [1]


@pytest.mark.parametrize("orientation", [1, 3, 6, 7])
@pytest.mark.parametrize("subsampling", ["4:2:0", "4:4:4"])
@pytest.mark.parametrize("crops", [5, 9])
def test_multi_crop_windows_bit_identical_to_full_decode(
    orientation: int, subsampling: str, crops: int, region_reads: list[int]
) -> None:
    """Every window of a multi-crop coverage, read in one pass over the coefficients, is the full decode's."""
    data = jpeg(
        photo_like(613, 1001, seed=orientation),
        orientation=orientation,
        quality=90,
        subsampling=SUBSAMPLING[subsampling],
    )
    got = preprocess.decode_windows(data, (128, 128), crops)
    np.testing.assert_array_equal(got, preprocess.crop_windows(decode_image(data), (128, 128), crops))
    assert got.shape == (crops, 128, 128, 3) and region_reads == [crops]
    assert len({w.tobytes() for w in got}) == crops  # the windows are distinct places of the image
