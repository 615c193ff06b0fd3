"""Orthonormal 2-D transforms for training-time masking (DCT-II, Haar) and the coefficient bands of every transform.

Transforms act on the last two axes of a real tensor (..., H, W) as matrix products ``T_h @ x @ T_w^T`` with
constant orthonormal matrices, so ``inverse(forward(x)) == x`` to rounding and the coefficient energy equals the
pixel energy (Parseval). The FFT itself comes from ``torch.fft`` (``training.fft_stage.masked_fft_torch``).

- **DCT**: the orthonormal DCT-II, ``C[k, j] = s_k cos(pi (2j + 1) k / 2n)`` with ``s_0 = sqrt(1/n)`` and
  ``s_k = sqrt(2/n)``. Coefficient ``k`` oscillates at ``k / 2n`` cycles/pixel, index 0 is the mean.
- **Haar**: one level of the orthonormal Haar transform, ``a_i = (x_2i + x_2i+1) / sqrt 2`` (first half of the
  output) and ``d_i = (x_2i - x_2i+1) / sqrt 2`` (second half). In 2-D the coefficients sit in the layout of
  ``pywt.coeffs_to_array`` (the authors' code): ``[[LL, LH], [HL, HH]]``, where the first letter is the filter
  along the height and the second along the width (LH: low vertical, high horizontal frequencies). Height and
  width must be even.

Bands (``Band.LOW`` / ``MID`` / ``HIGH`` / ``ALL``), by layout:

========== ========================================= ============================================================
transform  ``radial`` (default)                      ``legacy`` (the authors' slices, same for every transform)
========== ========================================= ============================================================
fft        ``core.fft.band_region``: radius of the   low ``[0:H/4, 0:W/4]`` (the corner of the unshifted spectrum
           unshifted spectrum, 1 = Nyquist;          that holds DC and the lowest positive frequencies), mid
           low <= 0.25 < mid <= 0.5 < high           ``[H/4:3H/4, W/4:3W/4]`` (the centre of the unshifted
                                                     spectrum: the HIGHEST frequencies), high ``[3H/4:, 3W/4:]``
                                                     (the corner of the lowest negative frequencies)
dct        index radius ``sqrt((k/H)^2 + (l/W)^2)``  same slices: here low really is the lowest DCT frequencies,
           (1 = Nyquist), same edges as fft          mid the middle ones and high the highest
wavelet    low = LL, mid = LH + HL, high = HH        same slices of the ``[[LL, LH], [HL, HH]]`` array: low is a
           (shares 25 / 50 / 25 %)                   quarter of LL, high a quarter of HH, mid straddles all four
========== ========================================= ============================================================

``all`` is every coefficient in both layouts. Bands of one layout are disjoint.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from fmdetect.core.fft import BAND_EDGES, band_region
from fmdetect.core.metadata import Band

# --------------------------------------------------------------------------------------------------- matrices


def dct_matrix(n: int) -> np.ndarray:
    """Orthonormal n-point DCT-II matrix, float64: ``coefficients = C @ signal``."""
    k = np.arange(n)[:, None]
    j = np.arange(n)[None, :]
    matrix = np.cos(np.pi * (2 * j + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    matrix[0] /= np.sqrt(2.0)
    return matrix


def haar_matrix(n: int) -> np.ndarray:
    """Orthonormal one-level n-point Haar analysis matrix, float64: averages first, then differences."""
    if n % 2:
        raise ValueError(f"the Haar transform needs an even size, got {n}")
    half = n // 2
    matrix = np.zeros((n, n))
    rows = np.arange(half)
    s = 1.0 / np.sqrt(2.0)
    matrix[rows, 2 * rows] = s
    matrix[rows, 2 * rows + 1] = s
    matrix[half + rows, 2 * rows] = s
    matrix[half + rows, 2 * rows + 1] = -s
    return matrix


_BUILDERS = {"dct": dct_matrix, "haar": haar_matrix}


@functools.lru_cache(maxsize=32)
def _cached_matrix(name: str, n: int, device: str, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(_BUILDERS[name](n)).to(device=device, dtype=dtype)


def transform_matrix(name: str, n: int, device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    """The ``dct`` or ``haar`` matrix of size n as a tensor, cached per (size, device, dtype)."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown transform {name!r}; choose from {sorted(_BUILDERS)}")
    return _cached_matrix(name, int(n), str(torch.device(device)), dtype)


def _separable(x: torch.Tensor, name: str, inverse: bool) -> torch.Tensor:
    """``T_h x T_w^T`` (forward) or ``T_h^T x T_w`` (inverse) on the last two axes."""
    t_h = transform_matrix(name, x.shape[-2], x.device, x.dtype)
    t_w = transform_matrix(name, x.shape[-1], x.device, x.dtype)
    if inverse:
        return t_h.T @ x @ t_w
    return t_h @ x @ t_w.T


def dct2(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal 2-D DCT-II of the last two axes."""
    return _separable(x, "dct", inverse=False)


def idct2(coefficients: torch.Tensor) -> torch.Tensor:
    """Inverse of ``dct2`` (the orthonormal DCT-III)."""
    return _separable(coefficients, "dct", inverse=True)


def haar2(x: torch.Tensor) -> torch.Tensor:
    """One-level orthonormal 2-D Haar transform of the last two axes, layout ``[[LL, LH], [HL, HH]]``."""
    return _separable(x, "haar", inverse=False)


def ihaar2(coefficients: torch.Tensor) -> torch.Tensor:
    """Inverse of ``haar2``."""
    return _separable(coefficients, "haar", inverse=True)


# ------------------------------------------------------------------------------------------------------ bands


def dct_band_region(height: int, width: int, band: Band | str) -> np.ndarray:
    """Boolean (height, width) map of the DCT coefficients of ``band`` by index radius (1 = Nyquist)."""
    lo, hi = BAND_EDGES[Band(band)]
    rho = np.sqrt((np.arange(height)[:, None] / height) ** 2 + (np.arange(width)[None, :] / width) ** 2)
    return (rho > lo) & (rho <= hi)


def haar_band_region(height: int, width: int, band: Band | str) -> np.ndarray:
    """Boolean (height, width) map of the Haar sub-bands of ``band``: LL low, LH + HL mid, HH high."""
    band = Band(band)
    if height % 2 or width % 2:
        raise ValueError(f"the Haar transform needs even sizes, got {height}x{width}")
    low_rows = (np.arange(height) < height // 2)[:, None]
    low_cols = (np.arange(width) < width // 2)[None, :]
    if band is Band.ALL:
        return np.ones((height, width), dtype=bool)
    if band is Band.LOW:
        return low_rows & low_cols
    if band is Band.HIGH:
        return ~low_rows & ~low_cols
    return low_rows ^ low_cols


def legacy_band_region(height: int, width: int, band: Band | str) -> np.ndarray:
    """The authors' rectangle of ``band`` in any coefficient array (see the module table)."""
    band = Band(band)
    slices = {
        Band.LOW: (slice(0, height // 4), slice(0, width // 4)),
        Band.MID: (slice(height // 4, 3 * height // 4), slice(width // 4, 3 * width // 4)),
        Band.HIGH: (slice(3 * height // 4, height), slice(3 * width // 4, width)),
        Band.ALL: (slice(0, height), slice(0, width)),
    }[band]
    region = np.zeros((height, width), dtype=bool)
    region[slices] = True
    return region


RADIAL_REGIONS = {"fft": band_region, "dct": dct_band_region, "haar": haar_band_region}


def coefficient_region(transform: str, height: int, width: int, band: Band | str, legacy: bool = False) -> np.ndarray:
    """Boolean (height, width) map of ``band`` among the coefficients of ``transform`` (fft, dct or haar)."""
    if transform not in RADIAL_REGIONS:
        raise ValueError(f"unknown transform {transform!r}; choose from {sorted(RADIAL_REGIONS)}")
    if legacy:
        return legacy_band_region(height, width, band)
    return RADIAL_REGIONS[transform](height, width, band)
