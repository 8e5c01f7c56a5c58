"""animevae.training.degrade: seeded, per-kind degradations of training crops (target and degraded copy, aligned),
resampling as Pillow does it, and crops at several scales."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from animevae.training.degrade import (CHROMA_420, CHROMA_444, REAL, RESAMPLERS, Recipe, degrade_pairs, draw_paths,
                                       jpeg_batch, jpeg_bytes_roundtrip, jpeg_roundtrip, multiscale_crop, resample)
from helpers import blob_image

ONLY_GAUSSIAN = Recipe(clean=0.0, gaussian=1.0, poisson=0.0, grey=0.0, jpeg=0.0, resize=0.0)
ONLY_JPEG = Recipe(clean=0.0, gaussian=0.0, poisson=0.0, jpeg=1.0, double_jpeg=0.0, resize=0.0)
# Every image resampled and saved twice, the way back between the saves; no noise.
RESIZED_TWICE_SAVED = Recipe(clean=0.0, gaussian=0.0, poisson=0.0, jpeg=1.0, double_jpeg=1.0, resize=1.0)
PILLOW_FILTERS = dict(zip(RESAMPLERS, (Image.Resampling.BOX, Image.Resampling.BILINEAR, Image.Resampling.BICUBIC,
                                       Image.Resampling.LANCZOS)))


def _blobs(count: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """(count, 3, size, size) float blob images in [0, 1]."""
    rng = np.random.default_rng(seed)
    pixels = np.stack([np.asarray(blob_image(rng, size, size)) for _ in range(count)])
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def degrade_batch(clean: torch.Tensor, generator: torch.Generator, sigma_max: float = 55.0,
                  recipe: Recipe = REAL) -> torch.Tensor:
    """The degraded copy alone, for recipes that never resample (the target is then `clean`)."""
    target, noisy = degrade_pairs(clean, generator, sigma_max, recipe)
    assert torch.equal(target, clean)
    return noisy


def _no_resize(recipe: Recipe, **changes: object) -> Recipe:
    return Recipe(**{**recipe.__dict__, "resize": 0.0, **changes})


def test_the_same_generator_state_gives_the_same_pairs() -> None:
    clean = _blobs(16)
    (target, noisy), (target_again, noisy_again) = degrade_pairs(clean, _gen(3)), degrade_pairs(clean, _gen(3))
    assert torch.equal(target, target_again) and torch.equal(noisy, noisy_again)
    assert not torch.equal(noisy, degrade_pairs(clean, _gen(4))[1])
    for out in (target, noisy):
        assert out.shape == clean.shape and out.dtype == clean.dtype
        assert out.min() >= 0.0 and out.max() <= 1.0


def test_the_clean_share_is_left_untouched_and_the_rest_is_not() -> None:
    clean = _blobs(64)
    noisy = degrade_batch(clean, _gen(0), recipe=Recipe(clean=0.25, resize=0.0))
    untouched = (noisy == clean).flatten(1).all(dim=1)
    # 64 draws at p = 0.25: far from 0 and from 64, and every other image really changed.
    assert 5 <= untouched.sum().item() <= 30
    assert torch.equal(degrade_batch(clean, _gen(0), recipe=Recipe(clean=1.0, resize=0.0)), clean)


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
    recipe = Recipe(clean=0.0, gaussian=1.0 if kind == "gaussian" else 0.0, poisson=1.0, grey=1.0, jpeg=0.0, resize=0.0)
    noise = degrade_batch(clean, _gen(2), sigma_max=10.0, recipe=recipe) - clean
    assert noise.abs().max() > 0
    assert torch.allclose(noise[:, 0], noise[:, 1]) and torch.allclose(noise[:, 0], noise[:, 2])
    colour = degrade_batch(clean, _gen(2), sigma_max=10.0, recipe=Recipe(**{**recipe.__dict__, "grey": 0.0})) - clean
    assert not torch.allclose(colour[:, 0], colour[:, 1])


def test_poisson_noise_grows_with_brightness() -> None:
    dark, bright = torch.full((32, 3, 32, 32), 0.1), torch.full((32, 3, 32, 32), 0.8)
    recipe = Recipe(clean=0.0, gaussian=0.0, poisson=1.0, grey=0.0, jpeg=0.0, resize=0.0)
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


def test_gaussian_only_jpeg_only_and_the_real_recipe_degrade_a_batch() -> None:
    clean = _blobs(8)
    for recipe in (ONLY_GAUSSIAN, ONLY_JPEG, REAL, RESIZED_TWICE_SAVED):
        target, noisy = degrade_pairs(clean, _gen(0), recipe=recipe)
        assert noisy.shape == clean.shape and not torch.equal(noisy, target)


@pytest.mark.parametrize("kernel", RESAMPLERS)
def test_resampling_is_pillows_float_resize(kernel: str) -> None:
    plane = np.random.default_rng(0).random((20, 20), dtype=np.float32)
    for side in (11, 37):  # shrinking (the kernel widened) and enlarging
        expected = np.asarray(Image.fromarray(plane, "F").resize((side, side), PILLOW_FILTERS[kernel]))
        ours = resample(torch.from_numpy(plane), side, kernel)
        assert ours.shape == (side, side)
        assert np.allclose(ours.numpy(), expected.clip(0.0, 1.0), atol=1e-5)


def test_bicubic_and_lanczos_ring_where_area_and_bilinear_do_not() -> None:
    edge = torch.full((1, 16, 16), 0.25)
    edge[..., 8:] = 0.75  # a vertical step
    overshoot = {kernel: (resample(edge, 40, kernel) - 0.75).max().item() for kernel in RESAMPLERS}
    assert overshoot["bicubic"] > 0.01 and overshoot["lanczos"] > 0.01
    assert overshoot["area"] <= 1e-6 and overshoot["bilinear"] <= 1e-6


def test_every_path_of_the_real_recipe_is_drawn() -> None:
    paths = draw_paths(512, 32, _gen(0))
    resized_once = paths.resize & paths.jpeg & ~paths.double  # resampled, then noise and one save
    for name, mask in [("clean", paths.clean), ("gaussian", paths.gaussian), ("poisson", paths.poisson),
                       ("grey", paths.grey), ("jpeg", paths.jpeg), ("double", paths.double), ("resize", paths.resize),
                       ("resized, then one save", resized_once), ("resized between two saves", paths.between),
                       ("resized, kept clean", paths.resize & paths.clean),
                       ("resized, noise only", paths.resize & ~paths.jpeg & ~paths.clean)]:
        assert 0 < int(mask.sum()) < 512, name
    sides = paths.side[paths.resize]
    assert sides.min() >= 16 and sides.max() <= 64 and not (sides == 32).any()
    assert (sides < 32).any() and (sides > 32).any()
    assert set(paths.kernels[paths.resize, 0].tolist()) == set(paths.kernels[paths.resize, 1].tolist()) == {0, 1, 2, 3}


def test_a_resize_only_path_leaves_noisy_equal_to_its_resampled_target() -> None:
    clean = _blobs(8)
    recipe = Recipe(clean=1.0, resize=1.0)
    target, noisy = degrade_pairs(clean, _gen(6), recipe=recipe)
    assert torch.equal(noisy, target)
    paths = draw_paths(8, 32, _gen(6), recipe)
    for index, image in enumerate(clean):
        there, back = (RESAMPLERS[k] for k in paths.kernels[index].tolist())
        expected = resample(resample(image, int(paths.side[index]), there), 32, back)
        assert torch.equal(target[index], expected)
        assert not torch.allclose(target[index], image, atol=1e-3)


def test_resizing_before_the_noise_keeps_the_pair_aligned() -> None:
    clean = _blobs(16)
    recipe = Recipe(clean=0.0, gaussian=1.0, grey=0.0, jpeg=0.0, resize=1.0)
    target, noisy = degrade_pairs(clean, _gen(2), sigma_max=10.0, recipe=recipe)
    residual = noisy - target  # noise of sigma <= 10 on the target itself: no edges left in it
    assert residual.abs().mean() < 0.02 and (residual - residual.mean()).std() < 12.0 / 255.0
    assert (noisy - clean).abs().mean() > residual.abs().mean()


def test_resizing_between_two_saves_keeps_the_pair_aligned() -> None:
    clean = _blobs(16)
    recipe = Recipe(**{**RESIZED_TWICE_SAVED.__dict__, "quality_min": 95, "quality_max": 95, "chroma_420": 0.0})
    target, noisy = degrade_pairs(clean, _gen(1), recipe=recipe)
    error = (noisy - target).pow(2).mean().item()
    shifted = (noisy[..., 1:] - target[..., :-1]).pow(2).mean().item()
    assert error < 0.2 * (noisy - clean).pow(2).mean().item()
    assert error < 0.2 * shifted


def test_resizing_between_two_saves_saves_first_at_the_intermediate_side() -> None:
    clean = _blobs(6)
    target, noisy = degrade_pairs(clean, _gen(8), recipe=RESIZED_TWICE_SAVED)
    replay = _gen(8)
    paths = draw_paths(6, 32, replay, RESIZED_TWICE_SAVED)  # no noise: the JPEG passes draw next, image by image
    for index, image in enumerate(clean):
        there, back = (RESAMPLERS[k] for k in paths.kernels[index].tolist())
        once = jpeg_roundtrip(resample(image, int(paths.side[index]), there), replay, RESIZED_TWICE_SAVED)
        assert torch.equal(noisy[index], jpeg_roundtrip(resample(once, 32, back), replay, RESIZED_TWICE_SAVED))
        assert torch.equal(target[index], resample(resample(image, int(paths.side[index]), there), 32, back))


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


def test_pairs_are_degraded_on_one_thread_and_the_count_is_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    import animevae.training.degrade as degrade

    seen, roundtrip = [], degrade.jpeg_roundtrip
    monkeypatch.setattr(degrade, "jpeg_roundtrip",
                        lambda *args: seen.append(torch.get_num_threads()) or roundtrip(*args))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        degrade_pairs(_blobs(4), _gen(0), recipe=ONLY_JPEG)
        assert seen == [1] * 4 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_with_synthetic_replaces_its_share_of_the_crops_and_costs_nothing_at_zero() -> None:
    from animevae.training.degrade import with_synthetic
    from animevae.training.synthetic import dead_leaves

    crops = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(5)
    state = generator.get_state()
    assert with_synthetic(crops, 0.0, generator) is crops
    assert torch.equal(generator.get_state(), state)  # no draw at 0
    mixed = with_synthetic(crops, 0.25, generator)
    assert mixed.shape == crops.shape
    torch.testing.assert_close(mixed[2:], crops[2:])
    torch.testing.assert_close(mixed[:2], dead_leaves(2, 16, torch.Generator().manual_seed(5)))
