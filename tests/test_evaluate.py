"""The quality report: each metric on known inputs, and the whole report through the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from animevae.cli import app
from animevae.evaluate import (REPORT_NAME, as_saved, evaluate_run, mean_pairwise_distance, nearest_distances, ssim,
                               style_of)
from helpers import assert_ok


def test_ssim_is_one_for_identical_images_and_drops_with_noise() -> None:
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(ssim(images, images), torch.ones(3), atol=1e-5)
    noisy = (images + 0.2 * torch.randn(images.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    assert (ssim(noisy, images) < 0.9).all()


def test_nearest_distances_find_the_closest_reference() -> None:
    references = torch.stack([torch.full((3, 2, 2), v) for v in (0.0, 0.5, 1.0)])
    queries = torch.stack([torch.full((3, 2, 2), 0.45), torch.full((3, 2, 2), 0.9)])
    distance, index = nearest_distances(queries, references)
    assert index.tolist() == [1, 2]
    assert torch.allclose(distance, torch.tensor([0.05, 0.1]), atol=1e-6)


def test_mean_pairwise_distance_of_copies_is_zero() -> None:
    same = torch.zeros(5, 3, 4, 4)
    assert mean_pairwise_distance(same) == pytest.approx(0.0, abs=1e-6)
    assert mean_pairwise_distance(torch.stack([torch.zeros(3, 4, 4), torch.ones(3, 4, 4)])) == pytest.approx(1.0)


def test_as_saved_rounds_to_the_8_bit_levels_a_png_holds() -> None:
    images = torch.tensor([0.0, 0.5, 1.0 / 255 * 0.49, 1.0 / 255 * 0.51, 1.2, -0.1])
    assert as_saved(images).mul(255).tolist() == pytest.approx([0.0, 128.0, 0.0, 1.0, 255.0, 0.0])


def test_style_of_reads_folders_then_name_prefixes() -> None:
    assert style_of("lorelei_00012.png") == "lorelei"
    assert style_of("pixel-art_00999.png") == "pixel-art"
    assert style_of("anime/0001.png") == "anime"
    assert style_of("1234.png") == "other"


def test_evaluate_run_writes_a_complete_report(trained_run) -> None:
    report = evaluate_run(trained_run.run_dir, trained_run.data_dir, trained_run.runs_dir, samples=40,
                          classifier_images=20)
    saved = json.loads((trained_run.run_dir / REPORT_NAME).read_text())
    (trained_run.run_dir / REPORT_NAME).unlink()  # the session run stays as the fixture made it
    assert saved["recon_psnr"] == report.recon_psnr and saved["held_out"] == report.held_out > 0
    assert set(report.denoise_psnr) == {"0", "15", "25", "50", "jpeg20", "jpeg40"}
    assert report.noisy_psnr["50"] < report.noisy_psnr["25"] < report.noisy_psnr["15"]
    assert report.noisy_psnr["jpeg20"] < report.noisy_psnr["jpeg40"] < report.noisy_psnr["0"]
    assert 0.0 <= report.copy_rate <= 1.0 and report.classifier_train_per_class == 20
    assert report.latents == "diffusion prior"
    assert report.sample_diversity > 0 and -1.0 <= report.recon_ssim <= 1.0
    assert report.style_share_train == {"face": 1.0}  # the blob files are face000.png, face001.png, ...


def test_evaluate_cli_prints_the_table(trained_run, runner) -> None:
    result = runner.invoke(app, ["evaluate", str(trained_run.data_dir), "--runs-dir", str(trained_run.runs_dir),
                                 "--samples", "20", "--classifier-images", "10"])
    (trained_run.run_dir / REPORT_NAME).unlink(missing_ok=True)
    assert_ok(result)
    assert "reconstruction PSNR" in result.output and "denoise PSNR, sigma 25" in result.output
    assert "denoise PSNR, JPEG quality 20" in result.output
    assert "wrote" in result.output
