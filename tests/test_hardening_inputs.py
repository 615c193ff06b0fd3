"""Input limits from the model config, animated images, odd EXIF: in-process and through the real tritonserver.

Every rejection is INVALID_ARGUMENT with the reason, for the offending request only: the requests sent at the same
time (and so batched with it by the dynamic batcher) succeed.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from fmdetect.core.preprocess import DecodeLimits, ImageDecodeError, decode_image
from fmdetect.serving.tritonserver import ServerConfig, ServerError, TritonServer
from tests.conftest import encode, photo_like
from tests.figures import record
from tests.test_hardening_support import (
    ODD_EXIF,
    animation,
    infer,
    jpeg_claiming,
    jpeg_with_exif,
    posterised,
    prob,
    repository_copy,
)

LIMITS = {"max_bytes": "150000", "max_pixels": "250000", "formats": "JPEG,PNG,GIF,WEBP,TIFF"}
ANIMATED = ("GIF", "WEBP", "PNG", "TIFF")


@pytest.fixture(scope="module")
def limits_server(cpu_repository: Path, tmp_path_factory: pytest.TempPathFactory):
    """A server whose preprocess config sets small limits (150 kB, 250,000 pixels, no BMP)."""
    repo = repository_copy(cpu_repository, tmp_path_factory.mktemp("limits") / "repo", preprocess=LIMITS)
    with TritonServer(ServerConfig(model_repository=repo)) as server:
        yield server


# ---------------------------------------------------------------- in-process
@pytest.mark.parametrize("fmt", ANIMATED)
def test_animated_and_multipage_images_give_their_first_frame(fmt):
    first, second = posterised(40, 50, 1), posterised(40, 50, 2)
    np.testing.assert_array_equal(decode_image(animation(fmt, [first, second])), first)


@pytest.mark.parametrize("name", sorted(ODD_EXIF))
def test_odd_exif_never_rejects_a_decodable_image(name):
    block, applies = ODD_EXIF[name]
    pixels = photo_like(24, 40, 5)
    plain = decode_image(jpeg_with_exif(pixels, None))
    decoded = decode_image(jpeg_with_exif(pixels, block))
    if applies:  # orientation 6: rotate 90 degrees clockwise
        np.testing.assert_array_equal(decoded, np.rot90(plain, k=-1))
    else:
        np.testing.assert_array_equal(decoded, plain)


def test_only_the_allowed_decoders_see_the_bytes(monkeypatch):
    """A format outside ``formats`` is named in the error (from its magic number) but its plugin never runs."""
    from PIL import EpsImagePlugin

    parsed = []
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", lambda self: parsed.append(True))
    bmp = encode(photo_like(16, 16, 1), "BMP")
    with pytest.raises(ImageDecodeError, match="unsupported image format BMP; supported: PNG"):
        decode_image(bmp, DecodeLimits(formats=("PNG",)))
    with pytest.raises(ImageDecodeError, match="unsupported image format EPS"):
        decode_image(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", DecodeLimits())
    assert not parsed, "the EPS plugin (which runs Ghostscript on load) must not parse a request's bytes"


def test_limits_are_validated():
    for bad in ({"max_bytes": 0}, {"max_pixels": -1}, {"formats": ("PNG", "NOPE")}, {"formats": ()}):
        with pytest.raises(ValueError):
            DecodeLimits(**bad)
    assert DecodeLimits(formats=(" png", "Jpeg")).formats == ("PNG", "JPEG")


def test_pixel_limit_is_checked_before_decoding():
    """A 7000x7000 PNG header on a few hundred bytes is refused from its header (no 147 MB allocation)."""
    data = encode(np.zeros((1, 1, 3), np.uint8), "PNG")
    ihdr = data.index(b"IHDR")
    import struct
    import zlib

    header = b"IHDR" + struct.pack(">II", 7000, 7000) + data[ihdr + 12 : ihdr + 17]
    forged = data[:ihdr] + header + struct.pack(">I", zlib.crc32(header)) + data[ihdr + 21 :]
    with pytest.raises(ImageDecodeError, match="7000x7000 pixels exceeds the limit of 40000000"):
        decode_image(forged)


# ---------------------------------------------------------------- through the server
def _concurrently(url: str, payloads: list[bytes]) -> list:
    with ThreadPoolExecutor(len(payloads)) as pool:
        return list(pool.map(lambda p: infer(url, p), payloads))


@pytest.mark.triton
def test_config_limits_fail_only_their_request(limits_server):
    import tritonclient.grpc as grpcclient

    rng = np.random.default_rng(0)
    bad = {
        "bytes": (
            encode(rng.integers(0, 256, (300, 300, 3), dtype=np.uint8), "PNG"),
            "exceeds the limit of 150000 bytes",
        ),
        "pixels": (encode(np.zeros((600, 600, 3), np.uint8), "PNG"), "600x600 pixels exceeds the limit of 250000"),
        "format": (encode(photo_like(32, 32, 1), "BMP"), "unsupported image format BMP"),
    }
    assert len(bad["bytes"][0]) > 150000 and len(bad["pixels"][0]) < 150000
    good = [encode(photo_like(64, 64, i), fmt) for i, fmt in enumerate(("PNG", "JPEG", "PNG", "JPEG"))]
    payloads = good[:2] + [payload for payload, _ in bad.values()] + good[2:]
    results = _concurrently(limits_server.grpc_url, payloads)
    for result in results[:2] + results[-2:]:
        assert 0.0 <= prob(result) <= 1.0
    for (name, (_, reason)), result in zip(bad.items(), results[2:5]):
        assert isinstance(result, grpcclient.InferenceServerException), name
        assert result.status() == "StatusCode.INVALID_ARGUMENT", (name, result.status(), result.message())
        assert reason in result.message(), (name, result.message())


@pytest.mark.triton
def test_animated_images_score_as_their_first_frame(limits_server):
    first, second = posterised(64, 64, 11), posterised(64, 64, 12)
    payloads = [encode(first, "PNG"), encode(second, "PNG")] + [animation(fmt, [first, second]) for fmt in ANIMATED]
    probs = [prob(r) for r in _concurrently(limits_server.grpc_url, payloads)]
    assert abs(probs[0] - probs[1]) > 1e-4, "the two frames should score differently, or the test proves little"
    for fmt, value in zip(ANIMATED, probs[2:]):
        assert value == pytest.approx(probs[0], abs=1e-5), fmt


@pytest.mark.triton
def test_odd_exif_through_the_server(limits_server):
    pixels = photo_like(64, 64, 21)
    names = sorted(ODD_EXIF)
    payloads = [jpeg_with_exif(pixels, None)] + [jpeg_with_exif(pixels, ODD_EXIF[n][0]) for n in names]
    probs = [prob(r) for r in _concurrently(limits_server.grpc_url, payloads)]
    for name, value in zip(names, probs[1:]):
        if not ODD_EXIF[name][1]:
            assert value == pytest.approx(probs[0], abs=1e-6), name
    assert limits_server.check_health() is None


@pytest.mark.triton
def test_bad_limit_in_the_config_fails_the_load_with_its_reason(cpu_repository, tmp_path):
    repo = repository_copy(cpu_repository, tmp_path / "repo", preprocess={"max_pixels": "-5"})
    server = TritonServer(ServerConfig(model_repository=repo, ready_timeout_s=60))
    with pytest.raises(ServerError) as caught:
        server.start()
    assert "max_pixels must be a positive integer" in str(caught.value)
    assert not server.shm_files()


@pytest.mark.triton
def test_truncated_and_lying_jpegs_are_rejected_not_scored(triton_server):
    """Through raw gRPC: a 7 KB JPEG claiming 6000x6600, one claiming 16x its pixels, and a photo cut in half are
    INVALID_ARGUMENT with the reason; the good requests batched with them are scored."""
    import tritonclient.grpc as grpcclient

    small = encode(photo_like(120, 160, 3), "JPEG", quality=70)
    photo = encode(photo_like(900, 1200, 4), "JPEG", quality=90)
    bad = {
        "lying": (jpeg_claiming(small, 6000, 6600), "lying header"),
        "lying-less": (jpeg_claiming(small, 640, 480), "truncated or corrupt JPEG"),
        "truncated": (photo[: len(photo) // 2], "truncated or corrupt JPEG"),
    }
    good = [encode(photo_like(300, 400, i), "JPEG", quality=85) for i in range(3)]
    results = _concurrently(triton_server.grpc_url, good[:2] + [p for p, _ in bad.values()] + good[2:])
    for result in results[:2] + results[-1:]:
        assert 0.0 <= prob(result) <= 1.0
    for (name, (_, reason)), result in zip(bad.items(), results[2:5]):
        assert isinstance(result, grpcclient.InferenceServerException), name
        assert result.status() == "StatusCode.INVALID_ARGUMENT", (name, result.message())
        assert reason in result.message(), (name, result.message())


@pytest.mark.triton
def test_a_flood_of_lying_headers_leaves_good_requests_served(triton_server):
    """Eight callers sending header-lying JPEGs as fast as they can for 4 s cost the server a header parse each:
    a ninth caller's 1 MP photos are all scored, at a median latency within 10x of its median on the same server
    without the flood, measured just before (before the header check such a flood took good requests from 0.01 s
    to a median of 1.1 s, over 100x)."""
    import threading
    import time

    lying = jpeg_claiming(encode(photo_like(120, 160, 3), "JPEG", quality=70), 6000, 6600)
    good = encode(photo_like(864, 1152, 5), "JPEG", quality=90)

    def good_latencies(seconds: float) -> list[float]:
        out = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            start = time.perf_counter()
            assert 0.0 <= prob(infer(triton_server.grpc_url, good, timeout_s=30)) <= 1.0
            out.append(time.perf_counter() - start)
        return out

    quiet = good_latencies(2.0)
    stop = threading.Event()
    rejected: list[bool] = []

    def flood() -> None:
        while not stop.is_set():
            result = infer(triton_server.grpc_url, lying, timeout_s=30)
            rejected.append(isinstance(result, Exception) and "lying header" in str(result))

    threads = [threading.Thread(target=flood) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        flooded = good_latencies(4.0)
    finally:
        stop.set()
        for t in threads:
            t.join()
    print(
        f"\n{len(rejected)} lying requests rejected in 4 s; good requests: median {np.median(quiet) * 1e3:.0f} ms "
        f"alone, {np.median(flooded) * 1e3:.0f} ms under the flood (max {max(flooded) * 1e3:.0f} ms)"
    )
    record(
        "edges",
        "jpeg-flood",
        rejected=len(rejected),
        quiet_median_ms=float(np.median(quiet)) * 1e3,
        flooded_median_ms=float(np.median(flooded)) * 1e3,
        flooded_max_ms=max(flooded) * 1e3,
    )
    assert len(rejected) > 50 and all(rejected), (len(rejected), sum(rejected))
    assert float(np.median(flooded)) <= 10 * float(np.median(quiet)), (quiet, flooded)
