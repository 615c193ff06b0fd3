"""Training-time masking augmentations, generated in batches on the training device.

Frequency masking (the paper's): per sample, zero exactly ``core.fft.masked_count(region, ratio)`` randomly
chosen coefficients inside ``core.fft.band_region(height, width, band)`` of the unshifted spectrum, the same
definition as the inference masks of ``core.fft``. The masks are applied by ``Detector.forward(train_masks=...)``.

Example::

    spec = MaskSpec(kind=MaskKind.FREQUENCY, band=Band.ALL, ratio=0.15)
    masks = spec.sample(batch=32, height=64, width=64, generator=torch.Generator().manual_seed(0))
    logits = model(images, train_masks=masks)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum

import torch

from core.fft import band_region, masked_count
from core.metadata import Band

logger = logging.getLogger(__name__)


class MaskKind(str, Enum):
    """Masking augmentations. ``none``: no masking; ``frequency``: the paper's spectral masking.

    Spatial kinds (pixel, patch) will join here.
    """

    NONE = "none"
    FREQUENCY = "frequency"


def frequency_masks(
    batch: int,
    height: int,
    width: int,
    band: Band | str = Band.ALL,
    ratio: float = 0.15,
    per_channel: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Random keep-masks (1 keep, 0 masked) of shape (batch, 3 if per_channel else 1, height, width).

    Each sample (and channel) zeroes exactly ``masked_count(band_region(height, width, band), ratio)``
    coefficients, all inside the band: the k lowest of uniform random scores, with +inf outside the band.

    Args:
        generator: source of randomness; must live on ``device`` (defaults to the generator's device).
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must be in [0, 1], got {ratio}")
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    region = torch.from_numpy(band_region(height, width, band).ravel()).to(device)
    k = masked_count(region.cpu().numpy(), ratio)
    channels = 3 if per_channel else 1
    masks = torch.ones(batch, channels, height * width, device=device)
    if k > 0:
        scores = torch.rand(batch, channels, height * width, generator=generator, device=device)
        scores = scores.masked_fill(~region, float("inf"))
        masked = torch.topk(scores, k, dim=-1, largest=False, sorted=False).indices
        masks.scatter_(-1, masked, 0.0)
    return masks.reshape(batch, channels, height, width)


@dataclass(frozen=True)
class MaskSpec:
    """A training-time masking augmentation.

    Attributes:
        kind: which augmentation.
        band: frequency band of the masked coefficients (frequency masking).
        ratio: fraction of the band's coefficients zeroed.
        per_channel: an independent mask per colour channel instead of one shared mask.
        probability: fraction of the samples of a batch that are masked (the rest get an all-ones mask).
    """

    kind: MaskKind = MaskKind.FREQUENCY
    band: Band = Band.ALL
    ratio: float = 0.15
    per_channel: bool = False
    probability: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", MaskKind(self.kind))
        object.__setattr__(self, "band", Band(self.band))
        if not 0.0 <= self.ratio <= 1.0:
            raise ValueError(f"mask ratio must be in [0, 1], got {self.ratio}")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"mask probability must be in [0, 1], got {self.probability}")

    def sample(
        self,
        batch: int,
        height: int,
        width: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor | None:
        """Masks for one batch, (batch, C|1, height, width), or None when this spec masks nothing."""
        if self.kind is MaskKind.NONE or self.probability == 0.0:
            return None
        masks = frequency_masks(batch, height, width, self.band, self.ratio, self.per_channel, generator, device)
        if self.probability < 1.0:
            skip = torch.rand(batch, generator=generator, device=masks.device) >= self.probability
            masks[skip] = 1.0
        return masks
