"""Masking augmentations: exact counts, band positions and combinations, the DCT / Haar transforms, the authors'
legacy layout on images with a known spectrum, the pixel domains, geometric augmentation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fmdetect.core.fft import band_region, masked_count
from fmdetect.core.metadata import Band
from fmdetect.training.masking import (
    BandLayout,
    MaskDomain,
    MaskKind,
    MaskSpec,
    band_name,
    band_regions,
    coefficient_masks,
    frequency_masks,
    mask_count,
    parse_bands,
    patch_grid_size,
    random_affine,
)
from fmdetect.training.spectral import (
    dct2,
    dct_band_region,
    dct_matrix,
    haar2,
    haar_band_region,
    haar_matrix,
    idct2,
    ihaar2,
    legacy_band_region,
)

BAND_KINDS = (MaskKind.FREQUENCY, MaskKind.DCT, MaskKind.WAVELET)
BANDS = ("all", "low", "mid", "high", "low+mid", "low+high", "mid+high", "low+mid+high")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------------------------- transforms


@pytest.mark.parametrize("n", [2, 8, 15, 64])
def test_dct_matrix_is_orthonormal_and_matches_scipy(n: int) -> None:
    from scipy.fft import dct

    c = dct_matrix(n)
    np.testing.assert_allclose(c @ c.T, np.eye(n), atol=1e-12)
    x = np.random.default_rng(n).normal(size=n)
    np.testing.assert_allclose(c @ x, dct(x, type=2, norm="ortho"), atol=1e-12)


@pytest.mark.parametrize("n", [2, 8, 64])
def test_haar_matrix_is_orthonormal_averages_then_differences(n: int) -> None:
    h = haar_matrix(n)
    np.testing.assert_allclose(h @ h.T, np.eye(n), atol=1e-12)
    x = np.random.default_rng(n).normal(size=n)
    y = h @ x
    np.testing.assert_allclose(y[: n // 2], (x[0::2] + x[1::2]) / math.sqrt(2), atol=1e-12)
    np.testing.assert_allclose(y[n // 2 :], (x[0::2] - x[1::2]) / math.sqrt(2), atol=1e-12)
    with pytest.raises(ValueError, match="even"):
        haar_matrix(5)


@pytest.mark.parametrize("forward,inverse", [(dct2, idct2), (haar2, ihaar2)])
@pytest.mark.parametrize("shape", [(2, 3, 16, 16), (1, 3, 24, 40)])
def test_2d_transforms_are_exact_orthonormal_inverses(forward, inverse, shape) -> None:
    x = torch.randn(*shape, dtype=torch.float64, generator=gen(1))
    c = forward(x)
    torch.testing.assert_close(inverse(c), x, atol=1e-12, rtol=0)
    torch.testing.assert_close(forward(inverse(x)), x, atol=1e-12, rtol=0)
    # Parseval: orthonormal transforms keep the energy of every channel.
    torch.testing.assert_close(c.pow(2).sum((-2, -1)), x.pow(2).sum((-2, -1)), atol=1e-9, rtol=1e-12)
    x32 = x.float()
    torch.testing.assert_close(inverse(forward(x32)), x32, atol=1e-5, rtol=0)


def test_dct_of_a_cosine_is_one_coefficient() -> None:
    h, w, ky, kx = 16, 16, 3, 5
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.cos(np.pi * (2 * yy + 1) * ky / (2 * h)) * np.cos(np.pi * (2 * xx + 1) * kx / (2 * w))
    c = dct2(torch.from_numpy(img)).numpy()
    assert np.unravel_index(np.abs(c).argmax(), c.shape) == (ky, kx)
    assert np.abs(c).sum() == pytest.approx(np.abs(c).max(), rel=1e-9)


# ------------------------------------------------------------------------------------------------------ bands


def test_parse_bands_canonical_and_errors() -> None:
    assert parse_bands("mid+low") == (Band.LOW, Band.MID)
    assert parse_bands(Band.HIGH) == (Band.HIGH,)
    assert band_name("high+low+mid") == "low+mid+high"
    for bad in ("all+low", "low+low", "lowish", ""):
        with pytest.raises(ValueError):
            parse_bands(bad)


@pytest.mark.parametrize("kind", BAND_KINDS)
@pytest.mark.parametrize("layout", list(BandLayout))
def test_bands_are_disjoint_and_cover_everything(kind: MaskKind, layout: BandLayout) -> None:
    h, w = 32, 24
    low, mid, high = (band_regions(kind, h, w, b, layout)[0] for b in ("low", "mid", "high"))
    assert not (low & mid).any() and not (low & high).any() and not (mid & high).any()
    (everything,) = band_regions(kind, h, w, "all", layout)
    assert everything.all()
    if layout is BandLayout.RADIAL:
        assert (low | mid | high).all()


def test_band_definitions() -> None:
    h, w = 32, 32
    # fft: the radius of core.fft.
    assert np.array_equal(band_regions("frequency", h, w, "mid")[0], band_region(h, w, "mid"))
    # dct: the index radius with the same edges, so the same shares as the fft bands up to the grid.
    dct_low = dct_band_region(h, w, "low")
    assert dct_low[0, 0] and dct_low[h // 4, 0] and not dct_low[h // 4 + 1, 0] and not dct_low[h // 4, 1]
    assert dct_band_region(h, w, "high")[-1, -1]
    for band in ("low", "mid", "high"):
        assert abs(dct_band_region(h, w, band).mean() - band_region(h, w, band).mean()) < 0.02
    # haar: LL / LH + HL / HH.
    assert haar_band_region(h, w, "low")[: h // 2, : w // 2].all() and haar_band_region(h, w, "low").mean() == 0.25
    assert haar_band_region(h, w, "high")[h // 2 :, w // 2 :].all() and haar_band_region(h, w, "high").mean() == 0.25
    mid = haar_band_region(h, w, "mid")
    assert mid[: h // 2, w // 2 :].all() and mid[h // 2 :, : w // 2].all() and mid.mean() == 0.5
    # legacy: the authors' rectangles.
    expected = np.zeros((h, w), dtype=bool)
    expected[8:24, 8:24] = True
    assert np.array_equal(legacy_band_region(h, w, "mid"), expected)
    assert legacy_band_region(h, w, "low")[:8, :8].all() and legacy_band_region(h, w, "low").sum() == 64
    assert legacy_band_region(h, w, "high")[24:, 24:].all() and legacy_band_region(h, w, "high").sum() == 64


# ------------------------------------------------------------------------------------------------ exact counts


@pytest.mark.parametrize("kind", BAND_KINDS)
@pytest.mark.parametrize("band", BANDS)
@pytest.mark.parametrize("layout", list(BandLayout))
@pytest.mark.parametrize("per_channel", [False, True])
def test_exact_count_per_band_and_combination_is_union(kind, band, layout, per_channel) -> None:
    h, w, ratio = 24, 20, 0.3
    masks = coefficient_masks(kind, 5, h, w, band, ratio, per_channel, layout, generator=gen(2))
    assert masks.shape == (5, 3 if per_channel else 1, h, w) and masks.dtype == torch.float32
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    zeros = (masks == 0).numpy()
    union = np.zeros((h, w), dtype=bool)
    for name, region in zip(parse_bands(band), band_regions(kind, h, w, band, layout)):
        expected = mask_count(int(region.sum()), ratio, layout)
        assert ((zeros & region).sum(axis=(-2, -1)) == expected).all(), name
        union |= region
    assert not (zeros & ~union).any()


def test_radial_frequency_count_is_core_fft_count_and_legacy_uses_ceil() -> None:
    region = band_region(64, 64, "all")
    masks = frequency_masks(3, 64, 64, "all", 0.15, generator=gen())
    assert ((masks == 0).sum((-2, -1)) == masked_count(region, 0.15)).all()
    legacy = frequency_masks(3, 64, 64, "low", 0.15, generator=gen(), layout="legacy")
    assert ((legacy == 0).sum((-2, -1)) == math.ceil(16 * 16 * 0.15)).all()
    assert ((legacy == 0)[..., :16, :16]).sum() == legacy.numel() - legacy.sum()


def test_pixel_masking_exact_count_same_positions_in_all_channels() -> None:
    h, w, ratio = 20, 30, 0.37
    x = torch.ones(4, 3, h, w)
    y = MaskSpec(kind="pixel", ratio=ratio).apply(x, gen(3))
    zeros = y == 0
    assert (zeros.sum((-2, -1)) == round(ratio * h * w)).all()
    assert (zeros == zeros[:, :1]).all()
    independent = MaskSpec(kind="pixel", ratio=ratio, per_channel=True).apply(x, gen(3)) == 0
    assert (independent.sum((-2, -1)) == round(ratio * h * w)).all()
    assert not (independent == independent[:, :1]).all()


@pytest.mark.parametrize("size,patch,expected_patch", [(64, 16, 16), (224, 16, 16), (60, 16, 15), (28, 16, 14)])
def test_patch_masking_covers_exact_area_in_aligned_squares(size: int, patch: int, expected_patch: int) -> None:
    assert patch_grid_size(size, size, patch) == expected_patch
    ratio = 0.3
    masks = coefficient_masks("patch", 3, size, size, ratio=ratio, patch_size=patch, generator=gen(4))
    n_patches = (size // expected_patch) ** 2
    k = round(ratio * n_patches)
    assert ((masks == 0).sum((-2, -1)) == k * expected_patch**2).all()
    blocks = masks.reshape(3, 1, size // expected_patch, expected_patch, size // expected_patch, expected_patch)
    assert (blocks.amin(dim=(3, 5)) == blocks.amax(dim=(3, 5))).all()  # constant inside every patch


# ---------------------------------------------------------------------------------------------- application


@pytest.mark.parametrize("kind", list(MaskKind))
@pytest.mark.parametrize("domain", list(MaskDomain))
def test_outputs_are_real_finite_and_keep_shape(kind: MaskKind, domain: MaskDomain) -> None:
    x = (
        torch.rand(4, 3, 32, 32, generator=gen(5)) * 255
        if domain is not MaskDomain.NORMALISED
        else torch.randn(4, 3, 32, 32, generator=gen(5))
    )
    y = MaskSpec(kind=kind, ratio=0.5, domain=domain, rotate=10, translate=0.1).apply(x, gen(6))
    assert y.shape == x.shape and y.dtype == x.dtype and not y.is_complex() and torch.isfinite(y).all()
    if domain is not MaskDomain.NORMALISED and kind is not MaskKind.NONE:
        assert y.min() >= 0 and y.max() <= 255


def test_identity_cases() -> None:
    x = torch.randn(3, 3, 16, 16, generator=gen(7))
    assert MaskSpec(kind="none").apply(x) is x
    assert MaskSpec(kind="frequency", probability=0.0).apply(x) is x
    for kind in BAND_KINDS:
        torch.testing.assert_close(MaskSpec(kind=kind, ratio=0.0).apply(x, gen()), x, atol=1e-5, rtol=0)


def test_probability_leaves_unselected_samples_exactly_unchanged() -> None:
    x = torch.randn(64, 3, 16, 16, generator=gen(8))
    y = MaskSpec(kind="frequency", ratio=0.5, probability=0.5).apply(x, gen(9))
    unchanged = (y == x).flatten(1).all(dim=1)
    assert 10 < int(unchanged.sum()) < 54
    assert not torch.allclose(y[~unchanged], x[~unchanged], atol=1e-3)


def test_sample_then_apply_uses_the_same_masks_for_every_kind() -> None:
    from fmdetect.training.masking import apply_masks

    x = torch.randn(2, 3, 16, 16, generator=gen(10))
    for kind in (MaskKind.FREQUENCY, MaskKind.DCT, MaskKind.WAVELET, MaskKind.PIXEL, MaskKind.PATCH):
        spec = MaskSpec(kind=kind, ratio=0.4, patch_size=4)
        masks = spec.sample(2, 16, 16, gen(11))
        torch.testing.assert_close(spec.apply(x, gen(11)), apply_masks(x, masks, kind))


def test_radial_bands_remove_the_right_frequencies() -> None:
    h = w = 32
    yy, xx = np.mgrid[0:h, 0:w]
    checker = torch.from_numpy((-1.0) ** (yy + xx)).float()[None, None]  # only the Nyquist corner (rho = sqrt 2)
    smooth = torch.from_numpy(np.cos(2 * np.pi * (yy / h + 2 * xx / w))).float()[None, None]  # rho ~ 0.14
    high = MaskSpec(kind="frequency", band="high", ratio=1.0)
    low = MaskSpec(kind="frequency", band="low", ratio=1.0)
    assert high.apply(checker, gen()).abs().max() < 1e-5
    torch.testing.assert_close(high.apply(smooth, gen()), smooth, atol=1e-5, rtol=0)
    assert low.apply(smooth, gen()).abs().max() < 1e-5
    torch.testing.assert_close(low.apply(checker, gen()), checker, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------------ legacy layout


def test_legacy_layout_on_images_with_a_known_spectrum() -> None:
    """The authors' unshifted slices: 'mid' holds the highest frequencies, 'low' and 'high' one half each of the
    conjugate pair of a low frequency (so masking one halves a real cosine, masking both removes it)."""
    h = w = 32
    yy, xx = np.mgrid[0:h, 0:w]
    # cos(2 pi (2y + 3x) / 32): spectrum at (2, 3) in the low corner and at (30, 29) in the 'high' corner.
    cosine = torch.from_numpy(np.cos(2 * np.pi * (2 * yy + 3 * xx) / h)).float()[None, None]
    checker = torch.from_numpy((-1.0) ** (yy + xx)).float()[None, None]  # (16, 16): centre of the array

    def legacy(band: str) -> MaskSpec:
        return MaskSpec(kind="frequency", band=band, ratio=1.0, layout="legacy")

    torch.testing.assert_close(legacy("low").apply(cosine, gen()), 0.5 * cosine, atol=1e-5, rtol=0)
    torch.testing.assert_close(legacy("high").apply(cosine, gen()), 0.5 * cosine, atol=1e-5, rtol=0)
    assert legacy("low+high").apply(cosine, gen()).abs().max() < 1e-5
    torch.testing.assert_close(legacy("mid").apply(cosine, gen()), cosine, atol=1e-5, rtol=0)
    assert legacy("mid").apply(checker, gen()).abs().max() < 1e-5
    torch.testing.assert_close(legacy("low+high").apply(checker, gen()), checker, atol=1e-5, rtol=0)
    # Which coefficients are zeroed: exactly the rectangle, in every channel alike.
    masks = legacy("low").sample(2, h, w, gen())
    assert masks.shape == (2, 1, h, w)
    assert (masks[..., :8, :8] == 0).all() and masks.sum() == masks.numel() - 2 * 64


def test_legacy_all_masks_dc_with_probability_ratio() -> None:
    masks = MaskSpec(kind="frequency", band="all", ratio=0.25, layout="legacy").sample(4000, 8, 8, gen(12))
    dc_masked = float((masks[:, 0, 0, 0] == 0).float().mean())
    assert abs(dc_masked - 16 / 64) < 0.03  # ceil(0.25 * 64) = 16 of 64 coefficients


def test_legacy_pixel_wrap_reproduces_the_authors_uint8_cast() -> None:
    """Their transform: np.fft on 0..255 pixels (H, W, 3), the same mask in all channels, the real part cast with
    ``astype(np.uint8)`` (wraps). Compared where the cast is not decided by float rounding (near integers)."""
    rng = np.random.default_rng(13)
    batch = 4
    img = rng.integers(0, 256, (batch, 3, 32, 32)).astype(np.float32)
    spec = MaskSpec(kind="frequency", band="all", ratio=0.5, layout="legacy", domain="pixels-wrap")
    masks = spec.sample(batch, 32, 32, gen(14)).numpy()
    assert (masks[:, 0, 0, 0] == 0).any() and (masks[:, 0, 0, 0] == 1).any()  # DC masked in some samples
    ours = spec.apply(torch.from_numpy(img), gen(14)).numpy()
    wrapped = 0
    for b in range(batch):
        hwc = img[b].transpose(1, 2, 0).astype(np.complex64)
        mask = np.repeat(masks[b, 0][..., None], 3, axis=-1)
        real = np.fft.ifftn(np.fft.fftn(hwc, axes=(0, 1)) * mask, axes=(0, 1)).real
        with np.errstate(invalid="ignore"):
            theirs = real.astype(np.uint8).transpose(2, 0, 1)
        decided = np.abs(real - np.round(real)).transpose(2, 0, 1) > 1e-3
        assert decided.mean() > 0.99
        assert np.array_equal(ours[b][decided], theirs[decided])
        wrapped += int((real < -1).sum())
    assert wrapped > 0  # negative values occurred and were wrapped, not clipped
    clipped = MaskSpec(kind="frequency", band="all", ratio=0.5, layout="legacy", domain="pixels")
    assert not torch.equal(clipped.apply(torch.from_numpy(img), gen(14)), torch.from_numpy(ours))


def test_wrap_and_clip_semantics() -> None:
    from fmdetect.training.masking import to_pixels

    x = torch.tensor([-0.5, -1.5, -200.7, 255.9, 256.2, 300.0, 12.4])
    assert to_pixels(x, "pixels-wrap").tolist() == [0, 255, 56, 255, 0, 44, 12]
    assert to_pixels(x, "pixels").tolist() == [0, 0, 0, 255, 255, 255, 12]
    assert torch.equal(to_pixels(x, "normalised"), x)


# ------------------------------------------------------------------------------------------- geometric + spec


def test_translation_is_a_whole_pixel_shift_with_zero_fill() -> None:
    x = torch.randn(6, 3, 16, 20, generator=gen(15))
    y = random_affine(x, 0.0, 0.25, gen(16))
    for b in range(6):
        match = False
        for dy in range(-4, 5):
            for dx in range(-5, 6):
                shifted = torch.zeros_like(x[b])
                src = x[b][:, max(0, -dy) : 16 - max(0, dy), max(0, -dx) : 20 - max(0, dx)]
                shifted[:, max(0, dy) : max(0, dy) + src.shape[1], max(0, dx) : max(0, dx) + src.shape[2]] = src
                match |= torch.allclose(y[b], shifted, atol=1e-5)
        assert match
    torch.testing.assert_close(random_affine(x, 0.0, 0.0, gen()), x, atol=1e-5, rtol=0)


def test_rotation_by_up_to_180_degrees_keeps_the_centre() -> None:
    x = torch.zeros(8, 1, 17, 17)
    x[..., 8, 8] = 1.0
    y = random_affine(x, 180.0, 0.0, gen(17))
    assert torch.allclose(y[..., 8, 8], torch.ones(8, 1), atol=1e-4)


def test_spec_validation() -> None:
    with pytest.raises(ValueError):
        MaskSpec(ratio=1.5)
    with pytest.raises(ValueError):
        MaskSpec(probability=-0.1)
    with pytest.raises(ValueError, match="no bands"):
        MaskSpec(kind="pixel", band="low")
    with pytest.raises(ValueError):
        MaskSpec(kind="frequency", band="all+low")
    with pytest.raises(ValueError):
        MaskSpec(kind="wavelet").apply(torch.zeros(1, 3, 15, 16))
    assert MaskSpec(band="mid+low").band == "low+mid"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_masks_on_cuda_match_the_definition() -> None:
    device = torch.device("cuda")
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(8, 3, 64, 64, device=device)
    for kind in list(MaskKind):
        spec = MaskSpec(kind=kind, ratio=0.3, rotate=5, translate=0.05)
        y = spec.apply(x, g)
        assert y.device == x.device and torch.isfinite(y).all()
    masks = coefficient_masks("frequency", 8, 64, 64, "low+mid", 0.3, generator=g)
    assert masks.device.type == "cuda"
    for region in band_regions("frequency", 64, 64, "low+mid"):
        region_t = torch.from_numpy(region).to(device)
        assert ((masks == 0) & region_t).sum((-2, -1)).unique().tolist() == [masked_count(region, 0.3)]
