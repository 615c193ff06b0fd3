"""Decision thresholds calibrated on held-out real images.

An image is called fake when ``prob_fake >= threshold``. ``threshold_at_fpr`` picks the lowest threshold whose
false-positive rate on held-out REAL images is at most the target, i.e. the most sensitive detector that keeps
that promise on the calibration set. 0.5 is not calibrated: on unseen generators a detector can rank well (high
AP) and still call almost everything real at 0.5.

Example::

    threshold = threshold_at_fpr(val_real_probs, target_fpr=0.05)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

logger = logging.getLogger(__name__)


def _as_probs(probs: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    values = np.asarray(probs, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{name} holds NaN or infinite values")
    return values


def false_positive_rate(real_probs: Sequence[float] | np.ndarray, threshold: float) -> float:
    """Fraction of real images called fake (``prob >= threshold``)."""
    values = _as_probs(real_probs, "real_probs")
    return float(np.mean(values >= threshold))


def threshold_at_fpr(real_probs: Sequence[float] | np.ndarray, target_fpr: float) -> float:
    """The lowest threshold t with ``mean(real_probs >= t) <= target_fpr``.

    At most ``m = floor(target_fpr * n)`` of the n real images may score at or above t. t is chosen among the
    observed real scores: the smallest score s with ``count(real_probs >= s) <= m``.

    Tie rule: tied scores are never split. If admitting a score would admit more than m images because several
    real images share it, t moves above that score, so the achieved false-positive rate can be below the target.
    When no observed score qualifies (``m == 0``, or the top score alone is tied too often), t is the next float
    above the highest real score: no calibration image is called fake. t can exceed 1 in that case.

    Raises:
        ValueError: empty or non-finite scores, or ``target_fpr`` outside [0, 1].
    """
    values = _as_probs(real_probs, "real_probs")
    if not 0.0 <= target_fpr <= 1.0 or math.isnan(target_fpr):
        raise ValueError(f"target_fpr must be in [0, 1], got {target_fpr}")
    allowed = math.floor(target_fpr * values.size + 1e-9)
    unique, counts = np.unique(values, return_counts=True)  # ascending
    at_or_above = np.cumsum(counts[::-1])[::-1]  # at_or_above[i] = count(values >= unique[i])
    ok = np.flatnonzero(at_or_above <= allowed)
    if ok.size == 0:
        threshold = float(np.nextafter(unique[-1], np.inf))
    else:
        threshold = float(unique[ok[0]])
    logger.debug(
        "threshold %.6g: real FPR %.4f (target %.4f, n=%d)",
        threshold,
        np.mean(values >= threshold),
        target_fpr,
        values.size,
    )
    return threshold
