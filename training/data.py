"""Datasets of real/fake images in the layouts the field uses, with the paper's transforms.

Layouts (found by scanning for ``0_real`` / ``1_fake`` folders):

- Wang et al. CVPR 2020: ``ROOT/{training,validation,testing}/<generator>/{0_real,1_fake}`` (deeper nesting, as
  in ``testing/<generator>/<category>/{0_real,1_fake}``, is accepted too);
- Ojha et al. CVPR 2023: ``ROOT/<generator>/{0_real,1_fake}``.

The generator of an image is the first folder below the split (or below ROOT for Ojha). Items are
``(uint8 tensor (3, H, W), label float 0 real / 1 fake, generator name)``; images stay uint8 because the model
normalises.

Training transforms (Wang et al. / the paper): Gaussian blur with probability 0.1 (sigma uniform in [0, 3]) and
JPEG re-compression with probability 0.1 (quality uniform in [30, 100]), then a random crop to the input size
(zero-padded first when smaller) and a random horizontal flip. Evaluation: ``core.preprocess.center_crop_or_pad``
(the test protocol: no resize).

Example::

    train_set = RealFakeDataset("data/offline", split="training", image_size=64, train=True)
    image, label, generator = train_set[0]
"""

from __future__ import annotations

import io
import logging
from collections import Counter
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter
from torch.utils.data import Dataset

from fmdetect.core.preprocess import IMAGE_SUFFIXES, center_crop_or_pad, crop_windows, decode_image, stack_windows

logger = logging.getLogger(__name__)

REAL_DIR = "0_real"
FAKE_DIR = "1_fake"


class Split(str, Enum):
    """The three splits of the Wang et al. layout, named as their folders."""

    TRAINING = "training"
    VALIDATION = "validation"
    TESTING = "testing"


@dataclass(frozen=True)
class Sample:
    """One image file with its label (0 real, 1 fake) and generator name."""

    path: Path
    label: int
    generator: str


@dataclass(frozen=True)
class Augment:
    """Training augmentations; probabilities of 0 switch a step off."""

    blur_prob: float = 0.1
    blur_sigma: tuple[float, float] = (0.0, 3.0)
    jpeg_prob: float = 0.1
    jpeg_quality: tuple[int, int] = (30, 100)
    flip: bool = True


def scan_samples(root: str | Path, generators: tuple[str, ...] | None = None) -> list[Sample]:
    """Every image under a ``0_real`` or ``1_fake`` folder below ``root``, sorted by path.

    Args:
        root: a split folder of the Wang layout, or the root of the Ojha layout.
        generators: keep only these generators (first folder below ``root``); all when None.

    Raises:
        FileNotFoundError: ``root`` is missing or holds no labelled images.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory")
    samples = []
    for class_dir in sorted(p for p in root.rglob("*") if p.is_dir() and p.name in (REAL_DIR, FAKE_DIR)):
        rel = class_dir.relative_to(root).parts
        generator = rel[0] if len(rel) > 1 else root.name
        if generators is not None and generator not in generators:
            continue
        label = int(class_dir.name == FAKE_DIR)
        samples += [
            Sample(path, label, generator)
            for path in sorted(class_dir.iterdir())
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
        ]
    if not samples:
        raise FileNotFoundError(f"no images in {REAL_DIR}/ or {FAKE_DIR}/ folders under {root}. {layout_hint(root)}")
    return samples


EXPECTED_LAYOUT = (
    f"expected ROOT/<split>/[<generator>/]{{{REAL_DIR},{FAKE_DIR}}}/<images>, with splits training/ and "
    f"validation/ (and testing/ to evaluate): {REAL_DIR}/ holds real photos, {FAKE_DIR}/ generated ones"
)


def layout_hint(root: Path) -> str:
    """What the expected layout is, and what to change when ``root`` looks like a common other one."""
    names = {p.name.lower(): p.name for p in root.iterdir() if p.is_dir()} if root.is_dir() else {}
    hint = EXPECTED_LAYOUT
    if {"real", "fake"} & set(names):
        hint += (
            f". Found {sorted(names.values())}: rename real/ to {REAL_DIR}/ and fake/ to {FAKE_DIR}/, and put "
            f"them under training/ and validation/ (sources of photos kept apart between the two)"
        )
    return hint


def resolve_split(root: str | Path, split: str | None) -> Path:
    """``root/split`` for the Wang layout; ``root`` itself when ``split`` is None (Ojha layout)."""
    root = Path(root)
    if split is None:
        return root
    path = root / split
    if not path.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        raise FileNotFoundError(f"no split {split!r} in {root}; found: {found}. {layout_hint(root)}")
    return path


def random_crop_or_pad(img: np.ndarray, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Random crop of an HxWxC array to ``size``, zero-padding (centred) first where it is smaller."""
    crop_h, crop_w = size
    h, w = img.shape[:2]
    if h < crop_h or w < crop_w:
        img = center_crop_or_pad(img, (max(h, crop_h), max(w, crop_w)))
        h, w = img.shape[:2]
    top = int(rng.integers(0, h - crop_h + 1))
    left = int(rng.integers(0, w - crop_w + 1))
    return img[top : top + crop_h, left : left + crop_w]


def augment_image(img: np.ndarray, augment: Augment, rng: np.random.Generator) -> np.ndarray:
    """Blur and JPEG re-compression (each with its probability) of an HxWx3 uint8 image."""
    if augment.blur_prob > 0 and rng.random() < augment.blur_prob:
        sigma = float(rng.uniform(*augment.blur_sigma))
        if sigma > 0:
            img = np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(radius=sigma)))
    if augment.jpeg_prob > 0 and rng.random() < augment.jpeg_prob:
        quality = int(rng.integers(augment.jpeg_quality[0], augment.jpeg_quality[1] + 1))
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=quality)
        img = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    return img


class RealFakeDataset(Dataset):
    """Labelled images of one split (Wang layout) or of a whole Ojha-layout root.

    Augmentation randomness is a pure function of (seed, epoch, index), so results do not depend on the number
    of DataLoader workers; call ``set_epoch`` once per epoch.
    """

    def __init__(
        self,
        root: str | Path,
        split: str | None = None,
        image_size: int | tuple[int, int] = 224,
        train: bool = False,
        augment: Augment | None = None,
        generators: tuple[str, ...] | None = None,
        seed: int = 0,
        crops: int = 1,
    ) -> None:
        if train and crops != 1:
            raise ValueError("training takes one window per image: crops must be 1 with train=True")
        self.root = resolve_split(root, split)
        self.crops = crops
        self.samples = scan_samples(self.root, generators)
        self.size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.train = train
        self.augment = augment if augment is not None else Augment()
        self.seed = seed
        self.epoch = 0
        counts = Counter((s.generator, s.label) for s in self.samples)
        logger.info(
            "%s: %d images, %s",
            self.root,
            len(self.samples),
            ", ".join(f"{g}/{'fake' if y else 'real'}={n}" for (g, y), n in sorted(counts.items())),
        )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.samples], dtype=np.int64)

    @property
    def generators(self) -> list[str]:
        return sorted({s.generator for s in self.samples})

    def load(self, index: int) -> np.ndarray:
        """The transformed image ``index`` as HxWx3 uint8 (evaluation: the centre window)."""
        img = decode_image(self.samples[index].path.read_bytes())
        if not self.train:
            return center_crop_or_pad(img, self.size)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        img = augment_image(img, self.augment, rng)
        img = random_crop_or_pad(img, self.size, rng)
        if self.augment.flip and rng.random() < 0.5:
            img = img[:, ::-1]
        return img

    def model_input(self, img: np.ndarray) -> np.ndarray:
        """A decoded evaluation image -> the detector's (3 * crops, H, W) input (``core.preprocess``'s windows)."""
        return stack_windows(crop_windows(img, self.size, self.crops))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        sample = self.samples[index]
        if self.train:
            img = np.ascontiguousarray(self.load(index).transpose(2, 0, 1))
        else:
            img = self.model_input(decode_image(sample.path.read_bytes()))
        return torch.from_numpy(img), torch.tensor(float(sample.label)), sample.generator
