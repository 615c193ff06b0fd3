"""The offline dataset builder: layout, split by source photo, shared format of real and fake, cache, determinism.

The small build (real photos from the installed packages, a real autoencoder generator) is made once per session;
test_training reuses the same directory through the builder's cache.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training.offline_data import (
    DATASET_FILE,
    FAKE_DIR,
    GENERATOR_FAMILIES,
    REAL_DIR,
    AutoEncoder,
    BuildConfig,
    Preset,
    Split,
    assign_splits,
    build_dataset,
    is_complete,
    package_photos,
)


def small_config(tmp_path_factory: pytest.TempPathFactory) -> BuildConfig:
    """The session's small build (same path in test_training, so the second request is a cache hit)."""
    return BuildConfig.preset(Preset.SMALL, out=tmp_path_factory.getbasetemp() / "offline_small")


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_dataset(small_config(tmp_path_factory))


@pytest.fixture(scope="session")
def manifest(small_dataset: Path) -> dict:
    return json.loads((small_dataset / DATASET_FILE).read_text())


def tiny_config(out: Path, seed: int = 0) -> BuildConfig:
    return BuildConfig(out=out, seed=seed, image_size=32, training_crops=12, validation_crops=6, testing_crops=6,
                       ae_steps=15, ae_batch_size=8, ae_patch=16, test_families=("ae_transposed", "ae_nearest"))


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.png"))}


def test_package_photos_are_installed() -> None:
    photos = package_photos()
    names = {p.name for p in photos}
    assert {"sklearn:china", "sklearn:flower", "matplotlib:grace_hopper", "skimage:astronaut"} <= names
    assert len({p.group for p in photos}) >= 8


def test_layout_and_counts(small_dataset: Path, manifest: dict) -> None:
    assert manifest["complete"] is True
    assert manifest["families"] == {"training": ["ae_transposed"], "validation": ["ae_transposed"],
                                    "testing": ["ae_transposed", "ae_nearest"]}
    expected = {"training": 96, "validation": 32, "testing": 32}
    for split, families in manifest["families"].items():
        for family in families:
            for label in (REAL_DIR, FAKE_DIR):
                files = sorted((small_dataset / split / family / label).glob("*.png"))
                assert len(files) == expected[split] == manifest["counts"][split][family][label]
    on_disk = {str(p.relative_to(small_dataset)) for p in small_dataset.rglob("*.png")}
    assert on_disk == {r["path"] for r in manifest["files"]}


def test_split_by_source_photo(manifest: dict) -> None:
    groups_of = {split: {r["group"] for r in manifest["files"] if r["split"] == split} for split in
                 ("training", "validation", "testing")}
    assert all(groups_of.values())
    assert not groups_of["training"] & groups_of["validation"]
    assert not groups_of["training"] & groups_of["testing"]
    assert not groups_of["validation"] & groups_of["testing"]
    for split, groups in groups_of.items():
        assert groups <= set(manifest["split_groups"][split])
    # Every crop (real or the input of a fake) names a source photo; stereo pairs share a group.
    sources = {s["name"]: s["group"] for s in manifest["sources"]}
    assert all(sources[r["source"]] == r["group"] for r in manifest["files"])
    assert sources.get("skimage:motorcycle_left") == sources.get("skimage:motorcycle_right")


def test_assign_splits_covers_every_group_once() -> None:
    groups = [f"g{i}" for i in range(11)]
    splits = assign_splits(groups, (0.6, 0.2, 0.2), np.random.default_rng(3))
    dealt = [g for members in splits.values() for g in members]
    assert sorted(dealt) == sorted(groups)
    assert all(splits[s] for s in Split)
    with pytest.raises(ValueError, match="at least 3"):
        assign_splits(["a", "b"], (0.6, 0.2, 0.2), np.random.default_rng(0))


def test_real_and_fake_share_size_and_format(small_dataset: Path) -> None:
    for folder in (small_dataset / "training" / "ae_transposed", small_dataset / "testing" / "ae_nearest"):
        for label in (REAL_DIR, FAKE_DIR):
            for path in sorted((folder / label).glob("*.png"))[:8]:
                with Image.open(path) as img:
                    assert (img.format, img.mode, img.size) == ("PNG", "RGB", (64, 64))


def test_fakes_are_reconstructions_not_copies(small_dataset: Path, manifest: dict) -> None:
    """Fakes resemble real photos (PSNR well above noise) but are not the real crops themselves."""
    psnr = manifest["generators"]["ae_transposed"]["psnr_db"]
    assert 15.0 < psnr["validation"] < 40.0
    folder = small_dataset / "validation" / "ae_transposed"
    real = [np.asarray(Image.open(p)) for p in (folder / REAL_DIR).glob("*.png")]
    fake = [np.asarray(Image.open(p)) for p in (folder / FAKE_DIR).glob("*.png")]
    assert not any(np.array_equal(f, r) for f in fake for r in real)


def test_complete_build_is_reused(small_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    config = small_config(tmp_path_factory)
    assert is_complete(config)
    stamp = (small_dataset / DATASET_FILE).stat().st_mtime_ns
    start = time.perf_counter()
    build_dataset(config)
    assert time.perf_counter() - start < 2.0
    assert (small_dataset / DATASET_FILE).stat().st_mtime_ns == stamp
    assert not is_complete(BuildConfig.preset(Preset.SMALL, out=small_dataset, seed=1))


def test_build_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    first = build_dataset(tiny_config(tmp_path / "a"))
    second = build_dataset(tiny_config(tmp_path / "b"))
    digest = tree_digest(first)
    assert len(digest) == 2 * (12 + 6 + 2 * 6)
    assert digest == tree_digest(second)
    manifest_a = json.loads((first / DATASET_FILE).read_text())
    manifest_b = json.loads((second / DATASET_FILE).read_text())
    assert manifest_a == manifest_b
    other = build_dataset(tiny_config(tmp_path / "c", seed=1))
    assert tree_digest(other) != digest


@pytest.mark.parametrize("family", sorted(GENERATOR_FAMILIES))
def test_generator_families_reconstruct_at_input_size(family: str) -> None:
    model = AutoEncoder(family)
    x = torch.rand(2, 3, 32, 48)
    with torch.no_grad():
        y = model(x)
    assert y.shape == x.shape
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0


def test_unknown_family_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ae_transposed"):
        BuildConfig(out=tmp_path, test_families=("gan_magic",))
