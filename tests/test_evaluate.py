"""The quality report: each metric on known inputs, and the whole report through the CLI."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from animevae.cli import app
from animevae.progress import SilentReporter
from animevae.training.data import load_training_images, split_holdout
from animevae.training.evaluate import REPORT_NAME, as_saved, evaluate_run, mean_pairwise_distance, ssim, style_of
from animevae.training.export import load_run_models
from helpers import assert_cli_error, assert_ok, write_blobs


def test_ssim_is_one_for_identical_images_and_drops_with_noise() -> None:
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(ssim(images, images), torch.ones(3), atol=1e-5)
    noisy = (images + 0.2 * torch.randn(images.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    assert (ssim(noisy, images) < 0.9).all()


def test_mean_pairwise_distance_of_copies_is_zero() -> None:
    same = torch.zeros(5, 3, 4, 4)
    assert mean_pairwise_distance(same) == pytest.approx(0.0, abs=1e-6)
    assert mean_pairwise_distance(torch.stack([torch.zeros(3, 4, 4), torch.ones(3, 4, 4)])) == pytest.approx(1.0)


def test_as_saved_rounds_to_the_8_bit_levels_a_png_holds() -> None:
    images = torch.tensor([0.0, 0.5, 1.0 / 255 * 0.49, 1.0 / 255 * 0.51, 1.2, -0.1])
    assert as_saved(images).mul(255).tolist() == pytest.approx([0.0, 128.0, 0.0, 1.0, 255.0, 0.0])


def test_as_saved_matches_the_pngs_denoise_writes_even_on_exact_halves() -> None:
    from animevae.fileio import to_uint8

    # (k + 0.5) / 255 for even k: round-half-to-even would keep k, the PNG writer rounds up to k + 1.
    images = ((torch.arange(0, 254, 2, dtype=torch.float64) + 0.5) / 255).float().view(1, 1, 1, -1).expand(1, 3, 1, -1)
    saved = to_uint8(images.numpy())  # (1, 1, W, 3)
    assert (as_saved(images).mul(255).round().byte().permute(0, 2, 3, 1).numpy() == saved).all()


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
    assert saved == {**asdict(report), "seconds": saved["seconds"]}
    # 40 images: 4 held out (10%), 36 for training, as in training's own split.
    assert (report.held_out, report.train_images, report.samples) == (4, 36, 40)
    # SWD of samples and its floor (held-out faces), both against training faces, 4 a side (the held-out count);
    # 16x16 images have one pyramid level.
    assert set(report.swd_samples) == set(report.swd_floor) == {"16"} and report.swd_images == 4
    assert report.swd_samples["16"] > 0 and report.swd_floor["16"] > 0
    assert set(report.denoise_psnr) == set(report.denoise_made_worse) == {"0", "15", "25", "50", "jpeg20", "jpeg40",
                                                                          "jpeg90"}
    assert report.noisy_psnr["0"] == 100.0  # clean input: PSNR capped at 100 dB
    # sigma 25 noise on [0, 1] images is about 20 dB, sigma 50 about 14 dB (a bit more: clipping removes some).
    assert 19.0 < report.noisy_psnr["25"] < 23.0 and 13.0 < report.noisy_psnr["50"] < report.noisy_psnr["25"]
    assert report.noisy_psnr["25"] < report.noisy_psnr["15"] < 30.0
    assert report.noisy_psnr["jpeg20"] < report.noisy_psnr["jpeg40"] < report.noisy_psnr["jpeg90"] < report.noisy_psnr["0"]
    # The classifier learns from 20 training images per class and is scored on the 4 held-out images against
    # 4 unseen samples (or their 4 reconstructions): accuracies in eighths.
    assert report.classifier_train_per_class == 20 and report.latents == "diffusion prior"
    for accuracy in (report.realism_samples_accuracy, report.realism_recon_accuracy):
        assert accuracy * 8 == pytest.approx(round(accuracy * 8))
    assert report.style_share_train == {"face": 1.0}  # the blob files are face000.png, face001.png, ...
    # One style: its accuracy is the whole accuracy.
    assert report.realism_recon_by_style == {"face": report.realism_recon_accuracy}
    assert report.realism_samples_by_style == {"face": report.realism_samples_accuracy}


def test_evaluate_cli_prints_the_table(trained_run, runner) -> None:
    # One step at most: each classifier stops at the cap after its first epoch, not converged.
    result = runner.invoke(app, ["evaluate", str(trained_run.data_dir), "--runs-dir", str(trained_run.runs_dir),
                                 "--samples", "20", "--classifier-images", "10", "--classifier-steps", "1"])
    saved = json.loads((trained_run.run_dir / REPORT_NAME).read_text())
    (trained_run.run_dir / REPORT_NAME).unlink(missing_ok=True)
    assert_ok(result)
    assert "reconstruction PSNR" in result.output and "denoise PSNR, sigma 25" in result.output
    assert "denoise PSNR, JPEG quality 20" in result.output
    assert "searching all 36 training faces" in result.output  # a line before each long part
    assert result.output.count("(not converged)") == 2
    assert "not converged:" in result.output and "--classifier-steps" in result.output
    assert saved["realism_samples_converged"] is saved["realism_recon_converged"] is False
    assert saved["realism_samples_steps"] == saved["realism_recon_steps"] == 1
    assert "wrote" in result.output


# --- known inputs, reference implementations ----------------------------------------------------


def _reference_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """SSIM of two (3, H, W) images by the definition: an 11x11 Gaussian window (sigma 1.5) at every valid
    position, averaged over positions and channels. Loops, float64."""
    coords = np.arange(11) - 5.0
    g = np.exp(-(coords**2) / (2 * 1.5**2))
    w = np.outer(g, g) / g.sum() ** 2
    c1, c2 = 0.01**2, 0.03**2
    values = []
    for channel in range(x.shape[0]):
        for top in range(x.shape[1] - 10):
            for left in range(x.shape[2] - 10):
                a, b = x[channel, top : top + 11, left : left + 11], y[channel, top : top + 11, left : left + 11]
                mu_a, mu_b = (w * a).sum(), (w * b).sum()
                var_a, var_b = (w * (a - mu_a) ** 2).sum(), (w * (b - mu_b) ** 2).sum()
                cov = (w * (a - mu_a) * (b - mu_b)).sum()
                values.append(((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)))
    return float(np.mean(values))


def test_ssim_matches_the_definition() -> None:
    generator = torch.Generator().manual_seed(2)
    x = torch.rand(2, 3, 14, 13, generator=generator)
    y = (x + 0.1 * torch.randn(x.shape, generator=generator)).clamp(0, 1)
    expected = [_reference_ssim(x[i].double().numpy(), y[i].double().numpy()) for i in range(2)]
    assert ssim(y, x).tolist() == pytest.approx(expected, abs=1e-5)
    # Flat images a and b: no variance, SSIM is the luminance term (2ab + C1) / (a^2 + b^2 + C1) alone.
    flat = ssim(torch.full((1, 3, 11, 11), 0.6), torch.full((1, 3, 11, 11), 0.2)).item()
    assert flat == pytest.approx((2 * 0.6 * 0.2 + 1e-4) / (0.36 + 0.04 + 1e-4), abs=1e-4)  # float32 variances
    # Dark against black: the luminance term is C1 / (b^2 + C1), so C1 = 0.01^2 itself is pinned.
    dark = ssim(torch.zeros(1, 3, 11, 11), torch.full((1, 3, 11, 11), 0.1)).item()
    assert dark == pytest.approx(1e-4 / (0.01 + 1e-4), rel=1e-3)


def _rms(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(((a - b) ** 2).mean()))


def _nearest(queries: np.ndarray, references: np.ndarray) -> np.ndarray:
    """Reference nearest-neighbour RMS distance, one pair at a time."""
    return np.array([min(_rms(q, r) for r in references) for q in queries])


def _mean_pairwise(images: np.ndarray) -> float:
    return float(np.mean([_rms(a, b) for i, a in enumerate(images) for j, b in enumerate(images) if i != j]))


def test_evaluate_scores_the_held_out_images_and_counts_copies_below_the_1st_percentile(
        trained_run, monkeypatch: pytest.MonkeyPatch) -> None:
    """Protects the two numbers a reader trusts most: the scores are of images training never saw (not of the
    training split), and copy_rate counts samples closer to a training image than 99% of held-out images are
    to theirs (the 1st percentile of held-out distances, not the 99th)."""
    import animevae.training.evaluate as evaluate

    config, vae, denoiser = load_run_models(trained_run.run_dir)
    loaded = load_training_images(trained_run.data_dir, 16, trained_run.runs_dir / ".cache", SilentReporter())
    images, hashes = loaded.images, loaded.hashes
    train_idx, val_idx = split_holdout(hashes, len(images), config.train.val_size)
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    held, train_set = pixels[val_idx], pixels[train_idx]
    # Distances to the training images and their mirror images: a mirrored training face is a copy too.
    held_nn = _nearest(held.double().numpy(), torch.cat([train_set, train_set.flip(3)]).double().numpy())
    assert len(set(held_nn.tolist())) == 4, "distinct held-out distances, so the percentiles are apart"
    # 6 exact copies of training images (distance 0; 3 of them mirrored) and 4 copies of the held-out image whose
    # distance is the second largest: above the 1st percentile of held-out distances, below the 99th.
    middle = int(np.argsort(held_nn)[2])
    samples = torch.cat([train_set[:3], train_set[3:6].flip(3), held[middle].expand(4, -1, -1, -1)])
    monkeypatch.setattr(evaluate, "draw_samples", lambda vae, count, seed=0, **options: samples)

    report = evaluate_run(trained_run.run_dir, trained_run.data_dir, trained_run.runs_dir, samples=len(samples),
                          classifier_images=4)
    (trained_run.run_dir / REPORT_NAME).unlink()

    assert (report.held_out, report.train_images) == (len(val_idx), len(train_idx)) == (4, 36)
    sample_nn = np.array([0.0] * 6 + [held_nn[middle]] * 4)
    assert report.copy_rate == pytest.approx(np.mean(sample_nn < np.percentile(held_nn, 1))) == 0.6
    with torch.no_grad():
        recon = vae.decoder(vae.encode(held).mode()).double().numpy()
        change = (denoiser(held) - held).double().numpy()
    # What `animevae denoise` saves: the gated output (alpha = min(1, (rms / knee)^2) per image) in 8 bits.
    rms = np.sqrt((change.reshape(4, -1) ** 2).mean(axis=1)) * 255
    alpha = np.minimum(1.0, (rms / float(denoiser.knee)) ** 2) if float(denoiser.knee) > 0 else np.ones(4)
    den = np.round(np.clip(held.double().numpy() + alpha[:, None, None, None] * change, 0, 1) * 255) / 255
    reference_psnr = np.mean([10 * np.log10(1 / ((recon[i] - held[i].numpy()) ** 2).mean()) for i in range(4)])
    assert report.recon_psnr == pytest.approx(reference_psnr, abs=2e-3)
    assert report.recon_ssim == pytest.approx(
        np.mean([_reference_ssim(recon[i], held[i].double().numpy()) for i in range(4)]), abs=2e-4)
    assert report.denoise_psnr["0"] == pytest.approx(
        np.mean([10 * np.log10(1 / max(((den[i] - held[i].numpy()) ** 2).mean(), 1e-10)) for i in range(4)]), abs=2e-3)
    # Clean input is "made worse" by any change at all.
    assert report.denoise_made_worse["0"] == sum(((den[i] - held[i].numpy()) ** 2).mean() > 1e-10 for i in range(4))
    assert report.nn_distance_held_out_median == pytest.approx(np.sort(held_nn)[1], abs=1e-4)  # lower median
    assert report.nn_distance_samples_median == pytest.approx(0.0, abs=1e-4)
    assert report.sample_diversity == pytest.approx(
        _mean_pairwise(samples.double().numpy()) / _mean_pairwise(held.double().numpy()), abs=1e-4)
    assert report.style_share_samples == {"face": 1.0}


def test_a_labelled_run_is_scored_per_class(labelled_run) -> None:
    from animevae.training.evaluate import class_report

    _, vae, _ = load_run_models(labelled_run.run_dir)
    loaded = load_training_images(labelled_run.data_dir, 16, labelled_run.runs_dir / ".cache", SilentReporter())
    pixels = torch.from_numpy(loaded.images).permute(0, 3, 1, 2).float() / 255.0
    labels = torch.from_numpy(loaded.labels.index)
    train, held = torch.arange(0, len(pixels), 2), torch.arange(1, len(pixels), 2)
    report = class_report(vae, ("cats", "dogs", "rare"), pixels[train], labels[train], pixels[held], labels[held],
                          per_class=4, few_real=2, classifier_images=6)
    assert report.names == ["cats", "dogs", "rare"] and report.samples_per_class == 4 and report.few_real == 2
    for rates in (report.fidelity, report.cas_per_class, report.augmentation_with_per_class):
        assert set(rates) == {"cats", "dogs", "rare"} and all(0.0 <= rate <= 1.0 for rate in rates.values())


def test_the_cli_table_shows_each_class() -> None:
    """The scoring is tested above (and the whole table in test_evaluate_cli_prints_the_table); here, the rows a
    labelled run adds to it."""
    from rich.console import Console
    from rich.table import Table

    from animevae.commands.training import _class_rows
    from animevae.training.evaluate import ClassReport

    rates = {"cats": 1.0, "dogs": 0.5, "rare": 0.25}
    table = Table("metric", "value")
    _class_rows(table, ClassReport(["cats", "dogs", "rare"], 4, rates, 0.75, 1.0, 0.5, rates, 2, 0.6, 0.9, rates, rates))
    console = Console(width=200, record=True)
    console.print(table)
    text = console.export_text()
    assert "class fidelity (4 samples per class; classifier on real images: 1.000 held-out accuracy)" in text
    assert "class dogs: fidelity / CAS / 2 real -> + samples" in text and "0.500 / 0.500 / 0.500 -> 0.500" in text
    assert "accuracy from 2 real per class, without -> with samples" in text and "0.600 -> 0.900" in text


def test_a_labelled_run_is_not_scored_on_unlabelled_data(labelled_run, trained_run) -> None:
    from animevae.errors import DataError

    with pytest.raises(DataError, match="cats"):
        evaluate_run(labelled_run.run_dir, trained_run.data_dir, labelled_run.runs_dir, samples=10)


def test_evaluate_refuses_to_score_held_out_images_the_run_trained_on(trained_run, runner, tmp_path) -> None:
    # The run's training images alone, as a folder of their own: their held-out tenth was trained on, and scoring
    # it would flatter the run.
    from PIL import Image

    data = load_training_images(trained_run.data_dir, 16, trained_run.runs_dir / ".cache", SilentReporter())
    train_idx, _ = split_holdout(data.hashes, len(data.images), 500)
    subset = tmp_path / "trained-only"
    subset.mkdir()
    for index in train_idx:
        Image.fromarray(data.images[index]).save(subset / f"{index:03d}.png")
    result = runner.invoke(app, ["evaluate", str(subset), "--runs-dir", str(trained_run.runs_dir),
                                 "--samples", "20", "--classifier-images", "10"])
    assert result.exit_code != 0
    assert "3 of the 3 images" in result.output and "were trained on by run" in result.output


@pytest.mark.parametrize("count", [2, 5, 19])
def test_evaluate_on_a_small_set_reports_what_it_can(runner, runs_copy: Path, tmp_path: Path, count: int) -> None:
    small = tmp_path / "small"
    write_blobs(small, count=count, seed=3)
    result = runner.invoke(app, ["evaluate", str(small), "--run", "run", "--samples", "10", "--classifier-images", "4",
                                 "--runs-dir", str(runs_copy)])
    assert_ok(result)
    assert "not measurable" in result.output
    report = json.loads((runs_copy / "run" / "evaluation.json").read_text())
    assert report["held_out"] == 1 and report["realism_samples_accuracy"] is None
    assert report["realism_recon_auc"] is None and report["sample_diversity"] is None
    assert {"realism_samples_accuracy", "realism_recon_accuracy", "sample_diversity"} <= set(report["not_measurable"])
    assert report["recon_psnr"] > 0


def test_evaluate_refuses_a_run_that_trained_only_a_denoiser(runner, denoiser_run: Path, image_dir: Path) -> None:
    result = runner.invoke(app, ["evaluate", str(image_dir), "--run", "den", "--runs-dir", str(denoiser_run.parent)])
    assert_cli_error(result, "trains only a denoiser", "metrics.jsonl")


class GuardedImages:
    """A set's (N, S, S, 3) uint8 images that refuse to be copied whole: only gathers of at most `budget` rows."""

    def __init__(self, images: np.ndarray, budget: int) -> None:
        self.images, self.budget, self.reads = np.asarray(images), budget, []
        self.shape, self.dtype = self.images.shape, self.images.dtype

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows)
        assert rows.ndim == 1 and len(rows) <= self.budget, f"a gather of {rows.shape} rows"
        self.reads.append(rows.tolist())
        return self.images[rows]

    def __array__(self, *args: object, **kwargs: object) -> np.ndarray:
        raise AssertionError("the whole set was copied")


def test_evaluate_reads_the_set_in_bounded_gathers_and_searches_all_of_it(
        trained_run, monkeypatch: pytest.MonkeyPatch) -> None:
    """No whole copy of the set, float or not: every read is a gather of at most one chunk of the copy search
    (8 rows here), the classifier's faces, or the held-out split; and the copy search still reads every
    training face."""
    from dataclasses import replace

    import animevae.training.evaluate as evaluate
    import animevae.training.nearest as nearest
    from animevae.training.realism import RealismScore

    loaded = load_training_images(trained_run.data_dir, 16, trained_run.runs_dir / ".cache", SilentReporter())
    guarded = GuardedImages(loaded.images, budget=8)
    monkeypatch.setattr(evaluate, "load_training_images", lambda *args: replace(loaded, images=guarded))
    monkeypatch.setattr(nearest, "CHUNK_FACES", 8)
    # What the classifier makes of its inputs is tested elsewhere; here, which rows were read for it.
    monkeypatch.setattr(evaluate, "realism_score", lambda *args, **kwargs: RealismScore(0.5, 0.5, 1, 8, 4))
    report = evaluate_run(trained_run.run_dir, trained_run.data_dir, trained_run.runs_dir, samples=10,
                          classifier_images=8)
    (trained_run.run_dir / REPORT_NAME).unlink()
    train_idx, val_idx = split_holdout(loaded.hashes, len(loaded.images), 500)
    assert (report.train_images, report.held_out) == (36, 4)
    assert set(sum(guarded.reads, [])) == set(range(40))  # every training face searched, every held-out one scored
    assert max(map(len, guarded.reads)) == 8 and val_idx.tolist() in guarded.reads
