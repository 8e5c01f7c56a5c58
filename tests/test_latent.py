"""augment, interpolate and traverse (animevae.latent and their CLI commands) on a tiny model trained here."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from animevae.cli import app
from helpers import TINY_MODEL, assert_cli_error, assert_ok, read_rgb, snapshot, write_blobs

TILE = 16 + 2  # contact sheets pad each 16 px tile by 2 px


@dataclass(frozen=True)
class Tiny:
    """A 16 px model trained for one epoch on 30 blob images and exported. Tests must not modify it."""

    faces: Path
    runs_dir: Path
    export_dir: Path

    def flags(self) -> list[str]:
        """CLI flags that pick this model on the CPU."""
        return ["--model", str(self.export_dir), "--device", "cpu"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    from animevae.config import ModelConfig, TrainConfig
    from animevae.training.export import export_run
    from animevae.training.train import train

    base = tmp_path_factory.mktemp("latent")
    faces = base / "faces"
    write_blobs(faces, count=30)
    runs_dir = base / "runs"
    result = train(faces, ModelConfig(**TINY_MODEL),
                   TrainConfig(epochs=1, batch_size=16, val_size=4, precision="fp32"), runs_dir, "tiny", device="cpu")
    return Tiny(faces, runs_dir, export_run(result.run_dir).folder)


@pytest.fixture(scope="module")
def models(tiny: Tiny):
    from animevae.latent import open_latent_models

    return open_latent_models(tiny.runs_dir, None, str(tiny.export_dir), "cpu", need_encoder=True)


@pytest.fixture
def src(tmp_path: Path) -> Path:
    """4 images at the top of a folder and 2 in a subfolder."""
    folder = tmp_path / "src"
    write_blobs(folder, count=4, seed=1)
    write_blobs(folder / "sub", count=2, seed=2, prefix="s")
    return folder


def pngs(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*.png")}


def decode_endpoints(models, images: list[Path]) -> np.ndarray:
    from animevae.latent import decode_latents, encode_images, load_square

    mu, _ = encode_images(models.encoder, np.stack([load_square(p, models.image_size) for p in images]))
    return decode_latents(models.decoder, mu)


# ---------------------------------------------------------------- augment


def test_augment_writes_k_files_per_source_and_a_rerun_resumes(tiny: Tiny, src: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["augment", str(src), "--per-image", "3", "--strength", "0.5", "--out", str(out), "-q", *tiny.flags()]
    result = CliRunner().invoke(app, [*args, "--batch-size", "5"])
    assert_ok(result)
    stems = ["face000", "face001", "face002", "face003", "sub/s000", "sub/s001"]
    assert pngs(out) == {f"{stem}_{k}.png" for stem in stems for k in range(3)}
    assert all(read_rgb(out / name).shape == (16, 16, 3) for name in pngs(out))
    assert "wrote 18 variations (0 already there) of 6 images" in result.output
    assert f"model: --model {tiny.export_dir}" in result.output
    before = snapshot(out)

    again = CliRunner().invoke(app, [*args, "--batch-size", "5"])
    assert_ok(again)
    assert "wrote 0 variations (18 already there)" in again.output
    assert snapshot(out) == before  # nothing rewritten, not even the manifest

    # A lost file comes back byte for byte, whatever the batch size: draws depend on (seed, path, k) alone.
    (out / "face001_2.png").unlink()
    (out / "sub" / "s000_0.png").unlink()
    resumed = CliRunner().invoke(app, [*args, "--batch-size", "64"])
    assert_ok(resumed)
    assert "wrote 2 variations (16 already there)" in resumed.output
    assert {k: v[1] for k, v in snapshot(out).items()} == {k: v[1] for k, v in before.items()}


def test_strength_zero_reconstructs_and_spread_grows_with_strength(tiny: Tiny, models, tmp_path: Path) -> None:
    from animevae.augment import augment_folder

    outs = {}
    for strength in (0.0, 0.5, 1.5):
        out = tmp_path / f"s{strength}"
        result = augment_folder(models, tiny.faces, out, per_image=3, strength=strength, seed=7, workers=0)
        assert (result.written, result.skipped) == (90, [])
        outs[strength] = {name: read_rgb(out / name).astype(np.float64) for name in pngs(out)}
    stems = [p.stem for p in sorted(tiny.faces.glob("*.png"))]
    for stem in stems:  # strength 0: every k is the reconstruction, byte for byte
        files = [(tmp_path / "s0.0" / f"{stem}_{k}.png").read_bytes() for k in range(3)]
        assert files[0] == files[1] == files[2]
    recon = decode_endpoints(models, [tiny.faces / f"{stems[0]}.png"])[0]
    assert np.array_equal(read_rgb(tmp_path / "s0.0" / f"{stems[0]}_0.png"), recon)

    # Distance of the draws from the reconstruction, averaged over 30 sources x 3 draws. (A one-epoch model's
    # reconstruction error, ~68/255, swamps the spread, so the distance to the source is not what grows.)
    def spread(strength: float) -> float:
        return float(np.mean([np.abs(outs[strength][n] - outs[0.0][n]).mean() for n in outs[0.0]]))

    assert spread(0.0) == 0.0 < spread(0.5) < spread(1.5)


def test_augment_reports_bad_files_and_finishes_the_others(tiny: Tiny, src: Path, tmp_path: Path) -> None:
    (src / "broken.png").write_bytes(b"not a png at all")
    (src / "sub" / "empty.jpg").write_bytes(b"")
    out = tmp_path / "out"
    args = ["augment", str(src), "--per-image", "2", "--out", str(out), "-q", *tiny.flags()]
    result = CliRunner().invoke(app, args)
    assert_cli_error(result, "2 files failed", "broken.png", "skipped.json")
    assert len(pngs(out)) == 6 * 2
    listed = json.loads((out / "skipped.json").read_text())
    assert sorted(entry["path"] for entry in listed) == ["broken.png", "sub/empty.jpg"]
    before = snapshot(out)
    assert_cli_error(CliRunner().invoke(app, args), "2 files failed")
    assert snapshot(out).keys() == before.keys()


def test_augment_refuses_a_folder_of_another_strength_unless_overwrite(tiny: Tiny, src: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    base = ["augment", str(src), "--per-image", "1", "--out", str(out), "-q", *tiny.flags()]
    assert_ok(CliRunner().invoke(app, [*base, "--strength", "0.5"]))
    assert_cli_error(CliRunner().invoke(app, [*base, "--strength", "1.0"]), "strength 0.5, now 1.0", "--overwrite")
    replaced = CliRunner().invoke(app, [*base, "--strength", "1.0", "--overwrite"])
    assert_ok(replaced)
    assert "wrote 6 variations (0 already there)" in replaced.output


# ---------------------------------------------------------------- interpolate


def test_interpolate_images_writes_strip_frames_and_gif(tiny: Tiny, models, tmp_path: Path) -> None:
    a, b = tiny.faces / "face000.png", tiny.faces / "face007.png"
    strip, frames, gif = tmp_path / "strip.png", tmp_path / "frames", tmp_path / "walk" / "walk.gif"
    result = CliRunner().invoke(app, ["interpolate", str(a), str(b), "--steps", "5", "--out", str(strip),
                                      "--frames", str(frames), "--gif", str(gif), *tiny.flags()])
    assert_ok(result)
    assert f"wrote {strip}: 5 frames" in result.output and "model: --model" in result.output
    sheet = read_rgb(strip)
    assert sheet.shape == (TILE + 2, 5 * TILE + 2, 3)
    assert sorted(p.name for p in frames.iterdir()) == [f"frame_{i:03d}.png" for i in range(5)]
    for i in range(5):
        assert np.array_equal(sheet[2:18, 2 + i * TILE : 18 + i * TILE], read_rgb(frames / f"frame_{i:03d}.png"))
    ends = decode_endpoints(models, [a, b])
    assert np.array_equal(read_rgb(frames / "frame_000.png"), ends[0])
    assert np.array_equal(read_rgb(frames / "frame_004.png"), ends[1])
    with Image.open(gif) as animation:
        assert (animation.format, animation.size, animation.info.get("loop")) == ("GIF", (16, 16), 0)
        assert 1 <= animation.n_frames <= 5  # Pillow merges identical neighbouring frames


def test_interpolate_seeds_starts_and_ends_at_the_prior_draws(tiny: Tiny, models, tmp_path: Path) -> None:
    from animevae.latent import decode_latents

    strip, frames = tmp_path / "seeds.png", tmp_path / "frames"
    result = CliRunner().invoke(app, ["interpolate", "--seed-a", "3", "--seed-b", "11", "--steps", "4",
                                      "--out", str(strip), "--frames", str(frames), *tiny.flags()])
    assert_ok(result)
    assert "from seed 3 to seed 11" in result.output
    assert read_rgb(strip).shape == (TILE + 2, 4 * TILE + 2, 3)
    # The ends are image 0 of `generate --seed 3` and of `--seed 11`: the sampler's draws (prior.onnx here).
    ends = decode_latents(models.decoder, np.concatenate([models.sampler(3, [0]), models.sampler(11, [0])]))
    assert np.array_equal(read_rgb(frames / "frame_000.png"), ends[0])
    assert np.array_equal(read_rgb(frames / "frame_003.png"), ends[1])


def test_slerp_keeps_the_radius_and_falls_back_to_linear_when_parallel() -> None:
    from animevae.latent import interpolation_path, slerp

    a, b = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    path, linear = slerp(a, b, np.linspace(0, 1, 5))
    assert not linear and np.allclose(np.linalg.norm(path, axis=1), 1.0)
    assert np.allclose(path[0], a) and np.allclose(path[-1], b)
    path, linear = slerp(a, 2 * a, np.linspace(0, 1, 3))
    assert linear and np.allclose(path[1], 1.5 * a)
    mean = np.array([5.0, -2.0, 1.0], np.float32)
    start, end = (mean + a).astype(np.float32), (mean + b).astype(np.float32)
    walk, linear = interpolation_path(start, end, 7, mean)
    assert walk.dtype == np.float32 and walk.shape == (7, 3) and not linear
    assert np.array_equal(walk[0], start) and np.array_equal(walk[-1], end)
    assert np.allclose(np.linalg.norm(walk - mean, axis=1), 1.0, atol=1e-5)  # around the mean, not the origin


def test_gif_loops_forever_with_one_frame_each() -> None:
    from animevae.latent import encode_gif

    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    data = encode_gif(np.broadcast_to(colours[:, None, None, :], (3, 8, 8, 3)).copy())
    with Image.open(io.BytesIO(data)) as animation:
        assert (animation.n_frames, animation.info["loop"]) == (3, 0)


# ---------------------------------------------------------------- traverse


def test_traverse_writes_a_grid_of_components_by_steps(tiny: Tiny, tmp_path: Path) -> None:
    grid = tmp_path / "grids" / "grid.png"
    result = CliRunner().invoke(app, ["traverse", "--out", str(grid), "--components", "3", "--steps", "5",
                                      "--span", "1.5", *tiny.flags()])
    assert_ok(result)
    assert f"wrote {grid}: 3 principal directions" in result.output and "model: --model" in result.output
    assert read_rgb(grid).shape == (3 * TILE + 2, 5 * TILE + 2, 3)


def test_traversal_rows_follow_the_principal_directions(models) -> None:
    from animevae.latent import principal_directions, traversal_latents

    prior = models.info.mixture
    covariance = prior.scale_tril.astype(np.float64) @ prior.scale_tril.T.astype(np.float64)
    values, vectors = principal_directions(prior)
    assert np.all(np.diff(values) <= 0)
    assert np.allclose(vectors @ vectors.T, np.eye(len(values)), atol=1e-8)
    assert np.allclose(vectors.T @ np.diag(values) @ vectors, covariance, atol=1e-6)
    latents, share = traversal_latents(prior, components=3, steps=5, span=2.0)
    assert latents.shape == (15, models.latent_dim) and 0 < share <= 1
    rows = latents.reshape(3, 5, -1).astype(np.float64) - prior.mean
    for r in range(3):
        assert np.allclose(rows[r] @ vectors[r], np.linspace(-2, 2, 5) * np.sqrt(values[r]), atol=1e-4)
        assert np.allclose(rows[r, 2], 0.0, atol=1e-6)  # the middle column is the mean


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize("args, fragment", [
    (["augment", "{src}", "--per-image", "0"], "--per-image"),
    (["augment", "{src}", "--strength", "-0.5"], "--strength"),
    (["augment", "{src}", "--out", "{src}/inner"], "inside the source folder"),
    (["augment", "{tmp}/missing"], "does not exist"),
    (["augment", "{src}", "--run", "other"], "--run and --model both given"),
    (["interpolate"], "two endpoints"),
    (["interpolate", "--seed-a", "1"], "--seed-b"),
    (["interpolate", "{face}", "--seed-a", "1", "--seed-b", "2"], "not both"),
    (["interpolate", "--seed-a", "1", "--seed-b", "2", "--steps", "1"], "--steps"),
    (["interpolate", "{face}", "{tmp}/missing.png"], "does not exist"),
    (["interpolate", "--seed-a", "1", "--seed-b", "2", "--out", "{tmp}"], "is a folder"),
    (["traverse", "--components", "99"], "latent dimensions"),
    (["traverse", "--span", "0"], "--span"),
    (["traverse", "--steps", "1"], "--steps"),
])
def test_bad_arguments_exit_1_with_a_hint(tiny: Tiny, src: Path, tmp_path: Path, args: list[str], fragment: str) -> None:
    values = {"src": str(src), "tmp": str(tmp_path), "face": str(tiny.faces / "face000.png")}
    filled = [arg.format(**values) for arg in args]
    result = CliRunner().invoke(app, [*filled, *tiny.flags()])
    assert_cli_error(result, fragment)


def test_commands_have_help() -> None:
    for command in ("augment", "interpolate", "traverse"):
        result = CliRunner().invoke(app, [command, "--help"])
        assert_ok(result)
        assert "--run" in result.output and "--model" in result.output


def test_latent_commands_never_import_torch(tiny: Tiny, tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from animevae.cli import app\n"
        f"flags = ['--model', {str(tiny.export_dir)!r}, '--device', 'cpu']\n"
        f"faces = {str(tiny.faces / 'face000.png')!r}, {str(tiny.faces / 'face001.png')!r}\n"
        f"for args in (['traverse', '--out', {str(tmp_path / 't.png')!r}],\n"
        f"             ['interpolate', *faces, '--out', {str(tmp_path / 'i.png')!r}]):\n"
        "    result = CliRunner().invoke(app, [*args, *flags])\n"
        "    assert result.exit_code == 0, result.output\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr + done.stdout


def test_the_api_refuses_what_the_cli_refuses(src: Path, tmp_path: Path) -> None:
    from animevae.errors import AnimeVAEError
    from animevae.augment import check_augment_args
    from animevae.latent import check_traverse_args

    with pytest.raises(AnimeVAEError, match="--seed must be 0 or more") as caught:
        check_augment_args(src, tmp_path / "out", per_image=1, strength=1.0, seed=-1, batch_size=8)
    assert caught.value.hint
    with pytest.raises(AnimeVAEError, match="--strength"):
        check_augment_args(src, tmp_path / "out", per_image=1, strength=float("nan"), seed=0, batch_size=8)
    with pytest.raises(AnimeVAEError, match="--batch-size"):
        check_augment_args(src, tmp_path / "out", per_image=1, strength=1.0, seed=0, batch_size=0)
    with pytest.raises(AnimeVAEError, match="--span"):
        check_traverse_args(components=2, steps=3, span=float("inf"))


@pytest.mark.slow
def test_with_the_builtin_model_the_distance_to_the_source_grows_with_strength(tmp_path: Path) -> None:
    # A trained model (the tiny one here barely reacts to its latent): 64x64 faces-like blobs, the built-in model.
    from animevae.augment import augment_folder
    from animevae.latent import open_latent_models

    src = tmp_path / "src"
    write_blobs(src, count=12, size=64)
    models = open_latent_models(tmp_path / "runs", None, "builtin", device="cpu")
    distances = []
    for strength in (0.0, 1.5, 5.0):
        out = tmp_path / f"s{strength}"
        augment_folder(models, src, out, per_image=2, strength=strength, seed=3, workers=0)
        distances.append(np.mean([np.abs(read_rgb(out / f"{p.stem}_{k}.png").astype(np.float64)
                                         - read_rgb(p).astype(np.float64)).mean()
                                  for p in sorted(src.glob("*.png")) for k in range(2)]))
    assert distances[0] < distances[1] < distances[2], distances


def test_interpolate_and_traverse_never_silently_replace_a_file(tiny: Tiny, tmp_path: Path) -> None:
    strip = tmp_path / "strip.png"
    strip.write_bytes(b"someone's picture")
    args = ["interpolate", "--seed-a", "1", "--seed-b", "2", "--steps", "3", "--out", str(strip), *tiny.flags()]
    assert_cli_error(CliRunner().invoke(app, args), "already exists", "--overwrite")
    assert strip.read_bytes() == b"someone's picture"
    assert_ok(CliRunner().invoke(app, [*args, "--overwrite"]))
    assert_ok(CliRunner().invoke(app, args))  # the same strip again: identical bytes, nothing to refuse
    grid = tmp_path / "grid.png"
    grid.write_bytes(b"x")
    assert_cli_error(CliRunner().invoke(app, ["traverse", "--out", str(grid), *tiny.flags()]), "already exists")


def test_interpolate_overwrite_with_fewer_steps_removes_the_extra_frames(runner, trained_run, tmp_path: Path) -> None:
    frames = tmp_path / "frames"
    base = ["interpolate", "--seed-a", "1", "--seed-b", "2", "--out", str(tmp_path / "s.png"), "--frames", str(frames),
            "--model", str(trained_run.export_dir), "--device", "cpu"]
    assert_ok(runner.invoke(app, [*base, "--steps", "5"]))
    assert_ok(runner.invoke(app, [*base, "--steps", "3", "--overwrite"]))
    assert sorted(p.name for p in frames.iterdir()) == ["frame_000.png", "frame_001.png", "frame_002.png"]
