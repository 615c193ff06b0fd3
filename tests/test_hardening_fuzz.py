"""Fuzzing decode + preprocess (hypothesis, bounded for CI) and a burst of mutated images through the real server.

In process: random bytes, valid JPEG/PNG/GIF/WebP/TIFF/BMP files with bytes replaced, inserted or deleted, and
truncations. Whatever the bytes, ``preprocess_image`` returns a (3, H, W) uint8 array or raises
``ImageDecodeError``; nothing else, and never hangs (each example runs under a 10 s alarm; the hypothesis deadline
of 5 s flags slow inputs). 2,000 examples in ~5 s on 2 cores; ``FUZZ_MULT=N`` runs N times as many. Examples are
derandomised, so a CI failure reproduces locally.
"""

from __future__ import annotations

import os
import signal
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fmdetect.core.preprocess import DecodeLimits, ImageDecodeError, preprocess_image
from fmdetect.serving.tritonserver import ServerConfig, TritonServer
from tests.conftest import encode, photo_like
from tests.test_hardening_support import animation, infer, posterised, prob, repository_copy

INPUT_SIZE = (32, 32)
# A mutated header can claim any size; a lower pixel limit keeps each example's allocation small and fast.
LIMITS = DecodeLimits(max_pixels=4_000_000)
HANG_S = 10
MULT = int(os.environ.get("FUZZ_MULT", "1"))  # e.g. FUZZ_MULT=20 for a longer run than CI's (~5 s)

SEEDS: dict[str, bytes] = {
    "jpeg": encode(photo_like(24, 20, 1), "JPEG", quality=80),
    "jpeg-progressive": encode(photo_like(24, 20, 2), "JPEG", quality=80, progressive=True),
    "png": encode(photo_like(20, 24, 3), "PNG"),
    "png-gray16": encode((photo_like(16, 16, 4)[..., 0].astype(np.uint16) * 257), "PNG"),
    "gif-animated": animation("GIF", [posterised(16, 16, 5), posterised(16, 16, 6)]),
    "webp-lossy": encode(photo_like(20, 20, 7), "WEBP", quality=70),
    "webp-animated": animation("WEBP", [posterised(16, 16, 8), posterised(16, 16, 9)]),
    "apng": animation("PNG", [posterised(16, 16, 10), posterised(16, 16, 11)]),
    "tiff": encode(photo_like(16, 20, 12), "TIFF"),
    "tiff-multipage": animation("TIFF", [posterised(16, 16, 13), posterised(16, 16, 14)]),
    "bmp": encode(photo_like(16, 16, 15), "BMP"),
}
FUZZ = settings(
    deadline=timedelta(seconds=5),
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class DecodeHang(BaseException):
    """Raised by the alarm; a BaseException so that no ``except Exception`` in the code under test hides it."""


def _alarm(signum, frame):
    raise DecodeHang(f"decode took more than {HANG_S} s")


def check_decode(data: bytes) -> None:
    """The property: an array of the input size, or ImageDecodeError; anything else (or a hang) fails."""
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(HANG_S)
    try:
        out = preprocess_image(data, INPUT_SIZE, LIMITS)
    except ImageDecodeError as exc:
        assert str(exc), "an ImageDecodeError must say why"
        return
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert out.shape == (3, *INPUT_SIZE) and out.dtype == np.uint8


@st.composite
def mutated(draw) -> bytes:
    """A seed file with 1-8 edits: overwrite bytes (the first 64 bytes, i.e. the header, most of the time),
    insert or delete a run, then maybe truncate."""
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["overwrite-header", "overwrite", "insert", "delete", "interesting"]))
        limit = min(len(data), 64) if kind in ("overwrite-header", "interesting") else len(data)
        at = draw(st.integers(0, max(0, limit - 1)))
        if kind in ("overwrite-header", "overwrite"):
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[at : at + len(chunk)] = chunk
        elif kind == "interesting":  # sizes and counts that break parsers: 0, -1, huge
            chunk = draw(
                st.sampled_from(
                    [
                        b"\x00\x00",
                        b"\xff\xff",
                        b"\x7f\xff\xff\xff",
                        b"\x00\x00\x00\x00",
                        b"\xff\xff\xff\xff",
                        b"\x80\x00",
                        b"\x00\x01",
                    ]
                )
            )
            data[at : at + len(chunk)] = chunk
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=32))
        else:
            del data[at : at + draw(st.integers(1, 32))]
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


@st.composite
def truncated(draw) -> bytes:
    data = SEEDS[draw(st.sampled_from(sorted(SEEDS)))]
    return data[: draw(st.integers(0, len(data) - 1))]


@st.composite
def magic_then_random(draw) -> bytes:
    """A real file's first 2-32 bytes (its magic number and part of its header) followed by random bytes."""
    seed = SEEDS[draw(st.sampled_from(sorted(SEEDS)))]
    return seed[: draw(st.integers(2, 32))] + draw(st.binary(max_size=512))


@settings(FUZZ, max_examples=300 * MULT)
@given(st.binary(max_size=2048))
def test_fuzz_random_bytes(data):
    check_decode(data)


@settings(FUZZ, max_examples=400 * MULT)
@given(magic_then_random())
def test_fuzz_magic_number_then_garbage(data):
    check_decode(data)


@settings(FUZZ, max_examples=1000 * MULT)
@given(mutated())
def test_fuzz_mutated_valid_files(data):
    check_decode(data)


@settings(FUZZ, max_examples=300 * MULT)
@given(truncated())
def test_fuzz_truncations(data):
    check_decode(data)


def test_every_seed_decodes():
    for name, data in SEEDS.items():
        assert preprocess_image(data, INPUT_SIZE, LIMITS).shape == (3, *INPUT_SIZE), name


def _burst(seed: int, count: int) -> list[bytes]:
    """``count`` mutated files drawn reproducibly (numpy RNG, same edit kinds as ``mutated``)."""
    rng = np.random.default_rng(seed)
    names = sorted(SEEDS)
    out = []
    for _ in range(count):
        data = bytearray(SEEDS[names[rng.integers(len(names))]])
        for _ in range(rng.integers(1, 9)):
            at = int(rng.integers(0, min(len(data), 64) if rng.random() < 0.6 else len(data)))
            data[at : at + 4] = rng.integers(0, 256, int(rng.integers(1, 5)), dtype=np.uint8).tobytes()
        if rng.random() < 0.3:
            data = data[: int(rng.integers(0, len(data)))]
        out.append(bytes(data))
    return out


@pytest.mark.triton
def test_fuzz_burst_through_the_server_leaves_the_stubs_healthy(cpu_repository: Path, tmp_path: Path):
    """300 mutated images, 16 at a time: each answered with scores or INVALID_ARGUMENT (never INTERNAL); then
    the stubs are alive, the server ready, and a good image is scored as before."""
    import tritonclient.grpc as grpcclient

    repo = repository_copy(cpu_repository, tmp_path / "repo")
    good = encode(photo_like(64, 64, 0), "PNG")
    with TritonServer(ServerConfig(model_repository=repo)) as server:
        before = prob(infer(server.grpc_url, good))
        stubs = {stub.pid for stub in server.stubs()}
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(lambda p: infer(server.grpc_url, p, timeout_s=30), _burst(1, 300)))
        failures = [r for r in results if isinstance(r, grpcclient.InferenceServerException)]
        assert all(r.status() == "StatusCode.INVALID_ARGUMENT" for r in failures), {
            (r.status(), r.message()[:100]) for r in failures if r.status() != "StatusCode.INVALID_ARGUMENT"
        }
        assert 0 < len(failures) < len(results), "the burst should hold both decodable and broken images"
        assert server.check_health() is None
        assert {stub.pid for stub in server.stubs()} == stubs, "a stub was restarted"
        assert prob(infer(server.grpc_url, good)) == pytest.approx(before, abs=1e-6)
