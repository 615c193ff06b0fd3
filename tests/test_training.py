"""Training pieces: frequency masks, threshold calibration, datasets and transforms, and a real short training run.

The dataset is the builder's small build (real photos, a real autoencoder generator), made once per session in
the same directory as in test_benchmark (the builder's cache makes the second request free).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fmdetect.core.fft import band_region, masked_count
from fmdetect.core.metadata import Band, DetectorMetadata
from fmdetect.core.preprocess import center_crop_or_pad, decode_image
from fmdetect.training.benchmark.families import ALL_FAMILIES, TRAIN_FAMILY
from fmdetect.training.calibration import false_positive_rate, threshold_at_fpr
from fmdetect.training.checkpoint import load_detector
from fmdetect.training.data import Augment, RealFakeDataset, random_crop_or_pad, scan_samples
from fmdetect.training.masking import MaskKind, MaskSpec, frequency_masks
from fmdetect.training.run_state import CHECKPOINT_DIR, METRICS_FILE, THRESHOLD_METHOD
from fmdetect.training.train import TrainConfig, train

# Measured on 2 CPU cores, dataset seed 0, training seeds 0/1/2, 12 epochs: val acc 0.95 / 0.92 / 0.94 and
# val AP 0.997 / 0.979 / 0.986 (chance: 0.5). The bounds leave a wide margin and stay far above chance.
MIN_VAL_ACC = 0.75
MIN_VAL_AP = 0.85
TRAIN_EPOCHS = 12


# ---------------------------------------------------------------------------------------------------- masks


@pytest.mark.parametrize("band", list(Band))
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("ratio", [0.0, 0.15, 0.5, 1.0])
def test_frequency_masks_exact_count_inside_band(band: Band, per_channel: bool, ratio: float) -> None:
    height, width = 24, 20
    masks = frequency_masks(6, height, width, band, ratio, per_channel, torch.Generator().manual_seed(1))
    assert masks.shape == (6, 3 if per_channel else 1, height, width)
    assert masks.dtype == torch.float32
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    region = torch.from_numpy(band_region(height, width, band))
    k = masked_count(band_region(height, width, band), ratio)
    zeros = masks == 0
    assert (zeros.sum(dim=(-2, -1)) == k).all()
    assert not (zeros & ~region).any()


def test_frequency_masks_differ_per_sample_and_repeat_per_seed() -> None:
    a = frequency_masks(8, 32, 32, "all", 0.15, True, torch.Generator().manual_seed(5))
    b = frequency_masks(8, 32, 32, "all", 0.15, True, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    flat = a.reshape(-1, 32 * 32)
    assert len({tuple(row.tolist()) for row in flat}) == flat.shape[0]


def test_mask_spec_kinds_and_probability() -> None:
    gen = torch.Generator().manual_seed(0)
    assert MaskSpec(kind=MaskKind.NONE).sample(4, 16, 16, gen) is None
    masks = MaskSpec(kind="frequency", band="high", ratio=0.3, probability=0.5).sample(64, 16, 16, gen)
    masked = (masks == 0).flatten(1).any(dim=1)
    assert 10 < int(masked.sum()) < 54
    with pytest.raises(ValueError):
        MaskSpec(ratio=1.5)


def test_all_ones_training_mask_is_identity() -> None:
    from fmdetect.training.model import Detector

    torch.manual_seed(0)
    model = Detector(DetectorMetadata(backbone="efficientnet_lite0", input_size=(32, 32))).eval()
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        plain = model(images)
        ones = model(images, train_masks=torch.ones(2, 1, 32, 32))
    torch.testing.assert_close(plain, ones, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------------- calibration


@pytest.mark.parametrize("seed", range(20))
def test_threshold_at_fpr_is_lowest_threshold_within_target(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 200))
    probs = rng.random(n)
    if seed % 2:  # heavy ties
        probs = np.round(probs, 1)
    target = float(rng.choice([0.0, 0.01, 0.05, 0.1, 0.5, 1.0]))
    t = threshold_at_fpr(probs, target)
    assert false_positive_rate(probs, t) <= target + 1e-12
    # Minimal: no lower observed score would also keep the promise.
    lower = probs[probs < t]
    if lower.size:
        assert false_positive_rate(probs, lower.max()) > target


def test_threshold_tie_rule_and_edges() -> None:
    # 20 real scores, 5 % allows 1 false positive; the top two tie, so neither may be admitted.
    probs = np.array([0.9, 0.9] + [0.1 * i / 18 for i in range(18)])
    t = threshold_at_fpr(probs, 0.05)
    assert t > 0.9 and false_positive_rate(probs, t) == 0.0
    # Without the tie the top score itself is the threshold.
    probs[0] = 0.95
    assert threshold_at_fpr(probs, 0.05) == 0.95
    assert threshold_at_fpr([0.2, 0.4], 0.0) == math.nextafter(0.4, math.inf)
    assert threshold_at_fpr([0.2, 0.4], 1.0) == 0.2
    for bad in ([], [0.1, float("nan")]):
        with pytest.raises(ValueError):
            threshold_at_fpr(bad, 0.05)
    with pytest.raises(ValueError):
        threshold_at_fpr([0.1], 1.5)


# -------------------------------------------------------------------------------------------------- datasets


def test_dataset_wang_layout_items(small_dataset: Path) -> None:
    train_set = RealFakeDataset(small_dataset, "training", image_size=64, train=True, seed=3)
    assert len(train_set) == 192
    assert train_set.generators == [TRAIN_FAMILY]
    assert sorted(np.bincount(train_set.labels).tolist()) == [96, 96]
    image, label, generator = train_set[100]
    assert image.dtype == torch.uint8 and image.shape == (3, 64, 64)
    assert label.dtype == torch.float32 and float(label) in (0.0, 1.0)
    assert generator == TRAIN_FAMILY
    # Augmentation is a function of (seed, epoch, index).
    assert torch.equal(train_set[7][0], train_set[7][0])
    val_set = RealFakeDataset(small_dataset, "validation", image_size=48, train=False)
    expected = center_crop_or_pad(decode_image(val_set.samples[5].path.read_bytes()), (48, 48))
    assert np.array_equal(val_set[5][0].permute(1, 2, 0).numpy(), expected)


def test_dataset_ojha_layout_and_generator_filter(small_dataset: Path) -> None:
    test_root = small_dataset / "testing"  # <generator>/{0_real,1_fake}: the Ojha layout
    everything = RealFakeDataset(test_root, image_size=64)
    assert everything.generators == sorted(ALL_FAMILIES)
    vae = scan_samples(test_root, generators=("vae",))
    assert {s.generator for s in vae} == {"vae"} and len(vae) == 64
    with pytest.raises(FileNotFoundError, match="no split"):
        RealFakeDataset(small_dataset, "nope")


def test_layout_errors_say_what_was_expected_and_what_was_found(tmp_path: Path) -> None:
    """A user's own data in the common real/ + fake/ shape: the error names the expected layout and the fix."""
    for name in ("real", "fake"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "a.jpg").write_bytes(b"x")
    with pytest.raises(FileNotFoundError) as caught:
        RealFakeDataset(tmp_path, "training")
    message = str(caught.value)
    assert "no split 'training'" in message and "['fake', 'real']" in message
    assert "<split>/[<generator>/]{0_real,1_fake}" in message and "rename real/ to 0_real/" in message
    with pytest.raises(FileNotFoundError, match="rename real/ to 0_real/"):
        scan_samples(tmp_path)
    # The training command: a clear error, exit status 2, and no run folder left behind as if it had started.
    from fmdetect.training.train import main as train_main

    run = tmp_path / "runs" / "mine"
    assert train_main(["--data", str(tmp_path), "--out", str(run), "--backbone", "efficientnet_lite0"]) == 2
    assert not run.exists()
    # The default recipe starts from ImageNet weights; ResNet-50 has none offline, and the refusal says what to pass.
    assert train_main(["--data", str(tmp_path), "--out", str(run), "--backbone", "resnet50"]) == 2
    assert not run.exists()
    with pytest.raises(ValueError, match="--weights-path FILE .* or --no-pretrained"):
        TrainConfig(data=tmp_path, out=run, backbone="resnet50")
    assert TrainConfig(data=tmp_path, out=run, backbone="resnet50", pretrained=False).image_size == 128


def test_training_help_shows_every_default() -> None:
    """Every default in --help, and the defaults are the default detector's recipe (its training_config.json)."""
    from fmdetect.training.train import get_args_parser

    recipe = json.loads((Path(__file__).resolve().parents[1] / "detectors/default/training_config.json").read_text())
    defaults = TrainConfig(data=Path("d"), out=Path("o")).to_dict()
    for key in (
        "backbone",
        "pretrained",
        "image_size",
        "epochs",
        "batch_size",
        "lr",
        "weight_decay",
        "mask",
        "mask_band",
        "mask_ratio",
        "mask_per_channel",
        "blur_prob",
        "jpeg_prob",
        "target_fpr",
    ):
        assert defaults[key] == recipe[key], key

    options = " ".join(get_args_parser().format_help().split()).split("options:", 1)[1]
    for flag, default in (
        ("--epochs", TrainConfig.epochs),
        ("--mask-ratio", MaskSpec.ratio),
        ("--lr", TrainConfig.lr),
        ("--image-size", TrainConfig.image_size),
        ("--pretrained,", TrainConfig.pretrained),
    ):
        described = options.split(f" {flag} ", 1)[1].split(" --", 1)[0]  # --pretrained, --no-pretrained: ...
        assert f"(default: {default})" in described, (flag, described)


def test_flag_defaults_are_the_dataclasses_defaults() -> None:
    """One declaration per option: every flag's default is ``TrainConfig``'s (``MaskSpec``'s for ``--mask-*``),
    and the flat form round-trips."""
    from fmdetect.training.train import get_args_parser, option_defaults

    parsed = vars(get_args_parser().parse_args([]))
    defaults = option_defaults()
    assert set(defaults) <= set(parsed)
    assert {k: parsed[k] for k in defaults} == defaults
    assert (
        defaults["mask_ratio"] == MaskSpec().ratio
        and defaults["workers"] == TrainConfig.__dataclass_fields__["workers"].default_factory()
    )
    config = TrainConfig.from_dict({"data": "d", "out": "o", "mask": "patch", "mask_ratio": 0.3, "mask_prob": 0.5})
    assert config.masking == MaskSpec(kind="patch", ratio=0.3, probability=0.5)
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown training options"):
        TrainConfig.from_dict({"data": "d", "out": "o", "mask_strength": 1})


def test_training_transforms_pad_crop_blur_jpeg() -> None:
    rng = np.random.default_rng(0)
    small = np.full((20, 30, 3), 200, dtype=np.uint8)
    out = random_crop_or_pad(small, (32, 32), rng)
    assert out.shape == (32, 32, 3)
    assert (out == 0).any() and (out == 200).any()
    big = np.arange(50 * 60 * 3, dtype=np.uint8).reshape(50, 60, 3)
    assert random_crop_or_pad(big, (32, 32), rng).shape == (32, 32, 3)
    from fmdetect.training.data import augment_image

    img = np.random.default_rng(1).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    always = Augment(blur_prob=1.0, jpeg_prob=1.0)
    changed = augment_image(img, always, np.random.default_rng(2))
    assert changed.shape == img.shape and changed.dtype == np.uint8 and not np.array_equal(changed, img)
    assert np.array_equal(augment_image(img, Augment(blur_prob=0.0, jpeg_prob=0.0), rng), img)


# ------------------------------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def trained(small_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run directory of a real short training on the small build (64 px, frequency masking)."""
    run = tmp_path_factory.mktemp("trained") / "run"
    config = TrainConfig.from_dict(
        dict(
            data=small_dataset,
            out=run,
            backbone="efficientnet_lite0",
            pretrained=True,
            image_size=64,
            epochs=TRAIN_EPOCHS,
            batch_size=32,
            mask="frequency",
            mask_ratio=0.15,
            seed=0,
            target_fpr=0.05,
            workers=0,
        )
    )
    assert train(config) == run / CHECKPOINT_DIR
    return run


def test_short_training_beats_chance_and_writes_calibrated_checkpoint(small_dataset: Path, trained: Path) -> None:
    checkpoint = trained / CHECKPOINT_DIR
    lines = [json.loads(line) for line in (trained / METRICS_FILE).read_text().splitlines()]
    assert [r["epoch"] for r in lines] == list(range(1, TRAIN_EPOCHS + 1))
    assert json.loads((trained / "config.json").read_text())["mask"] == "frequency"

    metadata = DetectorMetadata.load(checkpoint)
    val = metadata.metrics["val"]
    assert val["acc"] >= MIN_VAL_ACC, metadata.metrics
    assert val["ap"] >= MIN_VAL_AP, metadata.metrics
    assert metadata.threshold.method == THRESHOLD_METHOD and metadata.threshold.target_fpr == 0.05
    assert metadata.fft_stage.masks == 0
    assert metadata.input_size == (64, 64) and metadata.backbone == "efficientnet_lite0"
    assert metadata.training["mask_ratio"] == 0.15
    assert metadata.metrics["best_epoch"] == max(lines, key=lambda r: (r["val_acc"], -r["epoch"]))["epoch"]

    # The loaded detector reproduces the calibration: at most 5 % of validation real images called fake.
    model = load_detector(checkpoint)
    val_set = RealFakeDataset(small_dataset, "validation", image_size=64)
    images = torch.stack([val_set[i][0] for i in range(len(val_set))])
    with torch.no_grad():
        probs = torch.sigmoid(model(images)).numpy()
    real = probs[val_set.labels == 0]
    assert false_positive_rate(real, metadata.threshold.value) <= 0.05
    recorded = metadata.metrics["val_at_threshold"]["fpr"]
    assert abs(recorded - false_positive_rate(real, metadata.threshold.value)) <= 1.0 / len(real)


def test_readme_training_flags_match_the_parser() -> None:
    """Every flag of the README's `train` row exists, and takes a value exactly when the README shows one."""
    import re

    from fmdetect.training.train import get_args_parser

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    (row,) = [line for line in readme.splitlines() if line.startswith("| train | ")]
    actions = {opt: a for a in get_args_parser()._actions for opt in a.option_strings}
    shown = 0
    for group in re.findall(r"\[([^\]]+)\]", row) + ["--data DIR", "--out RUN_DIR"]:
        for alternative in group.replace("\\|", "|").split(" | "):
            words = alternative.split()
            if not words or not words[0].startswith("--"):
                continue
            flag, takes_value = words[0], len(words) > 1 and not words[1].startswith("--")
            assert flag in actions, f"README flag {flag} is not a training.train flag"
            shown_as = "with" if takes_value else "without"
            assert (actions[flag].nargs != 0) == takes_value, f"README shows {flag} {shown_as} a value"
            shown += 1
    assert shown >= 15


def _png(array: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.triton
def test_multi_crop_coverage_catches_a_generated_collage_around_a_real_centre(
    small_dataset: Path, trained: Path, tmp_path: Path
) -> None:
    """Generated tiles around a real centre tile: the centre window alone scores the real tile and calls the image
    real; a 3 x 3 coverage (max) calls it fake, identically in PyTorch, in the exported graph and through a real
    tritonserver over gRPC (raw tritonclient)."""
    import tritonclient.grpc as grpcclient

    from fmdetect.core.metadata import Coverage
    from fmdetect.core.names import ENSEMBLE, IMAGE_BYTES, IS_FAKE, PROB_FAKE
    from fmdetect.core.preprocess import preprocess_image
    from fmdetect.export.__main__ import main as export_main
    from fmdetect.serving.tritonserver import ServerConfig, TritonServer
    from fmdetect.training.calibrate import recalibrate

    centre_only = load_detector(trained / CHECKPOINT_DIR)
    val = RealFakeDataset(small_dataset, "validation", image_size=64)
    with torch.no_grad():
        probs = torch.sigmoid(centre_only(torch.stack([val[i][0] for i in range(len(val))]))).numpy()
    reals, fakes = np.flatnonzero(val.labels == 0), np.flatnonzero(val.labels == 1)
    centre = int(reals[np.argmin(probs[reals])])  # the most real-looking real tile in the middle
    ring = [int(i) for i in fakes[np.argsort(probs[fakes])[::-1][:8]]]  # the most fake-looking fakes around it
    tiles = [center_crop_or_pad(decode_image(val.samples[i].path.read_bytes()), (64, 64)) for i in ring]
    tiles.insert(4, center_crop_or_pad(decode_image(val.samples[centre].path.read_bytes()), (64, 64)))
    collage = _png(np.concatenate([np.concatenate(tiles[r * 3 : r * 3 + 3], axis=1) for r in range(3)], axis=0))

    nine_dir = recalibrate(
        trained / CHECKPOINT_DIR, small_dataset, "validation", 0, tmp_path / "nine", coverage=Coverage(crops=9, top_k=1)
    )
    nine = load_detector(nine_dir)
    assert nine.metadata.coverage == Coverage(crops=9, top_k=1)

    def in_process(model) -> float:
        image = preprocess_image(collage, (64, 64), crops=model.metadata.coverage.crops)
        with torch.no_grad():
            return float(torch.sigmoid(model(torch.from_numpy(image)[None]))[0])

    centre_threshold, nine_threshold = centre_only.metadata.threshold.value, nine.metadata.threshold.value
    assert probs[centre] < centre_threshold and min(probs[ring]) >= nine_threshold, "preconditions of the collage"
    assert in_process(centre_only) == pytest.approx(float(probs[centre]), abs=1e-5)  # the real tile's score
    assert in_process(centre_only) < centre_threshold  # missed by the paper's centre crop
    assert in_process(nine) == pytest.approx(float(max(probs[ring])), abs=1e-5)  # the worst window's score
    assert in_process(nine) >= nine_threshold  # caught

    repository = tmp_path / "repository"
    assert export_main(["repo", "--checkpoint", str(nine_dir), "--target", "cpu", "--out", str(repository)]) == 0
    server = TritonServer(ServerConfig(model_repository=repository))
    server.start()
    try:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        request = grpcclient.InferInput(IMAGE_BYTES, [1, 1], "BYTES")
        request.set_data_from_numpy(np.array([[collage]], dtype=object))
        result = client.infer(ENSEMBLE, [request])
        assert float(result.as_numpy(PROB_FAKE)[0, 0]) == pytest.approx(in_process(nine), abs=1e-4)
        assert bool(result.as_numpy(IS_FAKE)[0, 0])
        config = client.get_model_config(ENSEMBLE, as_json=True)["config"]["parameters"]
        assert config["crops"]["string_value"] == "9" and config["crops_top_k"]["string_value"] == "1"
    finally:
        server.stop()
