"""animevae.tiling and tiled denoising: any size, bounded model calls, no seams, same as an untiled run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from animevae.denoise import denoise_array, denoise_folder, denoise_image
from animevae.tiling import Tiling, edge_weights, run_tiled, tile_starts
from helpers import blob_image, read_rgb

SMALL = Tiling(tile=32, margin=4, blend=4, pixel_budget=2 * 32 * 32)


def _picture(width: int, height: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pixels = np.asarray(blob_image(rng, width, height)).astype(np.int16)
    return np.clip(pixels + rng.normal(0, 20, pixels.shape), 0, 255).astype(np.uint8)


def _box_blur(batch: np.ndarray) -> np.ndarray:
    """A 5x5 mean with zero padding: wrong within 2 pixels of a tile edge, as a real model is near its edges."""
    padded = np.pad(batch, ((0, 0), (0, 0), (2, 2), (2, 2)))
    height, width = batch.shape[2:]
    return sum(padded[:, :, dy : dy + height, dx : dx + width] for dy in range(5) for dx in range(5)) / 25.0


def test_tiles_cover_the_axis_with_the_last_flush_at_the_end() -> None:
    assert tile_starts(20, 32, 24) == [0]
    assert tile_starts(100, 32, 24) == [0, 24, 48, 68]
    weights = [edge_weights(32, s, 100, 4, 4) for s in tile_starts(100, 32, 24)]
    total = np.zeros(100)
    for start, weight in zip(tile_starts(100, 32, 24), weights):
        total[start : start + 32] += weight
    assert total.min() > 0
    assert weights[0][0] == 1.0 and weights[-1][-1] == 1.0  # no ramp at the image border
    assert weights[1][:4].max() == 0.0  # an inner tile's margin is discarded


@pytest.mark.parametrize("height, width", [(32, 32), (33, 95), (100, 70), (17, 130)])
def test_an_identity_model_gives_the_image_back_exactly(height: int, width: int) -> None:
    image = _picture(width, height)
    assert np.array_equal(run_tiled(lambda tiles: tiles, image, SMALL), image)


def test_margins_make_tiling_match_an_untiled_run_and_no_margin_leaves_seams() -> None:
    image = _picture(90, 70)
    whole = run_tiled(_box_blur, image, Tiling(tile=128))  # fits: one tile, no seams
    tiled = run_tiled(_box_blur, image, SMALL)
    assert np.abs(tiled.astype(int) - whole.astype(int)).max() <= 1
    seamy = run_tiled(_box_blur, image, Tiling(tile=32, margin=0, blend=1, pixel_budget=2 * 32 * 32))
    assert np.abs(seamy.astype(int) - whole.astype(int)).max() > 10


def test_model_calls_hold_at_most_the_pixel_budget() -> None:
    calls = []

    def recording(tiles: np.ndarray) -> np.ndarray:
        calls.append(tiles.shape)
        return tiles

    run_tiled(recording, _picture(150, 100), SMALL)
    assert all(count * h * w <= SMALL.pixel_budget for count, _, h, w in calls)
    assert max(count for count, *_ in calls) == 2
    assert sum(count for count, *_ in calls) == len(tile_starts(100, 32, SMALL.stride)) * len(tile_starts(150, 32, SMALL.stride))


def test_bad_tiling_is_refused() -> None:
    with pytest.raises(ValueError):
        Tiling(tile=30).check()
    with pytest.raises(ValueError):
        Tiling(tile=32, margin=12, blend=4).check()


def test_the_tiny_denoiser_tiled_is_within_one_level_of_untiled(onnx_models) -> None:
    denoiser = onnx_models["denoiser"]
    image = _picture(150, 110, seed=3)
    untiled = denoise_array(denoiser, image[None])[0]
    tiled = denoise_image(denoiser, image, Tiling(tile=64, margin=24, blend=8, pixel_budget=64 * 64))
    assert np.abs(tiled.astype(int) - untiled.astype(int)).max() <= 1
    assert np.array_equal(denoise_image(denoiser, image, Tiling(tile=256)), untiled)  # fits: not tiled


def test_a_folder_mixes_tiled_and_whole_images(onnx_models, tmp_path: Path) -> None:
    denoiser = onnx_models["denoiser"]
    noisy = tmp_path / "noisy"
    noisy.mkdir()
    images = {"big.png": _picture(150, 110, seed=1), "small.png": _picture(24, 20, seed=2),
              "small2.png": _picture(24, 20, seed=4)}
    for name, pixels in images.items():
        Image.fromarray(pixels).save(noisy / name)
    tiling = Tiling(tile=64, margin=24, blend=8, pixel_budget=64 * 64)
    result = denoise_folder(denoiser, noisy, tmp_path / "out", workers=0, tiling=tiling)
    assert result.written == 3 and not result.skipped
    for name, pixels in images.items():
        out = read_rgb(tmp_path / "out" / name)
        assert np.abs(out.astype(int) - denoise_array(denoiser, pixels[None])[0].astype(int)).max() <= 1, name
