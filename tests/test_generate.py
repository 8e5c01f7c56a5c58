"""animevae.generate and `animevae generate`: per-index determinism, resumable reruns, guarded output folders."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from animevae import model_files as models
from animevae.cli import app
from animevae.errors import ArgumentError
from animevae.fileio import temp_name, to_uint8
from animevae.generate import generate, image_name
from animevae.outputs import MANIFEST_NAME
from animevae.prior import LatentPrior
from helpers import (CPU, assert_cli_error, assert_ok, dead_pid, environ_without_debug, read_rgb, snapshot,
                     temp_leftovers)


def _generate(runner, trained_run, out: Path, *extra: str):
    return runner.invoke(app, ["generate", "--out", str(out), "--run", "run", "--runs-dir", str(trained_run.runs_dir),
                               *CPU, *extra])


def _pngs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


# --- latents and names --------------------------------------------------------------------------


def test_latent_depends_on_seed_and_index_only() -> None:
    prior = LatentPrior.standard(8)
    z = prior.latent(0, 5)
    assert z.shape == (8,) and z.dtype == np.float32
    assert np.array_equal(z, prior.latent(0, 5))
    assert not np.array_equal(z, prior.latent(0, 6))
    assert not np.array_equal(z, prior.latent(1, 5))


def test_latents_come_from_the_fitted_prior() -> None:
    means = np.array([[0, 1, 2], [50, 50, 50]], np.float32)
    scale = np.array([2, 1, 0.5], np.float32)
    single = LatentPrior(np.ones(1, np.float32), means[:1], scale[None])
    rng = np.random.default_rng([4, 9])
    rng.random()  # the component draw comes first
    eps = rng.standard_normal(3, dtype=np.float32)
    np.testing.assert_allclose(single.latent(4, 9), means[0] + scale * eps, rtol=1e-6)
    # The temperature scales the draw within its component, not the mean.
    for temperature in (0.5, 2.0):  # 2.0: the largest --temperature
        np.testing.assert_allclose(single.latent(4, 9, temperature), means[0] + scale * (temperature * eps), rtol=1e-6)
    # Two components: each index lands near one of the means, both are used, in proportion to the weights.
    mixture = LatentPrior(np.array([0.25, 0.75], np.float32), means, np.stack([scale, scale]))
    near_second = [mixture.latent(0, i).mean() > 25 for i in range(2000)]
    assert 0.7 < np.mean(near_second) < 0.8
    np.testing.assert_allclose(mixture.mean, 0.25 * means[0] + 0.75 * means[1], rtol=1e-6)


def test_session_decoder_carries_a_fitted_prior(onnx_models) -> None:
    from animevae.prior import MEANS_KEY, SCALES_KEY, WEIGHTS_KEY

    metadata = onnx_models["decoder"].metadata
    assert {WEIGHTS_KEY, MEANS_KEY, SCALES_KEY} <= metadata.keys()
    prior = LatentPrior.from_metadata(metadata, 8)
    assert prior.scales.shape == (len(prior.weights), 8)
    assert prior.mean.shape == (8,) and prior.scale_tril.shape == (8, 8)
    assert np.allclose(prior.scale_tril, np.tril(prior.scale_tril))  # lower-triangular
    assert not np.array_equal(prior.scale_tril, np.eye(8))  # fitted, not N(0, I)
    # A decoder without prior metadata samples from N(0, I).
    standard = LatentPrior.from_metadata({}, 8)
    assert np.array_equal(standard.mean, np.zeros(8)) and np.array_equal(standard.scale_tril, np.eye(8))


def test_image_names_are_zero_padded() -> None:
    assert image_name(0, 1000) == "000000.png"
    assert image_name(123, 1000) == "000123.png"
    assert image_name(5, 10_000_001) == "000005.png"  # the count never widens the names


# --- determinism -------------------------------------------------------------------------------


@pytest.mark.slow
def test_same_seed_gives_identical_files_for_any_batch_size(runner, trained_run, tmp_path: Path, onnx_models) -> None:
    outputs = {}
    for batch_size in (1, 7, 64):  # 1 and 7 write through worker processes; 64 writes in this process
        out = tmp_path / f"b{batch_size}"
        result = _generate(runner, trained_run, out, "--count", "20", "--batch-size", str(batch_size))
        assert_ok(result)
        assert "wrote 20 images (0 already there)" in result.output
        outputs[batch_size] = _pngs(out)
    assert list(outputs[1]) == [f"{i:06d}.png" for i in range(20)]
    assert outputs[1] == outputs[7] == outputs[64]
    assert len(set(outputs[1].values())) > 1  # different latents, different pictures

    # Per index: a shorter run gives the same first images; image i decodes prior.onnx's latent of the
    # standard-normal noise drawn by a generator seeded (seed, i).
    short = tmp_path / "short"
    assert_ok(_generate(runner, trained_run, short, "--count", "5"))
    assert _pngs(short) == {name: data for name, data in outputs[1].items() if int(name[:6]) < 5}
    noise = np.stack([np.random.default_rng([0, i]).standard_normal(8, dtype=np.float32) for i in (0, 13)])
    expected = to_uint8(onnx_models["decoder"].run(onnx_models["prior"].run(noise)[0])[0])
    assert np.array_equal(read_rgb(tmp_path / "b7" / "000000.png"), expected[0])
    assert np.array_equal(read_rgb(tmp_path / "b7" / "000013.png"), expected[1])

    # Another seed draws other noise (the tiny one-epoch decoder may still round both to the same pixels).
    other_seed = tmp_path / "seed1"
    assert_ok(_generate(runner, trained_run, other_seed, "--count", "5", "--seed", "1"))
    other_noise = np.random.default_rng([1, 0]).standard_normal(8, dtype=np.float32)[None]
    expected_other = to_uint8(onnx_models["decoder"].run(onnx_models["prior"].run(other_noise)[0])[0])
    assert np.array_equal(read_rgb(other_seed / "000000.png"), expected_other[0])
    assert not np.array_equal(other_noise[0], noise[0])


def test_api_generate_is_independent_of_workers(generate_models, tmp_path: Path) -> None:
    inline = generate(generate_models, 6, tmp_path / "inline", seed=3, batch_size=4, workers=0)
    assert (inline.written, inline.existing) == (6, 0)
    assert inline.provider == "CPUExecutionProvider"
    pooled = generate(generate_models, 6, tmp_path / "pooled", seed=3, batch_size=4, workers=1)
    assert _pngs(tmp_path / "inline") == _pngs(tmp_path / "pooled")
    assert pooled.written == 6 and pooled.grid is None


# --- reruns ------------------------------------------------------------------------------------


def test_rerun_writes_nothing_and_changes_no_file(runner, trained_run, tmp_path: Path) -> None:
    out = tmp_path / "synth"
    assert_ok(_generate(runner, trained_run, out, "--count", "10"))
    before = snapshot(out)
    assert set(before) == {f"{i:06d}.png" for i in range(10)} | {MANIFEST_NAME}

    result = _generate(runner, trained_run, out, "--count", "10")
    assert_ok(result)
    assert "wrote 0 images (10 already there)" in result.output
    after = snapshot(out)
    assert after.keys() == before.keys()
    assert after == before  # same bytes and mtimes: the manifest is not rewritten either

    # A deleted image is regenerated, identical; a larger count adds only the new ones.
    (out / "000003.png").unlink()
    result = _generate(runner, trained_run, out, "--count", "12")
    assert_ok(result)
    assert "wrote 3 images (9 already there)" in result.output
    assert (out / "000003.png").read_bytes() == before["000003.png"][1]
    assert (out / "000011.png").is_file()
    assert temp_leftovers(out) == []


def test_another_seed_is_refused_unless_overwrite(runner, trained_run, tmp_path: Path) -> None:
    out = tmp_path / "synth"
    assert_ok(_generate(runner, trained_run, out, "--count", "3"))
    before = _pngs(out)

    result = _generate(runner, trained_run, out, "--count", "3", "--seed", "1")
    assert_cli_error(result, "holds the output of another model or settings (seed 0, now 1)", "--overwrite")
    assert _pngs(out) == before

    result = _generate(runner, trained_run, out, "--count", "3", "--seed", "1", "--overwrite")
    assert_ok(result)
    assert "wrote 3 images (0 already there)" in result.output
    after = _pngs(out)
    assert after.keys() == before.keys()
    assert json.loads((out / MANIFEST_NAME).read_text())["seed"] == 1
    # Every file is seed 1's now: the same bytes as a fresh seed-1 folder.
    fresh = tmp_path / "fresh"
    assert_ok(_generate(runner, trained_run, fresh, "--count", "3", "--seed", "1"))
    assert _pngs(fresh) == after


def test_a_folder_of_foreign_pngs_is_refused(runner, trained_run, tmp_path: Path) -> None:
    out = tmp_path / "holiday"
    out.mkdir()
    (out / "000000.png").write_bytes(b"someone else's picture")
    result = _generate(runner, trained_run, out, "--count", "2")
    assert_cli_error(result, "already holds PNG files that animevae did not generate", "--overwrite")
    assert (out / "000000.png").read_bytes() == b"someone else's picture"


# --- grid --------------------------------------------------------------------------------------


def test_grid_writes_a_contact_sheet(runner, trained_run, tmp_path: Path) -> None:
    out, sheet = tmp_path / "synth", tmp_path / "sheets" / "grid.png"
    result = _generate(runner, trained_run, out, "--count", "10", "--grid", str(sheet))
    assert_ok(result)
    assert f"contact sheet: {sheet}" in result.output
    pixels = read_rgb(sheet)
    assert pixels.shape == (2 * 18 + 2, 8 * 18 + 2, 3)  # 10 tiles, 8 per row, 16 px + 2 px padding
    assert np.array_equal(pixels[2:18, 2:18], read_rgb(out / "000000.png"))
    assert np.array_equal(pixels[20:36, 20:36], read_rgb(out / "000009.png"))
    assert (pixels[20:36, 38:] == 255).all()  # empty cells are white

    # The same sheet again is fine; a different existing file is not replaced without --overwrite.
    assert_ok(_generate(runner, trained_run, out, "--count", "10", "--grid", str(sheet)))
    other = tmp_path / "other.png"
    other.write_bytes(b"keep me")
    assert_cli_error(_generate(runner, trained_run, out, "--count", "10", "--grid", str(other)),
                     "already exists", "--overwrite")
    assert other.read_bytes() == b"keep me"


def test_grid_shows_at_most_64_images(generate_models, tmp_path: Path) -> None:
    result = generate(generate_models, 70, tmp_path / "synth", batch_size=70, grid=tmp_path / "g.png", workers=0)
    assert result.grid == tmp_path / "g.png"
    assert read_rgb(tmp_path / "g.png").shape == (8 * 18 + 2, 8 * 18 + 2, 3)


# --- argument errors ---------------------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["--count", "0"], "--count must be at least 1 (got 0)"),
    (["--count", "-3"], "--count must be at least 1 (got -3)"),
    (["--batch-size", "0"], "--batch-size must be at least 1 (got 0)"),
])
def test_bad_numbers_give_one_line_errors(runner, trained_run, tmp_path: Path, args: list[str], message: str) -> None:
    result = _generate(runner, trained_run, tmp_path / "synth", *args)
    assert_cli_error(result, message)
    assert not (tmp_path / "synth").exists()


def test_out_pointing_at_a_file(runner, trained_run, tmp_path: Path) -> None:
    target = tmp_path / "a-file"
    target.write_text("x")
    assert_cli_error(_generate(runner, trained_run, target, "--count", "2"), "is a file, not a folder")
    assert target.read_text() == "x"
    assert_cli_error(_generate(runner, trained_run, target / "sub", "--count", "2"), "cannot create")


def test_negative_seed_is_a_usage_error(runner, trained_run, tmp_path: Path) -> None:
    result = _generate(runner, trained_run, tmp_path / "synth", "--count", "2", "--seed", "-1")
    assert result.exit_code == 2 and "--seed" in result.output and "Traceback" not in result.output


# --- stale temp files --------------------------------------------------------------------------


def test_stale_temps_of_dead_writers_are_removed(runner, trained_run, tmp_path: Path) -> None:
    out = tmp_path / "synth"
    assert_ok(_generate(runner, trained_run, out, "--count", "3"))
    dead = dead_pid()
    stale = temp_name(out / "000001.png")
    stale = stale.with_name(stale.name.replace(f"-{os.getpid()}-", f"-{dead}-"))
    stale_deep = out / "sub" / stale.name  # generate writes no subfolder: not its to clean
    live = temp_name(out / "000002.png")
    unrelated = out / ".keep"
    stale_deep.parent.mkdir()
    for path in (stale, stale_deep, live, unrelated):
        path.write_bytes(b"partial")
    assert_ok(_generate(runner, trained_run, out, "--count", "3"))
    assert not stale.exists()
    assert stale_deep.exists() and live.exists() and unrelated.exists()


# --- which model -------------------------------------------------------------------------------


def test_missing_run_is_a_clear_error(runner, trained_run, tmp_path: Path) -> None:
    result = runner.invoke(app, ["generate", "--out", str(tmp_path / "o"), "--run", "ghost", "--runs-dir",
                                 str(trained_run.runs_dir), *CPU])
    assert_cli_error(result, "no run named 'ghost'", "runs there: run")
    assert not (tmp_path / "o").exists()


def test_never_exported_run_is_a_clear_error(runner, runs_copy: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    monkeypatch.setattr(models, "builtin_available", lambda: False)
    shutil.rmtree(runs_copy / "run" / "export")
    for extra in (["--run", "run"], []):
        result = runner.invoke(app, ["generate", "--out", str(tmp_path / "o"), "--runs-dir", str(runs_copy), *CPU,
                                     *extra])
        assert_cli_error(result, "run 'run' was never exported", "animevae export --onnx --run run")
    result = runner.invoke(app, ["generate", "--out", str(tmp_path / "o"), "--runs-dir", str(tmp_path / "none"), *CPU])
    assert_cli_error(result, "no exported run in", "animevae train")
    assert not (tmp_path / "o").exists()


def test_defaults_use_runs_and_synth_in_the_working_folder(runner, runs_copy: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # runs_copy is tmp_path/runs
    result = runner.invoke(app, ["generate", "--count", "2", *CPU])
    assert_ok(result)
    assert "model: run 'run'" in result.output
    assert "next: animevae denoise synth" in result.output
    assert sorted(p.name for p in (tmp_path / "synth").glob("*.png")) == ["000000.png", "000001.png"]


def test_api_refuses_bad_arguments(generate_models, tmp_path: Path) -> None:
    with pytest.raises(ArgumentError, match="--count"):
        generate(generate_models, 0, tmp_path / "o")
    with pytest.raises(ArgumentError, match="--batch-size"):
        generate(generate_models, 1, tmp_path / "o", batch_size=0)
    assert not (tmp_path / "o").exists()


# --- shards ------------------------------------------------------------------------------------


def test_shard_parse_and_ownership() -> None:
    from animevae.shard import Shard

    assert Shard.parse(None) == Shard(0, 1)
    assert Shard.parse("1/4") == Shard(1, 4)
    assert Shard.parse("0/1") == Shard()  # one shard: the whole job, as scripts looping over K pass it
    for bad in ("x", "1", "4/4", "-1/2", "1/0", "a/b", "1/2/3"):
        with pytest.raises(ArgumentError, match="--shard") as caught:
            Shard.parse(bad)
        assert "--shard 0/4" in caught.value.hint
    parts = [Shard(i, 3) for i in range(3)]
    assert all(sum(p.owns_index(i) for p in parts) == 1 for i in range(30))
    assert all(sum(p.owns_path(f"dir/{i}.png") for p in parts) == 1 for i in range(30))
    assert Shard().owns_path("anything")


def test_the_shard_of_each_input_path_is_fixed() -> None:
    """Shards of one job may run on machines with different installs: if the owner of a path changed between
    versions, some files would be denoised twice and others never."""
    from animevae.shard import Shard

    paths = ["a.png", "sub/b.png", "c.jpg", "d/e/f.webp", "\udcff.png"]  # the last: an undecodable file name
    assert [[i for i in range(3) if Shard(i, 3).owns_path(p)] for p in paths] == [[2], [2], [1], [1], [1]]
    assert [[i for i in range(2) if Shard(i, 2).owns_path(p)] for p in paths] == [[0], [1], [1], [0], [1]]
    assert [i for i in range(7) if Shard(i, 7).owns_index(23)] == [2]  # generate: image i goes to shard i mod K


def test_shards_together_write_exactly_one_runs_files(runner, trained_run, tmp_path: Path) -> None:
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert_ok(_generate(runner, trained_run, whole, "--count", "9", "--batch-size", "4"))
    first = _generate(runner, trained_run, split, "--count", "9", "--shard", "0/2", "--batch-size", "2")
    assert_ok(first)
    assert "wrote 5 images (0 already there)" in first.output
    assert sorted(p.name for p in split.glob("*.png")) == [f"{i:06d}.png" for i in range(0, 9, 2)]
    assert_ok(_generate(runner, trained_run, split, "--count", "9", "--shard", "1/2"))
    assert _pngs(split) == _pngs(whole)


def test_bad_shard_is_a_clear_error(runner, trained_run, tmp_path: Path) -> None:
    assert_cli_error(_generate(runner, trained_run, tmp_path / "o", "--shard", "2/2"), "--shard 2/2", "--shard 0/4")
    assert not (tmp_path / "o").exists()


def test_a_shard_with_no_images_writes_no_grid(runner, trained_run, tmp_path: Path) -> None:
    result = _generate(runner, trained_run, tmp_path / "synth", "--count", "1", "--shard", "1/2", "--grid",
                       str(tmp_path / "g.png"))
    assert_ok(result)
    assert "wrote 0 images" in result.output and not (tmp_path / "g.png").exists()


# --- latent prior and temperature ---------------------------------------------------------------


@pytest.fixture
def mixture_export(trained_run, tmp_path: Path) -> Path:
    """The session export without prior.onnx: a model that samples from the mixture in its metadata."""
    folder = tmp_path / "mixture"
    folder.mkdir()
    for role in ("encoder", "decoder", "denoiser"):
        (folder / f"{role}.onnx").write_bytes((trained_run.export_dir / f"{role}.onnx").read_bytes())
    return folder


def test_without_prior_onnx_images_decode_the_mixture_draw(runner, mixture_export: Path, tmp_path: Path,
                                                            onnx_models) -> None:
    out = tmp_path / "g"
    result = runner.invoke(app, ["generate", "--out", str(out), "--model", str(mixture_export), "--count", "3", *CPU])
    assert_ok(result)
    assert "latents from the Gaussian mixture" in " ".join(result.output.split())
    prior = LatentPrior.from_metadata(onnx_models["decoder"].metadata, 8)
    expected = to_uint8(onnx_models["decoder"].run(np.stack([prior.latent(0, i) for i in range(3)]))[0])
    assert all(np.array_equal(read_rgb(out / f"{i:06d}.png"), expected[i]) for i in range(3))


def test_temperature_scales_the_noise_and_is_part_of_the_folder_identity(runner, trained_run, tmp_path: Path,
                                                                        onnx_models) -> None:
    cool = tmp_path / "cool"
    assert_ok(_generate(runner, trained_run, cool, "--count", "3", "--temperature", "0.5"))
    noise = np.stack([np.random.default_rng([0, i]).standard_normal(8, dtype=np.float32) for i in range(3)])
    expected = to_uint8(onnx_models["decoder"].run(onnx_models["prior"].run(0.5 * noise)[0])[0])
    assert all(np.array_equal(read_rgb(cool / f"{i:06d}.png"), expected[i]) for i in range(3))
    assert json.loads((cool / MANIFEST_NAME).read_text())["temperature"] == 0.5
    # The same folder at another temperature would mix two sets of images: refused.
    assert_cli_error(_generate(runner, trained_run, cool, "--count", "3"), "--overwrite")


@pytest.mark.parametrize("value", ["0", "-1", "2.5"])
def test_temperature_outside_its_range_is_refused(runner, trained_run, tmp_path: Path, value: str) -> None:
    result = _generate(runner, trained_run, tmp_path / "g", "--count", "2", "--temperature", value)
    assert_cli_error(result, "--temperature must be in (0, 2]")
    assert not (tmp_path / "g").exists()


def test_interpolating_seeds_starts_at_generates_first_image(runner, trained_run, tmp_path: Path, onnx_models) -> None:
    from animevae.latent import endpoint_latents, open_latent_models

    models = open_latent_models(trained_run.runs_dir, "run", None, "cpu", need_encoder=False)
    start, end = endpoint_latents(models, [], [4, 9])
    for seed, latent in ((4, start), (9, end)):
        noise = np.random.default_rng([seed, 0]).standard_normal(8, dtype=np.float32)[None]
        np.testing.assert_array_equal(latent, onnx_models["prior"].run(noise)[0][0])


def test_sampler_latents_of_known_noise(onnx_models) -> None:
    """Image i's latent is the prior (or the mixture) applied to the (seed, i) noise times the temperature, for
    any order of indices: what makes a shard or a resumed run draw the same faces."""
    from animevae.sampling import LatentSampler

    decoder, prior = onnx_models["decoder"], onnx_models["prior"]
    fitted = LatentPrior.from_metadata(decoder.metadata)
    noise = np.stack([np.random.default_rng([3, i]).standard_normal(8, dtype=np.float32) for i in (5, 0)])
    diffusion = LatentSampler(fitted, prior, temperature=0.5)
    np.testing.assert_array_equal(diffusion(3, [5, 0]), prior.run(0.5 * noise)[0])
    mixture = LatentSampler(fitted, None, temperature=0.7)
    np.testing.assert_array_equal(mixture(3, [5, 0]), np.stack([fitted.latent(3, i, 0.7) for i in (5, 0)]))
    np.testing.assert_array_equal(LatentSampler(fitted)(3, [5]), fitted.latent(3, 5)[None])  # temperature 1


def test_prior_onnx_is_an_optional_role_of_the_model_set(trained_run, mixture_export: Path) -> None:
    """open_models resolves prior.onnx like the other roles: opened when asked for and present, named in the
    model's description either way, and never taken from a --model FILE that names another role."""
    from animevae.model_files import open_models
    from animevae.sampling import open_sampler

    export = trained_run.export_dir
    models = open_models(trained_run.runs_dir, None, str(export), ("decoder", "prior"), "cpu")
    assert models.prior is not None and models.prior.path == export / "prior.onnx" and models.prior.device == "cpu"
    assert models.info.prior_file == export / "prior.onnx" and models.info.latent_source == "diffusion prior"
    by_file = open_models(trained_run.runs_dir, None, str(export / "decoder.onnx"), ("decoder", "prior"), "cpu")
    assert by_file.prior is not None and by_file.prior.path == export / "prior.onnx"
    unopened = open_models(trained_run.runs_dir, None, str(export), ("decoder",), "cpu")
    assert unopened.prior is None and unopened.info.latent_source == "diffusion prior"
    sampler = open_sampler(models.info, temperature=0.5, device="cpu", threads=3)
    assert sampler.temperature == 0.5 and sampler.prior is not None
    assert sampler.prior.session.get_session_options().intra_op_num_threads == 3  # the worker's one thread
    mixture = open_models(trained_run.runs_dir, None, str(mixture_export), ("decoder", "prior"), "cpu")
    assert mixture.prior is None and mixture.info.prior_file is None
    assert mixture.info.latent_source == "Gaussian mixture" and open_sampler(mixture.info).prior is None


def test_temperature_bounds() -> None:
    from animevae.errors import ArgumentError
    from animevae.sampling import check_temperature

    for fine in (2.0, 1.0, 1e-3):
        check_temperature(fine)
    for bad in (0.0, -0.5, 2.001, float("nan")):
        with pytest.raises(ArgumentError, match="--temperature"):
            check_temperature(bad)


def test_mixture_moments_and_metadata_round_trip() -> None:
    """The whole mixture's mean and covariance (what traverse walks along), worked out by hand for two
    components; and the metadata text gives back the very arrays."""
    prior = LatentPrior(np.array([0.25, 0.75], np.float32), np.array([[0, 1], [4, -1]], np.float32),
                        np.array([[1, 2], [2, 1]], np.float32))
    np.testing.assert_allclose(prior.mean, [3.0, -0.5])
    # within: .25 diag(1, 4) + .75 diag(4, 1); between: .25 [-3, 1.5]^2 + .75 [1, -.5]^2
    np.testing.assert_allclose(prior.covariance, [[6.25, -1.5], [-1.5, 2.5]], rtol=1e-6)
    np.testing.assert_allclose(prior.scale_tril @ prior.scale_tril.T, prior.covariance, rtol=1e-5)
    assert prior.scale_tril[0, 1] == 0  # lower-triangular
    restored = LatentPrior.from_metadata({**prior.to_metadata(), "animevae.latent_dim": "2"})
    for name in ("weights", "means", "scales"):
        assert np.array_equal(getattr(restored, name), getattr(prior, name)) and getattr(restored, name).dtype == np.float32


def test_a_mixture_draws_mean_plus_scale_times_noise_and_needs_all_its_entries() -> None:
    """Each component has a diagonal covariance: a draw is its mean plus its standard deviations times the
    (seed, index) noise. A decoder carries all three arrays or none (N(0, I)); one with only some of them, such
    as Cholesky factors under another key, is malformed metadata, never a silent N(0, I)."""
    from animevae.errors import ModelError
    from animevae.model_info import read_model_info
    from animevae.prior import SCALES_KEY

    weights, means = np.array([0.25, 0.75], np.float32), np.array([[0, 1], [4, -1]], np.float32)
    prior = LatentPrior(weights, means, np.array([[1, 2], [0.5, 3]], np.float32))
    for index in range(20):
        rng = np.random.default_rng([3, index])
        component = int(rng.random() >= 0.25)
        expected = means[component] + prior.scales[component] * (0.5 * rng.standard_normal(2, dtype=np.float32))
        np.testing.assert_allclose(prior.latent(3, index, 0.5), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="scales"):
        LatentPrior(weights, means, np.stack([np.diag(s) for s in prior.scales]))  # (K, D, D): not a layout
    metadata = {**prior.to_metadata(), "animevae.image_size": "16", "animevae.latent_dim": "2"}
    trils = {**metadata, "animevae.prior_scale_trils": metadata[SCALES_KEY]}
    del trils[SCALES_KEY]
    with pytest.raises(ModelError, match="malformed latent prior"):
        read_model_info(Path("decoder.onnx"), trils)
    standard = read_model_info(Path("decoder.onnx"), {"animevae.image_size": "16", "animevae.latent_dim": "2"}).mixture
    assert np.array_equal(standard.means, np.zeros((1, 2))) and np.array_equal(standard.scales, np.ones((1, 2)))


def test_prior_text_is_float32_and_weights_short_of_one_still_draw() -> None:
    """pack_array writes float32 whatever it is given (the reader assumes it); fitted float32 weights can sum
    to a hair under 1, and a uniform draw above their sum must still pick the last component, not crash."""
    from animevae.prior import pack_array, unpack_array

    assert np.array_equal(unpack_array(pack_array(np.array([0.25, -2.0])), (2,)), np.array([0.25, -2.0], np.float32))
    means = np.array([[0.0], [10.0]], np.float32)
    short = LatentPrior(np.array([0.5, 0.4], np.float32), means, np.full((2, 1), 1e-3, np.float32))
    uniforms = [np.random.default_rng([0, i]).random() for i in range(100)]  # the component draw of each index
    assert any(u >= 0.9 for u in uniforms)
    for i, u in enumerate(uniforms):
        assert abs(short.latent(0, i)[0] - (10.0 if u >= 0.5 else 0.0)) < 0.1


def test_image_names_do_not_depend_on_the_count() -> None:
    from animevae.generate import image_name

    assert image_name(5, 10) == image_name(5, 10_000_001) == "000005.png"
    assert image_name(1_234_567, 2_000_000) == "1234567.png"


def _generate_command(model: Path, out: Path, count: int) -> list[str]:
    return [sys.executable, "-m", "animevae", "generate", "--count", str(count), "--out", str(out),
            "--model", str(model), "--seed", "11", "--batch-size", "64", "--device", "cpu", "--quiet"]


@pytest.mark.slow
def test_generate_killed_then_rerun_gives_the_bytes_of_an_unbroken_run(trained_run, tmp_path) -> None:
    model, count = trained_run.export_dir / "decoder.onnx", 4000
    reference, broken = tmp_path / "reference", tmp_path / "broken"
    subprocess.run(_generate_command(model, reference, count), check=True, env=environ_without_debug())
    process = subprocess.Popen(_generate_command(model, broken, count), env=environ_without_debug(),
                               start_new_session=True)
    deadline = time.monotonic() + 60
    while len(list(broken.glob("*.png"))) < 200 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)  # the workers too, mid-write
    process.wait()
    assert len(list(broken.glob("*.png"))) < count, "the run finished before it could be killed"
    subprocess.run(_generate_command(model, broken, count), check=True, env=environ_without_debug())
    assert temp_leftovers(broken) == []
    assert {k: v[1] for k, v in snapshot(broken).items()} == {k: v[1] for k, v in snapshot(reference).items()}


def test_two_generate_processes_into_one_folder(trained_run, tmp_path) -> None:
    model, out, reference = trained_run.export_dir / "decoder.onnx", tmp_path / "shared", tmp_path / "reference"
    processes = [subprocess.Popen(_generate_command(model, out, 600), env=environ_without_debug()) for _ in range(2)]
    assert [p.wait() for p in processes] == [0, 0]
    subprocess.run(_generate_command(model, reference, 600), check=True, env=environ_without_debug())
    assert {k: v[1] for k, v in snapshot(out).items()} == {k: v[1] for k, v in snapshot(reference).items()}
