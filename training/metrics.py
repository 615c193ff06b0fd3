"""Detection metrics of real/fake scores, overall and per generator; probability calibration.

Labels are 0 (real) and 1 (fake); scores are ``prob_fake``. Every metric is a fraction in [0, 1] (tables may
print percentages, the numbers never are), and NaN where it is undefined (AP, AUC and TPR at FPR need both
classes; ``real_acc`` needs real images, ``fake_acc`` fake ones).

An image is called fake when ``prob_fake >= threshold`` (the rule of ``core.scoring.decide``).

- ``ap``: average precision, ``sum_n (R_n - R_{n-1}) P_n`` over the distinct scores (scikit-learn's
  ``average_precision_score``: no interpolation).
- ``auc``: area under the ROC curve, ties counted as half (scikit-learn's ``roc_auc_score``).
- ``acc`` / ``real_acc`` / ``fake_acc``: accuracy at 0.5 over all, real and fake images.
- ``acc_calibrated`` (and ``real_acc_calibrated`` / ``fake_acc_calibrated``): the same at the checkpoint's
  calibrated threshold.
- ``tpr_at_fpr_1`` / ``tpr_at_fpr_5``: the fraction of fakes detected at the most sensitive operating point
  whose false-positive rate on the reals is at most 1 % (5 %). Among all thresholds t with
  ``count(real >= t) <= floor(target * n_real)``, take the one with the largest FPR, i.e. the lowest such t
  (the largest threshold would call nothing fake), and report its TPR. This is the ROC point with the largest
  FPR not above the target (``tpr[searchsorted(fpr, target, "right") - 1]`` on scikit-learn's ``roc_curve``);
  no interpolation between ROC points.
- mean row: the unweighted mean over generators of each metric (undefined values left out), as the field
  reports it; ``n`` is the total.

Calibration: ``expected_calibration_error`` (positive-class reliability, equal-width bins on ``prob_fake``) and
``fit_temperature`` (temperature scaling of the logit by minimal negative log-likelihood).

Example::

    table, mean = per_generator(probs, labels, generators, threshold=0.37)
    print(mean["ap"], table["ae_nearest"]["tpr_at_fpr_5"])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from fmdetect.core.scoring import decide

TPR_AT_FPR_TARGETS = {"tpr_at_fpr_1": 0.01, "tpr_at_fpr_5": 0.05}
ECE_BINS = 15
NAN = float("nan")


def _inputs(probs: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probs, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel()
    if p.shape != y.shape:
        raise ValueError(f"{p.size} scores but {y.size} labels")
    if not np.all(np.isfinite(p)):
        raise ValueError("scores hold NaN or infinite values")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("labels must be 0 (real) or 1 (fake)")
    return p, y.astype(np.int64)


def _both_classes(y: np.ndarray) -> bool:
    return bool(y.size and y.min() == 0 and y.max() == 1)


def _cumulative_counts(p: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positives, true positives, threshold) at each distinct score, thresholds descending."""
    order = np.argsort(-p, kind="mergesort")
    p, y = p[order], y[order]
    last_of_value = np.r_[np.flatnonzero(np.diff(p)), p.size - 1]
    tps = np.cumsum(y)[last_of_value]
    fps = (last_of_value + 1) - tps
    return fps, tps, p[last_of_value]


def roc_curve(
    probs: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) at every distinct score, from (0, 0) at threshold +inf; needs both classes."""
    p, y = _inputs(probs, labels)
    if not _both_classes(y):
        raise ValueError("a ROC curve needs real and fake images")
    fps, tps, thresholds = _cumulative_counts(p, y)
    fps, tps = np.r_[0, fps], np.r_[0, tps]
    return fps / fps[-1], tps / tps[-1], np.r_[np.inf, thresholds]


def precision_recall_curve(
    probs: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, thresholds) at every distinct score, thresholds descending; needs fakes."""
    p, y = _inputs(probs, labels)
    if not y.any():
        raise ValueError("a precision-recall curve needs fake images")
    fps, tps, thresholds = _cumulative_counts(p, y)
    return tps / (tps + fps), tps / tps[-1], thresholds


def average_precision(probs: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Average precision (no interpolation); NaN unless both classes are present."""
    p, y = _inputs(probs, labels)
    if not _both_classes(y):
        return NAN
    precision, recall, _ = precision_recall_curve(p, y)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def roc_auc(probs: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Area under the ROC curve (trapezoids, i.e. ties count half); NaN unless both classes are present."""
    p, y = _inputs(probs, labels)
    if not _both_classes(y):
        return NAN
    fpr, tpr, _ = roc_curve(p, y)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def tpr_at_fpr(probs: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray, target_fpr: float) -> float:
    """TPR at the lowest threshold whose FPR on the reals is at most ``target_fpr`` (see the module docstring).

    At most ``floor(target_fpr * n_real)`` real images may score at or above the threshold, the count rule of
    ``training.calibration.threshold_at_fpr``. NaN unless both classes are present.
    """
    if not 0.0 <= target_fpr <= 1.0:
        raise ValueError(f"target_fpr must be in [0, 1], got {target_fpr}")
    p, y = _inputs(probs, labels)
    if not _both_classes(y):
        return NAN
    fps, tps, _ = _cumulative_counts(p, y)
    n_real, n_fake = int((y == 0).sum()), int(y.sum())
    allowed = math.floor(target_fpr * n_real + 1e-9)
    within = np.flatnonzero(fps <= allowed)  # fps grows as the threshold falls
    return float(tps[within[-1]] / n_fake) if within.size else 0.0


def accuracies(
    probs: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray, threshold: float
) -> tuple[float, float, float]:
    """(overall, real, fake) accuracy at ``threshold``; NaN for a class that is absent."""
    p, y = _inputs(probs, labels)
    if p.size == 0:
        return NAN, NAN, NAN
    pred = decide(p, threshold)
    real, fake = y == 0, y == 1
    overall = float(np.mean(pred == fake))
    real_acc = float(np.mean(~pred[real])) if real.any() else NAN
    fake_acc = float(np.mean(pred[fake])) if fake.any() else NAN
    return overall, real_acc, fake_acc


def binary_metrics(
    probs: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray, threshold: float = 0.5
) -> dict[str, float]:
    """Accuracy (overall, on real, on fake) at ``threshold``, AP and ROC AUC."""
    acc, real_acc, fake_acc = accuracies(probs, labels, threshold)
    return {
        "acc": acc,
        "real_acc": real_acc,
        "fake_acc": fake_acc,
        "ap": average_precision(probs, labels),
        "auc": roc_auc(probs, labels),
    }


def detection_metrics(
    probs: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray, threshold: float
) -> dict[str, float | int]:
    """The evaluation's full set: AP, AUC, accuracies at 0.5 and at ``threshold``, TPR at 1 % / 5 % FPR, counts."""
    p, y = _inputs(probs, labels)
    metrics: dict[str, float | int] = dict(binary_metrics(p, y, 0.5))
    acc, real_acc, fake_acc = accuracies(p, y, threshold)
    metrics.update(acc_calibrated=acc, real_acc_calibrated=real_acc, fake_acc_calibrated=fake_acc)
    for key, target in TPR_AT_FPR_TARGETS.items():
        metrics[key] = tpr_at_fpr(p, y, target)
    metrics.update(n=int(y.size), n_real=int((y == 0).sum()), n_fake=int(y.sum()))
    return metrics


def mean_row(rows: Sequence[dict[str, float | int]]) -> dict[str, float | int]:
    """Unweighted mean over rows of every float metric (NaN left out); integer counts are summed."""
    if not rows:
        raise ValueError("no rows to average")
    out: dict[str, float | int] = {}
    for key in rows[0]:
        values = [row[key] for row in rows]
        if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
            out[key] = int(sum(values))
            continue
        finite = [float(v) for v in values if not math.isnan(float(v))]
        out[key] = float(np.mean(finite)) if finite else NAN
    return out


def per_generator(
    probs: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray, generators: Sequence[str], threshold: float
) -> tuple[dict[str, dict[str, float | int]], dict[str, float | int]]:
    """``detection_metrics`` of each generator (sorted by name) and their mean row."""
    p, y = _inputs(probs, labels)
    names = np.asarray(generators)
    if names.shape != p.shape:
        raise ValueError(f"{p.size} scores but {names.size} generator names")
    table = {str(g): detection_metrics(p[names == g], y[names == g], threshold) for g in sorted(set(names.tolist()))}
    return table, mean_row(list(table.values()))


# ------------------------------------------------------------------------------------------------- calibration


def expected_calibration_error(
    probs: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray, bins: int = ECE_BINS
) -> float:
    """``sum_b |B_b|/n * |mean(label in B_b) - mean(prob_fake in B_b)|`` over equal-width bins of prob_fake.

    This is the reliability of the fake class (bin ``b`` holds ``prob_fake`` in ``[b/bins, (b+1)/bins)``, the
    last bin closed at 1).
    """
    p, y = _inputs(probs, labels)
    if p.size == 0:
        return NAN
    index = np.minimum((p * bins).astype(np.int64), bins - 1)
    count = np.bincount(index, minlength=bins)
    gap = np.abs(np.bincount(index, weights=y, minlength=bins) - np.bincount(index, weights=p, minlength=bins))
    return float(gap.sum() / p.size) if count.any() else NAN


def nll(logits: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray, temperature: float = 1.0) -> float:
    """Mean binary cross-entropy of ``sigmoid(logit / temperature)`` (numerically stable)."""
    z = np.asarray(logits, dtype=np.float64).ravel() / temperature
    _, y = _inputs(np.zeros_like(z), labels)
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def fit_temperature(
    logits: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray, bounds: tuple[float, float] = (1e-2, 1e2)
) -> float:
    """The temperature T in ``bounds`` that minimises ``nll(logits, labels, T)`` (bounded scalar search on log T).

    Temperature scaling is monotonic and keeps the sign of the logit: ranking (AP, AUC) and the decision at
    ``prob_fake = 0.5`` are unchanged; only the confidence of the probabilities moves.
    """
    from scipy.optimize import minimize_scalar

    z = np.asarray(logits, dtype=np.float64).ravel()
    _, y = _inputs(np.zeros_like(z), labels)
    if z.size == 0:
        raise ValueError("no logits to fit a temperature on")
    if not np.all(np.isfinite(z)):
        raise ValueError("logits hold NaN or infinite values")
    result = minimize_scalar(
        lambda log_t: nll(z, y, math.exp(log_t)),
        method="bounded",
        bounds=(math.log(bounds[0]), math.log(bounds[1])),
        options={"xatol": 1e-6},
    )
    temperature = float(math.exp(result.x))
    return temperature if nll(z, y, temperature) <= nll(z, y, 1.0) else 1.0


# ------------------------------------------------------------------------------------------------------- JSON


def json_safe(value: Any) -> Any:
    """NaN and infinities -> None, numpy scalars -> Python numbers, recursively, so the output is strict JSON."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
