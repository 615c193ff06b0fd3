"""Evaluation: metrics against scikit-learn, the test protocol against a torchvision reference, and the CLI on the
offline dataset (the builder's small build, made once per session in the same directory as test_training)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from fmdetect.core.fft import apply_fft_stage, inference_masks
from fmdetect.core.metadata import DetectorMetadata, FFTStageConfig, Threshold
from fmdetect.training import metrics as M
from fmdetect.training.benchmark.families import ALL_FAMILIES, TRAIN_FAMILY, Mechanism
from fmdetect.training.checkpoint import load_detector, save_checkpoint
from fmdetect.training.evaluate import (
    METRICS_JSON,
    METRICS_MD,
    PR_PNG,
    ROBUSTNESS_PNG,
    ROC_PNG,
    SCORES_CSV,
    Distortion,
    EvalConfig,
    Perturbation,
    evaluate,
    main,
)
from fmdetect.training.model import Detector
from fmdetect.training.steps import predict

SIZE = (64, 64)
GENERATOR_KEYS = {"ap", "acc", "acc_calibrated", "real_acc", "fake_acc", "auc", "tpr_at_fpr_1", "tpr_at_fpr_5", "n"}

# One intra-op thread (conftest.one_thread) for every test here.
pytestmark = pytest.mark.usefixtures("one_thread")


def make_checkpoint(path: Path, masks: int = 0, threshold: Threshold | None = None) -> Path:
    """efficientnet_lite0 with ImageNet weights and a seeded, untrained head."""
    torch.manual_seed(0)
    metadata = DetectorMetadata(
        backbone="efficientnet_lite0",
        input_size=SIZE,
        fft_stage=FFTStageConfig(masks=masks, per_channel=True, seed=2),
        threshold=threshold or Threshold(),
    )
    return save_checkpoint(Detector(metadata, pretrained=True), path)


def scores_and_labels(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(10, 400))
    labels = rng.integers(0, 2, n)
    labels[:2] = (0, 1)
    probs = np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0, 1)
    if seed % 3 == 1:
        probs = np.round(probs, 1)  # heavy ties
    return probs, labels


# ---------------------------------------------------------------------------------------------------- metrics


@pytest.mark.parametrize("seed", range(12))
def test_metrics_equal_scikit_learn(seed: int) -> None:
    probs, labels = scores_and_labels(seed)
    assert M.average_precision(probs, labels) == pytest.approx(average_precision_score(labels, probs), abs=1e-12)
    assert M.roc_auc(probs, labels) == pytest.approx(roc_auc_score(labels, probs), abs=1e-12)
    fpr, tpr, thresholds = roc_curve(labels, probs, drop_intermediate=False)
    ours = M.roc_curve(probs, labels)
    for a, b in zip(ours, (fpr, tpr, thresholds), strict=True):
        np.testing.assert_allclose(a[1:], b[1:], rtol=0, atol=1e-12)
    precision, recall, pr_thresholds = precision_recall_curve(labels, probs)
    ours = M.precision_recall_curve(probs, labels)
    for a, b in zip(ours, (precision[:-1][::-1], recall[:-1][::-1], pr_thresholds[::-1]), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
    for target in (0.0, 0.01, 0.05, 0.1, 0.3, 1.0):
        expected = tpr[np.searchsorted(fpr, target, side="right") - 1]
        assert M.tpr_at_fpr(probs, labels, target) == pytest.approx(expected, abs=1e-12), target
    row = M.detection_metrics(probs, labels, threshold=0.42)
    assert row["tpr_at_fpr_1"] == M.tpr_at_fpr(probs, labels, 0.01)
    assert row["acc_calibrated"] == pytest.approx(np.mean((probs >= 0.42) == labels))
    assert row["acc"] == pytest.approx(np.mean((probs >= 0.5) == labels))


def test_tpr_at_fpr_picks_the_most_sensitive_threshold_within_target() -> None:
    # 20 reals, 5 % allows one of them above the threshold; the lowest such threshold sits above the 2nd real.
    reals = np.linspace(0.0, 0.6, 18).tolist() + [0.8, 0.9]
    fakes = [0.95, 0.85, 0.82, 0.81, 0.7, 0.1]
    probs, labels = np.array(reals + fakes), np.array([0] * 20 + [1] * 6)
    assert M.tpr_at_fpr(probs, labels, 0.05) == pytest.approx(4 / 6)  # fakes > 0.8: threshold 0.81
    assert M.tpr_at_fpr(probs, labels, 0.0) == pytest.approx(1 / 6)  # only the fake above every real
    assert M.tpr_at_fpr(probs, labels, 0.1) == pytest.approx(5 / 6)


def test_metrics_edge_cases_and_mean_row() -> None:
    only_fake = M.detection_metrics([0.2, 0.9], [1, 1], threshold=0.5)
    assert math.isnan(only_fake["ap"]) and math.isnan(only_fake["auc"]) and math.isnan(only_fake["real_acc"])
    assert only_fake["fake_acc"] == 0.5 and only_fake["n"] == 2 and only_fake["n_fake"] == 2
    table, mean = M.per_generator([0.1, 0.8, 0.3, 0.6, 0.7], [0, 1, 0, 1, 1], ["b", "b", "a", "a", "c"], 0.5)
    assert list(table) == ["a", "b", "c"]
    assert mean["n"] == 5 and mean["ap"] == pytest.approx(1.0)  # c has no reals: its AP is left out
    assert mean["acc"] == pytest.approx(1.0)
    assert M.json_safe({"x": [float("nan"), np.float64(0.5), np.int64(3)]}) == {"x": [None, 0.5, 3]}
    with pytest.raises(ValueError):
        M.detection_metrics([0.1, float("nan")], [0, 1], 0.5)
    with pytest.raises(ValueError):
        M.detection_metrics([0.1, 0.2], [0, 2], 0.5)


def test_binary_metrics_keys_and_values() -> None:
    # The keys and meaning of training.train's validation metrics, so the trainer can use this implementation.
    probs, labels = scores_and_labels(4)
    pred = probs >= 0.4
    assert M.binary_metrics(probs, labels, 0.4) == pytest.approx(
        {
            "acc": np.mean(pred == labels),
            "real_acc": np.mean(~pred[labels == 0]),
            "fake_acc": np.mean(pred[labels == 1]),
            "ap": average_precision_score(labels, probs),
            "auc": roc_auc_score(labels, probs),
        },
        abs=1e-12,
    )


def test_ece_and_temperature_scaling() -> None:
    # Perfectly calibrated bins have no error; a constant 0.9 on a 50/50 set errs by 0.4.
    assert M.expected_calibration_error([0.9] * 10, [1] * 5 + [0] * 5) == pytest.approx(0.4)
    assert M.expected_calibration_error([0.25] * 4 + [0.75] * 4, [1, 0, 0, 0, 1, 1, 1, 0]) == pytest.approx(0.0)
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 4, 20000)
    labels = (rng.random(logits.size) < 1 / (1 + np.exp(-logits / 2.5))).astype(int)  # true temperature 2.5
    temperature = M.fit_temperature(logits, labels)
    assert temperature == pytest.approx(2.5, rel=0.05)
    assert M.nll(logits, labels, temperature) < M.nll(logits, labels)
    before = M.expected_calibration_error(1 / (1 + np.exp(-logits)), labels)
    after = M.expected_calibration_error(1 / (1 + np.exp(-logits / temperature)), labels)
    assert after < before / 3


# --------------------------------------------------------------------------------------- test-time protocol


def write_images(root: Path) -> list[Path]:
    """Wang layout: two generators, one with category folders; sizes above, below and odd against 64x64."""
    rng = np.random.default_rng(0)
    sizes = [(64, 64), (50, 70), (97, 131), (200, 65), (63, 66), (31, 200)]
    paths = []
    folders = ["testing/gen_a/0_real", "testing/gen_a/1_fake", "testing/gen_b/cat/0_real", "testing/gen_b/cat/1_fake"]
    for f, folder in enumerate(folders):
        (root / folder).mkdir(parents=True)
        for i, (h, w) in enumerate(sizes[f : f + 3]):
            img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            path = root / folder / (f"{i}.jpg" if i == 1 else f"{i}.png")
            img.save(path, **({"quality": 92} if path.suffix == ".jpg" else {}))
            paths.append(path)
    return paths


def reference_logits(model: Detector, paths: list[Path], masks: np.ndarray | None) -> torch.Tensor:
    """PIL -> torchvision CenterCrop -> ToTensor -> Normalize -> (numpy FFT stage) -> the backbone, mean over views."""
    from torchvision import transforms

    meta = model.metadata
    transform = transforms.Compose(
        [transforms.CenterCrop(meta.input_size), transforms.ToTensor(), transforms.Normalize(meta.mean, meta.std)]
    )
    x = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
    views = torch.from_numpy(apply_fft_stage(x.numpy(), masks))  # (B, K, C, H, W)
    with torch.no_grad():
        logits = model.backbone(views.flatten(0, 1)).reshape(x.shape[0], -1)
    return logits.mean(dim=1)


@pytest.mark.parametrize("masks", [0, 2])
def test_scores_match_torchvision_reference_pipeline(tmp_path: Path, masks: int) -> None:
    paths = write_images(tmp_path / "data")
    checkpoint = make_checkpoint(tmp_path / "ckpt", masks=masks)
    out = tmp_path / "eval"
    evaluate(EvalConfig(checkpoint=checkpoint, data=tmp_path / "data", out=out, batch_size=5, plots=False))

    model = load_detector(checkpoint)
    masks_array = inference_masks(model.metadata.fft_stage, *SIZE)
    assert (masks_array is None) == (masks == 0)
    expected = dict(zip(map(str, paths), reference_logits(model, paths, masks_array).tolist(), strict=True))
    with (out / SCORES_CSV).open() as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["path"] for r in rows) == sorted(expected)
    for row in rows:
        assert float(row["prob_fake"]) == pytest.approx(
            torch.sigmoid(torch.tensor(expected[row["path"]])).item(), abs=1e-4
        )
        assert row["generator"] == row["path"].split("/testing/")[1].split("/")[0]
        assert row["label"] == str(int("/1_fake/" in row["path"]))
    # The logits themselves, through the evaluation's dataset and loader.
    from fmdetect.training.data import RealFakeDataset

    pred = predict(model, RealFakeDataset(tmp_path / "data", "testing", SIZE), 4, torch.device("cpu"))
    ref = np.array([expected[p] for p in pred.paths])
    np.testing.assert_allclose(pred.logits, ref, atol=1e-4, rtol=0)
    report = json.loads((out / METRICS_JSON).read_text())
    assert sorted(report["generators"]) == ["gen_a", "gen_b"] and report["mean"]["n"] == 12


def test_perturbations() -> None:
    img = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    assert Perturbation(Distortion.BLUR, 0.0)(img) is img and Perturbation("scale", 1.0).is_identity
    assert Perturbation("scale", 0.5)(img).shape == (20, 30, 3)
    for p in (Perturbation("jpeg", 30), Perturbation("blur", 2.0)):
        out = p(img)
        assert out.shape == img.shape and out.dtype == np.uint8 and not np.array_equal(out, img)
    for kind, level in (("jpeg", 0), ("scale", 1.5), ("blur", -1.0)):
        with pytest.raises(ValueError):
            Perturbation(kind, level)


# ------------------------------------------------------------------------------------------------------- CLI


def test_cli_on_small_dataset(small_dataset: Path, tmp_path: Path) -> None:
    checkpoint = make_checkpoint(tmp_path / "ckpt", threshold=Threshold(0.45, "fpr_on_validation_real", 0.05))
    out = tmp_path / "eval"
    argv = [
        "--checkpoint",
        str(checkpoint),
        "--data",
        str(small_dataset),
        "--out",
        str(out),
        "--batch-size",
        "32",
        "--masks",
        "0,1",
        "--robustness",
        "--jpeg-qualities",
        "50",
        "--scales",
        "1.0",
        "0.5",
        "--blur-sigmas",
        "1",
        "--calibration-split",
        "validation",
    ]
    assert main(argv) == 0
    for name in (METRICS_JSON, METRICS_MD, SCORES_CSV, PR_PNG, ROC_PNG, ROBUSTNESS_PNG, "config.json"):
        assert (out / name).stat().st_size > 0, name

    report = json.loads((out / METRICS_JSON).read_text())
    assert report["threshold"] == 0.45
    assert sorted(report["generators"]) == sorted(ALL_FAMILIES)
    for row in [*report["generators"].values(), report["mean"]]:
        assert GENERATOR_KEYS <= row.keys()
        assert all(0.0 <= row[k] <= 1.0 for k in GENERATOR_KEYS - {"n"})
    for key in GENERATOR_KEYS - {"n"}:
        assert report["mean"][key] == pytest.approx(np.mean([g[key] for g in report["generators"].values()]))

    # The metrics are those of scores.csv, computed by scikit-learn.
    with (out / SCORES_CSV).open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == report["mean"]["n"] == 64 * len(ALL_FAMILIES)
    for name, metrics in report["generators"].items():
        labels = np.array([int(r["label"]) for r in rows if r["generator"] == name])
        probs = np.array([float(r["prob_fake"]) for r in rows if r["generator"] == name])
        assert metrics["n"] == len(labels) == 64
        assert metrics["ap"] == pytest.approx(average_precision_score(labels, probs), abs=1e-9)
        assert metrics["auc"] == pytest.approx(roc_auc_score(labels, probs), abs=1e-9)
        assert metrics["acc_calibrated"] == pytest.approx(np.mean((probs >= 0.45) == labels))

    masking = report["test_time_masking"]
    assert [r["masks"] for r in masking] == [0, 1] and all(r["ms_per_image"] > 0 for r in masking)
    assert masking[0]["ap"] == pytest.approx(report["mean"]["ap"], abs=1e-9)  # the checkpoint has no masks
    robustness = report["robustness"]
    assert {k: [r["level"] for r in v] for k, v in robustness.items()} == {
        "jpeg": [50.0],
        "scale": [1.0, 0.5],
        "blur": [1.0],
    }
    assert robustness["scale"][0]["ap"] == pytest.approx(report["mean"]["ap"])
    assert robustness["blur"][0]["ap"] != pytest.approx(report["mean"]["ap"])

    calibration = report["calibration"]
    assert calibration["split"] == "validation" and calibration["temperature"] > 0
    assert calibration["fit"]["nll_after"] <= calibration["fit"]["nll_before"] + 1e-12
    assert calibration["fit"]["n"] == 64 and calibration["test"]["n"] == 64 * len(ALL_FAMILIES)
    assert calibration["implied_threshold"] == 0.5 and calibration["fpr_threshold"] == 0.45
    assert DetectorMetadata.load(checkpoint).threshold.value == 0.45  # serving untouched
    assert f"| **mean** | {64 * len(ALL_FAMILIES)} |" in (out / METRICS_MD).read_text()

    # The benchmark summary: FPR per real source (the small build tests on matplotlib's photo), recomputed here
    # from scores.csv; the unseen mean and the mechanism summary from the per-family table.
    bench = report["benchmark"]
    real_probs = np.array([float(r["prob_fake"]) for r in rows if r["label"] == "0"])
    assert bench["real_sources"] == {
        "matplotlib": {"n": len(real_probs), "fpr": pytest.approx(np.mean(real_probs >= 0.45))}
    }
    unseen = [f for f in ALL_FAMILIES if f != TRAIN_FAMILY]
    assert bench["unseen_families"] == unseen
    assert bench["unseen"]["ap"] == pytest.approx(np.mean([report["generators"][f]["ap"] for f in unseen]))
    assert set(bench["mechanisms"]) == {m.value for m in Mechanism}
    gans = bench["mechanisms"]["gan"]["families"]
    others = [f for f in unseen if f not in gans]
    assert bench["leave_one_mechanism_out"]["gan"] == pytest.approx(
        np.mean([report["generators"][f]["ap"] for f in others])
    )
    assert "## Benchmark summary" in (out / METRICS_MD).read_text()


def test_cli_errors(tmp_path: Path) -> None:
    checkpoint = make_checkpoint(tmp_path / "ckpt")
    assert main(["--checkpoint", str(checkpoint), "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    with pytest.raises(SystemExit):
        main(["--checkpoint", str(checkpoint), "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--masks", "two"])


def test_recalibrate_with_test_time_masks(small_dataset: Path, tmp_path: Path) -> None:
    """``training.calibrate`` ships the same weights with K masks and a threshold that keeps its promise on the
    validation reals when scored with those K masks."""
    from torch.utils.data import Subset

    from fmdetect.training.calibrate import main as calibrate_main
    from fmdetect.training.data import RealFakeDataset

    source = make_checkpoint(tmp_path / "src", threshold=Threshold(0.45, "fpr_on_validation_real", 0.05))
    out = tmp_path / "k2"
    assert (
        calibrate_main(
            [
                "--checkpoint",
                str(source),
                "--data",
                str(small_dataset),
                "--split",
                "validation",
                "--masks",
                "2",
                "--out",
                str(out),
                "--batch-size",
                "32",
            ]
        )
        == 0
    )
    shipped = load_detector(out)
    assert shipped.metadata.fft_stage.masks == 2 and shipped.metadata.threshold.target_fpr == 0.05
    original = load_detector(source)
    for key, value in original.state_dict().items():
        assert torch.equal(value, shipped.state_dict()[key]), key
    val = RealFakeDataset(small_dataset, "validation", SIZE)
    reals = [i for i, s in enumerate(val.samples) if s.label == 0]
    probs = predict(shipped, Subset(val, reals), 32, torch.device("cpu")).probs
    assert np.mean(probs >= shipped.metadata.threshold.value) <= 0.05
    assert shipped.metadata.metrics["calibration"]["test_time_masks"] == 2
    assert (
        calibrate_main(
            ["--checkpoint", str(source), "--data", str(small_dataset), "--masks", "-1", "--out", str(tmp_path / "bad")]
        )
        == 2
    )


def test_coverage_sweep_and_recalibration_with_windows(small_dataset: Path, tmp_path: Path) -> None:
    """``--crops`` evaluates the same weights on C windows per image; ``training.calibrate --crops`` ships them with
    the coverage in the metadata, honoured by evaluation, and rejects a count no grid has."""
    from fmdetect.training.calibrate import main as calibrate_main

    source = make_checkpoint(tmp_path / "src", threshold=Threshold(0.45, "fpr_on_validation_real", 0.05))
    out = tmp_path / "eval"
    assert (
        main(
            [
                "--checkpoint",
                str(source),
                "--data",
                str(small_dataset),
                "--out",
                str(out),
                "--batch-size",
                "32",
                "--crops",
                "1,5",
                "9:3",
                "--no-plots",
            ]
        )
        == 0
    )
    report = json.loads((out / METRICS_JSON).read_text())
    rows = report["coverage"]
    assert [(r["crops"], r["top_k"]) for r in rows] == [(1, 1), (5, 1), (9, 3)]
    assert rows[0]["ap"] == pytest.approx(report["mean"]["ap"], abs=1e-9)  # one window: the centre crop
    assert rows[0]["relative_cost"] == 1.0 and rows[2]["ms_per_image"] > rows[0]["ms_per_image"]
    assert "## Coverage" in (out / METRICS_MD).read_text()

    shipped_dir = tmp_path / "nine"
    assert (
        calibrate_main(
            [
                "--checkpoint",
                str(source),
                "--data",
                str(small_dataset),
                "--split",
                "validation",
                "--crops",
                "9:3",
                "--out",
                str(shipped_dir),
                "--batch-size",
                "32",
            ]
        )
        == 0
    )
    shipped = load_detector(shipped_dir)
    assert (shipped.metadata.coverage.crops, shipped.metadata.coverage.top_k) == (9, 3)
    assert shipped.metadata.metrics["calibration"]["crops"] == 9
    again = tmp_path / "eval9"
    assert (
        main(
            [
                "--checkpoint",
                str(shipped_dir),
                "--data",
                str(small_dataset),
                "--out",
                str(again),
                "--batch-size",
                "32",
                "--no-plots",
            ]
        )
        == 0
    )
    assert json.loads((again / METRICS_JSON).read_text())["mean"]["ap"] == pytest.approx(rows[2]["ap"], abs=1e-9)
    with pytest.raises(SystemExit):
        calibrate_main(
            ["--checkpoint", str(source), "--data", str(small_dataset), "--crops", "6", "--out", str(tmp_path / "bad")]
        )


def test_coverage_command_sweeps_every_arrangement_and_chooses_on_validation(
    small_dataset: Path, tmp_path: Path
) -> None:
    """``training.coverage``: 1/5/9 windows on every validation and testing arrangement of the mosaics, a choice made
    on validation rows only by the fixed rule, and its report files; a second run reuses the evaluations."""
    from fmdetect.training import coverage
    from fmdetect.training.benchmark.mosaics import ARRANGEMENTS, MosaicConfig, build_mosaics

    mosaics = build_mosaics(MosaicConfig(small_dataset, tmp_path / "mosaics", per_class=2, validation_per_class=4))
    checkpoint = make_checkpoint(tmp_path / "ckpt", threshold=Threshold(0.45, "fpr_on_validation_real", 0.05))
    argv = ["--checkpoint", str(checkpoint), "--mosaics", str(mosaics), "--out", str(tmp_path / "out")]
    assert coverage.main([*argv, "--work", str(tmp_path / "work")]) == 0
    report = json.loads((tmp_path / "out" / "coverage.json").read_text())
    rows = report["rows"]
    assert {(r["split"], r["arrangement"], r["crops"]) for r in rows} == {
        (s, a, c) for s in coverage.SPLITS for a in ARRANGEMENTS for c in (1, 5, 9)
    }
    assert report["choice"] == json.loads(json.dumps(coverage.choose(rows)))  # (JSON keys are strings)
    assert (tmp_path / "out" / "coverage.png").stat().st_size > 0
    assert "Chosen by the rule" in (tmp_path / "out" / "coverage.md").read_text()
    stamp = (tmp_path / "work" / "testing_whole" / METRICS_JSON).stat().st_mtime_ns
    assert coverage.main([*argv, "--work", str(tmp_path / "work")]) == 0
    assert (tmp_path / "work" / "testing_whole" / METRICS_JSON).stat().st_mtime_ns == stamp  # reused


def test_coverage_rule_takes_the_fewest_windows_within_the_tolerance() -> None:
    from fmdetect.training.coverage import choose

    def rows(aps: dict[int, tuple[float, float]]) -> list[dict]:
        return [
            {"split": split, "arrangement": a, "crops": c, "ap": ap}
            for c, (val, test) in aps.items()
            for split, ap in (("validation", val), ("testing", test))
            for a in ("whole", "surround")
        ]

    assert choose(rows({1: (0.80, 0.99), 5: (0.90, 0.5), 9: (0.905, 0.5)}))["crops"] == 5  # testing never counts
    assert choose(rows({1: (0.80, 0.5), 5: (0.85, 0.5), 9: (0.90, 0.5)}))["crops"] == 9
    assert choose(rows({1: (0.895, 0.5), 5: (0.90, 0.5), 9: (0.90, 0.5)}))["crops"] == 1
