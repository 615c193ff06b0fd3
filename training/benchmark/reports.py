"""What ``dataset.json`` reports about a build: spectra per family and how far trivial detectors get.

Trivial detectors: a standardised logistic regression on ``TRIVIAL_FEATURES`` (file size, mean colour, per-channel
standard deviation, mean gradient magnitude) fitted on the training split, scored on each testing family, plus the
5-fold cross-validated AUC of the same detector fitted within each family (an upper bound of what such features can
do there). Near 0.5 means the label is not in the file's size, colour, contrast or sharpness.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fmdetect.training.data import FAKE_DIR, IMAGE_SUFFIXES, REAL_DIR, Split

TRIVIAL_FEATURES = ("file_bytes", "mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b", "mean_gradient")
SPECTRUM_BANDS = {"low": (0.0, 0.25), "mid": (0.25, 0.5), "high": (0.5, math.inf)}  # radius, 1 = Nyquist


def pixel_statistics(pixels: np.ndarray, file_bytes: int) -> np.ndarray:
    """``TRIVIAL_FEATURES`` of one HxWx3 uint8 image stored in ``file_bytes`` bytes."""
    values = pixels.astype(np.float64)
    grey = values.mean(axis=-1)
    gradient = np.abs(np.diff(grey, axis=1)).mean() + np.abs(np.diff(grey, axis=0)).mean()
    return np.array([file_bytes, *values.mean(axis=(0, 1)), *values.std(axis=(0, 1)), gradient])


def trivial_features(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        pixels = np.asarray(img.convert("RGB"))
    return pixel_statistics(pixels, path.stat().st_size)


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []


def features_of(out: Path, split: str, family: str) -> tuple[np.ndarray, np.ndarray]:
    rows, labels = [], []
    for label, folder in ((0, REAL_DIR), (1, FAKE_DIR)):
        for path in _images(out / split / family / folder):
            rows.append(trivial_features(path))
            labels.append(label)
    return np.array(rows), np.array(labels)


def trivial_detector_report(out: Path, train_family: str, test_families: Sequence[str], seed: int = 0) -> dict:
    """AUC / AP of the trivial detector per testing family, and its within-family cross-validated AUC."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score, roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def detector() -> Any:
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))

    x_train, y_train = features_of(out, Split.TRAINING.value, train_family)
    fitted = detector().fit(x_train, y_train)
    families = {}
    for family in test_families:
        x, y = features_of(out, Split.TESTING.value, family)
        score = fitted.predict_proba(x)[:, 1]
        entry = {
            "auc": round(float(roc_auc_score(y, score)), 3),
            "ap": round(float(average_precision_score(y, score)), 3),
            "within_family_cv_auc": None,
        }
        if np.bincount(y).min() >= 2:
            folds = StratifiedKFold(n_splits=min(5, int(np.bincount(y).min())), shuffle=True, random_state=seed)
            cv_score = cross_val_predict(detector(), x, y, cv=folds, method="predict_proba")[:, 1]
            entry["within_family_cv_auc"] = round(float(roc_auc_score(y, cv_score)), 3)
        families[family] = entry
    return {
        "features": list(TRIVIAL_FEATURES),
        "detector": f"standardised logistic regression fitted on training/{train_family}",
        "families": families,
    }


def match_reals(candidates: np.ndarray, fakes: np.ndarray) -> list[int]:
    """Indices of one candidate real per fake, without replacement, nearest in standardised pixel statistics
    (colour, contrast, log gradient): greedy over all pairs, closest first. Used where a generator's content
    cannot match the photos (the face DCGAN), so that colour, contrast and sharpness do not tell its fakes apart."""
    if len(candidates) < len(fakes):
        raise ValueError("need at least as many candidate crops as fakes")
    features = [np.stack([pixel_statistics(im, 1)[1:] for im in images]) for images in (candidates, fakes)]
    for f in features:
        f[:, -1] = np.log(np.maximum(f[:, -1], 1e-3))
    centre, scale = features[0].mean(axis=0), features[0].std(axis=0) + 1e-9
    cand, fake = ((f - centre) / scale for f in features)
    distance = ((fake[:, None, :] - cand[None, :, :]) ** 2).sum(axis=-1)
    chosen: dict[int, int] = {}
    used: set[int] = set()
    for flat in np.argsort(distance, axis=None, kind="stable"):
        i, j = divmod(int(flat), len(candidates))
        if i in chosen or j in used:
            continue
        chosen[i] = j
        used.add(j)
        if len(chosen) == len(fakes):
            break
    return [chosen[i] for i in range(len(fakes))]


def mean_log_spectrum(pixels: np.ndarray) -> np.ndarray:
    """Mean over images of 20 log10 |FFT| (dB) of the grey image (mean removed), unshifted, float64 (H, W)."""
    grey = pixels.astype(np.float64).mean(axis=-1)
    grey -= grey.mean(axis=(1, 2), keepdims=True)
    return (20.0 * np.log10(np.abs(np.fft.fft2(grey)) + 1e-3)).mean(axis=0)


def grid_peak_excess(spectrum_db: np.ndarray) -> float:
    """Mean over the grid frequencies (multiples of 1/4 cycle/pixel on both axes, DC left out) of the dB at the
    grid point minus the mean of its 8 neighbours: ~0 without periodic upsampling traces."""
    h, w = spectrum_db.shape
    excess = []
    for u in range(0, h, h // 4):
        for v in range(0, w, w // 4):
            if u == 0 and v == 0:
                continue
            ring = [spectrum_db[(u + du) % h, (v + dv) % w] for du in (-1, 0, 1) for dv in (-1, 0, 1) if du or dv]
            excess.append(spectrum_db[u, v] - float(np.mean(ring)))
    return float(np.mean(excess))


def spectrum_summary(real_db: np.ndarray, fake_db: np.ndarray) -> dict[str, Any]:
    """Grid-peak excess (dB) of real, fake and their difference; mean fake-minus-real dB per radial band."""
    h, w = real_db.shape
    fy, fx = np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(w), indexing="ij")
    radius = np.hypot(fy, fx) / 0.5
    diff = fake_db - real_db
    bands = {
        name: round(float(diff[(radius > lo) & (radius <= hi)].mean()), 3) for name, (lo, hi) in SPECTRUM_BANDS.items()
    }
    real_peak, fake_peak = grid_peak_excess(real_db), grid_peak_excess(fake_db)
    return {
        "grid_peak_excess_db": {
            "real": round(real_peak, 3),
            "fake": round(fake_peak, 3),
            "fake_minus_real": round(fake_peak - real_peak, 3),
        },
        "fake_minus_real_db_by_band": bands,
    }


def plot_spectra(path: Path, diffs: dict[str, np.ndarray], summaries: dict[str, dict[str, Any]]) -> None:
    """Per family, the mean centred log-spectrum of the fakes minus that of the reals (dB), in a grid."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib import pyplot as plt

    families = list(diffs)
    cols = min(5, len(families))
    rows = math.ceil(len(families) / cols)
    limit = max(float(np.percentile(np.abs(d), 99.5)) for d in diffs.values()) or 1.0
    fig, axes = plt.subplots(
        rows, cols, figsize=(2.8 * cols + 1.0, 3.0 * rows + 0.4), squeeze=False, layout="constrained"
    )
    image = None
    for ax, family in zip(axes.flat, families):
        h, w = diffs[family].shape
        image = ax.imshow(
            np.fft.fftshift(diffs[family]),
            cmap="RdBu_r",
            vmin=-limit,
            vmax=limit,
            extent=(-0.5, 0.5 - 1.0 / w, 0.5 - 1.0 / h, -0.5),
            interpolation="nearest",
        )
        peak = summaries[family]["grid_peak_excess_db"]["fake_minus_real"]
        high = summaries[family]["fake_minus_real_db_by_band"]["high"]
        ax.set_title(f"{family}\ngrid {peak:+.2f} dB, high band {high:+.1f} dB", fontsize=8)
        ax.set_xticks([-0.5, -0.25, 0, 0.25])
        ax.set_yticks([-0.5, -0.25, 0, 0.25])
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(families) :]:
        ax.axis("off")
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, aspect=20, label="fake - real, dB")
    fig.suptitle("mean log-magnitude spectrum, fake minus real (testing split, cycles/pixel)", fontsize=10)
    fig.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(fig)
