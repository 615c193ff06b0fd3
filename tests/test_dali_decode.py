"""GPU decoding (``--decode dali``) as far as a machine without a GPU can take it: the DALI pipeline of the served
``decode`` model run on the CPU against ``core.preprocess`` (pixel for pixel), its autoserialization, the
repository it is written into, and the ``validate`` model served by the real tritonserver, hostile inputs
included. nvJPEG itself (``device="mixed"``) and Triton's DALI backend need a GPU and the NGC container: not run
here (``triton_repo/GPU.md``)."""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import numpy as np

# The dali extra is part of `make setup`: a missing DALI fails here rather than skipping.
import nvidia.dali.fn as fn  # noqa: E402
import nvidia.dali.types as types  # noqa: E402
import pytest
from nvidia.dali import pipeline_def  # noqa: E402
from PIL import Image

from fmdetect.core.metadata import Coverage, DetectorMetadata, FFTStageConfig
from fmdetect.core.names import DECODE, ENCODED, IMAGE_BYTES, VALIDATE
from fmdetect.core.preprocess import DecodeLimits, ImageDecodeError, check_image, decode_center_crop
from fmdetect.serving.tritonserver import ServerConfig, TritonServer
from fmdetect.triton_repo.layout import PYTHON_MODELS, Decode, Target, check_decode, render_config, write_repository
from tests.conftest import encode, photo_like, stand_in_plan

SIZE = (32, 32)
DALI_MODEL = PYTHON_MODELS / "decode_dali.py"


def _load(path: Path, name: str = "decode_dali"):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def model_module():
    return _load(DALI_MODEL)


def _with_exif(pixels: np.ndarray, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=92, exif=exif)
    return buffer.getvalue()


def _png16(gray: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(gray.astype(np.uint16) * 257).save(buffer, format="PNG")
    return buffer.getvalue()


IMAGES = {
    # longer than the window on both axes, odd and even excess (round-half-to-even offsets)
    "jpeg 40x50": encode(photo_like(40, 50, 1), "JPEG", quality=95),
    "jpeg 33x37": encode(photo_like(33, 37, 2), "JPEG", quality=80),
    "jpeg 35x39 4:2:0": encode(photo_like(35, 39, 3), "JPEG", quality=75, subsampling=2),
    "jpeg progressive": encode(photo_like(45, 61, 4), "JPEG", quality=90, progressive=True),
    # shorter on one axis or both (zero-padded, centred)
    "jpeg 20x45": encode(photo_like(20, 45, 5), "JPEG", quality=90),
    "png 17x13": encode(photo_like(17, 13, 6), "PNG"),
    # modes
    "jpeg gray": encode(photo_like(36, 40, 7), "JPEG", mode="L"),
    "jpeg cmyk": encode(photo_like(38, 42, 8), "JPEG", mode="CMYK"),
    "png rgba": encode(np.dstack([photo_like(41, 47, 9), np.full((41, 47), 90, np.uint8)]), "PNG"),
    "png palette": encode(photo_like(41, 47, 10), "PNG", mode="P"),
    "png 16-bit gray": _png16(photo_like(41, 47, 11)[..., 0]),
    "webp lossless": encode(photo_like(38, 47, 12), "WEBP", lossless=True),
    "bmp": encode(photo_like(34, 44, 13), "BMP"),
    "tiff": encode(photo_like(37, 39, 14), "TIFF"),
    "photo-sized jpeg": encode(photo_like(1200, 1600, 15), "JPEG", quality=88),
    **{f"exif orientation {o}": _with_exif(photo_like(40, 60, 20 + o), o) for o in range(1, 9)},
}


def _cpu_pipeline(module, batch_size: int):
    @pipeline_def(batch_size=batch_size, num_threads=1, device_id=None)
    def pipeline():
        encoded = fn.external_source(name=ENCODED, dtype=types.UINT8, ndim=1)
        return module.centre_window(encoded, *SIZE, device="cpu")

    pipe = pipeline()
    pipe.build()
    return pipe


def test_the_pipeline_gives_core_preprocess_pixels(model_module) -> None:
    """One batch of every kind, each row zero-padded to the longest as ``validate`` sends them: every window equals
    ``core.preprocess.decode_center_crop`` exactly (DALI's CPU decoders; the GPU's are the GPU check's)."""
    names = sorted(IMAGES)
    longest = max(len(IMAGES[n]) for n in names)
    rows = [np.frombuffer(IMAGES[n] + bytes(longest - len(IMAGES[n])), np.uint8) for n in names]
    pipe = _cpu_pipeline(model_module, len(names))
    pipe.feed_input(ENCODED, rows)
    (out,) = pipe.run()
    for index, name in enumerate(names):
        got = np.array(out[index])
        expected = decode_center_crop(IMAGES[name], SIZE).transpose(2, 0, 1)
        assert got.shape == (3, *SIZE) and got.dtype == np.uint8, name
        assert np.array_equal(got, expected), (name, int(np.abs(got.astype(int) - expected).max()))


def test_the_served_pipeline_serializes(tmp_path: Path) -> None:
    """The written model.py's decorated pipeline, with the input size from the metadata.json beside it, serializes
    with decoding on the GPU (``mixed``), as the DALI backend serializes it when the model loads. Here it is built
    without a device (``device_id=None``): the backend's own call (``invoke_autoserialize``) needs CUDA."""
    from nvidia.dali.plugin.triton import autoserialize  # noqa: F401 - the decorator the backend looks for

    version = tmp_path / "decode" / "1"
    version.mkdir(parents=True)
    (version / "model.py").write_text(DALI_MODEL.read_text())
    DetectorMetadata(backbone="resnet50", input_size=(224, 192)).save(version)
    module = _load(version / "model.py", "decode_dali_served")
    assert getattr(module.decode_pipeline, "_is_autoserialize", False)
    serialized = module.decode_pipeline(device_id=None).serialize()
    for name in (b"ENCODED", b"decoders__ImageSlice", b"mixed", b"PeekImageShape"):
        assert name in serialized, name
    assert module._input_size() == (224, 192)


def test_decoding_on_the_gpu_is_refused_where_it_cannot_serve() -> None:
    metadata = DetectorMetadata(backbone="resnet50", input_size=(224, 224))
    check_decode(Target.GPU_TRT, Decode.DALI, metadata)
    with pytest.raises(ValueError, match="needs a GPU target"):
        check_decode(Target.CPU, Decode.DALI, metadata)
    with pytest.raises(ValueError, match="centre window only; this detector scores 9 windows"):
        check_decode(Target.GPU_ORT, Decode.DALI, metadata.with_updates(coverage=Coverage(crops=9, top_k=2)))


def test_write_a_gpu_decoding_repository(tmp_path: Path) -> None:
    metadata = DetectorMetadata(backbone="resnet50", input_size=(224, 224), fft_stage=FFTStageConfig(masks=0))
    plan = stand_in_plan(tmp_path, "matmul")
    out = write_repository(Target.GPU_TRT, tmp_path / "repo", metadata, plan, Decode.DALI)
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == [
        "decode/1/metadata.json",
        "decode/1/model.py",
        "decode/config.pbtxt",
        "deepfake_detector/config.pbtxt",
        "detector/1/model.engine.json",
        "detector/1/model.plan",
        "detector/1/model.plan.sha256",
        "detector/config.pbtxt",
        "validate/1/metadata.json",
        "validate/1/model.py",
        "validate/config.pbtxt",
    ]
    assert (out / "decode/1/model.py").read_text() == DALI_MODEL.read_text()
    ensemble = (out / "deepfake_detector/config.pbtxt").read_text()
    assert 'key: "decode" value: { string_value: "dali" }' in ensemble


def test_check_image_is_decode_image_without_the_pixels() -> None:
    photo = encode(photo_like(300, 400, 1), "JPEG", quality=90)
    assert check_image(photo) == "JPEG"
    assert check_image(encode(photo_like(64, 64, 2), "JPEG", progressive=True)) == "JPEG"
    for data, reason in (
        (photo[: len(photo) // 2], "truncated"),
        (b"", "empty"),
        (b"not an image at all", "unrecognised"),
        (encode(photo_like(20, 20, 3), "GIF"), "unsupported_format"),
    ):
        with pytest.raises(ImageDecodeError) as caught:
            check_image(data, DecodeLimits(formats=("JPEG", "PNG", "WEBP", "BMP", "TIFF")))
        assert caught.value.reason == reason, (reason, str(caught.value))


# ---------------------------------------------------------------- validate, served by the real tritonserver
@pytest.fixture(scope="module")
def validate_server(tmp_path_factory: pytest.TempPathFactory):
    repo = tmp_path_factory.mktemp("validate") / "repository"
    metadata = DetectorMetadata(backbone="resnet50", input_size=(224, 224))
    (repo / VALIDATE / "1").mkdir(parents=True)
    (repo / VALIDATE / "config.pbtxt").write_text(render_config(VALIDATE, Target.GPU_TRT, metadata, Decode.DALI))
    (repo / VALIDATE / "1" / "model.py").write_text((PYTHON_MODELS / "validate.py").read_text())
    server = TritonServer(ServerConfig(model_repository=repo))
    server.start()
    yield server
    server.stop()


def _validate(url: str, images: list[bytes]):
    import tritonclient.grpc as grpcclient

    data = np.array([[image] for image in images], dtype=object)
    tensor = grpcclient.InferInput(IMAGE_BYTES, list(data.shape), "BYTES")
    tensor.set_data_from_numpy(data)
    with grpcclient.InferenceServerClient(url) as client:
        try:
            return client.infer(VALIDATE, [tensor]).as_numpy(ENCODED)
        except grpcclient.InferenceServerException as exc:
            return exc


@pytest.mark.triton
def test_validate_passes_good_bytes_and_rejects_bad_ones_alone(validate_server) -> None:
    """Raw gRPC, concurrently: each bad image fails its own request with INVALID_ARGUMENT and the reason; the good
    ones come back byte for byte (zero-padded to the longest of their request)."""
    from concurrent.futures import ThreadPoolExecutor

    import tritonclient.grpc as grpcclient

    photo = encode(photo_like(600, 800, 4), "JPEG", quality=88)
    good = [[IMAGES["jpeg 40x50"]], [IMAGES["png rgba"], photo], [IMAGES["webp lossless"]]]
    bad = {
        "truncated": ([photo[: len(photo) // 2]], "truncated JPEG"),
        "gif": ([encode(photo_like(20, 20, 3), "GIF")], "unsupported image format GIF"),
        "empty": ([b""], "empty payload"),
        "garbage": ([b"\x00" * 64], "not a recognised image"),
        "one bad in two": ([photo, photo[:100]], "image 1 of 2"),
    }
    requests = good[:2] + [images for images, _ in bad.values()] + good[2:]
    with ThreadPoolExecutor(len(requests)) as pool:
        results = list(pool.map(lambda images: _validate(validate_server.grpc_url, images), requests))
    for images, result in zip(good[:2] + good[2:], results[:2] + results[-1:]):
        assert isinstance(result, np.ndarray) and result.dtype == np.uint8, result
        assert result.shape == (len(images), max(len(i) for i in images))
        for row, image in zip(result, images):
            assert row[: len(image)].tobytes() == image and not row[len(image) :].any()
    for (name, (_, reason)), result in zip(bad.items(), results[2:-1]):
        assert isinstance(result, grpcclient.InferenceServerException), name
        assert result.status() == "StatusCode.INVALID_ARGUMENT", (name, result.message())
        assert reason in result.message(), (name, result.message())
    assert validate_server.check_health() is None


def test_decode_model_names_match_the_contract(model_module) -> None:
    assert model_module.ENCODED == ENCODED
    assert DECODE == "decode" and (PYTHON_MODELS / "validate.py").is_file()
