"""Detector metadata: everything a stage needs to know about a checkpoint besides its weights.

A checkpoint is a directory holding ``model.safetensors`` (weights) and ``metadata.json`` (this). Input size,
normalisation, the FFT-stage configuration and the calibrated threshold travel here, so no stage carries them
as literals.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

METADATA_FILE = "metadata.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class CropPolicy(str, Enum):
    """How an image is brought to the input size.

    ``center``: the paper's test protocol (no resize; centre crop, zero-pad when smaller), with torchvision
    ``CenterCrop`` semantics.
    """

    CENTER = "center"


class Band(str, Enum):
    """Frequency bands of a mask, by radius in the centred spectrum (see ``core.fft.band_region``)."""

    ALL = "all"
    LOW = "low"
    MID = "mid"
    HIGH = "high"


def views_for(masks: int) -> int:
    """K, the views a detector scores per image: one per test-time mask, or the image itself with no masks."""
    return max(masks, 1)


@dataclass(frozen=True)
class FFTStageConfig:
    """Inference FFT stage: ``masks == 0`` skips it; ``masks == K`` averages the logits of K fixed masks.

    The K masks are regenerated deterministically from (band, ratio, per_channel, seed) by
    ``core.fft.inference_masks``, so every implementation and every stage sees the same masks.
    """

    masks: int = 0
    band: Band = Band.ALL
    ratio: float = 0.15
    per_channel: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "band", Band(self.band))
        if self.masks < 0:
            raise ValueError(f"fft_stage.masks must be >= 0, got {self.masks}")
        if not 0.0 <= self.ratio <= 1.0:
            raise ValueError(f"fft_stage.ratio must be in [0, 1], got {self.ratio}")

    @property
    def views(self) -> int:
        """K: the views the detector scores per image, one per mask, or the image itself when the stage is off."""
        return views_for(self.masks)


@dataclass(frozen=True)
class Coverage:
    """Which native-resolution windows of an image the detector scores, and how their logits become one.

    ``crops`` windows of the input size (``crop`` semantics each: no resize, zero-padded where the image is
    smaller): 1 is the centre window (the paper's test protocol); n * n (n >= 2) an n x n grid spread evenly from
    corner to corner; n * n + 1 that grid plus the centre window. The image's logit is the mean of its ``top_k``
    highest window logits: 1 is the max (one generated region flags the whole image), ``crops`` the plain mean.
    The windows travel stacked along the channel axis: an image is (3 * crops, H, W), window i in channels
    3i..3i+2 (``core.preprocess.stack_windows``).
    """

    crops: int = 1
    top_k: int = 1

    def __post_init__(self) -> None:
        if not is_valid_crop_count(self.crops):
            raise ValueError(
                f"coverage.crops must be 1, n*n or n*n + 1 (n >= 2), e.g. 1, 4, 5, 9, 10; got {self.crops}"
            )
        if not 1 <= self.top_k <= self.crops:
            raise ValueError(f"coverage.top_k must be in [1, crops = {self.crops}], got {self.top_k}")

    @property
    def channels(self) -> int:
        """Channels of one image as the detector graph takes it: 3 per window."""
        return 3 * self.crops


def grid_side(crops: int) -> int:
    """n of the n x n grid behind a crop count (1 for the centre window alone)."""
    return math.isqrt(crops)


def is_valid_crop_count(crops: int) -> bool:
    """1, n * n or n * n + 1 with n >= 2."""
    if isinstance(crops, bool) or not isinstance(crops, int) or crops < 1:
        return False
    n = grid_side(crops)
    return crops == n * n or (n >= 2 and crops == n * n + 1)


@dataclass(frozen=True)
class Threshold:
    """Decision threshold on ``prob_fake``; ``method`` says how it was chosen."""

    value: float = 0.5
    method: str = "uncalibrated"
    target_fpr: float | None = None


@dataclass(frozen=True)
class DetectorMetadata:
    """What a checkpoint means. Serialised as ``metadata.json`` beside the weights."""

    backbone: str
    input_size: tuple[int, int] = (224, 224)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    crop: CropPolicy = CropPolicy.CENTER
    fft_stage: FFTStageConfig = field(default_factory=FFTStageConfig)
    coverage: Coverage = field(default_factory=Coverage)
    threshold: Threshold = field(default_factory=Threshold)
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_size", tuple(int(v) for v in self.input_size))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        object.__setattr__(self, "crop", CropPolicy(self.crop))
        if isinstance(self.fft_stage, dict):
            object.__setattr__(self, "fft_stage", FFTStageConfig(**self.fft_stage))
        if isinstance(self.coverage, dict):
            object.__setattr__(self, "coverage", Coverage(**self.coverage))
        if isinstance(self.threshold, dict):
            object.__setattr__(self, "threshold", Threshold(**self.threshold))
        if len(self.input_size) != 2 or min(self.input_size) < 8:
            raise ValueError(f"input_size must be (height, width) >= 8, got {self.input_size}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("mean and std need 3 values each, std > 0")
        if self.format_version > FORMAT_VERSION:
            raise ValueError(f"metadata format {self.format_version} is newer than this software ({FORMAT_VERSION})")

    def with_updates(self, **changes: Any) -> DetectorMetadata:
        """A copy with some fields replaced."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        def plain(value: Any) -> Any:
            if isinstance(value, Enum):
                return value.value
            if isinstance(value, dict):
                return {k: plain(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return [plain(v) for v in value]
            return value

        return plain(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DetectorMetadata:
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown metadata fields {sorted(unknown)}; known: {sorted(known)}")
        return cls(**data)

    def save(self, checkpoint_dir: str | Path) -> Path:
        path = Path(checkpoint_dir) / METADATA_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, checkpoint_dir: str | Path) -> DetectorMetadata:
        path = Path(checkpoint_dir) / METADATA_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: a checkpoint is a directory holding {WEIGHTS_FILE} and {METADATA_FILE}"
            )
        return cls.from_dict(json.loads(path.read_text()))
