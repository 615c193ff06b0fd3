"""Build an offline real/fake dataset from photos that ship inside registry packages.

Layout (Wang et al., CVPR 2020)::

    OUT/training/<family>/{0_real,1_fake}/*.png
    OUT/validation/<family>/{0_real,1_fake}/*.png
    OUT/testing/<family>/{0_real,1_fake}/*.png
    OUT/dataset.json        config, sources, split of the source photos, counts, one record per file

Real images are random crops of real photographs (scikit-learn, matplotlib and scikit-image sample photos;
optionally Debian wallpaper photos), taken at several scales and split between training / validation / testing
BY SOURCE PHOTO, never by crop. Fakes come from small convolutional autoencoders (one per generator family,
differing only in how the decoder upsamples) trained on the training real crops; a fake is the reconstruction
of a held-out real crop of the same split. Real and fake therefore share size, file format (PNG) and processing
chain: only the generator separates them. Training and validation hold one family; testing adds unseen ones.

The build is deterministic for a seed and cached: a directory that already holds a complete build of the same
configuration is left as it is.

Example::

    python -m training.offline_data --out data/offline --small --seed 0
    python -m training.offline_data --out data/offline-full --debian-photos --test-families ae_transposed ae_nearest
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from enum import Enum
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

logger = logging.getLogger(__name__)

BUILDER_VERSION = 1
DATASET_FILE = "dataset.json"
REAL_DIR = "0_real"
FAKE_DIR = "1_fake"
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "fmdetect"
MIN_CROP_STD = 2.0  # grey levels; flatter crops (sky, black) carry no information and are redrawn
MAX_REDRAWS = 20


class Split(str, Enum):
    """The three splits of the Wang et al. layout, named as their folders."""

    TRAINING = "training"
    VALIDATION = "validation"
    TESTING = "testing"


class Preset(str, Enum):
    """Size presets: ``small`` for tests (< 1 min on 2 cores), ``default`` for the demo (a few minutes)."""

    SMALL = "small"
    DEFAULT = "default"


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


def debian_photos(cache_dir: Path) -> list[PhotoSource]:
    """Photographs from Debian wallpaper packages, fetched with ``apt-get download`` into ``cache_dir``.

    Raises:
        RuntimeError: ``apt-get`` is missing or cannot download a package (try ``apt-get update`` first).
    """
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise RuntimeError("--debian-photos needs apt-get and dpkg-deb (a Debian or Ubuntu system)")
    photos = []
    for package, files in DEBIAN_PHOTOS.items():
        root = cache_dir / "debian" / package
        marker = root / ".complete"
        if not marker.is_file():
            root.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=root) as tmp:
                logger.info("apt-get download %s", package)
                done = subprocess.run(["apt-get", "download", package], cwd=tmp, capture_output=True, text=True)
                debs = list(Path(tmp).glob("*.deb"))
                if done.returncode != 0 or not debs:
                    raise RuntimeError(
                        f"apt-get download {package} failed (try `apt-get update`): {done.stderr.strip()[-400:]}"
                    )
                subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(root)], check=True, capture_output=True)
            marker.write_text(debs[0].name + "\n")
        for rel in files:
            path = root / rel
            if not path.is_file():
                logger.warning("%s has no %s; skipped", package, rel)
                continue
            stem = Path(rel).parts[3] if rel.startswith("usr/share/wallpapers/") else Path(rel).stem
            name = f"debian:{package}/{stem}"
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
# Generator families: autoencoders that differ only in how the decoder upsamples
# --------------------------------------------------------------------------------------------------------------


def _up_transposed(cin: int, cout: int) -> nn.Module:
    return nn.ConvTranspose2d(cin, cout, kernel_size=4, stride=2, padding=1)


def _up_nearest(cin: int, cout: int) -> nn.Module:
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, cout, 3, padding=1))


def _up_bilinear(cin: int, cout: int) -> nn.Module:
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), nn.Conv2d(cin, cout, 3, padding=1)
    )


def _up_pixel_shuffle(cin: int, cout: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(cin, cout * 4, 3, padding=1), nn.PixelShuffle(2))


AE_WIDTHS = (32, 64)
AE_LATENT = 32


def _decoder(upsample: Callable[[int, int], nn.Module]) -> nn.Module:
    """latent (AE_LATENT, H/4, W/4) -> image logits (3, H, W): two x2 upsampling stages, then a 3x3 conv."""
    return nn.Sequential(
        upsample(AE_LATENT, AE_WIDTHS[1]),
        nn.ReLU(inplace=True),
        upsample(AE_WIDTHS[1], AE_WIDTHS[0]),
        nn.ReLU(inplace=True),
        nn.Conv2d(AE_WIDTHS[0], 3, 3, padding=1),
    )


# Generator family name -> decoder builder. Add a family here and it can be built into any split.
GENERATOR_FAMILIES: dict[str, Callable[[], nn.Module]] = {
    "ae_transposed": lambda: _decoder(_up_transposed),
    "ae_nearest": lambda: _decoder(_up_nearest),
    "ae_bilinear": lambda: _decoder(_up_bilinear),
    "ae_pixel_shuffle": lambda: _decoder(_up_pixel_shuffle),
}


class AutoEncoder(nn.Module):
    """Conv encoder (two stride-2 convs, to H/4 x W/4 x AE_LATENT) + a family's decoder; I/O in [0, 1]."""

    def __init__(self, family: str) -> None:
        super().__init__()
        if family not in GENERATOR_FAMILIES:
            raise ValueError(f"unknown generator family {family!r}; known: {sorted(GENERATOR_FAMILIES)}")
        self.encoder = nn.Sequential(
            nn.Conv2d(3, AE_WIDTHS[0], 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(AE_WIDTHS[0], AE_WIDTHS[1], 4, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(AE_WIDTHS[1], AE_LATENT, 4, stride=2, padding=1),
            nn.ReLU(inplace=True),
        )
        self.decoder = GENERATOR_FAMILIES[family]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decoder(self.encoder(x)))


# --------------------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildConfig:
    """What a build produces. Everything but ``out`` and ``cache_dir`` identifies the build (the cache key).

    ``*_crops`` are per class: a split holds that many real crops and that many fakes (per family), the fakes
    reconstructed from as many other real crops of the same split.
    """

    out: Path
    seed: int = 0
    image_size: int = 64
    training_crops: int = 400
    validation_crops: int = 100
    testing_crops: int = 100
    train_family: str = "ae_transposed"
    test_families: tuple[str, ...] = ("ae_transposed", "ae_nearest")
    ae_steps: int = 1500
    ae_batch_size: int = 32
    ae_patch: int = 32
    ae_lr: float = 2e-3
    max_scale: float = 0.5
    scale_octaves: float = 2.0
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    debian_photos: bool = False
    cache_dir: Path = DEFAULT_CACHE_DIR
    builder_version: int = BUILDER_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Path(self.out))
        object.__setattr__(self, "cache_dir", Path(self.cache_dir))
        object.__setattr__(self, "test_families", tuple(self.test_families))
        object.__setattr__(self, "split_fractions", tuple(float(f) for f in self.split_fractions))
        for family in (self.train_family, *self.test_families):
            if family not in GENERATOR_FAMILIES:
                raise ValueError(f"unknown generator family {family!r}; known: {sorted(GENERATOR_FAMILIES)}")
        if self.image_size < 8 or self.image_size % 4:
            raise ValueError(f"image_size must be a multiple of 4 and >= 8, got {self.image_size}")
        if self.ae_patch < 8 or self.ae_patch % 4:
            raise ValueError(f"ae_patch must be a multiple of 4 and >= 8, got {self.ae_patch}")
        if min(self.training_crops, self.validation_crops, self.testing_crops) < 1:
            raise ValueError("every split needs at least one crop per class")
        if not 0.0 < self.max_scale <= 1.0 or self.scale_octaves < 0:
            raise ValueError("max_scale must be in (0, 1] and scale_octaves >= 0")

    @classmethod
    def preset(cls, preset: Preset | str, out: Path, **overrides: Any) -> BuildConfig:
        """The ``small`` or ``default`` configuration, with some fields replaced."""
        base: dict[str, Any] = {}
        if Preset(preset) is Preset.SMALL:
            base = {"training_crops": 96, "validation_crops": 32, "testing_crops": 32, "ae_steps": 400}
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
        data.pop("out")
        data.pop("cache_dir")
        data["test_families"] = list(self.test_families)
        data["split_fractions"] = list(self.split_fractions)
        return data


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
    max_scale] (bounded so the window fits); area-averaging resampling, so the downscale is anti-aliased."""
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
# Autoencoder training and reconstruction
# --------------------------------------------------------------------------------------------------------------


def _to_tensor(crops: Sequence[Crop]) -> torch.Tensor:
    return torch.from_numpy(np.stack([c.pixels for c in crops])).permute(0, 3, 1, 2).float().div(255.0)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of two [0, 1] batches."""
    mse = torch.mean((a.double() - b.double()) ** 2).item()
    return float("inf") if mse == 0 else 10.0 * math.log10(1.0 / mse)


def train_autoencoder(family: str, crops: Sequence[Crop], config: BuildConfig, seed: int) -> AutoEncoder:
    """Fit a family's autoencoder to real training crops for a fixed number of steps.

    L1 loss, Adam with a cosine schedule, random flips; each batch is one random ``ae_patch`` window (at a
    multiple of 4 pixels, the decoder's period) of the crops: the model is fully convolutional, and small patches
    make a step several times cheaper on a CPU.
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = AutoEncoder(family)
    data = _to_tensor(crops)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.ae_lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.ae_steps)
    batch = min(config.ae_batch_size, len(crops))
    patch = min(config.ae_patch, config.image_size)
    offsets = (config.image_size - patch) // 4 + 1
    model.train()
    bar = tqdm(range(config.ae_steps), desc=f"train {family}", leave=False, disable=None)
    for _ in bar:
        idx = torch.randint(0, len(data), (batch,), generator=generator)
        top, left = (torch.randint(0, offsets, (2,), generator=generator) * 4).tolist()
        x = data[idx][:, :, top : top + patch, left : left + patch]
        flip = torch.rand(batch, generator=generator) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        loss = torch.nn.functional.l1_loss(model(x), x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        bar.set_postfix(l1=f"{loss.item():.4f}")
    return model.eval()


@torch.no_grad()
def reconstruct(model: AutoEncoder, crops: Sequence[Crop], batch_size: int = 64) -> tuple[np.ndarray, float]:
    """Reconstructions as NHWC uint8 (rounded, as a PNG would store them) and their PSNR against the inputs."""
    data = _to_tensor(crops)
    out = torch.cat([model(data[i : i + batch_size]) for i in range(0, len(data), batch_size)])
    quantised = torch.round(out * 255.0).clamp(0, 255)
    return quantised.to(torch.uint8).permute(0, 2, 3, 1).numpy(), psnr(quantised / 255.0, data)


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
    Image.fromarray(pixels).save(path, format="PNG", optimize=False, compress_level=6)


class _Deterministic:
    """Context: deterministic torch algorithms, restored on exit."""

    def __enter__(self) -> None:
        self.previous = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True)

    def __exit__(self, *exc: object) -> None:
        torch.use_deterministic_algorithms(self.previous)


def build_dataset(config: BuildConfig, force: bool = False) -> Path:
    """Build (or reuse) the dataset described by ``config``; returns ``config.out``."""
    out = config.out
    if not force and is_complete(config):
        logger.info("%s already holds a complete build of this configuration; nothing to do", out)
        return out
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    (out / DATASET_FILE).unlink(missing_ok=True)
    for split in Split:
        shutil.rmtree(out / split.value, ignore_errors=True)

    sources = package_photos()
    if config.debian_photos:
        sources += debian_photos(config.cache_dir)
    max_side = max(4 * config.image_size / config.max_scale * 2.0**config.scale_octaves, 1024)
    photos = {s.name: load_photo(s.path, int(max_side)) for s in tqdm(sources, desc="load photos", disable=None)}
    rng = np.random.default_rng(config.seed)
    split_groups = assign_splits([s.group for s in sources], config.split_fractions, rng)
    for split, groups in split_groups.items():
        logger.info("%s photos: %s", split.value, ", ".join(groups))

    # Per split: real crops (0_real of every family of the split) and other real crops to reconstruct as fakes.
    real: dict[Split, list[Crop]] = {}
    held_out: dict[Split, list[Crop]] = {}
    for split in Split:
        split_sources = [s for s in sources if s.group in split_groups[split]]
        real[split] = draw_crops(photos, split_sources, config.crops(split), config, rng)
        held_out[split] = draw_crops(photos, split_sources, config.crops(split), config, rng)

    families = sorted({f for split in Split for f in config.families(split)})
    records: list[dict[str, Any]] = []
    generators: dict[str, Any] = {}
    with _Deterministic():
        for index, family in enumerate(families):
            t0 = time.perf_counter()
            model = train_autoencoder(family, real[Split.TRAINING], config, seed=config.seed * 1000 + index + 1)
            fit_psnr = reconstruct(model, real[Split.TRAINING])[1]
            generators[family] = {"ae_steps": config.ae_steps, "psnr_db": {"training_real_fit": round(fit_psnr, 2)}}
            for split in Split:
                if family not in config.families(split):
                    continue
                fakes, fake_psnr = reconstruct(model, held_out[split])
                generators[family]["psnr_db"][split.value] = round(fake_psnr, 2)
                records += _write_family(out, split, family, real[split], held_out[split], fakes)
            logger.info("family %s: %s (%.1f s)", family, generators[family]["psnr_db"], time.perf_counter() - t0)

    counts = {
        split.value: {
            family: {label: sum(1 for r in records if r["split"] == split.value and r["family"] == family
                                and r["label"] == int(label == FAKE_DIR)) for label in (REAL_DIR, FAKE_DIR)}
            for family in config.families(split)
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
        "split_groups": {split.value: groups for split, groups in split_groups.items()},
        "families": {split.value: list(config.families(split)) for split in Split},
        "generators": generators,
        "counts": counts,
        "files": records,
        "complete": True,
    }
    tmp = out / (DATASET_FILE + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    tmp.replace(out / DATASET_FILE)
    logger.info("built %d images in %s (%.1f s)", len(records), out, time.perf_counter() - start)
    return out


def _write_family(
    out: Path, split: Split, family: str, real: Sequence[Crop], held_out: Sequence[Crop], fakes: np.ndarray
) -> list[dict[str, Any]]:
    records = []
    for label, crops, pixels in ((REAL_DIR, real, [c.pixels for c in real]), (FAKE_DIR, held_out, list(fakes))):
        folder = out / split.value / family / label
        folder.mkdir(parents=True, exist_ok=True)
        for i, (crop, image) in enumerate(zip(crops, pixels, strict=True)):
            name = f"{i:05d}.png"
            _save_png(image, folder / name)
            records.append({
                "path": f"{split.value}/{family}/{label}/{name}",
                "split": split.value,
                "family": family,
                "label": int(label == FAKE_DIR),
                "source": crop.source,
                "group": crop.group,
                "scale": round(crop.scale, 5),
                "box": list(crop.box),
            })
    return records


# --------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.offline_data", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="dataset directory (reused if already complete)")
    parser.add_argument("--small", action="store_true", help="the small preset for tests (< 1 min on 2 cores)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the photo split, crops and generators")
    parser.add_argument("--image-size", type=int, default=64, help="crop size in pixels (a multiple of 4)")
    parser.add_argument("--training-crops", type=int, default=None, help="real (and fake) crops in training")
    parser.add_argument("--validation-crops", type=int, default=None, help="real (and fake) crops in validation")
    parser.add_argument("--testing-crops", type=int, default=None, help="real (and fake) crops per test family")
    parser.add_argument("--ae-steps", type=int, default=None, help="autoencoder training steps per family")
    parser.add_argument("--train-family", default="ae_transposed", choices=sorted(GENERATOR_FAMILIES),
                        help="generator family of training and validation")
    parser.add_argument("--test-families", nargs="+", default=["ae_transposed", "ae_nearest"],
                        choices=sorted(GENERATOR_FAMILIES), help="generator families of testing")
    parser.add_argument("--debian-photos", action="store_true",
                        help="add ~39 photos from Debian wallpaper packages (apt-get download, cached)")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="where downloaded packages go")
    parser.add_argument("--force", action="store_true", help="rebuild even if OUT holds a complete build")
    return parser


def config_from_args(args: argparse.Namespace) -> BuildConfig:
    overrides = {
        key: value
        for key in ("training_crops", "validation_crops", "testing_crops", "ae_steps")
        if (value := getattr(args, key)) is not None
    }
    return BuildConfig.preset(
        Preset.SMALL if args.small else Preset.DEFAULT,
        out=args.out,
        seed=args.seed,
        image_size=args.image_size,
        train_family=args.train_family,
        test_families=tuple(args.test_families),
        debian_photos=args.debian_photos,
        cache_dir=args.cache_dir,
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
    print(json.dumps({"out": str(out), "counts": manifest.get("counts"), "generators": manifest.get("generators")},
                     indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
