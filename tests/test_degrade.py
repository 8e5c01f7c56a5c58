"""animevae.training.degrade: seeded, per-kind degradations of training crops, and crops at several scales."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from animevae.training.degrade import (CHROMA_420, CHROMA_444, REAL, Recipe, degrade_batch, jpeg_batch,
                              jpeg_bytes_roundtrip, multiscale_crop)
from helpers import blob_image

ONLY_GAUSSIAN = Recipe(clean=0.0, gaussian=1.0, poisson=0.0, grey=0.0, jpeg=0.0)
ONLY_JPEG = Recipe(clean=0.0, gaussian=0.0, poisson=0.0, jpeg=1.0, double_jpeg=0.0)


def _blobs(count: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """(count, 3, size, size) float blob images in [0, 1]."""
    rng = np.random.default_rng(seed)
    pixels = np.stack([np.asarray(blob_image(rng, size, size)) for _ in range(count)])
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_the_same_generator_state_gives_the_same_batch() -> None:
    clean = _blobs(16)
    first, again = degrade_batch(clean, _gen(3)), degrade_batch(clean, _gen(3))
    assert torch.equal(first, again)
    assert not torch.equal(first, degrade_batch(clean, _gen(4)))
    assert first.shape == clean.shape and first.dtype == clean.dtype
    assert first.min() >= 0.0 and first.max() <= 1.0


def test_the_clean_share_is_left_untouched_and_the_rest_is_not() -> None:
    clean = _blobs(64)
    noisy = degrade_batch(clean, _gen(0), recipe=Recipe(clean=0.25))
    untouched = (noisy == clean).flatten(1).all(dim=1)
    # 64 draws at p = 0.25: far from 0 and from 64, and every other image really changed.
    assert 5 <= untouched.sum().item() <= 30
    assert torch.equal(degrade_batch(clean, _gen(0), recipe=Recipe(clean=1.0)), clean)


def test_gaussian_noise_stays_within_sigma_max() -> None:
    clean = torch.full((64, 3, 32, 32), 0.5)
    noisy = degrade_batch(clean, _gen(1), sigma_max=30.0, recipe=ONLY_GAUSSIAN)
    stds = (noisy - clean).flatten(1).std(dim=1) * 255.0
    assert stds.max() < 30.0 * 1.1  # sigma uniform in [0, 30]: none much above it
    assert stds.min() < 5.0 and stds.max() > 20.0  # spread over the range
    assert torch.equal(degrade_batch(clean, _gen(1), sigma_max=0.0, recipe=ONLY_GAUSSIAN), clean)


@pytest.mark.parametrize("kind", ["gaussian", "poisson"])
def test_grey_noise_is_the_same_on_all_three_channels(kind: str) -> None:
    clean = torch.full((16, 3, 32, 32), 0.5)
    recipe = Recipe(clean=0.0, gaussian=1.0 if kind == "gaussian" else 0.0, poisson=1.0, grey=1.0, jpeg=0.0)
    noise = degrade_batch(clean, _gen(2), sigma_max=10.0, recipe=recipe) - clean
    assert noise.abs().max() > 0
    assert torch.allclose(noise[:, 0], noise[:, 1]) and torch.allclose(noise[:, 0], noise[:, 2])
    colour = degrade_batch(clean, _gen(2), sigma_max=10.0, recipe=Recipe(**{**recipe.__dict__, "grey": 0.0})) - clean
    assert not torch.allclose(colour[:, 0], colour[:, 1])


def test_poisson_noise_grows_with_brightness() -> None:
    dark, bright = torch.full((32, 3, 32, 32), 0.1), torch.full((32, 3, 32, 32), 0.8)
    recipe = Recipe(clean=0.0, gaussian=0.0, poisson=1.0, grey=0.0, jpeg=0.0)
    dark_std = (degrade_batch(dark, _gen(5), recipe=recipe) - dark).std()
    bright_std = (degrade_batch(bright, _gen(5), recipe=recipe) - bright).std()
    assert bright_std > 2.0 * dark_std  # sqrt(0.8 / 0.1) = 2.8 for pure shot noise


def test_jpeg_is_a_real_pillow_jpeg_with_or_without_chroma_subsampling() -> None:
    pixels = np.asarray(blob_image(np.random.default_rng(0), 48, 40))
    for subsampling in (CHROMA_420, CHROMA_444):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=30, subsampling=subsampling)
        assert np.array_equal(jpeg_bytes_roundtrip(pixels, 30, subsampling), np.asarray(Image.open(buffer)))
    assert not np.array_equal(jpeg_bytes_roundtrip(pixels, 30, CHROMA_420), jpeg_bytes_roundtrip(pixels, 30, CHROMA_444))


def test_jpeg_recipe_quantises_and_loses_more_at_low_quality() -> None:
    clean = _blobs(32, seed=7)
    low = degrade_batch(clean, _gen(0), recipe=Recipe(**{**ONLY_JPEG.__dict__, "quality_min": 15, "quality_max": 20}))
    high = degrade_batch(clean, _gen(0), recipe=Recipe(**{**ONLY_JPEG.__dict__, "quality_min": 90, "quality_max": 95}))
    assert torch.equal(low, torch.round(low * 255.0) / 255.0)  # decoded 8-bit pixels
    assert (low - clean).pow(2).mean() > 3.0 * (high - clean).pow(2).mean() > 0


def test_gaussian_only_and_jpeg_only_recipes_degrade_a_batch() -> None:
    clean = _blobs(8)
    for recipe in (Recipe(clean=0.0, gaussian=1.0, poisson=0.0, grey=0.0, jpeg=0.0), ONLY_JPEG, REAL):
        out = degrade_batch(clean, _gen(0), recipe=recipe)
        assert out.shape == clean.shape and not torch.equal(out, clean)


def test_scale_one_crops_are_windows_of_their_own_image() -> None:
    batch = _blobs(6, size=16)
    crops = multiscale_crop(batch, 8, _gen(0), scales={1.0: 1.0})
    assert crops.shape == (6, 3, 8, 8)
    for image, crop in zip(batch, crops):
        windows = image.unfold(1, 8, 1).unfold(2, 8, 1)  # (3, 9, 9, 8, 8)
        assert (windows == crop[:, None, None]).flatten(3).all(dim=3).all(dim=0).any()


def test_the_largest_scale_is_the_whole_image_downscaled() -> None:
    batch = _blobs(4, size=16)
    crops = multiscale_crop(batch, 8, _gen(0), scales={2.0: 1.0})
    expected = F.interpolate(batch, size=(8, 8), mode="bilinear", antialias=True, align_corners=False)
    assert torch.allclose(crops, expected.clamp(0, 1), atol=1e-6)


def test_crops_mix_scales_deterministically() -> None:
    batch = _blobs(32, size=16)
    first = multiscale_crop(batch, 8, _gen(9))
    assert torch.equal(first, multiscale_crop(batch, 8, _gen(9)))
    whole = F.interpolate(batch, size=(8, 8), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
    downscaled = sum(torch.allclose(crop, image, atol=1e-6) for crop, image in zip(first, whole))
    assert 0 < downscaled < len(batch)  # some whole images downscaled, not all
    assert multiscale_crop(batch, 16, _gen(0)) is batch  # nothing to crop


def test_jpeg_batch_is_pillow_at_a_fixed_quality() -> None:
    clean = _blobs(3, size=24)
    pixels = (clean.permute(0, 2, 3, 1).numpy() * 255.0 + 0.5).astype(np.uint8)
    expected = np.stack([jpeg_bytes_roundtrip(image, 20) for image in pixels])
    assert torch.equal(jpeg_batch(clean, 20), torch.from_numpy(expected).permute(0, 3, 1, 2).float() / 255.0)
