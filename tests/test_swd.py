"""animevae.training.swd: sliced Wasserstein distance on Laplacian-pyramid patches, and its place in evaluate."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from animevae.training.evaluate import swd_report
from animevae.training.swd import laplacian_pyramid, pyramid_sizes, swd


def _textured(count: int, seed: int, size: int = 64) -> np.ndarray:
    """(count, 3, size, size) images, 0-255: random 8x8-pixel blocks of colour with fine noise on top; every
    image drawn from the same distribution."""
    rng = np.random.default_rng(seed)
    blocks = rng.normal(128, 40, (count, 3, size // 8, size // 8)).repeat(8, axis=2).repeat(8, axis=3)
    return np.clip(blocks + rng.normal(0, 25, (count, 3, size, size)), 0, 255).astype(np.float32)


def _box_blur(images: np.ndarray) -> np.ndarray:
    """3x3 box blur (edges repeated): the fine detail goes, the layout stays."""
    padded = np.pad(images, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
    size = images.shape[-1]
    return sum(padded[:, :, i : i + size, j : j + size] for i in range(3) for j in range(3)) / 9.0


def test_levels_of_a_64_pixel_image_are_64_32_16() -> None:
    assert pyramid_sizes(64) == [64, 32, 16] and pyramid_sizes(16) == [16] and pyramid_sizes(128) == [128, 64, 32, 16]
    bands = laplacian_pyramid(_textured(2, 0), 3)
    assert [band.shape[-1] for band in bands] == [64, 32, 16]


def test_identical_sets_are_at_distance_zero_and_a_call_repeats_exactly() -> None:
    images = _textured(16, 1)
    assert swd(images, images.copy()) == {64: 0.0, 32: 0.0, 16: 0.0}
    other = _textured(16, 2)
    assert swd(images, other) == swd(images, other)  # seeded
    assert all(value > 0 for value in swd(images, other).values())


def test_a_blurred_set_is_farther_at_the_fine_level_than_at_the_coarse_ones() -> None:
    real, more_real = _textured(24, 3), _textured(24, 4)
    floor = swd(real, more_real)
    blurred = swd(real, _box_blur(more_real))
    assert blurred[64] > 1.5 * floor[64]  # the blur is plain at the finest level
    assert blurred[64] > blurred[32] and blurred[64] > blurred[16]
    rise = {side: blurred[side] - floor[side] for side in floor}
    assert rise[64] > 2 * max(rise[32], rise[16], 1.0)


def test_sets_of_different_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="same shape"):
        swd(_textured(4, 0), _textured(5, 0))


def test_the_floor_compares_disjoint_real_sets_at_the_samples_size() -> None:
    to_unit = lambda images: torch.from_numpy(images / 255.0)  # noqa: E731
    train, held_out = to_unit(_textured(40, 5)), to_unit(_textured(12, 6))
    samples = to_unit(_box_blur(_textured(30, 7)))
    on_samples, floor, count = swd_report(samples, held_out, train)
    assert count == 12  # the smallest of the three sets: both figures at one size
    assert set(on_samples) == set(floor) == {"64", "32", "16"}
    # Held-out faces are other images than the training faces (not 0), of their kind (below the blurred samples).
    assert 0 < floor["64"] < on_samples["64"]
    # The same held-out faces as samples: the samples' figure is the floor.
    assert swd_report(held_out, held_out, train)[0] == floor
