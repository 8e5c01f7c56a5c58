"""animevae.denoise and `animevae denoise`: mirrored trees, own sizes, bad files listed, reruns resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from animevae.cli import app
from animevae.images import decode_rgb
from animevae.denoise import default_out_dir, denoise_array, denoise_folder, plan_outputs
from animevae.outputs import SKIPPED_NAME
from animevae.images import decode_layers, decode_rgb
from animevae.denoise import compose_output, default_out_dir, denoise_array, denoise_folder, plan_outputs
from animevae.errors import ArgumentError, DataError
from animevae.outputs import MANIFEST_NAME, SKIPPED_NAME
from animevae.shard import Shard
from animevae.tiling import Tiling
from helpers import (CPU, MESSY_GOOD, assert_cli_error, assert_ok, blob_image, locked_is_readable, read_rgb, snapshot,
                     temp_leftovers, write_blobs)

# relative path -> (width, height) of the input image
GOOD = {
    "a.png": (16, 16),
    "wide.png": (24, 16),          # H 16, W 24
    "odd.jpg": (17, 13),           # H 13, W 17: padded to 16 x 20 inside, cropped back
    "sub/b.webp": (20, 20),
    "sub/deeper/c.bmp": (16, 16),
}


def _noisy_tree(root: Path, bad: bool = True) -> Path:
    rng = np.random.default_rng(11)
    for relative, (width, height) in GOOD.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = np.asarray(blob_image(rng, width, height)).astype(np.int16)
        noisy = np.clip(pixels + rng.normal(0, 25, pixels.shape), 0, 255).astype(np.uint8)
        options = {"quality": 95} if relative.endswith(".jpg") else {}
        Image.fromarray(noisy).save(path, **options)
    (root / "notes.txt").write_text("not an image, not listed")
    if bad:
        (root / "sub" / "broken.png").write_bytes(b"\x89PNG but not really")
    return root


def _outputs(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))


def _denoise(runner, trained_run, folder: Path, *extra: str):
    return runner.invoke(app, ["denoise", str(folder), "--run", "run", "--runs-dir", str(trained_run.runs_dir), *CPU,
                               *extra])


EXPECTED = sorted(str(Path(r).with_suffix(".png")) for r in GOOD)


def test_output_mirrors_the_tree_at_each_images_own_size(runner, trained_run, tmp_path: Path) -> None:
    noisy = _noisy_tree(tmp_path / "noisy")
    out = tmp_path / "clean"
    result = _denoise(runner, trained_run, noisy, "--out", str(out))

    # One bad file: listed, the others finish, exit 1.
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    assert "wrote 5 images (0 already there)" in result.output
    assert "broken.png" in result.output
    assert f"error: 1 files failed (listed in {out / SKIPPED_NAME})" in result.output.splitlines()
    assert json.loads((out / SKIPPED_NAME).read_text()) == [
        {"path": "sub/broken.png", "reason": "not an image Pillow can read"}]

    assert _outputs(out) == EXPECTED
    for relative, (width, height) in GOOD.items():
        assert read_rgb(out / Path(relative).with_suffix(".png")).shape == (height, width, 3), relative
    assert temp_leftovers(out) == []
    # The input is untouched: no outputs written beside it.
    assert sorted(str(p.relative_to(noisy)) for p in noisy.rglob("*") if p.is_file()) == sorted(
        [*GOOD, "notes.txt", "sub/broken.png"])


def test_outputs_are_the_denoisers_outputs(runner, trained_run, onnx_models, tmp_path: Path) -> None:
    noisy = _noisy_tree(tmp_path / "noisy", bad=False)
    out = tmp_path / "clean"
    assert_ok(_denoise(runner, trained_run, noisy, "--out", str(out)))
    for relative in ("odd.jpg", "wide.png"):
        expected = denoise_array(onnx_models["denoiser"], decode_rgb(noisy / relative)[None])[0]
        assert np.array_equal(read_rgb(out / Path(relative).with_suffix(".png")), expected)


def test_failed_files_give_exactly_one_error_line(runner, trained_run, tmp_path: Path) -> None:
    noisy = _noisy_tree(tmp_path / "noisy")
    out = tmp_path / "clean"
    result = _denoise(runner, trained_run, noisy, "--out", str(out))
    assert result.exit_code == 1
    assert [line for line in result.output.splitlines() if line.startswith("error:")] == [
        f"error: 1 files failed (listed in {out / SKIPPED_NAME})"]


def test_failed_files_report_has_a_hint(runner, trained_run, tmp_path: Path) -> None:
    noisy = _noisy_tree(tmp_path / "noisy")
    assert_cli_error(_denoise(runner, trained_run, noisy, "--out", str(tmp_path / "clean")), "1 files failed")


def test_default_out_is_beside_the_input(runner, runs_copy: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    _noisy_tree(tmp_path / "noisy", bad=False)
    monkeypatch.chdir(tmp_path)  # runs_copy is ./runs, so no --runs-dir and no --run
    result = runner.invoke(app, ["denoise", "noisy", *CPU])
    assert_ok(result)
    assert default_out_dir(Path("noisy")) == tmp_path / "noisy-denoised"
    assert _outputs(tmp_path / "noisy-denoised") == EXPECTED
    assert not (tmp_path / "noisy-denoised" / SKIPPED_NAME).exists()


@pytest.mark.parametrize("inside", [".", "out", "sub/out"])
def test_out_inside_the_input_is_refused(runner, trained_run, tmp_path: Path, inside: str) -> None:
    noisy = _noisy_tree(tmp_path / "noisy", bad=False)
    before = snapshot(noisy)
    result = _denoise(runner, trained_run, noisy, "--out", str(noisy / inside))
    assert_cli_error(result, "is inside the input folder", "outside the input")
    assert snapshot(noisy) == before


def test_rerun_skips_finished_files(runner, trained_run, tmp_path: Path) -> None:
    noisy = _noisy_tree(tmp_path / "noisy", bad=False)
    out = tmp_path / "clean"
    assert_ok(_denoise(runner, trained_run, noisy, "--out", str(out)))
    before = snapshot(out)
    result = _denoise(runner, trained_run, noisy, "--out", str(out))
    assert_ok(result)
    assert "wrote 0 images (5 already there)" in result.output
    after = snapshot(out)
    assert after.keys() == before.keys()
    for name, (mtime, data) in before.items():
        assert after[name][1] == data
        if name.endswith(".png"):
            assert after[name][0] == mtime, f"{name} was rewritten"

    (out / "sub" / "b.png").unlink()
    result = _denoise(runner, trained_run, noisy, "--out", str(out))
    assert_ok(result)
    assert "wrote 1 images (4 already there)" in result.output
    assert (out / "sub" / "b.png").read_bytes() == before["sub/b.png"][1]


def test_rerun_with_a_bad_file_still_fails_but_writes_nothing(runner, trained_run, tmp_path: Path) -> None:
    noisy = _noisy_tree(tmp_path / "noisy")
    out = tmp_path / "clean"
    assert _denoise(runner, trained_run, noisy, "--out", str(out)).exit_code == 1
    result = _denoise(runner, trained_run, noisy, "--out", str(out))
    assert result.exit_code == 1
    assert "wrote 0 images (5 already there)" in result.output


def test_output_name_clashes_are_skipped(onnx_models, tmp_path: Path) -> None:
    noisy = tmp_path / "noisy"
    noisy.mkdir()
    blob_image(np.random.default_rng(0), 8, 8).save(noisy / "x.jpg")
    blob_image(np.random.default_rng(1), 8, 8).save(noisy / "x.png")
    result = denoise_folder(onnx_models["denoiser"], noisy, tmp_path / "out", workers=0)
    assert result.written == 1
    assert [(s.path, s.reason) for s in result.skipped] == [("x.png", "same output name as x.jpg")]
    assert np.array_equal(read_rgb(tmp_path / "out" / "x.png"),
                          denoise_array(onnx_models["denoiser"], decode_rgb(noisy / "x.jpg")[None])[0])


def test_plan_outputs_and_shards(tmp_path: Path) -> None:
    noisy = _noisy_tree(tmp_path / "noisy")
    out = tmp_path / "out"
    pairs, skipped = plan_outputs(noisy, out)
    assert sorted(str(dst.relative_to(out)) for _, dst in pairs) == sorted([*EXPECTED, "sub/broken.png"])
    assert skipped == []
    halves = [plan_outputs(noisy, out, Shard(i, 2))[0] for i in range(2)]
    assert sorted(halves[0] + halves[1]) == sorted(pairs)
    assert not set(halves[0]) & set(halves[1])


def test_shards_together_denoise_every_file(onnx_models, tmp_path: Path) -> None:
    noisy = _noisy_tree(tmp_path / "noisy", bad=False)
    whole = denoise_folder(onnx_models["denoiser"], noisy, tmp_path / "whole", workers=0)
    assert whole.written == 5
    parts = [denoise_folder(onnx_models["denoiser"], noisy, tmp_path / "split", workers=0, shard=Shard(i, 3))
             for i in range(3)]
    assert sum(p.written for p in parts) == 5
    whole_files = {k: v[1] for k, v in snapshot(tmp_path / "whole").items()}
    assert {k: v[1] for k, v in snapshot(tmp_path / "split").items()} == whole_files


def test_api_errors(onnx_models, tmp_path: Path) -> None:
    denoiser = onnx_models["denoiser"]
    with pytest.raises(DataError, match="does not exist"):
        denoise_folder(denoiser, tmp_path / "missing", tmp_path / "out")
    afile = tmp_path / "file.png"
    afile.write_bytes(b"x")
    with pytest.raises(DataError, match="is not a folder"):
        denoise_folder(denoiser, afile, tmp_path / "out")
    (tmp_path / "in").mkdir()
    with pytest.raises(ArgumentError, match="--batch-size"):
        denoise_folder(denoiser, tmp_path / "in", tmp_path / "out", batch_size=0)
    assert not (tmp_path / "out").exists()


def test_cli_errors(runner, trained_run, tmp_path: Path) -> None:
    assert_cli_error(_denoise(runner, trained_run, tmp_path / "missing"), "does not exist")
    noisy = _noisy_tree(tmp_path / "noisy", bad=False)
    assert_cli_error(_denoise(runner, trained_run, noisy, "--batch-size", "0"), "--batch-size must be at least 1")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "mine.png").write_bytes(b"keep")
    assert_cli_error(_denoise(runner, trained_run, noisy, "--out", str(foreign)),
                     "already holds PNG files that animevae did not generate", "--overwrite")
    assert (foreign / "mine.png").read_bytes() == b"keep"
    assert_ok(_denoise(runner, trained_run, noisy, "--out", str(foreign), "--overwrite"))
    assert _outputs(foreign) == sorted([*EXPECTED, "mine.png"])


def test_shards_keep_their_own_failure_lists(runner, trained_run, tmp_path: Path) -> None:
    from animevae.outputs import skipped_name

    noisy = tmp_path / "noisy"
    write_blobs(noisy, count=6)
    (noisy / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "clean"
    codes = [runner.invoke(app, ["denoise", str(noisy), "--out", str(out), "--shard", f"{i}/2", "--model",
                                 str(trained_run.export_dir), "--device", "cpu", "-q"]).exit_code for i in range(2)]
    assert sorted(codes) == [0, 1]  # exactly one shard owns the broken file
    failed = codes.index(1)
    assert (out / skipped_name(failed, 2)).is_file() and not (out / skipped_name(1 - failed, 2)).exists()
    assert len(list(out.glob("*.png"))) == 6


def test_denoise_finishes_the_good_files_and_exits_1(messy, runner, trained_run, tmp_path) -> None:
    folder, odd, broken = messy
    out = tmp_path / "clean"
    result = runner.invoke(app, ["denoise", str(folder), "--out", str(out), "--model",
                                 str(trained_run.export_dir), *CPU])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    written = {str(p.relative_to(out)) for p in out.rglob("*.png")}
    assert len(written) == MESSY_GOOD + len(odd) + (1 if locked_is_readable(folder) else 0)
    assert "nested/a/b/inner.png" in written
    with Image.open(out / "wide.png") as image:
        assert image.size == (2000, 20)
    report = {entry["path"] for entry in json.loads((out / "skipped.json").read_text())}
    assert report >= broken


def _noisy_rgb(width: int = 20, height: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pixels = np.asarray(blob_image(rng, width, height)).astype(np.int16)
    return np.clip(pixels + rng.normal(0, 25, pixels.shape), 0, 255).astype(np.uint8)


def _alpha(width: int = 20, height: int = 16) -> np.ndarray:
    """Every alpha level somewhere, and fully transparent and opaque regions."""
    return (np.arange(width * height) * 7 % 256).astype(np.uint8).reshape(height, width)


def _denoise_into(runner, trained_run, folder: Path, out: Path, *extra: str):
    return runner.invoke(app, ["denoise", str(folder), "--out", str(out), "--run", "run", "--runs-dir",
                               str(trained_run.runs_dir), *CPU, *extra])


def _open(path: Path) -> tuple[str, np.ndarray]:
    with Image.open(path) as image:
        return image.mode, np.asarray(image)


def test_rgba_comes_out_rgba_with_alpha_bit_identical(runner, trained_run, onnx_models, tmp_path: Path) -> None:
    rgb, alpha = _noisy_rgb(), _alpha()
    (tmp_path / "in").mkdir()
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(tmp_path / "in" / "sprite.png")
    assert_ok(_denoise_into(runner, trained_run, tmp_path / "in", tmp_path / "out"))
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
        assert_ok(_denoise_into(runner, trained_run, tmp_path / "in", tmp_path / strength, "--strength", strength))
        outputs[strength] = _open(tmp_path / strength / "a.png")[1]
    assert np.array_equal(outputs["0"], rgb)
    assert np.array_equal(outputs["1"], full)
    assert np.abs(outputs["0.5"].astype(float) - (rgb.astype(float) + full) / 2).max() <= 0.5
    assert json.loads((tmp_path / "0.5" / MANIFEST_NAME).read_text())["strength"] == 0.5
    # A rerun at another strength into the same folder would mix two kinds of files: refused.
    assert_cli_error(_denoise_into(runner, trained_run, tmp_path / "in", tmp_path / "0.5", "--strength", "0.7"),
                     "another model or settings", "--overwrite")


@pytest.mark.parametrize("value", ["-0.1", "1.5"])
def test_strength_out_of_range_is_refused(runner, trained_run, tmp_path: Path, value: str) -> None:
    (tmp_path / "in").mkdir()
    Image.fromarray(_noisy_rgb()).save(tmp_path / "in" / "a.png")
    result = _denoise_into(runner, trained_run, tmp_path / "in", tmp_path / "out", "--strength", value)
    assert result.exit_code != 0 and not (tmp_path / "out").exists()


def test_strength_out_of_range_is_refused_by_the_api(onnx_models, tmp_path: Path) -> None:
    with pytest.raises(ArgumentError):
        denoise_folder(onnx_models["denoiser"], tmp_path, tmp_path.parent / "out", strength=2.0)
