"""Spectral probes: each transform does what its name says, and the probe run agrees with the evaluation path on
the builder's small benchmark (conftest.small_dataset)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from fmdetect.core.metadata import DetectorMetadata, FFTStageConfig, Threshold
from fmdetect.training.benchmark.families import ALL_FAMILIES
from fmdetect.training.checkpoint import load_detector, save_checkpoint
from fmdetect.training.data import RealFakeDataset
from fmdetect.training.model import Detector
from fmdetect.training.probes import (
    PROBES_JSON,
    PROBES_MD,
    UPSAMPLERS,
    apply_ratio,
    distinct,
    lowpass,
    magnitude_ratio,
    main,
    resample,
)
from fmdetect.training.steps import predict

SIZE = (64, 64)

# One intra-op thread (conftest.one_thread) for every test here.
pytestmark = pytest.mark.usefixtures("one_thread")


def photos(n: int = 6, size: int = 32, seed: int = 0) -> np.ndarray:
    """Smooth random images with texture: every frequency band carries energy."""
    rng = np.random.default_rng(seed)
    base = rng.normal(128, 20, (n, size // 4, size // 4, 3))
    coarse = np.kron(base, np.ones((1, 4, 4, 1)))
    return np.clip(coarse + rng.normal(0, 12, coarse.shape), 0, 255).astype(np.uint8)


def high_energy(images: np.ndarray, radius: float) -> float:
    spectrum = np.fft.fft2(images.astype(np.float64) - images.mean(axis=(1, 2), keepdims=True), axes=(1, 2))
    h, w = images.shape[1:3]
    above = np.sqrt(np.fft.fftfreq(h)[:, None] ** 2 + np.fft.fftfreq(w)[None, :] ** 2) > radius
    return float((np.abs(spectrum) ** 2)[:, above].sum())


def test_ratio_of_ones_keeps_the_images():
    images = photos()
    assert np.array_equal(apply_ratio(images, np.ones(images.shape[1:])), images)


def test_lowpass_removes_the_energy_above_its_radius():
    images = photos()
    before = high_energy(images, 0.25)
    after = high_energy(lowpass(images, 0.25), 0.25)
    # What is left is the rounding to uint8: white noise of variance 1/12 per value, whose whole-band energy is
    # (by Parseval) H * W * (number of values) / 12.
    rounding = images.shape[1] * images.shape[2] * images.size / 12
    assert before > 100 * rounding and after < rounding
    assert high_energy(lowpass(images, 0.5 * np.sqrt(2)), 0.0) == pytest.approx(high_energy(images, 0.0), rel=1e-3)


def test_transplant_of_a_lowpass_family_is_that_lowpass():
    """A family whose fakes are the reals low-passed has a ratio of ~0 above the radius and ~1 below it, so its
    transplant onto the same reals gives the low-passed reals back (to rounding)."""
    reals = photos(n=8)
    fakes = lowpass(reals, 0.25)
    transplanted = apply_ratio(reals, magnitude_ratio(fakes, reals))
    assert np.abs(transplanted.astype(int) - fakes.astype(int)).max() <= 2
    assert not np.array_equal(transplanted, reals)


def test_transplant_matches_the_mean_magnitude_of_the_fakes():
    reals, fakes = photos(n=10, seed=1), photos(n=10, seed=2)[:, :, ::-1]
    transplanted = apply_ratio(reals, magnitude_ratio(fakes, reals))
    mean_abs = lambda x: np.abs(np.fft.fft2(x.astype(np.float64), axes=(1, 2))).mean(axis=0)  # noqa: E731
    got, want = mean_abs(transplanted)[1:, 1:], mean_abs(fakes)[1:, 1:]
    assert np.median(np.abs(got - want) / want) < 0.05  # clipping and rounding to uint8 only


def test_resample_nearest_repeats_each_pixel_in_2x2_blocks():
    out = resample(photos(n=2), UPSAMPLERS["nearest"])
    assert np.array_equal(out[:, 0::2, 0::2], out[:, 1::2, 1::2])
    assert np.array_equal(out[:, 0::2, 0::2], out[:, 0::2, 1::2])


def test_distinct_drops_repeated_images():
    images = photos(n=3)
    assert len(distinct([images[0], images[1], images[0], images[2], images[1]])) == 3


def test_probes_cli_on_the_small_benchmark(small_dataset: Path, tmp_path: Path):
    torch.manual_seed(0)
    metadata = DetectorMetadata(
        backbone="efficientnet_lite0", input_size=SIZE, fft_stage=FFTStageConfig(masks=0), threshold=Threshold(0.45)
    )
    checkpoint = save_checkpoint(Detector(metadata, pretrained=True), tmp_path / "ckpt")
    out = tmp_path / "probes"
    assert main(["--checkpoint", str(checkpoint), "--data", str(small_dataset), "--out", str(out)]) == 0
    report = json.loads((out / PROBES_JSON).read_text())
    table = (out / PROBES_MD).read_text()
    rows = {(r["probe"], r["family"]): r for r in report["rows"]}
    assert report["threshold"] == 0.45
    assert {f for _, f in rows if f} == set(ALL_FAMILIES)
    for name in ("reals", "lowpass 0.25", "lowpass 0.35", *(f"resample {u}" for u in UPSAMPLERS)):
        assert (name, None) in rows and f"| {name} |" in table
    for row in report["rows"]:
        assert 0.0 <= row["flagged"] <= 1.0 and row["n"] > 0
        assert (row["ap_vs_reals"] is None) == (row["probe"] == "reals")

    # The "fakes" rows are the evaluation's own per-family AP and decisions, computed here by the evaluation path.
    dataset = RealFakeDataset(small_dataset, "testing", SIZE, train=False)
    pred = predict(load_detector(checkpoint), dataset, batch_size=32, device=torch.device("cpu"))
    probs = pred.probs
    generators = np.array(pred.generators)
    for family in ALL_FAMILIES:
        mine = generators == family
        fakes = rows[("fakes", family)]
        assert fakes["ap_vs_reals"] == pytest.approx(average_precision_score(pred.labels[mine], probs[mine]), abs=1e-4)
        n = int((mine & (pred.labels == 1)).sum())
        # Batches differ between the two paths (rounding ~1e-6): an image on the threshold may fall either side.
        assert fakes["n"] == n
        assert fakes["flagged"] == pytest.approx(np.mean(probs[mine & (pred.labels == 1)] >= 0.45), abs=1.01 / n)
