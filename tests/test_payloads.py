"""Benchmark payload profiles (benchmarks/payloads.py) and the decode benchmark that uses them."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fmdetect.benchmarks.payloads import PHOTO_BANDS, PayloadProfile, describe, from_directory, generate
from fmdetect.core.preprocess import decode_image

ROOT = Path(__file__).resolve().parents[1]


def test_profiles_are_deterministic():
    first = generate(PayloadProfile.MIXED, 6, seed=3)
    assert [p.data for p in first] == [p.data for p in generate(PayloadProfile.MIXED, 6, seed=3)]
    assert [p.data for p in first] != [p.data for p in generate(PayloadProfile.MIXED, 6, seed=4)]


def test_photos_follow_the_documented_distribution():
    photos = generate(PayloadProfile.PHOTOS, 24, seed=0)
    bands = [
        next(i for i, (_, (lo, hi)) in enumerate(PHOTO_BANDS) if lo * 0.97 <= p.megapixels <= hi * 1.03) for p in photos
    ]  # every photo falls in a band (rounding to whole pixels aside)
    assert set(bands) == {0, 1, 2}, bands
    assert sum(p.format == "JPEG" for p in photos) >= 18
    assert any(p.orientation != 1 for p in photos)
    for p in photos:
        with Image.open(io.BytesIO(p.data)) as image:
            assert image.format == p.format and image.size == (p.width, p.height)
            assert image.getexif().get(0x0112, 1) == p.orientation
    rotated = next(p for p in photos if p.orientation in (6, 8))
    assert decode_image(rotated.data).shape[:2] == (rotated.width, rotated.height)  # displayed upright
    d = describe(photos)
    assert d["megapixels_max"] >= 8.0 and 0.1e6 < d["bytes_median"] < 5e6


def test_thumbnails_mix_formats():
    thumbs = generate(PayloadProfile.THUMBNAILS, 20, seed=1)
    assert {p.format for p in thumbs} >= {"JPEG", "PNG"}
    assert all(max(p.width, p.height) <= 1024 for p in thumbs)


def test_directory_payloads_describe_real_files(tmp_path: Path):
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "b.jpg").write_bytes(b"not an image")
    payloads = from_directory(tmp_path, 10)
    assert [(p.format, p.width, p.height) for p in payloads] == [("PNG", 40, 30), ("unknown", 0, 0)]
    with pytest.raises(ValueError, match="no images under"):
        from_directory(tmp_path / "empty", 10)


def test_decode_benchmark_prints_both_paths_side_by_side(tmp_path: Path):
    out = tmp_path / "decode.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "decode.py"),
            "--num-images",
            "4",
            "--repeats",
            "1",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "full decode + crop, ms | crop-first, ms | speed-up" in proc.stdout
    report = json.loads(out.read_text())
    assert report["libturbojpeg"] and report["payloads"]["images"] == 4
    assert all(b["full_ms"] > 0 and b["crop_first_ms"] > 0 for b in report["bands"])
    assert sum(b["images"] for b in report["bands"]) == 4
