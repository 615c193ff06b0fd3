"""What a benchmark build is: ``BuildConfig`` and its profiles."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

from fmdetect.training.benchmark.families import ALL_FAMILIES, FAMILIES, TRAIN_FAMILY, Mechanism, family
from fmdetect.training.benchmark.photos import PHOTO_TABLE
from fmdetect.training.benchmark.postprocess import PostprocessSpec
from fmdetect.training.data import Split

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "fmdetect"
BUILDER_VERSION = 3
# The default detector's build: half its real crops are native windows (detectors/README.md, "How it was made").
DEFAULT_DETECTOR_NATIVE_SHARE = 0.5


class Profile(str, Enum):
    """``full``: the benchmark. ``demo``: what ``make demo`` shows (testing images of a few families). ``small``:
    the tests (every family, tiny, package photos only)."""

    FULL = "full"
    DEMO = "demo"
    SMALL = "small"


@dataclass(frozen=True)
class BuildConfig:
    """A build. Everything but ``out``, ``cache_dir`` and ``workers`` determines its content.

    ``*_crops`` are per class: a split holds that many reals and that many fakes per family. Images are generated
    at ``generate_size`` (a quarter larger than ``image_size``) and post-processed down to ``image_size``.
    ``generator_steps`` scales every family's training steps. ``splits`` are the splits written (the training
    crops are drawn in any case: the generators train on them). ``sources`` keeps only these photo sources (None:
    all); ``source_splits`` overrides the table's split of some sources. ``native_share`` is the share of real
    crops taken as native pixels, never resampled (the others at a log-uniform scale, see ``crops``).
    """

    out: Path
    seed: int = 0
    image_size: int = 128
    training_crops: int = 1500
    validation_crops: int = 300
    testing_crops: int = 300
    train_family: str = TRAIN_FAMILY
    test_families: tuple[str, ...] = ALL_FAMILIES
    generator_steps: float = 1.0
    generator_batch: int = 8
    generator_patch: int = 64
    postprocess: PostprocessSpec = field(default_factory=PostprocessSpec)
    sources: tuple[str, ...] | None = None
    source_splits: tuple[tuple[str, str], ...] = ()
    splits: tuple[str, ...] = tuple(s.value for s in Split)
    match_pool: int = 8
    native_share: float = 0.0
    cache_dir: Path = DEFAULT_CACHE_DIR
    workers: int = 2
    builder_version: int = BUILDER_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Path(self.out))
        object.__setattr__(self, "cache_dir", Path(self.cache_dir))
        object.__setattr__(self, "test_families", tuple(dict.fromkeys(self.test_families)))
        for name in (self.train_family, *self.test_families):
            family(name)
        train = FAMILIES[self.train_family]
        if train.mechanism is not Mechanism.GAN or not train.content_matched:
            gans = [n for n, s in FAMILIES.items() if s.mechanism is Mechanism.GAN and s.content_matched]
            raise ValueError(
                f"the training family must be a GAN trained on the photos ({', '.join(gans)}), as the "
                f"paper trains on ProGAN alone; got {self.train_family!r}"
            )
        if not self.test_families:
            raise ValueError("testing needs at least one family")
        if self.image_size < 32 or self.image_size % 16:
            raise ValueError(f"image_size must be a multiple of 16 and >= 32, got {self.image_size}")
        if min(self.training_crops, self.validation_crops, self.testing_crops) < 2:
            raise ValueError("every split needs at least two crops per class")
        if self.generator_steps <= 0 or self.generator_batch < 1 or self.generator_patch < 16:
            raise ValueError("generator_steps must be > 0, generator_batch >= 1 and generator_patch >= 16")
        unknown = set(self.splits) - {s.value for s in Split}
        if unknown or not self.splits:
            raise ValueError(f"splits must be among {[s.value for s in Split]}, got {list(self.splits)}")
        if self.workers < 1:
            raise ValueError("workers must be >= 1")
        if not 0.0 <= self.native_share <= 1.0:
            raise ValueError(f"native_share must be in [0, 1], got {self.native_share}")

    @property
    def generate_size(self) -> int:
        """Side of the generated crops: 1.25 x ``image_size``, a multiple of 16."""
        return (self.image_size * 5 // 4 + 15) // 16 * 16

    @classmethod
    def preset(cls, profile: Profile | str, out: Path, **overrides: Any) -> BuildConfig:
        """A profile's configuration, with some fields replaced."""
        return replace(cls(out=out, **PROFILES[Profile(profile)]), **overrides)

    def crops(self, split: Split) -> int:
        return {
            Split.TRAINING: self.training_crops,
            Split.VALIDATION: self.validation_crops,
            Split.TESTING: self.testing_crops,
        }[split]

    def built_splits(self) -> list[Split]:
        return [s for s in Split if s.value in self.splits]

    def families(self, split: Split) -> tuple[str, ...]:
        """Training and validation hold the training family only; testing holds ``test_families``."""
        return self.test_families if split is Split.TESTING else (self.train_family,)

    def identity(self) -> dict[str, Any]:
        """The fields that determine the content of the build (JSON-ready)."""
        data = asdict(self)
        for key in ("out", "cache_dir", "workers"):
            data.pop(key)
        if not self.native_share:
            data.pop("native_share")  # builds made before the option keep their identity
        data["test_families"] = list(self.test_families)
        data["sources"] = None if self.sources is None else list(self.sources)
        data["source_splits"] = [list(p) for p in self.source_splits]
        data["splits"] = list(self.splits)
        data["postprocess"]["jpeg_quality"] = list(self.postprocess.jpeg_quality)
        data["generate_size"] = self.generate_size
        # What the families and the photo table say, so that changing either makes a new build.
        used = sorted({self.train_family, *self.test_families})
        specs = json.dumps({n: asdict(FAMILIES[n]) for n in used}, sort_keys=True, default=str)
        data["families_sha256"] = hashlib.sha256(specs.encode()).hexdigest()
        data["photo_table_sha256"] = hashlib.sha256(PHOTO_TABLE.read_bytes()).hexdigest()
        return data


PACKAGE_SOURCES = (("scikit-image", "training"), ("scikit-learn", "validation"), ("matplotlib", "testing"))

PROFILES: dict[Profile, dict[str, Any]] = {
    Profile.FULL: {},
    # make demo: testing images of the training family and three unseen mechanisms. The generators train on the
    # same crops as the full build's, so the two share the generator cache.
    Profile.DEMO: {
        "splits": ("testing",),
        "testing_crops": 24,
        "test_families": ("gan_progressive", "vae", "inpainting", "dcgan_faces"),
    },
    # Tests: every family at 64 px with a few steps, photos of the installed Python packages only.
    Profile.SMALL: {
        "image_size": 64,
        "training_crops": 96,
        "validation_crops": 32,
        "testing_crops": 32,
        "generator_steps": 0.04,
        "generator_batch": 4,
        "sources": tuple(s for s, _ in PACKAGE_SOURCES),
        "source_splits": PACKAGE_SOURCES,
        "match_pool": 4,
    },
}
