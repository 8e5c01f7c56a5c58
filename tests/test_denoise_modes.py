"""`animevae denoise` keeps what is not noise: alpha bit-identical, grey stays grey; other modes; --strength."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from animevae.cli import app
from animevae.images import decode_layers
from animevae.denoise import compose_output, denoise_array, denoise_folder
from animevae.errors import ArgumentError
from animevae.outputs import MANIFEST_NAME
from animevae.tiling import Tiling
from helpers import CPU, assert_cli_error, assert_ok, blob_image


def _noisy_rgb(width: int = 20, height: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pixels = np.asarray(blob_image(rng, width, height)).astype(np.int16)
    return np.clip(pixels + rng.normal(0, 25, pixels.shape), 0, 255).astype(np.uint8)


def _alpha(width: int = 20, height: int = 16) -> np.ndarray:
    """Every alpha level somewhere, and fully transparent and opaque regions."""
    return (np.arange(width * height) * 7 % 256).astype(np.uint8).reshape(height, width)


def _denoise(runner, trained_run, folder: Path, out: Path, *extra: str):
    return runner.invoke(app, ["denoise", str(folder), "--out", str(out), "--run", "run", "--runs-dir",
                               str(trained_run.runs_dir), *CPU, *extra])


def _open(path: Path) -> tuple[str, np.ndarray]:
    with Image.open(path) as image:
        return image.mode, np.asarray(image)


def test_rgba_comes_out_rgba_with_alpha_bit_identical(runner, trained_run, onnx_models, tmp_path: Path) -> None:
    rgb, alpha = _noisy_rgb(), _alpha()
    (tmp_path / "in").mkdir()
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(tmp_path / "in" / "sprite.png")
    assert_ok(_denoise(runner, trained_run, tmp_path / "in", tmp_path / "out"))
    mode, pixels = _open(tmp_path / "out" / "sprite.png")
    assert mode == "RGBA"
    assert np.array_equal(pixels[:, :, 3], alpha)
    # The colour is the denoised colour as stored (not composited over white first).
    assert np.array_equal(pixels[:, :, :3], denoise_array(onnx_models["denoiser"], rgb[None])[0])


def test_a_tiled_rgba_image_keeps_its_alpha(onnx_models, tmp_path: Path) -> None:
    rgb, alpha = _noisy_rgb(150, 90), _alpha(150, 90)
    (tmp_path / "in").mkdir()
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(tmp_path / "in" / "big.png")
    tiling = Tiling(tile=64, margin=24, blend=8, pixel_budget=64 * 64)
    denoise_folder(onnx_models["denoiser"], tmp_path / "in", tmp_path / "out", workers=0, tiling=tiling)
    mode, pixels = _open(tmp_path / "out" / "big.png")
    assert mode == "RGBA" and pixels.shape == (90, 150, 4)
    assert np.array_equal(pixels[:, :, 3], alpha)


def test_grey_comes_out_grey_and_grey_alpha_keeps_its_alpha(onnx_models, tmp_path: Path) -> None:
    grey = _noisy_rgb()[:, :, 1]
    (tmp_path / "in").mkdir()
    Image.fromarray(grey, "L").save(tmp_path / "in" / "grey.png")
    Image.fromarray(np.dstack([grey, _alpha()]), "LA").save(tmp_path / "in" / "grey_alpha.png")
    denoise_folder(onnx_models["denoiser"], tmp_path / "in", tmp_path / "out", workers=0)
    denoised = denoise_array(onnx_models["denoiser"], np.repeat(grey[None, :, :, None], 3, axis=3))[0]
    expected = np.round(denoised.astype(float).mean(axis=2))
    mode, pixels = _open(tmp_path / "out" / "grey.png")
    assert mode == "L" and np.array_equal(pixels, expected)
    mode, pixels = _open(tmp_path / "out" / "grey_alpha.png")
    assert mode == "LA" and np.array_equal(pixels[:, :, 0], expected) and np.array_equal(pixels[:, :, 1], _alpha())


def test_16_bit_grey_is_scaled_to_8_bit_grey(onnx_models, tmp_path: Path) -> None:
    deep = (np.arange(16 * 20).reshape(16, 20) * 200).astype(np.uint16)
    (tmp_path / "in").mkdir()
    Image.fromarray(deep).save(tmp_path / "in" / "deep.png")
    layers = decode_layers(tmp_path / "in" / "deep.png")
    assert layers.grey and layers.alpha is None
    assert np.array_equal(layers.rgb[:, :, 0], np.clip(deep / 65535 * 255 + 0.5, 0, 255).astype(np.uint8))
    denoise_folder(onnx_models["denoiser"], tmp_path / "in", tmp_path / "out", workers=0)
    assert _open(tmp_path / "out" / "deep.png")[0] == "L"


def test_palette_cmyk_and_transparency_keys(tmp_path: Path) -> None:
    rgb = _noisy_rgb()
    palette = Image.fromarray(rgb).quantize(16)
    palette.save(tmp_path / "pal.png")
    layers = decode_layers(tmp_path / "pal.png")
    assert not layers.grey and layers.alpha is None
    assert np.array_equal(layers.rgb, np.asarray(palette.convert("RGB")))
    palette.save(tmp_path / "pal_t.png", transparency=0)  # palette entry 0 transparent
    layers = decode_layers(tmp_path / "pal_t.png")
    assert np.array_equal(layers.alpha == 0, np.asarray(palette) == 0)
    cmyk = Image.fromarray(rgb).convert("CMYK")
    cmyk.save(tmp_path / "print.tif")
    layers = decode_layers(tmp_path / "print.tif")
    assert layers.alpha is None and np.array_equal(layers.rgb, np.asarray(cmyk.convert("RGB")))


def test_compose_output_shapes() -> None:
    from animevae.images import ImageLayers

    rgb, alpha = _noisy_rgb(), _alpha()
    assert compose_output(ImageLayers(rgb, None, False), rgb).shape == (16, 20, 3)
    assert compose_output(ImageLayers(rgb, alpha, False), rgb).shape == (16, 20, 4)
    assert compose_output(ImageLayers(rgb, None, True), rgb).shape == (16, 20)
    assert compose_output(ImageLayers(rgb, alpha, True), rgb).shape == (16, 20, 2)


def test_strength_blends_input_and_output(runner, trained_run, onnx_models, tmp_path: Path) -> None:
    rgb = _noisy_rgb()
    (tmp_path / "in").mkdir()
    Image.fromarray(rgb).save(tmp_path / "in" / "a.png")
    full = denoise_array(onnx_models["denoiser"], rgb[None])[0]
    outputs = {}
    for strength in ("0", "0.5", "1"):
        assert_ok(_denoise(runner, trained_run, tmp_path / "in", tmp_path / strength, "--strength", strength))
        outputs[strength] = _open(tmp_path / strength / "a.png")[1]
    assert np.array_equal(outputs["0"], rgb)
    assert np.array_equal(outputs["1"], full)
    assert np.abs(outputs["0.5"].astype(float) - (rgb.astype(float) + full) / 2).max() <= 0.5
    assert json.loads((tmp_path / "0.5" / MANIFEST_NAME).read_text())["strength"] == 0.5
    # A rerun at another strength into the same folder would mix two kinds of files: refused.
    assert_cli_error(_denoise(runner, trained_run, tmp_path / "in", tmp_path / "0.5", "--strength", "0.7"),
                     "another model or settings", "--overwrite")


@pytest.mark.parametrize("value", ["-0.1", "1.5"])
def test_strength_out_of_range_is_refused(runner, trained_run, tmp_path: Path, value: str) -> None:
    (tmp_path / "in").mkdir()
    Image.fromarray(_noisy_rgb()).save(tmp_path / "in" / "a.png")
    result = _denoise(runner, trained_run, tmp_path / "in", tmp_path / "out", "--strength", value)
    assert result.exit_code != 0 and not (tmp_path / "out").exists()


def test_strength_out_of_range_is_refused_by_the_api(onnx_models, tmp_path: Path) -> None:
    with pytest.raises(ArgumentError):
        denoise_folder(onnx_models["denoiser"], tmp_path, tmp_path.parent / "out", strength=2.0)
