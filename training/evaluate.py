"""Evaluate a checkpoint on a test split, per generator and on average, with the paper's test protocol.

One process over the whole split (the authors' ``test.py`` ran a ``DistributedSampler`` and wrote the metrics of
rank 0 only, i.e. of one shard). Test protocol: decode, no resize, centre crop to the input size with torchvision
``CenterCrop`` semantics (zero padding when smaller; ``core.preprocess.center_crop_or_pad``; or the windows of the
checkpoint's multi-crop coverage, ``core.preprocess.crop_windows``, aggregated inside the model), then the model
(``x / 255``, ImageNet normalisation from the checkpoint metadata, FFT stage, backbone). Generators are the folders
below the split (``testing/<generator>/{0_real,1_fake}`` or ``testing/<generator>/<category>/{0_real,1_fake}``).

Outputs in ``OUT``:

- ``metrics.json``: ``generators`` (per generator: ap, acc, acc_calibrated, real_acc, fake_acc, auc,
  tpr_at_fpr_1, tpr_at_fpr_5, n, ...; see ``training.metrics``), ``mean`` (unweighted over generators),
  ``threshold`` (the checkpoint's calibrated threshold), and with the options below ``test_time_masking``,
  ``robustness`` and ``calibration``. All metrics are fractions in [0, 1]; undefined ones are null.
- ``scores.csv`` (``path,generator,label,prob_fake``), ``metrics.md`` (tables, in percent), ``config.json``
  (the resolved configuration), ``pr_curves.png`` and ``roc_curves.png`` (one curve per generator) and, with
  ``--robustness``, ``robustness.png``.

Options:

- ``--masks 0,1,4,8``: test-time masking. The checkpoint's weights with K fixed inference masks
  (``core.fft.inference_masks`` of a metadata copy with ``fft_stage.masks = K``; same band, ratio and seed):
  mean AP, accuracy at 0.5 and at the checkpoint's threshold (calibrated for the checkpoint's own K), and the
  model's cost in ms per image (median of 5 timed forward passes of one batch after a warm-up pass, incl. the
  host-to-device copy, decoding excluded; on a shared CPU the figure moves with the machine's load).
- ``--crops 1,5,9``: coverage. The checkpoint's weights scoring C windows per image (``core.metadata.Coverage``;
  ``C:K`` for the mean of the top K window logits, max by default): mean AP, TPR at 5 % FPR, the share of reals
  called fake at the checkpoint's threshold (calibrated for its own coverage: recalibrate before serving another)
  and the cost per image, as for ``--masks``.
- ``--robustness``: the test images are JPEG re-compressed (quality 95..30), downscaled (factor 1.0..0.5,
  bilinear with antialiasing) or Gaussian-blurred (sigma 0..3, PIL) after decoding and before the test transform;
  mean and per-generator AP and calibrated accuracy per level.
- ``--calibration-split validation``: temperature scaling as an alternative to the FPR-calibrated threshold. A
  temperature T is fitted on that split's logits by minimal NLL; ECE and NLL before and after are reported on it
  and on the test split (``calibration.fit`` / ``calibration.test``), with the decision threshold it implies
  (0.5 on ``prob_fake``: temperature scaling keeps the sign of the logit). Serving is unchanged: the threshold in
  the metadata stays the FPR-calibrated one.

Example::

    python -m training.evaluate --checkpoint runs/small/checkpoint --data data/offline --out runs/small/eval
    python -m training.evaluate --checkpoint CKPT --data data/offline --out OUT --masks 0,1,4,8 --robustness \\
        --calibration-split validation
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFilter
from torch.utils.data import Dataset

from fmdetect.core.metadata import Coverage, DetectorMetadata
from fmdetect.core.preprocess import decode_image
from fmdetect.core.scoring import sigmoid
from fmdetect.training import metrics as M
from fmdetect.training.benchmark.summary import benchmark_summary, load_manifest
from fmdetect.training.benchmark.summary import markdown as benchmark_markdown
from fmdetect.training.checkpoint import load_detector, with_coverage, with_masks
from fmdetect.training.data import RealFakeDataset
from fmdetect.training.distributed import resolve_device
from fmdetect.training.model import Detector
from fmdetect.training.steps import Predictions, predict

logger = logging.getLogger(__name__)

METRICS_JSON = "metrics.json"
METRICS_MD = "metrics.md"
SCORES_CSV = "scores.csv"
CONFIG_JSON = "config.json"
PR_PNG = "pr_curves.png"
ROC_PNG = "roc_curves.png"
ROBUSTNESS_PNG = "robustness.png"

JPEG_QUALITIES = (95, 90, 80, 75, 70, 60, 50, 40, 30)
SCALES = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)
BLUR_SIGMAS = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0)
TIMING_REPEATS = 5


class Distortion(str, Enum):
    """Degradations of the robustness sweep; the level is a JPEG quality, a scale factor or a blur sigma."""

    JPEG = "jpeg"
    SCALE = "scale"
    BLUR = "blur"


@dataclass(frozen=True)
class Perturbation:
    """One degradation at one level, applied to an HxWx3 uint8 image (picklable, for DataLoader workers)."""

    kind: Distortion
    level: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", Distortion(self.kind))
        if self.kind is Distortion.JPEG and not 1 <= self.level <= 100:
            raise ValueError(f"JPEG quality must be in [1, 100], got {self.level}")
        if self.kind is Distortion.SCALE and not 0 < self.level <= 1:
            raise ValueError(f"downscale factor must be in (0, 1], got {self.level}")
        if self.kind is Distortion.BLUR and self.level < 0:
            raise ValueError(f"blur sigma must be >= 0, got {self.level}")

    @property
    def is_identity(self) -> bool:
        return (self.kind is Distortion.SCALE and self.level == 1.0) or (
            self.kind is Distortion.BLUR and self.level == 0.0
        )

    def __call__(self, img: np.ndarray) -> np.ndarray:
        if self.is_identity:
            return img
        pil = Image.fromarray(img)
        if self.kind is Distortion.JPEG:
            buf = io.BytesIO()
            pil.save(buf, format="JPEG", quality=int(self.level))
            return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
        if self.kind is Distortion.SCALE:
            size = (max(1, round(pil.width * self.level)), max(1, round(pil.height * self.level)))
            return np.asarray(pil.resize(size, Image.Resampling.BILINEAR))
        return np.asarray(pil.filter(ImageFilter.GaussianBlur(radius=float(self.level))))


class EvalImages(Dataset):
    """The items of an evaluation ``RealFakeDataset``, optionally degraded between decoding and the centre crop."""

    def __init__(self, base: RealFakeDataset, perturbation: Perturbation | None = None) -> None:
        if base.train:
            raise ValueError("evaluation needs a dataset built with train=False")
        self.base = base
        self.perturbation = perturbation

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        if self.perturbation is None:
            return self.base[index]
        sample = self.base.samples[index]
        img = self.base.model_input(self.perturbation(decode_image(sample.path.read_bytes())))
        return torch.from_numpy(img), torch.tensor(float(sample.label)), sample.generator


@dataclass(frozen=True)
class EvalConfig:
    """Resolved evaluation configuration; written to ``OUT/config.json``."""

    checkpoint: Path
    data: Path
    out: Path
    split: str | None = "testing"
    batch_size: int = 64
    masks: tuple[int, ...] = ()
    coverages: tuple[Coverage, ...] = ()
    robustness: bool = False
    jpeg_qualities: tuple[int, ...] = JPEG_QUALITIES
    scales: tuple[float, ...] = SCALES
    blur_sigmas: tuple[float, ...] = BLUR_SIGMAS
    calibration_split: str | None = None
    plots: bool = True
    workers: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        for name in ("checkpoint", "data", "out"):
            object.__setattr__(self, name, Path(getattr(self, name)))
        object.__setattr__(self, "split", self.split or None)
        object.__setattr__(self, "calibration_split", self.calibration_split or None)
        object.__setattr__(self, "masks", tuple(int(k) for k in self.masks))
        object.__setattr__(
            self, "coverages", tuple(c if isinstance(c, Coverage) else parse_coverage(str(c)) for c in self.coverages)
        )
        if self.batch_size < 1 or self.workers < 0:
            raise ValueError("batch_size must be >= 1 and workers >= 0")
        if any(k < 0 for k in self.masks):
            raise ValueError(f"--masks takes counts >= 0, got {list(self.masks)}")
        for kind, levels in self.sweeps().items():
            for level in levels:
                Perturbation(kind, level)  # raises on a level out of range

    def sweeps(self) -> dict[Distortion, tuple[float, ...]]:
        return {
            Distortion.JPEG: tuple(float(q) for q in self.jpeg_qualities),
            Distortion.SCALE: self.scales,
            Distortion.BLUR: self.blur_sigmas,
        }

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["coverages"] = [f"{c.crops}:{c.top_k}" for c in self.coverages]
        return {k: str(v) if isinstance(v, Path) else v for k, v in data.items()}


def parse_coverage(text: str) -> Coverage:
    """``"9"`` -> 9 windows, max; ``"9:3"`` -> 9 windows, mean of the top 3 (``core.metadata.Coverage``)."""
    crops, _, top_k = text.partition(":")
    try:
        return Coverage(crops=int(crops), top_k=int(top_k) if top_k else 1)
    except ValueError as exc:
        raise ValueError(f"--crops takes CROPS or CROPS:TOP_K, e.g. 1,5,9,9:3; {text!r}: {exc}") from None


# ------------------------------------------------------------------------------------------------- inference


def summarise(pred: Predictions, threshold: float) -> dict[str, Any]:
    """``{"generators": {...}, "mean": {...}}`` of ``training.metrics.per_generator``."""
    table, mean = M.per_generator(pred.probs, pred.labels, pred.generators, threshold)
    return {"generators": table, "mean": mean}


@torch.no_grad()
def model_cost_ms(model: Detector, images: torch.Tensor, device: torch.device, repeats: int = TIMING_REPEATS) -> float:
    """Median over ``repeats`` timed forward passes of one batch (after one warm-up pass), in ms per image.

    Includes the host-to-device copy, excludes decoding; synchronised on CUDA.
    """
    model.eval()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda *_: None)
    model(images.to(device))
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        model(images.to(device))
        sync(device)
        times.append(time.perf_counter() - t0)
    return 1000.0 * float(np.median(times)) / images.shape[0]


def masking_sweep(
    model: Detector,
    dataset: RealFakeDataset,
    counts: tuple[int, ...],
    config: EvalConfig,
    threshold: float,
    device: torch.device,
) -> list[dict[str, Any]]:
    """AP, accuracies and cost (ms per image, ``model_cost_ms`` on the first batch) for every K of ``counts``."""
    timing_batch = torch.stack([dataset[i][0] for i in range(min(config.batch_size, len(dataset)))])
    rows = []
    for k in counts:
        variant = with_masks(model, k)
        pred = predict(variant, dataset, config.batch_size, device, config.workers, desc=f"masks={k}")
        mean = summarise(pred, threshold)["mean"]
        cost = model_cost_ms(variant, timing_batch, device)
        rows.append(
            {
                "masks": k,
                "ap": mean["ap"],
                "auc": mean["auc"],
                "acc": mean["acc"],
                "acc_calibrated": mean["acc_calibrated"],
                "ms_per_image": cost,
                "timing_batch": timing_batch.shape[0],
            }
        )
        logger.info(
            "masks=%d: AP %.4f, calibrated acc %.4f, %.2f ms/image", k, mean["ap"], mean["acc_calibrated"], cost
        )
    base = next((r["ms_per_image"] for r in rows if r["masks"] == 0), None)
    for row in rows:
        row["relative_cost"] = row["ms_per_image"] / base if base else None
    return rows


def coverage_sweep(model: Detector, config: EvalConfig, threshold: float, device: torch.device) -> list[dict[str, Any]]:
    """Per coverage of ``config.coverages``: AP, accuracies, the share of reals called fake at the checkpoint's
    threshold (calibrated for its own coverage) and the model's cost per image (all windows)."""
    rows = []
    size = model.metadata.input_size
    for coverage in config.coverages:
        dataset = RealFakeDataset(config.data, config.split, size, train=False, crops=coverage.crops)
        variant = with_coverage(model, coverage)
        pred = predict(
            variant,
            dataset,
            config.batch_size,
            device,
            config.workers,
            desc=f"crops={coverage.crops} top {coverage.top_k}",
        )
        mean = summarise(pred, threshold)["mean"]
        timing_batch = torch.stack([dataset[i][0] for i in range(min(config.batch_size, len(dataset)))])
        cost = model_cost_ms(variant, timing_batch, device)
        reals = pred.labels == 0
        rows.append(
            {
                "crops": coverage.crops,
                "top_k": coverage.top_k,
                "ap": mean["ap"],
                "auc": mean["auc"],
                "acc_calibrated": mean["acc_calibrated"],
                "tpr_at_fpr_5": mean["tpr_at_fpr_5"],
                "real_fpr_at_threshold": float(np.mean(pred.probs[reals] >= threshold)) if reals.any() else None,
                "generators": {g: m["ap"] for g, m in summarise(pred, threshold)["generators"].items()},
                "ms_per_image": cost,
                "timing_batch": timing_batch.shape[0],
            }
        )
        logger.info(
            "crops=%d top %d: AP %.4f, TPR@5%%FPR %.4f, %.2f ms/image",
            coverage.crops,
            coverage.top_k,
            mean["ap"],
            mean["tpr_at_fpr_5"],
            cost,
        )
    base = next((r["ms_per_image"] for r in rows if r["crops"] == 1), None)
    for row in rows:
        row["relative_cost"] = row["ms_per_image"] / base if base else None
    return rows


def robustness_sweep(
    model: Detector,
    dataset: RealFakeDataset,
    config: EvalConfig,
    threshold: float,
    device: torch.device,
    clean: Predictions,
) -> dict[str, list[dict[str, Any]]]:
    """Per degradation and level: mean and per-generator AP and calibrated accuracy."""
    out: dict[str, list[dict[str, Any]]] = {}
    for kind, levels in config.sweeps().items():
        out[kind.value] = []
        for level in levels:
            perturbation = Perturbation(kind, level)
            pred = (
                clean
                if perturbation.is_identity
                else predict(
                    model,
                    EvalImages(dataset, perturbation),
                    config.batch_size,
                    device,
                    config.workers,
                    desc=f"{kind.value}={level:g}",
                )
            )
            summary = summarise(pred, threshold)
            out[kind.value].append(
                {
                    "level": level,
                    "ap": summary["mean"]["ap"],
                    "acc_calibrated": summary["mean"]["acc_calibrated"],
                    "generators": {
                        g: {"ap": m["ap"], "acc_calibrated": m["acc_calibrated"]}
                        for g, m in summary["generators"].items()
                    },
                }
            )
            logger.info(
                "%s %g: AP %.4f, calibrated acc %.4f",
                kind.value,
                level,
                summary["mean"]["ap"],
                summary["mean"]["acc_calibrated"],
            )
    return out


def temperature_calibration(
    model: Detector, config: EvalConfig, device: torch.device, test: Predictions, metadata: DetectorMetadata
) -> dict[str, Any]:
    """Fit a temperature on ``config.calibration_split``; ECE/NLL before and after on it and on the test split."""
    assert config.calibration_split is not None
    dataset = RealFakeDataset(
        config.data, config.calibration_split, metadata.input_size, train=False, crops=metadata.coverage.crops
    )
    val = predict(model, dataset, config.batch_size, device, config.workers, desc=config.calibration_split)
    temperature = M.fit_temperature(val.logits, val.labels)

    def scores(pred: Predictions) -> dict[str, float]:
        scaled = sigmoid(pred.logits.astype(np.float64) / temperature).astype(np.float64)
        return {
            "nll_before": M.nll(pred.logits, pred.labels),
            "nll_after": M.nll(pred.logits, pred.labels, temperature),
            "ece_before": M.expected_calibration_error(pred.probs, pred.labels),
            "ece_after": M.expected_calibration_error(scaled, pred.labels),
            "n": len(pred.labels),
        }

    t = metadata.threshold.value
    t_scaled = float(sigmoid(np.array([math.log(t / (1 - t)) / temperature]))[0]) if 0 < t < 1 else t
    report = {
        "method": "temperature scaling (minimal NLL)",
        "split": config.calibration_split,
        "temperature": temperature,
        "ece_bins": M.ECE_BINS,
        "fit": scores(val),
        "test": scores(test),
        # sigmoid(logit / T) >= 0.5  <=>  logit >= 0  <=>  prob_fake >= 0.5, for any T > 0.
        "implied_threshold": 0.5,
        "fpr_threshold": t,
        "fpr_threshold_temperature_scaled": t_scaled,
        "note": (
            "temperature scaling changes confidence, not ranking or the decision at 0.5: the threshold it "
            "implies on prob_fake is 0.5. Serving keeps the FPR-calibrated threshold of the metadata."
        ),
    }
    logger.info(
        "temperature %.4g on %s: ECE %.4f -> %.4f (test %.4f -> %.4f)",
        temperature,
        config.calibration_split,
        report["fit"]["ece_before"],
        report["fit"]["ece_after"],
        report["test"]["ece_before"],
        report["test"]["ece_after"],
    )
    return report


# --------------------------------------------------------------------------------------------------- outputs


def write_scores(path: Path, pred: Predictions) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "generator", "label", "prob_fake"])
        for row in zip(pred.paths, pred.generators, pred.labels.tolist(), pred.probs.tolist(), strict=True):
            writer.writerow(row)


def _pct(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{100.0 * value:.2f}"


def markdown_report(report: dict[str, Any], title: str) -> str:
    """The tables of ``metrics.json`` in markdown, metrics in percent."""
    t = report["threshold"]
    lines = [
        f"# {title}",
        "",
        f"Calibrated threshold {t:.6g} ({report['threshold_method']}). Metrics in %; mean = unweighted mean "
        "over generators.",
        "",
        "| generator | n | AP | AUC | acc@0.5 | real acc@0.5 | fake acc@0.5 | acc@thr | real acc@thr "
        "| fake acc@thr | TPR@1%FPR | TPR@5%FPR |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    keys = (
        "ap",
        "auc",
        "acc",
        "real_acc",
        "fake_acc",
        "acc_calibrated",
        "real_acc_calibrated",
        "fake_acc_calibrated",
        "tpr_at_fpr_1",
        "tpr_at_fpr_5",
    )
    rows = [*report["generators"].items(), ("**mean**", report["mean"])]
    for name, m in rows:
        lines.append(f"| {name} | {m['n']} | " + " | ".join(_pct(m[k]) for k in keys) + " |")
    if "benchmark" in report:
        lines += benchmark_markdown(report["benchmark"])
    if "test_time_masking" in report:
        lines += [
            "",
            "## Test-time masking",
            "",
            "| masks K | AP | AUC | acc@0.5 | acc@thr | ms / image | relative cost |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in report["test_time_masking"]:
            rel = "n/a" if r["relative_cost"] is None else f"{r['relative_cost']:.2f}x"
            lines.append(
                f"| {r['masks']} | {_pct(r['ap'])} | {_pct(r['auc'])} | {_pct(r['acc'])} | "
                f"{_pct(r['acc_calibrated'])} | {r['ms_per_image']:.3f} | {rel} |"
            )
    if "coverage" in report:
        lines += [
            "",
            "## Coverage (windows per image)",
            "",
            "| crops | top k | AP | TPR@5%FPR | reals called fake at thr | ms / image | relative cost |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in report["coverage"]:
            rel = "n/a" if r["relative_cost"] is None else f"{r['relative_cost']:.2f}x"
            lines.append(
                f"| {r['crops']} | {r['top_k']} | {_pct(r['ap'])} | {_pct(r['tpr_at_fpr_5'])} | "
                f"{_pct(r['real_fpr_at_threshold'])} | {r['ms_per_image']:.3f} | {rel} |"
            )
    if "robustness" in report:
        lines += [
            "",
            "## Robustness (mean over generators)",
            "",
            "| degradation | level | AP | acc@thr |",
            "| --- | ---: | ---: | ---: |",
        ]
        for kind, levels in report["robustness"].items():
            for r in levels:
                lines.append(f"| {kind} | {r['level']:g} | {_pct(r['ap'])} | {_pct(r['acc_calibrated'])} |")
    if "calibration" in report:
        c = report["calibration"]
        lines += [
            "",
            "## Temperature scaling",
            "",
            f"T = {c['temperature']:.4g}, fitted on `{c['split']}` by minimal NLL; ECE with {c['ece_bins']} "
            "equal-width bins of prob_fake.",
            "",
            "| split | n | NLL before | NLL after | ECE before (%) | ECE after (%) |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for split, s in ((c["split"], c["fit"]), ("test", c["test"])):
            lines.append(
                f"| {split} | {s['n']} | {s['nll_before']:.4f} | {s['nll_after']:.4f} | "
                f"{_pct(s['ece_before'])} | {_pct(s['ece_after'])} |"
            )
        lines += [
            "",
            f"Implied decision threshold on prob_fake: {c['implied_threshold']}; the FPR-calibrated "
            f"threshold {c['fpr_threshold']:.6g} reads {c['fpr_threshold_temperature_scaled']:.6g} on the "
            f"temperature-scaled scale. {c['note']}",
        ]
    return "\n".join(lines) + "\n"


def plot_curves(out: Path, pred: Predictions) -> list[Path]:
    """``pr_curves.png`` and ``roc_curves.png``: one curve per generator (generators with both classes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = np.asarray(pred.generators)
    probs = pred.probs
    fig_pr, ax_pr = plt.subplots(figsize=(6, 5))
    fig_roc, ax_roc = plt.subplots(figsize=(6, 5))
    for g in sorted(set(pred.generators)):
        p, y = probs[names == g], pred.labels[names == g]
        if y.min() == y.max():
            continue
        precision, recall, _ = M.precision_recall_curve(p, y)
        ax_pr.step(
            np.r_[0.0, recall],
            np.r_[precision[0], precision],
            where="pre",
            label=f"{g} (AP {M.average_precision(p, y):.3f})",
        )
        fpr, tpr, _ = M.roc_curve(p, y)
        ax_roc.plot(fpr, tpr, label=f"{g} (AUC {M.roc_auc(p, y):.3f})")
    ax_pr.set(xlabel="recall", ylabel="precision", title="Precision-recall per generator", xlim=(0, 1), ylim=(0, 1.02))
    ax_roc.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    for fpr_mark in (0.01, 0.05):
        ax_roc.axvline(fpr_mark, color="grey", lw=0.6, ls="--")
    ax_roc.set(
        xlabel="false-positive rate (reals called fake)",
        ylabel="true-positive rate (fakes detected)",
        title="ROC per generator",
        xlim=(0, 1),
        ylim=(0, 1.02),
    )
    paths = []
    for fig, ax, name in ((fig_pr, ax_pr, PR_PNG), (fig_roc, ax_roc, ROC_PNG)):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left" if name == PR_PNG else "lower right")
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
        paths.append(out / name)
    return paths


def plot_robustness(path: Path, robustness: dict[str, list[dict[str, Any]]]) -> Path:
    """One panel per degradation: mean AP and calibrated accuracy (bold), per-generator AP (thin)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {"jpeg": "JPEG quality", "scale": "downscale factor", "blur": "Gaussian blur sigma"}
    fig, axes = plt.subplots(1, len(robustness), figsize=(5 * len(robustness), 4), squeeze=False)
    for ax, (kind, rows) in zip(axes[0], robustness.items(), strict=True):
        levels = [r["level"] for r in rows]
        for g in rows[0]["generators"]:
            ax.plot(levels, [r["generators"][g]["ap"] for r in rows], lw=0.8, alpha=0.5, label=f"AP {g}")
        ax.plot(levels, [r["ap"] for r in rows], "o-", lw=2, color="black", label="AP (mean)")
        ax.plot(levels, [r["acc_calibrated"] for r in rows], "s--", lw=2, color="tab:red", label="acc@thr (mean)")
        ax.set(xlabel=labels.get(kind, kind), ylim=(0, 1.02), title=kind)
        if kind in ("jpeg", "scale"):
            ax.invert_xaxis()  # degradation grows to the right
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("fraction")
    axes[0][-1].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------------- run


def evaluate(config: EvalConfig) -> dict[str, Any]:
    """Run the evaluation and write every output into ``config.out``; returns ``metrics.json``'s content."""
    device = resolve_device(config.device)
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    model = load_detector(config.checkpoint).to(device)
    metadata = model.metadata
    (out / CONFIG_JSON).write_text(
        json.dumps(
            {
                "evaluation": config.to_dict(),
                "checkpoint_metadata": {
                    k: v for k, v in metadata.to_dict().items() if k not in ("training", "metrics")
                },
            },
            indent=2,
        )
        + "\n"
    )
    threshold = float(metadata.threshold.value)
    dataset = RealFakeDataset(
        config.data, config.split, metadata.input_size, train=False, crops=metadata.coverage.crops
    )
    logger.info(
        "evaluating %s (%s, input %s, %d test-time masks) on %s: %d images, generators %s",
        config.checkpoint,
        metadata.backbone,
        metadata.input_size,
        metadata.fft_stage.masks,
        dataset.root,
        len(dataset),
        ", ".join(dataset.generators),
    )

    pred = predict(model, dataset, config.batch_size, device, config.workers, desc="test")
    summary = summarise(pred, threshold)
    report: dict[str, Any] = {
        **summary,
        "threshold": threshold,
        "threshold_method": metadata.threshold.method,
        "target_fpr": metadata.threshold.target_fpr,
        "test_time_masks": metadata.fft_stage.masks,
    }
    mean = summary["mean"]
    logger.info(
        "mean over %d generators: AP %.4f, AUC %.4f, acc@0.5 %.4f, acc@%.4g %.4f, TPR@5%%FPR %.4f",
        len(summary["generators"]),
        mean["ap"],
        mean["auc"],
        mean["acc"],
        threshold,
        mean["acc_calibrated"],
        mean["tpr_at_fpr_5"],
    )
    write_scores(out / SCORES_CSV, pred)

    manifest = load_manifest(config.data)
    if manifest is not None:
        report["benchmark"] = benchmark_summary(
            pred.probs, pred.labels, pred.paths, config.data, threshold, summary["generators"], manifest
        )
    if config.masks:
        report["test_time_masking"] = masking_sweep(model, dataset, config.masks, config, threshold, device)
    if config.coverages:
        report["coverage"] = coverage_sweep(model, config, threshold, device)
    if config.robustness:
        report["robustness"] = robustness_sweep(model, dataset, config, threshold, device, pred)
    if config.calibration_split:
        report["calibration"] = temperature_calibration(model, config, device, pred, metadata)

    report = M.json_safe(report)
    (out / METRICS_JSON).write_text(json.dumps(report, indent=2) + "\n")
    title = f"Evaluation of `{config.checkpoint}` on `{dataset.root}`"
    (out / METRICS_MD).write_text(markdown_report(report, title))
    if config.plots:
        plot_curves(out, pred)
        if "robustness" in report:
            plot_robustness(out / ROBUSTNESS_PNG, report["robustness"])
    logger.info("wrote %s", out)
    return report


# ------------------------------------------------------------------------------------------------------- CLI


def _numbers(kind: type, values: list[str]) -> tuple:
    """``["0,1", "4", "8"]`` -> ``(0, 1, 4, 8)``: comma-separated and space-separated both work."""
    items = [v for value in values for v in value.split(",") if v.strip()]
    try:
        return tuple(kind(v) for v in items)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {kind.__name__} values, got {values}") from None


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.evaluate",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--checkpoint", required=True, type=Path, help="checkpoint directory (model.safetensors + metadata.json)"
    )
    parser.add_argument("--data", required=True, type=Path, help="dataset root (Wang layout: testing/<generator>/)")
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument(
        "--split", default="testing", help="split folder under --data; '' evaluates --data itself (Ojha layout)"
    )
    parser.add_argument("--batch-size", type=int, default=64, help="batch size")
    parser.add_argument(
        "--masks",
        nargs="+",
        default=[],
        metavar="K",
        help="test-time masking sweep: mask counts, e.g. '0,1,4,8' or '0 1 4 8'",
    )
    parser.add_argument(
        "--crops",
        nargs="+",
        default=[],
        metavar="C[:TOP_K]",
        help="coverage sweep: windows per image and the top-k rule, e.g. '1,5,9' (max) or '9:3'",
    )
    parser.add_argument(
        "--robustness", action="store_true", help="sweep JPEG quality, downscaling and Gaussian blur of the test images"
    )
    parser.add_argument(
        "--jpeg-qualities",
        nargs="+",
        default=[",".join(map(str, JPEG_QUALITIES))],
        help="JPEG qualities of the robustness sweep",
    )
    parser.add_argument(
        "--scales",
        nargs="+",
        default=[",".join(map(str, SCALES))],
        help="downscale factors (0, 1] of the robustness sweep",
    )
    parser.add_argument(
        "--blur-sigmas",
        nargs="+",
        default=[",".join(map(str, BLUR_SIGMAS))],
        help="Gaussian blur sigmas of the robustness sweep",
    )
    parser.add_argument(
        "--calibration-split",
        default=None,
        help="fit a temperature on this split (e.g. validation) and report ECE before/after",
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--device", default="auto", help="torch device: auto, cpu, cuda, cuda:1, ...")
    return parser


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    return EvalConfig(
        checkpoint=args.checkpoint,
        data=args.data,
        out=args.out,
        split=args.split,
        batch_size=args.batch_size,
        masks=_numbers(int, args.masks),
        coverages=_numbers(parse_coverage, args.crops),
        robustness=args.robustness,
        jpeg_qualities=_numbers(int, args.jpeg_qualities),
        scales=_numbers(float, args.scales),
        blur_sigmas=_numbers(float, args.blur_sigmas),
        calibration_split=args.calibration_split,
        plots=not args.no_plots,
        workers=args.workers,
        device=args.device,
    )


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = config_from_args(args)
    except (ValueError, argparse.ArgumentTypeError) as exc:
        parser.error(str(exc))
    try:
        report = evaluate(config)
    except (ValueError, FileNotFoundError) as exc:
        logger.error("%s", exc)
        return 2
    print(json.dumps({"out": str(config.out), "threshold": report["threshold"], "mean": report["mean"]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
