"""The FFT stage: its definition, its masks, and the numpy reference implementation.

Per channel, ``y = Re(iFFT2(M * FFT2(x)))`` with orthonormal scaling. Masks live in the *unshifted* spectrum
layout that ``np.fft.fft2`` returns. Bands are defined by true spatial frequency: the radius
``rho = sqrt(fy^2 + fx^2) / 0.5`` of a coefficient, with ``fy, fx`` in cycles/pixel from ``np.fft.fftfreq``
(``rho = 1`` is the Nyquist frequency along one axis, corners reach ``sqrt(2)``):

====== ===================== ==============================
band   radius                share of the coefficients
====== ===================== ==============================
low    rho <= 0.25           ~5 %
mid    0.25 < rho <= 0.5     ~15 %
high   rho > 0.5             ~80 %
all    every coefficient     100 %
====== ===================== ==============================

A mask zeroes exactly ``round(ratio * n_band)`` coefficients of its band. The other implementations (torch.fft,
DFT-as-MatMul, ONNX ``DFT``, CuPy) must agree with ``apply_fft_stage`` to 1e-4 in fp32.
"""

from __future__ import annotations

from enum import Enum

import numpy as np

from fmdetect.core.metadata import Band, FFTStageConfig
from fmdetect.core.names import IMAGE, MASKED


class FFTForm(str, Enum):
    """How the FFT stage is computed, one vocabulary from training to serving (``--fft-impl``).

    ``dft``: the FFT itself (``torch.fft`` in PyTorch, which exports to the ONNX ``DFT`` op: ONNX Runtime CPU,
    TensorRT >= 11.2). ``matmul``: the 2-D DFT as real matrix products with constant cos/sin matrices (plain
    ``MatMul`` nodes that every TensorRT takes, FP16-safe). ``external``: not in the detector at all; its input is
    ``MASKED`` (B, K, 3, H, W), normalised and masked by the gpu-cupy target's CuPy ``fft_stage``.
    """

    DFT = "dft"
    MATMUL = "matmul"
    EXTERNAL = "external"

    @property
    def torch_form(self) -> FFTForm:
        """The form a PyTorch model computes for this one (``external`` is scored against ``dft``)."""
        return FFTForm.MATMUL if self is FFTForm.MATMUL else FFTForm.DFT

    @property
    def input_name(self) -> str:
        """The detector graph's input: ``MASKED`` without the stage, ``IMAGE`` with it."""
        return MASKED if self is FFTForm.EXTERNAL else IMAGE


BAND_EDGES = {Band.LOW: (-1.0, 0.25), Band.MID: (0.25, 0.5), Band.HIGH: (0.5, np.inf), Band.ALL: (-1.0, np.inf)}


def radial_frequency(height: int, width: int) -> np.ndarray:
    """Radius of each coefficient of the unshifted spectrum, 1.0 = Nyquist along one axis."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.fftfreq(width)[None, :]
    return np.sqrt(fy**2 + fx**2) / 0.5


def band_region(height: int, width: int, band: Band | str) -> np.ndarray:
    """Boolean (height, width) map of the coefficients that belong to ``band``."""
    band = Band(band)
    lo, hi = BAND_EDGES[band]
    rho = radial_frequency(height, width)
    return (rho > lo) & (rho <= hi)


def masked_count(region: np.ndarray, ratio: float) -> int:
    """Exact number of coefficients a mask zeroes in a band region."""
    return int(round(ratio * int(region.sum())))


def random_mask(
    rng: np.random.Generator, height: int, width: int, band: Band | str, ratio: float, channels: int
) -> np.ndarray:
    """One keep-mask of shape (channels, height, width): 1.0 kept, 0.0 masked, exact count per channel."""
    region = band_region(height, width, band).ravel()
    candidates = np.flatnonzero(region)
    k = masked_count(region, ratio)
    mask = np.ones((channels, height * width), dtype=np.float32)
    for c in range(channels):
        mask[c, rng.choice(candidates, size=k, replace=False)] = 0.0
    return mask.reshape(channels, height, width)


def inference_masks(cfg: FFTStageConfig, height: int, width: int) -> np.ndarray | None:
    """The K fixed test-time masks of a checkpoint, shape (K, C, H, W) with C = 3 or 1; None when K = 0."""
    if cfg.masks == 0:
        return None
    rng = np.random.default_rng(cfg.seed)
    channels = 3 if cfg.per_channel else 1
    return np.stack([random_mask(rng, height, width, cfg.band, cfg.ratio, channels) for _ in range(cfg.masks)]).astype(
        np.float32
    )


def apply_fft_stage(x: np.ndarray, masks: np.ndarray | None) -> np.ndarray:
    """Reference FFT stage. ``x``: float (B, C, H, W); ``masks``: (K, C|1, H, W) or None.

    Returns:
        float32 (B, K, C, H, W); K = 1 and ``y = x`` when ``masks`` is None.
    """
    if masks is None:
        return x.astype(np.float32)[:, None]
    spectrum = np.fft.fft2(x.astype(np.float64), norm="ortho")
    masked = spectrum[:, None] * masks[None].astype(np.float64)
    return np.fft.ifft2(masked, norm="ortho").real.astype(np.float32)


def dft_matrices(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Ortho-scaled real and imaginary parts of the n-point DFT matrix, float64, both symmetric.

    ``F = cos + 1j * sin`` with ``F[j, k] = exp(-2j pi jk / n) / sqrt(n)``. The 1/sqrt(n) scaling keeps the
    DC term of a normalised image inside FP16 range.
    """
    jk = np.outer(np.arange(n), np.arange(n)) % n  # exact integer phase before the float conversion
    angle = 2.0 * np.pi * jk / n
    scale = 1.0 / np.sqrt(n)
    return np.cos(angle) * scale, -np.sin(angle) * scale
