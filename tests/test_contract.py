"""The shared contract: preprocessing and the FFT stage, every implementation against the numpy reference."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fmdetect.core.fft import FFTForm, apply_fft_stage, band_region, inference_masks, masked_count
from fmdetect.core.metadata import DetectorMetadata, FFTStageConfig
from fmdetect.core.preprocess import (
    DecodeLimits,
    ImageDecodeError,
    center_crop_or_pad,
    decode_image,
    normalize,
    preprocess_image,
)
from fmdetect.training.fft_stage import FFTStage, MatmulDFT, masked_fft_torch
from tests.conftest import encode, photo_like

TOL = 1e-4


# ---------------------------------------------------------------- preprocessing
@pytest.mark.parametrize("size", [(64, 64), (63, 65), (224, 224), (17, 200)])
@pytest.mark.parametrize("shape", [(64, 64), (100, 37), (10, 10), (301, 77), (50, 300), (1, 1)])
def test_center_crop_matches_torchvision(shape, size):
    from torchvision.transforms import CenterCrop
    from torchvision.transforms.functional import pil_to_tensor

    img = photo_like(*shape, seed=sum(shape))
    ours = center_crop_or_pad(img, size)
    theirs = pil_to_tensor(CenterCrop(size)(Image.fromarray(img))).permute(1, 2, 0).numpy()
    assert ours.shape == (*size, 3)
    np.testing.assert_array_equal(ours, theirs)


def test_normalize_matches_torchvision():
    from torchvision.transforms import Normalize, ToTensor

    img = photo_like(40, 50, 0)
    md = DetectorMetadata(backbone="resnet50")
    ours = normalize(img.transpose(2, 0, 1)[None], md.mean, md.std)[0]
    theirs = Normalize(md.mean, md.std)(ToTensor()(Image.fromarray(img))).numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_decode_formats_and_modes(mixed_images):
    for name, data in mixed_images.items():
        rgb = decode_image(data)
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3, name
    gray = decode_image(mixed_images["gray.png"])
    assert np.array_equal(gray[..., 0], gray[..., 1])
    gray16 = decode_image(mixed_images["gray16.png"])
    np.testing.assert_array_equal(gray16[..., 0], photo_like(50, 60, 8)[..., 0])  # 16-bit scaled, not clipped
    rgba = decode_image(mixed_images["rgba.png"])
    np.testing.assert_array_equal(rgba, photo_like(66, 99, 4))  # alpha dropped, colours untouched


def test_exif_orientation_applied():
    img = Image.fromarray(photo_like(30, 60, 9))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif.tobytes())
    assert decode_image(buf.getvalue()).shape[:2] == (60, 30)


@pytest.mark.parametrize(
    "payload, reason",
    [
        (b"", "empty"),
        (b"not an image at all", "not a recognised image"),
        (encode(photo_like(64, 64, 1), "JPEG")[:300], "truncated"),
        (encode(photo_like(8, 8, 1), "PNG"), None),
    ],
)
def test_decode_errors_say_why(payload, reason):
    if reason is None:
        assert decode_image(payload).shape == (8, 8, 3)
        return
    with pytest.raises(ImageDecodeError, match=reason):
        decode_image(payload)


def test_decode_limits():
    data = encode(photo_like(100, 100, 2), "PNG")
    with pytest.raises(ImageDecodeError, match="exceeds the limit of 10 bytes"):
        decode_image(data, DecodeLimits(max_bytes=10))
    with pytest.raises(ImageDecodeError, match="exceeds the limit of 5000 pixels"):
        decode_image(data, DecodeLimits(max_pixels=5000))
    with pytest.raises(ImageDecodeError, match="unsupported image format PNG"):
        decode_image(data, DecodeLimits(formats=("JPEG",)))


def test_preprocess_image_layout():
    out = preprocess_image(encode(photo_like(10, 300, 3), "PNG"), (64, 64))
    assert out.shape == (3, 64, 64) and out.dtype == np.uint8
    assert out[:, :27].max() == 0 and out[:, -27:].max() == 0  # zero padding above and below


# ---------------------------------------------------------------- masks
@pytest.mark.parametrize("band", ["all", "low", "mid", "high"])
def test_masks_exact_count_inside_band(band):
    cfg = FFTStageConfig(masks=3, band=band, ratio=0.15, per_channel=True, seed=1)
    masks = inference_masks(cfg, 32, 48)
    region = band_region(32, 48, band)
    assert masks.shape == (3, 3, 32, 48)
    for mask in masks.reshape(-1, 32, 48):
        assert int((mask == 0).sum()) == masked_count(region, 0.15)
        assert not (mask[~region] == 0).any()
    np.testing.assert_array_equal(masks, inference_masks(cfg, 32, 48))  # deterministic from the seed


def test_band_shares():
    total = 224 * 224
    low, mid, high = (band_region(224, 224, b).sum() / total for b in ("low", "mid", "high"))
    assert low + mid + high == pytest.approx(1.0)
    assert 0.03 < low < 0.07 and 0.1 < mid < 0.2 and high > 0.7


# ---------------------------------------------------------------- FFT stage parity
def _real_images(n: int, size: int) -> np.ndarray:
    """Normalised crops of the photographs that ship inside scikit-learn."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    crops = [center_crop_or_pad(photos[i % len(photos)][i * 7 :], (size, size)) for i in range(n)]
    return normalize(np.stack(crops).transpose(0, 3, 1, 2), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _onnx_stage(impl: FFTForm, masks: np.ndarray | None, size: int, tmp_path: Path):
    """The stage exported to ONNX and run by ONNX Runtime; with no masks the exported graph is the identity."""
    import onnx
    import onnxruntime as ort

    stage = FFTStage(None if masks is None else torch.from_numpy(masks), size, size, impl).eval()
    path = tmp_path / f"stage_{impl.value}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            stage,
            (torch.zeros(2, 3, size, size),),
            str(path),
            input_names=["x"],
            output_names=["y"],
            dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
            opset_version=20,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert ("DFT" in ops) == (impl is FFTForm.DFT and masks is not None), ops
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    k = 1 if masks is None else masks.shape[0]
    return lambda x: session.run(None, {"x": x})[0].reshape(x.shape[0], k, *x.shape[1:])


def _cupy_stage(masks: np.ndarray | None):
    """The CuPy stage the GPU python backend runs; called before any computation, so it skips first."""
    cupy = pytest.importorskip("cupy", reason="CuPy is not installed (GPU machines only)")
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("no CUDA GPU on this machine")
    except cupy.cuda.runtime.CUDARuntimeError:
        pytest.skip("no CUDA GPU on this machine")
    from fmdetect.core.fft_cupy import CupyFFTStage

    stage = CupyFFTStage(masks)
    return lambda x: cupy.asnumpy(stage(cupy.asarray(x)))


def _torch_stage(impl: FFTForm, masks: np.ndarray | None, size: int):
    """The serving-side torch module (``FFTStage``, as exported), reshaped back to (B, K, C, H, W)."""
    stage = FFTStage(None if masks is None else torch.from_numpy(masks), size, size, impl).eval()
    with torch.no_grad():
        return lambda x: stage(torch.from_numpy(x)).numpy().reshape(x.shape[0], stage.views, *x.shape[1:])


IMPLS = ["torch_fft", "matmul", "onnx_dft", "onnx_matmul", "cupy"]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("n_masks", [0, 1, 4])
@pytest.mark.parametrize("source", ["random", "real"])
def test_fft_stage_parity(impl, n_masks, source, tmp_path):
    """Every implementation runs its own code for K = 0, 1 and 4 (K = 0: the stage is the identity)."""
    size = 32
    cfg = FFTStageConfig(masks=n_masks, per_channel=n_masks != 1, seed=n_masks)
    masks = inference_masks(cfg, size, size)
    if impl == "cupy":  # a machine without CuPy or a GPU skips here, before anything is computed
        run = _cupy_stage(masks)
    elif impl in ("torch_fft", "matmul"):
        run = _torch_stage(FFTForm.DFT if impl == "torch_fft" else FFTForm.MATMUL, masks, size)
    else:
        run = _onnx_stage(FFTForm.DFT if impl == "onnx_dft" else FFTForm.MATMUL, masks, size, tmp_path)
    x = (
        np.random.default_rng(n_masks).standard_normal((3, 3, size, size)).astype(np.float32) * 2
        if source == "random"
        else _real_images(3, size)
    )
    expected = apply_fft_stage(x, masks)
    got = run(x)
    assert got.shape == expected.shape == (3, max(n_masks, 1), 3, size, size)
    assert np.abs(got - expected).max() <= TOL
    if masks is not None:  # the masked views really differ from the input
        assert np.abs(got - x[:, None]).max() > 10 * TOL


def test_masked_fft_torch_matches_reference():
    """The training-side function (one mask per sample, broadcast) against the numpy reference."""
    x = _real_images(3, 32)
    masks = inference_masks(FFTStageConfig(masks=4, per_channel=True, seed=4), 32, 32)
    got = masked_fft_torch(torch.from_numpy(x)[:, None], torch.from_numpy(masks)[None]).numpy()
    assert np.abs(got - apply_fft_stage(x, masks)).max() <= TOL


def test_matmul_stage_is_fp16_safe():
    """Ortho scaling keeps the spectrum of a normalised image inside FP16 range, and the fp16 result close."""
    x = torch.from_numpy(_real_images(2, 64))
    masks = torch.from_numpy(inference_masks(FFTStageConfig(masks=2), 64, 64))
    stage = MatmulDFT(64, 64)
    out16 = stage.half()(x.half(), masks).float()
    assert torch.isfinite(out16).all()
    ref = torch.from_numpy(apply_fft_stage(x.numpy(), masks.numpy()))
    assert (out16 - ref).abs().max() < 0.05


def test_the_clients_wire_names_are_the_contracts():
    """The stand-alone client keeps its own copy of the wire names; it must be ``core.names``'."""
    from fmdetect.client import detector_client
    from fmdetect.core import names

    assert detector_client.MODEL_NAME == names.ENSEMBLE
    assert detector_client.INPUT_NAME == names.IMAGE_BYTES
    assert set(detector_client.OUTPUT_NAMES) == set(names.OUTPUTS)
    assert (detector_client.OUTPUT_PROB, detector_client.OUTPUT_IS_FAKE, detector_client.OUTPUT_LOGIT) == (
        names.PROB_FAKE,
        names.IS_FAKE,
        names.LOGIT,
    )


def test_no_project_module_outside_core_spells_a_tensor_name():
    """Tensor names are spelled by ``core.names`` (and the client's one copy), nowhere else in the packages."""
    import ast

    from fmdetect.core import names

    root = Path(__file__).resolve().parents[1]
    tensors = {names.IMAGE_BYTES, names.IMAGE, names.ENCODED, names.MASKED, *names.OUTPUTS}
    found = []
    for package in ("training", "export", "triton_repo", "serving", "benchmarks", "deploy"):
        for path in (root / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and node.value in tensors:
                    found.append(f"{path.relative_to(root)}:{node.lineno} {node.value}")
    assert not found, found


def test_no_config_template_spells_a_contract_name():
    """The repository's config templates name models and tensors through ``core.names`` fields
    (``"${IMAGE_BYTES}"``), filled in by ``render_config``; a quoted literal name would drift from the contract."""
    import re

    from fmdetect.core import names
    from fmdetect.triton_repo.layout import CONFIGS

    spelled = set(names.BY_CONSTANT.values())
    found = [
        f"{path.name}: {literal}"
        for path in sorted(CONFIGS.glob("*.pbtxt"))
        for literal in re.findall(r'"([^"$]*)"', path.read_text())
        if literal in spelled
    ]
    assert not found, found
    assert {"IMAGE_BYTES", "ENSEMBLE", "DETECTOR"} <= set(names.BY_CONSTANT)
    assert names.BY_CONSTANT["IMAGE_BYTES"] == names.IMAGE_BYTES


def test_image_suffixes_follow_the_accepted_formats():
    """Folder walkers (training data, perf.py's payloads, the client's CLI) pick up the formats preprocessing
    accepts, no more and no fewer."""
    from fmdetect.client import cli
    from fmdetect.core.preprocess import DEFAULT_FORMATS, FORMAT_SUFFIXES, IMAGE_SUFFIXES

    assert set(FORMAT_SUFFIXES) == set(DEFAULT_FORMATS)
    assert set(cli.IMAGE_EXTENSIONS) == set(IMAGE_SUFFIXES)
    for fmt, suffixes in FORMAT_SUFFIXES.items():
        for suffix in suffixes:
            assert Image.registered_extensions()[suffix] == fmt, suffix


# ---------------------------------------------------------------- coverage (multi-window)
def test_coverage_counts_and_rule_are_validated() -> None:
    from fmdetect.core.metadata import Coverage

    for crops in (1, 4, 5, 9, 10, 16, 17):
        assert Coverage(crops=crops, top_k=crops).channels == 3 * crops
    for crops in (0, 2, 3, 6, 8, 11, True):
        with pytest.raises(ValueError, match="crops must be"):
            Coverage(crops=crops)
    with pytest.raises(ValueError, match="top_k"):
        Coverage(crops=5, top_k=6)
    with pytest.raises(ValueError, match="top_k"):
        Coverage(crops=5, top_k=0)
    meta = DetectorMetadata(backbone="resnet50", coverage={"crops": 9, "top_k": 3})
    assert DetectorMetadata.from_dict(meta.to_dict()).coverage == Coverage(9, 3)
    legacy = meta.to_dict()
    del legacy["coverage"]  # metadata written before coverage existed: the centre window
    assert DetectorMetadata.from_dict(legacy).coverage == Coverage()


@pytest.mark.parametrize("shape", [(613, 1001), (128, 300), (50, 60), (300, 128), (128, 128)])
@pytest.mark.parametrize("crops", [1, 4, 5, 9, 10])
def test_crop_windows_spread_from_edge_to_edge(shape: tuple[int, int], crops: int) -> None:
    """Windows are the input size, spread evenly from corner to corner (the centre for one), padded as the centre
    crop where the image is smaller; one window is exactly ``center_crop_or_pad``."""
    from fmdetect.core.preprocess import crop_boxes, crop_windows, stack_windows

    img = photo_like(*shape, seed=crops)
    size = (128, 128)
    windows = crop_windows(img, size, crops)
    assert windows.shape == (crops, 128, 128, 3)
    boxes = crop_boxes((shape[1], shape[0]), size, crops)
    n = int(np.sqrt(crops))
    for (left, top, right, bottom), window in zip(boxes, windows):
        assert right - left == min(shape[1], 128) and bottom - top == min(shape[0], 128)
        np.testing.assert_array_equal(window, center_crop_or_pad(img[top:bottom, left:right], size))
    if crops == 1:
        np.testing.assert_array_equal(windows[0], center_crop_or_pad(img, size))
    else:
        lefts = sorted({b[0] for b in boxes[: n * n]})
        tops = sorted({b[1] for b in boxes[: n * n]})
        assert lefts[0] == 0 and lefts[-1] == max(0, shape[1] - 128)  # edge to edge
        assert tops[0] == 0 and tops[-1] == max(0, shape[0] - 128)
    if crops == n * n + 1:
        np.testing.assert_array_equal(windows[-1], center_crop_or_pad(img, size))
    stacked = stack_windows(windows)
    assert stacked.shape == (3 * crops, 128, 128)
    np.testing.assert_array_equal(stacked[3:6] if crops > 1 else stacked, windows[min(1, crops - 1)].transpose(2, 0, 1))
    data = encode(img, "PNG")
    np.testing.assert_array_equal(preprocess_image(data, size, crops=crops), stacked)


@pytest.mark.parametrize("crops,top_k", [(5, 1), (9, 3), (4, 4)])
def test_detector_aggregates_windows_as_the_rule_says(crops: int, top_k: int) -> None:
    """A multi-window detector's logit is the mean of the top-k logits its single-window self gives each window."""
    from fmdetect.core.metadata import Coverage
    from fmdetect.training.model import Detector

    torch.manual_seed(0)
    meta = DetectorMetadata(backbone="efficientnet_lite0", input_size=(32, 32), coverage=Coverage(crops, top_k))
    many = Detector(meta).eval()
    one = Detector(meta.with_updates(coverage=Coverage())).eval()
    one.load_state_dict(many.state_dict())
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 3 * crops, 32, 32), dtype=np.uint8))
    with torch.no_grad():
        per_window = one(images.reshape(-1, 3, 32, 32)).reshape(3, crops)
        expected = per_window.topk(top_k, dim=1).values.mean(dim=1)
        np.testing.assert_allclose(many(images).numpy(), expected.numpy(), atol=1e-5)
