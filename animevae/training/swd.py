"""Sliced Wasserstein distance between two image sets, on Laplacian-pyramid patches (Karras et al. 2018,
"Progressive Growing of GANs", section 5 and its metrics/sliced_wasserstein.py).

Per pyramid level (64, 32 and 16 px for 64x64 images: the finest holds edges and texture, the coarsest colour
and layout), 128 random 7x7 neighbourhoods per image become descriptors, normalised per channel within each set;
the distance is the mean over 4 repeats of 128 random directions of the 1-D Wasserstein distance between the
projected sets, x1e3. Numpy only, seeded: patch positions depend on the seed and the image's index alone, so
identical sets score 0, and two calls with the same inputs agree.
"""

from __future__ import annotations

import numpy as np

PATCH = 7
PATCHES_PER_IMAGE = 128
REPEATS = 4
DIRECTIONS = 128
# The coarsest level kept: Karras et al. stop at 16 px.
SMALLEST_LEVEL = 16
SCALE = 1e3
# Binomial 5x5 filter of cv2.pyrDown / pyrUp, separable.
_BINOMIAL = np.array([1.0, 4.0, 6.0, 4.0, 1.0], dtype=np.float32) / 16.0


def pyramid_sizes(size: int) -> list[int]:
    """The levels' sides for `size`-pixel images: size, size/2, ... down to SMALLEST_LEVEL (at least one)."""
    sizes = [size]
    while sizes[-1] // 2 >= SMALLEST_LEVEL:
        sizes.append(sizes[-1] // 2)
    return sizes


def _blur(images: np.ndarray, gain: float = 1.0) -> np.ndarray:
    """(N, C, H, W) filtered by the 5x5 binomial (mirrored edges, as scipy's 'mirror' and numpy's 'reflect')."""
    kernel = _BINOMIAL * gain
    out = np.pad(images, ((0, 0), (0, 0), (2, 2), (0, 0)), mode="reflect")
    out = sum(kernel[i] * out[:, :, i : i + images.shape[2]] for i in range(5))
    out = np.pad(out, ((0, 0), (0, 0), (0, 0), (2, 2)), mode="reflect")
    return sum(kernel[i] * out[:, :, :, i : i + images.shape[3]] for i in range(5)).astype(np.float32)


def laplacian_pyramid(images: np.ndarray, levels: int) -> list[np.ndarray]:
    """(N, C, H, W) images -> `levels` bands, finest first: each level less the upsampled next; the last is the
    blurred, downsampled residual."""
    pyramid = [images.astype(np.float32)]
    for _ in range(1, levels):
        smaller = _blur(pyramid[-1])[:, :, ::2, ::2]  # (N, C, H/2, W/2)
        up = np.zeros_like(pyramid[-1])
        up[:, :, ::2, ::2] = smaller
        pyramid[-1] = pyramid[-1] - _blur(up, gain=2.0)  # 2 per axis: 4 in all, for the zeros between
        pyramid.append(smaller)
    return pyramid


def patch_descriptors(level: np.ndarray, seed: int) -> np.ndarray:
    """(N, C, H, W) -> (N * PATCHES_PER_IMAGE, C * PATCH * PATCH) neighbourhoods at seeded positions, normalised
    per channel over the set (each set on its own, as Karras et al.)."""
    n, channels, height, width = level.shape
    half = PATCH // 2
    rng = np.random.default_rng(seed)
    ys = rng.integers(half, height - half, size=(n, PATCHES_PER_IMAGE))
    xs = rng.integers(half, width - half, size=(n, PATCHES_PER_IMAGE))
    offsets = np.arange(-half, half + 1)
    rows = (ys[:, :, None] + offsets)[:, :, :, None]  # (N, P, 7, 1)
    cols = (xs[:, :, None] + offsets)[:, :, None, :]  # (N, P, 1, 7)
    image = np.arange(n)[:, None, None, None]
    patches = level.transpose(0, 2, 3, 1)[image, rows, cols]  # (N, P, 7, 7, C)
    patches = patches.reshape(-1, PATCH * PATCH, channels)
    patches = patches - patches.mean(axis=(0, 1), keepdims=True)
    patches = patches / np.maximum(patches.std(axis=(0, 1), keepdims=True), 1e-8)
    return patches.transpose(0, 2, 1).reshape(len(patches), -1).astype(np.float32)  # channel-major, as theirs


def sliced_wasserstein(a: np.ndarray, b: np.ndarray, seed: int) -> float:
    """Mean 1-D Wasserstein distance between (M, D) descriptor sets of equal size along REPEATS x DIRECTIONS
    random unit directions."""
    rng = np.random.default_rng(seed)
    distances = []
    for _ in range(REPEATS):
        directions = rng.standard_normal((a.shape[1], DIRECTIONS)).astype(np.float32)
        directions /= np.sqrt((directions**2).sum(axis=0, keepdims=True))
        # (DIRECTIONS, M): each direction's projections contiguous, so the sorts run along memory.
        projected_a = np.sort(directions.T @ a.T, axis=1)
        projected_b = np.sort(directions.T @ b.T, axis=1)
        distances.append(float(np.abs(projected_a - projected_b).mean()))
    return float(np.mean(distances))


def swd(images_a: np.ndarray, images_b: np.ndarray, seed: int = 0) -> dict[int, float]:
    """SWD x1e3 per pyramid level, keyed by the level's side, between (N, C, S, S) image sets of the same size
    (any range: descriptors are normalised)."""
    if images_a.shape != images_b.shape:
        raise ValueError(f"the sets must have the same shape, not {images_a.shape} and {images_b.shape}")
    sizes = pyramid_sizes(images_a.shape[-1])
    pyramids = laplacian_pyramid(images_a, len(sizes)), laplacian_pyramid(images_b, len(sizes))
    result = {}
    for index, (size, level_a, level_b) in enumerate(zip(sizes, *pyramids)):
        a = patch_descriptors(level_a, seed * 1_000 + index)
        b = patch_descriptors(level_b, seed * 1_000 + index)
        result[size] = round(SCALE * sliced_wasserstein(a, b, seed * 1_000 + 500 + index), 3)
    return result
