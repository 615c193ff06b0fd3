"""Helpers shared by the ``test_hardening_*`` modules (no tests here): served repository copies with edited
parameters and checksums, raw gRPC inference, image builders for animated images and odd EXIF blocks."""

from __future__ import annotations

import hashlib
import io
import re
import shutil
import struct
from pathlib import Path

import numpy as np
from PIL import Image

SHA256_SUFFIX = ".sha256"  # what triton_repo/layout.py is to write beside detector/<v>/model.onnx


def write_sha256(artifact: Path) -> Path:
    """``<artifact>.sha256`` in ``sha256sum`` format, as the detector model expects it."""
    digest = hashlib.sha256(artifact.read_bytes()).hexdigest()
    sidecar = artifact.with_name(artifact.name + SHA256_SUFFIX)
    sidecar.write_text(f"{digest}  {artifact.name}\n")
    return sidecar


def set_parameters(config: Path, **values: str) -> None:
    """Replace (or add) ``parameters { key: K value: { string_value: V } }`` entries of a config.pbtxt."""
    text = config.read_text()
    for key, value in values.items():
        entry = f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}'
        pattern = re.compile(rf'parameters \{{ key: "{re.escape(key)}" value: \{{ string_value: "[^"]*" \}} \}}')
        text, count = pattern.subn(entry, text)
        if count == 0:
            text += entry + "\n"
    config.write_text(text)


def repository_copy(
    source: Path,
    dest: Path,
    preprocess: dict[str, str] | None = None,
    detector: dict[str, str] | None = None,
    checksum: bool = True,
) -> Path:
    """A copy of a written cpu repository with edited model parameters and the ONNX checksum sidecar."""
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("__pycache__"))
    if preprocess:
        set_parameters(dest / "preprocess" / "config.pbtxt", **preprocess)
    if detector:
        set_parameters(dest / "detector" / "config.pbtxt", **detector)
    if checksum:
        for onnx_file in dest.glob("detector/*/model.onnx"):
            write_sha256(onnx_file)
    return dest


def infer(url: str, payload: bytes, timeout_s: float = 60.0, **kwargs):
    """One raw gRPC inference of ``deepfake_detector``; returns the result or the InferenceServerException."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url, **kwargs)
    tensor = grpcclient.InferInput("IMAGE_BYTES", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([payload], dtype=object).reshape(-1, 1))
    try:
        return client.infer("deepfake_detector", [tensor], client_timeout=timeout_s)
    except grpcclient.InferenceServerException as exc:
        return exc
    finally:
        client.close()


def prob(result) -> float:
    if isinstance(result, Exception):
        raise AssertionError(f"inference failed: {result}")
    return float(result.as_numpy("PROB_FAKE")[0, 0])


def save(images: list[Image.Image], fmt: str, **options: object) -> bytes:
    """Encode one image, or an animation / multi-page file when given several."""
    buf = io.BytesIO()
    if len(images) > 1:
        images[0].save(buf, fmt, save_all=True, append_images=images[1:], **options)
    else:
        images[0].save(buf, fmt, **options)
    return buf.getvalue()


def animation(fmt: str, frames: list[np.ndarray]) -> bytes:
    """An animated (GIF, WEBP, PNG) or multi-page (TIFF) file whose frames decode exactly to ``frames``.

    GIF frames are palette images, so the frames given must have at most 256 colours each.
    """
    images = [Image.fromarray(frame) for frame in frames]
    options: dict[str, object] = {"TIFF": {}, "WEBP": {"lossless": True, "duration": 100, "loop": 0}}.get(
        fmt, {"duration": 100, "loop": 0}
    )
    if fmt == "GIF":
        options["disposal"] = 1
    return save(images, fmt, **options)


def posterised(height: int, width: int, seed: int) -> np.ndarray:
    """A deterministic RGB image with few colours (exact through a GIF palette) and spatial structure."""
    rng = np.random.default_rng(seed)
    levels = np.array([0, 85, 170, 255], dtype=np.uint8)
    yy, xx = np.mgrid[0:height, 0:width]
    base = ((xx // rng.integers(2, 7)) + (yy // rng.integers(2, 7))) % 4
    noise = rng.integers(0, 4, size=(height, width, 3))
    return levels[(base[..., None] + noise) % 4]


def tiff_ifd(entries: list[tuple[int, int, int, bytes]], little: bool = True, extra: bytes = b"") -> bytes:
    """A raw EXIF/TIFF block: header + one IFD of (tag, type, count, 4 value bytes) entries + ``extra``."""
    e = "<" if little else ">"
    out = (b"II" if little else b"MM") + struct.pack(e + "HI", 42, 8) + struct.pack(e + "H", len(entries))
    for tag, kind, count, value in entries:
        out += struct.pack(e + "HHI", tag, kind, count) + value
    return out + struct.pack(e + "I", 0) + extra


def jpeg_with_exif(array: np.ndarray, exif_block: bytes | None, quality: int = 92) -> bytes:
    """A JPEG of ``array`` with an APP1 ``Exif`` segment holding ``exif_block`` verbatim (None: no segment).

    The pixel data is the same whatever the block, so every variant decodes to the same pixels unless an
    orientation is applied.
    """
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "JPEG", quality=quality)
    data = buf.getvalue()
    if exif_block is None:
        return data
    payload = b"Exif\x00\x00" + exif_block
    segment = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return data[:2] + segment + data[2:]


def _short(value: int, little: bool = True) -> bytes:
    return struct.pack("<HH" if little else ">HH", value, 0)


ORIENTATION = 0x0112
# EXIF blocks that must never reject an image. Name -> (block, whether a real orientation applies).
ODD_EXIF: dict[str, tuple[bytes, bool]] = {
    "orientation-0": (tiff_ifd([(ORIENTATION, 3, 1, _short(0))]), False),
    "orientation-9": (tiff_ifd([(ORIENTATION, 3, 1, _short(9))]), False),
    "orientation-65535": (tiff_ifd([(ORIENTATION, 3, 1, _short(65535))]), False),
    "orientation-long-4294967295": (tiff_ifd([(ORIENTATION, 4, 1, struct.pack("<I", 2**32 - 1))]), False),
    "orientation-signed-negative": (tiff_ifd([(ORIENTATION, 9, 1, struct.pack("<i", -6))]), False),
    "orientation-ascii": (tiff_ifd([(ORIENTATION, 2, 4, b"six\0")]), False),
    "orientation-rational": (
        tiff_ifd([(ORIENTATION, 5, 1, struct.pack("<I", 26))], extra=struct.pack("<II", 6, 1)),
        False,
    ),
    "orientation-count-2147483647": (tiff_ifd([(ORIENTATION, 3, 0x7FFFFFFF, struct.pack("<I", 8))]), False),
    "orientation-offset-past-end": (tiff_ifd([(ORIENTATION, 3, 4, struct.pack("<I", 0xFFFFFF00))]), False),
    "ifd-offset-past-end": (b"II*\x00" + struct.pack("<I", 0x7FFFFFF0), False),
    "ifd-pointing-at-itself": (
        b"II*\x00" + struct.pack("<IH", 8, 1) + struct.pack("<HHII", 0x8769, 4, 1, 8) + struct.pack("<I", 8),
        False,
    ),
    "random-bytes": (bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8)), False),
    "truncated-header": (b"MM\x00", False),
    "orientation-6-big-endian": (tiff_ifd([(ORIENTATION, 3, 1, _short(6, little=False))], little=False), True),
}


# ---------------------------------------------------------------- load generation (asyncio gRPC)
def _inputs(payload: bytes):
    import tritonclient.grpc as grpcclient

    tensor = grpcclient.InferInput("IMAGE_BYTES", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([payload], dtype=object).reshape(-1, 1))
    return [tensor]


async def closed_loop(url: str, payload: bytes, concurrency: int, seconds: float) -> float:
    """Successful requests per second with ``concurrency`` requests always in flight (the saturation rate);
    UNAVAILABLE rejections are not counted."""
    import time

    import tritonclient.grpc.aio as aiogrpc
    from tritonclient.utils import InferenceServerException

    client = aiogrpc.InferenceServerClient(url)
    inputs, done = _inputs(payload), 0
    end = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < end:
            try:
                await client.infer("deepfake_detector", inputs, client_timeout=60)
                done += 1
            except InferenceServerException as exc:
                if "UNAVAILABLE" not in str(exc.status()):
                    raise

    import asyncio

    begin = time.monotonic()
    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        await client.close()
    return done / (time.monotonic() - begin)


async def open_loop(url: str, payload: bytes, rate: float, seconds: float, timeout_s: float = 30.0) -> dict:
    """Send ``rate`` requests per second for ``seconds`` whatever the answers (open loop), each with its own id.

    Returns:
        ``answers``: request index -> list of (outcome, detail, latency_s), outcome "ok" (detail: the id the
        response carries) or the gRPC status (detail: the message); ``sent``: requests sent; ``send_s``: how long
        sending took; ``drain_s``: from the last send until the last answer.
    """
    import asyncio
    import time

    import tritonclient.grpc.aio as aiogrpc
    from tritonclient.utils import InferenceServerException

    client = aiogrpc.InferenceServerClient(url)
    inputs = _inputs(payload)
    answers: dict[int, list[tuple[str, str, float]]] = {}

    async def one(index: int) -> None:
        begin = time.monotonic()
        try:
            result = await client.infer("deepfake_detector", inputs, request_id=str(index), client_timeout=timeout_s)
            answer = ("ok", result.get_response().id, time.monotonic() - begin)
        except InferenceServerException as exc:
            answer = (str(exc.status()), str(exc.message()), time.monotonic() - begin)
        answers.setdefault(index, []).append(answer)

    count = int(rate * seconds)
    tasks = []
    start = time.monotonic()
    try:
        for index in range(count):
            delay = start + index / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(index)))
        send_s = time.monotonic() - start
        await asyncio.gather(*tasks)
        drain_s = time.monotonic() - start - send_s
    finally:
        await client.close()
    return {"answers": answers, "sent": count, "send_s": send_s, "drain_s": drain_s}


def jpeg_claiming(data: bytes, width: int, height: int) -> bytes:
    """``data`` with its frame header (SOF0/SOF2) rewritten to claim ``width`` x ``height``; the data is unchanged."""
    out = bytearray(data)
    at = next(i for i in range(2, len(out) - 9) if out[i] == 0xFF and out[i + 1] in (0xC0, 0xC2))
    out[at + 5 : at + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(out)
