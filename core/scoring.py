"""Outputs of the detector: logit -> ``prob_fake`` -> decision at the calibrated threshold."""

from __future__ import annotations

import numpy as np


def sigmoid(logit: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function, float32."""
    logit = np.asarray(logit, dtype=np.float64)
    out = np.empty_like(logit)
    pos = logit >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-logit[pos]))
    ez = np.exp(logit[~pos])
    out[~pos] = ez / (1.0 + ez)
    return out.astype(np.float32)


def decide(prob_fake: np.ndarray, threshold: float) -> np.ndarray:
    """``prob_fake >= threshold`` as bool."""
    return np.asarray(prob_fake) >= threshold
