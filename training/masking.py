"""Training-time masking augmentations, generated and applied in batches on the training device.

Every kind zeroes an exact number of randomly chosen elements of a representation of the image and maps back:

========== =========================================================================================== ========
kind       what is zeroed                                                                              count
========== =========================================================================================== ========
none       nothing
frequency  coefficients of the orthonormal 2-D FFT (the paper's method), ``y = Re(iFFT2(M * FFT2(x)))`` per band
dct        coefficients of the orthonormal 2-D DCT-II (the authors' journal extension)                 per band
wavelet    coefficients of a one-level orthonormal 2-D Haar transform (journal extension)              per band
pixel      pixels (all channels at one position, unless ``per_channel``)                               image
patch      square patches of ``patch_size`` px on a grid (the largest size <= ``patch_size`` that      grid
           divides height and width, as the authors do); the masked area is exactly count * size^2
========== =========================================================================================== ========

Bands (``band``: ``low``, ``mid``, ``high``, ``all`` or a combination such as ``low+mid`` or ``low+mid+high``)
are defined per transform in ``training.spectral`` (table there). With ``layout="radial"`` (default) the fft bands
are ``core.fft.band_region`` (true spatial frequency: the radius of the unshifted spectrum), the same definition
as the test-time masks of the exported model; dct bands use the analogous index radius; wavelet bands are the
sub-bands (low LL, mid LH + HL, high HH). ``layout="legacy"`` uses the authors' rectangles for every transform:
low ``[0:H/4, 0:W/4]``, mid ``[H/4:3H/4, W/4:3W/4]``, high ``[3H/4:, 3W/4:]``. On the unshifted FFT, their mid is
the HIGHEST frequencies and their low and high are the two corners of conjugate low frequencies.

Counts are exact: each band of a combination zeroes ``round(ratio * n_band)`` of its own coefficients (legacy:
``ceil``, as the authors), so a combination zeroes the sum over its (disjoint) bands, all inside their union.
Pixel masking zeroes ``round(ratio * H * W)`` positions; patch masking ``round(ratio * n_patches)`` patches.
``per_channel`` draws an independent mask per colour channel instead of one for all three (the authors: one).
``probability`` is the fraction of samples that are masked; the others pass unchanged.

Domain: ``MaskDomain.NORMALISED`` (default) masks the normalised tensor, the same place as the exported model's
test-time FFT masks; a zeroed pixel or patch then takes the normalisation mean (a neutral grey).
``MaskDomain.PIXELS`` masks the 0..255 pixels (a zeroed pixel is black) and rounds and clips the result to
0..255; ``MaskDomain.PIXELS_WRAP`` reproduces the authors' cast ``.astype(np.uint8)`` without clipping:
truncation toward zero, then modulo 256, so negative values wrap to bright ones. Only for exact reproduction.

``rotate`` (max degrees) and ``translate`` (max fraction of the size, whole pixels) add a random rotation and
translation of every sample after masking (bilinear, zero fill), as the authors' ``--combine_aug``.

Example::

    spec = MaskSpec(kind=MaskKind.FREQUENCY, band="low+mid", ratio=0.15)
    masked = spec.apply(model.normalise(images), generator=torch.Generator().manual_seed(0))
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from enum import Enum

import numpy as np
import torch
import torch.nn.functional as F

from fmdetect.core.fft import masked_count
from fmdetect.core.metadata import Band
from fmdetect.training.fft_stage import masked_fft_torch
from fmdetect.training.spectral import coefficient_region, dct2, haar2, idct2, ihaar2

logger = logging.getLogger(__name__)


class MaskKind(str, Enum):
    """Masking augmentations (see the module table)."""

    NONE = "none"
    FREQUENCY = "frequency"
    DCT = "dct"
    WAVELET = "wavelet"
    PIXEL = "pixel"
    PATCH = "patch"


class BandLayout(str, Enum):
    """``radial``: bands by frequency (``training.spectral``); ``legacy``: the authors' rectangles."""

    RADIAL = "radial"
    LEGACY = "legacy"


class MaskDomain(str, Enum):
    """Where masking happens: the normalised tensor, or 0..255 pixels clipped / wrapped back to 0..255."""

    NORMALISED = "normalised"
    PIXELS = "pixels"
    PIXELS_WRAP = "pixels-wrap"


TRANSFORMS = {MaskKind.FREQUENCY: "fft", MaskKind.DCT: "dct", MaskKind.WAVELET: "haar"}
BAND_ORDER = (Band.LOW, Band.MID, Band.HIGH)


def parse_bands(band: Band | str) -> tuple[Band, ...]:
    """``"low+mid"`` -> ``(Band.LOW, Band.MID)``; ``"all"`` -> ``(Band.ALL,)``. Order-free, no repeats."""
    value = band.value if isinstance(band, Band) else str(band)
    names = [part.strip() for part in value.lower().split("+")]
    valid = [b.value for b in Band]
    unknown = [n for n in names if n not in valid]
    if unknown or not names:
        raise ValueError(f"unknown band {value!r}: use one of {valid} or a '+' combination such as 'low+mid'")
    bands = {Band(n) for n in names}
    if Band.ALL in bands and len(bands) > 1:
        raise ValueError(f"band {value!r}: 'all' already holds every coefficient, combine only low/mid/high")
    if len(names) != len(bands):
        raise ValueError(f"band {value!r} names a band twice")
    return (Band.ALL,) if Band.ALL in bands else tuple(b for b in BAND_ORDER if b in bands)


def band_name(band: Band | str) -> str:
    """Canonical spelling of a band or combination, e.g. ``"mid+low"`` -> ``"low+mid"``."""
    return "+".join(b.value for b in parse_bands(band))


def mask_count(size: int, ratio: float, layout: BandLayout | str = BandLayout.RADIAL) -> int:
    """Elements zeroed among ``size``: ``round`` (``core.fft.masked_count``) or ``ceil`` for the legacy layout."""
    if BandLayout(layout) is BandLayout.LEGACY:
        return min(size, int(math.ceil(size * ratio)))
    return masked_count(np.ones(size, dtype=bool), ratio)


def band_regions(
    kind: MaskKind | str, height: int, width: int, band: Band | str, layout: BandLayout | str = BandLayout.RADIAL
) -> list[np.ndarray]:
    """The (height, width) boolean region of each band of ``band`` among the coefficients of ``kind``."""
    kind = MaskKind(kind)
    if kind not in TRANSFORMS:
        raise ValueError(f"mask kind {kind.value!r} has no frequency bands")
    legacy = BandLayout(layout) is BandLayout.LEGACY
    return [coefficient_region(TRANSFORMS[kind], height, width, b, legacy) for b in parse_bands(band)]


@functools.lru_cache(maxsize=64)
def _candidates(
    kind: MaskKind, height: int, width: int, band: str, layout: BandLayout, device: str
) -> tuple[torch.Tensor, ...]:
    """Flat indices of each band's elements on ``device``, cached: a training run asks for the same ones."""
    if kind in TRANSFORMS:
        regions = band_regions(kind, height, width, band, layout)
    else:
        regions = [np.ones((height, width), dtype=bool)]
    return tuple(torch.from_numpy(np.flatnonzero(r.ravel())).to(device) for r in regions)


def _keep_masks(
    kind: MaskKind,
    batch: int,
    channels: int,
    height: int,
    width: int,
    band: str,
    ratio: float,
    layout: BandLayout,
    generator: torch.Generator | None,
    device: torch.device | str,
) -> torch.Tensor:
    """Keep-masks (batch, channels, height, width): per band exactly ``mask_count(band size)`` zeros, the k
    lowest of uniform random scores among the band's elements."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must be in [0, 1], got {ratio}")
    device = torch.device(device)
    masks = torch.ones(batch, channels, height * width, device=device)
    for index in _candidates(kind, height, width, band_name(band), layout, str(device)):
        k = mask_count(index.numel(), ratio, layout)
        if k == 0:
            continue
        scores = torch.rand(batch, channels, index.numel(), generator=generator, device=device)
        chosen = torch.topk(scores, k, dim=-1, largest=False, sorted=False).indices
        masks.scatter_(-1, index[chosen], 0.0)
    return masks.reshape(batch, channels, height, width)


def frequency_masks(
    batch: int,
    height: int,
    width: int,
    band: Band | str = Band.ALL,
    ratio: float = 0.15,
    per_channel: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    layout: BandLayout | str = BandLayout.RADIAL,
) -> torch.Tensor:
    """FFT keep-masks (1 keep, 0 masked) of shape (batch, 3 if per_channel else 1, height, width).

    With one band and the radial layout each sample (and channel) zeroes exactly
    ``core.fft.masked_count(core.fft.band_region(height, width, band), ratio)`` coefficients of the band.

    Args:
        generator: source of randomness; must live on ``device`` (defaults to the generator's device).
    """
    return coefficient_masks(
        MaskKind.FREQUENCY, batch, height, width, band, ratio, per_channel, layout, generator=generator, device=device
    )


def patch_grid_size(height: int, width: int, patch_size: int) -> int:
    """The largest patch size <= ``patch_size`` that divides both ``height`` and ``width``."""
    size = max(1, min(patch_size, height, width))
    while height % size or width % size:
        size -= 1
    return size


def coefficient_masks(
    kind: MaskKind | str,
    batch: int,
    height: int,
    width: int,
    band: Band | str = Band.ALL,
    ratio: float = 0.15,
    per_channel: bool = False,
    layout: BandLayout | str = BandLayout.RADIAL,
    patch_size: int = 16,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Keep-masks (batch, 3 if per_channel else 1, height, width) of ``kind``, in its coefficient layout
    (transform coefficients for frequency / dct / wavelet, pixels for pixel / patch)."""
    kind, layout = MaskKind(kind), BandLayout(layout)
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    channels = 3 if per_channel else 1
    if kind in TRANSFORMS:
        return _keep_masks(kind, batch, channels, height, width, band, ratio, layout, generator, device)
    if parse_bands(band) != (Band.ALL,):
        raise ValueError(f"mask kind {kind.value!r} has no bands: use band 'all', got {band!r}")
    if kind is MaskKind.PIXEL:
        return _keep_masks(kind, batch, channels, height, width, "all", ratio, layout, generator, device)
    if kind is MaskKind.PATCH:
        size = patch_grid_size(height, width, patch_size)
        grid = _keep_masks(
            kind, batch, channels, height // size, width // size, "all", ratio, layout, generator, device
        )
        return grid.repeat_interleave(size, dim=-2).repeat_interleave(size, dim=-1)
    raise ValueError(f"mask kind {kind.value!r} makes no masks")


def apply_masks(x: torch.Tensor, masks: torch.Tensor, kind: MaskKind | str) -> torch.Tensor:
    """Mask a real (B, C, H, W) tensor with keep-masks (B, C|1, H, W) of ``kind``; computed in fp32."""
    kind = MaskKind(kind)
    with torch.autocast(x.device.type, enabled=False):
        xf = x.float()
        if kind is MaskKind.FREQUENCY:
            y = masked_fft_torch(xf, masks)
        elif kind is MaskKind.DCT:
            y = idct2(dct2(xf) * masks)
        elif kind is MaskKind.WAVELET:
            y = ihaar2(haar2(xf) * masks)
        elif kind in (MaskKind.PIXEL, MaskKind.PATCH):
            y = xf * masks
        else:
            raise ValueError(f"mask kind {kind.value!r} applies no masks")
    return y.to(x.dtype)


def random_affine(
    x: torch.Tensor, max_degrees: float, max_translate: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Rotate each sample by a uniform angle in [-max_degrees, max_degrees] about its centre, then shift it by
    whole pixels, uniform in [-max_translate, max_translate] times the size; bilinear, zero fill."""
    batch, _, height, width = x.shape
    device = x.device

    def uniform(limit: float) -> torch.Tensor:
        return (torch.rand(batch, generator=generator, device=device) * 2 - 1) * limit

    angle = torch.deg2rad(uniform(max_degrees)) if max_degrees > 0 else torch.zeros(batch, device=device)
    tx = torch.round(uniform(max_translate * width)) if max_translate > 0 else torch.zeros(batch, device=device)
    ty = torch.round(uniform(max_translate * height)) if max_translate > 0 else torch.zeros(batch, device=device)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # Output pixel offset p from the centre samples the input at R^-1 (p - t); in grid_sample's [-1, 1]
    # coordinates (align_corners=False) an offset of u pixels along the width is 2u / width.
    theta = torch.stack(
        [
            torch.stack([cos, sin * height / width, -2.0 / width * (cos * tx + sin * ty)], dim=-1),
            torch.stack([-sin * width / height, cos, 2.0 / height * (sin * tx - cos * ty)], dim=-1),
        ],
        dim=1,
    )
    with torch.autocast(device.type, enabled=False):
        grid = F.affine_grid(theta, [batch, x.shape[1], height, width], align_corners=False)
        y = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return y.to(x.dtype)


def to_pixels(x: torch.Tensor, domain: MaskDomain | str) -> torch.Tensor:
    """Bring masked 0..255 values back to 0..255 as the domain says (float, integral values)."""
    domain = MaskDomain(domain)
    if domain is MaskDomain.PIXELS:
        return x.round().clamp(0, 255)
    if domain is MaskDomain.PIXELS_WRAP:
        return torch.remainder(x.trunc(), 256.0)
    return x


@dataclass(frozen=True)
class MaskSpec:
    """A training-time masking augmentation (see the module docstring).

    Attributes:
        kind: which augmentation.
        band: band or '+' combination of the masked coefficients (frequency / dct / wavelet), e.g. "low+mid".
        ratio: fraction of each band's coefficients (of the pixels, of the patches) zeroed.
        per_channel: an independent mask per colour channel instead of one shared mask.
        probability: fraction of the samples of a batch that are masked (the others pass unchanged).
        layout: ``radial`` bands or the authors' ``legacy`` rectangles (and their ``ceil`` counts).
        patch_size: patch side in pixels (patch masking).
        rotate: maximum random rotation in degrees after masking (0: off).
        translate: maximum random translation as a fraction of the size after masking (0: off).
        domain: normalised tensor, or 0..255 pixels (clipped, or wrapped as the authors' uint8 cast).
    """

    kind: MaskKind = MaskKind.FREQUENCY
    band: str = Band.ALL.value
    ratio: float = 0.15
    per_channel: bool = False
    probability: float = 1.0
    layout: BandLayout = BandLayout.RADIAL
    patch_size: int = 16
    rotate: float = 0.0
    translate: float = 0.0
    domain: MaskDomain = MaskDomain.NORMALISED

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", MaskKind(self.kind))
        object.__setattr__(self, "band", band_name(self.band))
        object.__setattr__(self, "layout", BandLayout(self.layout))
        object.__setattr__(self, "domain", MaskDomain(self.domain))
        if not 0.0 <= self.ratio <= 1.0:
            raise ValueError(f"mask ratio must be in [0, 1], got {self.ratio}")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"mask probability must be in [0, 1], got {self.probability}")
        if self.patch_size < 1:
            raise ValueError(f"patch size must be >= 1, got {self.patch_size}")
        if self.rotate < 0 or not 0.0 <= self.translate <= 1.0:
            raise ValueError(
                f"rotate must be >= 0 degrees and translate in [0, 1], got {self.rotate}, {self.translate}"
            )
        if self.kind in (MaskKind.PIXEL, MaskKind.PATCH) and self.band != Band.ALL.value:
            raise ValueError(f"mask kind {self.kind.value!r} has no bands: use band 'all', got {self.band!r}")

    @property
    def masks_anything(self) -> bool:
        return self.kind is not MaskKind.NONE and self.probability > 0.0

    @property
    def is_identity(self) -> bool:
        """True when ``apply`` returns its input unchanged."""
        return not self.masks_anything and self.rotate == 0 and self.translate == 0

    def sample(
        self,
        batch: int,
        height: int,
        width: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor | None:
        """Keep-masks for one batch, (batch, C|1, height, width), or None when this spec masks nothing.

        Samples left unmasked by ``probability`` get all-ones masks.
        """
        if not self.masks_anything:
            return None
        masks = coefficient_masks(
            self.kind,
            batch,
            height,
            width,
            self.band,
            self.ratio,
            self.per_channel,
            self.layout,
            self.patch_size,
            generator,
            device,
        )
        if self.probability < 1.0:
            skip = torch.rand(batch, generator=generator, device=masks.device) >= self.probability
            masks[skip] = 1.0
        return masks

    def apply(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The augmented batch. ``x``: real (B, C, H, W), normalised or 0..255 pixels as ``domain`` says.

        Args:
            generator: source of randomness on ``x.device`` (the default generator when None).
        """
        if self.is_identity:
            return x
        batch, _, height, width = x.shape
        if self.masks_anything:
            masks = coefficient_masks(
                self.kind,
                batch,
                height,
                width,
                self.band,
                self.ratio,
                self.per_channel,
                self.layout,
                self.patch_size,
                generator,
                x.device,
            )
            masked = to_pixels(apply_masks(x, masks, self.kind), self.domain)
            if self.probability < 1.0:
                selected = torch.rand(batch, generator=generator, device=x.device) < self.probability
                masked = torch.where(selected[:, None, None, None], masked, x.to(masked.dtype))
            x = masked
        if self.rotate > 0 or self.translate > 0:
            x = random_affine(x, self.rotate, self.translate, generator)
        return x
