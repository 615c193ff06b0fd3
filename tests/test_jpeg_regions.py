"""Crop-first JPEG decoding: ``decode_center_crop`` reads only the MCUs around the centre window through
libjpeg-turbo, and gives exactly the pixels of a full Pillow decode followed by ``center_crop_or_pad``."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

import core.preprocess as preprocess
from core.jpeg import LIBRARY_DIR, RegionReader, region_reader
from core.preprocess import DecodeLimits, ImageDecodeError, center_crop_or_pad, decode_center_crop, decode_image
from tests.conftest import photo_like

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
def test_bit_identical_to_full_decode(orientation: int, subsampling: str, progressive: bool,
                                      region_reads: list[int]) -> None:
    array = photo_like(613, 1001, seed=orientation)  # neither side a multiple of any MCU
    data = jpeg(array, orientation=orientation, quality=88, subsampling=SUBSAMPLING[subsampling],
                progressive=progressive)
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


def test_small_images_decode_whole(region_reads: list[int]) -> None:
    """A window that is most of the image gains nothing from a region read: the whole image is decoded, padded."""
    data = jpeg(photo_like(100, 150, seed=1), quality=90)
    got = decode_center_crop(data, (128, 128))
    np.testing.assert_array_equal(got, full_then_crop(data, (128, 128)))
    assert region_reads == []


def test_truncated_and_corrupt_fail_as_before(region_reads: list[int]) -> None:
    """libjpeg-turbo only warns on a damaged stream; the region read gives up and the full decode's error stands."""
    data = jpeg(photo_like(800, 800, seed=6), quality=90)
    truncated = data[: len(data) // 2]
    corrupt = bytearray(data)
    corrupt[len(data) // 2 : len(data) // 2 + 400] = bytes(400)
    for bad in (truncated, bytes(corrupt)):
        try:
            expected: object = full_then_crop(bad, (128, 128))
        except ImageDecodeError as exc:
            expected = str(exc)
        try:
            got: object = decode_center_crop(bad, (128, 128))
        except ImageDecodeError as exc:
            got = str(exc)
        if isinstance(expected, str):
            assert got == expected
        else:
            np.testing.assert_array_equal(got, expected)
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_center_crop(truncated, (128, 128))
    assert region_reads == []


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
